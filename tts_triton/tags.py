"""Paralinguistic tags (Chatterbox-Turbo's set), parsed once per request.

Turbo renders them as sounds when they appear inline in its text; engines that cannot render them get the
text with the tags removed and report which ones they dropped, so nothing speaks "bracket sigh bracket".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TURBO_TAGS: frozenset[str] = frozenset(
    {"clear throat", "sigh", "shush", "cough", "groan", "sniff", "gasp", "chuckle", "laugh"}
)

# Case and inner whitespace vary in LLM output ("[ Laugh ]", "[clear  throat]"); the canonical form is
# lower case with single spaces, which is how Turbo's tokenizer saw them in training.
_TAG_RE = re.compile(r"\[\s*([A-Za-z]+(?:\s+[A-Za-z]+)?)\s*\]")
_SPACES_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Segment:
    """A run of plain text, or one tag (`tag` set, `text` empty)."""

    text: str = ""
    tag: str | None = None


@dataclass(frozen=True)
class ParsedText:
    segments: tuple[Segment, ...]

    @property
    def tags(self) -> list[str]:
        return [s.tag for s in self.segments if s.tag is not None]

    def plain(self) -> str:
        """The text without tags, whitespace collapsed (what an engine without tags speaks)."""
        return _SPACES_RE.sub(" ", " ".join(s.text for s in self.segments if s.tag is None)).strip()

    def with_tags(self, supported: frozenset[str]) -> tuple[str, list[str]]:
        """Text keeping the tags in `supported` (canonical form), and the list of tags dropped."""
        parts: list[str] = []
        dropped: list[str] = []
        for seg in self.segments:
            if seg.tag is None:
                parts.append(seg.text)
            elif seg.tag in supported:
                parts.append(f" [{seg.tag}] ")
            else:
                dropped.append(seg.tag)
        return _SPACES_RE.sub(" ", "".join(parts)).strip(), dropped


def parse(text: str) -> ParsedText:
    """Splits `text` into text runs and known tags; unknown bracketed words stay as text."""
    segments: list[Segment] = []
    pos = 0
    for match in _TAG_RE.finditer(text):
        name = _SPACES_RE.sub(" ", match.group(1).lower())
        if name not in TURBO_TAGS:
            continue
        if match.start() > pos:
            segments.append(Segment(text=text[pos : match.start()]))
        segments.append(Segment(tag=name))
        pos = match.end()
    if pos < len(text):
        segments.append(Segment(text=text[pos:]))
    return ParsedText(tuple(segments))
