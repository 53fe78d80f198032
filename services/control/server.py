"""The control plane's gRPC server: the system of record for tenants, agents, numbers, voices, webhooks,
calls, usage and API keys, on PostgreSQL. Every resource RPC is tenant-scoped by the caller's signed
context (services/control/auth.py), never by a request field."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.control.agents import AgentServicer
from services.control.api_keys import ApiKeyServicer
from services.control.auth import internal_auth
from services.control.calls import CallServicer
from services.control.errors import ApiError, database_error
from services.control.numbers import NumberServicer
from services.control.state import CALLER, ControlState
from services.control.system import SystemServicer
from services.control.tenants import TenantServicer
from services.control.usage import UsageServicer
from services.control.voices import VoiceServicer
from services.control.webhooks import WebhookServicer
from services.shared.grpc_server import Context, GrpcServer, bind
from services.shared.settings import Settings
from voice.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    api_keys_pb2,
    api_keys_pb2_grpc,
    calls_pb2,
    calls_pb2_grpc,
    numbers_pb2,
    numbers_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    tenants_pb2,
    tenants_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
    voices_pb2,
    voices_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

S = TypeVar("S")
Method = Callable[[Any, Context], Awaitable[Any]]


def _guard(method: Method, state: ControlState) -> Method:
    @functools.wraps(method)
    async def guarded(request: Any, context: Context) -> Any:
        try:
            await state.ensure()
            CALLER.set(await state.authenticate(context))
            return await method(request, context)
        except ApiError as exc:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
        except Exception as exc:
            mapped = database_error(exc)
            if mapped is None:
                raise
            await context.abort(mapped.code, mapped.message, trailing_metadata=mapped.trailing_metadata())

    return guarded


def guarded(servicer: S, pb2: Any, service: str, state: ControlState) -> S:
    """`servicer` with each RPC of `service` answering ApiError (and client-caused database errors) as
    rich statuses, and opening the connections on first use. The generated registration reads the
    methods as attributes, so instance attributes take precedence over the class's."""
    for method in pb2.DESCRIPTOR.services_by_name[service].methods:
        setattr(servicer, method.name, _guard(getattr(servicer, method.name), state))
    return servicer


def build_state(settings: Settings) -> ControlState:
    state = ControlState(settings=settings, auth=internal_auth(settings))
    state.recordings()  # refuses to start without RECORDING_MASTER_KEY outside development/test
    return state


def build_server(settings: Settings, state: ControlState | None = None) -> GrpcServer:
    s = state or build_state(settings)
    bindings = [
        bind(system_pb2, system_pb2_grpc, "SystemService", SystemServicer(settings)),
        bind(
            tenants_pb2,
            tenants_pb2_grpc,
            "TenantService",
            guarded(TenantServicer(s), tenants_pb2, "TenantService", s),
        ),
        bind(
            agents_pb2,
            agents_pb2_grpc,
            "AgentService",
            guarded(AgentServicer(s), agents_pb2, "AgentService", s),
        ),
        bind(calls_pb2, calls_pb2_grpc, "CallService", guarded(CallServicer(s), calls_pb2, "CallService", s)),
        bind(
            numbers_pb2,
            numbers_pb2_grpc,
            "NumberService",
            guarded(NumberServicer(s), numbers_pb2, "NumberService", s),
        ),
        bind(
            voices_pb2,
            voices_pb2_grpc,
            "VoiceService",
            guarded(VoiceServicer(s), voices_pb2, "VoiceService", s),
        ),
        bind(
            webhooks_pb2,
            webhooks_pb2_grpc,
            "WebhookService",
            guarded(WebhookServicer(s), webhooks_pb2, "WebhookService", s),
        ),
        bind(
            usage_pb2, usage_pb2_grpc, "UsageService", guarded(UsageServicer(s), usage_pb2, "UsageService", s)
        ),
        bind(
            api_keys_pb2,
            api_keys_pb2_grpc,
            "ApiKeyService",
            guarded(ApiKeyServicer(s), api_keys_pb2, "ApiKeyService", s),
        ),
    ]
    return GrpcServer("control", settings.control, bindings)
