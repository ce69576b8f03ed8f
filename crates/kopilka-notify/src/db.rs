//! The notification tables (`0004_notifications.sql`): webhooks, channel configurations,
//! templates, settings, contacts, opt-outs, deliveries and the idempotency of configuration
//! requests. Rows in, rows out; the policies live in `fanout` and `dispatcher`.

use jiff::{SignedDuration, Timestamp};
use kopilka_core::{MemberId, TenantId};
use kopilka_store::micros;
use kopilka_store::sql::{Backend, Builder};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::config::ChannelConfig;
use crate::settings::Settings;
use crate::templates::Template;
use crate::{signing, Channel, DeliveryStatus, NotifyError, Result, Secret};

/// How long a rotated-out webhook secret still signs deliveries.
pub const SECRET_GRACE: SignedDuration = SignedDuration::from_hours(24);
/// Webhook subscriptions per tenant: each event fans out to every one of them.
pub const WEBHOOKS_PER_TENANT_MAX: i64 = 50;
/// Rows a delivery log page holds at most.
pub const PAGE_SIZE_MAX: i64 = 500;

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRow {
    pub tenant_id: TenantId,
    pub id: i64,
    pub url: String,
    /// Kinds delivered; empty means all.
    pub event_kinds: Vec<String>,
    pub secret: Secret,
    pub previous_secret: Option<Secret>,
    pub previous_secret_until: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl WebhookRow {
    pub fn matches(&self, kind: &str) -> bool {
        self.event_kinds.is_empty() || self.event_kinds.iter().any(|k| k == kind)
    }

    /// The secrets a delivery made at `now` is signed with: the current one, and the previous one
    /// while its grace period lasts.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.expose()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until) {
            if now < until {
                secrets.push(previous.expose());
            }
        }
        secrets
    }
}

fn webhook_of_row(row: &AnyRow) -> WebhookRow {
    let kinds: String = row.get("event_kinds");
    WebhookRow {
        tenant_id: TenantId(row.get("tenant_id")),
        id: row.get("id"),
        url: row.get("url"),
        event_kinds: serde_json::from_str(&kinds).unwrap_or_default(),
        secret: Secret(row.get("secret")),
        previous_secret: row.get::<Option<String>, _>("previous_secret").map(Secret),
        previous_secret_until: row.get::<Option<i64>, _>("previous_secret_until").map(micros::to_ts),
        created_at: micros::to_ts(row.get("created_at")),
    }
}

const WEBHOOK_COLUMNS: &str =
    "tenant_id, id, url, event_kinds, secret, previous_secret, previous_secret_until, created_at";

/// Creates a subscription; returns it with its secret, which the caller shows once.
pub async fn create_webhook(
    pool: &AnyPool,
    tenant: TenantId,
    url: &str,
    event_kinds: &[String],
    now: Timestamp,
) -> Result<WebhookRow> {
    let mut tx = pool.begin().await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE tenant_id = $1 AND deleted_at IS NULL")
        .bind(tenant.0)
        .fetch_one(&mut *tx)
        .await?;
    if count >= WEBHOOKS_PER_TENANT_MAX {
        return Err(NotifyError::invalid(
            "webhooks_limit_reached",
            "url",
            format!("a tenant may have at most {WEBHOOKS_PER_TENANT_MAX} webhooks"),
        ));
    }
    let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM webhooks WHERE tenant_id = $1")
        .bind(tenant.0)
        .fetch_one(&mut *tx)
        .await?;
    let secret = signing::generate_secret();
    sqlx::query(
        "INSERT INTO webhooks (tenant_id, id, url, event_kinds, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.0)
    .bind(id)
    .bind(url)
    .bind(serde_json::to_string(event_kinds).expect("strings serialize"))
    .bind(&secret)
    .bind(micros::of(now))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(WebhookRow {
        tenant_id: tenant,
        id,
        url: url.into(),
        event_kinds: event_kinds.to_vec(),
        secret: Secret(secret),
        previous_secret: None,
        previous_secret_until: None,
        created_at: now,
    })
}

pub async fn webhooks(conn: &mut AnyConnection, tenant: TenantId) -> Result<Vec<WebhookRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id"
    ))
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(webhook_of_row).collect())
}

pub async fn webhook(conn: &mut AnyConnection, tenant: TenantId, id: i64) -> Result<Option<WebhookRow>> {
    let row = sqlx::query(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
    ))
    .bind(tenant.0)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(webhook_of_row))
}

fn webhook_not_found(id: i64) -> NotifyError {
    NotifyError::NotFound { code: "webhook_not_found", detail: format!("webhook {id} does not exist") }
}

/// Deletes a subscription. Its pending deliveries die at their next attempt.
pub async fn delete_webhook(pool: &AnyPool, tenant: TenantId, id: i64, now: Timestamp) -> Result<()> {
    let done =
        sqlx::query("UPDATE webhooks SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 AND deleted_at IS NULL")
            .bind(micros::of(now))
            .bind(tenant.0)
            .bind(id)
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(webhook_not_found(id));
    }
    Ok(())
}

/// A new secret for a subscription; the old one keeps signing (beside the new) for `SECRET_GRACE`.
pub async fn rotate_webhook_secret(pool: &AnyPool, tenant: TenantId, id: i64, now: Timestamp) -> Result<WebhookRow> {
    let secret = signing::generate_secret();
    let until = now.checked_add(SECRET_GRACE).expect("times stay in range");
    let done = sqlx::query(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $1, secret = $2
         WHERE tenant_id = $3 AND id = $4 AND deleted_at IS NULL",
    )
    .bind(micros::of(until))
    .bind(&secret)
    .bind(tenant.0)
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(webhook_not_found(id));
    }
    let mut conn = pool.acquire().await?;
    webhook(&mut conn, tenant, id).await?.ok_or_else(|| webhook_not_found(id))
}

pub async fn put_channel(
    pool: &AnyPool,
    tenant: TenantId,
    channel: Channel,
    config: &ChannelConfig,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notify_channels (tenant_id, channel, config, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, channel) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
    )
    .bind(tenant.0)
    .bind(channel.as_str())
    .bind(serde_json::to_string(config).expect("configs serialize"))
    .bind(micros::of(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete_channel(pool: &AnyPool, tenant: TenantId, channel: Channel) -> Result<bool> {
    let done = sqlx::query("DELETE FROM notify_channels WHERE tenant_id = $1 AND channel = $2")
        .bind(tenant.0)
        .bind(channel.as_str())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Every configured channel of a tenant.
pub async fn channels(conn: &mut AnyConnection, tenant: TenantId) -> Result<Vec<(Channel, ChannelConfig)>> {
    let rows = sqlx::query("SELECT channel, config FROM notify_channels WHERE tenant_id = $1 ORDER BY channel")
        .bind(tenant.0)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            let channel: String = row.get(0);
            let config: String = row.get(1);
            let channel = Channel::parse(&channel).ok_or_else(|| corrupt("notify_channels", &channel))?;
            let config = serde_json::from_str(&config).map_err(|e| corrupt("notify_channels", &e.to_string()))?;
            Ok((channel, config))
        })
        .collect()
}

fn corrupt(table: &'static str, detail: &str) -> NotifyError {
    NotifyError::Store(kopilka_store::StoreError::Corrupt { table, detail: detail.to_string() })
}

/// A template with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateRow {
    pub event_kind: String,
    pub channel: Channel,
    pub language: String,
    #[serde(flatten)]
    pub template: Template,
    pub updated_at: Timestamp,
}

pub async fn put_template(pool: &AnyPool, tenant: TenantId, row: &TemplateRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO notify_templates (tenant_id, event_kind, channel, language, subject, text_body, html_body, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, event_kind, channel, language) DO UPDATE SET
           subject = excluded.subject, text_body = excluded.text_body, html_body = excluded.html_body,
           updated_at = excluded.updated_at",
    )
    .bind(tenant.0)
    .bind(&row.event_kind)
    .bind(row.channel.as_str())
    .bind(&row.language)
    .bind(&row.template.subject)
    .bind(&row.template.text)
    .bind(&row.template.html)
    .bind(micros::of(row.updated_at))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete_template(
    pool: &AnyPool,
    tenant: TenantId,
    kind: &str,
    channel: Channel,
    language: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "DELETE FROM notify_templates WHERE tenant_id = $1 AND event_kind = $2 AND channel = $3 AND language = $4",
    )
    .bind(tenant.0)
    .bind(kind)
    .bind(channel.as_str())
    .bind(language)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn templates(conn: &mut AnyConnection, tenant: TenantId) -> Result<Vec<TemplateRow>> {
    let rows = sqlx::query(
        "SELECT event_kind, channel, language, subject, text_body, html_body, updated_at FROM notify_templates
         WHERE tenant_id = $1 ORDER BY event_kind, channel, language",
    )
    .bind(tenant.0)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let channel: String = row.get(1);
            Ok(TemplateRow {
                event_kind: row.get(0),
                channel: Channel::parse(&channel).ok_or_else(|| corrupt("notify_templates", &channel))?,
                language: row.get(2),
                template: Template { subject: row.get(3), text: row.get(4), html: row.get(5) },
                updated_at: micros::to_ts(row.get(6)),
            })
        })
        .collect()
}

/// A tenant's settings and unsubscribe key, created with defaults on first use.
pub async fn settings(conn: &mut AnyConnection, tenant: TenantId, now: Timestamp) -> Result<(Settings, Vec<u8>)> {
    let row = sqlx::query("SELECT document, unsubscribe_key FROM notify_settings WHERE tenant_id = $1")
        .bind(tenant.0)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        let document: String = row.get(0);
        let settings = serde_json::from_str(&document).map_err(|e| corrupt("notify_settings", &e.to_string()))?;
        return Ok((settings, row.get(1)));
    }
    let settings = Settings::default();
    let key = signing::generate_unsubscribe_key();
    // Two first uses at once both try; the loser's key is discarded and the winner's read back.
    sqlx::query(
        "INSERT INTO notify_settings (tenant_id, document, unsubscribe_key, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant.0)
    .bind(serde_json::to_string(&settings).expect("settings serialize"))
    .bind(&key)
    .bind(micros::of(now))
    .execute(&mut *conn)
    .await?;
    let key: Vec<u8> = sqlx::query_scalar("SELECT unsubscribe_key FROM notify_settings WHERE tenant_id = $1")
        .bind(tenant.0)
        .fetch_one(&mut *conn)
        .await?;
    Ok((settings, key))
}

pub async fn put_settings(pool: &AnyPool, tenant: TenantId, settings: &Settings, now: Timestamp) -> Result<()> {
    let mut conn = pool.acquire().await?;
    self::settings(&mut conn, tenant, now).await?;
    sqlx::query("UPDATE notify_settings SET document = $1, updated_at = $2 WHERE tenant_id = $3")
        .bind(serde_json::to_string(settings).expect("settings serialize"))
        .bind(micros::of(now))
        .bind(tenant.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn put_contact(
    pool: &AnyPool,
    tenant: TenantId,
    member: MemberId,
    channel: Channel,
    address: &str,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO member_contacts (tenant_id, member_id, channel, address, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, member_id, channel) DO UPDATE SET address = excluded.address, updated_at = excluded.updated_at",
    )
    .bind(tenant.0)
    .bind(member.0)
    .bind(channel.as_str())
    .bind(address)
    .bind(micros::of(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn contact(
    conn: &mut AnyConnection,
    tenant: TenantId,
    member: MemberId,
    channel: Channel,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT address FROM member_contacts WHERE tenant_id = $1 AND member_id = $2 AND channel = $3",
    )
    .bind(tenant.0)
    .bind(member.0)
    .bind(channel.as_str())
    .fetch_optional(&mut *conn)
    .await?)
}

/// Records an opt-out; repeating it changes nothing.
pub async fn opt_out(
    conn: &mut AnyConnection,
    tenant: TenantId,
    member: MemberId,
    channel: Channel,
    source: &str,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO member_opt_outs (tenant_id, member_id, channel, source, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.0)
    .bind(member.0)
    .bind(channel.as_str())
    .bind(source)
    .bind(micros::of(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Withdraws an opt-out (the member subscribed again).
pub async fn opt_in(pool: &AnyPool, tenant: TenantId, member: MemberId, channel: Channel) -> Result<()> {
    sqlx::query("DELETE FROM member_opt_outs WHERE tenant_id = $1 AND member_id = $2 AND channel = $3")
        .bind(tenant.0)
        .bind(member.0)
        .bind(channel.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn opted_out(conn: &mut AnyConnection, tenant: TenantId, member: MemberId) -> Result<Vec<Channel>> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT channel FROM member_opt_outs WHERE tenant_id = $1 AND member_id = $2")
            .bind(tenant.0)
            .bind(member.0)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.iter().filter_map(|c| Channel::parse(c)).collect())
}

/// Messages (not webhooks, not suppressed) created for a member in `[from, to)`.
pub async fn messages_in(
    conn: &mut AnyConnection,
    tenant: TenantId,
    member: MemberId,
    from: Timestamp,
    to: Timestamp,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE tenant_id = $1 AND member_id = $2 AND created_at >= $3 AND created_at < $4
         AND channel <> 'webhook' AND status <> 'suppressed'",
    )
    .bind(tenant.0)
    .bind(member.0)
    .bind(micros::of(from))
    .bind(micros::of(to))
    .fetch_one(&mut *conn)
    .await?)
}

/// Forgets what notifications hold of an erased member: the addresses and rendered messages of
/// their deliveries (unsent ones are suppressed), their contacts. Webhook bodies hold only ids and
/// stay; the log keeps each delivery's id, kind and status.
pub async fn erase_member(conn: &mut AnyConnection, tenant: TenantId, member: MemberId, now: Timestamp) -> Result<()> {
    sqlx::query(
        "UPDATE deliveries SET target = '', payload = '{}', last_error = NULL, updated_at = $1,
           status = CASE WHEN status IN ('pending', 'failed') THEN 'suppressed' ELSE status END,
           reason = CASE WHEN status IN ('pending', 'failed') THEN 'member_erased' ELSE reason END,
           next_attempt_at = CASE WHEN status IN ('pending', 'failed') THEN NULL ELSE next_attempt_at END
         WHERE tenant_id = $2 AND member_id = $3 AND channel <> 'webhook'",
    )
    .bind(micros::of(now))
    .bind(tenant.0)
    .bind(member.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM member_contacts WHERE tenant_id = $1 AND member_id = $2")
        .bind(tenant.0)
        .bind(member.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: String,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub event_id: i64,
    pub event_kind: String,
    pub member_id: Option<i64>,
    /// `webhook`, `email`, `sms`, `push` or `messenger`.
    pub channel: String,
    /// The webhook's id, or the channel's address for the member.
    pub target: String,
    #[serde(skip)]
    pub payload: String,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

const DELIVERY_COLUMNS: &str = "tenant_id, id, event_id, event_kind, member_id, channel, target, payload, status, reason, attempts, next_attempt_at, last_error, created_at, updated_at, delivered_at";

fn delivery_of_row(row: &AnyRow) -> Result<DeliveryRow> {
    let status: String = row.get("status");
    Ok(DeliveryRow {
        tenant_id: TenantId(row.get("tenant_id")),
        id: row.get("id"),
        event_id: row.get("event_id"),
        event_kind: row.get("event_kind"),
        member_id: row.get("member_id"),
        channel: row.get("channel"),
        target: row.get("target"),
        payload: row.get("payload"),
        status: DeliveryStatus::parse(&status).ok_or_else(|| corrupt("deliveries", &status))?,
        reason: row.get("reason"),
        attempts: row.get("attempts"),
        next_attempt_at: row.get::<Option<i64>, _>("next_attempt_at").map(micros::to_ts),
        last_error: row.get("last_error"),
        created_at: micros::to_ts(row.get("created_at")),
        updated_at: micros::to_ts(row.get("updated_at")),
        delivered_at: row.get::<Option<i64>, _>("delivered_at").map(micros::to_ts),
    })
}

/// Inserts deliveries; an id already present is left as it is (fanning out twice adds nothing).
pub async fn insert_deliveries(conn: &mut AnyConnection, rows: &[DeliveryRow]) -> Result<()> {
    // SQLite allows 32,766 bound parameters per statement; 16 per row.
    for chunk in rows.chunks(2_000) {
        let mut query = Builder::new(format!("INSERT INTO deliveries ({DELIVERY_COLUMNS}) "));
        query.push_values(chunk, |mut b, d| {
            b.push_bind(d.tenant_id.0)
                .push_bind(&d.id)
                .push_bind(d.event_id)
                .push_bind(&d.event_kind)
                .push_bind(d.member_id)
                .push_bind(&d.channel)
                .push_bind(&d.target)
                .push_bind(&d.payload)
                .push_bind(d.status.as_str())
                .push_bind(&d.reason)
                .push_bind(d.attempts)
                .push_bind(d.next_attempt_at.map(micros::of))
                .push_bind(&d.last_error)
                .push_bind(micros::of(d.created_at))
                .push_bind(micros::of(d.updated_at))
                .push_bind(d.delivered_at.map(micros::of));
        });
        query.push(" ON CONFLICT DO NOTHING");
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Claims up to `limit` deliveries due at `now` (pending, or failed with their next attempt come),
/// oldest due first: their next attempt moves to `lease_until`, so no other dispatcher (of this
/// node or another) takes them while this one sends. A dispatcher that dies mid-send leaves them
/// to be retried once the lease lapses, under the same delivery ids.
pub async fn claim_due(
    conn: &mut AnyConnection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    // A read first: the claim is a write, and on SQLite every write outside the writer contends
    // with it for the database lock, the loser sleeping in SQLite's busy handler (steps of up to
    // 100 ms). Nothing due, nothing written.
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM deliveries WHERE status IN ('pending', 'failed') AND next_attempt_at <= $1 LIMIT 1",
    )
    .bind(micros::of(now))
    .fetch_optional(&mut *conn)
    .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    let sql = format!(
        // A join on the key, not `(tenant_id, id) IN (…)`: SQLite answers the IN by walking every
        // delivery of the tenant.
        "UPDATE deliveries SET next_attempt_at = $1 FROM (
           SELECT tenant_id AS t, id AS i FROM deliveries WHERE status IN ('pending', 'failed') AND next_attempt_at <= $2
           ORDER BY next_attempt_at LIMIT $3{}) AS due
         WHERE deliveries.tenant_id = due.t AND deliveries.id = due.i
         RETURNING {DELIVERY_COLUMNS}",
        Backend::of(conn).skip_locked()
    );
    let rows =
        sqlx::query(&sql).bind(micros::of(lease_until)).bind(micros::of(now)).bind(limit).fetch_all(&mut *conn).await?;
    let mut due = rows.iter().map(delivery_of_row).collect::<Result<Vec<_>>>()?;
    due.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(due)
}

/// What an attempt changed in a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub id: String,
    pub tenant_id: TenantId,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
}

/// Records a batch of attempts in one transaction.
pub async fn record_attempts(conn: &mut AnyConnection, results: &[AttemptResult], now: Timestamp) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let begin = Backend::of(conn).begin_write();
    let mut tx = sqlx::Connection::begin_with(&mut *conn, begin).await?;
    for result in results {
        sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4,
             delivered_at = COALESCE($5, delivered_at), updated_at = $6 WHERE tenant_id = $7 AND id = $8",
        )
        .bind(result.status.as_str())
        .bind(result.attempts)
        .bind(result.next_attempt_at.map(micros::of))
        .bind(&result.last_error)
        .bind(result.delivered_at.map(micros::of))
        .bind(micros::of(now))
        .bind(result.tenant_id.0)
        .bind(&result.id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn delivery(pool: &AnyPool, tenant: TenantId, id: &str) -> Result<Option<DeliveryRow>> {
    let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(delivery_of_row).transpose()
}

/// Filters of the delivery log.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_kind: Option<String>,
    pub event_id: Option<i64>,
    pub member_id: Option<i64>,
    pub channel: Option<String>,
}

/// The delivery log, newest first.
pub async fn deliveries(
    pool: &AnyPool,
    tenant: TenantId,
    filter: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    let mut query = Builder::new(format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = "));
    query.push_bind(tenant.0);
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(kind) = &filter.event_kind {
        query.push(" AND event_kind = ").push_bind(kind.clone());
    }
    if let Some(event) = filter.event_id {
        query.push(" AND event_id = ").push_bind(event);
    }
    if let Some(member) = filter.member_id {
        query.push(" AND member_id = ").push_bind(member);
    }
    if let Some(channel) = &filter.channel {
        query.push(" AND channel = ").push_bind(channel.clone());
    }
    query.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit.clamp(1, PAGE_SIZE_MAX));
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(delivery_of_row).collect()
}

/// Queues a delivery again now, with a fresh set of attempts, keeping its id (so a receiver that
/// already accepted it can tell). Suppressed deliveries stay suppressed: replay is not a way
/// around a member's consent.
pub async fn replay(pool: &AnyPool, tenant: TenantId, id: &str, now: Timestamp) -> Result<DeliveryRow> {
    let current = delivery(pool, tenant, id).await?.ok_or_else(|| NotifyError::NotFound {
        code: "delivery_not_found",
        detail: format!("delivery {id} does not exist"),
    })?;
    if current.status == DeliveryStatus::Suppressed {
        return Err(NotifyError::invalid(
            "delivery_suppressed",
            "id",
            format!("delivery {id} was suppressed ({}); it is not sent", current.reason.unwrap_or_default()),
        ));
    }
    sqlx::query(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4",
    )
    .bind(micros::of(now))
    .bind(micros::of(now))
    .bind(tenant.0)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(delivery(pool, tenant, id).await?.expect("the delivery was just read"))
}

/// A stored first answer to a configuration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: Vec<u8>,
}

pub async fn stored_answer(pool: &AnyPool, tenant: TenantId, key: &str) -> Result<Option<StoredAnswer>> {
    let row =
        sqlx::query("SELECT request_hash, status, body FROM notify_idempotency WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.0)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|row| StoredAnswer { request_hash: row.get(0), status: row.get::<i64, _>(1) as u16, body: row.get(2) }))
}

/// Stores the first answer; a concurrent first answer under the same key wins and this one is dropped.
pub async fn store_answer(
    pool: &AnyPool,
    tenant: TenantId,
    key: &str,
    answer: &StoredAnswer,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notify_idempotency (tenant_id, key, request_hash, status, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.0)
    .bind(key)
    .bind(&answer.request_hash)
    .bind(answer.status as i64)
    .bind(&answer.body)
    .bind(micros::of(now))
    .execute(pool)
    .await?;
    Ok(())
}
