"""Text normalization for speech: what the LLM writes -> what a person would say.

Handles the things TTS engines read badly on the phone: phone numbers (digit by digit, in groups),
e-mail addresses, currency, clock times, percentages, ordinals, plain numbers, and common
abbreviations. Paralinguistic tags like [laugh] pass through untouched (the TTS handles them).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_ORDINAL_EXCEPTIONS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_ABBREVIATIONS = {
    "Dr.": "Doctor",
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "St.": "Street",
    "Ave.": "Avenue",
    "approx.": "approximately",
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
}


def number_to_words(n: int) -> str:
    """Cardinal number in English words: 1234 -> "one thousand two hundred thirty-four"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    words = number_to_words(n)
    head, sep, last = words.rpartition(" ") if " " in words else ("", "", words)
    if "-" in last:
        prefix, _, last = last.rpartition("-")
        head, sep = (f"{head}{sep}{prefix}", "-")
    if last in _ORDINAL_EXCEPTIONS:
        last = _ORDINAL_EXCEPTIONS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head}{sep}{last}"


def _digits(text: str) -> str:
    return " ".join(_ONES[int(d)] for d in text if d.isdigit())


def _phone(match: re.Match[str]) -> str:
    groups = [g for g in re.split(r"[^\d]+", match.group(0)) if g]
    spoken = ", ".join(_digits(g) for g in groups)
    return ("plus " if match.group(0).startswith("+") else "") + spoken


def _email(match: re.Match[str]) -> str:
    user, domain = match.group(0).split("@", 1)
    return f"{_spell_symbols(user)} at {_spell_symbols(domain)}"


def _spell_symbols(part: str) -> str:
    return part.replace(".", " dot ").replace("_", " underscore ").replace("-", " dash ")


def _money(match: re.Match[str]) -> str:
    whole, cents = int(match.group(1).replace(",", "")), match.group(2)
    text = f"{number_to_words(whole)} dollar{'s' if whole != 1 else ''}"
    if cents and int(cents):
        c = int(cents.ljust(2, "0"))
        text += f" and {number_to_words(c)} cent{'s' if c != 1 else ''}"
    return text


def _time(match: re.Match[str]) -> str:
    hour, minute, meridiem = int(match.group(1)), match.group(2), match.group(3)
    spoken = number_to_words(hour)
    if minute and int(minute):
        m = int(minute)
        spoken += f" oh {number_to_words(m)}" if m < 10 else f" {number_to_words(m)}"
    elif minute and not meridiem:
        spoken += " o'clock"
    if meridiem:
        spoken += " " + " ".join(meridiem.replace(".", "").upper())
    return spoken


def _decimal(match: re.Match[str]) -> str:
    whole, frac = match.group(0).split(".")
    return f"{number_to_words(int(whole.replace(',', '')))} point {_digits(frac)}"


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), _email),
    # +1 555-123-4567, (555) 123-4567, 555.123.4567, 555 123 4567
    (re.compile(r"(?<![\w$])\+?\d{0,3}[\s.-]?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\d)"), _phone),
    (re.compile(r"\$(\d{1,3}(?:,\d{3})*|\d+)(?:\.(\d{1,2}))?\b"), _money),
    (re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([AaPp]\.?[Mm]\.?)(?![\w])"), _time),
    (re.compile(r"\b(\d{1,2}):(\d{2})()\b"), _time),
    (re.compile(r"\b(\d+(?:\.\d+)?)%"), lambda m: f"{m.group(1)} percent"),
    (re.compile(r"\b(\d+)(st|nd|rd|th)\b"), lambda m: ordinal_to_words(int(m.group(1)))),
    (re.compile(r"\b\d{1,3}(?:,\d{3})*\.\d+\b|\b\d+\.\d+\b"), _decimal),
    (
        re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\b"),
        lambda m: number_to_words(int(m.group(0).replace(",", ""))),
    ),
]


def normalize_for_speech(text: str) -> str:
    """Rewrites `text` so a TTS engine reads it the way a person would on the phone."""
    for abbreviation, spoken in _ABBREVIATIONS.items():
        text = re.sub(rf"(?<!\w){re.escape(abbreviation)}", spoken, text)
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    text = text.replace("&", " and ")
    return re.sub(r"[ \t]+", " ", text).strip()
