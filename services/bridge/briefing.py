"""Warm transfer briefing: the agent's context for the target, spoken by the TTS node.

The agent's Converse stream is not used for this: its audio goes to the caller's playout queue and
the agent is about to leave. The bridge synthesizes the briefing text itself (the same Triton TTS
node the agent speaks with) and plays it into the target's leg while the caller is on hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import audio_core
from services.bridge.media import RtpSession

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000
FRAME_BYTES = PIPELINE_RATE // 50 * 2  # 20 ms of PCM16
FRAME_S = 0.02
MAX_BRIEFING_CHARS = 1000  # a briefing is a sentence or two; the bound keeps the target's wait short


@dataclass(frozen=True)
class BriefingVoice:
    voice_id: str
    exaggeration: float | None = None
    cfg_weight: float | None = None


class Synthesizer(Protocol):
    sample_rate: int

    def synthesize(self, text: str, voice: BriefingVoice, *, tenant_id: str = "") -> AsyncIterator[bytes]: ...


def briefing_text(context: str, reason: str) -> str:
    """What the target hears: the agent's context, else a sentence from the reason."""
    text = context.strip() or (f"Transferring a caller. Reason: {reason.strip()}." if reason.strip() else "")
    return text[:MAX_BRIEFING_CHARS] or "Transferring a caller to you now."


async def speak(
    tts: Synthesizer,
    text: str,
    voice: BriefingVoice,
    media: RtpSession,
    stop: asyncio.Event,
    *,
    tenant_id: str = "",
) -> int:
    """Synthesizes `text` and sends it into `media` as 20 ms frames on the loop clock (real time, so
    the target's jitter buffer plays it as speech); stops early when `stop` is set. Returns the frames
    sent."""
    loop = asyncio.get_running_loop()
    resampler = (
        audio_core.Resampler(tts.sample_rate, PIPELINE_RATE) if tts.sample_rate != PIPELINE_RATE else None
    )
    pending = b""
    sent = 0
    next_tick = loop.time()

    async def send_ready(flush: bool) -> None:
        nonlocal pending, sent, next_tick
        while len(pending) >= FRAME_BYTES or (flush and pending):
            frame, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
            media.send_frame(frame.ljust(FRAME_BYTES, b"\x00"))
            sent += 1
            # Synthesis slower than real time: restart the clock rather than burst the backlog.
            next_tick = max(next_tick + FRAME_S, loop.time() - 0.1)
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            if stop.is_set():
                return

    chunks = tts.synthesize(text, voice, tenant_id=tenant_id)
    try:
        async for chunk in chunks:
            pending += resampler.process(chunk) if resampler is not None else chunk
            await send_ready(False)
            if stop.is_set():
                break
        if resampler is not None:
            pending += resampler.flush()
        await send_ready(True)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return sent
