//! The WAL-buffering VFS (`kopilka_store::wal_buffer`): whatever a transaction's shape, its frames
//! are in the WAL file when its commit returns, so another connection reads them and a copy of the
//! files taken then (what a crash would leave) recovers every committed row; and a transaction
//! rolled back leaves nothing behind that could later land on another connection's frames.

use std::path::Path;

use kopilka_store::{wal_buffer, Database};
use sqlx::{AnyConnection, Connection, Executor, Row};

/// Rows and the sum of their values, read through SQLite's default VFS from a copy of `dir`'s
/// database and WAL, after checking the copy's integrity.
async fn recovered_from_a_copy(dir: &Path, copy: &Path) -> (i64, i64) {
    std::fs::create_dir_all(copy).unwrap();
    for file in ["kopilka.db", "kopilka.db-wal"] {
        std::fs::copy(dir.join(file), copy.join(file)).unwrap();
    }
    // No `vfs=`: SQLite's own VFS, which recovers the WAL from the file as a crash would leave it.
    let mut connection =
        AnyConnection::connect(&format!("sqlite:{}", copy.join("kopilka.db").display())).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut connection).await.unwrap();
    assert_eq!(check, "ok");
    let counted = counted(&mut connection).await;
    connection.close().await.unwrap();
    counted
}

async fn counted(connection: &mut AnyConnection) -> (i64, i64) {
    let row =
        sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(v), 0) AS total FROM t").fetch_one(connection).await.unwrap();
    (row.get("n"), row.get("total"))
}

/// Inserts `count` rows after `first`, with values 1..=count, in `connection`'s open transaction.
async fn insert(connection: &mut AnyConnection, first: i64, count: i64) {
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
         INSERT INTO t (id, v, pad) SELECT $2 + i, i, randomblob(300) FROM n",
    )
    .bind(count)
    .bind(first)
    .execute(connection)
    .await
    .unwrap();
}

#[tokio::test]
async fn every_commit_is_in_the_wal_file_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let pool = Database::Sqlite(dir.path().to_path_buf()).pool(3, 3, true).await.unwrap();
    let gathered = wal_buffer::writes_gathered();
    let mut writer = pool.acquire().await.unwrap();
    let mut other_writer = pool.acquire().await.unwrap();
    let mut reader = pool.acquire().await.unwrap();
    // No checkpoints: the database file stays empty and every row lives in the WAL alone.
    writer
        .execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL)")
        .await
        .unwrap();
    other_writer.execute("PRAGMA wal_autocheckpoint = 0").await.unwrap();
    // A frame spilled mid-transaction could sit in a buffer past a rollback and later be written
    // over another connection's frames: the store's connections never spill.
    let spill: i64 = sqlx::query_scalar("PRAGMA cache_spill").fetch_one(&mut *writer).await.unwrap();
    assert_eq!(spill, 0, "the store's SQLite connections must say `cache_spill = OFF`");
    let (mut rows, mut total) = (0_i64, 0_i64);
    for round in 0..24_i64 {
        // The server's writer commits at `NORMAL` (no sync at commit: `wal_sync`), every other
        // connection at `FULL` (a sync that writes the buffer out anyway).
        let synchronous = if (round / 4) % 2 == 0 { "NORMAL" } else { "FULL" };
        // One row (a commit of a frame or two); a few hundred; fifteen thousand with a cache of a
        // few pages, updated again before the commit (more than the buffer holds: it is written
        // once mid-commit); and as many rolled back, after which another connection commits as
        // many where their frames would have been and the first reads.
        let (count, cache_pages) = match round % 4 {
            0 => (1, 2_000),
            1 => (300, 2_000),
            _ => (15_000, 16),
        };
        writer
            .execute(format!("PRAGMA cache_size = {cache_pages}; PRAGMA synchronous = {synchronous}").as_str())
            .await
            .unwrap();
        let mut transaction = writer.begin().await.unwrap();
        insert(&mut transaction, rows, count).await;
        if round % 4 == 3 {
            transaction.rollback().await.unwrap();
            // As many rows as were rolled back: its frames cover the place of theirs.
            let mut transaction = other_writer.begin().await.unwrap();
            insert(&mut transaction, rows, count).await;
            transaction.commit().await.unwrap();
            rows += count;
            total += count * (count + 1) / 2;
            assert_eq!(counted(&mut writer).await, (rows, total), "the connection that rolled back, round {round}");
        } else {
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
        }

        assert_eq!(counted(&mut reader).await, (rows, total), "another connection, round {round}");
        if round % 4 >= 2 {
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
