"""TTS degradation: Triton (a scriptable stand-in behind the same port) -> recorded clips -> CannotContinue;
breaker thresholds and the exported gauge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from services.agent.metrics import AgentMetrics
from services.agent.ports import CannotContinue, VoiceSelection
from services.agent.providers.tts.triton import TtsUnavailableError
from services.agent.resilience import breaker as policies
from services.agent.resilience.breaker import BreakerState, CircuitBreaker
from services.agent.resilience.telemetry import Telemetry
from services.agent.resilience.tts import ClipLibrary, FallbackTextToSpeech, GuardedTextToSpeech

VOICE = VoiceSelection("default_female_1")


class Synth:
    name = "chatterbox"
    sample_rate = 24000

    def __init__(self) -> None:
        self.down = False

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        if self.down:
            raise TtsUnavailableError("unavailable", "connection refused")
        for _ in range(3):
            yield b"\x01\x00" * 2400


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def build(synth: Synth, telemetry: Telemetry) -> FallbackTextToSpeech:
    clips = ClipLibrary(synth.sample_rate)
    clips.want(["Let me check that for you."])
    guarded = GuardedTextToSpeech(
        synth,
        telemetry.breaker("chatterbox", policies.CHATTERBOX),
        telemetry,
        unavailable=(TtsUnavailableError,),
        first_audio_s=1.5,
        next_audio_s=5.0,
    )
    return FallbackTextToSpeech([guarded], clips, telemetry)


async def speak(tts: FallbackTextToSpeech, text: str) -> bytes:
    return b"".join([pcm async for pcm in tts.synthesize(text, VOICE)])


async def test_clips_stand_in_when_triton_is_down_then_transfer() -> None:
    synth, telemetry = Synth(), Telemetry()
    registry = CollectorRegistry()
    metrics = AgentMetrics.create(registry)
    telemetry.attach(metrics.errors, metrics.breaker_state)
    tts = build(synth, telemetry)
    first = await speak(tts, "Let me check that for you.")  # recorded as it is spoken
    synth.down = True
    assert await speak(tts, "Let me check that for you.") == first
    with pytest.raises(CannotContinue) as caught:
        await speak(tts, "Dr. Smith is free at nine.")
    assert caught.value.port == "tts"
    assert registry.get_sample_value("errors_total", {"service": "chatterbox", "type": "unavailable"}) == 2


def test_breaker_thresholds_half_open_and_gauge() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    metrics = AgentMetrics.create(registry)
    telemetry = Telemetry(clock)
    breaker = telemetry.breaker("deepgram:nova-2", policies.DEEPGRAM)
    telemetry.attach(metrics.errors, metrics.breaker_state)

    def gauge() -> float | None:
        return registry.get_sample_value("circuit_breaker_state", {"service": "deepgram:nova-2"})

    for _ in range(4):
        breaker.record_failure()
    assert gauge() == 0
    breaker.record_failure()
    assert gauge() == 1 and not breaker.allow()
    assert not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()  # the one trial call
    assert gauge() == 2
    assert not breaker.allow()  # no second trial while the first runs
    breaker.record_failure()  # the trial failed: open for another 30 s
    assert gauge() == 1
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert gauge() == 0 and breaker.allow()


def test_success_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker("claude", policies.CLAUDE, clock=Clock())
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
