"""A publisher's durable on-disk spool: events kept while NATS is unreachable, in publish order.

One append-only file per publisher (`<dir>/<name>.spool`), records framed as a 4-byte big-endian length
and the serialized event. The owning process holds an exclusive `flock` on its file; a file whose lock
can be taken belongs to a process that is gone (crashed or stopped with events left), so the next
publisher sharing the directory adopts it and replays its events first. Bounded by `max_bytes`: an
append that does not fit is refused (the caller counts and reports it).

Dead letters (events the bus refused: too large, invalid) go to `<dir>/<name>.dead` in the same framing;
they are kept for inspection and never retried.

The methods do blocking file I/O; async callers run them with `asyncio.to_thread`. A lock serialises
them, since a cancelled caller's thread may still be writing when the next call starts.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Concatenate, ParamSpec, TypeVar

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


def encode(records: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(r)) + r for r in records)


def decode(data: bytes, origin: str) -> list[bytes]:
    """Framed records; a torn last record (a crash mid-write) is dropped with a warning."""
    out, pos = [], 0
    while pos + _LEN.size <= len(data):
        (size,) = _LEN.unpack_from(data, pos)
        end = pos + _LEN.size + size
        if end > len(data):
            break
        out.append(data[pos + _LEN.size : end])
        pos = end
    if pos != len(data):
        log.warning("spool %s ends with a torn record (%d bytes ignored)", origin, len(data) - pos)
    return out


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Spool, _P], _R]) -> Callable[Concatenate[Spool, _P], _R]:
    @functools.wraps(method)
    def wrapper(self: Spool, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Spool:
    """Owns `<directory>/<name>.spool` while open. Not thread-safe: one caller at a time."""

    def __init__(self, directory: Path, name: str, max_bytes: int) -> None:
        self.directory = directory
        self.path = directory / f"{name}.spool"
        self.dead_path = directory / f"{name}.dead"
        self.max_bytes = max_bytes
        self._file: BinaryIO | None = None
        self._lock = threading.RLock()
        self.size = 0
        self.count = 0

    @_locked
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+b")  # noqa: SIM115 - kept open for the life of the publisher
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file = file
        file.seek(0)
        records = decode(file.read(), str(self.path))
        self.size, self.count = len(encode(records)), len(records)

    @_locked
    def adopt_orphans(self) -> int:
        """Moves the records of spools left by gone processes to the end of ours; returns how many."""
        adopted = 0
        for path in sorted(self.directory.glob("*.spool")):
            if path == self.path:
                continue
            try:
                with open(path, "r+b") as orphan:
                    try:
                        fcntl.flock(orphan.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its publisher is alive
                    records = decode(orphan.read(), str(path))
                    accepted = self.append(records, force=True)
                    adopted += accepted
                    path.unlink()
            except FileNotFoundError:
                continue  # adopted by another process meanwhile
        return adopted

    @_locked
    def append(self, records: list[bytes], *, force: bool = False) -> int:
        """Appends as many records as fit (all of them with `force`); returns how many were written."""
        assert self._file is not None, "Spool.open() first"
        fit = records
        if not force:
            room, fit = self.max_bytes - self.size, []
            for record in records:
                room -= _LEN.size + len(record)
                if room < 0:
                    break
                fit.append(record)
        if fit:
            data = encode(fit)
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.size += len(data)
            self.count += len(fit)
        return len(fit)

    @_locked
    def read(self) -> list[bytes]:
        assert self._file is not None
        self._file.seek(0)
        return decode(self._file.read(), str(self.path))

    @_locked
    def replace(self, records: list[bytes]) -> None:
        """Keeps only `records` (what a partial replay did not get acked), in their order."""
        assert self._file is not None
        data = encode(records)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.size, self.count = len(data), len(records)

    @_locked
    def dead_letter(self, record: bytes) -> bool:
        """Keeps a refused event for inspection; False (not kept) once the file reached max_bytes."""
        if self.dead_path.exists() and self.dead_path.stat().st_size >= self.max_bytes:
            return False
        with open(self.dead_path, "ab") as dead:
            dead.write(encode([record]))
        return True

    @_locked
    def close(self) -> None:
        """Releases the lock; an empty spool file is removed, a non-empty one waits to be adopted."""
        if self._file is None:
            return
        if self.count == 0:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None
