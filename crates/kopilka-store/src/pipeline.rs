//! Statements sent one ahead of the code that builds them.
//!
//! A batch's flush builds a dozen multi-row statements: binding tens of thousands of values and
//! serializing purchase records, events and member states is work for the writer's task, and
//! running them is work for the database (sqlx's SQLite worker thread, or the PostgreSQL server).
//! Awaited one by one, each side waits for the other. A [`Pipeline`] sends a statement and returns
//! at once, so the next one is built while the database runs it; the statement is awaited only
//! when the next one is ready to go, or when the connection is wanted back
//! ([`Pipeline::connection`]). Statements still run one at a
//! time and in the order they were sent, in the caller's transaction.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use futures::future::{maybe_done, BoxFuture, MaybeDone};
use sqlx::AnyConnection;

use crate::sql::{Backend, Builder};
use crate::{Result, StoreError};

/// What the statement in flight must have done, checked when it is awaited.
#[derive(Debug, Clone, Copy)]
struct Expected {
    rows: u64,
    table: &'static str,
    what: &'static str,
}

/// A statement sent: it gives the connection back with the rows it changed. `MaybeDone` keeps its
/// outcome if it was done by the first poll, so it is never polled again after that.
type InFlight<'a> = MaybeDone<BoxFuture<'a, (&'a mut AnyConnection, std::result::Result<u64, sqlx::Error>)>>;

/// A connection with at most one statement in flight on it.
pub struct Pipeline<'a> {
    conn: Option<&'a mut AnyConnection>,
    in_flight: Option<(InFlight<'a>, Option<Expected>)>,
}

impl<'a> Pipeline<'a> {
    pub fn new(conn: &'a mut AnyConnection) -> Pipeline<'a> {
        Pipeline { conn: Some(conn), in_flight: None }
    }

    /// Sends `query` once the statement before it is done (its error, if any, comes back here).
    pub async fn send(&mut self, query: Builder<'a>) -> Result<()> {
        self.send_checked(query, None).await
    }

    /// [`send`](Self::send) a statement that must change exactly `rows` rows of `table`: when it
    /// changes another number, a later call fails with [`StoreError::Corrupt`] naming `what`.
    pub async fn send_expecting(
        &mut self,
        query: Builder<'a>,
        rows: u64,
        table: &'static str,
        what: &'static str,
    ) -> Result<()> {
        self.send_checked(query, Some(Expected { rows, table, what })).await
    }

    async fn send_checked(&mut self, mut query: Builder<'a>, expected: Option<Expected>) -> Result<()> {
        self.wait().await?;
        let conn = self.conn.take().expect("the connection is back after wait");
        let (sql, args) = query.take(Backend::of(conn));
        let mut future = maybe_done(Box::pin(async move {
            let result = sqlx::query_with(&sql, args).execute(&mut *conn).await.map(|done| done.rows_affected());
            (conn, result)
        }) as BoxFuture<'a, _>);
        // Polled once here so that the statement is on its way to the database now, while the
        // caller builds the next one, rather than when the next one is sent.
        poll_fn(|cx| {
            let _ = Pin::new(&mut future).poll(cx);
            Poll::Ready(())
        })
        .await;
        self.in_flight = Some((future, expected));
        Ok(())
    }

    /// Waits for the statement in flight, if any, and checks what it did.
    async fn wait(&mut self) -> Result<()> {
        let Some((mut future, expected)) = self.in_flight.take() else { return Ok(()) };
        (&mut future).await;
        let (conn, result) = Pin::new(&mut future).take_output().expect("a statement awaited has its outcome");
        self.conn = Some(conn);
        let rows = result?;
        match expected {
            Some(expected) if expected.rows != rows => Err(StoreError::Corrupt {
                table: expected.table,
                detail: format!("{rows} of {} {} found", expected.rows, expected.what),
            }),
            _ => Ok(()),
        }
    }

    /// Waits for the statement in flight and lends the connection, for statements run directly.
    pub async fn connection(&mut self) -> Result<&mut AnyConnection> {
        self.wait().await?;
        Ok(self.conn.as_deref_mut().expect("the connection is back after wait"))
    }
}
