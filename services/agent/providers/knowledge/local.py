"""A simple local KnowledgeBase: the agent's FAQ entries ranked by word overlap with the question."""

from __future__ import annotations

from services.agent.ports import Snippet
from services.agent.providers.llm.policy import content_words
from voice.v1 import agents_pb2


class FaqKnowledgeBase:
    def __init__(self, agent: agents_pb2.Agent) -> None:
        self._entries = [
            (
                f"Q: {faq.question}\nA: {faq.answer}",
                content_words(faq.question + " " + " ".join(faq.keywords)),
            )
            for faq in agent.faq
        ]

    async def search(self, query: str, limit: int = 3) -> list[Snippet]:
        words = content_words(query)
        scored = [Snippet(text, len(words & keys) / (len(keys) or 1)) for text, keys in self._entries]
        return sorted((s for s in scored if s.score > 0), key=lambda s: -s.score)[:limit]
