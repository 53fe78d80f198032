-- The version of each tenant's tool-signing secret (the secret is derived from TOOL_WEBHOOK_SECRET, the
-- tenant id and this version; TenantService.RotateToolSigningSecret increments it).
ALTER TABLE tenants ADD COLUMN tool_signing_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tenants ADD COLUMN tool_signing_rotated_at TIMESTAMPTZ;
