"""The control plane's gRPC server: system of record for tenants, agents, numbers, voices, webhooks,
calls, usage and API keys. SystemService is implemented; the resource services are served from their
final contracts and answer UNIMPLEMENTED until the control-plane issue implements them."""

from __future__ import annotations

from services.control.system import SystemServicer
from services.shared.grpc_server import GrpcServer, bind
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


def build_server(settings: Settings) -> GrpcServer:
    bindings = [
        bind(system_pb2, system_pb2_grpc, "SystemService", SystemServicer(settings)),
        bind(tenants_pb2, tenants_pb2_grpc, "TenantService"),
        bind(agents_pb2, agents_pb2_grpc, "AgentService"),
        bind(calls_pb2, calls_pb2_grpc, "CallService"),
        bind(numbers_pb2, numbers_pb2_grpc, "NumberService"),
        bind(voices_pb2, voices_pb2_grpc, "VoiceService"),
        bind(webhooks_pb2, webhooks_pb2_grpc, "WebhookService"),
        bind(usage_pb2, usage_pb2_grpc, "UsageService"),
        bind(api_keys_pb2, api_keys_pb2_grpc, "ApiKeyService"),
    ]
    return GrpcServer("control", settings.control, bindings)
