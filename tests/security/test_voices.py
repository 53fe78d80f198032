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
from tts_triton.auth import TenantResolver
from tts_triton.facade import TtsFacade
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


async def test_tts_http_facade_takes_the_tenant_from_the_credential(
    cp: ControlPlane, http: httpx.AsyncClient
) -> None:
    """The hole: the facade took the tenant from the query string without authentication."""
    a_id, a_key = await cp.tenant("A")
    _, b_key = await cp.tenant("B")
    audio = base64.b64encode(wav(5.5)).decode()
    voice = ok(
        await http.post(
            "/v1/voices", json={"name": "A's", "referenceAudio": audio}, headers={"X-API-Key": a_key}
        )
    )["voice"]
    node = cp.settings.chatterbox_service.model_copy(update={"storage_path": cp.voices_dir})
    app = TtsFacade(node, tenants=TenantResolver(cp.settings))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tts") as tts:
            assert (await tts.get("/voices", params={"tenant_id": a_id})).status_code == 401
            spoof = await tts.get(
                f"/voices/{voice['id']}", params={"tenant_id": a_id}, headers={"X-API-Key": b_key}
            )
            assert spoof.status_code == 403
            theirs = await tts.get(f"/voices/{voice['id']}", headers={"X-API-Key": b_key})
            assert theirs.status_code == 404
            listed = (await tts.get("/voices", headers={"X-API-Key": b_key})).json()["voices"]
            assert voice["id"] not in {v["id"] for v in listed}
            mine = await tts.get(f"/voices/{voice['id']}", headers={"X-API-Key": a_key})
            assert mine.status_code == 200 and mine.json()["voice"]["tenantId"] == a_id
            assert (await tts.get("/metrics")).status_code == 200  # public, like /health
    finally:
        await app.close()
