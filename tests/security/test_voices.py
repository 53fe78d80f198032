"""Cloned voices live in one store: CreateVoice puts them on the TTS node for their tenant only, the TTS
APIs need a credential and never show or speak another tenant's voice, DeleteVoice removes them."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest

from services.shared.grpc_channels import open_channel
from tests.control.env import ControlPlane
from tests.gateway.helpers import ok, wav
from tts_triton.voices import VoiceError, VoiceRegistry
from voice.v1 import tts_pb2, tts_pb2_grpc


async def test_cloned_voice_is_the_tenants_alone(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    a_id, a_key = await cp.tenant("A")
    b_id, b_key = await cp.tenant("B")
    audio = base64.b64encode(wav(5.5)).decode()
    voice = ok(
        await http.post(
            "/v1/voices", json={"name": "A's voice", "referenceAudio": audio}, headers={"X-API-Key": a_key}
        )
    )["voice"]
    registry = VoiceRegistry(cp.voices_dir)
    assert registry.get(voice["id"], a_id).tenant_id == a_id  # registered with the node
    for other in (b_id, ""):  # another tenant, or no tenant at all: not there
        with pytest.raises(VoiceError):
            registry.get(voice["id"], other)
    assert voice["id"] not in {v.id for v in registry.list("")}

    node = f"127.0.0.1:{cp.settings.chatterbox_service.grpc_port}"
    async with open_channel(cp.settings, node, identity="client") as channel:
        stub = tts_pb2_grpc.TtsServiceStub(channel)
        request = tts_pb2.GetTtsVoiceRequest(voice_id=voice["id"], tenant_id=a_id)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTtsVoice(request)  # no credential
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTtsVoice(request, metadata=[("x-api-key", b_key)])  # B naming A
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTtsVoice(
                tts_pb2.GetTtsVoiceRequest(voice_id=voice["id"]), metadata=[("x-api-key", b_key)]
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        mine = await stub.GetTtsVoice(
            tts_pb2.GetTtsVoiceRequest(voice_id=voice["id"]), metadata=[("x-api-key", a_key)]
        )
        assert mine.voice.tenant_id == a_id
        listed = await stub.ListTtsVoices(tts_pb2.ListTtsVoicesRequest(), metadata=[("x-api-key", b_key)])
        assert voice["id"] not in {v.id for v in listed.voices}

    assert ok(await http.delete(f"/v1/voices/{voice['id']}", headers={"X-API-Key": a_key})) == {}
    with pytest.raises(VoiceError):
        registry.get(voice["id"], a_id)
