//! The outbox as its consumers see it: a connection pool of their own on the store, the events
//! past a cursor, and the cursor itself.
//!
//! The server's writer holds one connection and is the only writer of ledger rows; consumers (the
//! notification dispatcher) write only their own tables, through this second pool. SQLite in WAL
//! mode lets them read beside the writer, and `busy_timeout` (30 s, `store::SQLITE_PRAGMAS`)
//! makes their short write transactions wait for the writer's instead of failing. The cursor lives
//! in `notify_cursor`, and the caller advances it in the same transaction as the rows it derived
//! from the events.

use jiff::Timestamp;
use kopilka_core::{MemberId, TenantId};
use sqlx::{AnyConnection, AnyPool, Row};

use crate::{micros, Result};

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub tenant_id: TenantId,
    pub id: i64,
    pub kind: String,
    pub member_id: Option<MemberId>,
    /// The `DomainEvent` as JSON, exactly as the writer stored it.
    pub payload: String,
    pub occurred_at: Timestamp,
}

/// A pool of `connections_max` connections to the store at `database`, for a consumer of the
/// outbox. The store must have been opened (and so migrated) by `Store::connect` first.
pub async fn open_pool(database: &crate::Database, connections_max: u32) -> Result<AnyPool> {
    database.pool(1, connections_max, false).await
}

/// Every tenant with its cursor (0 when nothing was consumed yet).
pub async fn cursors(conn: &mut AnyConnection) -> Result<Vec<(TenantId, i64)>> {
    let rows = sqlx::query(
        "SELECT t.id, COALESCE(c.last_event_id, 0) FROM tenants t
         LEFT JOIN notify_cursor c ON c.tenant_id = t.id ORDER BY t.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(|row| (TenantId(row.get(0)), row.get(1))).collect())
}

/// Up to `limit` events of `tenant` after `after`, oldest first.
pub async fn events_after(
    conn: &mut AnyConnection,
    tenant: TenantId,
    after: i64,
    limit: i64,
) -> Result<Vec<OutboxEvent>> {
    let rows = sqlx::query(
        "SELECT id, kind, member_id, payload, occurred_at FROM events
         WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(tenant.0)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|row| OutboxEvent {
            tenant_id: tenant,
            id: row.get(0),
            kind: row.get(1),
            member_id: row.get::<Option<i64>, _>(2).map(MemberId),
            payload: row.get(3),
            occurred_at: micros::to_ts(row.get(4)),
        })
        .collect())
}

/// Moves `tenant`'s cursor to `last_event_id`. Call it inside the transaction that stored what
/// the events up to there produced.
pub async fn advance_cursor(
    conn: &mut AnyConnection,
    tenant: TenantId,
    last_event_id: i64,
    now: Timestamp,
) -> Result<()> {
    let moved = sqlx::query(
        "INSERT INTO notify_cursor (tenant_id, last_event_id, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET last_event_id = excluded.last_event_id, updated_at = excluded.updated_at
         WHERE excluded.last_event_id > notify_cursor.last_event_id",
    )
    .bind(tenant.0)
    .bind(last_event_id)
    .bind(micros::of(now))
    .execute(&mut *conn)
    .await?;
    // A cursor that would move backwards means two dispatchers share the file: refuse loudly.
    assert_eq!(moved.rows_affected(), 1, "notify cursor of tenant {} moved backwards to {last_event_id}", tenant.0);
    Ok(())
}

/// A member as a consumer sees it inside its own transaction (`Store::member` reads through the
/// server's pool instead).
pub async fn member(conn: &mut AnyConnection, tenant: TenantId, id: MemberId) -> Result<Option<crate::MemberRow>> {
    let row =
        sqlx::query(&format!("SELECT {} FROM members WHERE tenant_id = $1 AND id = $2", crate::batch::MEMBER_COLUMNS))
            .bind(tenant.0)
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await?;
    row.as_ref().map(crate::batch::member_of_row).transpose()
}
