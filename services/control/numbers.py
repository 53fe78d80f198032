"""NumberService: a tenant's phone numbers and the agent answering each (E.164, one tenant per number)."""

from __future__ import annotations

import uuid

import asyncpg

from services.control.auth import Permission
from services.control.common import (
    Conn,
    apply_mask,
    check_e164,
    check_strings,
    check_text,
    next_token,
    page,
    parse_id,
    parse_ref,
    timestamp,
)
from services.control.errors import invalid, not_found
from services.control.state import ControlState
from services.shared.grpc_server import Context
from voice.v1 import numbers_pb2, numbers_pb2_grpc

OUTPUT_ONLY = frozenset({"id", "tenant_id", "create_time"})
UNAVAILABLE = "is not available: numbers are added from the platform's provisioned inventory"
PROVIDERS = ("gotoconnect", "sip")


def to_proto(row: asyncpg.Record) -> numbers_pb2.PhoneNumber:
    return numbers_pb2.PhoneNumber(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        e164=row["e164"],
        agent_id=str(row["agent_id"]) if row["agent_id"] else "",
        provider=row["provider"],
        label=row["label"],
        create_time=timestamp(row["created_at"]),
    )


async def _agent_ref(conn: Conn, tenant_id: uuid.UUID, agent_id: str) -> uuid.UUID | None:
    """The agent a number routes to: empty for none; otherwise one of this tenant's live agents. Another
    tenant's agent gets the same answer as a missing one."""
    if not agent_id:
        return None
    ref = parse_ref(agent_id, "number.agent_id")
    found = await conn.fetchval(
        "SELECT 1 FROM agents WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL", ref, tenant_id
    )
    if found is None:
        raise invalid("number.agent_id", "no such agent")
    return ref


def _validate(n: numbers_pb2.PhoneNumber) -> None:
    check_strings(n, "number.")
    check_e164(n.e164, "number.e164")
    if n.provider and n.provider not in PROVIDERS:
        raise invalid("number.provider", f"must be one of {', '.join(PROVIDERS)}")
    check_text(n.label, "number.label", max_len=255)


class NumberServicer(numbers_pb2_grpc.NumberServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state

    async def ListNumbers(
        self, request: numbers_pb2.ListNumbersRequest, context: Context
    ) -> numbers_pb2.ListNumbersResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        agent_filter = None
        if request.agent_id:
            try:
                agent_filter = uuid.UUID(request.agent_id)
            except ValueError:
                raise invalid("agent_id", "must be an id returned by the API") from None
        rows = await self._s.pool.fetch(
            """SELECT * FROM phone_numbers
               WHERE tenant_id = $1 AND ($2::uuid IS NULL OR agent_id = $2)
                 AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $5""",
            uuid.UUID(p.tenant_id),
            agent_filter,
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return numbers_pb2.ListNumbersResponse(
            numbers=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def CreateNumber(
        self, request: numbers_pb2.CreateNumberRequest, context: Context
    ) -> numbers_pb2.CreateNumberResponse:
        p = self._s.principal(context, Permission.WRITE)
        n = request.number
        _validate(n)
        tenant_id = uuid.UUID(p.tenant_id)
        async with self._s.pool.acquire() as conn:
            agent_id = await _agent_ref(conn, tenant_id, n.agent_id)
            # Only from the platform's inventory, and only while unassigned. A number held by another
            # tenant, by this one, or never provisioned all get the same answer: no existence oracle.
            try:
                row = await conn.fetchrow(
                    """INSERT INTO phone_numbers (tenant_id, agent_id, e164, provider, label)
                       SELECT $1, $2, i.e164, i.provider, $4 FROM number_inventory i
                       WHERE i.e164 = $3 AND NOT EXISTS (SELECT 1 FROM phone_numbers p WHERE p.e164 = $3)
                       RETURNING *""",
                    tenant_id,
                    agent_id,
                    n.e164,
                    n.label,
                )
            except asyncpg.UniqueViolationError:  # a concurrent add of the same number won
                row = None
            if row is None:
                raise invalid("number.e164", UNAVAILABLE)
        assert row is not None
        return numbers_pb2.CreateNumberResponse(number=to_proto(row))

    async def GetNumber(
        self, request: numbers_pb2.GetNumberRequest, context: Context
    ) -> numbers_pb2.GetNumberResponse:
        p = self._s.principal(context, Permission.READ)
        row = await self._s.pool.fetchrow(
            "SELECT * FROM phone_numbers WHERE id = $1 AND tenant_id = $2",
            parse_id(request.id, "number"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("number")
        return numbers_pb2.GetNumberResponse(number=to_proto(row))

    async def UpdateNumber(
        self, request: numbers_pb2.UpdateNumberRequest, context: Context
    ) -> numbers_pb2.UpdateNumberResponse:
        p = self._s.principal(context, Permission.WRITE)
        number_id = parse_id(request.number.id, "number")
        tenant_id = uuid.UUID(p.tenant_id)
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM phone_numbers WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                number_id,
                tenant_id,
            )
            if row is None:
                raise not_found("number")
            merged = apply_mask(to_proto(row), request.number, request.update_mask, OUTPUT_ONLY)
            _validate(merged)
            if merged.e164 != row["e164"]:
                raise invalid("number.e164", "cannot change; delete the number and add the new one")
            agent_id = await _agent_ref(conn, tenant_id, merged.agent_id)
            row = await conn.fetchrow(
                """UPDATE phone_numbers SET agent_id = $3, provider = $4, label = $5, updated_at = NOW()
                   WHERE id = $1 AND tenant_id = $2 RETURNING *""",
                number_id,
                tenant_id,
                agent_id,
                merged.provider or "gotoconnect",
                merged.label,
            )
        assert row is not None
        return numbers_pb2.UpdateNumberResponse(number=to_proto(row))

    async def DeleteNumber(
        self, request: numbers_pb2.DeleteNumberRequest, context: Context
    ) -> numbers_pb2.DeleteNumberResponse:
        p = self._s.principal(context, Permission.WRITE)
        deleted = await self._s.pool.fetchval(
            "DELETE FROM phone_numbers WHERE id = $1 AND tenant_id = $2 RETURNING id",
            parse_id(request.id, "number"),
            uuid.UUID(p.tenant_id),
        )
        if deleted is None:
            raise not_found("number")
        return numbers_pb2.DeleteNumberResponse()
