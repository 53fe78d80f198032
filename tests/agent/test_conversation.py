"""Whole calls over real gRPC: the caller is the softphone, the agent runs Silero, PocketSphinx, the
policy LLM and espeak-ng on the real Triton server."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.providers.tts import TritonTextToSpeech
from services.shared.events import EventBus
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings, load_settings
from services.softphone.caller import CALLER_RATE, CallRecord, CallScript, ScriptedCaller
from services.softphone.report import voiced
from tests.agent.conftest import IDLE_AGENT_ID, FinishedSessions
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, events_pb2, media_pb2

GREETING = demo_agent().greeting
HOURS_ANSWER = demo_agent().faq[0].answer
SESSION_TASKS = re.compile(
    r"^(playout|transcripts|idle|receive|ended|reply-\d+|speaker|finish-turn|call-.*)$"
)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def agent_lines(record: CallRecord) -> list[tuple[str, bool]]:
    return [(text, interrupted) for _, who, text, interrupted in record.transcript if who == "agent"]


def caller_lines(record: CallRecord) -> list[str]:
    return [text for _, who, text, _ in record.transcript if who == "caller"]


async def test_greeting_then_answer_with_paced_continuous_audio(
    caller: ScriptedCaller, agent_server: GrpcServer
) -> None:
    record = await caller.call(CallScript(lines=["What are your opening hours?"]))
    assert record.status == "OK"
    lines = agent_lines(record)
    assert lines[0] == (GREETING, False)
    assert lines[1] == (HOURS_ANSWER, False)
    assert record.latencies and record.latencies[0].turn_index == 1
    # 20 ms PCM16 frames at 24 kHz; within a reply, the sample clock advances by exactly one frame.
    frames = record.agent_audio
    assert all(len(pcm) == 960 for _, pcm in frames)
    assert record.agent_rate == 24000
    assert record.frames_received > 5 * 50  # several seconds of speech
    metrics = await asyncio.to_thread(scrape, agent_server.metrics_port)
    for name in ("stt_latency_seconds", "llm_latency_seconds", "tts_latency_seconds", "e2e_latency_seconds"):
        assert f'{name}_count{{tenant="{DEMO_TENANT_ID}"' in metrics or f"{name}_count{{" in metrics, name
    assert 'calls_total{direction="inbound",status="completed"' in metrics


async def test_idle_caller_is_prompted_then_the_agent_ends_the_call(
    agent_server: GrpcServer, caller_tts: TritonTextToSpeech
) -> None:
    impatient = ScriptedCaller(
        agent_server.address, caller_tts, tenant_id=DEMO_TENANT_ID, agent_id=IDLE_AGENT_ID
    )
    record = await impatient.call(CallScript(lines=[], hangup_after_s=20))
    said = [text for text, _ in agent_lines(record)]
    assert said[1] == "Are you still there?"
    assert "Goodbye" in said[2]
    assert record.end_call is not None and record.end_call.reason == "caller_idle"


async def test_agent_voice_as_g711_when_the_bridge_asks_for_it(caller: ScriptedCaller) -> None:
    pcmu = media_pb2.AudioFormat(codec=media_pb2.AUDIO_CODEC_PCMU, sample_rate=8000, channels=1)
    record = await caller.call(CallScript(lines=[], output_format=pcmu, hangup_after_s=0))
    assert agent_lines(record)[0] == (GREETING, False)
    assert record.agent_rate == 8000
    assert {len(pcm) for _, pcm in record.agent_audio} == {160}


async def test_three_turn_call_ends_in_a_warm_transfer_with_a_briefing(caller: ScriptedCaller) -> None:
    lines = [
        "Hi, what are your opening hours on Saturday?",
        "I would like to book an appointment with Doctor Smith.",
        "Yes please.",
        "Can I speak to someone at reception please?",
    ]
    record = await caller.call(CallScript(lines=lines))
    said = [text for text, _ in agent_lines(record)]
    assert said[1] == HOURS_ANSWER
    assert said[2].startswith("Just to confirm: you'd like to book an appointment.")  # no booking yet
    assert said[3].startswith("I can book that for you.")
    assert said[4].startswith("Of course. I'm transferring you")
    assert record.transfer is not None
    assert record.transfer.type == pb.TRANSFER_TYPE_WARM and record.transfer.target == "ext:100"
    assert "reception" in record.transfer.context


async def test_barge_in_clears_audio_and_keeps_only_what_was_heard(
    caller: ScriptedCaller, finished: FinishedSessions
) -> None:
    record = await caller.call(
        CallScript(
            lines=["What are your opening hours?", "Can I speak to someone at reception please?"],
            barge_in_after_s=1.5,
        )
    )
    assert record.clear_audio == 1
    interrupted = [text for text, cut in agent_lines(record) if cut]
    assert len(interrupted) == 1
    heard = interrupted[0]
    assert heard and HOURS_ANSWER.startswith(heard) and heard != HOURS_ANSWER
    # Nothing of the interrupted answer is played after ClearAudio: the next audio is the new reply's.
    t_clear = next(t for t, name in record.events if name == "clear_audio")
    t_next_speaking = next(t for t, name in record.events if t > t_clear and name == "AGENT_STATE_SPEAKING")
    assert not [t for t, _ in record.agent_audio if t_clear < t < t_next_speaking - 0.001]
    # The history the LLM sees holds the truncated answer, not the full one.
    session = finished.by_call[record.call_id]
    agent_texts = [m.text for m in session.history.messages if m.role == "assistant"]
    assert heard in agent_texts and HOURS_ANSWER not in agent_texts
    assert record.transfer is not None  # and the interruption itself was answered
    # The agent paused on the first voiced evidence, well before the interruption was confirmed: on the
    # agent's audio clock, onset -> pause within 250 ms ...
    (onset, paused), *_ = session.pause.pauses
    assert 0 < paused - onset <= 0.25, session.pause.pauses
    # ... and at the caller, the agent's frames that still arrived after the caller's first voiced frame
    # (20 ms each; paced at 50 per second) cover at most 250 ms plus the VAD's window and the transport.
    answer_started = [t for t, name in record.events if name == "AGENT_STATE_SPEAKING"][1]
    caller_onset = next(t for t, pcm in record.caller_audio if t > answer_started and voiced(pcm))
    late = [t for t, _ in record.agent_audio if caller_onset < t < t_clear]
    assert len(late) <= 16, len(late)


@pytest.mark.parametrize("backchannel", ["Okay.", "Uh huh."])
async def test_a_backchannel_while_the_agent_talks_does_not_interrupt(
    caller: ScriptedCaller, finished: FinishedSessions, backchannel: str
) -> None:
    record = await caller.call(
        CallScript(lines=["What are your opening hours?", backchannel], barge_in_after_s=1.5)
    )
    assert record.clear_audio == 0, [(who, text) for _, who, text, _ in record.transcript]
    said = agent_lines(record)
    assert (HOURS_ANSWER, False) in said  # heard to the end
    # The backchannel paused the agent (it could have been an interruption); the reply then resumed from
    # the frame where it stopped: every frame of the answer reached the caller once, none cleared.
    session = finished.by_call[record.call_id]
    assert len(session.pause.pauses) == 1, session.pause.pauses


def noise_burst(seconds: float, seed: int = 7) -> bytes:
    """Broadband noise with a syllable-rate envelope (loud enough for the VAD to wonder), not words."""
    rng = np.random.default_rng(seed)
    n = int(CALLER_RATE * seconds)
    envelope = 0.6 + 0.4 * np.sin(np.linspace(0, 2 * np.pi * 4 * seconds, n))
    samples = rng.normal(0, 6000, n) * envelope
    return bytes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())


async def test_a_noise_burst_pauses_the_agent_and_the_reply_resumes(
    caller: ScriptedCaller, finished: FinishedSessions
) -> None:
    burst = noise_burst(0.3)
    record = await caller.call(
        CallScript(
            lines=["What are your opening hours?", "<noise>"], barge_in_after_s=1.5, sounds={"<noise>": burst}
        )
    )
    assert record.clear_audio == 0, [(who, text) for _, who, text, _ in record.transcript]
    assert (HOURS_ANSWER, False) in agent_lines(record)  # the answer played to its end
    session = finished.by_call[record.call_id]
    assert session.turn_index == 1  # the noise never became a caller turn
    # Silero gives broadband noise no speech probability: the agent does not even pause for it.
    assert session.pause.pauses == []


@pytest.mark.parametrize("pause_s", [0.3, 0.8, 1.2])
async def test_a_phone_number_read_with_pauses_is_one_turn(caller: ScriptedCaller, pause_s: float) -> None:
    # The end-of-turn model hears the pauses between digit groups as pauses, not ends of turn.
    record = await caller.call(
        CallScript(
            lines=["My number is | five five five | one two three | four five six seven"],
            group_pause_s=pause_s,
        )
    )
    replies = agent_lines(record)[1:]  # after the greeting
    assert len(replies) == 1, replies
    turns = {lat.turn_index for lat in record.latencies}
    assert turns == {1}
    assert len(caller_lines(record)) >= 2  # several recognised pieces ... all in one turn
    (latency,) = record.latencies
    assert latency.end_of_speech_time.seconds > 0  # filled in, on the wall clock


async def test_hang_up_mid_reply_leaves_no_task_behind(
    caller: ScriptedCaller, agent_server: GrpcServer
) -> None:
    record = await caller.call(
        CallScript(lines=["What are your opening hours?"], reply_timeout_s=0.5, hangup_after_s=0.0)
    )
    assert record.status == "OK"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = [t for t in asyncio.all_tasks() if SESSION_TASKS.match(t.get_name())]
        if not leftovers:
            break
        await asyncio.sleep(0.05)
    assert not leftovers, [t.get_name() for t in leftovers]


async def test_twenty_concurrent_calls_are_isolated(caller: ScriptedCaller) -> None:
    questions = {
        "What are your opening hours?": "We are open",
        "How much does a consultation cost?": "A standard consultation",
    }
    scripts = [list(questions)[i % 2] for i in range(20)]
    records = await asyncio.gather(*(caller.call(CallScript(lines=[q])) for q in scripts))
    assert len({r.call_id for r in records}) == 20
    for question, record in zip(scripts, records, strict=True):
        assert record.status == "OK"
        replies = [text for text, _ in agent_lines(record)]
        assert replies[0] == GREETING
        assert len(replies) == 2 and replies[1].startswith(questions[question]), replies


async def converse(address: str, requests: list[pb.ConverseRequest]) -> grpc.aio.AioRpcError:
    async def stream() -> AsyncIterator[pb.ConverseRequest]:
        for request in requests:
            yield request
        await asyncio.sleep(5)  # keep the stream open: the server must end it

    async with open_channel(load_settings(), address, identity="bridge") as channel:
        call = agent_session_pb2_grpc.AgentSessionServiceStub(channel).Converse(stream())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    return err.value


def start(**format_fields: int) -> pb.ConverseRequest:
    fmt = media_pb2.AudioFormat(codec=media_pb2.AUDIO_CODEC_PCM16, sample_rate=CALLER_RATE, channels=1)
    for name, value in format_fields.items():
        setattr(fmt, name, value)
    return pb.ConverseRequest(
        start=pb.SessionStart(
            call_id="c-bad", tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID, input_format=fmt
        )
    )


def audio(
    payload: bytes, rate: int = CALLER_RATE, codec: int = media_pb2.AUDIO_CODEC_PCM16
) -> pb.ConverseRequest:
    frame = media_pb2.AudioFrame(sample_rate=rate, channels=1, payload=payload)
    frame.codec = media_pb2.AudioCodec.ValueType(codec)
    return pb.ConverseRequest(audio=frame)


FRAME = b"\x00\x01" * 320


@pytest.mark.parametrize(
    "requests, code, message",
    [
        ([audio(FRAME)], grpc.StatusCode.INVALID_ARGUMENT, "first message must be `start`"),
        ([start(codec=99)], grpc.StatusCode.INVALID_ARGUMENT, "unsupported input format"),
        ([start(sample_rate=11025)], grpc.StatusCode.INVALID_ARGUMENT, "unsupported input format"),
        ([start(), audio(FRAME, rate=8000)], grpc.StatusCode.INVALID_ARGUMENT, "sample rate 8000 Hz"),
        (
            [start(), audio(FRAME, codec=media_pb2.AUDIO_CODEC_OPUS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "codec",
        ),
        (
            [start(codec=media_pb2.AUDIO_CODEC_OPUS, sample_rate=48000), audio(b"\xff" * 40, 48000, 2)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "corrupt Opus packet",
        ),
        ([start(), audio(b"")], grpc.StatusCode.INVALID_ARGUMENT, "is not AUDIO_CODEC_PCM16 audio"),
        ([start(), audio(b"\x00" * 641)], grpc.StatusCode.INVALID_ARGUMENT, "is not AUDIO_CODEC_PCM16 audio"),
        (
            [start(), audio(b"\x00" * 640 * 10)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "is not AUDIO_CODEC_PCM16 audio",
        ),
        ([start(), start()], grpc.StatusCode.FAILED_PRECONDITION, "already received"),
        ([start(), pb.ConverseRequest()], grpc.StatusCode.INVALID_ARGUMENT, "no event set"),
        (
            [start(), pb.ConverseRequest(dtmf=pb.DtmfDigit(digit="x"))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "DTMF",
        ),
    ],
)
async def test_bad_input_gets_a_clear_status(
    agent_server: GrpcServer, requests: list[pb.ConverseRequest], code: grpc.StatusCode, message: str
) -> None:
    error = await converse(agent_server.address, requests)
    assert error.code() == code
    assert message in (error.details() or "")


async def test_unknown_agent_is_not_found(agent_server: GrpcServer) -> None:
    request = pb.ConverseRequest(
        start=pb.SessionStart(call_id="c", tenant_id="t_other", agent_id=DEMO_AGENT_ID)
    )
    error = await converse(agent_server.address, [request])
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_garbage_bytes_fail_one_stream_and_not_the_others(
    agent_server: GrpcServer, caller: ScriptedCaller
) -> None:
    good = asyncio.create_task(caller.call(CallScript(lines=["What are your opening hours?"])))

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xfe not a protobuf \x00\x13"
        await asyncio.sleep(5)

    async with open_channel(load_settings(), agent_server.address, identity="bridge") as channel:
        raw: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/voice.v1.AgentSessionService/Converse"
        )
        call = raw(garbage())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (err.value.details() or "")
    record = await good
    assert record.status == "OK" and agent_lines(record)[1][0] == HOURS_ANSWER


async def test_call_events_reach_jetstream(caller: ScriptedCaller, settings: Settings) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    record = await caller.call(CallScript(lines=["What are your opening hours?"]))
    bus = await EventBus.connect(settings, name="test-agent-events")
    try:
        sub = await bus.js.subscribe(
            f"voice.{DEMO_TENANT_ID}.>",
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since),
        )
        events: list[events_pb2.Event] = []
        with contextlib.suppress(TimeoutError):
            while True:
                event = events_pb2.Event.FromString((await sub.next_msg(timeout=3)).data)
                if event.call_id == record.call_id:
                    events.append(event)
        await sub.unsubscribe()
    finally:
        await bus.close()
    kinds = [e.type for e in events]
    assert kinds[0] == "agent.joined" and "usage.minute" in kinds
    turns = [
        (e.transcript_turn.speaker, e.transcript_turn.text) for e in events if e.type == "transcript.turn"
    ]
    assert (pb.SPEAKER_AGENT, GREETING) in turns and (pb.SPEAKER_AGENT, HOURS_ANSWER) in turns
    assert any(speaker == pb.SPEAKER_CALLER and "opening" in text for speaker, text in turns)
    assert next(e for e in events if e.type == "usage.minute").usage_minute.minute_count == 1
