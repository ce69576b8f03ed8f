//! The two SQL dialects the store speaks, and a statement builder that works for both.
//!
//! Every statement goes through sqlx's `Any` driver, so one body of code serves SQLite and
//! PostgreSQL. They differ in a handful of places, which live here and nowhere else:
//! placeholders (plain statements use `$1, $2…`, which sqlx's SQLite driver also accepts), how a
//! transaction takes the write lock, JSON paths, and SQLite's `INDEXED BY` hints (PostgreSQL plans
//! with statistics).
//!
//! `Builder` stands in for sqlx's `QueryBuilder`, whose `Any` flavour writes `?` placeholders that
//! PostgreSQL rejects; it writes the placeholders each database binds fastest.

use std::fmt::{Display, Write as _};
use std::time::{Duration, Instant};

use sqlx::any::{AnyArguments, AnyTypeInfoKind};
use sqlx::AnyConnection;
use sqlx::{Any, Arguments, Encode, Type};
use sqlx_core::any::AnyValueKind;

/// Which database a pool or connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(conn: &AnyConnection) -> Backend {
        Backend::of_name(conn.backend_name())
    }

    pub(crate) fn of_name(name: &str) -> Backend {
        if name.eq_ignore_ascii_case("postgresql") || name.eq_ignore_ascii_case("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// `INSERT` or `UPDATE` as the writer's statements say it: `OR FAIL` on SQLite, so that a
    /// statement of many rows needs no statement journal (a copy of every page it first touches,
    /// kept to undo it alone). The writer rolls a whole batch back after any error, so the rows a
    /// failing statement wrote before it failed go with the rest. Plain on PostgreSQL.
    pub fn write_verb(self, verb: &str) -> String {
        match self {
            Backend::Sqlite => format!("{verb} OR FAIL"),
            Backend::Postgres => verb.to_string(),
        }
    }

    /// A hint naming the index SQLite must use (it has no statistics to choose well); nothing on
    /// PostgreSQL.
    pub fn indexed_by(self, index: &str) -> String {
        match self {
            Backend::Sqlite => format!(" INDEXED BY {index}"),
            Backend::Postgres => String::new(),
        }
    }

    /// `table` joined to a constant table of keys, as one search of `index` per key whatever the
    /// statistics say: the text to write before a filter on `table`'s rows, and the text after
    /// it (`on` names both tables' columns). SQLite is told the index, if one is named.
    /// PostgreSQL gets the table as a `LATERAL` subquery that `OFFSET 0` keeps from being
    /// flattened into a join it may plan otherwise: with statistics older than the table's rows
    /// (a store filled since its last `ANALYZE`) it hashed the keys against every open lot,
    /// 20,819 lots read to load the due lots of 84 members, and more with every batch. The rows
    /// keep the name `table`.
    pub fn join_each(self, table: &str, index: Option<&str>, on: &str) -> (String, String) {
        match self {
            Backend::Sqlite => {
                let hint = index.map(|index| format!(" INDEXED BY {index}")).unwrap_or_default();
                (format!(" JOIN {table}{hint} ON {on} WHERE "), String::new())
            }
            Backend::Postgres => (
                format!(" CROSS JOIN LATERAL (SELECT * FROM {table} WHERE {on} AND "),
                format!(" OFFSET 0) AS {table}"),
            ),
        }
    }

    /// The text at `path` (dot-separated keys) of a JSON document kept in a TEXT column. The
    /// expression indexes of the migrations use exactly these forms, so lookups can use them.
    pub fn json_text(self, column: &str, path: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_extract({column}, '$.{path}')"),
            Backend::Postgres => format!("(({column})::jsonb #>> '{{{}}}')", path.replace('.', ",")),
        }
    }

    /// One row holding every row a query finds, as a JSON array of arrays (`[]` for none), each
    /// inner array the values of `columns` in order. A query that returns many rows hands each
    /// one across to the caller's task separately (sqlx's SQLite worker sends rows one by one over
    /// a channel, waking the reader); the jobs load ten lots and more per member, and that hand-off
    /// was half of their CPU.
    pub fn json_rows(self, columns: &str) -> String {
        let row = self.json_array(columns);
        match self {
            Backend::Sqlite => format!("json_group_array({row})"),
            Backend::Postgres => format!("COALESCE(json_agg({row})::text, '[]')"),
        }
    }

    /// A JSON array of `columns`' values; nested in another, it stays an array (not a string).
    pub fn json_array(self, columns: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_array({columns})"),
            Backend::Postgres => format!("json_build_array({columns})"),
        }
    }

    /// When a lot's stored state next changes: at its expiry, or (pending) at its availability if
    /// that is earlier. Written exactly as the `lots_member` index of migration 0012 holds it, so
    /// the lots due by a moment are one index range per state.
    pub fn lot_due_at(self) -> &'static str {
        match self {
            Backend::Sqlite => "(CASE state WHEN 'pending' THEN min(available_from, expires_at) ELSE expires_at END)",
            Backend::Postgres => {
                "(CASE state WHEN 'pending' THEN LEAST(available_from, expires_at) ELSE expires_at END)"
            }
        }
    }

    /// Each member's due keys computed from its open lots (`MemberLedger::due_keys`, migration
    /// 0018), as a subquery of `(tenant_id, member_id, due, expiry)` rows: what `verify` compares
    /// the kept keys with and what `lot_totals::fill_from_lots` writes.
    pub fn due_keys_of_lots(self) -> String {
        format!(
            "SELECT tenant_id, member_id, MIN({}) AS due, MIN(expires_at) AS expiry FROM lots
             WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id",
            self.lot_due_at()
        )
    }

    /// Lets concurrent claimers of rows (dispatchers on several nodes) pass over rows another has
    /// locked instead of waiting for them and claiming them twice. SQLite has one writer at a
    /// time, so nothing is needed there.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The statement that opens a writing transaction holding the store's write lock. SQLite takes
    /// the database lock at once (no deferred upgrade that could fail halfway); PostgreSQL takes a
    /// transaction-scoped advisory lock that every writer of every node takes first, so batches
    /// see each other's commits whole and ids are handed out by one writer at a time.
    pub fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN ISOLATION LEVEL READ COMMITTED",
        }
    }
}

/// PostgreSQL advisory lock keys: what each lock serializes across the nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The writer's batches (ledger, members, everything the engine decides).
    Write = 0x6b6f_7001,
    /// The notification fan-out, which turns outbox events into deliveries past a cursor.
    Fanout = 0x6b6f_7002,
}

/// Opens a writing transaction holding `lock` (see `Backend::begin_write`).
///
/// On SQLite, when another connection holds the lock, it tries again every millisecond (for up to
/// `SQLITE_LOCK_WAIT_MAX`); a connection that [`waits_in_begin_write`] has SQLite's own busy
/// handler off, so this is where it waits.
pub async fn begin_write(conn: &mut AnyConnection) -> crate::Result<()> {
    let backend = Backend::of(conn);
    if backend == Backend::Postgres {
        sqlx::raw_sql(&postgres_begin_write()).execute(&mut *conn).await?;
        return Ok(());
    }
    // SQLite: `BEGIN IMMEDIATE` is the lock.
    let started = Instant::now();
    loop {
        match sqlx::query(backend.begin_write()).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(error) if is_busy(&error) && started.elapsed() < SQLITE_LOCK_WAIT_MAX => {
                tokio::time::sleep(SQLITE_LOCK_RETRY).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// PostgreSQL's opening of a writing transaction as one simple query, one round trip (the writer
/// waits for every round trip of its batch, and under load each took 0.3-0.5 ms; BENCHMARKS.md):
/// `BEGIN`, the planner's settings for the transaction, and the write lock, taken by a `SELECT`
/// that returns no row, so statements after it in the same query may return the rows a caller
/// reads ([`crate::batch::open`]).
///
/// A writing transaction's statements join a batch's keys (tens to a few thousand rows) to
/// tables of millions, and each key one index search is the plan whatever the statistics say.
/// With statistics older than the rows (a store filled since its last `ANALYZE`), PostgreSQL was
/// seen hashing a batch's keys against a sequential scan of every member (3.1 ms of a 5 ms
/// statement at 10,000 members, and growing with them, in a flush tried as one statement;
/// BENCHMARKS.md): hash and merge joins are off for the transaction. Scans of one table plan
/// as before.
pub(crate) fn postgres_begin_write() -> String {
    format!(
        "{}; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
         SELECT 1 WHERE pg_advisory_xact_lock({}) IS NULL",
        Backend::Postgres.begin_write(),
        Lock::Write as i64
    )
}

/// How long [`begin_write`] waits for SQLite's lock held by another connection (as `busy_timeout`).
const SQLITE_LOCK_WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two tries: the holder is usually another transaction of a few milliseconds.
const SQLITE_LOCK_RETRY: Duration = Duration::from_millis(1);

/// Makes `conn` (the writer's own) wait for SQLite's write lock in [`begin_write`] rather than in
/// SQLite's busy handler. That handler sleeps in growing steps, up to 100 ms each, so a writer
/// kept waiting by a transaction of a few milliseconds on another connection (the notification
/// fan-out's, which advances its cursor every pass) slept on long after the lock was free: the
/// writer's `BEGIN` was measured waiting up to 180 ms for a fan-out that held the lock for 5-10 ms,
/// which was the p99 of purchases at half the peak. Only for a connection whose every writing
/// transaction starts with `begin_write` (the busy handler is off for all its statements).
pub async fn waits_in_begin_write(conn: &mut AnyConnection) -> crate::Result<()> {
    if Backend::of(conn) == Backend::Sqlite {
        sqlx::query("PRAGMA busy_timeout = 0").execute(&mut *conn).await?;
    }
    Ok(())
}

/// SQLite's `SQLITE_BUSY`, or one of its extended codes: another connection holds the lock.
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else { return false };
    error.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| code & 0xff == 5)
}

/// Opens a writing transaction holding `lock`, as a sqlx transaction: it rolls back when dropped,
/// so a pass cancelled at shutdown leaves nothing half-done and no lock held.
pub async fn begin_locked(conn: &mut AnyConnection, lock: Lock) -> crate::Result<sqlx::Transaction<'_, Any>> {
    let backend = Backend::of(conn);
    let mut tx = sqlx::Connection::begin_with(conn, backend.begin_write()).await?;
    take_lock(&mut tx, backend, lock).await?;
    Ok(tx)
}

/// A job's lock, held by one node of a cluster while it runs the job: a session lock on a
/// connection of its own, so a node that dies lets go of it with its connection. On SQLite (one
/// node) there is nothing to hold.
pub struct JobLock {
    conn: Option<AnyConnection>,
    key: i64,
}

impl JobLock {
    /// Takes the lock of the job named `name`, or None when another node holds it.
    pub async fn try_take(store: &crate::Store, name: &str) -> crate::Result<Option<JobLock>> {
        // FNV-1a of the name, under a prefix of our own, as the advisory lock key.
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let key = (0x6b6f_i64 << 48) | (hash & 0xffff_ffff) as i64;
        if store.backend == Backend::Sqlite {
            return Ok(Some(JobLock { conn: None, key }));
        }
        let mut conn = store.pool.acquire().await?.detach();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
        Ok(taken.then_some(JobLock { conn: Some(conn), key }))
    }

    /// Lets go of the lock (dropping it does too, by closing its connection).
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(self.key).execute(&mut conn).await;
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

async fn take_lock(conn: &mut AnyConnection, backend: Backend, lock: Lock) -> crate::Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock as i64).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Where a `Builder`'s statement runs: a connection (or transaction) or a pool, which tells the
/// builder which placeholders to write.
pub trait Target<'c>: sqlx::Executor<'c, Database = Any> {
    fn backend(&self) -> Backend;
}

impl<'c> Target<'c> for &'c mut AnyConnection {
    fn backend(&self) -> Backend {
        Backend::of(self)
    }
}

impl<'c> Target<'c> for &'c sqlx::AnyPool {
    fn backend(&self) -> Backend {
        Backend::of_name(self.connect_options().database_url.scheme())
    }
}

/// A statement with bound values. Placeholders are written as `?` and numbered `$1, $2…` only
/// when the statement runs on PostgreSQL: SQLite looks a numbered parameter's name up by walking
/// a list, so a multi-row INSERT of thousands of `$N` spends most of its time binding.
pub struct Builder<'a> {
    sql: String,
    args: AnyArguments<'a>,
    placeholders: Vec<usize>,
}

impl<'a> Builder<'a> {
    pub fn new(init: impl Into<String>) -> Builder<'a> {
        Builder { sql: init.into(), args: AnyArguments::default(), placeholders: Vec::new() }
    }

    pub fn push(&mut self, sql: impl Display) -> &mut Self {
        write!(self.sql, "{sql}").expect("writing to a String cannot fail");
        self
    }

    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + Encode<'a, Any> + Type<Any>,
    {
        self.placeholders.push(self.sql.len());
        self.sql.push('?');
        self.args.add(value).expect("values of the store's types always encode");
        self
    }

    /// Items pushed through the result are separated by `separator`.
    pub fn separated<'b>(&'b mut self, separator: &'static str) -> Separated<'b, 'a> {
        Separated { builder: self, separator, first: true }
    }

    /// ` VALUES (…), (…)`: one parenthesised row per item, its values pushed by `row`.
    pub fn push_values<I, F>(&mut self, items: I, row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'a>, I::Item),
    {
        self.values(items, row);
        self
    }

    /// ` VALUES (…), (…)` for a constant table of keys that the statement joins by equality, its
    /// rows padded with rows of NULLs to one of a few counts ([`padded_rows`]): a NULL equals
    /// nothing, so the padding joins no row, and a batch of 53 keys and one of 61 send the same
    /// text. sqlx prepares a statement once per text and connection and keeps it for the next time:
    /// with a text per row count, most of a batch's statements were prepared afresh (SQLite's
    /// writer prepared 6.6 statements per batch of ~53 purchases, 12% of its thread's time).
    pub fn push_keys<I, F>(&mut self, items: I, row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'a>, I::Item),
    {
        let rows = self.values(items, row);
        self.pad(rows, false);
        self
    }

    /// `SELECT * FROM (VALUES (…), (…)) AS v WHERE column1 IS NOT NULL`: the rows of an `INSERT`,
    /// padded as [`Builder::push_keys`] pads them. The `WHERE` leaves the padding out, so every
    /// row's first value must not be NULL (it is the tenant in every table); it also lets an
    /// `ON CONFLICT` follow (SQLite needs one there to tell the clause from a join's).
    pub fn push_rows<I, F>(&mut self, items: I, row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'a>, I::Item),
    {
        self.push("SELECT * FROM (");
        let rows = self.values(items, row);
        self.pad(rows, true);
        self.push(") AS v WHERE column1 IS NOT NULL");
        self
    }

    /// Writes `push_values`' text and tells where its values are.
    fn values<I, F>(&mut self, items: I, mut row: F) -> Rows
    where
        I: IntoIterator,
        F: FnMut(Separated<'_, 'a>, I::Item),
    {
        let start = self.args.values.0.len();
        self.push("VALUES ");
        let mut count = 0;
        for item in items {
            if count > 0 {
                self.push(", ");
            }
            self.push("(");
            row(self.separated(", "), item);
            self.push(")");
            count += 1;
        }
        let values = self.args.values.0.len() - start;
        Rows { start, count, width: values.checked_div(count).unwrap_or(0), values }
    }

    /// Pads `rows` with rows of NULLs, each of its column's type in the first row (PostgreSQL
    /// types a `VALUES` column from all its rows), to [`padded_rows`] rows in all, fewer where
    /// that would bind more than [`BIND_VALUES_MAX`] values.
    ///
    /// With `first_never_null`, a row whose first value is NULL is refused (`push_rows` filters
    /// the padding out by it).
    fn pad(&mut self, rows: Rows, first_never_null: bool) {
        assert_eq!(rows.width * rows.count, rows.values, "a padded list's rows each bind as many values");
        if rows.count == 0 || rows.width == 0 {
            return;
        }
        if first_never_null {
            for n in 0..rows.count {
                let first = &self.args.values.0[rows.start + n * rows.width];
                assert!(
                    !matches!(first, AnyValueKind::Null(_)),
                    "row {n}'s first value is NULL: the filter would drop it"
                );
            }
        }
        let target = padded_rows(rows.count).min(rows.count.max(BIND_VALUES_MAX / rows.width));
        let kinds: Vec<AnyTypeInfoKind> =
            self.args.values.0[rows.start..rows.start + rows.width].iter().map(kind_of).collect();
        for _ in rows.count..target {
            self.sql.push_str(", (");
            for (i, kind) in kinds.iter().enumerate() {
                if i > 0 {
                    self.sql.push_str(", ");
                }
                self.placeholders.push(self.sql.len());
                self.sql.push('?');
                self.args.values.0.push(AnyValueKind::Null(*kind));
            }
            self.sql.push(')');
        }
    }

    /// The statement's text as `backend` takes it.
    pub fn sql(&self, backend: Backend) -> std::borrow::Cow<'_, str> {
        match backend {
            Backend::Sqlite => std::borrow::Cow::Borrowed(&self.sql),
            Backend::Postgres => {
                let mut numbered = String::with_capacity(self.sql.len() + 4 * self.placeholders.len());
                let mut from = 0;
                for (n, at) in self.placeholders.iter().enumerate() {
                    numbered.push_str(&self.sql[from..*at]);
                    write!(numbered, "${}", n + 1).expect("writing to a String cannot fail");
                    from = at + 1;
                }
                numbered.push_str(&self.sql[from..]);
                std::borrow::Cow::Owned(numbered)
            }
        }
    }

    /// The statement's text as `backend` takes it, and its values.
    pub(crate) fn take(&mut self, backend: Backend) -> (String, AnyArguments<'a>) {
        let args = std::mem::take(&mut self.args);
        (self.sql(backend).into_owned(), args)
    }

    /// Runs the statement; the builder keeps its text and gives up its values.
    pub async fn execute<'c>(&mut self, target: impl Target<'c>) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
        let args = std::mem::take(&mut self.args);
        let sql = self.sql(target.backend());
        sqlx::query_with(&sql, args).execute(target).await
    }

    pub async fn fetch_all<'c>(&mut self, target: impl Target<'c>) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        let args = std::mem::take(&mut self.args);
        let sql = self.sql(target.backend());
        sqlx::query_with(&sql, args).fetch_all(target).await
    }

    pub async fn fetch_all_scalar<'c, O>(&mut self, target: impl Target<'c>) -> Result<Vec<O>, sqlx::Error>
    where
        O: Send + Unpin,
        (O,): for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        let args = std::mem::take(&mut self.args);
        let sql = self.sql(target.backend());
        sqlx::query_scalar_with(&sql, args).fetch_all(target).await
    }
}

/// Where a `VALUES` list's values are in a [`Builder`]'s arguments.
struct Rows {
    start: usize,
    count: usize,
    /// Values per row, if every row bound as many (`pad` checks).
    width: usize,
    values: usize,
}

/// SQLite allows 32,766 bound values per statement, PostgreSQL 65,535; statements of many rows
/// are chunked to stay under both.
pub const BIND_VALUES_MAX: usize = 32_000;

/// The row count a `VALUES` list of `rows` rows is padded to: the next of 1, 2, 3, 4, 6, 8, 12,
/// 16, 24… (powers of two and halfway between), so padding adds at most half the rows and the
/// statements of a writer's batches take a few texts, not one per size.
pub fn padded_rows(rows: usize) -> usize {
    if rows <= 2 {
        return rows;
    }
    let power = rows.next_power_of_two();
    let between = power / 4 * 3;
    if rows <= between {
        between
    } else {
        power
    }
}

/// The type of the NULL that stands for `value` in a padding row.
fn kind_of(value: &AnyValueKind<'_>) -> AnyTypeInfoKind {
    match value {
        AnyValueKind::Null(kind) => *kind,
        AnyValueKind::Bool(_) => AnyTypeInfoKind::Bool,
        AnyValueKind::SmallInt(_) => AnyTypeInfoKind::SmallInt,
        AnyValueKind::Integer(_) => AnyTypeInfoKind::Integer,
        AnyValueKind::BigInt(_) => AnyTypeInfoKind::BigInt,
        AnyValueKind::Real(_) => AnyTypeInfoKind::Real,
        AnyValueKind::Double(_) => AnyTypeInfoKind::Double,
        AnyValueKind::Text(_) => AnyTypeInfoKind::Text,
        AnyValueKind::Blob(_) => AnyTypeInfoKind::Blob,
        // A kind a later sqlx adds: an untyped NULL, which SQLite takes and PostgreSQL may not.
        _ => AnyTypeInfoKind::Null,
    }
}

/// Pushes into a `Builder` with a separator between items.
pub struct Separated<'b, 'a> {
    builder: &'b mut Builder<'a>,
    separator: &'static str,
    first: bool,
}

impl<'a> Separated<'_, 'a> {
    fn separate(&mut self) {
        if !self.first {
            self.builder.sql.push_str(self.separator);
        }
        self.first = false;
    }

    pub fn push(&mut self, sql: impl Display) -> &mut Self {
        self.separate();
        self.builder.push(sql);
        self
    }

    pub fn push_unseparated(&mut self, sql: impl Display) -> &mut Self {
        self.builder.push(sql);
        self
    }

    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + Encode<'a, Any> + Type<Any>,
    {
        self.separate();
        self.builder.push_bind(value);
        self
    }

    pub fn push_bind_unseparated<T>(&mut self, value: T) -> &mut Self
    where
        T: 'a + Encode<'a, Any> + Type<Any>,
    {
        self.builder.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rows_are_padded_by_less_than_half_to_a_few_counts() {
        let mut counts = std::collections::BTreeSet::new();
        for rows in 1..=4096 {
            let padded = padded_rows(rows);
            assert!(padded >= rows && 2 * padded <= 3 * rows + 1, "{rows} rows padded to {padded}");
            assert_eq!(padded_rows(padded), padded, "a padded count is its own padding");
            counts.insert(padded);
        }
        assert_eq!(counts.len(), 24, "{counts:?}");
    }

    fn insert_of(rows: usize, columns: usize) -> String {
        let mut query = Builder::new("INSERT INTO t ");
        query.push_rows(0..rows as i64, |mut b, n| {
            for column in 0..columns as i64 {
                b.push_bind(n * 100 + column);
            }
        });
        query.sql(Backend::Sqlite).into_owned()
    }

    #[test]
    fn batches_of_nearby_sizes_send_one_text_and_never_too_many_values() {
        assert_eq!(insert_of(53, 3), insert_of(61, 3));
        assert_ne!(insert_of(48, 3), insert_of(49, 3), "48 rows are a padded count of their own");
        // 2,900 rows of 11 values would pad to 3,072 (33,792 values, over SQLite's 32,766): the
        // padding stops at the most rows under BIND_VALUES_MAX.
        let text = insert_of(2_900, 11);
        assert_eq!(text.matches('?').count(), BIND_VALUES_MAX / 11 * 11);
        let mut keys = Builder::new("WITH k(t) AS (");
        keys.push_keys(0..5i64, |mut b, n| {
            b.push_bind(n);
        });
        assert_eq!(keys.sql(Backend::Postgres), "WITH k(t) AS (VALUES ($1), ($2), ($3), ($4), ($5), ($6)");
    }

    #[test]
    #[should_panic(expected = "first value is NULL")]
    fn a_row_whose_first_value_is_null_is_refused_as_it_would_be_left_out() {
        let mut query = Builder::new("INSERT INTO t ");
        query.push_rows([Some(1i64), None], |mut b, n| {
            b.push_bind(n);
        });
    }

    #[tokio::test]
    async fn a_writer_without_the_busy_handler_waits_for_the_lock_in_begin_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).await.unwrap();
        let mut writer = store.writer_connection().await.unwrap();
        waits_in_begin_write(&mut writer).await.unwrap();
        let mut other = store.writer_connection().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
        // With SQLite's handler off, a plain BEGIN IMMEDIATE fails at once...
        let refused = sqlx::query("BEGIN IMMEDIATE").execute(&mut writer).await.unwrap_err();
        assert!(is_busy(&refused), "{refused}");
        // ...and begin_write waits until the other transaction ends, then takes the lock.
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            sqlx::query("COMMIT").execute(&mut other).await.unwrap();
            other
        });
        let started = Instant::now();
        begin_write(&mut writer).await.expect("waits for the lock");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "took the lock while it was held ({waited:?})");
        assert!(waited < Duration::from_millis(1_000), "waited {waited:?}");
        sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
        holder.await.unwrap();
    }
}
