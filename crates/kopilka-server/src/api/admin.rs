//! Tenants, API keys, programs and jobs.

use axum::extract::{Path, State};
use axum::Json;
use kopilka_core::{Program, ProgramId};
use kopilka_store::Role;

use crate::app::AppState;
use crate::auth::{generate_key, Caller, ADMINS, READERS};
use crate::dto::{ApiKeyCreated, ApiKeyRequest, JobReport, ProgramView, TenantCreated, TenantRequest};
use crate::engine::{Command, Reply};
use crate::error::{ApiError, Problem};
use crate::extract::Mutation;
use crate::jobs::Job;

#[utoipa::path(post, path = "/v1/tenants", tag = "admin", request_body = TenantRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = TenantCreated), (status = 403, body = Problem)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<TenantRequest>,
) -> Result<Reply, ApiError> {
    caller.require(&[Role::Operator])?;
    let name = m.body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request("validation_failed", "name", "must be 1 to 200 characters"));
    }
    let command = Command::CreateTenant { name, admin_key: generate_key() };
    state.submit(kopilka_core::TenantId(0), m.idempotency, command).await
}

#[utoipa::path(post, path = "/v1/api-keys", tag = "admin", request_body = ApiKeyRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = ApiKeyCreated), (status = 403, body = Problem)))]
pub async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<ApiKeyRequest>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    if m.body.role == Role::Operator {
        return Err(ApiError::bad_request(
            "validation_failed",
            "role",
            "operator keys are made with `kopilka keys create`",
        ));
    }
    let name = m.body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request("validation_failed", "name", "must be 1 to 200 characters"));
    }
    let command = Command::CreateApiKey { key: generate_key(), role: m.body.role, name };
    state.submit(tenant, m.idempotency, command).await
}

fn checked(program: Program) -> Result<Program, ApiError> {
    program.validate().map_err(|issues| {
        let first = &issues[0];
        let all: Vec<String> = issues.iter().map(ToString::to_string).collect();
        ApiError::BadRequest { code: "validation_failed", detail: all.join("; "), field: Some(first.path.clone()) }
    })?;
    Ok(program)
}

#[utoipa::path(post, path = "/v1/programs", tag = "admin", request_body = Program,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 201, body = ProgramView), (status = 400, body = Problem)))]
pub async fn create_program(
    State(state): State<AppState>,
    caller: Caller,
    m: Mutation<Program>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = Command::SaveProgram { id: None, program: Box::new(checked(m.body)?) };
    state.submit(tenant, m.idempotency, command).await
}

/// Replaces a program with a new version; purchases keep the version they were evaluated with.
#[utoipa::path(put, path = "/v1/programs/{id}", tag = "admin", request_body = Program,
    params(("Idempotency-Key" = String, Header, description = "unique per intended change")),
    responses((status = 200, body = ProgramView), (status = 404, body = Problem)))]
pub async fn update_program(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    m: Mutation<Program>,
) -> Result<Reply, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let command = Command::SaveProgram { id: Some(ProgramId(id)), program: Box::new(checked(m.body)?) };
    state.submit(tenant, m.idempotency, command).await
}

#[utoipa::path(get, path = "/v1/programs", tag = "admin", responses((status = 200, body = Vec<ProgramView>)))]
pub async fn list_programs(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ProgramView>>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let programs = state.store.programs_of(tenant).await?;
    Ok(Json(programs.into_iter().map(|(id, version, program)| ProgramView { id: id.0, version, program }).collect()))
}

#[utoipa::path(get, path = "/v1/programs/{id}", tag = "admin",
    responses((status = 200, body = ProgramView), (status = 404, body = Problem)))]
pub async fn get_program(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<ProgramView>, ApiError> {
    let tenant = caller.tenant_for(READERS)?;
    let (id, version, program) = state
        .store
        .program(tenant, Some(ProgramId(id)))
        .await?
        .ok_or_else(|| ApiError::not_found("program_not_found", format!("program {id} does not exist")))?;
    Ok(Json(ProgramView { id: id.0, version, program }))
}

/// Runs a job now for the caller's tenant (`activate` or `expiry`). Safe to repeat.
#[utoipa::path(post, path = "/v1/jobs/{job}/run", tag = "admin",
    params(("job" = String, Path, description = "activate or expiry")),
    responses((status = 200, body = JobReport), (status = 404, body = Problem)))]
pub async fn run_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(job): Path<String>,
) -> Result<Json<JobReport>, ApiError> {
    let tenant = caller.tenant_for(ADMINS)?;
    let job = Job::parse(&job).ok_or_else(|| {
        ApiError::not_found("job_not_found", "jobs are activate, expiry, tiers, referrals, events and reminders")
    })?;
    Ok(Json(crate::jobs::run_once(&state.store, &state.writer, &*state.clock, job, Some(tenant)).await?))
}
