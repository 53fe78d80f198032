"""The conversation history an LLM sees, bounded by tokens, with older turns summarized.

Only what the caller actually heard is kept for the agent: a reply cut by a barge-in is stored
truncated. Once there are more than `summarize_after_turns` turns, the oldest are folded into a short
extractive summary that rides in the system prompt; the history is also cut to `max_history_tokens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.agent.ports import ChatMessage, ToolUse

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def first_sentence(text: str, limit: int = 120) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


@dataclass
class Conversation:
    max_history_tokens: int
    summarize_after_turns: int
    messages: list[ChatMessage] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def add_caller(self, text: str, confidence: float = 1.0) -> None:
        self._append(ChatMessage("user", text, confidence=confidence))

    def add_agent(self, text: str, tool_uses: tuple[ToolUse, ...] = ()) -> ChatMessage | None:
        """Records what the agent said; returns the message so a barge-in can truncate it later."""
        if not text and not tool_uses:
            return None
        message = ChatMessage("assistant", text, tool_uses)
        self._append(message)
        return message

    def replace_or_add_agent(self, message: object | None, heard: str) -> None:
        """After a barge-in: keep only what the caller heard of `message` (added if not yet recorded)."""
        for i, existing in enumerate(self.messages):
            if existing is message:
                if heard or existing.tool_uses:
                    self.messages[i] = ChatMessage("assistant", heard, existing.tool_uses)
                else:
                    del self.messages[i]
                return
        if heard:
            self._append(ChatMessage("assistant", heard))

    def remove_last_caller(self, text: str) -> None:
        """Takes back a caller turn that turned out to continue (the caller had only paused)."""
        if self.messages and self.messages[-1].role == "user" and self.messages[-1].text.endswith(text):
            rest = self.messages[-1].text[: -len(text)].strip()
            if rest:
                self.messages[-1] = ChatMessage("user", rest, confidence=self.messages[-1].confidence)
            else:
                self.messages.pop()

    def add_tool_results(self, results: dict[str, str]) -> None:
        self._append(ChatMessage("user", "", (), results))

    def _append(self, message: ChatMessage) -> None:
        # The LLM APIs need alternating roles; merge consecutive caller turns (a caller who spoke twice).
        if self.messages and message.role == "user" == self.messages[-1].role and not message.tool_results:
            previous = self.messages[-1]
            if not previous.tool_results:
                self.messages[-1] = ChatMessage(
                    "user",
                    f"{previous.text} {message.text}".strip(),
                    confidence=min(previous.confidence, message.confidence),
                )
                return
        self.messages.append(message)
        self._compact()

    def _compact(self) -> None:
        while len(self.messages) > self.summarize_after_turns and len(self.messages) > 2:
            self._fold_oldest()
        while self.tokens() > self.max_history_tokens and len(self.messages) > 2:
            self._fold_oldest()

    def _fold_oldest(self) -> None:
        oldest = self.messages.pop(0)
        if oldest.text:
            who = "Caller" if oldest.role == "user" else "Agent"
            self.summary.append(f"{who}: {first_sentence(oldest.text)}")
        # Never start the history with an orphaned tool result or an assistant turn.
        while self.messages and (self.messages[0].role != "user" or self.messages[0].tool_results):
            dropped = self.messages.pop(0)
            if dropped.text:
                self.summary.append(f"Agent: {first_sentence(dropped.text)}")

    def tokens(self) -> int:
        return sum(estimate_tokens(m.text) + 20 * len(m.tool_uses) for m in self.messages)

    def summary_text(self) -> str:
        return "Earlier in this call:\n" + "\n".join(self.summary[-40:]) if self.summary else ""
