"""Deepgram through the real `deepgram-sdk` against the live-transcription WebSocket peer; the STT chain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from services.agent.ports import (
    CannotContinue,
    ProviderUnavailable,
    SpeechToText,
    SttContext,
    SttStream,
    Transcription,
)
from services.agent.providers.stt.deepgram import DeepgramStream, DeepgramStt
from services.agent.resilience import breaker as policies
from services.agent.resilience.stt import FallbackSpeechToText, FallbackSttStream, GuardedSpeechToText
from services.agent.resilience.telemetry import Telemetry
from services.shared.settings import SttSettings
from tests.peers.deepgram_peer import DeepgramPeer

FRAME = 640  # 20 ms at 16 kHz PCM16


def speech(seconds: float) -> bytes:
    """Voice-like audio for the peer's energy check (what it 'hears' is scripted)."""
    t = np.arange(int(16000 * seconds)) / 16000
    return (np.sin(2 * np.pi * 220 * t) * 6000).astype("<i2").tobytes()


async def push(stream: SttStream, pcm: bytes) -> None:
    for start in range(0, len(pcm), FRAME):
        await stream.push(pcm[start : start + FRAME])


class Collector:
    def __init__(self, stream: SttStream) -> None:
        self.items: list[Transcription] = []
        self.error: BaseException | None = None
        self.final = asyncio.Event()
        self._task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: SttStream) -> None:
        try:
            async for item in stream.results():
                self.items.append(item)
                if item.is_final:
                    self.final.set()
        except (ProviderUnavailable, CannotContinue) as exc:
            self.error = exc
            self.final.set()

    async def wait_final(self, within_s: float = 5.0) -> Transcription:
        await asyncio.wait_for(self.final.wait(), within_s)
        self.final.clear()
        finals = [i for i in self.items if i.is_final]
        assert finals, f"no final transcript ({self.error!r})"
        return finals[-1]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def deepgram(
    peer: DeepgramPeer, model: str = "nova-2", key: str | None = None, **settings: Any
) -> DeepgramStt:
    return DeepgramStt(
        SttSettings(deepgram_url=peer.url, **settings),
        key or peer.api_key,
        model=model,
    )


async def test_interim_and_final_results_with_the_documented_parameters(deepgram_peer: DeepgramPeer) -> None:
    deepgram_peer.utterances.append("What are your opening hours?")
    stream = await deepgram(deepgram_peer).open(SttContext(keywords=["Smith", "clinic"]))
    results = Collector(stream)
    await push(stream, speech(1.6))
    await stream.finalize()
    final = await results.wait_final()
    assert final.text == "What are your opening hours?"
    interims = [i.text for i in results.items if not i.is_final]
    assert interims[0] == "What" and len(interims) >= 3
    await stream.aclose()
    await results.stop()
    (conn,) = deepgram_peer.connections
    assert conn.headers["Authorization"] == f"Token {deepgram_peer.api_key}"
    assert {
        k: conn.params[k]
        for k in (
            "model",
            "encoding",
            "sample_rate",
            "interim_results",
            "punctuate",
            "smart_format",
            "language",
        )
    } == {
        "model": "nova-2",
        "encoding": "linear16",
        "sample_rate": "16000",
        "interim_results": "true",
        "punctuate": "true",
        "smart_format": "true",
        "language": "en-US",
    }
    assert conn.finalizes == 1 and conn.close_stream and conn.close_code == 1000


async def test_keepalive_holds_a_silent_socket_open(deepgram_peer: DeepgramPeer) -> None:
    deepgram_peer.idle_timeout_s = 0.5  # Deepgram: 10 s; shortened so the test stays short
    deepgram_peer.utterances.append("Hello?")
    stream = await deepgram(deepgram_peer, keepalive_seconds=0.2).open(SttContext())
    assert isinstance(stream, DeepgramStream)
    results = Collector(stream)
    await asyncio.sleep(1.2)  # the caller is silent: no audio is pushed
    await push(stream, speech(0.6))
    await stream.finalize()
    assert (await results.wait_final()).text == "Hello?"
    await stream.aclose()
    await results.stop()
    assert deepgram_peer.connections[0].keepalives >= 3
    assert deepgram_peer.connections[0].close_code == 1000  # never the 1011 NET-0001 idle close


async def test_without_keepalive_the_idle_close_is_a_failure(deepgram_peer: DeepgramPeer) -> None:
    deepgram_peer.idle_timeout_s = 0.3
    stream = await deepgram(deepgram_peer, keepalive_seconds=9.0).open(SttContext())
    results = Collector(stream)
    await asyncio.wait_for(results.final.wait(), 3)
    assert isinstance(results.error, ProviderUnavailable) and "1011" in results.error.reason
    with pytest.raises(ProviderUnavailable):
        await stream.push(speech(0.02))
    await stream.aclose()


@pytest.mark.parametrize("status", [401, 429, 503])
async def test_refused_handshakes_are_provider_unavailable(deepgram_peer: DeepgramPeer, status: int) -> None:
    if status == 401:
        stt = deepgram(deepgram_peer, key="wrong")
    else:
        deepgram_peer.refuse["nova-2"] = status
        stt = deepgram(deepgram_peer)
    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        await stt.open(SttContext())


class ScriptedOffline:
    """Stands in for PocketSphinx in the chain tests (its real accuracy is tested in tests/agent)."""

    name = "offline"
    sample_rate = 16000

    def __init__(self, text: str) -> None:
        self.text = text
        self.heard = 0

    async def open(self, context: SttContext) -> SttStream:
        return _OfflineStream(self)


class _OfflineStream:
    def __init__(self, owner: ScriptedOffline) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[Transcription | None] = asyncio.Queue()

    async def push(self, pcm16: bytes) -> None:
        self._owner.heard += len(pcm16)

    async def finalize(self) -> None:
        self._queue.put_nowait(Transcription(self._owner.text, True, 0.5))

    async def results(self) -> AsyncIterator[Transcription]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def aclose(self) -> None:
        self._queue.put_nowait(None)


def stt_chain(
    peer: DeepgramPeer, telemetry: Telemetry, offline: SpeechToText | None = None
) -> FallbackSpeechToText:
    tiers: list[SpeechToText] = [
        GuardedSpeechToText(
            deepgram(peer, model), telemetry.breaker(f"deepgram:{model}", policies.DEEPGRAM), telemetry
        )
        for model in ("nova-2", "nova-1")
    ]
    if offline is not None:
        tiers.append(offline)
    return FallbackSpeechToText(tiers, telemetry, final_stall_s=0.5)


async def test_socket_dropped_mid_utterance_reconnects_without_losing_the_final(
    deepgram_peer: DeepgramPeer,
) -> None:
    deepgram_peer.utterances.append("I would like to book an appointment.")
    deepgram_peer.drop_after_s, deepgram_peer.drops_left = 0.6, 1
    stream = await stt_chain(deepgram_peer, Telemetry()).open(SttContext())
    assert isinstance(stream, FallbackSttStream)
    results = Collector(stream)
    await push(stream, speech(1.5))
    await stream.finalize()
    final = await results.wait_final()
    assert final.text == "I would like to book an appointment."
    first, second = deepgram_peer.connections
    assert first.close_code == -1 and second.params["model"] == "nova-2"  # reconnected to the same model
    # The whole utterance reached the new socket: what the old one had heard was replayed.
    assert second.audio_bytes >= len(speech(1.5))
    await stream.aclose()
    await results.stop()


async def test_nova2_refused_uses_nova1_then_offline(deepgram_peer: DeepgramPeer) -> None:
    telemetry = Telemetry()
    deepgram_peer.refuse["nova-2"] = 429
    deepgram_peer.utterances.append("Goodbye.")
    stream = await stt_chain(deepgram_peer, telemetry).open(SttContext())
    assert isinstance(stream, FallbackSttStream) and stream.tier_name == "deepgram:nova-1"
    results = Collector(stream)
    await push(stream, speech(0.8))
    await stream.finalize()
    assert (await results.wait_final()).text == "Goodbye."
    await stream.aclose()
    await results.stop()

    deepgram_peer.refuse["nova-1"] = 503
    offline = ScriptedOffline("goodbye")
    stream = await stt_chain(deepgram_peer, telemetry, offline).open(SttContext())
    assert isinstance(stream, FallbackSttStream) and stream.tier_name == "offline"
    await stream.aclose()


async def test_a_stalled_final_moves_down_the_chain_with_the_utterance(deepgram_peer: DeepgramPeer) -> None:
    deepgram_peer.finalize_delay_s = 3.0
    deepgram_peer.utterances.append("never delivered")
    offline = ScriptedOffline("what are your opening hours")
    stream = await stt_chain(deepgram_peer, Telemetry(), offline).open(SttContext())
    results = Collector(stream)
    await push(stream, speech(1.0))
    await stream.finalize()
    final = await results.wait_final(within_s=5)
    assert final.text == "what are your opening hours"
    assert isinstance(stream, FallbackSttStream) and stream.tier_name == "offline"
    assert offline.heard >= len(speech(1.0))  # the utterance was replayed into the offline recogniser
    await stream.aclose()
    await results.stop()


async def test_every_recogniser_down_is_cannot_continue(deepgram_peer: DeepgramPeer) -> None:
    deepgram_peer.refuse.update({"nova-2": 503, "nova-1": 503})
    stream = await stt_chain(deepgram_peer, Telemetry()).open(SttContext())
    results = Collector(stream)
    await asyncio.wait_for(results.final.wait(), 3)
    assert isinstance(results.error, CannotContinue) and results.error.port == "stt"
    await stream.push(speech(0.1))  # pushes after that are ignored, not errors
    await stream.aclose()


async def test_deepgram_breaker_opens_after_five_failures(deepgram_peer: DeepgramPeer) -> None:
    telemetry = Telemetry()
    deepgram_peer.refuse.update({"nova-2": 503})
    chain = stt_chain(deepgram_peer, telemetry)
    for _ in range(5):
        stream = await chain.open(SttContext())
        await stream.aclose()
    attempts = sum(c == "nova-2" for c in [conn.params.get("model") for conn in deepgram_peer.connections])
    assert attempts == 0  # refused at the handshake: no connection was recorded
    assert telemetry.breakers["deepgram:nova-2"].state == policies.BreakerState.OPEN
    assert telemetry.breakers["deepgram:nova-1"].state == policies.BreakerState.CLOSED
