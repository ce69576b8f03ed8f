//! The WAL-buffering VFS (`kopilka_store::wal_buffer`): whatever a transaction's shape, its frames
//! are in the WAL file when its commit returns, so another connection reads them and a copy of the
//! files taken then (what a crash would leave) recovers every committed row.

use std::path::Path;

use kopilka_store::{wal_buffer, Database};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor, Row, SqliteConnection};

/// Rows and the sum of their values, read through SQLite's default VFS from a copy of `dir`'s
/// database and WAL, after checking the copy's integrity.
async fn recovered_from_a_copy(dir: &Path, copy: &Path) -> (i64, i64) {
    std::fs::create_dir_all(copy).unwrap();
    for file in ["kopilka.db", "kopilka.db-wal"] {
        std::fs::copy(dir.join(file), copy.join(file)).unwrap();
    }
    let options = SqliteConnectOptions::new().filename(copy.join("kopilka.db"));
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut connection).await.unwrap();
    assert_eq!(check, "ok");
    let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(v), 0) AS total FROM t")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    let counted = (row.get("n"), row.get("total"));
    connection.close().await.unwrap();
    counted
}

#[tokio::test]
async fn every_commit_is_in_the_wal_file_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let pool = Database::Sqlite(dir.path().to_path_buf()).pool(2, 2, true).await.unwrap();
    let gathered = wal_buffer::writes_gathered();
    let mut writer = pool.acquire().await.unwrap();
    let mut reader = pool.acquire().await.unwrap();
    // No checkpoints: the database file stays empty and every row lives in the WAL alone.
    writer
        .execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL)")
        .await
        .unwrap();
    let (mut rows, mut total) = (0_i64, 0_i64);
    for round in 0..24_i64 {
        // One row (a commit of a frame or two); a few hundred; and, every third round, thousands
        // with a cache of a few pages, updated again before the commit: SQLite spills frames to
        // the WAL mid-transaction, writes some of them again in place and rewrites the
        // checksums of the rest when it commits.
        let (count, cache_pages) = match round % 3 {
            0 => (1, 2_000),
            1 => (300, 2_000),
            _ => (4_000, 16),
        };
        // The server's writer commits at `NORMAL` (no sync at commit: `wal_sync`), every other
        // connection at `FULL` (a sync that writes the buffer out anyway).
        let synchronous = if round % 2 == 0 { "NORMAL" } else { "FULL" };
        writer
            .execute(format!("PRAGMA cache_size = {cache_pages}; PRAGMA synchronous = {synchronous}").as_str())
            .await
            .unwrap();
        let mut transaction = writer.begin().await.unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
             INSERT INTO t (id, v, pad) SELECT $2 + i, i, randomblob(300) FROM n",
        )
        .bind(count)
        .bind(rows)
        .execute(&mut *transaction)
        .await
        .unwrap();
        if count > 1_000 {
            sqlx::query("UPDATE t SET v = v + 1, pad = randomblob(310) WHERE id > $1")
                .bind(rows)
                .execute(&mut *transaction)
                .await
                .unwrap();
            total += count;
        }
        transaction.commit().await.unwrap();
        rows += count;
        total += count * (count + 1) / 2;

        let row = sqlx::query("SELECT COUNT(*) AS n, SUM(v) AS total FROM t").fetch_one(&mut *reader).await.unwrap();
        assert_eq!(
            (row.get::<i64, _>("n"), row.get::<i64, _>("total")),
            (rows, total),
            "another connection, round {round}"
        );
        if round % 4 == 3 {
            let copy = copies.path().join(round.to_string());
            assert_eq!(
                recovered_from_a_copy(dir.path(), &copy).await,
                (rows, total),
                "a copy of the files, round {round}"
            );
        }
    }
    assert!(wal_buffer::writes_gathered() > gathered, "the store's connections did not go through the VFS");
}
