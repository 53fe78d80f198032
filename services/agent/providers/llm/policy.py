"""The offline "language model": a deterministic policy built from the agent's configuration.

The spec's "cached responses" tier made first-class: the caller's words are matched against the
agent's intents (which may trigger a tool, e.g. transfer_call) and FAQ entries; anything else gets a
helpful fallback listing what the agent can do. It streams its answer word by word through the same
port as Claude, so the rest of the pipeline cannot tell the difference.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict

from services.agent.ports import Completed, LlmEvent, LlmRequest, TextDelta, ToolCallRequested, ToolUse
from voice.v1 import agents_pb2

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "i",
        "i'm",
        "im",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "is",
        "are",
        "was",
        "be",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "and",
        "or",
        "do",
        "does",
        "can",
        "could",
        "would",
        "like",
        "please",
        "it",
        "it's",
        "this",
        "that",
        "there",
        "what",
        "when",
        "how",
        "hi",
        "hello",
        "hey",
        "um",
        "uh",
        "so",
        "just",
        "some",
        "want",
        "need",
        "get",
        "have",
        "has",
    ]
)
INTENT_THRESHOLD = 0.5
FAQ_THRESHOLD = 1


def stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[a-z']+", text.lower()) if w not in STOPWORDS}


@dataclass(frozen=True)
class PolicyReply:
    text: str
    tool: ToolUse | None
    matched: str


class PolicyModel:
    """The LanguageModel port for one agent."""

    name = "policy"

    def __init__(self, agent: agents_pb2.Agent) -> None:
        self._agent = agent
        self._intents = [(intent, [content_words(p) for p in intent.phrases]) for intent in agent.intents]
        self._faq = [
            (faq, {stem(k.lower()) for k in faq.keywords} | content_words(faq.question)) for faq in agent.faq
        ]

    def reply_to(self, caller_text: str) -> PolicyReply:
        said = content_words(caller_text)
        best_intent, intent_score = None, 0.0
        for intent, phrase_sets in self._intents:
            for phrase in phrase_sets:
                if phrase:
                    score = len(said & phrase) / len(phrase)
                    if score > intent_score:
                        best_intent, intent_score = intent, score
        best_faq, faq_hits = None, 0
        for faq, keys in self._faq:
            hits = len(said & keys)
            if hits > faq_hits:
                best_faq, faq_hits = faq, hits
        if best_intent is not None and intent_score >= INTENT_THRESHOLD and intent_score * 3 >= faq_hits:
            tool = None
            if best_intent.tool_name:
                tool_input = (
                    MessageToDict(best_intent.tool_input) if best_intent.HasField("tool_input") else {}
                )
                tool = ToolUse(f"toolu_{uuid.uuid4().hex[:16]}", best_intent.tool_name, tool_input)
            return PolicyReply(best_intent.response, tool, f"intent:{best_intent.name}")
        if best_faq is not None and faq_hits >= FAQ_THRESHOLD:
            return PolicyReply(best_faq.answer, None, f"faq:{best_faq.question}")
        return PolicyReply(self._fallback(), None, "fallback")

    def _fallback(self) -> str:
        topics = [
            faq.question.rstrip("?").lower().replace("what are your ", "our ") for faq in self._agent.faq
        ]
        offer = f" I can help with {', '.join(topics[:2])}" if topics else " I can help with your questions"
        if any(i.tool_name == "transfer_call" for i in self._agent.intents) or self._agent.transfer_targets:
            offer += ", or transfer you to reception"
        return f"Sorry, I didn't quite catch that.{offer}."

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        last = request.messages[-1] if request.messages else None
        if last is None or last.role != "user" or (last.tool_results and not last.text):
            # After a tool result the policy has nothing to add: the intent already said what happens.
            yield Completed("end_turn")
            return
        reply = self.reply_to(last.text)
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
        if reply.tool is not None:
            yield ToolCallRequested(reply.tool)
            yield Completed("tool_use")
        else:
            yield Completed("end_turn")
