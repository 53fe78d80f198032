"""The first step of a barge-in: pause the agent on early evidence, then clear or resume it.

A caller who starts talking over the agent must hear it stop at once (within 250 ms of their onset),
but the VAD needs 250 ms to confirm speech and the recogniser longer still to tell "stop" from
"uh-huh". So the agent's playout pauses on the first `pause_ms` of voiced audio (nothing sent, nothing
dropped); the session later either clears it (a real interruption: ClearAudio) or resumes it from the
held frame (noise, a backchannel: the caller hears the reply go on with no gap in its words).
"""

from __future__ import annotations

import logging
import time

from services.agent.pipeline.endpointing import Endpointer
from services.agent.pipeline.playout import Playout

log = logging.getLogger(__name__)


class BargeInPause:
    def __init__(self, playout: Playout, endpointer: Endpointer, pause_ms: int) -> None:
        self._playout = playout
        self._endpointer = endpointer
        self._pause_s = pause_ms / 1000
        self.since: float | None = None  # monotonic time of the pause in progress
        self._saw_speech = False  # the VAD confirmed speech since the pause: STT or duration decide
        # (onset, pause) on the audio clock for each pause: what a caller hears as "the agent stopped".
        self.pauses: list[tuple[float, float]] = []

    @property
    def active(self) -> bool:
        return self.since is not None

    def check(self, agent_audible: bool, now: float) -> None:
        """Pauses the agent once the voiced evidence since the onset reaches `pause_ms` (`now` on the
        audio clock)."""
        onset = self._endpointer.onset_at
        if self._pause_s <= 0 or self.since is not None or onset is None or not agent_audible:
            return
        if self._endpointer.onset_voiced() < self._pause_s:
            return
        self._playout.pause()
        self.since = time.monotonic()
        self._saw_speech = self._endpointer.in_speech
        self.pauses.append((onset, now))
        log.info("possible barge-in: agent paused", extra={"data": {"onset_to_pause_s": now - onset}})

    def speech_started(self) -> None:
        if self.since is not None:
            self._saw_speech = True

    def blip_over(self) -> bool:
        """True when the voiced sound that paused the agent died out before it became speech."""
        return self.since is not None and not self._saw_speech and self._endpointer.onset_at is None

    def cleared(self) -> None:
        """The interruption was real: the playout was cleared (which also ends its pause)."""
        self.since, self._saw_speech = None, False

    def resume(self, why: str) -> bool:
        """The interruption was false: the paused reply goes on where it stopped. True if it was paused."""
        if self.since is None:
            return False
        self.since, self._saw_speech = None, False
        self._playout.resume()
        log.info("false interruption: agent resumes", extra={"data": {"why": why}})
        return True
