//! Opening the SQLite store, and the administrative writes (tenants, keys, programs) that are rare
//! enough to run as plain transactions.
//!
//! SQLite runs in WAL mode with `synchronous = FULL`: a commit returns only once the WAL is on
//! disk, so an answer sent after commit is durable.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use kopilka_core::{Program, ProgramId, TenantId};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::{micros, ApiKeyRow, Result, Role, StoreError};

/// The SQLite store: a pool for reads and the one connection the writer holds.
#[derive(Debug, Clone)]
pub struct Store {
    pub pool: SqlitePool,
}

/// Readers in the pool; the writer holds one more connection of its own.
const READ_CONNECTIONS_MAX: u32 = 8;

impl Store {
    /// Opens (creating if needed) the database `kopilka.db` in `data_dir` and runs the migrations.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|error| StoreError::Corrupt {
            table: "-",
            detail: format!("cannot create data directory {}: {error}", data_dir.display()),
        })?;
        let url = format!("sqlite://{}", data_dir.join("kopilka.db").display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "10000");
        let pool = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS_MAX + 1)
            .min_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store { pool })
    }

    /// A connection of its own for the writer, outside the readers' pool.
    pub async fn writer_connection(&self) -> Result<SqliteConnection> {
        Ok(self.pool.acquire().await?.detach())
    }

    pub async fn tenant_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tenants").fetch_one(&self.pool).await?)
    }

    pub async fn tenant_exists(&self, tenant: TenantId) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = ?").bind(tenant.0).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    /// Every program's current version, for the writer's cache.
    pub async fn programs(&self) -> Result<Vec<(TenantId, ProgramId, i64, Program)>> {
        let rows = sqlx::query("SELECT tenant_id, id, version, document FROM programs ORDER BY tenant_id, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let (id, version, program) = crate::reads::program_of_row(row)?;
                Ok((TenantId(row.get("tenant_id")), id, version, program))
            })
            .collect()
    }

    pub async fn find_api_key(&self, key_hash: &[u8]) -> Result<Option<ApiKeyRow>> {
        let row = sqlx::query(
            "SELECT key_hash, tenant_id, role, name FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let role: String = row.get(2);
            Ok(ApiKeyRow {
                key_hash: row.get(0),
                tenant_id: row.get::<Option<i64>, _>(1).map(TenantId),
                role: Role::parse(&role).ok_or(StoreError::Corrupt { table: "api_keys", detail: role })?,
                name: row.get(3),
            })
        })
        .transpose()
    }
}

/// The SHA-256 of an API key, which is all the store keeps of it.
pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Administrative writes, run inside the writer's transaction.
pub mod admin {
    use super::*;

    pub async fn create_tenant(conn: &mut SqliteConnection, name: &str, now: Timestamp) -> Result<TenantId> {
        let id: i64 = sqlx::query_scalar("INSERT INTO tenants (name, created_at) VALUES (?, ?) RETURNING id")
            .bind(name)
            .bind(micros::of(now))
            .fetch_one(&mut *conn)
            .await?;
        Ok(TenantId(id))
    }

    pub async fn insert_api_key(
        conn: &mut SqliteConnection,
        key_hash: &[u8],
        tenant: Option<TenantId>,
        role: Role,
        name: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query("INSERT INTO api_keys (key_hash, tenant_id, role, name, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(key_hash)
            .bind(tenant.map(|t| t.0))
            .bind(role.as_str())
            .bind(name)
            .bind(micros::of(now))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Creates a program (id None) or a new version of one; returns its id and version.
    pub async fn save_program(
        conn: &mut SqliteConnection,
        tenant: TenantId,
        id: Option<ProgramId>,
        program: &Program,
        now: Timestamp,
    ) -> Result<Option<(ProgramId, i64)>> {
        let document = serde_json::to_string(program).expect("programs serialize");
        let (id, version) = match id {
            Some(id) => {
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM programs WHERE tenant_id = ? AND id = ?")
                        .bind(tenant.0)
                        .bind(id.0)
                        .fetch_optional(&mut *conn)
                        .await?;
                let Some(current) = current else { return Ok(None) };
                sqlx::query(
                    "UPDATE programs SET version = ?, document = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
                )
                .bind(current + 1)
                .bind(&document)
                .bind(micros::of(now))
                .bind(tenant.0)
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
                (id, current + 1)
            }
            None => {
                let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM programs WHERE tenant_id = ?")
                    .bind(tenant.0)
                    .fetch_one(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO programs (tenant_id, id, version, document, created_at, updated_at) VALUES (?, ?, 1, ?, ?, ?)",
                )
                .bind(tenant.0)
                .bind(next)
                .bind(&document)
                .bind(micros::of(now))
                .bind(micros::of(now))
                .execute(&mut *conn)
                .await?;
                (ProgramId(next), 1)
            }
        };
        sqlx::query("INSERT INTO program_versions (tenant_id, program_id, version, document, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(tenant.0)
            .bind(id.0)
            .bind(version)
            .bind(&document)
            .bind(micros::of(now))
            .execute(&mut *conn)
            .await?;
        Ok(Some((id, version)))
    }
}
