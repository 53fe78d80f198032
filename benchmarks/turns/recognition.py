"""Recognition measured as a call hears it: TTS -> 16 kHz -> PocketSphinx, scored by word error rate."""

from __future__ import annotations

import re

import audio_core
from services.agent.ports import SttContext, VoiceSelection
from services.agent.providers.stt.pocketsphinx import PocketSphinxStt
from services.agent.providers.tts import TritonTextToSpeech


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


async def recognise(
    stt: PocketSphinxStt, context: SttContext, tts: TritonTextToSpeech, line: str, voice: str
) -> tuple[str, float]:
    """What the recogniser makes of `line` in `voice`, and its (lowest final) confidence."""
    resampler = audio_core.Resampler(tts.sample_rate, 16000)
    pcm = b"".join([resampler.process(c) async for c in tts.synthesize(line, VoiceSelection(voice))])
    pcm += resampler.flush()
    stream = await stt.open(context)
    for i in range(0, len(pcm), 640):
        await stream.push(pcm[i : i + 640])
    await stream.finalize()
    await stream.aclose()
    finals = [r async for r in stream.results() if r.is_final]
    return " ".join(r.text for r in finals), min((r.confidence for r in finals), default=0.0)
