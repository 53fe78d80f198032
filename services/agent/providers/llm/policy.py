"""The offline "language model": a deterministic policy built from the agent's configuration.

The spec's "cached responses" tier made first-class: the caller's words are matched against the
agent's intents (which may trigger a tool, e.g. transfer_call) and FAQ entries; anything else gets a
helpful fallback listing what the agent can do. It streams its answer word by word through the same
port as Claude, so the rest of the pipeline cannot tell the difference.

Because it acts without judgement, it acts carefully (docs/offline_policy.md): words heard with low
confidence get a clarifying question, an intent with an effect (booking, cancelling, a webhook tool)
is confirmed by an explicit "yes" first, a negated request is never carried out, a request to cancel
or move an appointment is never taken for booking one, and the call ends only on a clear goodbye.
Whether a confirmation is pending is read from the agent's last message, so the policy keeps no state.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict

from services.agent.ports import (
    ChatMessage,
    Completed,
    LlmEvent,
    LlmRequest,
    TextDelta,
    ToolCallRequested,
    ToolUse,
)
from services.agent.providers.llm.understanding import (
    call_ending,
    is_negated,
    stem,
    wants_change_of_appointment,
    yes_or_no,
)
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
# Mean word posterior of the recognised words (1.0 for typed text and DTMF). Below CLARIFY_BELOW the
# words are too uncertain to answer; below ACT_ABOVE they may be answered but not acted on without a
# confirmation. Measured with PocketSphinx on held-out sentences in two voices: correct recognitions
# scored 0.69-1.0, garbled ones 0.27-0.66 (mostly under 0.5).
CLARIFY_BELOW = 0.45
ACT_ABOVE = 0.6
# A transfer or hang-up the caller asks for in so many words is itself the confirmation (asking "shall I
# transfer you?" after "transfer me to reception please" would only annoy); a weaker match is confirmed.
EXPLICIT_MATCH = 0.75
# Intents without a tool whose name says they change something (a booking the policy "pencils in").
_EFFECT_NAME = re.compile(r"book|cancel|reschedul|schedul|order|pay|reserv|buy|purchase|refund|delete")
_REQUEST_PREFIX = re.compile(
    r"^(?:(?:hi|hello|yes|please|so|um|uh)\s+)*(?:can i|could i|may i|i would like to|i'd like to|"
    r"i want to|i need to|i wanna|please|could you|can you)\s+"
)

CLARIFY = "Sorry, I'm not sure I heard that right. Could you say that again?"
GO_ON = "Of course, I'm still here. What else can I help you with?"
CONFIRM_END = "Would you like to end the call, or is there anything else I can help you with?"
DECLINED = "Okay, I won't do that. Is there anything else I can help you with?"
CHANGE_WITH_TRANSFER = (
    "I can't cancel or move appointments myself, but reception can. Shall I transfer you to reception?"
)
CHANGE_WITHOUT_TRANSFER = (
    "I can't cancel or move appointments myself. Please call back during opening hours to change it."
)


def content_words(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[a-z']+", text.lower()) if w not in STOPWORDS}


@dataclass(frozen=True)
class PolicyReply:
    text: str
    tool: ToolUse | None
    matched: str


def has_effect(intent: agents_pb2.Intent) -> bool:
    return bool(intent.tool_name) or bool(_EFFECT_NAME.search(intent.name.lower()))


def action_phrase(intent: agents_pb2.Intent) -> str:
    """What the intent does, in the caller's words: "book an appointment" from "I would like to book ..."."""
    phrase = (intent.phrases[0] if intent.phrases else intent.name.replace("_", " ")).lower().strip(" .?!")
    return _REQUEST_PREFIX.sub("", phrase) or phrase


def confirmation_prompt(intent: agents_pb2.Intent) -> str:
    return f"Just to confirm: you'd like to {action_phrase(intent)}. Is that right?"


def previous_agent_text(messages: list[ChatMessage]) -> str:
    """The agent's last words before the caller's latest turn (what a "yes" answers)."""
    for message in reversed(messages[:-1]):
        if message.role == "assistant":
            return message.text
    return ""


class PolicyModel:
    """The LanguageModel port for one agent."""

    name = "policy"

    def __init__(self, agent: agents_pb2.Agent) -> None:
        self._agent = agent
        self._goodbye = next((i for i in agent.intents if i.tool_name == "end_call"), None)
        self._transfer = next((i for i in agent.intents if i.tool_name == "transfer_call"), None)
        # The goodbye intent is recognised by call_ending(), never by keywords: "bye" inside
        # "bye for now, actually wait" must not hang up.
        self._intents = [
            (intent, [content_words(p) for p in intent.phrases])
            for intent in agent.intents
            if intent is not self._goodbye
        ]
        self._faq = [
            (faq, {stem(k.lower()) for k in faq.keywords} | content_words(faq.question)) for faq in agent.faq
        ]
        # Questions the policy asks before acting, and the intent a "yes" to each carries out.
        self._pending: dict[str, agents_pb2.Intent] = {confirmation_prompt(i): i for i in agent.intents}
        if self._goodbye is not None:
            self._pending[CONFIRM_END] = self._goodbye
        if self._transfer is not None:
            self._pending[CHANGE_WITH_TRANSFER] = self._transfer

    def reply_to(self, caller_text: str, confidence: float = 1.0, agent_said: str = "") -> PolicyReply:
        if not content_words(caller_text) and not caller_text.strip():
            return PolicyReply(self._fallback(), None, "fallback")
        if confidence < CLARIFY_BELOW:
            return PolicyReply(CLARIFY, None, "clarify")
        pending = self._pending_intent(agent_said)
        if pending is not None:
            answer = yes_or_no(caller_text)
            if answer == "yes":
                if confidence >= ACT_ABOVE:
                    return self._act(pending, "confirmed")
                return PolicyReply(agent_said.strip(), None, f"confirm:{pending.name}")  # ask once more
            if answer == "no":
                if pending is self._goodbye:
                    return PolicyReply(GO_ON, None, "continue")
                return PolicyReply(DECLINED, None, f"declined:{pending.name}")
        ending = call_ending(caller_text)
        if ending == "ending" and self._goodbye is not None:
            if confidence >= ACT_ABOVE:
                return self._act(self._goodbye, "intent")
            return PolicyReply(CONFIRM_END, None, "confirm:goodbye")
        if wants_change_of_appointment(caller_text):
            if self._transfer is not None:
                return PolicyReply(CHANGE_WITH_TRANSFER, None, "change_appointment")
            return PolicyReply(CHANGE_WITHOUT_TRANSFER, None, "change_appointment")
        matched = self._match(caller_text)
        if matched is not None:
            intent, score = matched
            keys = set().union(*(content_words(p) for p in intent.phrases))
            if is_negated(caller_text, keys):
                return PolicyReply(DECLINED, None, f"negated:{intent.name}")
            if has_effect(intent):
                explicit = intent.tool_name in ("transfer_call", "end_call") and score >= EXPLICIT_MATCH
                if not (explicit and confidence >= ACT_ABOVE):
                    return PolicyReply(confirmation_prompt(intent), None, f"confirm:{intent.name}")
            return self._act(intent, "intent")
        if ending == "continuing":
            return PolicyReply(GO_ON, None, "continue")
        best_faq, faq_hits = self._best_faq(caller_text)
        if best_faq is not None and faq_hits >= FAQ_THRESHOLD:
            return PolicyReply(best_faq.answer, None, f"faq:{best_faq.question}")
        return PolicyReply(self._fallback(), None, "fallback")

    def _pending_intent(self, agent_said: str) -> agents_pb2.Intent | None:
        said = agent_said.strip()
        if not said:
            return None
        if said in self._pending:
            return self._pending[said]
        # Cut by a barge-in: the caller heard enough of the question to answer it.
        if len(said) >= 20:
            for prompt, intent in self._pending.items():
                if prompt.startswith(said):
                    return intent
        return None

    def _match(self, caller_text: str) -> tuple[agents_pb2.Intent, float] | None:
        said = content_words(caller_text)
        best_intent, intent_score = None, 0.0
        for intent, phrase_sets in self._intents:
            for phrase in phrase_sets:
                if phrase:
                    score = len(said & phrase) / len(phrase)
                    if score > intent_score:
                        best_intent, intent_score = intent, score
        _, faq_hits = self._best_faq(caller_text)
        if best_intent is not None and intent_score >= INTENT_THRESHOLD and intent_score * 3 >= faq_hits:
            return best_intent, intent_score
        return None

    def _best_faq(self, caller_text: str) -> tuple[agents_pb2.FaqEntry | None, int]:
        said = content_words(caller_text)
        best_faq, faq_hits = None, 0
        for faq, keys in self._faq:
            hits = len(said & keys)
            if hits > faq_hits:
                best_faq, faq_hits = faq, hits
        return best_faq, faq_hits

    def _act(self, intent: agents_pb2.Intent, how: str) -> PolicyReply:
        tool = None
        if intent.tool_name:
            tool_input = MessageToDict(intent.tool_input) if intent.HasField("tool_input") else {}
            tool = ToolUse(f"toolu_{uuid.uuid4().hex[:16]}", intent.tool_name, tool_input)
        return PolicyReply(intent.response, tool, f"{how}:{intent.name}")

    def _fallback(self) -> str:
        topics = [
            faq.question.rstrip("?").lower().replace("what are your ", "our ") for faq in self._agent.faq
        ]
        offer = f" I can help with {', '.join(topics[:2])}" if topics else " I can help with your questions"
        if any(i.tool_name == "transfer_call" for i in self._agent.intents) or self._agent.transfer_targets:
            offer += ", or transfer you to reception"
        return f"Sorry, I didn't quite catch that.{offer}."

    def reply_for(self, request: LlmRequest) -> PolicyReply | None:
        """The reply to the request's last caller turn; None when there is nothing to answer."""
        messages = list(request.messages)
        last = messages[-1] if messages else None
        if last is None or last.role != "user" or (last.tool_results and not last.text):
            return None
        return self.reply_to(last.text, last.confidence, previous_agent_text(messages))

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        reply = self.reply_for(request)
        if reply is None:
            # After a tool result the policy has nothing to add: the intent already said what happens.
            yield Completed("end_turn")
            return
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            yield TextDelta(word if i == 0 else " " + word)
        if reply.tool is not None:
            yield ToolCallRequested(reply.tool)
            yield Completed("tool_use")
        else:
            yield Completed("end_turn")
