"""`make bench-turns`: turn-taking as a caller experiences it, offline stack (Silero, PocketSphinx, the
policy, espeak-ng on Triton, Smart Turn), the fixed corpus in benchmarks/turns/corpus.py spoken by the
softphone in two voices. Prints one JSON object on stdout (progress on stderr):

  premature_endpoint_rate     digit and spelling dictation with 300-1200 ms pauses answered before the end
  backchannel_interrupt_rate  "okay", "uh huh", ... said while the agent talks that cleared its audio
  barge_in_ms_p50             real interruption: the caller's speech onset -> the agent's last frame to
                              arrive (the agent pauses on the first voiced evidence), at the caller
  barge_in_clear_ms_p50       ... -> ClearAudio (sent once the interruption is confirmed as speech)
  caller_e2e_ms {p50, p95}    end of the caller's speech -> first agent audio, at the caller
  wer_heldout                 word error rate on held-out sentences (not the agent's phrases)
  turn_model_ms_p50           one Smart Turn decision (features + inference, one thread)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import audio_core
from benchmarks.turns.corpus import (
    BACKCHANNELS,
    DICTATIONS,
    HELDOUT_SENTENCES,
    INTERRUPTIONS,
    PAUSES_S,
    QUESTIONS,
    VOICES,
)
from benchmarks.turns.recognition import recognise, word_errors
from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.ports import VoiceSelection
from services.agent.profile import build_profile
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.providers.turn.smart_turn import SmartTurn
from services.agent.server import build_server
from services.shared.settings import Settings, load_settings
from services.softphone.caller import CallRecord, CallScript, ScriptedCaller
from services.softphone.report import caller_e2e_ms, voiced


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def barge_in_ms(record: CallRecord) -> tuple[float, float] | None:
    """Onset of the caller's interrupting speech (its first voiced frame after the agent began the
    answer) to the last agent frame that arrived before the ClearAudio (what the caller hears as "the
    agent stopped"; the onset itself when none arrived after it), and to the ClearAudio; softphone clock."""
    clears = [t for t, name in record.events if name == "clear_audio"]
    speaking = [t for t, name in record.events if name == "AGENT_STATE_SPEAKING"]
    if not clears or len(speaking) < 2:
        return None
    answer_started = speaking[1]  # after the greeting
    onsets = [t for t, pcm in record.caller_audio if t > answer_started and voiced(pcm)]
    if not onsets or onsets[0] >= clears[0]:
        return None
    onset = onsets[0]
    last = max([t for t, _ in record.agent_audio if onset <= t < clears[0]], default=onset)
    return (last - onset) * 1000, (clears[0] - onset) * 1000


async def calls(caller: ScriptedCaller) -> dict[str, Any]:
    premature = dictations = 0
    for voice in VOICES:
        for line in DICTATIONS:
            for pause in PAUSES_S:
                record = await caller.call(CallScript(lines=[line], group_pause_s=pause, caller_voice=voice))
                replies = len([1 for _, who, _, _ in record.transcript if who == "agent"]) - 1
                early = replies != 1 or {lat.turn_index for lat in record.latencies} != {1}
                premature += early
                dictations += 1
                log(f"dictation {voice} pause {pause}s: {'PREMATURE' if early else 'one turn'}")
    interrupted = backchannels = 0
    for voice in VOICES:
        for word in BACKCHANNELS:
            script = CallScript(lines=[QUESTIONS[0], word], barge_in_after_s=1.5, caller_voice=voice)
            record = await caller.call(script)
            interrupted += record.clear_audio > 0
            backchannels += 1
            log(f"backchannel {voice} {word!r}: clear_audio={record.clear_audio}")
    barge: list[float] = []
    clear: list[float] = []
    for voice in VOICES:
        for line in INTERRUPTIONS:
            record = await caller.call(
                CallScript(lines=[QUESTIONS[0], line], barge_in_after_s=1.5, caller_voice=voice)
            )
            if (ms := barge_in_ms(record)) is not None:
                barge.append(ms[0])
                clear.append(ms[1])
            log(f"barge-in {voice}: {ms}")
    e2e: list[float] = []
    for voice in VOICES:
        record = await caller.call(CallScript(lines=list(QUESTIONS), caller_voice=voice))
        measured = caller_e2e_ms(record)
        e2e += measured
        log(f"questions {voice}: caller e2e {[round(x) for x in measured]}")
    return {
        "premature_endpoint_rate": round(premature / dictations, 3),
        "backchannel_interrupt_rate": round(interrupted / backchannels, 3),
        "barge_in_ms_p50": round(statistics.median(barge), 1) if barge else None,
        "barge_in_clear_ms_p50": round(statistics.median(clear), 1) if clear else None,
        "caller_e2e_ms": {"p50": percentile(e2e, 0.5), "p95": percentile(e2e, 0.95)},
        "samples": {"dictations": dictations, "backchannels": backchannels, "barge_ins": len(barge)},
    }


async def recognition(settings: Settings, tts: TritonTextToSpeech) -> dict[str, Any]:
    stt = PocketSphinxStt()
    context = build_profile(demo_agent(), settings.agent_service).stt_context
    model = SmartTurn()
    errors = words = 0
    model_ms: list[float] = []
    for voice in VOICES:
        for line in HELDOUT_SENTENCES:
            heard, _ = await recognise(stt, context, tts, line, voice)
            e, n = word_errors(line, heard)
            errors, words = errors + e, words + n
            resampler = audio_core.Resampler(tts.sample_rate, 16000)
            pcm = b"".join([resampler.process(c) async for c in tts.synthesize(line, VoiceSelection(voice))])
            started = time.perf_counter()
            model.predict(pcm[: 16000 * 2 * 8])
            model_ms.append((time.perf_counter() - started) * 1000)
    return {"wer_heldout": round(errors / words, 3), "turn_model_ms_p50": percentile(model_ms, 0.5)}


async def main() -> None:
    settings = load_settings()
    section = settings.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = build_server(
        settings.model_copy(update={"agent_service": section}),
        StaticDirectory([demo_agent()]),
        publish_events=False,
    )
    await server.start()
    tts = TritonTextToSpeech(settings.agent_service.tts)
    try:
        caller = ScriptedCaller(server.address, tts, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID)
        result = await calls(caller)
        result.update(await recognition(settings, tts))
    finally:
        await tts.close()
        await server.stop(grace=1)
    result["voices"] = list(VOICES)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
