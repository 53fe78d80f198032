-- Control-plane schema (spec 9.2), plus api_keys and audit_log. Forward-only: never edit an applied
-- migration; add a new file. Table names are unqualified so the schema comes from search_path (tests
-- run each session in a fresh schema).

CREATE TABLE tenants (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    slug VARCHAR(100) UNIQUE NOT NULL,
    status VARCHAR(50) NOT NULL DEFAULT 'active',
    plan VARCHAR(50) NOT NULL DEFAULT 'starter',
    max_concurrent_calls INTEGER NOT NULL DEFAULT 10 CHECK (max_concurrent_calls >= 0),
    settings JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    deleted_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_tenants_slug ON tenants(slug);
CREATE INDEX idx_tenants_status ON tenants(status);

-- Built-in voices have no tenant; cloned voices belong to one tenant.
CREATE TABLE voices (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID REFERENCES tenants(id),
    name VARCHAR(255) NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    language VARCHAR(35) NOT NULL DEFAULT '',
    exaggeration REAL NOT NULL DEFAULT 0.5,
    cfg_weight REAL NOT NULL DEFAULT 0.5,
    reference_audio BYTEA,
    reference_duration_seconds REAL NOT NULL DEFAULT 0,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    deleted_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_voices_tenant ON voices(tenant_id);

CREATE TABLE agents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    name VARCHAR(255) NOT NULL,
    description TEXT,
    status VARCHAR(50) NOT NULL DEFAULT 'active',
    voice_id UUID REFERENCES voices(id),
    system_prompt TEXT NOT NULL,
    greeting_message TEXT,
    tools JSONB NOT NULL DEFAULT '[]',
    -- The rest of voice.v1.Agent (language, faq, intents, transfer targets, stt/llm/tts/vad/conversation,
    -- metadata) as proto3 JSON: the proto is the schema, so new agent settings need no migration.
    settings JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    deleted_at TIMESTAMP WITH TIME ZONE
);
CREATE INDEX idx_agents_tenant ON agents(tenant_id);
CREATE INDEX idx_agents_status ON agents(status);
CREATE INDEX idx_agents_tenant_page ON agents(tenant_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- A number belongs to one tenant only: e164 is unique across the platform.
CREATE TABLE phone_numbers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    agent_id UUID REFERENCES agents(id),
    e164 VARCHAR(16) NOT NULL UNIQUE CHECK (e164 ~ '^\+[1-9][0-9]{6,14}$'),
    provider VARCHAR(50) NOT NULL DEFAULT 'gotoconnect',
    label VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_phone_numbers_tenant ON phone_numbers(tenant_id);
CREATE INDEX idx_phone_numbers_agent ON phone_numbers(agent_id);

-- signing_secret is kept (the worker signs deliveries with it) but returned only by CreateWebhook.
CREATE TABLE webhooks (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    agent_id UUID REFERENCES agents(id),
    url VARCHAR(2048) NOT NULL,
    events TEXT[] NOT NULL DEFAULT '{}',
    active BOOLEAN NOT NULL DEFAULT TRUE,
    description TEXT NOT NULL DEFAULT '',
    signing_secret VARCHAR(128) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_webhooks_tenant ON webhooks(tenant_id);

CREATE TABLE calls (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    agent_id UUID NOT NULL REFERENCES agents(id),
    direction VARCHAR(20) NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    status VARCHAR(50) NOT NULL,
    from_number VARCHAR(50),
    to_number VARCHAR(50),
    external_call_id VARCHAR(255),
    room_name VARCHAR(255),
    started_at TIMESTAMP WITH TIME ZONE,
    answered_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    duration_seconds INTEGER,
    end_reason VARCHAR(100),
    transferred_to VARCHAR(255),
    -- Client idempotency key of CreateCall.
    request_id VARCHAR(255),
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_calls_tenant ON calls(tenant_id);
CREATE INDEX idx_calls_agent ON calls(agent_id);
CREATE INDEX idx_calls_status ON calls(status);
CREATE INDEX idx_calls_direction ON calls(direction);
CREATE INDEX idx_calls_started_at ON calls(started_at);
CREATE INDEX idx_calls_external_id ON calls(external_call_id);
CREATE INDEX idx_calls_tenant_page ON calls(tenant_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX idx_calls_request_id ON calls(tenant_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE transcripts (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    call_id UUID NOT NULL REFERENCES calls(id),
    turn_number INTEGER NOT NULL,
    speaker VARCHAR(50) NOT NULL,
    text TEXT NOT NULL,
    confidence FLOAT,
    started_at TIMESTAMP WITH TIME ZONE NOT NULL,
    ended_at TIMESTAMP WITH TIME ZONE,
    metadata JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_transcripts_call ON transcripts(call_id);
CREATE INDEX idx_transcripts_call_turn ON transcripts(call_id, turn_number);

CREATE TABLE call_events (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    call_id UUID NOT NULL REFERENCES calls(id),
    event_type VARCHAR(100) NOT NULL,
    event_id VARCHAR(100),
    payload JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_call_events_call ON call_events(call_id);
CREATE UNIQUE INDEX idx_call_events_event_id ON call_events(event_id) WHERE event_id IS NOT NULL;

CREATE TABLE tool_calls (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    call_id UUID NOT NULL REFERENCES calls(id),
    call_event_id UUID REFERENCES call_events(id),
    tool_name VARCHAR(64) NOT NULL,
    input JSONB NOT NULL DEFAULT '{}',
    output JSONB NOT NULL DEFAULT '{}',
    status VARCHAR(20) NOT NULL,
    latency_ms INTEGER,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_tool_calls_call ON tool_calls(call_id);

CREATE TABLE usage_records (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    call_id UUID REFERENCES calls(id),
    agent_id UUID REFERENCES agents(id),
    direction VARCHAR(20) NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    minutes NUMERIC(12, 4) NOT NULL CHECK (minutes >= 0),
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_usage_records_tenant_time ON usage_records(tenant_id, recorded_at);

CREATE TABLE credit_buckets (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    minutes_total NUMERIC(12, 4) NOT NULL CHECK (minutes_total >= 0),
    minutes_used NUMERIC(12, 4) NOT NULL DEFAULT 0 CHECK (minutes_used >= 0),
    source VARCHAR(50) NOT NULL DEFAULT 'plan',
    expires_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_credit_buckets_tenant ON credit_buckets(tenant_id);

CREATE TABLE invoices (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    period_start TIMESTAMP WITH TIME ZONE NOT NULL,
    period_end TIMESTAMP WITH TIME ZONE NOT NULL,
    minutes NUMERIC(12, 4) NOT NULL DEFAULT 0,
    amount_cents BIGINT NOT NULL DEFAULT 0,
    currency CHAR(3) NOT NULL DEFAULT 'USD',
    status VARCHAR(20) NOT NULL DEFAULT 'draft',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_invoices_tenant ON invoices(tenant_id);

-- Only the SHA-256 of a key is stored; `prefix` lets people recognise a key in lists.
CREATE TABLE api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    name VARCHAR(255) NOT NULL,
    prefix VARCHAR(32) NOT NULL,
    key_hash BYTEA NOT NULL UNIQUE,
    permission VARCHAR(20) NOT NULL CHECK (permission IN ('read', 'write', 'admin')),
    -- Platform operators (bootstrap key): may manage every tenant.
    platform_admin BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at TIMESTAMP WITH TIME ZONE,
    revoked_at TIMESTAMP WITH TIME ZONE,
    last_used_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_api_keys_tenant ON api_keys(tenant_id, created_at DESC, id DESC);

-- One row per mutating API call (spec 3.1.2 audit logging), written by the gateway.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    tenant_id UUID,
    principal VARCHAR(255),
    request_id VARCHAR(128),
    method VARCHAR(10) NOT NULL,
    path VARCHAR(2048) NOT NULL,
    rpc VARCHAR(255),
    http_status INTEGER NOT NULL,
    grpc_code VARCHAR(32),
    client_ip VARCHAR(64),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_audit_log_tenant_time ON audit_log(tenant_id, created_at);
