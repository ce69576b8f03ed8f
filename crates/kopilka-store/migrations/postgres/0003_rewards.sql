-- The rewards catalogue (see kopilka-core `rewards`). A reward's terms are one JSON document, as
-- the admin sent them; stock lives in it and changes with every redemption in the same
-- transaction as the points it costs.
CREATE TABLE rewards (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    spec TEXT NOT NULL,
    redeemed_count BIGINT NOT NULL CHECK (redeemed_count >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- One reward redeemed by one member. The member index serves per-member limits and the member's
-- list; a voucher code is unique per tenant so checkout can find the redemption by it.
CREATE TABLE reward_redemptions (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    reward_id BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('issued', 'fulfilled', 'cancelled')),
    voucher_code TEXT,
    redeemed_at BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX reward_redemptions_member ON reward_redemptions (tenant_id, member_id, reward_id);
CREATE UNIQUE INDEX reward_redemptions_voucher ON reward_redemptions (tenant_id, voucher_code)
    WHERE voucher_code IS NOT NULL;

-- Money owed to members who took a reward as cashback, until the business pays it.
CREATE TABLE cashback_payouts (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    redemption_id BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'cancelled')),
    record TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX cashback_payouts_status ON cashback_payouts (tenant_id, status, id);

-- Id seeds of the tables above, read and saved under the write lock like `sequences`; kept apart
-- so the batch's own seeds stay as they were.
CREATE TABLE reward_sequences (
    name TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO reward_sequences (name, last) VALUES ('reward', 0), ('redemption', 0), ('payout', 0);
