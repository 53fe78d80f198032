"""What the offline policy reads in a caller's words beyond keywords: yes or no, negation, a call that is
really ending (or only seems to), and requests to cancel or move an appointment.

Rules, not a model: each one is deliberately conservative, because the policy acts on what they say.
When a rule cannot tell, it answers "unsure" and the policy asks instead of guessing.
"""

from __future__ import annotations

import re
from typing import Literal

# Word-level tokens, keeping apostrophes so "don't" and "that's" stay one token.
_TOKEN = re.compile(r"[a-z']+")
# Clause boundaries: a negation or a "bye" only speaks for the clause it is in.
_CLAUSE_BREAK = re.compile(r"[,.;!?]|\b(?:but|actually|although|though|and then)\b")

YES = frozenset(
    ["yes", "yeah", "yep", "yup", "sure", "correct", "right", "okay", "ok", "absolutely", "definitely"]
)
YES_PHRASES = ("go ahead", "please do", "that's right", "that is right", "sounds good", "do it")
NO = frozenset(["no", "nope", "nah", "don't", "dont", "not", "never", "wrong", "cancel", "stop"])
NO_PHRASES = ("never mind", "no thanks", "no thank you", "not now", "don't bother")

NEGATIONS = frozenset(
    [
        "no",
        "not",
        "never",
        "don't",
        "dont",
        "doesn't",
        "didn't",
        "won't",
        "wouldn't",
        "shouldn't",
        "isn't",
        "aren't",
        "nothing",
        "without",
    ]
)

# A caller ending the call says one of these ...
CLOSINGS = (
    "goodbye",
    "good bye",
    "bye",
    "bye bye",
    "that's all",
    "that is all",
    "that's it",
    "that's everything",
    "nothing else",
    "have a nice day",
    "have a good day",
    "talk to you later",
    "hang up",
)
# ... and the call goes on when one of these comes after it (or "don't" comes before "hang up").
CONTINUATIONS = frozenset(
    [
        "wait",
        "actually",
        "but",
        "question",
        "questions",
        "more",
        "another",
        "also",
        "before",
        "hold",
        "still",
        "and",
        "what",
        "when",
        "where",
        "how",
        "can",
        "could",
    ]
)

CHANGE_VERBS = ("cancel", "reschedule", "re schedule", "move", "change", "postpone", "call off")
CANNOT_MAKE = ("can't make", "cannot make", "can't come", "cannot come", "won't make", "can not make")
APPOINTMENT_WORDS = frozenset(["appointment", "appointments", "booking", "visit", "consultation", "slot"])


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def clauses(text: str) -> list[list[str]]:
    return [t for part in _CLAUSE_BREAK.split(text.lower()) if part and (t := tokens(part))]


def _has_phrase(words: list[str], phrase: str) -> bool:
    joined = f" {' '.join(words)} "
    return f" {phrase} " in joined


def yes_or_no(text: str) -> Literal["yes", "no", "unsure"]:
    """The caller's answer to a yes/no question; "unsure" when it says both, neither, or more than that."""
    words = tokens(text)
    if not words:
        return "unsure"
    said_no = any(w in NO for w in words) or any(_has_phrase(words, p) for p in NO_PHRASES)
    said_yes = any(w in YES for w in words) or any(_has_phrase(words, p) for p in YES_PHRASES)
    if said_yes and not said_no:
        # "Yes, but I also want ..." is not a plain yes: only short answers count.
        return "yes" if len(words) <= 6 else "unsure"
    if said_no and not said_yes:
        return "no" if len(words) <= 6 else "unsure"
    return "unsure"


def is_negated(text: str, key_words: set[str]) -> bool:
    """True when a negation precedes one of `key_words` in the same clause ("I don't want to book")."""
    for clause in clauses(text):
        for i, word in enumerate(clause):
            if word in NEGATIONS and any(stem(w) in key_words for w in clause[i + 1 :]):
                return True
    return False


def stem(word: str) -> str:
    """The policy's crude stemmer (book/booking, hour/hours): key words arrive stemmed the same way."""
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def call_ending(text: str) -> Literal["ending", "continuing", "none"]:
    """Whether the caller is ending the call: "ending" only when a closing is the last thing said
    ("thanks, that's all, bye"); "continuing" when one is followed by more ("bye for now, actually wait,
    one more question") or refused ("don't hang up"); "none" without any closing."""
    words = tokens(text)
    joined = " ".join(words)
    last_end = -1
    for closing in CLOSINGS:
        for match in re.finditer(rf"\b{re.escape(closing)}\b", joined):
            last_end = max(last_end, match.end())
    if last_end < 0:
        return "none"
    before, after = joined[:last_end].split(), joined[last_end:].split()
    if any(w in NEGATIONS for w in before[-3:]) or any(w in CONTINUATIONS for w in after):
        return "continuing"
    if text.strip().endswith("?"):
        return "continuing"
    # A few trailing words are fine ("bye for now", "goodbye then"); a new sentence is not.
    return "ending" if len(after) <= 3 else "continuing"


def wants_change_of_appointment(text: str) -> bool:
    """Cancel, reschedule or "can't make" an appointment: never the same as booking one."""
    words = tokens(text)
    joined = " ".join(words)
    changing = any(re.search(rf"\b{verb}\b", joined) for verb in CHANGE_VERBS)
    cannot = any(phrase in joined for phrase in CANNOT_MAKE)
    return (changing or cannot) and any(w in APPOINTMENT_WORDS for w in words)
