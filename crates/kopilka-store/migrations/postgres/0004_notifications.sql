-- Notifications (kopilka-notify): the dispatcher reads `events` (the outbox) past a cursor per
-- tenant and turns each event into deliveries, in one transaction with the cursor's advance, so an
-- event is neither skipped nor fanned out twice. Times are microseconds since the Unix epoch, UTC.

-- The id of the last event of each tenant that has been turned into deliveries.
CREATE TABLE notify_cursor (
    tenant_id BIGINT PRIMARY KEY,
    last_event_id BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Webhook subscriptions. event_kinds is a JSON array of kinds; empty means every kind. A rotated
-- secret stays valid (deliveries are signed with both) until previous_secret_until.
CREATE TABLE webhooks (
    tenant_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    url TEXT NOT NULL,
    event_kinds TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until BIGINT,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);

-- One provider configuration per tenant and channel (email, sms, push, messenger), as JSON.
CREATE TABLE notify_channels (
    tenant_id BIGINT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'messenger')),
    config TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, channel)
);

-- Message templates (minijinja) per event kind, channel and language.
CREATE TABLE notify_templates (
    tenant_id BIGINT NOT NULL,
    event_kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    language TEXT NOT NULL,
    subject TEXT,
    text_body TEXT NOT NULL,
    html_body TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, event_kind, channel, language)
);

-- Per-tenant policy: time zone and quiet hours, the daily cap, the default language, the public
-- address unsubscribe links point to, and the key that signs them.
CREATE TABLE notify_settings (
    tenant_id BIGINT PRIMARY KEY,
    document TEXT NOT NULL,
    unsubscribe_key BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Where a member is reached on channels the profile has no field for (push token, Telegram chat).
CREATE TABLE member_contacts (
    tenant_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('push', 'messenger')),
    address TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, channel)
);

-- Opt-outs by unsubscribe link or API; they win over the profile's consents.
CREATE TABLE member_opt_outs (
    tenant_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    channel TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, channel)
);

-- Every delivery, one row per (event, target): its id is derived from both, so fanning an event out
-- again could not duplicate it. payload is exactly what is sent, fixed at creation, so each retry
-- sends the same bytes.
CREATE TABLE deliveries (
    tenant_id BIGINT NOT NULL,
    id TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    event_kind TEXT NOT NULL,
    member_id BIGINT,
    channel TEXT NOT NULL CHECK (channel IN ('webhook', 'email', 'sms', 'push', 'messenger')),
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'dead', 'suppressed')),
    reason TEXT,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_member_day ON deliveries (tenant_id, member_id, created_at) WHERE member_id IS NOT NULL;
CREATE INDEX deliveries_log ON deliveries (tenant_id, created_at);

-- First answers to configuration requests (which do not go through the writer), for retries.
CREATE TABLE notify_idempotency (
    tenant_id BIGINT NOT NULL,
    key TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    status BIGINT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
