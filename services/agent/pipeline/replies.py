"""Reply generation: LLM rounds -> sentences -> TTS -> playout, with tool rounds.

One reply at a time; the session starts and cancels them. Everything a reply starts (the LLM stream,
TTS streams, tool calls) is closed when its task is cancelled, so a barge-in or a hang-up leaves nothing
running behind it. What the caller side must see (the agent audible, a transfer, a hang-up) goes back
to the session through `on_audible` and the reply's `deferred` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from services.agent.pipeline.bookkeeping import CallBookkeeping, TurnMarks
from services.agent.pipeline.chunker import SentenceChunker
from services.agent.pipeline.history import Conversation
from services.agent.pipeline.normalize import normalize_for_speech
from services.agent.pipeline.playout import Playout
from services.agent.ports import (
    Completed,
    KnowledgeBase,
    LanguageModel,
    LlmRequest,
    TextDelta,
    TextToSpeech,
    ToolCallRequested,
    ToolOutcome,
    ToolRunner,
    ToolUse,
)
from services.agent.profile import AgentProfile
from voice.v1 import agent_session_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TOOL_ROUNDS = 4
TOOL_FILLER = "Let me check that for you."


@dataclass
class Reply:
    """A reply in progress: its task, its turn's marks, what it has said, what it defers to the end."""

    reply_id: int
    marks: TurnMarks | None
    caller_text: str
    caller_confidence: float = 1.0
    task: asyncio.Task[None] | None = None
    audible: bool = False
    played_sentences: list[str] = field(default_factory=list)
    round_text: str = ""
    round_message: object | None = None
    deferred: list[pb.ConverseResponse] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)  # every round's text, for the agent's transcript


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Closes a provider's stream however the block exits, so cancellation reaches the provider."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def scripted(text: str) -> AsyncIterator[TextDelta | ToolCallRequested | Completed]:
    """A fixed line (greeting, prompts, fillers) as if an LLM had said it."""
    yield TextDelta(text)
    yield Completed("end_turn")


class ReplyGenerator:
    def __init__(
        self,
        *,
        start: pb.SessionStart,
        profile: AgentProfile,
        llm: LanguageModel,
        tts: TextToSpeech,
        knowledge: KnowledgeBase | None,
        tools: ToolRunner | None,
        history: Conversation,
        playout: Playout,
        books: CallBookkeeping,
        on_audible: Callable[[], None],
    ) -> None:
        self.start = start
        self.profile = profile
        self._llm = llm
        self._tts = tts
        self._knowledge = knowledge
        self._tools = tools
        self.history = history
        self.playout = playout
        self._books = books
        self._on_audible = on_audible

    async def converse(self, reply: Reply) -> None:
        for _ in range(MAX_TOOL_ROUNDS):
            request = await self.build_request(reply.caller_text)
            if reply.marks is not None and reply.marks.llm_request is None:
                reply.marks.llm_request = time.monotonic()
            tool_uses = await self.speak_round(reply, self._llm.stream(request))
            reply.round_message = self.history.add_agent(reply.round_text, tuple(tool_uses))
            if not tool_uses:
                return
            results = await self.run_tools(reply, tool_uses)
            self.history.add_tool_results(results)
            if reply.deferred:
                return  # transfer or hang-up: the conversation is handed over
        log.warning("tool rounds exhausted", extra={"data": {"max": MAX_TOOL_ROUNDS}})

    async def build_request(self, caller_text: str) -> LlmRequest:
        agent = self.profile.agent
        system = [agent.system_prompt]
        if self.start.context:
            system.append(
                "Caller context: " + ", ".join(f"{k}={v}" for k, v in sorted(self.start.context.items()))
            )
        if self._knowledge is not None and caller_text:
            snippets = await self._knowledge.search(caller_text)
            if snippets:
                system.append("Relevant knowledge:\n" + "\n".join(s.text for s in snippets))
        if summary := self.history.summary_text():
            system.append(summary)
        return LlmRequest(
            system="\n\n".join(s for s in system if s),
            messages=tuple(self.history.messages),
            tools=self.profile.tools,
            max_tokens=self.profile.max_tokens,
            temperature=self.profile.temperature,
        )

    async def speak_round(
        self, reply: Reply, events: AsyncIterator[TextDelta | ToolCallRequested | Completed]
    ) -> list[ToolUse]:
        """Streams one LLM round into speech: sentences go to TTS as soon as they are complete."""
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self.speak_sentences(reply, sentences), name="speaker")
        chunker = SentenceChunker()
        tool_uses: list[ToolUse] = []
        reply.round_text = ""
        reply.round_message = None
        reply.played_sentences = []
        try:
            async with closing(events) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        marks = reply.marks
                        if marks is not None and marks.llm_first_token is None:
                            marks.llm_first_token = time.monotonic()
                        reply.round_text += event.text
                        for sentence in chunker.push(event.text):
                            if marks is not None and marks.first_sentence is None:
                                marks.first_sentence = time.monotonic()
                            sentences.put_nowait(sentence)
                    elif isinstance(event, ToolCallRequested):
                        tool_uses.append(event.tool_use)
            for sentence in chunker.flush():
                if reply.marks is not None and reply.marks.first_sentence is None:
                    reply.marks.first_sentence = time.monotonic()
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await speaker
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
        reply.round_text = reply.round_text.strip()
        reply.spoken.append(reply.round_text)
        return tool_uses

    async def speak_sentences(self, reply: Reply, sentences: asyncio.Queue[str | None]) -> None:
        tts = self._tts
        while (sentence := await sentences.get()) is not None:
            segment = self.playout.begin(sentence, reply.reply_id)
            marks = reply.marks
            if marks is not None and marks.tts_request is None:
                marks.tts_request = time.monotonic()
            try:
                speech = tts.synthesize(normalize_for_speech(sentence), self.profile.voice)
                async with closing(speech) as audio:
                    async for pcm in audio:
                        if marks is not None and marks.tts_first_audio is None:
                            marks.tts_first_audio = time.monotonic()
                        if not reply.audible:
                            reply.audible = True
                            self._on_audible()
                        self.playout.append(segment, pcm)
            finally:
                self.playout.finish(segment)

    async def run_tools(self, reply: Reply, tool_uses: list[ToolUse]) -> dict[str, str]:
        results: dict[str, str] = {}
        webhook_uses = []
        for use in tool_uses:
            if use.name == "transfer_call":
                results[use.id] = json.dumps({"status": "transferring"})
                reply.deferred.append(self.transfer_message(use))
                self._books.publish_tool_call(use, "ok", {"status": "transferring"}, 0.0)
            elif use.name == "end_call":
                results[use.id] = json.dumps({"status": "ending call"})
                reason = str(use.input.get("reason", "agent_hangup")) if use.input else "agent_hangup"
                reply.deferred.append(pb.ConverseResponse(end_call=pb.EndCall(reason=reason)))
                self._books.publish_tool_call(use, "ok", {"status": "ending call"}, 0.0)
            else:
                webhook_uses.append(use)
        if webhook_uses:
            runner = self._tools
            if runner is None:
                for use in webhook_uses:
                    results[use.id] = json.dumps({"error": f"tool {use.name} is not available on this agent"})
            else:
                fillers = {t.name: t.filler for t in self.profile.agent.tools if t.filler}
                line = next((fillers[u.name] for u in webhook_uses if u.name in fillers), TOOL_FILLER)
                filler = asyncio.create_task(self.speak_round(reply, scripted(line)))
                outcomes: list[ToolOutcome] = await asyncio.gather(*(runner.run(u) for u in webhook_uses))
                await filler
                for use, outcome in zip(webhook_uses, outcomes, strict=True):
                    results[use.id] = json.dumps({"status": outcome.status, **outcome.output})
                    self._books.publish_tool_call(
                        use, outcome.status, dict(outcome.output), outcome.latency_s
                    )
        return results

    def transfer_message(self, use: ToolUse) -> pb.ConverseResponse:
        kinds = {
            "blind": pb.TRANSFER_TYPE_BLIND,
            "warm": pb.TRANSFER_TYPE_WARM,
            "conference": pb.TRANSFER_TYPE_CONFERENCE,
        }
        args = dict(use.input)
        kind = kinds.get(str(args.get("type", "warm")), pb.TRANSFER_TYPE_WARM)
        context = str(args.get("context", ""))
        if kind == pb.TRANSFER_TYPE_WARM:
            # The person taking the call gets a briefing: the caller's words so far, most recent last.
            said = [m.text for m in self.history.messages if m.role == "user" and m.text][-3:]
            context = (context + " Caller said: " + " / ".join(said)).strip()
        return pb.ConverseResponse(
            transfer=pb.TransferRequest(
                type=kind,
                target=str(args.get("target", "")),
                context=context,
                reason=str(args.get("reason", "caller_request")),
            )
        )
