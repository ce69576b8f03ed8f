//! Custom events about a member (`review_written`, `app_installed`…), which the program's event
//! rules turn into points. The decision is the writer's (`bonuses`); this only authorizes.

use axum::extract::{Path, State};
use kopilka_core::MemberId;

use crate::app::AppState;
use crate::auth::{Caller, TILLS};
use crate::bonuses::{CustomEventRequest, CustomEventResponse};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::Mutation;

#[utoipa::path(post, path = "/v1/members/{id}/events", tag = "members", request_body = CustomEventRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per event")),
    responses((status = 201, body = CustomEventResponse),
        (status = 422, body = Problem, description = "unknown_event_type: the program has no rule for the type"),
        (status = 404, body = Problem)))]
pub async fn record(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<CustomEventRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(TILLS)?;
    state.submit(tenant, m.idempotency, Command::MemberEvent { member_id: MemberId(id), event: m.body }).await
}
