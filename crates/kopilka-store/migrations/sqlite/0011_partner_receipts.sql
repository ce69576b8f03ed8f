-- Receipts of points earned at a partner: one per partner and external_id, so a receipt is
-- credited once whatever Idempotency-Key it comes with, and can be returned.
CREATE TABLE partner_receipts (
    tenant_id INTEGER NOT NULL,
    partner_id INTEGER NOT NULL,
    external_id TEXT NOT NULL,
    member_id INTEGER NOT NULL,
    record TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, partner_id, external_id)
);
