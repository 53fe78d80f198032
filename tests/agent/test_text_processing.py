"""Sentence chunking and speech normalization: what the LLM writes -> what the caller hears."""

from __future__ import annotations

import pytest

from services.agent.pipeline.chunker import SentenceChunker
from services.agent.pipeline.normalize import normalize_for_speech, number_to_words, ordinal_to_words


def chunk_stream(text: str, step: int = 3) -> list[str]:
    chunker = SentenceChunker()
    out: list[str] = []
    for i in range(0, len(text), step):  # deltas cut mid-word, like LLM tokens
        out += chunker.push(text[i : i + step])
    return out + chunker.flush()


def test_sentences_are_released_as_soon_as_complete() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Hello there! How") == ["Hello there!"]
    assert chunker.push(" are you?") == []  # the "?" could still be followed by a quote
    assert chunker.push(" Fine") == ["How are you?"]
    assert chunker.flush() == ["Fine"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Dr. Smith is in. Bye.", ["Dr. Smith is in.", "Bye."]),
        ("It costs 3.50 today. Thanks.", ["It costs 3.50 today.", "Thanks."]),
        ("Come at 10.30 please. Ok.", ["Come at 10.30 please.", "Ok."]),
        ("We open at 9 a.m. on Monday. See you.", ["We open at 9 a.m. on Monday.", "See you."]),
        ("Options:\n1. Book\n2. Cancel", ["Options:", "1. Book", "2. Cancel"]),
        ("Ask J. Smith, e.g. by phone. Done!", ["Ask J. Smith, e.g. by phone.", "Done!"]),
    ],
)
def test_abbreviations_decimals_times_and_lists_do_not_split(text: str, expected: list[str]) -> None:
    assert chunk_stream(text) == expected


def test_first_clause_is_flushed_early_for_latency() -> None:
    out = chunk_stream("Sure, I can certainly help you with booking that appointment, one moment please.")
    assert out[0] == "Sure, I can certainly help you with booking that appointment,"
    assert out[1] == "one moment please."


def test_run_on_text_is_cut_at_a_space() -> None:
    out = chunk_stream("word " * 100)
    assert all(len(s) <= 300 for s in out) and len(out) >= 2


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Call (555) 123-4567.", "Call five five five, one two three, four five six seven."),
        ("Or +1 555-123-4567", "Or plus one, five five five, one two three, four five six seven"),
        ("Write to john.doe@example.com", "Write to john dot doe at example dot com"),
        ("That is $12.50", "That is twelve dollars and fifty cents"),
        ("Only $1,200 or $1", "Only one thousand two hundred dollars or one dollar"),
        ("Open 8 AM to 6:30 p.m.", "Open eight A M to six thirty P M"),
        ("Back at 10:05 or 14:00", "Back at ten oh five or fourteen o'clock"),
        ("25% off on the 3rd and 21st", "twenty-five percent off on the third and twenty-first"),
        ("Dr. Smith", "Doctor Smith"),
        ("Pi is 3.14", "Pi is three point one four"),
        ("Room 42 & 7", "Room forty-two and seven"),
        ("[laugh] Sure", "[laugh] Sure"),
    ],
)
def test_normalization_reads_like_a_person(text: str, spoken: str) -> None:
    assert normalize_for_speech(text).endswith(spoken) or normalize_for_speech(text) == spoken


def test_number_words() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(115) == "one hundred fifteen"
    assert number_to_words(2_000_042) == "two million forty-two"
    assert ordinal_to_words(1) == "first"
    assert ordinal_to_words(22) == "twenty-second"
    assert ordinal_to_words(40) == "fortieth"
    assert ordinal_to_words(112) == "one hundred twelfth"
