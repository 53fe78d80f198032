-- What the worker projects from the event stream (services/worker/): call records, transcripts, tool
-- calls, usage and credits, tenant webhook deliveries. Every projection is idempotent on the event id
-- (a unique key per table), so a redelivered event changes nothing the second time.

-- A call's record is opened by whichever of its events arrives first; the agent and the direction may
-- only be learnt from a later one (and a call straight on Converse may name an agent that is not ours).
ALTER TABLE calls ALTER COLUMN agent_id DROP NOT NULL;
ALTER TABLE calls ALTER COLUMN direction SET DEFAULT 'inbound';
ALTER TABLE calls ADD COLUMN transcript_complete BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE calls ADD COLUMN cost_cents BIGINT NOT NULL DEFAULT 0;

-- Status only moves forward: an event of an earlier stage arriving late never moves a call back.
CREATE FUNCTION call_status_rank(status TEXT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'initiating' THEN 0 WHEN 'ringing' THEN 1 WHEN 'connected' THEN 2 WHEN 'on_hold' THEN 2
        WHEN 'transferring' THEN 3 WHEN 'transferred' THEN 4 ELSE 5 END
$$;

ALTER TABLE call_events ADD COLUMN tenant_id UUID;

ALTER TABLE transcripts ADD COLUMN event_id VARCHAR(64);
ALTER TABLE transcripts ADD COLUMN interrupted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE transcripts ADD COLUMN search TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED;
CREATE UNIQUE INDEX idx_transcripts_event_id ON transcripts(event_id) WHERE event_id IS NOT NULL;
CREATE INDEX idx_transcripts_search ON transcripts USING GIN (search);

ALTER TABLE tool_calls ADD COLUMN event_id VARCHAR(64);
CREATE UNIQUE INDEX idx_tool_calls_event_id ON tool_calls(event_id) WHERE event_id IS NOT NULL;

ALTER TABLE usage_records ADD COLUMN event_id VARCHAR(64);
ALTER TABLE usage_records ADD COLUMN minute_count INTEGER;
ALTER TABLE usage_records ADD COLUMN credits_debited NUMERIC(12, 4) NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX idx_usage_records_event_id ON usage_records(event_id) WHERE event_id IS NOT NULL;
-- One record per started minute of a call, even if two publishers reported it with different ids.
CREATE UNIQUE INDEX idx_usage_records_call_minute ON usage_records(call_id, minute_count)
    WHERE call_id IS NOT NULL AND minute_count IS NOT NULL;

-- Minutes per tenant, agent, direction and hour, kept up to date with each usage record (the hourly job
-- recomputes closed hours from usage_records). agent_key is agent_id, or the nil UUID for none.
CREATE TABLE usage_hourly (
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    agent_key UUID NOT NULL,
    direction VARCHAR(20) NOT NULL,
    hour TIMESTAMP WITH TIME ZONE NOT NULL,
    minutes NUMERIC(14, 4) NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, agent_key, direction, hour)
);

-- One delivery per (endpoint, event); its attempts are logged below.
CREATE TABLE webhook_deliveries (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    webhook_id UUID NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id VARCHAR(64) NOT NULL,
    event_type VARCHAR(64) NOT NULL,
    call_id VARCHAR(128) NOT NULL DEFAULT '',
    body BYTEA NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Attempts allowed before the delivery is dead (raised by each redelivery).
    attempts_limit INTEGER NOT NULL,
    next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    last_status_code INTEGER,
    last_error TEXT,
    delivered_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_page ON webhook_deliveries(tenant_id, webhook_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id UUID NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    latency_ms INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    UNIQUE (delivery_id, attempt)
);

-- Scheduled jobs: one runner at a time across worker instances (row lock), last run per job.
CREATE TABLE scheduled_jobs (
    name VARCHAR(64) PRIMARY KEY,
    last_run_at TIMESTAMP WITH TIME ZONE,
    last_period VARCHAR(64),
    last_result JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE daily_reports (
    tenant_id UUID NOT NULL REFERENCES tenants(id),
    day DATE NOT NULL,
    calls INTEGER NOT NULL,
    minutes NUMERIC(14, 4) NOT NULL,
    average_handle_seconds REAL NOT NULL,
    transfer_rate REAL NOT NULL,
    tool_success_rate REAL NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (tenant_id, day)
);

CREATE UNIQUE INDEX idx_invoices_period ON invoices(tenant_id, period_start);
