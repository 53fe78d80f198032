"""The offline recogniser really understands the demo caller: word error rate on the demo's lines,
spoken by two different voices, through the same path as a call (TTS -> 16 kHz -> PocketSphinx)."""

from __future__ import annotations

import re

import audio_core
from services.agent.demo_agent import demo_agent
from services.agent.ports import VoiceSelection
from services.agent.profile import build_profile
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech
from services.demo import DEMO_LINES
from services.shared.settings import Settings

MAX_WER = 0.35


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Levenshtein distance over words, and the reference length."""
    ref = re.findall(r"[a-z']+", reference.lower())
    hyp = hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


async def test_word_error_rate_on_the_demo_lines(settings: Settings, caller_tts: TritonTextToSpeech) -> None:
    stt = PocketSphinxStt()
    context = build_profile(demo_agent(), settings.agent_service).stt_context
    errors = words = 0
    report = []
    for voice in ("default_male_1", "default_female_1"):
        for line in DEMO_LINES:
            resampler = audio_core.Resampler(caller_tts.sample_rate, 16000)
            pcm = b"".join(
                [resampler.process(c) async for c in caller_tts.synthesize(line, VoiceSelection(voice))]
            )
            pcm += resampler.flush()
            stream = await stt.open(context)
            for i in range(0, len(pcm), 640):
                await stream.push(pcm[i : i + 640])
            await stream.finalize()
            await stream.aclose()
            heard = " ".join([r.text async for r in stream.results() if r.is_final])
            e, n = word_errors(line, heard)
            errors, words = errors + e, words + n
            report.append(f"{voice}: said {line!r} -> recognised {heard!r} ({e}/{n} errors)")
    wer = errors / words
    print("\n".join([*report, f"WER {wer:.3f}"]))
    assert wer <= MAX_WER, "\n".join(report)


def test_word_errors() -> None:
    assert word_errors("Hi, what are you", "hi what are you") == (0, 4)
    assert word_errors("a b c", "a x c d") == (2, 3)
