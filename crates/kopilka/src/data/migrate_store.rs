//! `kopilka migrate-store --to URL`: moves a whole store (SQLite to PostgreSQL, or back) and proves
//! the move: every table's row count, the ledger re-derived on the target, and every member's
//! accounts summed on both sides must agree.
//!
//! The copy is one transaction on the target, so a failed move leaves the target as it was. The
//! target must hold no tenant yet (the rows its migrations seed, such as `sequences`, are replaced).
//! Tables and columns are read from the schemas, not listed here, so a new migration is moved
//! without touching this file.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context};
use futures::TryStreamExt;
use kopilka_store::sql::BIND_VALUES_MAX;
use kopilka_store::sql::{Backend, Builder};
use kopilka_store::{Database, Store};
use sqlx::any::AnyRow;
use sqlx::Row;

/// How a column's values travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
    Bytes,
}

pub async fn migrate_store(from: &Database, to: &Database) -> anyhow::Result<()> {
    ensure!(from != to, "--to: the target is the source store itself; name another database");
    let source = Store::connect(from).await.with_context(|| format!("cannot open the source, {}", from.describe()))?;
    let target = Store::connect(to).await.with_context(|| format!("--to: cannot open {}", to.describe()))?;
    let tenants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants").fetch_one(&target.pool).await?;
    if tenants > 0 {
        bail!("--to: {} already holds {tenants} tenant(s); migrate-store copies into an empty store", to.describe());
    }
    let tables = tables(&source).await?;
    let target_tables = tables_of(&target).await?;
    for table in &tables {
        ensure!(target_tables.contains(table), "the target has no table {table}: are both stores of this version?");
    }
    println!("Moving {} tables from {} to {}", tables.len(), from.describe(), to.describe());

    let mut tx = target.pool.begin().await?;
    // Rows the target's migrations seeded (id sequences) make way for the source's.
    for table in tables.iter().rev() {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
    }
    let mut counts = BTreeMap::new();
    for table in &tables {
        let kinds = column_kinds(&target, table).await?;
        let copied = copy_table(&source, &mut tx, table, &kinds).await?;
        counts.insert(table.clone(), copied);
    }
    if target.backend == Backend::Postgres {
        // Tenants are numbered by an identity column, which must continue after the copied ids.
        sqlx::query("SELECT setval(pg_get_serial_sequence('tenants', 'id'), COALESCE(MAX(id), 1)) FROM tenants")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;

    for (table, copied) in &counts {
        let there: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&target.pool).await?;
        ensure!(there == *copied, "{table}: {copied} rows copied but {there} found on the target");
        println!("  {table:<22} {copied:>10} rows");
    }
    let report = target.verify().await?;
    ensure!(report.problems.is_empty(), "the ledger on the target does not balance: {:?}", report.problems);
    let (before, after) = (account_totals(&source).await?, account_totals(&target).await?);
    ensure!(before == after, "account totals differ between the source and the target");
    println!(
        "Verified: row counts equal, {} movements and {} postings balance on the target, {} member accounts equal.",
        report.movements,
        report.postings,
        after.len()
    );
    Ok(())
}

/// The source's tables to copy, tenants first (other tables refer to them).
async fn tables(store: &Store) -> anyhow::Result<Vec<String>> {
    let mut tables = tables_of(store).await?;
    tables.sort_by_key(|t| (t != "tenants", t.clone()));
    Ok(tables)
}

async fn tables_of(store: &Store) -> anyhow::Result<Vec<String>> {
    let sql = match store.backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             AND name <> '_sqlx_migrations' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'
             ORDER BY table_name"
        }
    };
    Ok(sqlx::query_scalar(sql).fetch_all(&store.pool).await?)
}

/// The target's column types, which say how each value (and each NULL) is bound.
async fn column_kinds(store: &Store, table: &str) -> anyhow::Result<HashMap<String, Kind>> {
    let rows: Vec<(String, String)> = match store.backend {
        Backend::Sqlite => {
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1)").bind(table).fetch_all(&store.pool).await?
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1",
            )
            .bind(table)
            .fetch_all(&store.pool)
            .await?
        }
    };
    rows.into_iter()
        .map(|(column, declared)| {
            let kind = match declared.to_ascii_lowercase().as_str() {
                "integer" | "bigint" | "int" | "int8" => Kind::Integer,
                "text" | "character varying" => Kind::Text,
                "blob" | "bytea" => Kind::Bytes,
                other => bail!("{table}.{column}: a column of type {other} is not one the store uses"),
            };
            Ok((column, kind))
        })
        .collect()
}

async fn copy_table(
    source: &Store,
    target: &mut sqlx::AnyConnection,
    table: &str,
    kinds: &HashMap<String, Kind>,
) -> anyhow::Result<i64> {
    let select = format!("SELECT * FROM {table}");
    let mut rows = sqlx::query(&select).fetch(&source.pool);
    let mut chunk: Vec<AnyRow> = Vec::new();
    let mut copied = 0;
    let mut columns: Vec<(String, Kind)> = Vec::new();
    while let Some(row) = rows.try_next().await? {
        if columns.is_empty() {
            for column in row.columns() {
                let name = sqlx::Column::name(column).to_string();
                let kind = *kinds.get(&name).with_context(|| format!("the target's {table} has no column {name}"))?;
                columns.push((name, kind));
            }
        }
        chunk.push(row);
        if chunk.len() * columns.len() >= BIND_VALUES_MAX {
            copied += insert(target, table, &columns, &chunk).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        copied += insert(target, table, &columns, &chunk).await?;
    }
    Ok(copied)
}

async fn insert(
    target: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[(String, Kind)],
    rows: &[AnyRow],
) -> anyhow::Result<i64> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    let mut query = Builder::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
    let mut failure = None;
    query.push_values(rows, |mut values, row| {
        for (i, (name, kind)) in columns.iter().enumerate() {
            let bound = match kind {
                Kind::Integer => row.try_get::<Option<i64>, _>(i).map(|v| {
                    values.push_bind(v);
                }),
                Kind::Text => row.try_get::<Option<String>, _>(i).map(|v| {
                    values.push_bind(v);
                }),
                Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i).map(|v| {
                    values.push_bind(v);
                }),
            };
            if let Err(error) = bound {
                failure.get_or_insert(format!("{table}.{name}: {error}"));
            }
        }
    });
    if let Some(failure) = failure {
        bail!("a value does not fit its column on the target: {failure}");
    }
    Ok(query.execute(&mut *target).await?.rows_affected() as i64)
}

/// Every member account's total, by tenant, member, currency and account.
async fn account_totals(store: &Store) -> anyhow::Result<BTreeMap<(i64, i64, String, String), i64>> {
    let rows = sqlx::query(
        "SELECT tenant_id, member_id, currency, account, CAST(SUM(amount) AS BIGINT) FROM postings
         WHERE member_id IS NOT NULL GROUP BY tenant_id, member_id, currency, account",
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(rows.iter().map(|row| ((row.get(0), row.get(1), row.get(2), row.get(3)), row.get(4))).collect())
}
