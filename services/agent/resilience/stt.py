"""STT degradation (spec 12.3): Deepgram nova-2 -> nova-1 -> offline PocketSphinx -> "I'm having trouble
hearing you" + transfer (the session's part, on CannotContinue).

The chain's stream keeps the caller's audio since the last final transcript. When the current
recogniser fails (dropped socket, error close, refused handshake, a final that does not come within
`final_stall_s` of Finalize) it reconnects once to the same tier, then tries the next ones, and replays
the kept audio into the new one, Finalize included if one was pending: the caller's words are not lost,
and the caller is never asked to repeat. While a switch is under way, pushes only add to the kept audio,
so the session's audio loop never waits on a connection attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from services.agent.ports import (
    CannotContinue,
    ProviderUnavailable,
    SpeechToText,
    SttContext,
    SttStream,
    Transcription,
)
from services.agent.resilience.breaker import CircuitBreaker
from services.agent.resilience.telemetry import Telemetry

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_KEPT_S = 30.0


class GuardedSpeechToText:
    """One recogniser behind its breaker: refused while open; failures to connect or mid-stream count."""

    def __init__(self, inner: SpeechToText, breaker: CircuitBreaker, telemetry: Telemetry) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self._breaker = breaker
        self._telemetry = telemetry

    async def open(self, context: SttContext) -> SttStream:
        if not self._breaker.allow():
            raise ProviderUnavailable(self.name, "circuit open")
        try:
            stream = await self.inner.open(context)
        except ProviderUnavailable as exc:
            self._fail(exc)
            raise
        self._breaker.record_success()
        return _GuardedStream(stream, self)

    def _fail(self, exc: ProviderUnavailable) -> None:
        self._breaker.record_failure()
        self._telemetry.error(self.name, "unavailable", exc.reason)


class _GuardedStream:
    def __init__(self, inner: SttStream, owner: GuardedSpeechToText) -> None:
        self._inner = inner
        self._owner = owner
        self._reported = False

    def _report(self, exc: ProviderUnavailable) -> None:
        if not self._reported:  # push() and results() may both see the same failure
            self._reported = True
            self._owner._fail(exc)

    async def push(self, pcm16: bytes) -> None:
        try:
            await self._inner.push(pcm16)
        except ProviderUnavailable as exc:
            self._report(exc)
            raise

    async def finalize(self) -> None:
        try:
            await self._inner.finalize()
        except ProviderUnavailable as exc:
            self._report(exc)
            raise

    async def results(self) -> AsyncIterator[Transcription]:
        try:
            async for result in self._inner.results():
                yield result
        except ProviderUnavailable as exc:
            self._report(exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class FallbackSpeechToText:
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        tiers: Sequence[SpeechToText],
        telemetry: Telemetry,
        *,
        final_stall_s: float,
    ) -> None:
        if not tiers:
            raise ValueError("a fallback chain needs at least one tier")
        for tier in tiers:
            if tier.sample_rate != SAMPLE_RATE:
                raise ValueError(f"{tier.name}: the chain's tiers must all take {SAMPLE_RATE} Hz")
        self.tiers = tuple(tiers)
        self.name = self.tiers[0].name
        self.telemetry = telemetry
        self.final_stall_s = final_stall_s

    async def open(self, context: SttContext) -> FallbackSttStream:
        stream = FallbackSttStream(self, context)
        async with stream.lock:
            await stream.connect(0)
        return stream


class FallbackSttStream:
    def __init__(self, chain: FallbackSpeechToText, context: SttContext) -> None:
        self._chain = chain
        self._context = context
        self.lock = asyncio.Lock()
        self.tier_index = 0
        self.tier_name = ""
        self.switches = 0
        self._inner: SttStream | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stall: asyncio.Task[None] | None = None
        self._kept = bytearray()  # caller audio since the last final transcript
        self._finalize_pending = False
        self._exhausted = False
        self._failed_tiers: set[int] = set()  # tiers that failed during the current utterance
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self._out: asyncio.Queue[Transcription | CannotContinue | None] = asyncio.Queue()

    # --- the port -----------------------------------------------------------------------------------

    async def push(self, pcm16: bytes) -> None:
        if self._exhausted or self._closed:
            return
        self._kept += pcm16
        excess = len(self._kept) - int(MAX_KEPT_S * SAMPLE_RATE) * 2
        if excess > 0:
            del self._kept[:excess]
        if self.lock.locked():
            return  # a switch is under way: it replays everything kept, this frame included
        async with self.lock:
            inner = self._inner
            if inner is None:
                return
            try:
                await inner.push(pcm16)
            except ProviderUnavailable as exc:
                await self._failover(inner, exc)

    async def finalize(self) -> None:
        if self._exhausted or self._closed:
            return
        self._finalize_pending = True
        if self.lock.locked():
            return  # the switch sends Finalize after the replay
        async with self.lock:
            inner = self._inner
            if inner is None:
                return
            try:
                await inner.finalize()
            except ProviderUnavailable as exc:
                await self._failover(inner, exc)
                return
            self._arm_stall(inner)

    async def results(self) -> AsyncIterator[Transcription]:
        while (item := await self._out.get()) is not None:
            if isinstance(item, CannotContinue):
                raise item
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_stall()
        async with self.lock:
            inner, self._inner = self._inner, None
            if inner is not None:
                with contextlib.suppress(Exception):
                    await inner.aclose()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._out.put_nowait(None)

    # --- switching ----------------------------------------------------------------------------------

    async def connect(self, first: int) -> None:
        """Opens the first tier from `first` that answers (the lock is held), replays the kept audio."""
        tiers = self._chain.tiers
        for index in range(first, len(tiers)):
            if self._closed:
                return
            try:
                inner = await tiers[index].open(self._context)
            except ProviderUnavailable as exc:
                self._chain.telemetry.error(tiers[index].name, "failover", exc.reason)
                continue
            self._inner, self.tier_index, self.tier_name = inner, index, tiers[index].name
            self._pump = asyncio.create_task(self._pump_results(inner), name=f"stt-{tiers[index].name}")
            try:
                await self._replay(inner)
            except ProviderUnavailable as exc:
                self._chain.telemetry.error(tiers[index].name, "failover", exc.reason)
                self._failed_tiers.add(index)
                await self._drop(inner)
                continue
            return
        self._exhausted = True
        log.error("every speech recogniser failed", extra={"data": {"tiers": [t.name for t in tiers]}})
        self._out.put_nowait(CannotContinue("stt", "every speech recogniser failed"))

    async def _replay(self, inner: SttStream) -> None:
        sent = 0
        while sent < len(self._kept):  # frames pushed during the replay are sent too
            chunk = bytes(self._kept[sent:])
            await inner.push(chunk)
            sent += len(chunk)
        if self._finalize_pending:
            await inner.finalize()
            self._arm_stall(inner)

    async def _failover(self, failed: SttStream, exc: ProviderUnavailable, *, reconnect: bool = True) -> None:
        """The lock is held. Reconnect to the same tier once per utterance, else move down the chain."""
        if failed is not self._inner or self._closed:
            return  # already replaced
        self.switches += 1
        again = reconnect and self.tier_index not in self._failed_tiers
        self._failed_tiers.add(self.tier_index)
        log.warning(
            "speech recogniser failed, switching",
            extra={"data": {"tier": self.tier_name, "reason": exc.reason, "kept_s": len(self._kept) / 32000}},
        )
        await self._drop(failed)
        await self.connect(self.tier_index if again else self.tier_index + 1)

    async def _drop(self, inner: SttStream) -> None:
        if self._inner is inner:
            self._inner = None
        self._cancel_stall()
        pump, self._pump = self._pump, None
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        # Closed in the background: a graceful close (Deepgram drains its last results for up to 2 s)
        # must not delay the switch; aclose() waits for these.
        self._retiring.add(asyncio.create_task(self._retire(inner), name="stt-retire"))

    async def _retire(self, inner: SttStream) -> None:
        with contextlib.suppress(Exception):
            await inner.aclose()

    async def _pump_results(self, inner: SttStream) -> None:
        try:
            async for result in inner.results():
                if result.is_final:
                    self._failed_tiers.clear()
                    self._kept.clear()
                    self._finalize_pending = False
                    self._cancel_stall()
                self._out.put_nowait(result)
        except ProviderUnavailable as exc:
            async with self.lock:
                await self._failover(inner, exc)

    def _arm_stall(self, inner: SttStream) -> None:
        self._cancel_stall()
        self._stall = asyncio.create_task(self._watch_final(inner), name="stt-final-stall")

    def _cancel_stall(self) -> None:
        stall, self._stall = self._stall, None
        if stall is not None and stall is not asyncio.current_task():
            stall.cancel()

    async def _watch_final(self, inner: SttStream) -> None:
        await asyncio.sleep(self._chain.final_stall_s)
        async with self.lock:
            if self._finalize_pending and self._inner is inner:
                self._chain.telemetry.error(self.tier_name, "stall", "no final transcript after Finalize")
                # A stuck recogniser is likely stuck again after a reconnect: go down the chain.
                await self._failover(
                    inner,
                    ProviderUnavailable(self.tier_name, "no final transcript after Finalize"),
                    reconnect=False,
                )
