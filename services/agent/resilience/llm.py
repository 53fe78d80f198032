"""LLM degradation (spec 12.3) as adapters wrapping adapters:
Claude Sonnet -> Claude Haiku -> cached answers (the agent's policy) -> "I apologize, let me transfer you".

GuardedLanguageModel puts one provider behind its circuit breaker and a stall watchdog (no first event
within the dead-air bound = a failure, like an error). FallbackLanguageModel walks the tiers; a tier that
fails after it started talking is replaced mid-sentence: a tier that can continue a prefilled assistant
turn picks up where the caller's ear is, others answer afresh.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from services.agent.ports import (
    CannotContinue,
    Completed,
    LanguageModel,
    LlmEvent,
    LlmRequest,
    ProviderUnavailable,
    TextDelta,
    ToolCallRequested,
    ToolUse,
)
from services.agent.providers.llm.policy import PolicyModel
from services.agent.resilience.breaker import CircuitBreaker
from services.agent.resilience.telemetry import Telemetry
from voice.v1 import agents_pb2

log = logging.getLogger(__name__)

APOLOGY = "I apologize, let me transfer you to someone who can help."


async def _aclose(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class GuardedLanguageModel:
    def __init__(
        self,
        inner: LanguageModel,
        breaker: CircuitBreaker,
        telemetry: Telemetry,
        *,
        first_event_s: float,
        next_event_s: float,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_prefill = bool(getattr(inner, "supports_prefill", False))
        self._breaker = breaker
        self._telemetry = telemetry
        self._first_event_s = first_event_s
        self._next_event_s = next_event_s

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        if not self._breaker.allow():
            raise ProviderUnavailable(self.name, "circuit open")
        events = self.inner.stream(request)
        try:
            timeout = self._first_event_s
            while True:
                try:
                    event = await asyncio.wait_for(anext(events), timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self._fail("stall", f"no event within {timeout:.2f} s")
                    raise ProviderUnavailable(self.name, f"stalled for {timeout:.2f} s") from None
                except ProviderUnavailable as exc:
                    self._fail("unavailable", exc.reason)
                    raise
                timeout = self._next_event_s
                yield event
            self._breaker.record_success()
        finally:
            self._breaker.release()  # closed early by a barge-in: neither a success nor a failure
            await _aclose(events)

    def _fail(self, kind: str, detail: str) -> None:
        self._breaker.record_failure()
        self._telemetry.error(self.name, kind, detail)


class FallbackLanguageModel:
    """The chain. `name` is the tier that answered last (the `model` label of llm_latency_seconds)."""

    def __init__(self, tiers: Sequence[LanguageModel], telemetry: Telemetry) -> None:
        if not tiers:
            raise ValueError("a fallback chain needs at least one tier")
        self.tiers = tuple(tiers)
        self.name = self.tiers[0].name
        self._telemetry = telemetry

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        said = ""
        for index, tier in enumerate(self.tiers):
            tier_request = request
            if said and getattr(tier, "supports_prefill", False):
                tier_request = replace(request, prefill=request.prefill + said)
            asked_for_tools = False
            events = tier.stream(tier_request)
            try:
                async for event in events:
                    if isinstance(event, TextDelta):
                        said += event.text
                    elif isinstance(event, ToolCallRequested):
                        asked_for_tools = True
                    yield event
                self.name = tier.name
                return
            except ProviderUnavailable as exc:
                nxt = self.tiers[index + 1].name if index + 1 < len(self.tiers) else "none"
                log.warning(
                    "LLM tier failed, switching",
                    extra={"data": {"from": tier.name, "to": nxt, "reason": exc.reason, "said": said}},
                )
                self._telemetry.error(tier.name, "failover", exc.reason)
                if asked_for_tools:
                    # The tools it asked for run; the next round asks the chain again from the top.
                    self.name = tier.name
                    yield Completed("tool_use")
                    return
            finally:
                await _aclose(events)
        raise CannotContinue("llm", "every language model tier failed")


class CachedAnswers:
    """The "cached responses for common queries" tier: the agent's policy, but only where it has a real
    answer (an FAQ or intent match). A miss is a failure, so the chain ends with apology + transfer."""

    name = "cached"

    def __init__(self, policy: PolicyModel) -> None:
        self._policy = policy

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        reply = self._policy.reply_for(request)
        if reply is not None and reply.matched == "fallback":
            raise ProviderUnavailable(self.name, "no cached answer for this question")
        async for event in self._policy.stream(request):
            yield event


class ApologyAndTransfer:
    """The last tier: never fails. Apologizes and asks for a warm transfer to the agent's first target."""

    name = "apology"

    def __init__(self, agent: agents_pb2.Agent) -> None:
        self._target = agent.transfer_targets[0].target if agent.transfer_targets else ""

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        yield TextDelta(APOLOGY)
        yield ToolCallRequested(
            ToolUse(
                f"toolu_{uuid.uuid4().hex[:16]}",
                "transfer_call",
                {
                    "target": self._target,
                    "type": "warm",
                    "reason": "llm_unavailable",
                    "context": "The AI agent could not answer: its language models are unavailable.",
                },
            )
        )
        yield Completed("tool_use")
