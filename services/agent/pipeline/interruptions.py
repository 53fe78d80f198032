"""Is the caller interrupting the agent, or only listening? Sans-IO decisions for barge-in.

While the agent talks, callers say "mm-hm", "okay", "right": listening noises that must never clear the
agent's audio. The offline recogniser often hears them as one or two odd words ("are", "book you"), so
the evidence for an interruption is speech that goes on (voiced time from the VAD onset, without the
hangover), several words, or a word that is a command ("stop", "wait", "no").
"""

from __future__ import annotations

BACKCHANNEL = frozenset(
    ["uh", "huh", "uh-huh", "mhm", "mm", "hmm", "yeah", "yep", "ok", "okay", "right", "sure"]
)
# One word that does interrupt the agent (any other single word while it talks is a backchannel).
INTERRUPTING = frozenset(
    ["stop", "wait", "no", "hold", "sorry", "pardon", "excuse", "hello", "hey", "actually", "what", "but"]
)
# Speech this long while the agent talks interrupts it whatever the recogniser has made of it so far.
SURE_SPEECH_S = 0.8
# Below this recognition confidence, a short utterance while the agent talks is not an interruption.
UNSURE_INTERRUPTION = 0.45
REOFFER_PREFIX = "As I was saying, "
_KEEP_CAPITAL = frozenset(["I'm", "I've", "I'll", "I'd", "Doctor", "Dr", "Mr", "Mrs", "Ms", "Miss"])


def interrupts_while_speaking(interim_words: list[str], voiced_s: float, min_speech_ms: int) -> bool:
    """Decided as the caller speaks (from interim words): True once it is surely an interruption. When
    it is not yet, the final transcript decides if the caller stops there (`final_interrupts`)."""
    if voiced_s * 1000 < min_speech_ms:
        return False
    if interim_words and all(w in BACKCHANNEL for w in interim_words):
        return False  # "uh-huh" while the agent talks is listening, not interrupting
    if any(w in INTERRUPTING for w in interim_words):
        return True
    return len(interim_words) >= 3 or voiced_s >= SURE_SPEECH_S


def final_interrupts(text: str, confidence: float) -> bool:
    """Decided on the final transcript of a short utterance said while the agent talks."""
    words = text.lower().split()
    if all(w in BACKCHANNEL for w in words):
        return False  # "uh-huh": the agent keeps talking
    if len(words) == 1 and words[0] not in INTERRUPTING:
        return False  # one word that is not a command: a backchannel the recogniser misheard
    # Words the recogniser is unsure of ("mm-hm" heard as "him") are listening noises; short but real
    # words ("stop", "no") are an interruption after all.
    return confidence >= UNSURE_INTERRUPTION


def reoffer(sentence: str) -> str:
    """The interrupted reply again, from the start of its sentence: "As I was saying, we are open ..."
    ("I" and titles keep their capitals)."""
    first = sentence.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower() and first.rstrip(".") not in _KEEP_CAPITAL:
        sentence = first.lower() + sentence[len(first) :]
    return REOFFER_PREFIX + sentence
