"""Phone calls through the bridge with SIPp as the phone network (SIP) and a test phone socket for the
media (PCMU RTP, speech from our own TTS), the real agent service, PostgreSQL routing data and Redis.

The caller's speech goes in as RTP, the agent's greeting and answer come back as RTP, are decoded and
recognised offline (PocketSphinx); the call record's events, Redis state and slot are checked."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import pytest

import audio_core
from services.agent.demo_agent import demo_agent
from services.agent.ports import VoiceSelection
from services.agent.profile import build_profile
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech
from services.bridge.state import CallState
from services.shared.call_slots import active_calls_key
from services.shared.settings import Settings
from tests.bridge.env import SipEnv, run_sipp, sip_env
from tests.bridge.phone import RATE, RtpPhone

pytestmark = pytest.mark.usefixtures("triton")


@pytest.fixture(scope="module")
async def env(settings: Settings) -> AsyncIterator[SipEnv]:
    async with sip_env(settings) as e:
        yield e


@pytest.fixture(scope="module")
async def tts(settings: Settings) -> AsyncIterator[TritonTextToSpeech]:
    client = TritonTextToSpeech(settings.agent_service.tts)
    yield client
    await client.close()


async def speech_8k(tts: TritonTextToSpeech, text: str) -> bytes:
    resampler = audio_core.Resampler(tts.sample_rate, RATE)
    pcm = b"".join(
        [resampler.process(c) async for c in tts.synthesize(text, VoiceSelection("default_male_1"))]
    )
    return pcm + resampler.flush()


async def recognise(pcm_8k: bytes, settings: Settings) -> str:
    """What PocketSphinx hears in 8 kHz telephone audio (upsampled to its 16 kHz), with the demo
    agent's vocabulary as context."""
    pcm = audio_core.Resampler(RATE, 16000).process(pcm_8k)
    stt = PocketSphinxStt()
    stream = await stt.open(build_profile(demo_agent(), settings.agent_service).stt_context)
    for i in range(0, len(pcm), 640):
        await stream.push(pcm[i : i + 640])
    await stream.finalize()
    await stream.aclose()
    return " ".join([r.text async for r in stream.results() if r.is_final]).lower()


async def clean_telephone_speech(tts: TritonTextToSpeech, text: str) -> bytes:
    resampler = audio_core.Resampler(tts.sample_rate, RATE)
    voice = VoiceSelection(demo_agent().tts.voice_id or "default_female_1")
    pcm = b"".join([resampler.process(c) async for c in tts.synthesize(text, voice)]) + resampler.flush()
    return audio_core.ulaw_decode(audio_core.ulaw_encode(pcm))


def similar(heard: str, reference: str) -> bool:
    """At least half of the words recognised on the clean channel are recognised through the bridge."""
    ref = set(reference.split())
    return bool(ref) and len(ref & set(heard.split())) >= len(ref) / 2


async def wait_for(predicate: object, within_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def silence_after_speech(phone: RtpPhone, quiet_s: float = 1.0, within_s: float = 60.0) -> None:
    """Waits until the agent says something (from now on) and then is quiet for `quiet_s`."""
    frame = 160 * 2
    deadline = asyncio.get_running_loop().time() + within_s
    heard = False
    start = len(phone.audio())
    while asyncio.get_running_loop().time() < deadline:
        pcm = phone.audio()[start:]
        tail = pcm[-int(quiet_s * RATE) * 2 :]
        level = max(
            (audio_core.rms_dbfs(tail[i : i + frame]) for i in range(0, len(tail), frame)), default=-120
        )
        heard = heard or any(
            audio_core.rms_dbfs(pcm[i : i + frame]) > -40 for i in range(0, len(pcm), frame * 10)
        )
        if heard and len(tail) >= int(quiet_s * RATE) * 2 and level < -45:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not finish speaking")


@contextlib.asynccontextmanager
async def phone() -> AsyncIterator[RtpPhone]:
    p = RtpPhone()
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_inbound_call_greeting_question_answer_and_agent_hangs_up(
    env: SipEnv, tts: TritonTextToSpeech, settings: Settings
) -> None:
    t = await env.tenant()
    question = await speech_8k(tts, "What are your opening hours on Saturday?")
    goodbye = await speech_8k(tts, "Thank you, goodbye.")
    async with phone() as p:
        sipp = await run_sipp(env, "uac_bridge_hangs_up", "-set", "rtp", str(p.port), service=t.number)
        await wait_for(lambda: env.calls, 20, "the call to reach the bridge")
        call = env.calls[-1]
        await asyncio.wait_for(p.first_packet.wait(), 20)
        await silence_after_speech(p)
        greeting_end = len(p.audio())
        p.say(question)
        await wait_for(lambda: not p.speaking, 20, "the question to be said")
        await silence_after_speech(p, within_s=60)
        answer_end = len(p.audio())
        p.say(goodbye)
        code, log = await sipp.wait(90)
        assert code == 0, log[-3000:]
    await wait_for(call.ended.is_set, 10, "the call to end")
    greeting = await recognise(p.audio()[:greeting_end], settings)
    answer = await recognise(p.audio()[greeting_end:answer_end], settings)
    said = [text for who, text in call.transcript if who == "agent"]
    assert len(said) >= 3, call.transcript  # greeting, the answer, goodbye
    # PocketSphinx on 8 kHz espeak speech is rough, so the yardstick is what it makes of the same words
    # on a clean telephone channel (TTS -> 8 kHz -> G.711, no network): the bridge must not lose them.
    for heard_text, text in ((greeting, said[0]), (answer, said[1])):
        reference = await recognise(await clean_telephone_speech(tts, text), settings)
        assert similar(heard_text, reference), (heard_text, reference, text)
    heard = " ".join(text.lower() for who, text in call.transcript if who == "caller")
    assert re.search(r"hours|saturday|open", heard), call.transcript
    assert call.end_reason.startswith("agent_hangup")
    assert env.events.of(call.call_id) == ["call_ringing", "call_connected", "call_ended"]
    ringing = env.events.get(call.call_id, "call_ringing")
    assert ringing.to_number == t.number and ringing.agent_id == t.agent_id  # type: ignore[attr-defined]
    ended = env.events.get(call.call_id, "call_ended")
    assert ended.duration.seconds > 3 and ended.from_number == "+15550100"  # type: ignore[attr-defined]
    state = await env.redis.hgetall(f"call:{call.call_id}:state")
    assert state[b"state"] == CallState.ENDED.value.encode() and state[b"tenant_id"] == t.tenant_id.encode()
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0
    assert "BYE" in log and "200 OK" in log
