"""Offline speech recognition with PocketSphinx (its English acoustic model and dictionary ship in the
wheel), biased toward each agent's vocabulary.

At call start the adapter builds a small trigram model (stt/arpa.py) from the agent's phrases plus
everyday telephone talk and digits, and a dictionary restricted to those words, so decoding is both
faster and far more accurate than with the general model. Decoding runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from pocketsphinx import Decoder, get_model_path

from services.agent.ports import SttContext, Transcription
from services.agent.providers.stt.arpa import build_arpa, words

SAMPLE_RATE = 16000
DIGITS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# What callers say to any agent; the agent's own phrases are added per call.
EVERYDAY_PHRASES = (
    "hi",
    "hello",
    "hello there",
    "hi there",
    "good morning",
    "good afternoon",
    "yes",
    "yes please",
    "yeah",
    "no",
    "no thanks",
    "no thank you",
    "okay",
    "ok thanks",
    "thank you",
    "thanks",
    "thank you very much",
    "that's all",
    "that's all thanks",
    "goodbye",
    "bye",
    "bye bye",
    "sorry",
    "pardon",
    "can you repeat that",
    "what did you say",
    "i'm not sure",
    "maybe",
    "please",
    "sure",
    "great",
    "perfect",
    "uh huh",
    "hmm",
    "my name is john smith",
    "my name is",
    "my phone number is",
    "my number is",
    "it's",
    "i need help",
    "i have a question",
    "can you help me",
    "i would like to",
    "i want to",
    "can i",
    "could you",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "today",
    "tomorrow",
    "morning",
    "afternoon",
    "evening",
    "next week",
    "this week",
    "at ten",
    "at nine",
    "at two",
)
# Runs of digits cover every digit-to-digit transition without drowning the agent's own phrases.
DIGIT_SENTENCES = tuple(" ".join(DIGITS[(i + k) % len(DIGITS)] for k in range(4)) for i in range(len(DIGITS)))
# The agent's phrases count several times: measured on the demo lines, this cuts word errors by a fifth.
AGENT_PHRASE_WEIGHT = 3


def training_sentences(context: SttContext) -> list[str]:
    agent_phrases = list(context.phrases) * AGENT_PHRASE_WEIGHT
    return [*EVERYDAY_PHRASES, *DIGIT_SENTENCES, *agent_phrases, *context.keywords]


# Words normally cover well over this share of an utterance's frames (the rest is the pre-roll and the
# trailing silence that ended it); much less means speech the language model could not explain was
# absorbed into silence ("where can I park my car" heard as a lone "are" with posterior 1.0).
FULL_COVERAGE = 0.4


def word_confidence(decoder: Decoder) -> float:
    """Confidence of the final hypothesis: the mean posterior probability of the recognised words from the
    utterance's lattice, scaled down when the words explain too little of the audio.

    The Python binding already returns `seg().prob` as a probability (not in the log base). The mean over
    words, not the sentence posterior (their product), so a long correct sentence is not "unsure" for its
    length; fillers and silences do not count. Measured on held-out sentences in two voices: correct
    recognitions 0.7-1.0, garbled ones mostly below 0.5 (tests/agent/test_recognition.py).
    """
    posteriors, word_frames = [], 0
    for seg in decoder.seg():
        if seg.word.startswith(("<", "[", "+")):
            continue
        posteriors.append(float(seg.prob))
        word_frames += seg.end_frame - seg.start_frame + 1
    if not posteriors:
        return 0.0
    coverage = word_frames / max(int(decoder.n_frames()), 1)
    confidence = sum(posteriors) / len(posteriors) * min(1.0, coverage / FULL_COVERAGE)
    return max(0.0, min(1.0, confidence))


class PronunciationDictionary:
    """CMUdict from the wheel, loaded once per process; writes small per-call dictionaries."""

    def __init__(self, path: Path) -> None:
        entries: dict[str, list[str]] = {}
        with path.open(encoding="utf-8") as source:
            for line in source:
                word, _, phones = line.strip().partition(" ")
                if phones:
                    entries.setdefault(word.split("(")[0], []).append(phones.strip())
        self._entries = entries

    def known(self, word: str) -> bool:
        return word in self._entries

    def write_subset(self, vocabulary: Iterable[str], target: Path) -> None:
        with target.open("w", encoding="utf-8") as out:
            for word in sorted(set(vocabulary)):
                for i, phones in enumerate(self._entries.get(word, ())):
                    out.write(f"{word}{f'({i + 1})' if i else ''} {phones}\n")


class PocketSphinxStt:
    """The SpeechToText port, offline. Create once per process (loads the dictionary)."""

    name = "pocketsphinx"
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        model = Path(get_model_path()) / "en-us"
        self._acoustic_model = model / "en-us"
        self._dictionary = PronunciationDictionary(model / "cmudict-en-us.dict")

    async def open(self, context: SttContext) -> PocketSphinxStream:
        decoder, workdir = await asyncio.to_thread(self._build_decoder, context)
        return PocketSphinxStream(decoder, workdir)

    def _build_decoder(self, context: SttContext) -> tuple[Decoder, tempfile.TemporaryDirectory[str]]:
        # Words the dictionary cannot pronounce are dropped from training rather than failing the call.
        sentences = [
            " ".join(w for w in words(s) if self._dictionary.known(w)) for s in training_sentences(context)
        ]
        sentences = [s for s in sentences if s]
        workdir = tempfile.TemporaryDirectory(prefix="voice-stt-")
        lm_path, dict_path = Path(workdir.name) / "agent.arpa", Path(workdir.name) / "agent.dict"
        lm_path.write_text(build_arpa(sentences), encoding="utf-8")
        self._dictionary.write_subset((w for s in sentences for w in s.split()), dict_path)
        decoder = Decoder(
            hmm=str(self._acoustic_model),
            lm=str(lm_path),
            dict=str(dict_path),
            loglevel="FATAL",
            bestpath=True,
        )
        return decoder, workdir


class PocketSphinxStream:
    """One call. Audio is decoded in batches of ~100 ms on a worker thread; an interim hypothesis is
    published when it changes, the final one on `finalize()`."""

    BATCH_BYTES = SAMPLE_RATE * 2 // 10

    def __init__(self, decoder: Decoder, workdir: tempfile.TemporaryDirectory[str]) -> None:
        self._decoder = decoder
        self._workdir = workdir
        self._results: asyncio.Queue[Transcription | None] = asyncio.Queue()
        self._pending = bytearray()
        self._in_utterance = False
        self._utterance_start_s = 0.0
        self._samples_seen = 0
        self._last_interim = ""
        self._lock = asyncio.Lock()  # the decoder is not thread-safe: one batch at a time
        self._closed = False

    async def push(self, pcm16: bytes) -> None:
        if self._closed:
            return
        self._pending += pcm16
        if len(self._pending) >= self.BATCH_BYTES:
            await self._decode_pending(final=False)

    async def finalize(self) -> None:
        if not self._closed:
            await self._decode_pending(final=True)

    async def _decode_pending(self, *, final: bool) -> None:
        async with self._lock:
            batch, self._pending = bytes(self._pending), bytearray()
            if not batch and not (final and self._in_utterance):
                return
            if not self._in_utterance:
                self._utterance_start_s = self._samples_seen / SAMPLE_RATE
            text, confidence = await asyncio.to_thread(self._decode, batch, final)
            self._samples_seen += len(batch) // 2
            end_s = self._samples_seen / SAMPLE_RATE
            if final:
                self._last_interim = ""
                if text:
                    await self._results.put(
                        Transcription(text, True, confidence, self._utterance_start_s, end_s)
                    )
            elif text and text != self._last_interim:
                self._last_interim = text
                await self._results.put(
                    Transcription(text, False, confidence, self._utterance_start_s, end_s)
                )

    def _decode(self, batch: bytes, final: bool) -> tuple[str, float]:
        decoder = self._decoder
        if not self._in_utterance:
            decoder.start_utt()
            self._in_utterance = True
        if batch:
            decoder.process_raw(batch, no_search=False, full_utt=False)
        if final:
            decoder.end_utt()
            self._in_utterance = False
        hyp = decoder.hyp()
        if hyp is None:
            return "", 0.0
        return " ".join(hyp.hypstr.split()), word_confidence(decoder) if final else 0.0

    async def results(self) -> AsyncIterator[Transcription]:
        while (item := await self._results.get()) is not None:
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            if self._in_utterance:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._decoder.end_utt)
        await self._results.put(None)
        self._workdir.cleanup()
