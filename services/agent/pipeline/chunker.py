"""Buffers streamed LLM text into speakable sentences, so each goes to TTS as soon as it is complete.

A sentence ends at `.`, `!`, `?` (or a newline) followed by whitespace, except after abbreviations
("Dr.", "e.g."), inside numbers ("3.5", "10.30"), and after list numbers ("1. "). The first clause of a
reply may be flushed early at a comma, so the caller hears something sooner.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    [
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "sr",
        "jr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "no",
        "approx",
        "dept",
        "inc",
        "ltd",
        "co",
        "mt",
        "ave",
        "blvd",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
    ]
)
# Punctuation counts only once whitespace follows (so "3.5" and a half-streamed "a.m." never split).
_TERMINATOR = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n+")
_CLAUSE = re.compile(r"[,;:](?=\s)")


class SentenceChunker:
    """Incremental: `push()` text deltas, get complete sentences back; `flush()` at the end of the reply."""

    def __init__(self, first_clause_min_chars: int = 24, max_chars: int = 300) -> None:
        self._buffer = ""
        self._first = True
        self._first_clause_min_chars = first_clause_min_chars
        self._max_chars = max_chars

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if sentence:
                out.append(sentence)
                self._first = False
        return out

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        self._first = True
        return [rest] if rest else []

    def _next_cut(self) -> int | None:
        text = self._buffer
        for match in _TERMINATOR.finditer(text):
            if match.group().startswith("\n") or not self._is_false_stop(text, match.start()):
                return match.end()
        if self._first:
            for match in _CLAUSE.finditer(text):
                if match.end() >= self._first_clause_min_chars:
                    return match.end()
        if len(text) > self._max_chars:  # a run-on without punctuation: cut at the last space
            space = text.rfind(" ", 0, self._max_chars)
            return space if space > 0 else self._max_chars
        return None

    @staticmethod
    def _is_false_stop(text: str, dot: int) -> bool:
        """A "." that does not end a sentence: abbreviation, initial, or a list number at a line start.
        (Decimals and times never get here: the terminator must be followed by whitespace.)"""
        if text[dot] != ".":
            return False
        token_match = re.search(r"(\S+)$", text[:dot])
        if token_match is None:
            return False
        token = token_match.group(1)
        if token.lower().rstrip(".") in ABBREVIATIONS:
            return True
        if len(token) == 1 and token.isupper():
            return True
        if token.isdigit():
            line_start = text.rfind("\n", 0, dot) + 1
            return not text[line_start : token_match.start()].strip()
        return False
