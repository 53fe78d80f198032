"""A small trigram language model in ARPA format, built from an agent's own phrases at call start.

PocketSphinx's general English model mis-hears short telephone turns; a model built from what callers
of *this* agent plausibly say (its FAQ questions, intent phrases, names, digits, yes/no) makes the
offline recogniser usable. Absolute discounting with back-off weights computed so every context's
distribution sums to one.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

BOS, EOS = "<s>", "</s>"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_arpa(sentences: Iterable[str], discount: float = 0.5) -> str:
    """ARPA text of a trigram model over `sentences` (each one training sentence)."""
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    tri: Counter[tuple[str, str, str]] = Counter()
    for sentence in sentences:
        tokens = [BOS, *words(sentence), EOS]
        if len(tokens) == 2:
            continue
        uni.update(tokens)
        bi.update(itertools.pairwise(tokens))
        tri.update(zip(tokens, tokens[1:], tokens[2:], strict=False))
    if not uni:
        raise ValueError("the language model needs at least one sentence with words")
    vocab = sorted(uni)
    total = sum(count for token, count in uni.items() if token != BOS)
    # Add-half smoothing keeps every vocabulary word reachable from any context.
    p1 = {t: (uni[t] + 0.5) / (total + 0.5 * len(vocab)) for t in vocab}

    followers1: dict[str, list[str]] = defaultdict(list)
    for a, b in bi:
        followers1[a].append(b)
    count1 = {a: sum(bi[(a, b)] for b in followers1[a]) for a in followers1}
    p2 = {
        (a, b): (c - discount) / count1[a] + discount * len(followers1[a]) / count1[a] * p1[b]
        for (a, b), c in bi.items()
    }
    bow1 = {a: _backoff(p2, p1, a, followers1.get(a, [])) for a in vocab}

    def p2_or_backoff(a: str, b: str) -> float:
        return p2.get((a, b), bow1[a] * p1[b])

    followers2: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, b, c in tri:
        followers2[(a, b)].append(c)
    count2 = {ab: sum(tri[(*ab, c)] for c in followers2[ab]) for ab in followers2}
    p3 = {
        (a, b, c): (n - discount) / count2[(a, b)]
        + discount * len(followers2[(a, b)]) / count2[(a, b)] * p2_or_backoff(b, c)
        for (a, b, c), n in tri.items()
    }
    bow2: dict[tuple[str, str], float] = {}
    for ab, followers in followers2.items():
        seen = sum(p3[(*ab, c)] for c in followers)
        lower = sum(p2_or_backoff(ab[1], c) for c in followers)
        bow2[ab] = max(1 - seen, 1e-9) / max(1 - lower, 1e-9)

    log = math.log10
    lines = [
        "\\data\\",
        f"ngram 1={len(vocab)}",
        f"ngram 2={len(p2)}",
        f"ngram 3={len(p3)}",
        "",
        "\\1-grams:",
    ]
    lines += [f"{-99.0 if t == BOS else log(p1[t]):.5f} {t} {log(bow1[t]):.5f}" for t in vocab]
    lines += ["", "\\2-grams:"]
    lines += [f"{log(p):.5f} {a} {b} {log(bow2.get((a, b), 1.0)):.5f}" for (a, b), p in sorted(p2.items())]
    lines += ["", "\\3-grams:"]
    lines += [f"{log(p):.5f} {a} {b} {c}" for (a, b, c), p in sorted(p3.items())]
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def _backoff(p2: dict[tuple[str, str], float], p1: dict[str, float], a: str, followers: list[str]) -> float:
    if not followers:
        return 1.0
    seen = sum(p2[(a, b)] for b in followers)
    lower = sum(p1[b] for b in followers)
    return max(1 - seen, 1e-9) / max(1 - lower, 1e-9)
