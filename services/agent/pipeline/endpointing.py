"""Sans-IO speech segmentation from VAD probabilities (times are audio-clock seconds passed in).

Speech starts when the probability stays >= threshold for `min_speech_ms`; it ends when it stays below
`threshold - hysteresis` for `min_silence_ms`. Start and end carry the time the speech really began or
stopped (not when it was confirmed), so latency can be measured from the true end of speech.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HYSTERESIS = 0.15

# A caller who is reading out a number or spelling a name pauses between groups, and nobody ends a turn
# on "to", "the" or "um": after these endings the engine waits longer before answering.
_UNFINISHED = re.compile(
    r"(\b(zero|oh|one|two|three|four|five|six|seven|eight|nine|double|triple|and|or|but|because|is|number"
    r"|dash|dot|at|to|the|an|my|your|for|of|with|from|um|uh|er|erm)"
    r"|\b[a-z]|\d)$"
)


def sounds_unfinished(text: str) -> bool:
    """True when the words so far end like an unfinished number, spelling or sentence."""
    return bool(_UNFINISHED.search(text.strip().lower()))


@dataclass(frozen=True)
class SpeechStarted:
    at: float


@dataclass(frozen=True)
class SpeechEnded:
    at: float
    duration: float


SpeechEvent = SpeechStarted | SpeechEnded


class Endpointer:
    def __init__(self, threshold: float, min_speech_ms: int, min_silence_ms: int) -> None:
        self.threshold = threshold
        self.min_speech = min_speech_ms / 1000
        self.min_silence = min_silence_ms / 1000
        self.in_speech = False
        self._candidate_start: float | None = None
        self._speech_start = 0.0
        self._last_voiced = 0.0

    def speech_duration(self, now: float) -> float:
        """Seconds of the current speech segment (0 when not speaking), hangover included."""
        return now - self._speech_start if self.in_speech else 0.0

    def voiced_duration(self) -> float:
        """Seconds from the true onset of the current speech to its last voiced window: the evidence a
        barge-in needs. The silence the VAD waits out before ending speech (its hangover) is not in it,
        so a 150 ms "mm-hm" stays 150 ms long."""
        return max(self._last_voiced - self._speech_start, 0.0) if self.in_speech else 0.0

    @property
    def onset_at(self) -> float | None:
        """When the current (or possible) speech began, on the audio clock; None when there is none."""
        return self._speech_start if self.in_speech else self._candidate_start

    def onset_voiced(self) -> float:
        """Voiced seconds since the onset of what may be speech, before the VAD has confirmed it (after,
        the same as `voiced_duration`); 0 when nothing voiced is pending. A barge-in pauses the agent on
        this early evidence and confirms (or takes back) the interruption later."""
        if self.in_speech:
            return self.voiced_duration()
        if self._candidate_start is None:
            return 0.0
        return max(self._last_voiced - self._candidate_start, 0.0)

    def update(self, probability: float, window_start: float, window_s: float) -> SpeechEvent | None:
        window_end = window_start + window_s
        if not self.in_speech:
            if probability >= self.threshold:
                if self._candidate_start is None:
                    self._candidate_start = window_start
                self._last_voiced = window_end
                if window_end - self._candidate_start >= self.min_speech:
                    self.in_speech = True
                    self._speech_start = self._candidate_start
                    self._candidate_start = None
                    return SpeechStarted(self._speech_start)
            elif window_start - self._last_voiced > self.min_silence / 2:
                self._candidate_start = None  # a short blip, not the start of speech
            return None
        if probability >= self.threshold - HYSTERESIS:
            self._last_voiced = window_end
            return None
        if window_end - self._last_voiced >= self.min_silence:
            self.in_speech = False
            return SpeechEnded(self._last_voiced, self._last_voiced - self._speech_start)
        return None
