"""What a process that carries call audio uses to record calls.

    writer = RecordingWriter(settings)            # once per process (reads the master key: fails early)
    recorder = writer.start(tenant_id, call_id, agent_rate=24000)  # per call whose agent records
    recorder.caller(pcm16, rate)                  # each caller frame as received (mono PCM16 LE)
    recorder.agent(pcm16)                         # each agent frame as sent (rate: agent_rate unless given)
    writer.finish_later(recorder)                 # at the call's end: WAV built, encrypted, stored
                                                  # (or `await recorder.finish()` to wait for it)
    await writer.close()                          # at shutdown

`call_id` is the id the call has on the event bus; the recording is stored under the call record's id
(the one `GET /v1/calls/{id}` uses). `finish` never raises: a recording that cannot be stored is logged
and counted as lost, it never fails the call.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg

from services.shared.recordings.archive import RecordingArchive
from services.shared.recordings.stereo import StereoRecorder
from services.shared.settings import Settings

log = logging.getLogger(__name__)

# Must equal the worker's call-record namespace (services/worker/records.py call_record_id).
_RECORD_NAMESPACE = uuid.UUID("0c6c1f9e-5d55-4b8e-a0f1-3f0b7a4d2c11")


def call_record_id(tenant_id: str, call_id: str) -> uuid.UUID:
    try:
        parsed = uuid.UUID(call_id)
    except ValueError:
        parsed = None
    if parsed is not None and str(parsed) == call_id.lower():
        return parsed
    return uuid.uuid5(_RECORD_NAMESPACE, f"{tenant_id}/{call_id}")


class RecordingWriter:
    def __init__(self, settings: Settings, archive: RecordingArchive | None = None) -> None:
        self._settings = settings
        self.archive = archive if archive is not None else RecordingArchive(settings)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._saving: set[asyncio.Task[None]] = set()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._settings.database_url, min_size=0, max_size=2, command_timeout=30
                )
            assert self._pool is not None
            return self._pool

    def start(self, tenant_id: str, call_id: str, *, agent_rate: int = 16000) -> CallRecorder | None:
        try:
            tenant = uuid.UUID(tenant_id)
        except ValueError:
            log.warning(
                "call not recorded: tenant id is not a UUID", extra={"data": {"tenant_id": tenant_id}}
            )
            return None
        rate = self._settings.recordings.sample_rate
        return CallRecorder(self, tenant, call_record_id(tenant_id, call_id), rate, agent_rate)

    def finish_later(self, recorder: CallRecorder) -> None:
        """Stores the recording in the background (the call's RPC need not wait); close() waits for it."""
        task = asyncio.get_running_loop().create_task(recorder.finish())
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def close(self) -> None:
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)
        await self.archive.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class CallRecorder:
    def __init__(
        self, writer: RecordingWriter, tenant_id: uuid.UUID, record_id: uuid.UUID, rate: int, agent_rate: int
    ) -> None:
        self.agent_rate = agent_rate
        self._writer = writer
        self.tenant_id = tenant_id
        self.record_id = record_id
        self._stereo = StereoRecorder(rate)
        self._done = False

    def caller(self, pcm: bytes, rate: int = 16000) -> None:
        if not self._done:
            self._stereo.caller(pcm, rate)

    def agent(self, pcm: bytes, rate: int | None = None) -> None:
        if not self._done:
            self._stereo.agent(pcm, rate or self.agent_rate)

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            wav = await self._stereo.finish()
            pool = await self._writer.pool()
            await self._writer.archive.save(
                pool,
                self.tenant_id,
                self.record_id,
                wav,
                duration_s=self._stereo.duration_s,
                sample_rate=self._stereo.rate,
            )
            log.info(
                "recording stored",
                extra={
                    "data": {
                        "call_record_id": str(self.record_id),
                        "seconds": round(self._stereo.duration_s, 1),
                    }
                },
            )
        except Exception:  # a lost recording is logged, it never fails the call
            self._stereo.discard()
            log.exception("recording lost", extra={"data": {"call_record_id": str(self.record_id)}})
