-- Receipts of points earned at a partner: one per partner and external_id, so a receipt is
-- credited once whatever Idempotency-Key it comes with, and can be returned.
CREATE TABLE partner_receipts (
    tenant_id BIGINT NOT NULL,
    partner_id BIGINT NOT NULL,
    external_id TEXT NOT NULL,
    member_id BIGINT NOT NULL,
    record TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, partner_id, external_id)
);
