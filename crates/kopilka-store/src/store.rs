//! Opening the store (SQLite in a data directory, or PostgreSQL at a URL), and the administrative
//! writes (tenants, keys, programs) that are rare enough to run as plain transactions.
//!
//! SQLite runs in WAL mode with `synchronous = FULL`: a commit returns only once the WAL is on
//! disk, so an answer sent after commit is durable. The writer's own connection is the exception:
//! it commits with `NORMAL` and its answers wait for an fsync run beside it (`wal_sync`). PostgreSQL commits are durable by its own
//! defaults (`synchronous_commit = on`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use kopilka_core::{Program, ProgramId, TenantId};
use sha2::{Digest, Sha256};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::sql::Backend;
use crate::{micros, ApiKeyRow, Result, Role, StoreError};

/// Where the store lives. Its `Debug` is `describe()`, which leaves a URL's password out.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// `kopilka.db` in this directory: the embedded default.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by `postgres://` URL: the store of many nodes.
    Postgres(String),
}

impl Database {
    /// `url` when given (`postgres://…` or `sqlite://DIR`), else SQLite in `data_dir`.
    pub fn choose(data_dir: &Path, url: Option<&str>) -> std::result::Result<Database, String> {
        match url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(Database::Sqlite(data_dir.to_path_buf())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url.to_string()))
            }
            Some(url) if url.starts_with("sqlite://") => Ok(Database::Sqlite(PathBuf::from(&url["sqlite://".len()..]))),
            Some(url) => Err(format!(
                "--database: {url:?} is neither postgres://USER@HOST:PORT/DB nor sqlite://DATA_DIR; \
                 leave it out to use SQLite in --data-dir"
            )),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    /// The location without credentials, for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(dir) => format!("SQLite in {}", dir.join("kopilka.db").display()),
            Database::Postgres(url) => {
                let host = url.rsplit('@').next().unwrap_or(url).trim_start_matches("postgres://");
                format!("PostgreSQL at {}", host.trim_start_matches("postgresql://"))
            }
        }
    }

    /// A pool of `connections_max` connections (`connections_min` kept open). SQLite connections
    /// open through `wal_buffer`'s VFS and get the store's pragmas; the database must exist unless
    /// `create` (SQLite only).
    pub async fn pool(&self, connections_min: u32, connections_max: u32, create: bool) -> Result<AnyPool> {
        sqlx::any::install_default_drivers();
        let options = AnyPoolOptions::new().max_connections(connections_max).min_connections(connections_min);
        match self {
            Database::Sqlite(dir) => {
                if create {
                    std::fs::create_dir_all(dir).map_err(|error| StoreError::Corrupt {
                        table: "-",
                        detail: format!("cannot create data directory {}: {error}", dir.display()),
                    })?;
                }
                let mode = if create { "rwc" } else { "rw" };
                let mut url = format!("sqlite:{}?mode={mode}", url_path(&dir.join("kopilka.db")));
                // Through the WAL-buffering VFS: a commit's frames go to the WAL in a few large
                // writes instead of two per page (`wal_buffer`).
                if let Some(vfs) = crate::wal_buffer::vfs() {
                    url.push_str("&vfs=");
                    url.push_str(vfs);
                }
                let pool = options
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?;
                Ok(pool)
            }
            Database::Postgres(url) => Ok(options.acquire_timeout(Duration::from_secs(30)).connect(url).await?),
        }
    }
}

/// A file path as the path of a `sqlite:` URL (no `//`, so no part of it is read as a host):
/// percent-encoded where URLs need it, as sqlx's SQLite driver decodes it.
fn url_path(path: &Path) -> String {
    let mut encoded = String::new();
    for byte in path.to_string_lossy().bytes() {
        if byte.is_ascii_control() || b" \"#<>?`{}%".contains(&byte) || !byte.is_ascii() {
            encoded.push_str(&format!("%{byte:02X}"));
        } else {
            encoded.push(byte as char);
        }
    }
    encoded
}

impl From<&Path> for Database {
    fn from(data_dir: &Path) -> Database {
        Database::Sqlite(data_dir.to_path_buf())
    }
}

impl From<&PathBuf> for Database {
    fn from(data_dir: &PathBuf) -> Database {
        Database::Sqlite(data_dir.clone())
    }
}

impl From<&Database> for Database {
    fn from(database: &Database) -> Database {
        database.clone()
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Every SQLite connection's settings. `busy_timeout` makes a second writer (an import beside a
/// server, a consumer of the outbox) wait for the lock instead of failing. `cache_spill = OFF`
/// keeps a transaction's pages in memory until it commits (the cache grows past `cache_size` for a
/// large one): `wal_buffer` may hold WAL frames only while a commit writes them, and a frame
/// spilled mid-transaction would sit in its buffer past a rollback.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
    PRAGMA busy_timeout = 30000; PRAGMA cache_size = -65536; PRAGMA cache_spill = OFF;
    PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 10000;";

/// The store: a pool for reads (the writer takes one more connection of its own).
#[derive(Debug, Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    pub database: Database,
}

/// Readers in the pool; the writer holds one more connection of its own.
const READ_CONNECTIONS_MAX: u32 = 8;

impl Store {
    /// Opens (creating if needed) the SQLite database `kopilka.db` in `data_dir` and migrates it.
    pub async fn open(data_dir: &Path) -> Result<Store> {
        Store::connect(&Database::Sqlite(data_dir.to_path_buf())).await
    }

    /// Opens the store at `database` and runs its migrations.
    pub async fn connect(database: &Database) -> Result<Store> {
        let pool = database.pool(1, READ_CONNECTIONS_MAX + 1, true).await?;
        match database {
            Database::Sqlite(_) => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Database::Postgres(_) => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store { pool, backend: database.backend(), database: database.clone() })
    }

    /// A connection of its own for the writer, outside the readers' pool. On PostgreSQL it is
    /// opened afresh, so its socket belongs to the runtime that asks for it (the writer runs on a
    /// runtime of its own, and a socket's readiness is delivered by the runtime that opened it);
    /// SQLite's connections work on a thread of their own and any runtime may use them.
    pub async fn writer_connection(&self) -> Result<AnyConnection> {
        match &self.database {
            Database::Postgres(url) => Ok(<AnyConnection as sqlx::Connection>::connect(url).await?),
            Database::Sqlite(_) => Ok(self.pool.acquire().await?.detach()),
        }
    }

    pub async fn tenant_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tenants").fetch_one(&self.pool).await?)
    }

    pub async fn tenant_exists(&self, tenant: TenantId) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant.0)
            .fetch_optional(&self.pool)
            .await?;
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
            "SELECT key_hash, tenant_id, role, name FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
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

    pub async fn create_tenant(conn: &mut AnyConnection, name: &str, now: Timestamp) -> Result<TenantId> {
        let id: i64 = sqlx::query_scalar("INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING id")
            .bind(name)
            .bind(micros::of(now))
            .fetch_one(&mut *conn)
            .await?;
        Ok(TenantId(id))
    }

    pub async fn insert_api_key(
        conn: &mut AnyConnection,
        key_hash: &[u8],
        tenant: Option<TenantId>,
        role: Role,
        name: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query("INSERT INTO api_keys (key_hash, tenant_id, role, name, created_at) VALUES ($1, $2, $3, $4, $5)")
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
        conn: &mut AnyConnection,
        tenant: TenantId,
        id: Option<ProgramId>,
        program: &Program,
        now: Timestamp,
    ) -> Result<Option<(ProgramId, i64)>> {
        let document = serde_json::to_string(program).expect("programs serialize");
        let (id, version) = match id {
            Some(id) => {
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM programs WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant.0)
                        .bind(id.0)
                        .fetch_optional(&mut *conn)
                        .await?;
                let Some(current) = current else { return Ok(None) };
                sqlx::query(
                    "UPDATE programs SET version = $1, document = $2, updated_at = $3 WHERE tenant_id = $4 AND id = $5",
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
                let next: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM programs WHERE tenant_id = $1")
                        .bind(tenant.0)
                        .fetch_one(&mut *conn)
                        .await?;
                sqlx::query(
                    "INSERT INTO programs (tenant_id, id, version, document, created_at, updated_at) VALUES ($1, $2, 1, $3, $4, $5)",
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
        sqlx::query("INSERT INTO program_versions (tenant_id, program_id, version, document, created_at) VALUES ($1, $2, $3, $4, $5)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_may_hold_any_characters_a_path_can() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("my data #1 ?x {ü} 100%");
        let store = Store::open(&dir).await.expect("opens");
        assert_eq!(store.tenant_count().await.unwrap(), 0);
        assert!(dir.join("kopilka.db").exists(), "the file is where it was asked to be");
    }

    #[test]
    fn a_postgres_url_is_described_without_its_password() {
        let database =
            Database::choose(Path::new("x"), Some("postgres://kopilka:s3cret@db.local:5432/loyalty")).unwrap();
        assert_eq!(format!("{database:?}"), "PostgreSQL at db.local:5432/loyalty");
        let refused = Database::choose(Path::new("x"), Some("mysql://x")).unwrap_err();
        assert!(refused.starts_with("--database:"), "{refused}");
    }
}
