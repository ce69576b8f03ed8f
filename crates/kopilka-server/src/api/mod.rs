//! The HTTP API under `/v1`, its OpenAPI document, and the operational endpoints.

pub mod admin;
pub mod checkout;
pub mod events;
pub mod ledger;
pub mod members;
pub mod notify;
pub mod partners;
pub mod referrals;
pub mod rewards;
pub mod tiers;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::BODY_BYTES_MAX;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kopilka", description = "A customer loyalty platform: members, points ledger, purchases and returns."),
    paths(
        members::create, members::get, members::update, members::search, members::merge,
        members::export, members::erase, members::change_loyalty, tiers::progress, events::record,
        ledger::purchase, ledger::get_purchase, ledger::return_purchase, ledger::redeem, ledger::adjust,
        ledger::balance, ledger::history, ledger::lots,
        admin::create_tenant, admin::create_api_key, admin::create_program, admin::update_program,
        admin::list_programs, admin::get_program, admin::run_job,
        checkout::quote, checkout::get, checkout::confirm, checkout::cancel,
        checkout::create_campaign, checkout::list_campaigns, checkout::get_campaign, checkout::patch_campaign,
        checkout::add_codes, checkout::list_codes, checkout::get_coupon,
        referrals::member_referrals,
        partners::create, partners::list, partners::get_partner, partners::create_key, partners::earn,
        partners::redeem, partners::partner_return, partners::settlement, partners::member_balance, partners::exchange,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/tenants", post(admin::create_tenant))
        .route("/api-keys", post(admin::create_api_key))
        .route("/programs", post(admin::create_program).get(admin::list_programs))
        .route("/programs/{id}", get(admin::get_program).put(admin::update_program))
        .route("/jobs/{job}/run", post(admin::run_job))
        .route("/members", post(members::create).get(members::search))
        .route("/members/{id}", get(members::get).patch(members::update))
        .route("/members/{id}/merge", post(members::merge))
        .route("/members/{id}/loyalty", axum::routing::patch(members::change_loyalty))
        .route("/members/{id}/tier", get(tiers::progress))
        .route("/members/{id}/events", post(events::record))
        .route("/members/{id}/export", get(members::export))
        .route("/members/{id}/erase", post(members::erase))
        .route("/members/{id}/balance", get(ledger::balance))
        .route("/members/{id}/history", get(ledger::history))
        .route("/members/{id}/lots", get(ledger::lots))
        .route("/purchases", post(ledger::purchase))
        .route("/purchases/{id}", get(ledger::get_purchase))
        .route("/returns", post(ledger::return_purchase))
        .route("/redemptions", post(ledger::redeem))
        .route("/adjustments", post(ledger::adjust))
        .route("/checkouts", post(checkout::quote))
        .route("/checkouts/{id}", get(checkout::get))
        .route("/checkouts/{id}/confirm", post(checkout::confirm))
        .route("/checkouts/{id}/cancel", post(checkout::cancel))
        .route("/coupon-campaigns", post(checkout::create_campaign).get(checkout::list_campaigns))
        .route("/coupon-campaigns/{id}", get(checkout::get_campaign).patch(checkout::patch_campaign))
        .route("/coupon-campaigns/{id}/codes", post(checkout::add_codes).get(checkout::list_codes))
        .route("/coupons/{code}", get(checkout::get_coupon))
        .merge(notify::routes())
        .merge(rewards::routes())
        .merge(referrals::routes())
        .merge(partners::routes());
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn(refuse_nul_in_uri))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The member a request names, or `member_not_found`.
pub(crate) async fn member_or_404(
    state: &AppState,
    tenant: kopilka_core::TenantId,
    id: i64,
) -> Result<kopilka_store::MemberRow, ApiError> {
    state
        .store
        .member(tenant, kopilka_core::MemberId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("member_not_found", format!("member {id} does not exist")))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(notify::NotifyDoc::openapi());
    doc.merge(rewards::RewardsDoc::openapi());
    Json(doc)
}

async fn healthz(State(state): State<AppState>) -> Response {
    if !state.writer.is_running() {
        return ApiError::Unavailable("the writer has stopped; see the log".into()).into_response();
    }
    match state.store.tenant_count().await {
        Ok(_) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Err(error) => ApiError::Unavailable(format!("the store does not answer: {error}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route; see /v1/openapi.json")
}

/// A path or query that decodes to U+0000 is refused whatever the route (see `nul_refused`).
async fn refuse_nul_in_uri(request: Request, next: Next) -> Response {
    let uri = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or_default();
    if uri.contains("%00") {
        return crate::extract::nul_refused("uri").into_response();
    }
    next.run(request).await
}

/// Records each request's latency by route and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "-".into());
    let response = next.run(request).await;
    state.metrics.observe_request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}
