//! Notifications over the API: webhooks (`/v1/webhooks`), the delivery log and replay
//! (`/v1/deliveries`), channel configuration (`/v1/channels`), templates and their preview
//! (`/v1/templates`), settings (`/v1/notifications/settings`), members' contacts and opt-outs,
//! and the unsubscribe link (`/v1/unsubscribe`).
//!
//! These requests configure; they do not move points, so they do not go through the writer. Their
//! idempotency is kept in `notify_idempotency`: the first answer under a key is stored (with any
//! new secret redacted, as for API keys) and returned to a retry.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use kopilka_core::{MemberId, TenantId};
use kopilka_notify::config::{self as channel_config};
use kopilka_notify::db::{self, DeliveryFilter, StoredAnswer, TemplateRow};
use kopilka_notify::settings::Settings;
use kopilka_notify::templates::{self, Template};
use kopilka_notify::{signing, Channel, DeliveryStatus, NotifyError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{Caller, ADMINS, READERS, TILLS};
use crate::engine::Idempotency;
use crate::error::{ApiError, Problem};
use crate::extract::{parse_json, Mutation, Query};

/// The longest contact address (push token, chat id) accepted.
const ADDRESS_LEN_MAX: usize = 4_096;

/// The OpenAPI document of these routes, merged into the API's.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_webhook,
        list_webhooks,
        delete_webhook,
        rotate_secret,
        list_deliveries,
        get_delivery,
        replay_delivery,
        list_channels,
        put_channel,
        delete_channel,
        list_templates,
        put_template,
        delete_template,
        preview_template,
        get_settings,
        put_settings,
        put_contact,
        list_opt_outs,
        opt_out,
        opt_in,
        unsubscribe,
    ),
    components(schemas(WebhookRequest, ContactRequest, OptOutRequest))
)]
pub struct NotifyDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create_webhook).get(list_webhooks))
        .route("/webhooks/{id}", delete(delete_webhook))
        .route("/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/replay", post(replay_delivery))
        .route("/channels", get(list_channels))
        .route("/channels/{channel}", put(put_channel).delete(delete_channel))
        .route("/templates", get(list_templates))
        .route("/templates/preview", post(preview_template))
        .route("/templates/{kind}/{channel}/{language}", put(put_template).delete(delete_template))
        .route("/notifications/settings", get(get_settings).put(put_settings))
        .route("/members/{id}/contacts/{channel}", put(put_contact))
        .route("/members/{id}/opt-outs", get(list_opt_outs).post(opt_out))
        .route("/members/{id}/opt-outs/{channel}", delete(opt_in))
        .route("/unsubscribe", get(unsubscribe).post(unsubscribe))
}

/// An error of this module: the API's own, or a 422 naming the field at fault.
pub enum NotifyApiError {
    Api(ApiError),
    Unprocessable { code: &'static str, field: String, detail: String },
}

impl From<ApiError> for NotifyApiError {
    fn from(error: ApiError) -> Self {
        NotifyApiError::Api(error)
    }
}

impl From<NotifyError> for NotifyApiError {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::Invalid { code, field, detail } => NotifyApiError::Unprocessable { code, field, detail },
            NotifyError::NotFound { code, detail } => NotifyApiError::Api(ApiError::not_found(code, detail)),
            other => NotifyApiError::Api(ApiError::Internal(other.to_string())),
        }
    }
}

impl From<kopilka_store::StoreError> for NotifyApiError {
    fn from(error: kopilka_store::StoreError) -> Self {
        NotifyApiError::Api(error.into())
    }
}

impl From<sqlx::Error> for NotifyApiError {
    fn from(error: sqlx::Error) -> Self {
        NotifyApiError::Api(ApiError::Internal(error.to_string()))
    }
}

impl IntoResponse for NotifyApiError {
    fn into_response(self) -> Response {
        match self {
            NotifyApiError::Api(error) => error.into_response(),
            NotifyApiError::Unprocessable { code, field, detail } => {
                let problem = Problem {
                    kind: format!("https://kopilka.dev/problems/{code}"),
                    title: "Unprocessable Entity".into(),
                    status: 422,
                    code: code.into(),
                    detail,
                    field: Some(field),
                };
                let body = serde_json::to_vec(&problem).expect("problems serialize");
                (StatusCode::UNPROCESSABLE_ENTITY, [(header::CONTENT_TYPE, "application/problem+json")], body)
                    .into_response()
            }
        }
    }
}

type Answer = Result<Response, NotifyApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Runs `change` once per idempotency key: a retry with the same request gets the stored answer,
/// the key with another request is refused. `stored` is what is kept (the answer with its secrets
/// redacted), when it differs from what is sent.
async fn once<F>(state: &AppState, tenant: TenantId, idempotency: &Idempotency, change: F) -> Answer
where
    F: std::future::Future<Output = Result<(StatusCode, Value, Option<Value>), NotifyApiError>>,
{
    let pool = &state.store.pool;
    if let Some(stored) = db::stored_answer(pool, tenant, &idempotency.key).await? {
        if stored.request_hash != idempotency.request_hash {
            return Err(ApiError::IdempotencyKeyReused { key: idempotency.key.clone() }.into());
        }
        let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], stored.body).into_response();
        response.headers_mut().insert("idempotency-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    let (status, body, stored) = change.await?;
    let answer = StoredAnswer {
        request_hash: idempotency.request_hash.clone(),
        status: status.as_u16(),
        body: stored.as_ref().unwrap_or(&body).to_string().into_bytes(),
    };
    db::store_answer(pool, tenant, &idempotency.key, &answer, state.clock.now()).await?;
    Ok(json_response(status, &body))
}

fn channel_of(text: &str) -> Result<Channel, NotifyApiError> {
    Channel::parse(text).ok_or_else(|| {
        ApiError::not_found("channel_not_found", format!("no channel {text:?}; channels: email, sms, push, messenger"))
            .into()
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    pub url: String,
    #[serde(default)]
    pub event_kinds: Vec<String>,
}

fn webhook_view(row: &db::WebhookRow) -> Value {
    json!({
        "id": row.id,
        "url": row.url,
        "event_kinds": row.event_kinds,
        "created_at": row.created_at,
        "previous_secret_valid_until": row.previous_secret_until,
    })
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "notifications", request_body = WebhookRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, description = "the subscription with its secret, shown this once"), (status = 422, body = Problem)))]
async fn create_webhook(State(state): State<AppState>, caller: Caller, m: Mutation<WebhookRequest>) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let url = m.body.url.trim().to_string();
    kopilka_notify::webhook::validate_subscription(&url, &m.body.event_kinds)?;
    once(&state, tenant, &m.idempotency, async {
        let row = db::create_webhook(&state.store.pool, tenant, &url, &m.body.event_kinds, state.clock.now()).await?;
        let mut body = webhook_view(&row);
        let mut stored = body.clone();
        body["secret"] = json!(row.secret.expose());
        stored["secret"] = json!("shown once, when the webhook was created");
        Ok((StatusCode::CREATED, body, Some(stored)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "notifications", responses((status = 200, description = "subscriptions, without secrets")))]
async fn list_webhooks(State(state): State<AppState>, caller: Caller) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let mut conn = state.store.pool.acquire().await?;
    let rows = db::webhooks(&mut conn, tenant).await?;
    Ok(json_response(StatusCode::OK, &json!({ "items": rows.iter().map(webhook_view).collect::<Vec<_>>() })))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "notifications",
    params(("id" = i64, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200), (status = 404, body = Problem)))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    once(&state, tenant, &m.idempotency, async {
        db::delete_webhook(&state.store.pool, tenant, id, state.clock.now()).await?;
        Ok((StatusCode::OK, json!({ "id": id, "deleted": true }), None))
    })
    .await
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "notifications",
    params(("id" = i64, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, description = "the new secret, shown this once; the old one signs too for 24 hours")))]
async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    once(&state, tenant, &m.idempotency, async {
        let row = db::rotate_webhook_secret(&state.store.pool, tenant, id, state.clock.now()).await?;
        let mut body = webhook_view(&row);
        let mut stored = body.clone();
        body["secret"] = json!(row.secret.expose());
        stored["secret"] = json!("shown once, when the secret was rotated");
        Ok((StatusCode::OK, body, Some(stored)))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    pub status: Option<String>,
    /// An event kind (`points_earn`) or an event id.
    pub event: Option<String>,
    pub member_id: Option<i64>,
    pub channel: Option<String>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/deliveries", tag = "notifications",
    params(("status" = Option<String>, Query), ("event" = Option<String>, Query, description = "an event kind or id"),
           ("member_id" = Option<i64>, Query), ("channel" = Option<String>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, description = "the delivery log, newest first")))]
async fn list_deliveries(State(state): State<AppState>, caller: Caller, Query(query): Query<DeliveryQuery>) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(DeliveryStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("validation_failed", "status", "one of pending, delivered, failed, dead, suppressed")
        })?),
    };
    let mut filter =
        DeliveryFilter { status, member_id: query.member_id, channel: query.channel, ..Default::default() };
    if let Some(event) = query.event {
        match event.parse::<i64>() {
            Ok(id) => filter.event_id = Some(id),
            Err(_) => filter.event_kind = Some(event),
        }
    }
    let rows = db::deliveries(&state.store.pool, tenant, &filter, query.limit.unwrap_or(100)).await?;
    Ok(json_response(StatusCode::OK, &json!({ "items": rows })))
}

#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200), (status = 404, body = Problem)))]
async fn get_delivery(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let row = db::delivery(&state.store.pool, tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery_not_found", format!("delivery {id} does not exist")))?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&row).expect("rows serialize")))
}

#[utoipa::path(post, path = "/v1/deliveries/{id}/replay", tag = "notifications",
    params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn replay_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    once(&state, tenant, &m.idempotency, async {
        let row = db::replay(&state.store.pool, tenant, &id, state.clock.now()).await?;
        Ok((StatusCode::OK, serde_json::to_value(&row).expect("rows serialize"), None))
    })
    .await
}

#[utoipa::path(get, path = "/v1/channels", tag = "notifications", responses((status = 200, description = "configurations with secrets as ***")))]
async fn list_channels(State(state): State<AppState>, caller: Caller) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let mut conn = state.store.pool.acquire().await?;
    let items: Vec<Value> = db::channels(&mut conn, tenant)
        .await?
        .iter()
        .map(|(channel, config)| json!({ "channel": channel, "config": config.redacted() }))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "items": items })))
}

#[utoipa::path(put, path = "/v1/channels/{channel}", tag = "notifications", request_body = Object,
    params(("channel" = String, Path, description = "email, sms, push or messenger"), ("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200), (status = 422, body = Problem)))]
async fn put_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(channel): Path<String>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let channel = channel_of(&channel)?;
    let config = channel_config::parse(channel, &m.body)?;
    once(&state, tenant, &m.idempotency, async {
        db::put_channel(&state.store.pool, tenant, channel, &config, state.clock.now()).await?;
        Ok((StatusCode::OK, json!({ "channel": channel, "config": config.redacted() }), None))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/channels/{channel}", tag = "notifications",
    params(("channel" = String, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200)))]
async fn delete_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(channel): Path<String>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let channel = channel_of(&channel)?;
    once(&state, tenant, &m.idempotency, async {
        let deleted = db::delete_channel(&state.store.pool, tenant, channel).await?;
        Ok((StatusCode::OK, json!({ "channel": channel, "deleted": deleted }), None))
    })
    .await
}

#[utoipa::path(get, path = "/v1/templates", tag = "notifications", responses((status = 200)))]
async fn list_templates(State(state): State<AppState>, caller: Caller) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let mut conn = state.store.pool.acquire().await?;
    let rows = db::templates(&mut conn, tenant).await?;
    Ok(json_response(StatusCode::OK, &json!({ "items": rows })))
}

#[utoipa::path(put, path = "/v1/templates/{kind}/{channel}/{language}", tag = "notifications", request_body = Object,
    params(("kind" = String, Path), ("channel" = String, Path), ("language" = String, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200), (status = 422, body = Problem)))]
async fn put_template(
    State(state): State<AppState>,
    caller: Caller,
    Path((kind, channel, language)): Path<(String, String, String)>,
    m: Mutation<Template>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let channel = channel_of(&channel)?;
    templates::validate(&kind, channel, &language, &m.body)?;
    once(&state, tenant, &m.idempotency, async {
        let row = TemplateRow { event_kind: kind, channel, language, template: m.body, updated_at: state.clock.now() };
        db::put_template(&state.store.pool, tenant, &row).await?;
        Ok((StatusCode::OK, serde_json::to_value(&row).expect("rows serialize"), None))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/templates/{kind}/{channel}/{language}", tag = "notifications",
    params(("kind" = String, Path), ("channel" = String, Path), ("language" = String, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200)))]
async fn delete_template(
    State(state): State<AppState>,
    caller: Caller,
    Path((kind, channel, language)): Path<(String, String, String)>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    let channel = channel_of(&channel)?;
    once(&state, tenant, &m.idempotency, async {
        let deleted = db::delete_template(&state.store.pool, tenant, &kind, channel, &language).await?;
        Ok((StatusCode::OK, json!({ "deleted": deleted }), None))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub event_kind: String,
    pub channel: String,
    #[serde(default)]
    pub language: Option<String>,
    /// A template to try before saving it; without one, the stored template is rendered.
    #[serde(default)]
    pub template: Option<Template>,
}

/// Renders a template against a sample event of its kind. Changes nothing, so it needs no
/// idempotency key.
#[utoipa::path(post, path = "/v1/templates/preview", tag = "notifications", request_body = Object,
    responses((status = 200, description = "the template rendered against a sample event"), (status = 422, body = Problem)))]
async fn preview_template(State(state): State<AppState>, caller: Caller, body: axum::body::Bytes) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let request: PreviewRequest = parse_json(&body)?;
    let channel = channel_of(&request.channel)?;
    let mut conn = state.store.pool.acquire().await?;
    let (settings, _) = db::settings(&mut conn, tenant, state.clock.now()).await?;
    let language = request.language.unwrap_or(settings.language);
    let template = match request.template {
        Some(template) => template,
        None => db::templates(&mut conn, tenant)
            .await?
            .into_iter()
            .find(|t| t.event_kind == request.event_kind && t.channel == channel && t.language == language)
            .map(|t| t.template)
            .ok_or_else(|| ApiError::not_found("template_not_found", "no such template; send one in `template`"))?,
    };
    templates::validate(&request.event_kind, channel, &language, &template)?;
    let context = templates::sample_context(&request.event_kind, channel).expect("validate checked the kind");
    let rendered = templates::render(&template, &context)
        .map_err(|(part, detail)| NotifyError::invalid("template_render_failed", part, detail))?;
    Ok(json_response(StatusCode::OK, &json!({ "rendered": rendered, "context": context })))
}

#[utoipa::path(get, path = "/v1/notifications/settings", tag = "notifications", responses((status = 200)))]
async fn get_settings(State(state): State<AppState>, caller: Caller) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    let mut conn = state.store.pool.acquire().await?;
    let (settings, _) = db::settings(&mut conn, tenant, state.clock.now()).await?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&settings).expect("settings serialize")))
}

#[utoipa::path(put, path = "/v1/notifications/settings", tag = "notifications", request_body = Object,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200), (status = 422, body = Problem)))]
async fn put_settings(State(state): State<AppState>, caller: Caller, m: Mutation<Settings>) -> Answer {
    let tenant = caller.tenant_for(ADMINS)?;
    m.body.validate()?;
    once(&state, tenant, &m.idempotency, async {
        db::put_settings(&state.store.pool, tenant, &m.body, state.clock.now()).await?;
        Ok((StatusCode::OK, serde_json::to_value(&m.body).expect("settings serialize"), None))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    pub address: String,
}

#[utoipa::path(put, path = "/v1/members/{id}/contacts/{channel}", tag = "notifications", request_body = ContactRequest,
    params(("id" = i64, Path), ("channel" = String, Path, description = "push or messenger"), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200)))]
async fn put_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, channel)): Path<(i64, String)>,
    m: Mutation<ContactRequest>,
) -> Answer {
    let tenant = caller.tenant_for(TILLS)?;
    let channel = channel_of(&channel)?;
    if !matches!(channel, Channel::Push | Channel::Messenger) {
        return Err(NotifyError::invalid(
            "validation_failed",
            "channel",
            "email and SMS go to the profile's email and phone; contacts are for push and messenger",
        )
        .into());
    }
    let address = m.body.address.trim().to_string();
    if address.is_empty() || address.len() > ADDRESS_LEN_MAX {
        return Err(NotifyError::invalid(
            "validation_failed",
            "address",
            format!("must be 1 to {ADDRESS_LEN_MAX} bytes"),
        )
        .into());
    }
    crate::api::member_or_404(&state, tenant, id).await?;
    once(&state, tenant, &m.idempotency, async {
        db::put_contact(&state.store.pool, tenant, MemberId(id), channel, &address, state.clock.now()).await?;
        Ok((StatusCode::OK, json!({ "member_id": id, "channel": channel }), None))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    pub channel: String,
}

#[utoipa::path(get, path = "/v1/members/{id}/opt-outs", tag = "notifications", params(("id" = i64, Path)), responses((status = 200)))]
async fn list_opt_outs(State(state): State<AppState>, caller: Caller, Path(id): Path<i64>) -> Answer {
    let tenant = caller.tenant_for(READERS)?;
    crate::api::member_or_404(&state, tenant, id).await?;
    let mut conn = state.store.pool.acquire().await?;
    let channels = db::opted_out(&mut conn, tenant, MemberId(id)).await?;
    Ok(json_response(StatusCode::OK, &json!({ "member_id": id, "opted_out": channels })))
}

#[utoipa::path(post, path = "/v1/members/{id}/opt-outs", tag = "notifications", request_body = OptOutRequest,
    params(("id" = i64, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 201)))]
async fn opt_out(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<OptOutRequest>,
) -> Answer {
    let tenant = caller.tenant_for(TILLS)?;
    let channel = channel_of(&m.body.channel)?;
    crate::api::member_or_404(&state, tenant, id).await?;
    once(&state, tenant, &m.idempotency, async {
        let mut conn = state.store.pool.acquire().await?;
        db::opt_out(&mut conn, tenant, MemberId(id), channel, "api", state.clock.now()).await?;
        Ok((StatusCode::CREATED, json!({ "member_id": id, "channel": channel, "opted_out": true }), None))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/members/{id}/opt-outs/{channel}", tag = "notifications",
    params(("id" = i64, Path), ("channel" = String, Path), ("Idempotency-Key" = String, Header, description = "unique per intended change")), responses((status = 200)))]
async fn opt_in(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, channel)): Path<(i64, String)>,
    m: Mutation<Value>,
) -> Answer {
    let tenant = caller.tenant_for(TILLS)?;
    let channel = channel_of(&channel)?;
    crate::api::member_or_404(&state, tenant, id).await?;
    once(&state, tenant, &m.idempotency, async {
        db::opt_in(&state.store.pool, tenant, MemberId(id), channel).await?;
        Ok((StatusCode::OK, json!({ "member_id": id, "channel": channel, "opted_out": false }), None))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct UnsubscribeQuery {
    pub token: String,
}

/// The link in every message: no API key, the signed token is the authority. Repeating it is
/// harmless, which is what a link clicked twice needs. POST is RFC 8058's one-click unsubscribe
/// (`List-Unsubscribe-Post`), which mail clients use without opening the page.
#[utoipa::path(get, path = "/v1/unsubscribe", tag = "notifications", security(()),
    params(("token" = String, Query, description = "the signed token of an unsubscribe link")),
    responses((status = 200, description = "an HTML page"), (status = 400, body = Problem)))]
async fn unsubscribe(State(state): State<AppState>, Query(query): Query<UnsubscribeQuery>) -> Answer {
    let invalid = || ApiError::bad_request("unsubscribe_token_invalid", "token", "the unsubscribe link is not valid");
    let (tenant, member, channel, signature) = signing::parse_unsubscribe_token(&query.token).ok_or_else(invalid)?;
    let channel = Channel::parse(&channel).ok_or_else(invalid)?;
    let tenant = TenantId(tenant);
    if !state.store.tenant_exists(tenant).await? {
        return Err(invalid().into());
    }
    let mut conn = state.store.pool.acquire().await?;
    let (_, key) = db::settings(&mut conn, tenant, state.clock.now()).await?;
    if !signing::verify_unsubscribe_token(&key, tenant.0, member, channel.as_str(), &signature) {
        return Err(invalid().into());
    }
    db::opt_out(&mut conn, tenant, MemberId(member), channel, "link", state.clock.now()).await?;
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribed</title><p>You will no longer receive {} messages from this program.</p>",
        channel.as_str()
    );
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}
