"""VoiceService: built-in voices (shared by all tenants, read-only) and a tenant's cloned voices.

One store: a cloned voice exists for the platform only when both this record and the TTS node's copy
exist. CreateVoice registers it with the TTS node (TtsService.RegisterTtsVoice, as the control plane's
service identity, for the caller's tenant) inside the database transaction, so a node that refuses or
is unreachable leaves no record; DeleteVoice removes the node's copy too."""

from __future__ import annotations

import io
import logging
import math
import uuid
import wave
from collections.abc import Awaitable
from typing import Any

import asyncpg
import grpc

from services.control.auth import Permission
from services.control.common import check_strings, check_text, next_token, page, parse_id, timestamp
from services.control.errors import ApiError, invalid, not_found
from services.control.state import ControlState
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import Context
from voice.v1 import tts_pb2, tts_pb2_grpc, voices_pb2, voices_pb2_grpc

log = logging.getLogger(__name__)

MIN_REFERENCE_SECONDS = 5.0
MAX_REFERENCE_SECONDS = 60.0


def to_proto(row: asyncpg.Record) -> voices_pb2.Voice:
    return voices_pb2.Voice(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]) if row["tenant_id"] else "",
        name=row["name"],
        description=row["description"],
        built_in=row["tenant_id"] is None,
        defaults=voices_pb2.VoiceDefaults(exaggeration=row["exaggeration"], cfg_weight=row["cfg_weight"]),
        reference_duration_seconds=row["reference_duration_seconds"],
        language=row["language"],
        create_time=timestamp(row["created_at"]),
    )


def reference_duration(audio: bytes) -> float:
    """Seconds of audio in a WAV file; INVALID_ARGUMENT unless it is PCM WAV at 16..48 kHz, 5..60 s."""
    try:
        with wave.open(io.BytesIO(audio)) as w:
            rate, frames, channels = int(w.getframerate()), int(w.getnframes()), int(w.getnchannels())
    except (wave.Error, EOFError, ValueError) as exc:
        raise invalid("reference_audio", f"must be a PCM WAV file ({exc})") from None
    if not 16_000 <= rate <= 48_000 or channels not in (1, 2):
        raise invalid("reference_audio", "must be mono or stereo at 16..48 kHz")
    seconds: float = frames / rate
    if not MIN_REFERENCE_SECONDS <= seconds <= MAX_REFERENCE_SECONDS:
        raise invalid(
            "reference_audio",
            f"must hold {MIN_REFERENCE_SECONDS:.0f} to {MAX_REFERENCE_SECONDS:.0f} s of audio",
        )
    return seconds


class VoiceServicer(voices_pb2_grpc.VoiceServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state
        self._tts: tts_pb2_grpc.TtsServiceAsyncStub | None = None

    def _node(self) -> tts_pb2_grpc.TtsServiceAsyncStub:
        """The TTS node's TtsService (channel opened on first use, inside the server's event loop)."""
        if self._tts is None:
            node = self._s.settings.chatterbox_service
            channel = open_channel(
                self._s.settings, f"{node.host}:{node.grpc_port}", identity="control", expect="tts"
            )
            self._tts = tts_pb2_grpc.TtsServiceStub(channel)
        return self._tts

    async def _on_node(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise invalid("reference_audio", exc.details() or "refused by the TTS node") from None
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE, f"the TTS node could not store the voice ({exc.code().name})"
            ) from None

    async def ListVoices(
        self, request: voices_pb2.ListVoicesRequest, context: Context
    ) -> voices_pb2.ListVoicesResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        rows = await self._s.pool.fetch(
            """SELECT * FROM voices
               WHERE (tenant_id IS NULL OR tenant_id = $1) AND deleted_at IS NULL
                 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $4""",
            uuid.UUID(p.tenant_id),
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return voices_pb2.ListVoicesResponse(
            voices=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def GetVoice(
        self, request: voices_pb2.GetVoiceRequest, context: Context
    ) -> voices_pb2.GetVoiceResponse:
        p = self._s.principal(context, Permission.READ)
        row = await self._s.pool.fetchrow(
            """SELECT * FROM voices WHERE id = $1 AND (tenant_id IS NULL OR tenant_id = $2)
                 AND deleted_at IS NULL""",
            parse_id(request.id, "voice"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("voice")
        return voices_pb2.GetVoiceResponse(voice=to_proto(row))

    async def CreateVoice(
        self, request: voices_pb2.CreateVoiceRequest, context: Context
    ) -> voices_pb2.CreateVoiceResponse:
        p = self._s.principal(context, Permission.WRITE)
        check_strings(request)
        check_text(request.name, "name", max_len=255, required=True)
        check_text(request.description, "description", max_len=2_000)
        check_text(request.language, "language", max_len=35)
        exaggeration = request.defaults.exaggeration if request.HasField("defaults") else 0.5
        cfg_weight = request.defaults.cfg_weight if request.HasField("defaults") else 0.5
        if math.isnan(exaggeration) or not 0.25 <= exaggeration <= 2.0:
            raise invalid("defaults.exaggeration", "must be between 0.25 and 2.0")
        if math.isnan(cfg_weight) or not 0.0 <= cfg_weight <= 1.0:
            raise invalid("defaults.cfg_weight", "must be between 0.0 and 1.0")
        seconds = reference_duration(request.reference_audio)
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO voices (tenant_id, name, description, language, exaggeration, cfg_weight,
                                       reference_audio, reference_duration_seconds)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
                uuid.UUID(p.tenant_id),
                request.name,
                request.description,
                request.language,
                exaggeration,
                cfg_weight,
                request.reference_audio,
                seconds,
            )
            assert row is not None
            # The node speaks it under the same id, for this tenant only.
            await self._on_node(
                self._node().RegisterTtsVoice(
                    tts_pb2.RegisterTtsVoiceRequest(
                        voice_id=str(row["id"]),
                        tenant_id=p.tenant_id,
                        name=request.name,
                        reference_audio=request.reference_audio,
                        defaults=voices_pb2.VoiceDefaults(exaggeration=exaggeration, cfg_weight=cfg_weight),
                    ),
                    timeout=30,
                )
            )
        return voices_pb2.CreateVoiceResponse(voice=to_proto(row))

    async def DeleteVoice(
        self, request: voices_pb2.DeleteVoiceRequest, context: Context
    ) -> voices_pb2.DeleteVoiceResponse:
        p = self._s.principal(context, Permission.WRITE)
        # Built-in voices (tenant_id NULL) never match: a tenant cannot delete them.
        deleted = await self._s.pool.fetchval(
            """UPDATE voices SET deleted_at = NOW()
               WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id""",
            parse_id(request.id, "voice"),
            uuid.UUID(p.tenant_id),
        )
        if deleted is None:
            raise not_found("voice")
        try:
            await self._node().DeleteTtsVoice(
                tts_pb2.DeleteTtsVoiceRequest(voice_id=str(deleted), tenant_id=p.tenant_id), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            # NOT_FOUND: the node never had it (or removed it already): the goal is reached either way.
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning(
                    "voice removal on the TTS node failed",
                    extra={"data": {"voice_id": str(deleted), "code": exc.code().name}},
                )
        return voices_pb2.DeleteVoiceResponse()
