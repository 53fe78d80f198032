"""The agent's client against the real tritonserver on loopback (model `tts`, espeak-ng engine)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from services.agent.providers.tts import (
    TritonTextToSpeech,
    TtsChunk,
    TtsRequestError,
    TtsUnavailableError,
)
from services.shared.settings import TtsClientSettings
from tests.tts.conftest import CANCELLED_AUDIO_BOUND_S, LONG_TEXT, triton_metrics

SENTENCE = "Thanks for calling. I'd be happy to help you with that."


async def collect(tts: TritonTextToSpeech, text: str, **options: object) -> list[TtsChunk]:
    return [chunk async for chunk in tts.stream(text, **options)]  # type: ignore[arg-type]


def pcm(chunks: list[TtsChunk]) -> bytes:
    return b"".join(c.pcm for c in chunks)


async def test_chunks_in_order_and_equal_to_one_shot(tts: TritonTextToSpeech) -> None:
    chunks = await collect(tts, SENTENCE)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    # 100 ms of 24 kHz PCM16 per chunk; only the last may be shorter.
    assert all(c.samples == 2400 for c in chunks[:-1]) and 0 < chunks[-1].samples <= 2400
    info = chunks[0].info
    assert info is not None and info.engine == "espeak-ng" and info.sample_rate == 24000
    assert not info.honours_expressiveness
    assert all(c.info is None for c in chunks[1:])
    audio = np.frombuffer(pcm(chunks), dtype="<i2")
    assert audio.size > 24000 and np.abs(audio).max() > 1000
    # One-shot: the same request cut into a single 1-second-chunk stream, and the WAV helper.
    one_shot, _ = await tts.synthesize_all(SENTENCE, chunk_duration_ms=1000)
    assert one_shot == pcm(chunks)


async def test_first_chunk_arrives_while_long_text_is_still_generating(tts: TritonTextToSpeech) -> None:
    stream = tts.stream(LONG_TEXT)
    first = await anext(stream)
    # ~4,500 characters is minutes of speech: the server is still generating when the first chunk is here.
    assert (await triton_metrics())["tts_active_requests"] >= 1
    assert not first.final
    rest = [chunk async for chunk in stream]
    assert rest[-1].final
    assert (len(rest) + 1) * 0.1 > 120  # more than two minutes of audio


async def wait_idle(deadline_s: float = 20.0) -> dict[str, float]:
    """Polls the model's metrics until no request is active (the deadline only bounds a failure)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        metrics = await triton_metrics()
        if metrics["tts_active_requests"] == 0 or loop.time() > end:
            return metrics
        await asyncio.sleep(0.05)


async def test_cancel_mid_utterance_stops_generation_and_frees_the_instance(tts: TritonTextToSpeech) -> None:
    before = await wait_idle()
    stream = tts.stream(LONG_TEXT)
    received = [await anext(stream), await anext(stream)]
    await stream.aclose()  # barge-in
    after = await wait_idle()
    assert after["tts_active_requests"] == 0
    assert after["tts_cancelled_total"] >= before["tts_cancelled_total"] + 1
    generated = after["tts_audio_seconds_total"] - before["tts_audio_seconds_total"]
    # At least the two chunks received; far less than the whole text.
    assert 0.19 <= generated < CANCELLED_AUDIO_BOUND_S, generated
    assert len(received) == 2
    # The freed instance serves the next request.
    assert (await collect(tts, "Still here."))[-1].final


async def test_cancelling_the_consumer_task_cancels_the_stream(tts: TritonTextToSpeech) -> None:
    before = await wait_idle()
    started = asyncio.Event()

    async def speak() -> None:
        async for _chunk in tts.stream(LONG_TEXT):
            started.set()

    task = asyncio.create_task(speak())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await wait_idle()
    assert after["tts_cancelled_total"] >= before["tts_cancelled_total"] + 1


async def test_eight_concurrent_requests(tts: TritonTextToSpeech) -> None:
    texts = [f"Caller number {i}, your order {i * 7} ships tomorrow." for i in range(8)]
    results = await asyncio.gather(*(collect(tts, t) for t in texts))
    for text, chunks in zip(texts, results, strict=True):
        assert chunks[-1].final and [c.sequence for c in chunks] == list(range(len(chunks)))
        # Each stream carries its own utterance: equal to that text synthesised alone.
        alone, _ = await tts.synthesize_all(text)
        assert pcm(chunks) == alone


async def test_paralinguistic_tags_are_dropped_cleanly_by_espeak(tts: TritonTextToSpeech) -> None:
    tagged = await collect(tts, "I'd be happy to help you with that [chuckle]. [sigh] Let me check.")
    info = tagged[0].info
    assert info is not None and info.dropped_tags == ["chuckle", "sigh"]
    # Nothing of the tags is spoken: same audio as the text without them.
    plain, _ = await tts.synthesize_all("I'd be happy to help you with that . Let me check.")
    assert pcm(tagged) == plain


@dataclass(frozen=True)
class Voice:
    voice_id: str
    exaggeration: float | None = None
    cfg_weight: float | None = None


async def test_port_method_yields_pcm_bytes(tts: TritonTextToSpeech) -> None:
    parts = [part async for part in tts.synthesize("Hello.", Voice("default_male_1", 0.5, 0.5))]
    assert parts and all(isinstance(p, bytes) and len(p) % 2 == 0 for p in parts)
    male = b"".join(parts)
    female, _ = await tts.synthesize_all("Hello.", voice_id="default_female_1")
    assert male != female


@pytest.mark.parametrize(
    ("text", "options", "error", "message"),
    [
        ("", {}, TtsRequestError, "text is empty"),
        ("x" * 10_000, {}, TtsRequestError, "10000 characters; the limit is 5000"),
        ("hello", {"voice_id": "no_such_voice"}, TtsRequestError, "unknown voice_id 'no_such_voice'"),
        ("hello", {"exaggeration": 2.5}, TtsRequestError, "exaggeration 2.5 is outside 0.25..2.0"),
        ("hello", {"exaggeration": 0.1}, TtsRequestError, "exaggeration"),
        ("hello", {"cfg_weight": 1.5}, TtsRequestError, "cfg_weight 1.5 is outside 0.0..1.0"),
        ("hello", {"exaggeration": float("nan")}, TtsRequestError, "finite"),
        ("hello", {"chunk_duration_ms": 5}, TtsRequestError, "chunk_duration_ms 5 is outside"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_the_server_stays_healthy(
    tts: TritonTextToSpeech, text: str, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as err:
        await collect(tts, text, **options)
    assert isinstance(err.value, TtsRequestError) and not err.value.retryable
    assert await tts.ready()
    assert (await collect(tts, "Still fine."))[-1].final


async def test_unavailable_engine_is_a_provider_error(triton: str) -> None:
    client = TritonTextToSpeech(TtsClientSettings(triton_url=triton, provider="chatterbox"))
    try:
        with pytest.raises(TtsUnavailableError, match="no weights") as err:
            await collect(client, "hello")
        assert err.value.code == "unavailable" and err.value.retryable
    finally:
        await client.close()


async def test_timeout_cancels_and_reports_deadline(tts: TritonTextToSpeech) -> None:
    before = await wait_idle()
    with pytest.raises(TtsUnavailableError) as err:
        async for _chunk in tts.stream(LONG_TEXT, timeout_s=0.3):
            await asyncio.sleep(0.05)  # a slow consumer: the deadline passes mid-utterance
    assert err.value.code == "deadline_exceeded"
    after = await wait_idle()
    assert after["tts_cancelled_total"] >= before["tts_cancelled_total"] + 1
    assert await tts.ready()


async def test_server_down_is_unavailable() -> None:
    client = TritonTextToSpeech(TtsClientSettings(triton_url="127.0.0.1:1", request_timeout_seconds=5))
    try:
        assert not await client.ready()
        with pytest.raises(TtsUnavailableError) as err:
            await collect(client, "hello")
        assert err.value.retryable
    finally:
        await client.close()
