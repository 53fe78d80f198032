"""Claude through the real `anthropic` SDK against the Messages SSE peer, and the LLM degradation chain."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.agent.demo_agent import demo_agent
from services.agent.ports import (
    ChatMessage,
    Completed,
    LlmEvent,
    LlmRequest,
    ProviderUnavailable,
    TextDelta,
    ToolCallRequested,
    ToolSpec,
    ToolUse,
)
from services.agent.providers.llm.anthropic import ClaudeModel, new_client
from services.agent.providers.llm.policy import PolicyModel
from services.agent.resilience import breaker as policies
from services.agent.resilience.breaker import BreakerState, CircuitBreaker
from services.agent.resilience.llm import (
    APOLOGY,
    ApologyAndTransfer,
    CachedAnswers,
    FallbackLanguageModel,
    GuardedLanguageModel,
)
from services.agent.resilience.telemetry import Telemetry
from tests.peers.anthropic_peer import AnthropicPeer, Reply

SONNET = "claude-sonnet-4-20250514"
HAIKU = "claude-3-5-haiku-20241022"
CHECK = ToolSpec(
    "check_availability",
    "Free appointment slots of a provider on a date",
    {"type": "object", "properties": {"provider": {"type": "string"}, "date": {"type": "string"}}},
)


def request(*messages: ChatMessage, tools: Sequence[ToolSpec] = (CHECK,)) -> LlmRequest:
    return LlmRequest(system="You are a receptionist.", messages=messages, tools=tools, max_tokens=256)


async def collect(events: object) -> list[LlmEvent]:
    return [e async for e in events]  # type: ignore[attr-defined]


def text(events: list[LlmEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state now (a function, so mypy does not narrow it across clock moves)."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(peer: AnthropicPeer, telemetry: Telemetry, *, dead_air_s: float = 1.5) -> FallbackLanguageModel:
    client = new_client(peer.api_key, peer.url)
    agent = demo_agent()
    tiers = [
        GuardedLanguageModel(
            ClaudeModel(client, model),
            telemetry.breaker(f"claude:{model}", policies.CLAUDE),
            telemetry,
            first_event_s=dead_air_s,
            next_event_s=5.0,
        )
        for model in (SONNET, HAIKU)
    ]
    return FallbackLanguageModel(
        [*tiers, CachedAnswers(PolicyModel(agent)), ApologyAndTransfer(agent)], telemetry
    )


async def test_streams_text_and_assembles_tool_input(anthropic_peer: AnthropicPeer) -> None:
    anthropic_peer.script(
        SONNET,
        Reply(
            text="Let me check that.",
            tool_uses=[("check_availability", {"provider": "Dr. Smith", "date": "2026-01-21"})],
        ),
    )
    model = ClaudeModel(new_client(anthropic_peer.api_key, anthropic_peer.url), SONNET)
    events = await collect(
        model.stream(
            request(
                ChatMessage("assistant", "Hello, how can I help?"),
                ChatMessage("user", "Is Dr. Smith free Tuesday?"),
            )
        )
    )
    assert text(events) == "Let me check that."
    uses = [e.tool_use for e in events if isinstance(e, ToolCallRequested)]
    assert [(u.name, dict(u.input)) for u in uses] == [
        ("check_availability", {"provider": "Dr. Smith", "date": "2026-01-21"})
    ]
    assert events[-1] == Completed("tool_use")
    sent = anthropic_peer.requests[0].body
    assert sent["model"] == SONNET and sent["stream"] is True and sent["temperature"] == 0.7
    assert sent["tools"][0]["name"] == "check_availability"
    # The history opened with the greeting: Claude gets a user turn first.
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]


async def test_tool_results_go_back_in_the_api_shape(anthropic_peer: AnthropicPeer) -> None:
    """The peer rejects (400) what the API rejects: unanswered tool uses, results after text, role runs."""
    anthropic_peer.script(SONNET, Reply(text="Dr. Smith is free at 9 AM."))
    use = ToolUse("toolu_a", "check_availability", {"provider": "Dr. Smith"})
    unanswered = ToolUse("toolu_b", "check_availability", {"provider": "Dr. Jones"})
    model = ClaudeModel(new_client(anthropic_peer.api_key, anthropic_peer.url), SONNET)
    history = (
        ChatMessage("user", "Is Dr. Smith free?"),
        ChatMessage("assistant", "Let me check.", (use, unanswered)),
        ChatMessage("user", "", (), {"toolu_a": '{"status": "ok", "slots": ["9:00 AM"]}'}),
        ChatMessage("user", "and the afternoon?"),
    )
    events = await collect(model.stream(request(*history)))
    assert text(events) == "Dr. Smith is free at 9 AM."
    last = anthropic_peer.requests[0].body["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result", "text"]
    assert "cancelled" in last["content"][1]["content"]


@pytest.mark.parametrize(
    ("status", "kind"), [(529, "overloaded_error"), (429, "rate_limit_error"), (500, "api_error"), (401, "")]
)
async def test_http_errors_become_provider_unavailable(
    anthropic_peer: AnthropicPeer, status: int, kind: str
) -> None:
    api_key = anthropic_peer.api_key if status != 401 else "wrong-key"
    anthropic_peer.script(SONNET, Reply(status=status, retry_after_s=7 if status == 429 else None))
    model = ClaudeModel(new_client(api_key, anthropic_peer.url), SONNET)
    with pytest.raises(ProviderUnavailable) as caught:
        await collect(model.stream(request(ChatMessage("user", "hi"))))
    assert f"HTTP {status}" in caught.value.reason and kind in caught.value.reason
    if status == 429:
        assert caught.value.retry_after_s == 7


async def test_claude_529_falls_back_to_haiku(anthropic_peer: AnthropicPeer) -> None:
    telemetry = Telemetry()
    anthropic_peer.script(SONNET, Reply(status=529))
    anthropic_peer.script(HAIKU, Reply(text="We open at nine."))
    llm = chain(anthropic_peer, telemetry)
    events = await collect(llm.stream(request(ChatMessage("user", "When do you open?"))))
    assert text(events) == "We open at nine."
    assert [r.model for r in anthropic_peer.requests] == [SONNET, HAIKU]
    assert llm.name == HAIKU


async def test_mid_answer_failure_is_continued_by_haiku_from_where_the_caller_is(
    anthropic_peer: AnthropicPeer,
) -> None:
    anthropic_peer.script(SONNET, Reply(text="We are open from nine to five.", fail_after_deltas=3))
    anthropic_peer.script(HAIKU, Reply(text=" nine to five."))
    events = await collect(chain(anthropic_peer, Telemetry()).stream(request(ChatMessage("user", "Hours?"))))
    assert text(events) == "We are open nine to five."
    prefill = anthropic_peer.requests[1].body["messages"][-1]
    assert prefill == {"role": "assistant", "content": [{"type": "text", "text": "We are open"}]}


async def test_a_stalled_model_is_abandoned_within_the_dead_air_bound(anthropic_peer: AnthropicPeer) -> None:
    anthropic_peer.script(SONNET, Reply(text="Too late.", delay_s=2.0))
    anthropic_peer.script(HAIKU, Reply(text="Right away."))
    events = await collect(
        chain(anthropic_peer, Telemetry(), dead_air_s=0.3).stream(request(ChatMessage("user", "Hi")))
    )
    assert text(events) == "Right away."


async def test_both_claude_models_down_gives_the_cached_policy_answer(anthropic_peer: AnthropicPeer) -> None:
    anthropic_peer.script(SONNET, Reply(status=529))
    anthropic_peer.script(HAIKU, Reply(status=500))
    llm = chain(anthropic_peer, Telemetry())
    events = await collect(
        llm.stream(request(ChatMessage("user", "What are your opening hours on Saturday?")))
    )
    assert "Saturday from 9 AM to 1 PM" in text(events)
    assert llm.name == "cached"


async def test_no_cached_answer_apologizes_and_transfers(anthropic_peer: AnthropicPeer) -> None:
    anthropic_peer.script(SONNET, Reply(status=529))
    anthropic_peer.script(HAIKU, Reply(status=529))
    events = await collect(
        chain(anthropic_peer, Telemetry()).stream(request(ChatMessage("user", "Do you sell bicycles?")))
    )
    assert text(events) == APOLOGY
    (transfer,) = [e.tool_use for e in events if isinstance(e, ToolCallRequested)]
    assert transfer.name == "transfer_call" and transfer.input["target"] == "ext:100"


async def test_breaker_opens_after_three_failures_and_half_opens_after_60_s(
    anthropic_peer: AnthropicPeer,
) -> None:
    clock = Clock()
    telemetry = Telemetry(clock)
    llm = chain(anthropic_peer, telemetry)
    sonnet = telemetry.breakers[f"claude:{SONNET}"]
    for _ in range(3):
        anthropic_peer.script(SONNET, Reply(status=529))
        await collect(llm.stream(request(ChatMessage("user", "What are your opening hours?"))))
    assert sonnet.state is BreakerState.OPEN
    sonnet_calls = sum(r.model == SONNET for r in anthropic_peer.requests)
    await collect(llm.stream(request(ChatMessage("user", "What are your opening hours?"))))
    assert sum(r.model == SONNET for r in anthropic_peer.requests) == sonnet_calls  # open: not even tried
    clock.now += 59.9
    assert sonnet.state is BreakerState.OPEN
    clock.now += 0.2
    assert state_of(sonnet) is BreakerState.HALF_OPEN
    anthropic_peer.script(SONNET, Reply(text="Back again."))
    events = await collect(llm.stream(request(ChatMessage("user", "Hello?"))))
    assert text(events) == "Back again."
    assert state_of(sonnet) is BreakerState.CLOSED
