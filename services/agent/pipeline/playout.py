"""Real-time playout of the agent's voice: 20 ms frames paced by the sample clock.

TTS audio arrives in bursts; the bridge must receive a steady 50 frames per second, never a burst it
has to absorb. Audio is queued as segments (one per spoken sentence) so that on a barge-in we know
exactly how much of each sentence the caller heard, and can keep only that part in the history.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Segment:
    """The audio of one sentence of one reply."""

    text: str
    reply_id: int
    audio: bytearray = field(default_factory=bytearray)
    played_bytes: int = 0
    complete: bool = False  # TTS has delivered all of it

    @property
    def total_bytes(self) -> int:
        return self.played_bytes + len(self.audio)


@dataclass(frozen=True)
class PlayedReport:
    """What the caller heard of the interrupted audio."""

    heard_text: str
    unheard_text: str
    last_sequence_number: int
    # What to say if the reply is re-offered: from the beginning of the interrupted sentence on (a reply
    # restarted mid-sentence, "As I was saying, AM to 6 PM", makes no sense to the caller).
    resume_text: str = ""


def words_heard(text: str, fraction: float) -> str:
    """The prefix of `text` spoken in `fraction` of its audio (word-accurate, weighted by characters)."""
    if fraction >= 1:
        return text
    words = text.split()
    budget = fraction * sum(len(w) + 1 for w in words)
    heard, used = [], 0.0
    for word in words:
        used += len(word) + 1
        if used > budget + 0.5 * (len(word) + 1):
            break
        heard.append(word)
    return " ".join(heard)


class Playout:
    """Paces queued PCM16 out as frames through `send(pcm, sequence_number, timestamp, segment)`."""

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int,
        send: Callable[[bytes, int, int, Segment], Awaitable[None]],
        on_segment_done: Callable[[Segment], None] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2
        self.frame_s = frame_ms / 1000
        self._send = send
        self._on_segment_done = on_segment_done
        self._segments: deque[Segment] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a segment finished playing or was dropped
        self._epoch = 0  # bumped by clear(): a frame popped before a clear is never sent after it
        self.sequence_number = 0
        self.timestamp = 0
        self.underruns = 0
        self.frames_sent = 0
        self._started_at: float | None = None
        # Paused (a possible barge-in): nothing is sent, nothing is dropped; `resume` goes on from the
        # very frame that was next, `clear` drops it all.
        self._paused = False
        self._held: tuple[bytes, Segment] | None = None

    @property
    def active(self) -> bool:
        """True while there is audio queued or a segment still being synthesized."""
        return bool(self._segments)

    def begin(self, text: str, reply_id: int) -> Segment:
        segment = Segment(text, reply_id)
        self._segments.append(segment)
        return segment

    def append(self, segment: Segment, pcm: bytes) -> None:
        if segment in self._segments:
            segment.audio += pcm
            self._wakeup.set()

    def finish(self, segment: Segment) -> None:
        segment.complete = True
        self._wakeup.set()

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    async def wait_played(self, reply_id: int) -> None:
        """Returns once no audio of `reply_id` is queued (all played, or dropped by `clear`)."""
        while any(s.reply_id == reply_id for s in self._segments):
            self._progress.clear()
            await self._progress.wait()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stops sending at once (the frame waiting for its time is held back, not sent)."""
        self._paused = True

    def resume(self) -> None:
        """Goes on from where `pause` stopped (the false interruption was noise or a backchannel)."""
        if self._paused:
            self._paused = False
            self._wakeup.set()

    def clear(self) -> PlayedReport:
        """Drops all queued audio (barge-in); reports what of the current reply the caller heard."""
        heard, unheard, resume = [], [], []
        for segment in self._segments:
            resume.append(segment.text)
            if segment.played_bytes == 0:
                unheard.append(segment.text)
                continue
            # An incomplete segment's length is unknown: estimate from what was synthesized so far.
            fraction = segment.played_bytes / max(segment.total_bytes, 1)
            prefix = words_heard(segment.text, fraction)
            heard.append(prefix)
            unheard.append(segment.text[len(prefix) :].strip())
        self._segments.clear()
        self._held = None
        self._paused = False
        self._epoch += 1
        self._wakeup.set()
        self._progress.set()
        return PlayedReport(
            " ".join(h for h in heard if h),
            " ".join(u for u in unheard if u),
            (self.sequence_number - 1) % 2**32,
            " ".join(r for r in resume if r),
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_due: float | None = None
        while True:
            if self._paused:
                while self._paused:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                now = loop.time()
                if next_due is not None and now > next_due:
                    # The sample clock keeps time across the pause, as across any gap (RTP semantics).
                    self.timestamp += int((now - next_due) * self.sample_rate)
                next_due = None
                continue
            popped, self._held = self._held or self._next_frame(), None
            if popped is None:
                if self._segments and next_due is not None:
                    # Mid-reply and TTS has not delivered the next audio in time: an underrun.
                    self.underruns += 1
                self._wakeup.clear()
                await self._wakeup.wait()
                now = loop.time()
                if next_due is not None and now > next_due:
                    # Keep the sample clock in step with real time across gaps (RTP semantics).
                    self.timestamp += int((now - next_due) * self.sample_rate)
                next_due = None
                continue
            now = loop.time()
            epoch = self._epoch
            if next_due is None:
                next_due = now
            elif next_due > now:
                await asyncio.sleep(next_due - now)
            if epoch != self._epoch:
                next_due = None  # cleared (barge-in) while this frame waited for its time: drop it
                continue
            if self._paused:
                self._held = popped  # paused while this frame waited: it is the first after resume
                continue
            frame, segment = popped
            await self._send(frame, self.sequence_number, self.timestamp, segment)
            self.sequence_number = (self.sequence_number + 1) % 2**32
            self.timestamp += self.frame_bytes // 2
            self.frames_sent += 1
            next_due += self.frame_s
            if not self._segments:
                next_due = None  # the reply is over: the next one starts on its own clock

    def _next_frame(self) -> tuple[bytes, Segment] | None:
        """Up to one frame from the head segment; a short final piece is padded with silence."""
        while self._segments:
            head = self._segments[0]
            if len(head.audio) >= self.frame_bytes or (head.complete and head.audio):
                frame = bytes(head.audio[: self.frame_bytes])
                del head.audio[: self.frame_bytes]
                head.played_bytes += len(frame)
                if head.complete and not head.audio:
                    self._segments.popleft()
                    self._progress.set()
                    if self._on_segment_done is not None:
                        self._on_segment_done(head)
                return frame.ljust(self.frame_bytes, b"\x00"), head
            if head.complete:  # an empty sentence (nothing to say)
                self._segments.popleft()
                self._progress.set()
                if self._on_segment_done is not None:
                    self._on_segment_done(head)
                continue
            return None
        return None
