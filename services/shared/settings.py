"""Typed settings for every service (spec 8.3 plus the per-service sections of spec 3.x).

Values come from the environment (and an optional `.env` file). Top-level names follow the spec
(`DATABASE_URL`, `DEEPGRAM_API_KEY`, ...); a section's fields use `__` as the separator, e.g.
`AGENT_SERVICE__LLM__TEMPERATURE=0.3` or `API_GATEWAY__RATE_LIMITING__DEFAULT_LIMIT=200`.
Secrets are only ever read from the environment and never have defaults. Defaults point at the local
services of `scripts/services.sh` on loopback, so a fresh checkout runs with no configuration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_NESTED_DELIMITER = "__"


class ServerSettings(BaseModel):
    """Where a service listens: its gRPC port and its Prometheus /metrics port."""

    host: str = "127.0.0.1"
    grpc_port: int = Field(ge=0, le=65535)
    metrics_port: int = Field(ge=0, le=65535)
    # Longest a unary RPC may run, whatever deadline (grpc-timeout) the caller sent: a client cannot
    # make the server hold a handler for hours. Streams (calls) are bounded by their own limits.
    max_unary_seconds: float = Field(300.0, gt=0)


class CorsSettings(BaseModel):
    allowed_origins: list[str] = ["https://app.aiconnected.io", "https://admin.aiconnected.io"]
    allowed_methods: list[str] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    allowed_headers: list[str] = ["Authorization", "Content-Type", "X-Request-ID", "X-API-Key"]


class RateLimitSettings(BaseModel):
    default_limit: int = Field(100, ge=1, description="requests per minute")
    burst_limit: int = Field(20, ge=1, description="concurrent requests")
    by_tenant: bool = True
    # Requests with missing or failed credentials allowed per client address per minute; past it the
    # address gets 429 before any credential lookup (a flood of random keys costs no database work).
    failed_auth_limit: int = Field(30, ge=1, description="failed authentications per address per minute")


class AuthSettings(BaseModel):
    api_key_header: str = "X-API-Key"
    jwt_algorithm: Literal["HS256"] = "HS256"
    jwt_expiry_minutes: int = Field(60, ge=1)


class ApiGatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(4, ge=1)
    cors: CorsSettings = CorsSettings()
    rate_limiting: RateLimitSettings = RateLimitSettings()
    authentication: AuthSettings = AuthSettings()
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Where the annotated services are served; empty = the control plane (control.host:grpc_port).
    control_target: str = ""
    # Annotated services the gateway does not route (the TTS facade serves its own HTTP).
    excluded_services: list[str] = ["voice.v1.TtsService"]
    # Deadline of an upstream call when the client sends no Grpc-Timeout header.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # The longest deadline a client may ask for with Grpc-Timeout (longer: 400).
    max_request_timeout_seconds: float = Field(300.0, gt=0)
    # How long a verified API key is reused without a database lookup; a revocation made through this
    # gateway process takes effect at once, one made elsewhere within this many seconds.
    auth_cache_seconds: float = Field(5.0, ge=0)
    database_pool_size: int = Field(4, ge=1)


class BridgeAudioSettings(BaseModel):
    input_sample_rate: Literal[8000, 16000, 24000, 48000] = 48000
    output_sample_rate: Literal[8000, 16000, 24000, 48000] = 48000
    channels: Literal[1, 2] = 1
    frame_duration_ms: Literal[10, 20, 40, 60] = 20
    codec: Literal["opus", "pcmu", "pcma"] = "opus"


class BridgeTimeoutSettings(BaseModel):
    call_setup_timeout_seconds: int = Field(30, ge=1)
    idle_timeout_seconds: int = Field(300, ge=1)
    max_call_duration_seconds: int = Field(3600, ge=1)


class SipSettings(BaseModel):
    """SIP trunks (docs/sip.md): where the bridge's user agent listens, where outbound calls and
    transfers go, and what it negotiates."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 = any free port (tests); 5060 is the SIP default.
    port: int = Field(5060, ge=0, le=65535)
    # Address written into Contact and SDP when peers must reach us elsewhere (NAT); empty = host.
    advertised_host: str = ""
    rtp_host: str = "127.0.0.1"
    # Outbound calls and transfers: sip:<number>@<trunk> (host:port).
    trunk: str = "127.0.0.1:5070"
    codecs: list[Literal["pcmu", "pcma", "opus"]] = ["pcmu", "pcma", "opus"]
    # Answer inbound calls at once; otherwise they ring until CallControlService.Answer.
    auto_answer: bool = True
    jitter_initial_delay_ms: float = Field(60.0, ge=20.0, le=400.0)
    # Concurrent-call slots of a crashed bridge expire after this (live calls refresh them).
    slot_ttl_seconds: float = Field(60.0, ge=3.0)
    # Digest credentials for the trunk (401/407 on outbound INVITE and REGISTER; MD5 or SHA-256).
    # The password comes from the environment only: WEBRTC_BRIDGE__SIP__AUTH_PASSWORD.
    auth_username: str = ""
    auth_password: SecretStr | None = None
    # REGISTER with the trunk (as sip:<auth_username>@<trunk>) every register_expires seconds.
    register_with_trunk: bool = False
    register_expires: int = Field(3600, ge=60, le=86400)


class BridgeSettings(ServerSettings):
    grpc_port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535)
    gotoconnect_api_base_url: str = "https://api.goto.com"
    gotoconnect_websocket_url: str = "wss://realtime.goto.com"
    # Separate connections to the agent: its processes share one port (SO_REUSEPORT), which spreads
    # connections, not calls; each call takes the next connection.
    agent_connections: int = Field(4, ge=1, le=64)
    # Tries per call when an agent process refuses it (RESOURCE_EXHAUSTED), each on the next connection
    # after the server's grpc-retry-pushback-ms hint, capped at agent_max_pushback_ms.
    agent_attempts: int = Field(3, ge=1, le=10)
    agent_max_pushback_ms: float = Field(2000.0, ge=0.0, le=30000.0)
    audio: BridgeAudioSettings = BridgeAudioSettings()
    timeouts: BridgeTimeoutSettings = BridgeTimeoutSettings()
    sip: SipSettings = SipSettings()


class SttSettings(BaseModel):
    provider: Literal["deepgram", "offline"] = "offline"
    model: str = "nova-2"
    fallback_model: str = "nova-1"
    language: str = "en-US"
    interim_results: bool = True
    punctuate: bool = True
    smart_format: bool = True
    deepgram_url: str = "wss://api.deepgram.com"
    # Deepgram's own end-of-speech signals (ours come from Silero; theirs are a second opinion).
    endpointing_ms: int = Field(300, ge=10)
    utterance_end_ms: int = Field(1000, ge=1000)
    # KeepAlive while the caller is silent (Deepgram closes an idle socket after 10 s: NET-0001).
    keepalive_seconds: float = Field(4.0, gt=0, lt=10)
    connect_timeout_seconds: float = Field(3.0, gt=0)


class LlmSettings(BaseModel):
    provider: Literal["anthropic", "policy"] = "policy"
    model: str = "claude-sonnet-4-20250514"
    fallback_model: str = "claude-3-5-haiku-20241022"
    temperature: float = Field(0.7, ge=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1, le=64_000)
    streaming: bool = True
    anthropic_base_url: str = "https://api.anthropic.com"
    request_timeout_seconds: float = Field(30.0, gt=0)
    # SDK retries after an error; 0 because a retry's backoff is dead air on a call: the degradation
    # chain (Haiku, then the policy) answers sooner.
    max_retries: int = Field(0, ge=0, le=5)


class TtsClientSettings(BaseModel):
    # Which engine the Triton model runs for the agent: chatterbox (`model` picks the variant) or espeak.
    provider: Literal["chatterbox", "espeak"] = "espeak"
    triton_url: str = "127.0.0.1:8101"
    triton_model: str = "tts"
    model: Literal["turbo", "original"] = "turbo"
    default_voice_id: str = "default_female_1"
    # Whole-utterance deadline; a stream that takes longer is cancelled server-side.
    request_timeout_seconds: float = Field(10.0, gt=0)
    chunk_duration_ms: int = Field(100, ge=20, le=1000)
    # Chunks buffered between the gRPC stream and the consumer before reading pauses (backpressure).
    buffer_chunks: int = Field(3, ge=1)


class VadSettings(BaseModel):
    model: Literal["silero", "energy"] = "silero"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_speech_duration_ms: int = Field(250, ge=0)
    min_silence_duration_ms: int = Field(300, ge=0)


class ConversationSettings(BaseModel):
    max_history_tokens: int = Field(8000, ge=256)
    summarize_after_turns: int = Field(20, ge=1)
    greeting_enabled: bool = True
    transfer_enabled: bool = True


class TurnTakingSettings(BaseModel):
    """Endpointing, barge-in and idle handling (defaults when the agent's record leaves them unset)."""

    # Wait this long after the caller stops before answering; longer when the words so far end like an
    # unfinished phone number or spelling, so the caller is not cut off between digit groups.
    grace_ms: int = Field(400, ge=0)
    unfinished_grace_ms: int = Field(1500, ge=0)
    # Caller speech needed to interrupt the agent (coughs and "uh-huh" are shorter).
    barge_in_min_speech_ms: int = Field(400, ge=0)
    # Voiced caller audio from the VAD onset after which the agent's playout pauses (before the VAD has
    # confirmed speech), so the caller hears the agent stop at once; 0 turns pausing off.
    barge_in_pause_ms: int = Field(160, ge=0)
    # An interruption with no recognised words within this time was noise: the agent re-offers its reply.
    false_interruption_ms: int = Field(1500, ge=100)
    idle_prompt_seconds: float = Field(8.0, gt=0)
    max_idle_prompts: int = Field(2, ge=0)
    max_call_duration_seconds: int = Field(3600, ge=1)


class ToolSettings(BaseModel):
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    max_concurrent_tools: int = Field(3, ge=1)


class ResilienceSettings(BaseModel):
    """Degradation chains (spec 12.3). Breaker thresholds are the spec's (12.2), not settings."""

    # A provider that has not produced its first output (LLM event, TTS audio) within this bound is
    # treated as failed and the next tier takes over: the longest silence a failover may cause.
    max_dead_air_ms: int = Field(1500, ge=100)
    # A stream that stops producing for this long mid-answer is treated as failed too.
    stream_stall_ms: int = Field(5000, ge=100)
    # STT: a final transcript this late after Finalize means the recogniser is stuck: replay the
    # utterance to the next tier (shorter than the session's own wait for the final, 1.5 s).
    stt_final_stall_ms: int = Field(700, ge=50)
    # Fallback tiers in order; "offline" = PocketSphinx, "policy" = the agent's cached answers.
    stt_chain: list[Literal["primary", "fallback", "offline"]] = ["primary", "fallback", "offline"]
    llm_chain: list[Literal["primary", "fallback", "policy"]] = ["primary", "fallback", "policy"]


class CapacitySettings(BaseModel):
    """How many processes serve the port, and when one refuses new calls (services/agent/load.py)."""

    # Processes serving grpc_port together (SO_REUSEPORT); 0 = one per CPU core. Process i > 0 serves
    # /metrics on metrics_port + 1000 * i (an ephemeral port when metrics_port is 0).
    processes: int = Field(0, ge=0)
    # A process refuses new sessions (RESOURCE_EXHAUSTED) at this many active calls; 0 = no count limit.
    max_active_calls: int = Field(0, ge=0)
    # ... or when its event loop runs this late (p95 of the last second of timer ticks) ...
    max_loop_lag_ms: float = Field(40.0, gt=0)
    # ... or when the process used this much of one core over the last second.
    max_cpu_percent: float = Field(90.0, gt=0)
    # How often the loop-lag timer ticks, and the retry hint sent with a refusal.
    sample_interval_ms: int = Field(100, ge=10)
    retry_after_ms: int = Field(1000, ge=0)


class AgentServiceSettings(ServerSettings):
    grpc_port: int = Field(50052, ge=0, le=65535)
    metrics_port: int = Field(9102, ge=0, le=65535)
    capacity: CapacitySettings = CapacitySettings()
    stt: SttSettings = SttSettings()
    llm: LlmSettings = LlmSettings()
    tts: TtsClientSettings = TtsClientSettings()
    vad: VadSettings = VadSettings()
    conversation: ConversationSettings = ConversationSettings()
    turn_taking: TurnTakingSettings = TurnTakingSettings()
    tools: ToolSettings = ToolSettings()
    resilience: ResilienceSettings = ResilienceSettings()


class ControlSettings(ServerSettings):
    grpc_port: int = Field(50053, ge=0, le=65535)
    metrics_port: int = Field(9103, ge=0, le=65535)
    # Signed internal auth headers older than this are refused (replay window, clock skew included).
    internal_auth_max_age_seconds: int = Field(300, ge=1)
    # Outbound calls are refused when the tenant's credit buckets hold less than this.
    min_credit_minutes: float = Field(1.0, ge=0)
    # Prepaid minutes a new tenant starts with (a "trial" credit bucket); 0 = none.
    trial_credit_minutes: float = Field(60.0, ge=0)


class RetrySettings(BaseModel):
    max_retries: int = Field(5, ge=0)
    # Seconds (fractions allowed, so tests can retry within milliseconds).
    backoff_base: float = Field(60, gt=0, description="seconds")
    backoff_max: float = Field(3600, gt=0, description="seconds")


class EventBusSettings(BaseModel):
    """The event stream on NATS JetStream and every publisher's local spool (services/shared/events*)."""

    replicas: int = Field(1, ge=1, le=5)
    max_age_days: float = Field(7.0, gt=0)
    duplicate_window_seconds: float = Field(120.0, gt=0)
    # How long one publish waits for JetStream's ack, and attempts before an event goes to the spool.
    publish_timeout_seconds: float = Field(2.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Events in flight at once when publishing a backlog (pipelined acks).
    pipeline_window: int = Field(512, ge=1)
    # Where a publisher keeps events while NATS is unreachable (replayed in order on reconnect).
    spool_dir: str = ".var/spool/events"
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=4096)
    # Larger events are refused before publishing (dead-lettered locally); NATS' own limit is 1 MB.
    max_event_bytes: int = Field(256 * 1024, ge=1024)


class WorkerSettings(ServerSettings):
    grpc_port: int = Field(50054, ge=0, le=65535)
    metrics_port: int = Field(9104, ge=0, le=65535)
    concurrency: int = Field(4, ge=1)
    retry: RetrySettings = RetrySettings()
    timezone: str = "UTC"
    # Handlers running at once per queue (spec 3.4.5): default (records, transcripts, usage), webhooks.
    default_concurrency: int = Field(2, ge=1)
    webhooks_concurrency: int = Field(4, ge=1)
    reports_concurrency: int = Field(1, ge=1)
    # Deliveries per minute per webhook endpoint, and how long one delivery may take.
    webhook_rate_per_minute: int = Field(100, ge=1)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    # Consecutive failures that open an endpoint's circuit, and how long it stays open.
    webhook_breaker_failures: int = Field(5, ge=1)
    webhook_breaker_open_seconds: float = Field(60.0, gt=0)
    # How long the worker reuses a tenant's webhook subscriptions before reading them again (a new or
    # changed webhook receives events from at most this long after the change).
    webhook_config_cache_seconds: float = Field(2.0, ge=0)
    # A handler that neither acks nor reports progress within this gets the event redelivered.
    ack_wait_seconds: float = Field(30.0, gt=0)
    # Deliveries of one event before it is dead-lettered as poison.
    max_deliver: int = Field(5, ge=1)


class ChatterboxServiceSettings(BaseModel):
    """The TTS node (spec 3.5.5): Triton model `tts`, its HTTP facade on `port` and voice.v1.TtsService
    over gRPC on `grpc_port` (served by the facade process)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    grpc_port: int = Field(50055, ge=0, le=65535)
    # "auto": Chatterbox-Turbo where weights, torch and a GPU exist, else the offline espeak-ng engine.
    model_name: Literal["auto", "chatterbox-turbo", "chatterbox", "espeak-ng"] = "auto"
    device: Literal["cuda", "cpu"] = "cpu"
    precision: Literal["float16", "float32"] = "float16"
    # Local weight directories (never downloaded at run time): Turbo, and the original 0.5B model.
    weights_path: str = ""
    original_weights_path: str = ""
    # Where the facade reaches Triton (gRPC), and the model's name there.
    triton_url: str = "127.0.0.1:8101"
    triton_model: str = "tts"
    request_timeout_seconds: float = Field(30.0, gt=0)
    max_text_chars: int = Field(5000, ge=1)
    sample_rate: Literal[24000] = 24000
    default_exaggeration: float = Field(0.5, ge=0.25, le=2.0)
    default_cfg_weight: float = Field(0.5, ge=0.0, le=1.0)
    storage_path: str = ".var/voices"
    cache_size: int = Field(10, ge=1)
    chunk_duration_ms: int = Field(100, ge=20, le=1000)
    buffer_chunks: int = Field(3, ge=1)
    # The HTTP facade takes the tenant from the caller's API key or token (X-API-Key / Bearer), never
    # from the query or body alone. False only for development and tests on one machine (refused in
    # staging/production by services/shared/deployment.py).
    http_authentication: bool = True


class OutboundHttpSettings(BaseModel):
    """Requests to URLs tenants configure (services/shared/outbound_http.py): public https only."""

    # Non-public networks reachable anyway (CIDRs), plain http included: only for tests' loopback
    # receivers, e.g. OUTBOUND_HTTP__ALLOWED_NETWORKS='["127.0.0.0/8"]'. Never set in production.
    allowed_networks: list[str] = []
    connect_timeout_seconds: float = Field(5.0, gt=0)


class InternalTlsSettings(BaseModel):
    """Mutual TLS between the platform's services (docs/identity.md). Every gRPC server asks each caller
    for a certificate of the platform's CA and authorises it by its identity (the certificate's common
    name) and the method; every internal client presents its own. `plaintext` turns this off and is only
    for development on one machine: it must be chosen explicitly and is refused in staging/production."""

    mode: Literal["mtls", "plaintext"] = "mtls"
    # Created by scripts/certs.sh (run by the set-up): ca.crt plus <identity>.crt/.key per service.
    pki_dir: str = ".var/pki"
    # Overrides of the paths derived from pki_dir (deployments mount certificates elsewhere).
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    # The identity this process presents on its outgoing channels. Empty: the service's own name when
    # it runs as a service (services.shared.runner), otherwise "client" (tools, tests, load testers).
    identity: str = ""


class RecordingSettings(BaseModel):
    """Call recordings (services/shared/recordings/): encrypted objects behind the S3 API."""

    # "s3": any S3-compatible server (locally: versitygw from scripts/services.sh); "filesystem": a
    # folder, only the demo's fallback when no S3 server runs.
    backend: Literal["s3", "filesystem"] = "s3"
    s3_endpoint: str = "http://127.0.0.1:19000"
    s3_region: str = "us-east-1"
    bucket: str = "voice-recordings"
    # Secrets: from the environment; development/test fall back to the local server's own credentials.
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    filesystem_path: str = ".var/recordings"
    # One channel rate for both sides of the stereo file.
    sample_rate: int = Field(16000, ge=8000, le=48000)


class Settings(BaseSettings):
    """All settings of the platform. One instance per process, built by `load_settings()`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="ignore",
        frozen=True,
    )

    # Application
    app_name: str = "voice-aiconnected"
    # No default: each deployment says what it is (services/shared/deployment.py refuses to start
    # without it); the Makefile, the demo and the tests set development/test explicitly.
    environment: Literal["development", "test", "staging", "production"] | None = None
    debug: bool = False
    instance_id: str = ""

    # Database, cache, event bus (loopback defaults = scripts/services.sh)
    database_url: str = "postgresql://voice:voice@127.0.0.1:15432/voice"
    database_pool_size: int = Field(10, ge=1)
    database_max_overflow: int = Field(20, ge=0)
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_pool_size: int = Field(10, ge=1)
    nats_url: str = "nats://127.0.0.1:14222"
    nats_stream: str = "VOICE_EVENTS"
    events: EventBusSettings = EventBusSettings()

    # External services: secrets from the environment only, no defaults.
    gotoconnect_client_id: SecretStr | None = None
    gotoconnect_client_secret: SecretStr | None = None
    livekit_url: str | None = None
    livekit_api_key: SecretStr | None = None
    livekit_api_secret: SecretStr | None = None
    deepgram_api_key: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None
    # Signs tool webhook requests (HMAC-SHA256); each tenant gets a secret derived from it.
    tool_webhook_secret: SecretStr | None = None
    chatterbox_url: str | None = None
    jwt_secret: SecretStr | None = None
    # Shared by the gateway and internal callers to sign the tenant context they send the control plane
    # (services/control/auth.py). Development/test without it: a random secret kept in .var/secrets/.
    internal_auth_secret: SecretStr | None = None
    # Wraps each tenant's recording data key (AES-256-GCM): 64 hex characters. Development/test without
    # it: a random key kept in .var/secrets/; staging and production refuse to record or fetch.
    recording_master_key: SecretStr | None = None

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_enabled: bool = True
    tracing_enabled: bool = True

    # Per-service sections (spec 3.1.5, 3.2.6, 3.3.5, 3.4.5, 3.5.5)
    api_gateway: ApiGatewaySettings = ApiGatewaySettings()
    webrtc_bridge: BridgeSettings = BridgeSettings()
    agent_service: AgentServiceSettings = AgentServiceSettings()
    control: ControlSettings = ControlSettings()
    worker_service: WorkerSettings = WorkerSettings()
    chatterbox_service: ChatterboxServiceSettings = ChatterboxServiceSettings()
    internal_tls: InternalTlsSettings = InternalTlsSettings()
    outbound_http: OutboundHttpSettings = OutboundHttpSettings()
    recordings: RecordingSettings = RecordingSettings()


class SettingsError(ValueError):
    """Invalid configuration; the message names each offending environment variable."""


def env_var_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at `loc` (e.g. AGENT_SERVICE__LLM__TEMPERATURE)."""
    return ENV_NESTED_DELIMITER.join(str(part).upper() for part in loc)


def load_settings(**overrides: object) -> Settings:
    """Reads settings from the environment; raises SettingsError naming the variables at fault."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [f"{env_var_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None
