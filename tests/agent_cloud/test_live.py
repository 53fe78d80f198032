"""Smoke test against the real Deepgram and Anthropic APIs: the same adapters with default URLs.

Runs only with `pytest --live` and both keys in the environment; it costs a few cents of API usage.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.agent.ports import ChatMessage, LlmRequest, SttContext, TextDelta, Transcription
from services.agent.providers.factory import ProviderSecrets
from services.agent.providers.llm.anthropic import ClaudeModel, new_client
from services.agent.providers.stt.deepgram import DeepgramStt
from services.shared.settings import Settings

pytestmark = pytest.mark.live


@pytest.fixture
def keys(settings: Settings) -> ProviderSecrets:
    keys = ProviderSecrets.from_settings(settings)
    if not keys.deepgram_api_key or not keys.anthropic_api_key:
        pytest.skip("DEEPGRAM_API_KEY and ANTHROPIC_API_KEY are needed for the live smoke test")
    return keys


async def test_claude_answers_for_real(settings: Settings, keys: ProviderSecrets) -> None:
    llm = settings.agent_service.llm
    model = ClaudeModel(new_client(keys.anthropic_api_key, llm.anthropic_base_url), llm.model)
    request = LlmRequest(system="Answer in at most five words.", messages=[ChatMessage("user", "Say hello.")])
    text = "".join([e.text async for e in model.stream(request) if isinstance(e, TextDelta)])
    assert text.strip()


async def test_deepgram_session_opens_keeps_alive_and_closes(
    settings: Settings, keys: ProviderSecrets
) -> None:
    stt = DeepgramStt(settings.agent_service.stt, keys.deepgram_api_key)
    stream = await stt.open(SttContext())
    results: list[Transcription] = []

    async def read() -> None:
        async for item in stream.results():
            results.append(item)

    reader = asyncio.create_task(read())
    silence = np.zeros(16000, dtype="<i2").tobytes()
    for start in range(0, len(silence), 640):
        await stream.push(silence[start : start + 640])
    await stream.finalize()
    await asyncio.sleep(1.0)
    await stream.aclose()
    await reader
    assert all(not r.text for r in results)  # silence: no words, and no error
