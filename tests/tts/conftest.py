"""Fixtures for the TTS node: the real tritonserver on loopback (CPU, espeak-ng engine), started once per
session with scripts/tts.sh (idempotent; restarts a server running stale model code), the agent's client,
and the HTTP facade served in-process by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import io
import math
import re
import secrets
import socket
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from services.agent.providers.tts import TritonTextToSpeech
from services.shared.settings import ChatterboxServiceSettings, TtsClientSettings
from tts_triton.facade import TtsFacade

REPO = Path(__file__).resolve().parents[2]
TRITON_URL = "127.0.0.1:8101"
TRITON_METRICS = "http://127.0.0.1:8102/metrics"
LONG_TEXT = "This is a long answer that keeps going, sentence after sentence. " * 70  # ~4,500 characters
# LONG_TEXT is ~280 s of speech. A cancelled request must stop well before the end: the bound leaves room
# for a loaded machine (espeak-ng makes ~250 s of audio per second) and for other clients of the same
# server adding to the global counters while a test runs.
CANCELLED_AUDIO_BOUND_S = 140.0


@pytest.fixture(scope="session")
def node_settings() -> ChatterboxServiceSettings:
    # The same (absolute) voice directory scripts/tts.sh gives the Triton model.
    return ChatterboxServiceSettings(storage_path=str(REPO / ".var" / "voices"), port=0)


@pytest.fixture(scope="session")
async def tts(triton: str) -> AsyncIterator[TritonTextToSpeech]:
    client = TritonTextToSpeech(TtsClientSettings(triton_url=triton))
    yield client
    await client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
async def facade_url(triton: str, node_settings: ChatterboxServiceSettings) -> AsyncIterator[str]:
    port = _free_port()
    # These tests exercise synthesis and the registry with tenants named in requests: the facade's
    # credential check is off here (tests/security/test_voices.py covers it with real API keys).
    app = TtsFacade(
        node_settings.model_copy(update={"triton_url": triton, "port": port, "http_authentication": False})
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def http(facade_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=facade_url, timeout=30) as client:
        yield client


async def triton_metrics() -> dict[str, float]:
    """The model's own metrics on Triton's metrics port, summed over instances."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(TRITON_METRICS)).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(tts_[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(2))
    return totals


def reference_wav(seconds: float = 6.0, rate: int = 16000, channels: int = 1) -> bytes:
    """A voiced-sounding reference clip (harmonics with a wobble), PCM16."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * math.pi * 0.5 * t)
    phase = 2 * math.pi * np.cumsum(f0) / rate
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        pcm = np.repeat(pcm, 2)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buf.getvalue()


def unique_voice_id() -> str:
    return f"test_{secrets.token_hex(5)}"


@pytest.fixture(scope="session")
async def tts_grpc(tts: TritonTextToSpeech, node_settings: ChatterboxServiceSettings) -> AsyncIterator[str]:
    """voice.v1.TtsService on a free port (what the facade process serves on grpc_port)."""
    from services.shared.grpc_server import GrpcServer  # noqa: PLC0415
    from services.shared.settings import ServerSettings  # noqa: PLC0415
    from tts_triton.grpc_service import tts_binding  # noqa: PLC0415
    from tts_triton.voices import VoiceRegistry  # noqa: PLC0415

    server = GrpcServer(
        "tts-test",
        ServerSettings(grpc_port=0, metrics_port=0),
        [tts_binding(tts, VoiceRegistry(node_settings.storage_path))],
        serve_metrics_http=False,
        identity="tts",
    )
    await server.start()
    yield server.address
    await server.stop(grace=1)
