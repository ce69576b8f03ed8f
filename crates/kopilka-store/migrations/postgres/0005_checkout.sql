-- Checkout: coupon campaigns, their codes, and quoted baskets waiting to be confirmed.

-- A campaign's terms are a JSON document (`CouponCampaign`); `used` counts the uses of all its codes,
-- for the campaign's total limit.
CREATE TABLE coupon_campaigns (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    document TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    active BIGINT NOT NULL DEFAULT 1,
    codes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- One row per code, unique per tenant. `holds` lists the open checkouts holding the code
-- (`[{"checkout_id":…, "until":…}]`); a hold past its `until` counts for nothing.
CREATE TABLE coupons (
    tenant_id BIGINT NOT NULL,
    code TEXT NOT NULL,
    campaign_id BIGINT NOT NULL,
    member_id BIGINT,
    uses BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0),
    holds TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, code)
);
CREATE INDEX coupons_campaign ON coupons (tenant_id, campaign_id, code);
CREATE INDEX coupons_member ON coupons (tenant_id, member_id) WHERE member_id IS NOT NULL;

CREATE TABLE checkouts (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'confirmed', 'cancelled')),
    expires_at BIGINT NOT NULL,
    purchase_id BIGINT,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
); 
CREATE INDEX checkouts_member ON checkouts (tenant_id, member_id, id);

INSERT INTO sequences (name, last) VALUES ('checkout', 0);
