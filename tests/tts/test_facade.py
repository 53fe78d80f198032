"""The HTTP facade (spec 3.5.4) in front of the real tritonserver."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from typing import Any

import httpx
import numpy as np
import pytest

from tests.tts.conftest import (
    CANCELLED_AUDIO_BOUND_S,
    LONG_TEXT,
    reference_wav,
    triton_metrics,
    unique_voice_id,
)

BODY: dict[str, Any] = {
    "text": "I'd be happy to help you with that [chuckle]. Let me check your account.",
    "voice_id": "voice_female_01",
    "options": {"exaggeration": 0.5, "cfg_weight": 0.5},
}


def read_wav(data: bytes) -> tuple[int, int, bytes]:
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getframerate(), wav.getnchannels(), wav.readframes(wav.getnframes())


async def test_health_and_metrics(http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200 and health.json()["model_ready"] is True
    await http.post("/synthesize", json={"text": "Metrics, please."})
    metrics = (await http.get("/metrics")).text
    for name in (
        "tts_http_requests_total",
        "tts_http_errors_total",
        "tts_time_to_first_audio_seconds_bucket",
        "tts_real_time_factor_bucket",
        "tts_active_streams",
    ):
        assert name in metrics


async def test_synthesize_returns_a_wav_with_engine_metadata(http: httpx.AsyncClient) -> None:
    response = await http.post("/synthesize", json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-tts-engine"] == "espeak-ng"
    assert response.headers["x-tts-honours-expressiveness"] == "false"
    assert response.headers["x-tts-dropped-tags"] == "chuckle"
    rate, channels, frames = read_wav(response.content)
    assert (rate, channels) == (24000, 1)
    assert len(frames) == int(response.headers["content-length"]) - 44
    assert np.abs(np.frombuffer(frames, dtype="<i2")).max() > 1000


async def test_streaming_routes_send_the_same_audio_chunked(http: httpx.AsyncClient) -> None:
    _, _, expected = read_wav((await http.post("/synthesize", json=BODY)).content)
    # spec 5.4.3: POST /synthesize with options.streaming = true answers with chunked audio/wav.
    spec_body = {**BODY, "options": {**BODY["options"], "streaming": True}}
    for path, body in (("/synthesize/stream", BODY), ("/synthesize", spec_body)):
        async with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "audio/wav"
            assert "content-length" not in response.headers
            pieces = [piece async for piece in response.aiter_raw()]
        data = b"".join(pieces)
        assert data[:4] == b"RIFF" and data[36:40] == b"data"
        assert data[44:] == expected
    async with http.stream(
        "POST", "/synthesize/stream", json=BODY, headers={"Accept": "audio/L16"}
    ) as response:
        assert response.headers["content-type"].startswith("audio/L16;rate=24000")
        raw = b"".join([piece async for piece in response.aiter_raw()])
    assert raw == expected


async def test_client_hanging_up_mid_stream_cancels_generation(facade_url: str) -> None:
    before = await triton_metrics()
    async with (
        httpx.AsyncClient(base_url=facade_url, timeout=30) as client,
        client.stream("POST", "/synthesize/stream", json={"text": LONG_TEXT}) as response,
    ):
        async for _piece in response.aiter_raw():
            break
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while loop.time() < end:
        after = await triton_metrics()
        if after["tts_cancelled_total"] > before["tts_cancelled_total"] and after["tts_active_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    assert after["tts_cancelled_total"] >= before["tts_cancelled_total"] + 1
    assert after["tts_audio_seconds_total"] - before["tts_audio_seconds_total"] < CANCELLED_AUDIO_BOUND_S


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"text": ""}, 400, "text is empty"),
        ({"text": "x" * 10_000}, 400, "the limit is 5000"),
        ({"text": "hi", "voice_id": "nobody"}, 404, "unknown voice_id"),
        ({"text": "hi", "options": {"exaggeration": 9}}, 400, "exaggeration 9.0 is outside"),
        ({"text": "hi", "options": {"cfg_weight": -1}}, 400, "cfg_weight -1.0 is outside"),
        ({"text": "hi", "options": {"exaggeration": "loud"}}, 400, "finite number"),
        ({"voice_id": "default_male_1"}, 400, "text is required"),
    ],
)
async def test_bad_synthesis_requests_are_problem_json(
    http: httpx.AsyncClient, body: dict[str, object], status: int, detail: str
) -> None:
    for path in ("/synthesize", "/synthesize/stream"):
        response = await http.post(path, json=body)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status and detail in problem["detail"]
    assert (await http.get("/health")).status_code == 200


async def test_malformed_bodies_and_routes(http: httpx.AsyncClient) -> None:
    assert (await http.post("/synthesize", content=b"{not json")).status_code == 400
    assert (await http.get("/synthesize")).status_code == 405
    missing = await http.get("/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_voices_list_get_and_unknown(http: httpx.AsyncClient) -> None:
    voices = (await http.get("/voices")).json()["voices"]
    ids = {v["id"] for v in voices}
    assert {"default_female_1", "default_male_1", "voice_female_01"} <= ids
    voice = (await http.get("/voices/default_female_1")).json()["voice"]
    assert voice["builtIn"] is True and voice["defaults"] == {"exaggeration": 0.5, "cfgWeight": 0.5}
    unknown = await http.get("/voices/not_a_voice")
    assert unknown.status_code == 404 and "unknown voice_id" in unknown.json()["detail"]


async def test_register_a_cloned_voice_and_speak_with_it(http: httpx.AsyncClient) -> None:
    voice_id = unique_voice_id()
    created = await http.post(
        "/voices",
        json={
            "tenantId": "tenant_a",
            "name": "Support Ann",
            "voiceId": voice_id,
            "referenceAudio": base64.b64encode(reference_wav(6.5, 22050)).decode(),
            "defaults": {"exaggeration": 0.8, "cfgWeight": 0.3},
        },
    )
    assert created.status_code == 201, created.text
    voice = created.json()["voice"]
    assert voice["id"] == voice_id and voice["tenantId"] == "tenant_a" and not voice["builtIn"]
    assert voice["referenceDurationSeconds"] == pytest.approx(6.5)
    assert voice["defaults"] == {"exaggeration": 0.8, "cfgWeight": 0.3}
    assert (await http.get(f"/voices/{voice_id}", params={"tenant_id": "tenant_a"})).status_code == 200
    assert (await http.get(f"/voices/{voice_id}", params={"tenant_id": "tenant_b"})).status_code == 404
    listed = {v["id"] for v in (await http.get("/voices", params={"tenant_id": "tenant_b"})).json()["voices"]}
    assert voice_id not in listed
    # The Triton model reads the same registry: the tenant can speak with it, another tenant cannot.
    spoken = await http.post(
        "/synthesize", json={"text": "Hello.", "voice_id": voice_id, "tenant_id": "tenant_a"}
    )
    assert spoken.status_code == 200
    other = await http.post(
        "/synthesize", json={"text": "Hello.", "voice_id": voice_id, "tenant_id": "tenant_b"}
    )
    assert other.status_code == 404
    duplicate = await http.post(
        "/voices",
        json={
            "name": "Again",
            "voiceId": voice_id,
            "referenceAudio": base64.b64encode(reference_wav()).decode(),
        },
    )
    assert duplicate.status_code == 409


async def test_register_with_a_raw_wav_body(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/voices",
        params={"name": "Raw upload", "tenant_id": "tenant_raw", "exaggeration": "0.6"},
        content=reference_wav(5.5, 48000, 2),
        headers={"Content-Type": "audio/wav"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["voice"]["defaults"]["exaggeration"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("audio", "detail"),
    [
        (reference_wav(3.0), "cloning needs more than 5 s"),
        (reference_wav(6.0, 8000), "sample rate 8000 Hz"),
        (b"RIFF\x10\x00\x00\x00WAVEnot really a wav", "not a readable PCM WAV"),
        (b"", "reference_audio (base64 WAV) is required"),
    ],
)
async def test_malformed_reference_audio_is_refused(
    http: httpx.AsyncClient, audio: bytes, detail: str
) -> None:
    response = await http.post(
        "/voices", json={"name": "Bad", "referenceAudio": base64.b64encode(audio).decode()}
    )
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert (await http.get("/health")).status_code == 200


async def test_reference_audio_must_be_base64(http: httpx.AsyncClient) -> None:
    response = await http.post("/voices", json={"name": "Bad", "referenceAudio": "***"})
    assert response.status_code == 400 and "base64" in response.json()["detail"]
