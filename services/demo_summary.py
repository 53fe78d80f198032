"""After the demo call: what a tenant sees through the REST API once the worker has projected the call's
events — the call listed with its status, transcript and tool calls, the minutes used and the prepaid
credit that went down. Everything is read through the gateway with the demo tenant's API key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from services.demo_seed import demo_api_key
from services.shared.settings import Settings

TERMINAL = {"CALL_STATUS_COMPLETED", "CALL_STATUS_TRANSFERRED", "CALL_STATUS_FAILED", "CALL_STATUS_NO_ANSWER"}
WAIT_S = 30.0


@dataclass
class CallSummary:
    gateway: str
    api_key: str
    known_calls: set[str]
    credit_before: float

    @classmethod
    async def begin(cls, settings: Settings, gateway: str) -> CallSummary:
        """Notes the calls and the credit before the demo call."""
        _, key = await demo_api_key(settings)
        async with _client(gateway, key) as http:
            calls = await _get(http, "/v1/calls", pageSize=100)
            usage = await _get(http, "/v1/usage")
        return cls(gateway, key, {c["id"] for c in calls.get("calls", [])}, _credit(usage))

    async def show(self) -> bool:
        """Prints the new call as the API lists it; True when it has a transcript, usage and a debit."""
        print("\nAfter the call, through the REST API (the worker projects the call's events):")
        async with _client(self.gateway, self.api_key) as http:
            call, detail, usage = await self._wait_for_call(http)
        if call is None:
            print(f"  [FAIL] the call was not listed in GET /v1/calls within {WAIT_S:.0f} s")
            return False
        duration = call.get("duration", "0s")
        print(
            f"  GET /v1/calls: {call['id']}  {call['status'].removeprefix('CALL_STATUS_').lower()}, "
            f"{duration}, ended: {call.get('endReason', '?')}"
        )
        transcript = detail.get("transcript", [])
        print(f"  GET /v1/calls/{call['id']}: {len(transcript)} transcript turns")
        for turn in transcript:
            who = "caller" if turn.get("speaker") == "SPEAKER_CALLER" else "agent "
            cut = " (interrupted)" if turn.get("interrupted") else ""
            print(f"    {turn.get('turnIndex', 0):>2} {who}  {turn.get('text', '')}{cut}")
        for tool in detail.get("toolCalls", []):
            print(f"    tool {tool['toolName']}: {tool.get('status', '')}")
        minutes = float(usage.get("totalMinutes", 0))
        after = _credit(usage)
        print(f"  GET /v1/usage: {minutes:g} minutes this month over {usage.get('calls', '0')} calls")
        print(f"  credit: {self.credit_before:g} -> {after:g} prepaid minutes")
        ok = bool(transcript) and minutes > 0 and after < self.credit_before
        if not ok:
            print("  [FAIL] expected a transcript, non-zero usage and credit that went down")
        return ok

    async def _wait_for_call(
        self, http: httpx.AsyncClient
    ) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        call: dict[str, Any] | None = None
        detail: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        while time.monotonic() < deadline:
            listed = await _get(http, "/v1/calls", pageSize=20)
            new = [c for c in listed.get("calls", []) if c["id"] not in self.known_calls]
            if new:
                call = new[0]
                detail = await _get(http, f"/v1/calls/{call['id']}")
                call = detail.get("call", call)
                usage = await _get(http, "/v1/usage")
                if call.get("status") in TERMINAL and _credit(usage) < self.credit_before:
                    break
            await asyncio.sleep(0.5)
        return call, detail, usage


def _client(gateway: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway, headers={"X-API-Key": key}, timeout=10)


async def _get(http: httpx.AsyncClient, path: str, **params: str | int) -> dict[str, Any]:
    reply = await http.get(path, params=params)
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    return body


def _credit(usage: dict[str, Any]) -> float:
    return float(usage.get("creditMinutesRemaining", 0.0))
