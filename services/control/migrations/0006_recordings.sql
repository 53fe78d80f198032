-- Call recordings (services/shared/recordings/): each tenant's data key, wrapped by the master key
-- (RECORDING_MASTER_KEY), and one row per recorded call naming its encrypted object. call_id is the call
-- record's id; the record may be projected after the recording is stored, hence no foreign key.
CREATE TABLE recording_keys (
    tenant_id UUID NOT NULL,
    version INTEGER NOT NULL,
    wrapped_key BYTEA NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE recordings (
    call_id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL,
    object_key TEXT NOT NULL,
    backend VARCHAR(20) NOT NULL,
    key_version INTEGER NOT NULL,
    size_bytes BIGINT NOT NULL,
    duration_seconds REAL NOT NULL,
    sample_rate INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_recordings_tenant ON recordings(tenant_id);
CREATE INDEX idx_recordings_created ON recordings(created_at);
