-- The platform's provisioned phone numbers (bought from the carrier, routed to our trunks). A tenant can
-- only add a number that is here and not yet assigned; every other number gets the same answer, so the
-- API says nothing about which numbers other tenants hold. Filled by the operator
-- (python -m services.control.inventory).
CREATE TABLE number_inventory (
    e164 VARCHAR(16) PRIMARY KEY CHECK (e164 ~ '^\+[1-9][0-9]{6,14}$'),
    provider VARCHAR(32) NOT NULL DEFAULT 'gotoconnect',
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Numbers already assigned before the inventory existed stay valid.
INSERT INTO number_inventory (e164, provider) SELECT e164, provider FROM phone_numbers ON CONFLICT DO NOTHING;
