"""Call recordings end to end on the real local S3 server (versitygw from scripts/services.sh): a call
straight on Converse to an agent that records produces an encrypted object; its tenant fetches a stereo
WAV through the REST gateway (caller left, agent right), another tenant gets 404, a wrong master key
fails clearly, and retention deletes object and row. The test writes no recording row itself."""

from __future__ import annotations

import io
import socket
import uuid
import wave
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from services.agent.demo_agent import demo_agent
from services.agent.directory import StaticDirectory
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.shared.grpc_server import GrpcServer
from services.shared.recordings.archive import RecordingArchive
from services.shared.recordings.crypto import RecordingCryptoError
from services.shared.recordings.store import ObjectMissingError, open_store
from services.shared.service_identity import with_identity
from services.shared.settings import RateLimitSettings, Settings, SettingsError, load_settings
from services.softphone.caller import CallScript, ScriptedCaller
from services.worker.records import call_record_id
from services.worker.scheduler import run_due
from tests.control.env import ControlPlane, running_gateway
from tests.worker.conftest import eventually
from voice.v1 import agents_pb2, agents_pb2_grpc


def _require_s3(settings: Settings) -> None:
    url = urlparse(settings.recordings.s3_endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 80), timeout=2).close()
    except OSError:
        pytest.fail(f"no S3 server at {settings.recordings.s3_endpoint}: run `make services`")


@pytest.fixture
async def recording_agent(cp: ControlPlane) -> tuple[str, str, agents_pb2.Agent]:
    tenant, key = await cp.tenant("Recorded clinic")
    agent = demo_agent()
    agent.ClearField("id")
    agent.ClearField("tenant_id")
    agent.conversation.recording_enabled = True
    created = await agents_pb2_grpc.AgentServiceStub(cp.channel).CreateAgent(
        agents_pb2.CreateAgentRequest(agent=agent), metadata=cp.metadata(tenant)
    )
    assert created.agent.conversation.recording_enabled
    return tenant, key, created.agent


@pytest.fixture
async def agent_server(
    wsettings: Settings, triton: str, recording_agent: tuple[str, str, agents_pb2.Agent]
) -> AsyncIterator[GrpcServer]:
    _require_s3(wsettings)
    section = wsettings.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = build_server(
        wsettings.model_copy(update={"agent_service": section}),
        StaticDirectory([recording_agent[2]]),
        publish_events=False,
    )
    await server.start()
    yield server
    await server.stop(grace=1)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


async def test_a_recorded_call_is_encrypted_fetched_by_its_tenant_only_and_expires(
    cp: ControlPlane,
    wsettings: Settings,
    agent_server: GrpcServer,
    recording_agent: tuple[str, str, agents_pb2.Agent],
    settings: Settings,
) -> None:
    tenant, key, agent = recording_agent
    tts = TritonTextToSpeech(settings.agent_service.tts)
    try:
        # A session the bridge started (the softphone presents the bridge's identity): the bridge
        # records phone calls itself, so the agent does not.
        bridged = await ScriptedCaller(
            agent_server.address,
            tts,
            tenant_id=tenant,
            agent_id=agent.id,
            settings=with_identity(wsettings, "bridge"),
        ).call(CallScript(lines=["Hello?"], hangup_after_s=0.2))
        # Straight on Converse as the tenant (its API key).
        caller = ScriptedCaller(
            agent_server.address,
            tts,
            tenant_id=tenant,
            agent_id=agent.id,
            settings=with_identity(wsettings, "client"),
            metadata=(("x-api-key", key),),
        )
        record = await caller.call(CallScript(lines=["What are your opening hours?"]))
    finally:
        await tts.close()
    assert record.status == "OK" and bridged.status == "OK"
    record_id = call_record_id(tenant, record.call_id)

    async def stored() -> bool:
        return bool(await cp.pool.fetchval("SELECT count(*) FROM recordings WHERE call_id = $1", record_id))

    await eventually(stored, within_s=30)
    row = await cp.pool.fetchrow("SELECT * FROM recordings WHERE call_id = $1", record_id)
    assert row is not None
    assert str(row["tenant_id"]) == tenant and row["backend"] == "s3" and row["duration_seconds"] > 1
    # The bridged session ended first; had it been recorded, its row would be there by now.
    bridged_id = call_record_id(tenant, bridged.call_id)
    assert await cp.pool.fetchval("SELECT count(*) FROM recordings WHERE call_id = $1", bridged_id) == 0

    # At rest: the versioned, encrypted format, not a WAV.
    store = open_store(wsettings)
    try:
        blob = await store.get(row["object_key"])
        assert blob[:4] == b"VREC" and b"RIFF" not in blob[:64] and b"WAVE" not in blob[:64]

        # The owner gets the WAV through the REST gateway; another tenant gets 404 as for a missing call.
        _, other_key = await cp.tenant("Someone else")
        limits = RateLimitSettings(default_limit=100_000, burst_limit=1_000, failed_auth_limit=1_000_000)
        async with (
            running_gateway(cp, rate_limiting=limits) as gw,
            httpx.AsyncClient(base_url=gw.url) as http,
        ):
            path = f"/v1/calls/{record_id}/recording"
            response = await http.get(path, headers={"X-API-Key": key})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "audio/wav"
            other = await http.get(path, headers={"X-API-Key": other_key})
            assert other.status_code == 404 and other.json()["message"] == "recording not found"
            missing = await http.get(f"/v1/calls/{uuid.uuid4()}/recording", headers={"X-API-Key": key})
            assert missing.status_code == 404 and missing.json() == other.json()
        with wave.open(io.BytesIO(response.content)) as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16000)
            frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
        assert len(frames) / 16000 == pytest.approx(row["duration_seconds"], abs=0.01)
        caller_side, agent_side = frames[:, 0], frames[:, 1]
        # Both voices are there, each on its own side (speech has an RMS far above silence's 0).
        assert _rms(caller_side) > 100 and _rms(agent_side) > 100
        assert not np.array_equal(caller_side, agent_side)

        # A master key other than the one that wrapped the tenant's data key: a clear error, no audio.
        wrong = wsettings.model_copy(update={"recording_master_key": SecretStr("ab" * 32)})
        archive = RecordingArchive(wrong, store=open_store(wrong))
        try:
            with pytest.raises(RecordingCryptoError, match="RECORDING_MASTER_KEY"):
                await archive.fetch(cp.pool, uuid.UUID(tenant), record_id)
        finally:
            await archive.close()

        # Retention, a year and a bit later (a period no other run uses): object and row are gone.
        when = datetime.now(UTC) + timedelta(days=400)
        assert "retention" in await run_due(cp.pool, when, store=store)
        assert await cp.pool.fetchval("SELECT count(*) FROM recordings WHERE call_id = $1", record_id) == 0
        with pytest.raises(ObjectMissingError):
            await store.get(row["object_key"])
    finally:
        await store.close()


def test_staging_and_production_refuse_to_run_without_a_master_key() -> None:
    for environment in ("staging", "production"):
        with pytest.raises(SettingsError, match="RECORDING_MASTER_KEY"):
            RecordingArchive(load_settings(environment=environment))
    with pytest.raises(SettingsError, match="64 hex"):
        RecordingArchive(load_settings(environment="production", recording_master_key="short"))
