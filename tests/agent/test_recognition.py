"""The offline recogniser really understands the demo caller: word error rate on the demo's lines,
spoken by two different voices, through the same path as a call (TTS -> 16 kHz -> PocketSphinx); on
held-out sentences (not the agent's phrases) its level is asserted as measured, and its confidence
tells good recognitions from bad ones."""

from __future__ import annotations

from benchmarks.turns.corpus import HELDOUT_SENTENCES
from benchmarks.turns.recognition import recognise, word_errors
from services.agent.demo_agent import demo_agent
from services.agent.profile import build_profile
from services.agent.providers.llm.policy import CLARIFY_BELOW
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech
from services.demo import DEMO_LINES
from services.shared.settings import Settings

MAX_WER = 0.35
# Measured: 0.79 on benchmarks/turns/corpus.py in the two espeak-ng voices (the language model is built
# from the agent's phrases). A regression guard, not a target; the target is 0.35.
MAX_HELDOUT_WER = 0.85


VOICES = ("default_male_1", "default_female_1")


async def test_word_error_rate_on_the_demo_lines(settings: Settings, caller_tts: TritonTextToSpeech) -> None:
    stt = PocketSphinxStt()
    context = build_profile(demo_agent(), settings.agent_service).stt_context
    errors = words = 0
    report = []
    for voice in VOICES:
        for line in DEMO_LINES:
            heard, _ = await recognise(stt, context, caller_tts, line, voice)
            e, n = word_errors(line, heard)
            errors, words = errors + e, words + n
            report.append(f"{voice}: said {line!r} -> recognised {heard!r} ({e}/{n} errors)")
    wer = errors / words
    print("\n".join([*report, f"WER {wer:.3f}"]))
    assert wer <= MAX_WER, "\n".join(report)


async def test_held_out_sentences_and_honest_confidence(
    settings: Settings, caller_tts: TritonTextToSpeech
) -> None:
    stt = PocketSphinxStt()
    context = build_profile(demo_agent(), settings.agent_service).stt_context
    errors = words = 0
    good: list[float] = []  # confidence of recognitions with at most one word in five wrong
    bad: list[float] = []  # ... and of those with most words wrong
    report = []
    for voice in VOICES:
        for line in HELDOUT_SENTENCES:
            heard, confidence = await recognise(stt, context, caller_tts, line, voice)
            e, n = word_errors(line, heard)
            errors, words = errors + e, words + n
            if e / n <= 0.2:
                good.append(confidence)
            elif e / n > 0.5:
                bad.append(confidence)
            report.append(f"{voice}: {line!r} -> {heard!r} ({e}/{n} errors, confidence {confidence:.2f})")
    wer = errors / words
    print("\n".join([*report, f"held-out WER {wer:.3f}"]))
    assert wer <= MAX_HELDOUT_WER, "\n".join(report)
    # Confidence is measured, not a constant: garbled recognitions score lower than good ones, and most
    # of them fall below the policy's clarifying threshold.
    assert good and bad and len(set(good + bad)) > 3
    assert sum(good) / len(good) > sum(bad) / len(bad) + 0.2, report
    assert sum(c < CLARIFY_BELOW for c in bad) >= len(bad) / 2, report


def test_word_errors() -> None:
    assert word_errors("Hi, what are you", "hi what are you") == (0, 4)
    assert word_errors("a b c", "a x c d") == (2, 3)
