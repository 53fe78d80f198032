"""Voice registry on disk (`storage_path`) with built-in voices, WAV validation, and an LRU cache of
prepared voice conditionals.

Layout: `<storage_path>/<voice_id>/voice.json` + `reference.wav`. A voice is written to a temporary
directory and renamed into place, so a reader (the Triton model, in another process) never sees half of
one. All methods block on file I/O: async callers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import struct
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

MIN_REFERENCE_SECONDS = 5.0  # Chatterbox-Turbo needs more than 5 s of reference audio.
MAX_REFERENCE_SECONDS = 60.0
MIN_REFERENCE_RATE = 16000
MAX_REFERENCE_RATE = 48000
MAX_REFERENCE_BYTES = 16 * 1024 * 1024
EXAGGERATION_RANGE = (0.25, 2.0)
CFG_WEIGHT_RANGE = (0.0, 1.0)
_VOICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

ErrorKind = Literal["invalid_argument", "not_found", "already_exists"]


class VoiceError(ValueError):
    """A request about voices the caller must fix; `kind` maps to gRPC / HTTP status codes."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True)
class VoiceRecord:
    id: str
    name: str
    tenant_id: str = ""
    description: str = ""
    built_in: bool = False
    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    language: str = "en-US"
    reference_duration_seconds: float = 0.0
    created_at: float = 0.0
    # Absolute path of the cloning reference (None for built-in voices).
    reference_path: str | None = None
    # What espeak-ng speaks this voice with (it cannot clone).
    espeak_voice: str = "en-us"
    # Changes whenever the voice's files change; part of the conditionals cache key.
    version: str = field(default="builtin", compare=False)

    def public(self) -> dict[str, object]:
        """The fields a client may see (no file system paths)."""
        data = asdict(self)
        for private in ("reference_path", "espeak_voice", "version"):
            data.pop(private)
        return data


BUILT_IN_VOICES: tuple[VoiceRecord, ...] = (
    VoiceRecord("default_female_1", "Default female", description="Built-in female voice",
                built_in=True, espeak_voice="en-us+f3"),
    VoiceRecord("default_male_1", "Default male", description="Built-in male voice",
                built_in=True, espeak_voice="en-us+m3"),
    VoiceRecord("voice_female_01", "Female 01", description="Built-in female voice (spec 5.4.3)",
                built_in=True, espeak_voice="en-gb+f4"),
    VoiceRecord("voice_male_01", "Male 01", description="Built-in male voice",
                built_in=True, espeak_voice="en-gb+m4"),
)  # fmt: skip


@dataclass(frozen=True)
class ReferenceInfo:
    sample_rate: int
    channels: int
    duration_seconds: float


def validate_reference_wav(data: bytes, *, min_seconds: float = MIN_REFERENCE_SECONDS) -> ReferenceInfo:
    """Checks a cloning reference: a PCM16 WAV, mono or stereo, 16..48 kHz, min_seconds..60 s."""
    if not data:
        raise VoiceError("invalid_argument", "reference_audio is empty")
    if len(data) > MAX_REFERENCE_BYTES:
        raise VoiceError("invalid_argument", f"reference_audio is larger than {MAX_REFERENCE_BYTES} bytes")
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, channels, width, frames = (
                wav.getframerate(),
                wav.getnchannels(),
                wav.getsampwidth(),
                wav.getnframes(),
            )
            payload = wav.readframes(frames)
    except (wave.Error, EOFError, RuntimeError, ValueError, struct.error) as exc:
        # The wave module reports some malformed chunk tables with a bare RuntimeError.
        raise VoiceError(
            "invalid_argument", f"reference_audio is not a readable PCM WAV file: {exc or 'malformed chunks'}"
        ) from None
    if width != 2:
        raise VoiceError("invalid_argument", f"reference_audio must be 16-bit PCM, got {8 * width}-bit")
    if channels not in (1, 2):
        raise VoiceError(
            "invalid_argument", f"reference_audio must be mono or stereo, got {channels} channels"
        )
    if not MIN_REFERENCE_RATE <= rate <= MAX_REFERENCE_RATE:
        raise VoiceError(
            "invalid_argument",
            f"reference_audio sample rate {rate} Hz is outside {MIN_REFERENCE_RATE}..{MAX_REFERENCE_RATE} Hz",
        )
    # A truncated file declares more frames than it holds; trust only what is there.
    actual_frames = len(payload) // (width * channels)
    duration = actual_frames / rate
    if duration <= min_seconds:
        raise VoiceError(
            "invalid_argument",
            f"reference_audio is {duration:.2f} s long; cloning needs more than {min_seconds:g} s",
        )
    if duration > MAX_REFERENCE_SECONDS:
        raise VoiceError(
            "invalid_argument",
            f"reference_audio is {duration:.2f} s long; the limit is {MAX_REFERENCE_SECONDS:g} s",
        )
    return ReferenceInfo(rate, channels, duration)


def check_expressiveness(exaggeration: float, cfg_weight: float) -> None:
    """Raises VoiceError when exaggeration / cfg_weight are outside the ranges Chatterbox accepts."""
    lo, hi = EXAGGERATION_RANGE
    if not (math.isfinite(exaggeration) and lo <= exaggeration <= hi):
        raise VoiceError("invalid_argument", f"exaggeration {exaggeration} is outside {lo}..{hi}")
    lo, hi = CFG_WEIGHT_RANGE
    if not (math.isfinite(cfg_weight) and lo <= cfg_weight <= hi):
        raise VoiceError("invalid_argument", f"cfg_weight {cfg_weight} is outside {lo}..{hi}")


class VoiceRegistry:
    """Built-in voices plus the cloned voices stored under `storage_path`."""

    def __init__(
        self,
        storage_path: str | os.PathLike[str],
        *,
        default_exaggeration: float = 0.5,
        default_cfg_weight: float = 0.5,
    ) -> None:
        self.root = Path(storage_path).resolve()
        self._built_in = {
            v.id: replace(v, exaggeration=default_exaggeration, cfg_weight=default_cfg_weight)
            for v in BUILT_IN_VOICES
        }

    def get(self, voice_id: str, tenant_id: str = "") -> VoiceRecord:
        """The voice, if it is built in or belongs to `tenant_id`. An empty tenant sees the built-in voices
        only: a cloned voice is never spoken or shown without its tenant."""
        if voice_id in self._built_in:
            return self._built_in[voice_id]
        record = self._load(voice_id) if _VOICE_ID_RE.match(voice_id) else None
        # Another tenant's voice is reported exactly like a missing one, so ids do not leak across tenants.
        if record is None or (record.tenant_id and record.tenant_id != tenant_id):
            raise VoiceError("not_found", f"unknown voice_id {voice_id!r}")
        return record

    def list(self, tenant_id: str = "") -> list[VoiceRecord]:
        voices = list(self._built_in.values())
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                record = self._load(entry.name)
                if record is not None and record.tenant_id in ("", tenant_id):
                    voices.append(record)
        return voices

    def register(
        self,
        *,
        name: str,
        reference_audio: bytes,
        tenant_id: str = "",
        voice_id: str = "",
        description: str = "",
        language: str = "en-US",
        exaggeration: float | None = None,
        cfg_weight: float | None = None,
    ) -> VoiceRecord:
        """Validates and stores a cloned voice; returns it."""
        if not name.strip():
            raise VoiceError("invalid_argument", "name is required")
        voice_id = voice_id or f"voice_{secrets.token_hex(6)}"
        if not _VOICE_ID_RE.match(voice_id):
            raise VoiceError("invalid_argument", "voice_id must be 1-64 characters of a-z, 0-9, '_' or '-'")
        exaggeration = 0.5 if exaggeration is None else exaggeration
        cfg_weight = 0.5 if cfg_weight is None else cfg_weight
        check_expressiveness(exaggeration, cfg_weight)
        info = validate_reference_wav(reference_audio)
        if voice_id in self._built_in or (self.root / voice_id).exists():
            raise VoiceError("already_exists", f"voice_id {voice_id!r} already exists")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{voice_id}.{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            (staging / "reference.wav").write_bytes(reference_audio)
            meta = {
                "id": voice_id,
                "name": name.strip(),
                "tenant_id": tenant_id,
                "description": description,
                "language": language or "en-US",
                "exaggeration": exaggeration,
                "cfg_weight": cfg_weight,
                "reference_duration_seconds": round(info.duration_seconds, 3),
                "reference_sample_rate": info.sample_rate,
                "reference_channels": info.channels,
                "created_at": time.time(),
            }
            (staging / "voice.json").write_text(json.dumps(meta, indent=2))
            try:
                staging.rename(self.root / voice_id)
            except OSError:
                raise VoiceError("already_exists", f"voice_id {voice_id!r} already exists") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        record = self._load(voice_id)
        assert record is not None
        return record

    def delete(self, voice_id: str, tenant_id: str) -> None:
        """Removes a cloned voice of `tenant_id` (built-in and other tenants' voices: not_found)."""
        record = self.get(voice_id, tenant_id)
        if record.built_in or not record.tenant_id:
            raise VoiceError("not_found", f"unknown voice_id {voice_id!r}")
        # Renamed away first, so readers see the voice whole or not at all.
        trash = self.root / f".deleted.{voice_id}.{secrets.token_hex(4)}"
        try:
            (self.root / voice_id).rename(trash)
        except FileNotFoundError:
            raise VoiceError("not_found", f"unknown voice_id {voice_id!r}") from None
        shutil.rmtree(trash, ignore_errors=True)

    def _load(self, voice_id: str) -> VoiceRecord | None:
        folder = self.root / voice_id
        meta_path = folder / "voice.json"
        try:
            meta = json.loads(meta_path.read_text())
            mtime = meta_path.stat().st_mtime_ns
        except (OSError, ValueError):
            return None
        return VoiceRecord(
            id=voice_id,
            name=str(meta.get("name", voice_id)),
            tenant_id=str(meta.get("tenant_id", "")),
            description=str(meta.get("description", "")),
            built_in=False,
            exaggeration=float(meta.get("exaggeration", 0.5)),
            cfg_weight=float(meta.get("cfg_weight", 0.5)),
            language=str(meta.get("language", "en-US")),
            reference_duration_seconds=float(meta.get("reference_duration_seconds", 0.0)),
            created_at=float(meta.get("created_at", 0.0)),
            reference_path=str(folder / "reference.wav"),
            espeak_voice="en-us",
            version=str(mtime),
        )


class PreparedVoiceCache:
    """LRU of engine-prepared voice state (`cache_size` voices in memory, spec 3.5.5).

    Keyed by engine, voice and the voice's version, so re-registering a voice is never served stale.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, str, str], object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, engine: str, voice: VoiceRecord, prepare: Callable[[VoiceRecord], object]) -> object:
        key = (engine, voice.id, voice.version)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        # Prepared outside the lock: preparing a voice on the GPU takes a while.
        value = prepare(voice)
        with self._lock:
            self.misses += 1
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
