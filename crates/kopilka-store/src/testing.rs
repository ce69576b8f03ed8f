//! Stores for the test suites of every crate (feature `testing`): one suite runs on both stores.
//!
//! Tests written inside `both_stores! { … }` run twice, as `NAME::sqlite` and `NAME::postgres`;
//! inside them `test_store()` gives a store of the running half's kind.
//!
//! A SQLite store lives in a temporary directory. A PostgreSQL store is a database of its own,
//! created on the server at `KOPILKA_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and dropped when the test is done. When `KOPILKA_TEST_PG` is set (CI sets it) a missing server
//! fails the test; without it the PostgreSQL half of the suite is skipped, and each test binary
//! says so once on the terminal.

use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use sqlx::any::AnyPoolOptions;

use crate::Database;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static STORE_KIND: StoreKind;
}

/// Runs `test` with `test_store()` giving stores of `kind`; a PostgreSQL half without a server
/// (and without `KOPILKA_TEST_PG`) is skipped.
pub async fn on_store<F: Future<Output = ()>>(kind: StoreKind, test: F) {
    if kind == StoreKind::Postgres && TestDatabase::new(kind).await.is_none() {
        return;
    }
    STORE_KIND.scope(kind, test).await
}

/// The kind the running half of a `both_stores!` test asked for (SQLite outside one).
pub fn current_kind() -> StoreKind {
    STORE_KIND.try_with(|kind| *kind).unwrap_or(StoreKind::Sqlite)
}

/// A fresh store of the running test's kind.
pub async fn test_store() -> TestDatabase {
    TestDatabase::new(current_kind()).await.expect("on_store checked that the store is available")
}

/// Writes each test twice, on SQLite and on PostgreSQL: `NAME::sqlite`, `NAME::postgres`.
#[macro_export]
macro_rules! both_stores {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            async fn body() $body

            #[tokio::test]
            async fn sqlite() {
                $crate::testing::on_store($crate::testing::StoreKind::Sqlite, body()).await
            }

            #[tokio::test]
            async fn postgres() {
                $crate::testing::on_store($crate::testing::StoreKind::Postgres, body()).await
            }
        }
    )*};
}

/// A store for one test, removed when dropped.
pub struct TestDatabase {
    pub database: Database,
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("KOPILKA_TEST_PG_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| ADMIN_URL_DEFAULT.into())
}

/// Whether the PostgreSQL half of the suite must run (CI), rather than be skipped without a server.
pub fn postgres_mandatory() -> bool {
    std::env::var("KOPILKA_TEST_PG").is_ok_and(|v| !v.is_empty() && v != "0")
}

impl TestDatabase {
    /// A fresh store of `kind`, or None when PostgreSQL is wanted, absent, and not mandatory.
    pub async fn new(kind: StoreKind) -> Option<TestDatabase> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        match kind {
            StoreKind::Sqlite => {
                Some(TestDatabase { database: Database::Sqlite(dir.path().to_path_buf()), dir, postgres: None })
            }
            StoreKind::Postgres => {
                let admin = admin_url();
                let name = database_name();
                if let Err(error) = create_database(&admin, &name).await {
                    let server = Database::Postgres(admin.clone()).describe();
                    if postgres_mandatory() {
                        panic!("KOPILKA_TEST_PG is set but {server} cannot be used: {error}");
                    }
                    say_skipped(&server, &error);
                    return None;
                }
                let url = match admin.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => unreachable!("a postgres URL has a path"),
                };
                Some(TestDatabase { database: Database::Postgres(url), dir, postgres: Some((admin, name)) })
            }
        }
    }

    /// A directory of the test's own, for files beside the store.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Unique per process and test, and recognisable, so a crashed run's leftovers can be found.
fn database_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("kopilka_test_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn create_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

fn say_skipped(server: &str, error: &sqlx::Error) {
    static SAID: OnceLock<()> = OnceLock::new();
    SAID.get_or_init(|| {
        // Straight to the terminal: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\nPostgreSQL tests SKIPPED in this test binary: no {server} ({error}).\n\
             Set KOPILKA_TEST_PG=1 to make that a failure (CI does), KOPILKA_TEST_PG_URL to point elsewhere.\n"
        );
    });
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else { return };
        // Drop is synchronous and may run inside a runtime: a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let pool = AnyPoolOptions::new().max_connections(1).connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&pool).await?;
                pool.close().await;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(error)) = dropped {
            let _ = writeln!(std::io::stderr(), "could not drop a test database: {error}");
        }
    }
}
