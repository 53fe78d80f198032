"""Phone calls through the bridge with SIPp as the phone network (SIP) and a test phone socket for the
media (PCMU RTP, speech from our own TTS), the real agent service, PostgreSQL routing data and Redis.

The caller's speech goes in as RTP, the agent's greeting and answer come back as RTP, are decoded and
recognised offline (PocketSphinx); the call record's events, Redis state and slot are checked."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import uuid
import wave
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import grpc
import numpy as np
import pytest

import audio_core
from services.agent.demo_agent import demo_agent
from services.agent.ports import VoiceSelection
from services.agent.profile import build_profile
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech
from services.bridge.call import BridgeCall, CallInfo
from services.bridge.sip.digest import digest_response, parse_challenge
from services.bridge.state import CallState
from services.control.auth import Permission
from services.shared.call_slots import active_calls_key
from services.shared.grpc_channels import open_channel
from services.shared.recordings.archive import RecordingArchive
from services.shared.recordings.writer import RecordingWriter, call_record_id
from services.shared.settings import Settings
from services.softphone.rtp_phone import RATE, RtpPhone
from tests.bridge.env import SCENARIOS, SipEnv, SippRun, Tenant, free_udp_port, run_sipp, sip_env
from voice.v1 import (
    agent_session_pb2,
    call_control_pb2,
    call_control_pb2_grpc,
    calls_pb2,
    calls_pb2_grpc,
    common_pb2,
)

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


QUESTION = "What are your opening hours on Saturday?"


def heard_some_of(heard: str, said: str) -> bool:
    """The agent transcribed the caller's turn and got some of its words. (How many is the offline
    recogniser's business on 8 kHz G.711 speech; the bridge only has to deliver it intact.)"""
    return bool(set(heard.split()) & set(re.findall(r"[a-z']+", said.lower())))


async def clean_telephone_speech(tts: TritonTextToSpeech, text: str) -> bytes:
    resampler = audio_core.Resampler(tts.sample_rate, RATE)
    voice = VoiceSelection(demo_agent().tts.voice_id or "default_female_1")
    pcm = b"".join([resampler.process(c) async for c in tts.synthesize(text, voice)]) + resampler.flush()
    return audio_core.ulaw_decode(audio_core.ulaw_encode(pcm))


def similar(heard: str, reference: str) -> bool:
    """A third of the words recognised on the clean channel (and at least two) are recognised through
    the bridge: PocketSphinx on 8 kHz espeak speech varies with small differences in resampling."""
    ref = set(reference.split())
    return bool(ref) and len(ref & set(heard.split())) >= max(2, len(ref) / 3)


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
    question = await speech_8k(tts, QUESTION)
    goodbye = await speech_8k(tts, "Thank you, goodbye.")
    earlier = len(env.calls)
    async with phone() as p:
        sipp = await run_sipp(env, "uac_bridge_hangs_up", "-set", "rtp", str(p.port), service=t.number)
        await wait_for(lambda: len(env.calls) > earlier, 20, "the call to reach the bridge")
        call = env.calls[earlier]
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
    await wait_for(call.done.is_set, 10, "the call to end")
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
    assert heard_some_of(heard, QUESTION), call.transcript
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


@pytest.mark.parametrize("case", ["unknown_number", "suspended", "no_credit", "concurrency"])
async def test_refused_calls_leave_nothing_behind(env: SipEnv, case: str) -> None:
    t = await env.tenant(max_calls=0 if case == "concurrency" else 10)
    number, status = t.number, {"suspended": 403, "no_credit": 503, "concurrency": 486}.get(case, 404)
    async with env.cp.pool.acquire() as conn:
        if case == "suspended":
            await conn.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1::uuid", t.tenant_id)
        elif case == "no_credit":
            await conn.execute(
                "UPDATE credit_buckets SET minutes_used = minutes_total WHERE tenant_id = $1::uuid",
                t.tenant_id,
            )
    if case == "unknown_number":
        number = "+15559999999"
    scenario = env.workdir / f"refused_{status}.xml"
    template = (SCENARIOS / "uac_rejected.xml.tmpl").read_text()
    scenario.write_text(template.replace("STATUS", str(status)))
    before = len(env.calls)
    sipp = await run_sipp(env, scenario, "-set", "rtp", "4000", service=number)
    code, log = await sipp.wait(30)
    assert code == 0, log[-3000:]
    assert f"SIP/2.0 {status}" in log
    assert len(env.calls) == before  # no call, no events
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_caller_cancels_while_it_rings(env: SipEnv) -> None:
    t = await env.tenant()
    env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"auto_answer": False})
    try:
        sipp = await run_sipp(env, "uac_cancel", "-set", "rtp", "4000", service=t.number)
        code, log = await sipp.wait(30)
    finally:
        env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"auto_answer": True})
    assert code == 0, log[-3000:]
    call = env.calls[-1]
    await wait_for(call.done.is_set, 5, "the call to end")
    assert call.end_reason == "cancelled" and call.info.tenant_id == t.tenant_id
    assert env.events.of(call.call_id) == ["call_ringing", "call_ended"]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_caller_hangs_up_mid_call_with_dtmf_and_garbage_around(env: SipEnv) -> None:
    """DTMF reaches the agent; malformed SIP and RTP from a foreign host are refused while the call
    goes on; the caller's BYE ends the call."""
    t = await env.tenant()
    loop = asyncio.get_running_loop()
    async with phone() as p:
        sipp = await run_sipp(
            env, "uac_caller_hangs_up", "-set", "rtp", str(p.port), "-d", "6000", service=t.number
        )
        await asyncio.wait_for(p.first_packet.wait(), 20)
        call = env.calls[-1]
        p.press("5")
        # Malformed SIP: answered with 400 where it can be, dropped otherwise; the call is unaffected.
        garbage, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        bad = (
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: junk\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 99\r\n\r\n"
        )
        for data in (bad, b"\xff" * 3000, b"INVITE sip:x SIP/2.0\r\n\r\n", b"x" * 70000):
            garbage.sendto(data, ("127.0.0.1", env.bridge.ua.port))
        garbage.close()
        # RTP toward the call's media port from another host address.
        assert call.media is not None
        foreign, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.2", 0)
        )
        foreign.sendto(audio_core.build_rtp(0, 1, 160, 1234, b"\xff" * 160), ("127.0.0.1", call.media.port))
        foreign.sendto(b"\x80\x00", ("127.0.0.1", call.media.port))
        foreign.close()
        code, log = await sipp.wait(40)
        assert code == 0, log[-3000:]
    await wait_for(call.done.is_set, 5, "the call to end")
    assert call.end_reason == "caller_hangup"
    assert ("caller", "5") in call.transcript, call.transcript
    assert env.bridge.ua.malformed >= 3
    assert call.media is not None and call.media.stats.foreign >= 2 and call.media.stats.dtmf >= 1
    assert env.events.of(call.call_id)[-1] == "call_ended"
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def _outbound(
    env: SipEnv, t: Tenant, scenario: str, p: RtpPhone | None, ring_s: float
) -> tuple[BridgeCall, SippRun]:
    port = free_udp_port()
    args = ["-set", "rtp", str(p.port if p else 4000)] if p else []
    sipp = await run_sipp(env, scenario, *args, port=port)
    await asyncio.sleep(0.3)  # SIPp binds its port
    env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"trunk": f"127.0.0.1:{port}"})
    info = CallInfo(str(uuid.uuid4()), t.tenant_id, t.agent_id, "outbound", t.number, "+15557654321", {})
    call = await env.bridge.dial(info, ring_s, max_calls=10)
    return call, sipp


async def test_outbound_call_answered_then_hung_up_by_the_platform(env: SipEnv) -> None:
    t = await env.tenant()
    async with phone() as p:
        call, sipp = await _outbound(env, t, "uas_answer", p, 10)
        await asyncio.wait_for(p.first_packet.wait(), 20)
        await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
        await silence_after_speech(p)  # the agent greets the callee
        await call.end("api_hangup")
        code, log = await sipp.wait(20)
        assert code == 0, log[-3000:]
    assert env.events.of(call.call_id) == ["call_ringing", "call_connected", "call_ended"]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


@pytest.mark.parametrize(("scenario", "reason"), [("uas_busy", "busy"), ("uas_no_answer", "no_answer")])
async def test_outbound_call_not_answered_fails_with_the_reason(
    env: SipEnv, scenario: str, reason: str
) -> None:
    t = await env.tenant()
    call, sipp = await _outbound(env, t, scenario, None, 1.5)
    code, log = await sipp.wait(30)
    assert code == 0, log[-3000:]
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == reason
    assert env.events.of(call.call_id) == ["call_ringing", "call_failed"]
    failed = env.events.get(call.call_id, "call_failed")
    assert failed.reason == reason and failed.to_number == "+15557654321"  # type: ignore[attr-defined]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_post_calls_is_placed_by_the_bridge_and_fails_with_the_reason(env: SipEnv) -> None:
    """CreateCall (POST /v1/calls) -> the control plane's Dial -> the bridge -> a busy callee: the call
    fails with reason busy and its concurrent-call slot is free again."""
    t = await env.tenant()
    port = free_udp_port()
    sipp = await run_sipp(env, "uas_busy", port=port)
    await asyncio.sleep(0.3)
    env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"trunk": f"127.0.0.1:{port}"})
    stub = calls_pb2_grpc.CallServiceStub(env.cp.channel)
    reply = await stub.CreateCall(
        calls_pb2.CreateCallRequest(agent_id=t.agent_id, to_number="+15557654321"),
        metadata=env.cp.metadata(t.tenant_id, Permission.WRITE),
    )
    code, log = await sipp.wait(30)
    assert code == 0, log[-3000:]
    call = env.call(reply.call.id)
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == "busy" and call.info.from_number == t.number
    assert env.events.of(call.call_id) == ["call_ringing", "call_failed"]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_call_control_rpcs_act_on_the_live_call(env: SipEnv) -> None:
    """Answer (auto-answer off), Hold and Resume (re-INVITEs the phone answers), and a Transfer to a
    second phone (SIPp) through
    CallControlService, as the control plane calls them; then the caller hangs up."""
    t = await env.tenant()
    channel = open_channel(env.cp.settings, env.rpc.address, identity="control")
    stub = call_control_pb2_grpc.CallControlServiceStub(channel)
    env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"auto_answer": False})
    target_port = free_udp_port()
    try:
        async with phone() as p, phone() as reception:
            sipp = await run_sipp(env, "uac_held", "-set", "rtp", str(p.port), "-d", "8000", service=t.number)
            await wait_for(lambda: env.calls and env.calls[-1].info.to_number == t.number, 10, "the call")
            call = env.calls[-1]
            await wait_for(lambda: call.state == CallState.RINGING, 10, "ringing")
            answered = await stub.Answer(call_control_pb2.AnswerRequest(call_id=call.call_id))
            assert answered.leg.direction == common_pb2.CALL_DIRECTION_INBOUND
            await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
            held = await stub.Hold(call_control_pb2.HoldRequest(call_id=call.call_id))
            assert held.leg.status == common_pb2.CALL_STATUS_ON_HOLD
            assert (await env.redis.hget(f"call:{call.call_id}:state", "state")) == b"on_hold"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Hold(call_control_pb2.HoldRequest(call_id=call.call_id))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            await stub.Resume(call_control_pb2.ResumeRequest(call_id=call.call_id))
            assert call.state == CallState.CONVERSING
            target = await run_sipp(env, "uas_answer", "-set", "rtp", str(reception.port), port=target_port)
            await asyncio.sleep(0.3)
            env.bridge.sip_settings = env.bridge.sip_settings.model_copy(
                update={"trunk": f"127.0.0.1:{target_port}"}
            )
            moved = await stub.Transfer(
                call_control_pb2.CallControlServiceTransferRequest(
                    call_id=call.call_id, target="ext:100", type=agent_session_pb2.TRANSFER_TYPE_BLIND
                )
            )
            assert moved.leg.status == common_pb2.CALL_STATUS_TRANSFERRING
            await asyncio.wait_for(reception.first_packet.wait(), 20)  # the caller, relayed
            code, log = await sipp.wait(40)
            assert code == 0, log[-3000:]
            assert "a=sendonly" in log and log.count("INVITE sip:") >= 2  # held by a re-INVITE
            code, log = await target.wait(20)
            assert code == 0, log[-3000:]
    finally:
        env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"auto_answer": True})
        await channel.close()
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == "transferred"
    assert env.events.of(call.call_id) == [
        "call_ringing",
        "call_connected",
        "call_transfer_requested",
        "call_transferred",
        "call_ended",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        async with open_channel(env.cp.settings, env.rpc.address, identity="control") as again:
            await call_control_pb2_grpc.CallControlServiceStub(again).Hangup(
                call_control_pb2.HangupRequest(call_id=call.call_id)
            )
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_caller_understood_through_loss_and_jitter(env: SipEnv, tts: TritonTextToSpeech) -> None:
    """5 % packet loss and up to 60 ms of jitter (reordering included) on the RTP toward the bridge:
    the jitter buffer and PLC keep the caller's question recognisable for the agent."""
    t = await env.tenant()
    question = await speech_8k(tts, QUESTION)
    async with phone() as p:
        p.impair(loss=0.05, jitter_ms=60)
        sipp = await run_sipp(
            env, "uac_caller_hangs_up", "-set", "rtp", str(p.port), "-d", "16000", service=t.number
        )
        await asyncio.wait_for(p.first_packet.wait(), 20)
        call = env.calls[-1]
        await silence_after_speech(p)
        p.say(question)
        await p.spoken()
        await wait_for(lambda: any(who == "caller" for who, _ in call.transcript), 15, "the question heard")
        code, log = await sipp.wait(40)
        assert code == 0, log[-3000:]
    heard = " ".join(text.lower() for who, text in call.transcript if who == "caller")
    assert heard_some_of(heard, QUESTION), call.transcript
    assert call.media is not None and call.media.inbound is not None
    stats = call.media.inbound.stats()
    assert stats["lost"] > 0 and stats["concealed"] > 0, stats  # the impairment really happened


async def test_merge_joins_a_second_caller_into_the_call(env: SipEnv) -> None:
    """Merge: the second call's caller joins the first call (mixed in the bridge); its agent leaves and
    its record ends as merged; when the first caller hangs up the bridge hangs up the second."""
    t = await env.tenant()
    channel = open_channel(env.cp.settings, env.rpc.address, identity="control")
    stub = call_control_pb2_grpc.CallControlServiceStub(channel)
    try:
        async with phone() as host_phone, phone() as guest_phone:
            host_sipp = await run_sipp(
                env,
                "uac_caller_hangs_up",
                "-set",
                "rtp",
                str(host_phone.port),
                "-d",
                "9000",
                service=t.number,
            )
            await asyncio.wait_for(host_phone.first_packet.wait(), 20)
            host = env.calls[-1]
            guest_sipp = await run_sipp(
                env, "uac_bridge_hangs_up", "-set", "rtp", str(guest_phone.port), service=t.number
            )
            await asyncio.wait_for(guest_phone.first_packet.wait(), 20)
            guest = env.calls[-1]
            await wait_for(
                lambda: host.state == CallState.CONVERSING and guest.state == CallState.CONVERSING,
                20,
                "agents",
            )
            merged = await stub.Merge(
                call_control_pb2.MergeRequest(call_id=host.call_id, other_call_id=guest.call_id)
            )
            assert merged.leg.call_id == host.call_id
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await stub.Merge(
                    call_control_pb2.MergeRequest(call_id=host.call_id, other_call_id=guest.call_id)
                )
            assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            heard_before = len(guest_phone.received)
            host_phone.say(b"\x10\x27" * 8000)  # one second of the host caller (a loud DC step)
            code, log = await host_sipp.wait(40)
            assert code == 0, log[-3000:]
            code, log = await guest_sipp.wait(20)
            assert code == 0, log[-3000:]
            assert len(guest_phone.received) > heard_before + 100  # the merged call kept sending to it
    finally:
        await channel.close()
    await wait_for(lambda: host.done.is_set() and guest.done.is_set(), 10, "both calls to end")
    assert guest.end_reason == "merged" and host.end_reason == "caller_hangup"
    assert env.events.of(guest.call_id)[-1] == "call_ended"
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_a_phone_call_is_recorded_by_the_bridge_when_its_agent_asks(
    env: SipEnv, tts: TritonTextToSpeech, settings: Settings
) -> None:
    """The bridge carries a phone call's audio, so it records it: an encrypted stereo WAV (caller left,
    agent right) under the call record's id, for an agent with conversation.recording_enabled only."""
    url = urlparse(settings.recordings.s3_endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 80), timeout=2).close()
    except OSError:
        pytest.fail(f"no S3 server at {settings.recordings.s3_endpoint}: run `make services`")
    t = await env.tenant()
    async with env.cp.pool.acquire() as conn:  # the tenant's agent configuration, as an API edit sets it
        await conn.execute(
            "UPDATE agents SET settings = $2::jsonb WHERE id = $1",
            uuid.UUID(t.agent_id),
            '{"conversation": {"recordingEnabled": true}}',
        )
    writer = RecordingWriter(env.cp.settings)
    env.bridge.deps.recordings = writer
    try:
        question = await speech_8k(tts, QUESTION)
        earlier = len(env.calls)  # the module's earlier tests left their calls in the list
        async with phone() as p:
            sipp = await run_sipp(env, "uac_bridge_hangs_up", "-set", "rtp", str(p.port), service=t.number)
            await wait_for(lambda: len(env.calls) > earlier, 20, "the call to reach the bridge")
            call = env.calls[earlier]
            await asyncio.wait_for(p.first_packet.wait(), 20)
            await silence_after_speech(p)
            p.say(question)
            await wait_for(lambda: not p.speaking, 20, "the question to be said")
            await silence_after_speech(p, within_s=60)
            await call.end("test_done")
            await sipp.wait(30)
        await wait_for(call.done.is_set, 10, "the call to end")
    finally:
        env.bridge.deps.recordings = None
        await writer.close()  # waits for the recording to be stored
    archive = RecordingArchive(env.cp.settings)
    try:
        wav = await archive.fetch(
            env.cp.pool, uuid.UUID(t.tenant_id), call_record_id(t.tenant_id, call.call_id)
        )
    finally:
        await archive.close()
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    caller_rms, agent_rms = (float(np.sqrt(np.mean(frames[:, i].astype(np.float64) ** 2))) for i in (0, 1))
    assert caller_rms > 100 and agent_rms > 100, (caller_rms, agent_rms)  # both sides are in it


def speech_frames(pcm16_8k: bytes, *, threshold: float = 300.0) -> int:
    """20 ms frames whose RMS is above `threshold` (speech, not silence or comfort noise)."""
    samples = np.frombuffer(pcm16_8k[: len(pcm16_8k) // 320 * 320], dtype=np.int16).astype(np.float64)
    if samples.size == 0:
        return 0
    rms = np.sqrt((samples.reshape(-1, 160) ** 2).mean(axis=1))
    return int((rms > threshold).sum())


async def test_warm_transfer_briefs_the_target_before_the_caller_joins(env: SipEnv) -> None:
    """A warm transfer holds the caller (re-INVITE a=sendonly), the target hears the briefing spoken
    from the request's context, and only then is the caller taken off hold and relayed to it."""
    t = await env.tenant()
    channel = open_channel(env.cp.settings, env.rpc.address, identity="control")
    stub = call_control_pb2_grpc.CallControlServiceStub(channel)
    target_port = free_udp_port()
    trunk = env.bridge.sip_settings.trunk
    try:
        async with phone() as p, phone() as reception:
            sipp = await run_sipp(env, "uac_held", "-set", "rtp", str(p.port), "-d", "4000", service=t.number)
            await wait_for(lambda: env.calls and env.calls[-1].info.to_number == t.number, 10, "the call")
            call = env.calls[-1]
            await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
            target = await run_sipp(env, "uas_answer", "-set", "rtp", str(reception.port), port=target_port)
            await asyncio.sleep(0.3)
            env.bridge.sip_settings = env.bridge.sip_settings.model_copy(
                update={"trunk": f"127.0.0.1:{target_port}"}
            )
            moved = await stub.Transfer(
                call_control_pb2.CallControlServiceTransferRequest(
                    call_id=call.call_id,
                    target="ext:100",
                    type=agent_session_pb2.TRANSFER_TYPE_WARM,
                    context="Caller John is asking about a double charge on his last invoice.",
                )
            )
            assert moved.leg.status == common_pb2.CALL_STATUS_TRANSFERRING
            await wait_for(lambda: call.relay_to is not None, 60, "the caller to be relayed")
            briefing = reception.audio()  # everything the target heard before the caller was relayed
            assert speech_frames(briefing) >= 50, "the target heard no briefing (at least 1 s of speech)"
            p.say(b"\x00" * 1600)  # the caller, now relayed, still reaches the target
            code, log = await sipp.wait(40)
            assert code == 0, log[-3000:]
            # Held while the target was briefed, then taken off hold to be connected.
            assert "a=sendonly" in log and log.count("INVITE sip:") >= 2
            code, log = await target.wait(20)
            assert code == 0, log[-3000:]
    finally:
        env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"trunk": trunk})
        await channel.close()
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == "transferred"
    assert env.events.of(call.call_id)[-3:] == ["call_transfer_requested", "call_transferred", "call_ended"]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def blind_transfer(env: SipEnv, call: BridgeCall) -> None:
    async with open_channel(env.cp.settings, env.rpc.address, identity="control") as channel:
        moved = await call_control_pb2_grpc.CallControlServiceStub(channel).Transfer(
            call_control_pb2.CallControlServiceTransferRequest(
                call_id=call.call_id, target="ext:100", type=agent_session_pb2.TRANSFER_TYPE_BLIND
            )
        )
    assert moved.leg.status == common_pb2.CALL_STATUS_TRANSFERRING


async def test_blind_transfer_by_refer_to_a_trunk_that_takes_it(env: SipEnv) -> None:
    """The caller's trunk lists REFER: the bridge refers the caller to the target, the trunk's NOTIFY
    (sipfrag 200) says the target answered, the bridge hangs up its leg and the call ends transferred."""
    t = await env.tenant()
    async with phone() as p:
        sipp = await run_sipp(env, "uac_refer", "-set", "rtp", str(p.port), service=t.number)
        await wait_for(lambda: env.calls and env.calls[-1].info.to_number == t.number, 10, "the call")
        call = env.calls[-1]
        await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
        await blind_transfer(env, call)
        code, log = await sipp.wait(40)
        assert code == 0, log[-3000:]
    assert re.search(r"REFER sip:.*Refer-To: <sip:100@", log, re.S), log[-3000:]
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == "transferred" and call.relay_to is None  # the trunk carried it, not us
    assert env.events.of(call.call_id)[-3:] == ["call_transfer_requested", "call_transferred", "call_ended"]
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


async def test_a_failed_refer_falls_back_to_the_bridge_transfer(env: SipEnv) -> None:
    """The trunk accepts the REFER but reports the target failed (sipfrag 503): the bridge dials the
    target itself and relays the caller to it."""
    t = await env.tenant()
    target_port = free_udp_port()
    trunk = env.bridge.sip_settings.trunk
    try:
        async with phone() as p, phone() as reception:
            sipp = await run_sipp(
                env, "uac_refer_fails", "-set", "rtp", str(p.port), "-d", "3000", service=t.number
            )
            await wait_for(lambda: env.calls and env.calls[-1].info.to_number == t.number, 10, "the call")
            call = env.calls[-1]
            await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
            target = await run_sipp(env, "uas_answer", "-set", "rtp", str(reception.port), port=target_port)
            await asyncio.sleep(0.3)
            env.bridge.sip_settings = env.bridge.sip_settings.model_copy(
                update={"trunk": f"127.0.0.1:{target_port}"}
            )
            await blind_transfer(env, call)
            await asyncio.wait_for(reception.first_packet.wait(), 30)  # the caller, relayed by us
            code, log = await sipp.wait(40)
            assert code == 0, log[-3000:]
            assert "SIP/2.0 503 Service Unavailable" in log
            code, log = await target.wait(20)
            assert code == 0, log[-3000:]
    finally:
        env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"trunk": trunk})
    await wait_for(call.done.is_set, 10, "the call to end")
    assert call.end_reason == "transferred"
    assert await env.redis.scard(active_calls_key(t.tenant_id)) == 0


def check_digest(log: str, header: str, method: str, password: str) -> str:
    """The digest in the request SIPp received after its challenge, recomputed from the challenge."""
    sent = re.search(rf"^{header}: (Digest .*)$", log, re.M)
    assert sent is not None, log[-3000:]
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', sent.group(1)))
    challenge = re.search(r"^(?:WWW|Proxy)-Authenticate: (Digest .*)$", log, re.M)
    assert challenge is not None
    expected = digest_response(
        parse_challenge(challenge.group(1)),
        username=fields["username"],
        password=password,
        method=method,
        uri=fields["uri"],
        cnonce=fields["cnonce"],
    )
    assert fields["response"] == expected
    return str(fields["algorithm"])


async def test_outbound_invite_answers_the_trunks_digest_challenge(env: SipEnv) -> None:
    """The trunk answers the INVITE with 401 (digest SHA-256, qop=auth): the bridge retries once with
    Authorization (CSeq 2) and the call is answered."""
    t = await env.tenant()
    port = free_udp_port()
    trunk = env.bridge.sip_settings.trunk
    env.bridge.ua.credentials = ("bridge-user", "s3cret-from-env")
    try:
        async with phone() as p:
            sipp = await run_sipp(
                env, "uas_auth_answer", "-set", "rtp", str(p.port), "-set", "alg", "SHA-256", port=port
            )
            await asyncio.sleep(0.3)
            env.bridge.sip_settings = env.bridge.sip_settings.model_copy(
                update={"trunk": f"127.0.0.1:{port}"}
            )
            info = CallInfo(
                str(uuid.uuid4()), t.tenant_id, t.agent_id, "outbound", t.number, "+15557654321", {}
            )
            call = await env.bridge.dial(info, 10, max_calls=10)
            await wait_for(lambda: call.state == CallState.CONVERSING, 20, "the agent to join")
            await call.end("api_hangup")
            code, log = await sipp.wait(20)
            assert code == 0, log[-3000:]
    finally:
        env.bridge.ua.credentials = None
        env.bridge.sip_settings = env.bridge.sip_settings.model_copy(update={"trunk": trunk})
    assert check_digest(log, "Authorization", "INVITE", "s3cret-from-env") == "SHA-256"
    assert "CSeq: 2 INVITE" in log


async def test_register_answers_the_registrars_challenge(env: SipEnv) -> None:
    """REGISTER to the trunk, challenged with 407 (digest MD5): retried with Proxy-Authorization and
    granted (Expires 120)."""
    port = free_udp_port()
    env.bridge.ua.credentials = ("bridge-user", "s3cret-from-env")
    try:
        sipp = await run_sipp(env, "uas_register_auth", "-set", "alg", "MD5", port=port)
        await asyncio.sleep(0.3)
        resp = await env.bridge.ua.register(f"127.0.0.1:{port}", expires=300)
        code, log = await sipp.wait(20)
        assert code == 0, log[-3000:]
    finally:
        env.bridge.ua.credentials = None
    assert resp.status == 200 and resp.get("Expires") == "120"
    assert check_digest(log, "Proxy-Authorization", "REGISTER", "s3cret-from-env") == "MD5"
