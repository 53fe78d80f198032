"""voice.v1.TtsService over gRPC (served next to the HTTP facade), against the real tritonserver."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator

import grpc
import pytest

from services.shared.grpc_channels import open_channel
from services.shared.settings import load_settings
from tests.tts.conftest import LONG_TEXT, reference_wav, triton_metrics
from voice.v1 import media_pb2, tts_pb2, tts_pb2_grpc


@pytest.fixture
async def stub(tts_grpc: str) -> AsyncIterator[tts_pb2_grpc.TtsServiceAsyncStub]:
    async with open_channel(load_settings(), tts_grpc, identity="agent") as channel:
        yield tts_pb2_grpc.TtsServiceStub(channel)


async def test_synthesize_streams_audio_frames(stub: tts_pb2_grpc.TtsServiceAsyncStub) -> None:
    request = tts_pb2.SynthesizeRequest(
        text="Hello from gRPC [laugh].",
        voice_id="default_male_1",
        options=tts_pb2.SynthesisOptions(chunk_duration_ms=40),
    )
    responses = [r async for r in stub.Synthesize(request)]
    assert responses[0].info.engine == "espeak-ng" and list(responses[0].info.dropped_tags) == ["laugh"]
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    timestamp = 0
    for index, response in enumerate(responses):
        frame = response.audio
        assert frame.sequence_number == index and frame.timestamp == timestamp
        assert (frame.sample_rate, frame.channels, frame.codec) == (24000, 1, media_pb2.AUDIO_CODEC_PCM16)
        timestamp += len(frame.payload) // 2
    assert all(len(r.audio.payload) == 960 * 2 for r in responses[:-1])
    wav = await stub.SynthesizeWav(tts_pb2.SynthesizeWavRequest(text=request.text, voice_id=request.voice_id))
    assert wav.content_type == "audio/wav"
    with wave.open(io.BytesIO(wav.data)) as reader:
        assert reader.readframes(reader.getnframes()) == b"".join(r.audio.payload for r in responses)


async def test_cancelling_the_call_stops_generation(stub: tts_pb2_grpc.TtsServiceAsyncStub) -> None:
    before = await triton_metrics()
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=LONG_TEXT))
    await call.read()
    call.cancel()
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    after = before
    while loop.time() < end:
        after = await triton_metrics()
        if after["tts_cancelled_total"] > before["tts_cancelled_total"] and after["tts_active_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    assert after["tts_cancelled_total"] >= before["tts_cancelled_total"] + 1


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (tts_pb2.SynthesizeRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (
            tts_pb2.SynthesizeRequest(text="hi", voice_id="ghost"),
            grpc.StatusCode.NOT_FOUND,
            "unknown voice_id",
        ),
        (
            tts_pb2.SynthesizeRequest(text="hi", options=tts_pb2.SynthesisOptions(cfg_weight=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cfg_weight 3.0 is outside",
        ),
    ],
)
async def test_bad_requests_map_to_status_codes(
    stub: tts_pb2_grpc.TtsServiceAsyncStub,
    request_: tts_pb2.SynthesizeRequest,
    code: grpc.StatusCode,
    detail: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _response in stub.Synthesize(request_):
            pass
    assert err.value.code() == code and detail in (err.value.details() or "")


async def test_voice_rpcs(stub: tts_pb2_grpc.TtsServiceAsyncStub) -> None:
    listed = await stub.ListTtsVoices(tts_pb2.ListTtsVoicesRequest())
    assert "default_female_1" in {v.id for v in listed.voices}
    got = await stub.GetTtsVoice(tts_pb2.GetTtsVoiceRequest(voice_id="voice_female_01"))
    assert got.voice.built_in
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetTtsVoice(tts_pb2.GetTtsVoiceRequest(voice_id="ghost"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    registered = await stub.RegisterTtsVoice(
        tts_pb2.RegisterTtsVoiceRequest(
            name="gRPC voice", tenant_id="t_grpc", reference_audio=reference_wav()
        )
    )
    assert registered.voice.tenant_id == "t_grpc" and registered.voice.create_time.seconds > 0
    with pytest.raises(grpc.aio.AioRpcError) as short:
        await stub.RegisterTtsVoice(
            tts_pb2.RegisterTtsVoiceRequest(
                name="short", tenant_id="t_grpc", reference_audio=reference_wav(2.0)
            )
        )
    assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 5 s" in (short.value.details() or "")
