//! From events to deliveries: one pass over each tenant's outbox past its cursor.
//!
//! What a pass decides for a tenant is written in one `BEGIN IMMEDIATE` transaction together with
//! that tenant's cursor advance: a crash before the commit leaves the cursor where it was and the next pass
//! redoes the same events; after it, the deliveries exist and the events are not read again. So an
//! event is fanned out exactly once, and a delivery's id (event and target) is stable.
//!
//! For each event: one delivery per webhook whose filter matches; and for each channel with a
//! template for the event's kind, one message to the member, or a `suppressed` row saying why not.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use kopilka_core::{MemberId, TenantId};
use kopilka_store::outbox::{self, OutboxEvent};
use kopilka_store::MemberRow;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::config::ChannelConfig;
use crate::db::{self, DeliveryRow, TemplateRow, WebhookRow};
use crate::settings::Settings;
use crate::templates::{self, MemberView};
use crate::{signing, Channel, DeliveryStatus, Result};

/// Events read per tenant per pass: bounds the transaction, and so how long the writer may wait.
pub const EVENTS_PER_PASS_MAX: i64 = 1_000;

/// What the policy knows about a tenant during a pass.
struct TenantPolicy {
    webhooks: Vec<WebhookRow>,
    templates: HashMap<(String, Channel), Vec<TemplateRow>>,
    channels: BTreeMap<Channel, ChannelConfig>,
    settings: Settings,
    unsubscribe_key: Vec<u8>,
}

impl TenantPolicy {
    fn has_template(&self, kind: &str, channel: Channel) -> bool {
        self.templates.contains_key(&(kind.to_string(), channel))
    }

    /// The member's template for a kind and channel: in the member's language, else the tenant's
    /// default, else English, else any there is.
    fn template(&self, kind: &str, channel: Channel, member_language: Option<&str>) -> Option<&TemplateRow> {
        let found = self.templates.get(&(kind.to_string(), channel))?;
        [member_language, Some(self.settings.language.as_str()), Some("en")]
            .into_iter()
            .flatten()
            .find_map(|language| found.iter().find(|t| t.language == language))
            .or_else(|| found.first())
    }
}

/// Fans out up to `EVENTS_PER_PASS_MAX` events of every tenant; returns how many were consumed.
///
/// Each tenant's window of events is planned first, outside any transaction (the events, the
/// policy, the members, the frequency caps: all reads), and only the writes take the write lock:
/// the deliveries and the cursor advance. Reading a thousand events under the lock held it 5-10 ms
/// every pass, and the engine's writer could not begin a batch meanwhile. Under the lock the
/// cursor is read again: if another pass (another node's) moved it since, the plan is dropped and
/// the next pass plans again, so an event still becomes deliveries once.
///
/// A `member_erased` event ends a window. It is handled alone, under the lock from the start as
/// before: the member's messages are erased, then its own deliveries are planned, reading the
/// member's contacts as the erasure left them.
pub async fn pass(conn: &mut AnyConnection, now: Timestamp) -> Result<usize> {
    let mut consumed = 0;
    for (tenant, mut cursor) in outbox::cursors(conn).await? {
        let mut budget = EVENTS_PER_PASS_MAX;
        while budget > 0 {
            let Some((events, last)) = window(conn, tenant, cursor, budget, now).await? else { break };
            consumed += events;
            budget -= events as i64;
            cursor = last;
        }
    }
    Ok(consumed)
}

/// Fans out the window of up to `limit` events of `tenant` after `cursor`: returns how many events
/// it consumed and where the cursor is now, or None when there were none or another pass moved the
/// cursor first.
async fn window(
    conn: &mut AnyConnection,
    tenant: TenantId,
    cursor: i64,
    limit: i64,
    now: Timestamp,
) -> Result<Option<(usize, i64)>> {
    let mut events = outbox::events_after(conn, tenant, cursor, limit).await?;
    let Some(first) = events.first() else { return Ok(None) };
    let erased = erased_member(first);
    let window = match erased {
        Some(_) => 1,
        None => events.iter().position(|e| erased_member(e).is_some()).unwrap_or(events.len()),
    };
    events.truncate(window);
    let last = events.last().expect("a window holds an event").id;
    let policy = load_policy(conn, tenant, now).await?;
    let planned = match erased {
        None => Some(deliveries(conn, &policy, &events, now).await?),
        Some(_) => None,
    };
    // A sqlx transaction rolls back when dropped, so a pass cancelled at shutdown leaves nothing
    // half-done and no lock held. On PostgreSQL the lock makes one node at a time fan out, so an
    // event becomes deliveries once cluster-wide.
    let mut tx = kopilka_store::sql::begin_locked(conn, kopilka_store::sql::Lock::Fanout).await?;
    let current = outbox::cursors(&mut tx).await?.into_iter().find(|(t, _)| *t == tenant).map_or(0, |(_, c)| c);
    if current != cursor {
        return Ok(None);
    }
    let rows = match (planned, erased) {
        (Some(rows), _) => rows,
        (None, Some(member)) => {
            db::erase_member(&mut tx, tenant, member, now).await?;
            deliveries(&mut tx, &policy, &events, now).await?
        }
        (None, None) => unreachable!("a window without an erasure is planned"),
    };
    db::insert_deliveries(&mut tx, &rows).await?;
    outbox::advance_cursor(&mut tx, tenant, last, now).await?;
    tx.commit().await?;
    Ok(Some((events.len(), last)))
}

fn erased_member(event: &OutboxEvent) -> Option<MemberId> {
    event.member_id.filter(|_| event.kind == "member_erased")
}

/// The deliveries of `events`: webhooks' and members' (suppressed ones with their reason).
async fn deliveries(
    conn: &mut AnyConnection,
    policy: &TenantPolicy,
    events: &[OutboxEvent],
    now: Timestamp,
) -> Result<Vec<DeliveryRow>> {
    let mut rows = Vec::new();
    let mut sent_today: HashMap<MemberId, i64> = HashMap::new();
    for event in events {
        webhook_deliveries(policy, event, now, &mut rows);
        member_messages(conn, policy, event, now, &mut sent_today, &mut rows).await?;
    }
    Ok(rows)
}

async fn load_policy(conn: &mut AnyConnection, tenant: TenantId, now: Timestamp) -> Result<TenantPolicy> {
    let mut templates: HashMap<(String, Channel), Vec<TemplateRow>> = HashMap::new();
    for row in db::templates(conn, tenant).await? {
        templates.entry((row.event_kind.clone(), row.channel)).or_default().push(row);
    }
    // The shipped templates fill in where the tenant saved none for a kind and channel.
    let mut builtin: HashMap<(String, Channel), Vec<TemplateRow>> = HashMap::new();
    for (kind, channel, language, template) in templates::builtin() {
        let key = (kind.to_string(), channel);
        if !templates.contains_key(&key) {
            let row = TemplateRow {
                event_kind: kind.into(),
                channel,
                language: language.into(),
                template,
                updated_at: Timestamp::UNIX_EPOCH,
            };
            builtin.entry(key).or_default().push(row);
        }
    }
    templates.extend(builtin);
    let (settings, unsubscribe_key) = db::settings(conn, tenant, now).await?;
    Ok(TenantPolicy {
        webhooks: db::webhooks(conn, tenant).await?,
        templates,
        channels: db::channels(conn, tenant).await?.into_iter().collect(),
        settings,
        unsubscribe_key,
    })
}

fn delivery(
    event: &OutboxEvent,
    suffix: &str,
    channel: &str,
    target: String,
    payload: String,
    now: Timestamp,
) -> DeliveryRow {
    DeliveryRow {
        id: format!("dlv_{}_{}_{suffix}", event.tenant_id.0, event.id),
        tenant_id: event.tenant_id,
        event_id: event.id,
        event_kind: event.kind.clone(),
        member_id: event.member_id.map(|m| m.0),
        channel: channel.into(),
        target,
        payload,
        status: DeliveryStatus::Pending,
        reason: None,
        attempts: 0,
        next_attempt_at: Some(now),
        last_error: None,
        created_at: now,
        updated_at: now,
        delivered_at: None,
    }
}

fn webhook_deliveries(policy: &TenantPolicy, event: &OutboxEvent, now: Timestamp, rows: &mut Vec<DeliveryRow>) {
    let data: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    for webhook in policy.webhooks.iter().filter(|w| w.matches(&event.kind)) {
        let suffix = format!("w{}", webhook.id);
        let id = format!("dlv_{}_{}_{suffix}", event.tenant_id.0, event.id);
        let body = json!({
            "delivery_id": id,
            "tenant_id": event.tenant_id.0,
            "event_id": event.id,
            "kind": event.kind,
            "occurred_at": event.occurred_at,
            "data": data,
        });
        rows.push(delivery(event, &suffix, "webhook", webhook.id.to_string(), body.to_string(), now));
    }
}

/// The message as stored in a delivery's payload: rendered once, sent as is on every attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub to: String,
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub unsubscribe_url: String,
}

fn address_of(member: &MemberRow, channel: Channel, contact: Option<String>) -> Option<String> {
    match channel {
        Channel::Email => member.profile.email.clone(),
        Channel::Sms => member.profile.phone.clone(),
        Channel::Push | Channel::Messenger => contact,
    }
}

async fn member_messages(
    conn: &mut AnyConnection,
    policy: &TenantPolicy,
    event: &OutboxEvent,
    now: Timestamp,
    sent_today: &mut HashMap<MemberId, i64>,
    rows: &mut Vec<DeliveryRow>,
) -> Result<()> {
    let Some(member_id) = event.member_id else { return Ok(()) };
    let channels: Vec<Channel> = Channel::ALL.into_iter().filter(|c| policy.has_template(&event.kind, *c)).collect();
    if channels.is_empty() {
        return Ok(());
    }
    let member = outbox::member(conn, event.tenant_id, member_id).await?;
    let opted_out = db::opted_out(conn, event.tenant_id, member_id).await?;
    let profile = member.as_ref().map(|m| &m.profile);
    let zone = policy.settings.zone_of(profile.and_then(|p| p.time_zone.as_deref()));
    let language = profile.and_then(|p| p.language.as_deref());
    let (day_start, day_end) = policy.settings.day_of_in(&zone, now);
    for channel in channels {
        let template = policy.template(&event.kind, channel, language).expect("channels with a template only");
        let contact = match channel {
            Channel::Push | Channel::Messenger => db::contact(conn, event.tenant_id, member_id, channel).await?,
            _ => None,
        };
        let address = member.as_ref().and_then(|m| address_of(m, channel, contact));
        let mut row = delivery(
            event,
            channel.as_str(),
            channel.as_str(),
            address.clone().unwrap_or_default(),
            String::new(),
            now,
        );
        let suppress = |row: &mut DeliveryRow, reason: String| {
            row.status = DeliveryStatus::Suppressed;
            row.reason = Some(reason);
            row.next_attempt_at = None;
        };
        let Some(member) = member.as_ref() else {
            suppress(&mut row, "member_unknown".into());
            rows.push(row);
            continue;
        };
        if !channel.consented(&member.profile.consents) {
            suppress(&mut row, "no_consent".into());
        } else if opted_out.contains(&channel) {
            suppress(&mut row, "opted_out".into());
        } else if address.is_none() {
            suppress(&mut row, "no_address".into());
        } else if !policy.channels.contains_key(&channel) {
            suppress(&mut row, "channel_not_configured".into());
        } else {
            let count = match sent_today.get(&member_id) {
                Some(count) => *count,
                None => db::messages_in(conn, event.tenant_id, member_id, day_start, day_end).await?,
            };
            if count >= i64::from(policy.settings.daily_cap_per_member) {
                suppress(&mut row, "frequency_cap".into());
            } else {
                let token = signing::unsubscribe_token(
                    &policy.unsubscribe_key,
                    event.tenant_id.0,
                    member_id.0,
                    channel.as_str(),
                );
                let unsubscribe_url =
                    format!("{}/v1/unsubscribe?token={token}", policy.settings.public_base_url.trim_end_matches('/'));
                let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
                let view = MemberView {
                    id: member_id.0,
                    name: member.profile.name.clone().unwrap_or_default(),
                    email: member.profile.email.clone().unwrap_or_default(),
                    phone: member.profile.phone.clone().unwrap_or_default(),
                    card: member.profile.card.clone().unwrap_or_default(),
                    city: member.profile.city.clone().unwrap_or_default(),
                };
                let occurred_at = event.occurred_at.to_string();
                let context =
                    templates::context(event.id, &event.kind, &occurred_at, &payload, &view, channel, &unsubscribe_url);
                match templates::render(&template.template, &context) {
                    Ok(rendered) => {
                        let message = Message {
                            to: address.clone().unwrap_or_default(),
                            subject: rendered.subject,
                            text: rendered.text,
                            html: rendered.html,
                            unsubscribe_url,
                        };
                        row.payload = serde_json::to_string(&message).expect("messages serialize");
                        row.next_attempt_at = Some(policy.settings.release_at_in(&zone, now));
                        sent_today.insert(member_id, count + 1);
                    }
                    Err((part, error)) => suppress(&mut row, format!("template_failed: {part}: {error}")),
                }
            }
        }
        rows.push(row);
    }
    Ok(())
}
