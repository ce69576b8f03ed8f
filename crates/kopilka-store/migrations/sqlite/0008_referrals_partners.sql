-- Referrals and partner programs.

-- Postings on a partner's accounts name the partner; member postings keep member_id.
ALTER TABLE postings ADD COLUMN partner_id INTEGER;
CREATE INDEX postings_partner ON postings (tenant_id, partner_id, movement_id) WHERE partner_id IS NOT NULL;

CREATE TABLE partners (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    record TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

-- A partner key is an ordinary api_keys row with role 'partner', bound here to its partner.
CREATE TABLE partner_keys (
    key_hash BLOB PRIMARY KEY,
    tenant_id INTEGER NOT NULL,
    partner_id INTEGER NOT NULL
) WITHOUT ROWID;

-- One code per member, unique within the tenant.
CREATE TABLE referral_codes (
    tenant_id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    code TEXT NOT NULL,
    PRIMARY KEY (tenant_id, member_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX referral_codes_code ON referral_codes (tenant_id, code);

-- Devices members signed up from, for the self-referral guard.
CREATE TABLE member_devices (
    tenant_id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, device_id)
) WITHOUT ROWID;

-- A member is referred at most once: the referred member is the key.
CREATE TABLE referrals (
    tenant_id INTEGER NOT NULL,
    referred_id INTEGER NOT NULL,
    referrer_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tenant_id, referred_id)
) WITHOUT ROWID;
CREATE INDEX referrals_referrer ON referrals (tenant_id, referrer_id);
CREATE INDEX referrals_status ON referrals (tenant_id, status);
