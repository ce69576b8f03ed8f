-- Referrals and partner programs.

-- Postings on a partner's accounts name the partner; member postings keep member_id.
ALTER TABLE postings ADD COLUMN partner_id BIGINT;
CREATE INDEX postings_partner ON postings (tenant_id, partner_id, movement_id) WHERE partner_id IS NOT NULL;

CREATE TABLE partners (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    record TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- A partner key is an ordinary api_keys row with role 'partner', bound here to its partner.
CREATE TABLE partner_keys (
    key_hash BYTEA PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    partner_id BIGINT NOT NULL
);

-- One code per member, unique within the tenant.
CREATE TABLE referral_codes (
    tenant_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    code TEXT NOT NULL,
    PRIMARY KEY (tenant_id, member_id)
);
CREATE UNIQUE INDEX referral_codes_code ON referral_codes (tenant_id, code);

-- Devices members signed up from, for the self-referral guard.
CREATE TABLE member_devices (
    tenant_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, device_id)
);

-- A member is referred at most once: the referred member is the key.
CREATE TABLE referrals (
    tenant_id BIGINT NOT NULL,
    referred_id BIGINT NOT NULL,
    referrer_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tenant_id, referred_id)
);
CREATE INDEX referrals_referrer ON referrals (tenant_id, referrer_id);
CREATE INDEX referrals_status ON referrals (tenant_id, status);
