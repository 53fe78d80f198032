"""voice.v1.TtsService over gRPC, served next to the HTTP facade (same Triton client, same registry).

Synthesize streams `SynthesizeResponse`s with PCM16 mono 24 kHz `AudioFrame`s (sequence numbers and a
sample-clock timestamp per frame), `SynthesisInfo` on the first, `final` on the last. A client that
cancels the call cancels the Triton request, so generation stops within one chunk. Errors map to gRPC
status codes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNAVAILABLE, DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.agent.providers.tts import TritonTextToSpeech, TtsError
from services.shared.grpc_server import ServiceBinding, bind
from tts_triton.auth import TenantResolver
from tts_triton.voices import VoiceError, VoiceRecord, VoiceRegistry
from tts_triton.wav import wav_header
from voice.v1 import media_pb2, tts_pb2, tts_pb2_grpc, voices_pb2

SAMPLE_RATE = 24000
_STATUS = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "cancelled": grpc.StatusCode.CANCELLED,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}

Context = grpc.aio.ServicerContext[Any, Any]


def voice_message(voice: VoiceRecord) -> voices_pb2.Voice:
    message = voices_pb2.Voice(
        id=voice.id,
        tenant_id=voice.tenant_id,
        name=voice.name,
        description=voice.description,
        built_in=voice.built_in,
        defaults=voices_pb2.VoiceDefaults(exaggeration=voice.exaggeration, cfg_weight=voice.cfg_weight),
        reference_duration_seconds=voice.reference_duration_seconds,
        language=voice.language,
    )
    if voice.created_at:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(voice.created_at * 1e9))
        message.create_time.CopyFrom(stamp)
    return message


def _options(options: tts_pb2.SynthesisOptions) -> dict[str, Any]:
    return {
        "exaggeration": options.exaggeration if options.HasField("exaggeration") else None,
        "cfg_weight": options.cfg_weight if options.HasField("cfg_weight") else None,
        "seed": options.seed if options.HasField("seed") else None,
        "chunk_duration_ms": options.chunk_duration_ms or None,
    }


async def _abort(context: Context, code: str, message: str) -> NoReturn:
    await context.abort(_STATUS.get(code, grpc.StatusCode.INTERNAL), message)
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


class TtsServicer(tts_pb2_grpc.TtsServiceServicer):
    """Every RPC acts for one tenant, resolved by `tenants` (tts_triton/auth.py), never taken from the
    request alone."""

    def __init__(
        self, tts: TritonTextToSpeech, voices: VoiceRegistry, tenants: TenantResolver | None = None
    ) -> None:
        self.tts = tts
        self.voices = voices
        self.tenants = tenants or TenantResolver()

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: Context
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        chunks = self.tts.stream(
            request.text, voice_id=request.voice_id, tenant_id=tenant_id, **_options(request.options)
        )
        timestamp = 0
        try:
            async for chunk in chunks:
                response = tts_pb2.SynthesizeResponse(
                    audio=media_pb2.AudioFrame(
                        sequence_number=chunk.sequence & 0xFFFFFFFF,
                        timestamp=timestamp,
                        sample_rate=SAMPLE_RATE,
                        codec=media_pb2.AUDIO_CODEC_PCM16,
                        channels=1,
                        payload=chunk.pcm,
                    ),
                    final=chunk.final,
                )
                if chunk.info is not None:
                    response.info.CopyFrom(
                        tts_pb2.SynthesisInfo(
                            engine=chunk.info.engine,
                            sample_rate=chunk.info.sample_rate,
                            honours_expressiveness=chunk.info.honours_expressiveness,
                            dropped_tags=chunk.info.dropped_tags,
                        )
                    )
                timestamp += chunk.samples
                yield response
        except TtsError as exc:
            await _abort(context, exc.code, exc.message)
        finally:
            # Also runs when the caller cancels (barge-in): closing the stream cancels it in Triton.
            await chunks.aclose()

    async def SynthesizeWav(
        self, request: tts_pb2.SynthesizeWavRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        try:
            pcm, _info = await self.tts.synthesize_all(
                request.text,
                voice_id=request.voice_id,
                tenant_id=tenant_id,
                **_options(request.options),
            )
        except TtsError as exc:
            await _abort(context, exc.code, exc.message)
        return httpbody_pb2.HttpBody(content_type="audio/wav", data=wav_header(SAMPLE_RATE, len(pcm)) + pcm)

    async def ListTtsVoices(
        self, request: tts_pb2.ListTtsVoicesRequest, context: Context
    ) -> tts_pb2.ListTtsVoicesResponse:
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        voices = await asyncio.to_thread(self.voices.list, tenant_id)
        return tts_pb2.ListTtsVoicesResponse(voices=[voice_message(v) for v in voices])

    async def GetTtsVoice(
        self, request: tts_pb2.GetTtsVoiceRequest, context: Context
    ) -> tts_pb2.GetTtsVoiceResponse:
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        try:
            voice = await asyncio.to_thread(self.voices.get, request.voice_id, tenant_id)
        except VoiceError as exc:
            await _abort(context, exc.kind, str(exc))
        return tts_pb2.GetTtsVoiceResponse(voice=voice_message(voice))

    async def RegisterTtsVoice(
        self, request: tts_pb2.RegisterTtsVoiceRequest, context: Context
    ) -> tts_pb2.RegisterTtsVoiceResponse:
        has_defaults = request.HasField("defaults")
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        if not tenant_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "tenant_id is required: a cloned voice is a tenant's"
            )
        try:
            voice = await asyncio.to_thread(
                self.voices.register,
                name=request.name,
                reference_audio=request.reference_audio,
                tenant_id=tenant_id,
                voice_id=request.voice_id,
                exaggeration=request.defaults.exaggeration if has_defaults else None,
                cfg_weight=request.defaults.cfg_weight if has_defaults else None,
            )
        except VoiceError as exc:
            await _abort(context, exc.kind, str(exc))
        return tts_pb2.RegisterTtsVoiceResponse(voice=voice_message(voice))

    async def DeleteTtsVoice(
        self, request: tts_pb2.DeleteTtsVoiceRequest, context: Context
    ) -> tts_pb2.DeleteTtsVoiceResponse:
        tenant_id = await self.tenants.tenant(context, request.tenant_id)
        try:
            await asyncio.to_thread(self.voices.delete, request.voice_id, tenant_id)
        except VoiceError as exc:
            await _abort(context, exc.kind, str(exc))
        return tts_pb2.DeleteTtsVoiceResponse()


def tts_binding(
    tts: TritonTextToSpeech, voices: VoiceRegistry, tenants: TenantResolver | None = None
) -> ServiceBinding:
    return bind(tts_pb2, tts_pb2_grpc, "TtsService", TtsServicer(tts, voices, tenants))
