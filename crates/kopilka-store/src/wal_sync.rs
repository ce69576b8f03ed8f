//! SQLite commits made durable off the writer's path.
//!
//! With `synchronous = FULL` a COMMIT returns only after the WAL's fsync, so the writer's one
//! connection sat idle through every fsync: at the HTTP peak that was ~4 ms of a ~19 ms batch, and
//! nothing else could be written meanwhile (measured: the same run without any fsync gave a 35%
//! higher peak). The writer's connection instead commits with `synchronous = NORMAL`, which
//! writes the WAL frames and leaves syncing them to the caller, and the writer hands each committed
//! batch's answers to a thread that fsyncs the WAL file ([`WalFile::sync`]) and only then sends
//! them. While one fsync runs, the writer decides and writes the next batches, and the next fsync
//! covers all of them (the WAL is one file, and an fsync writes every page of it that is dirty).
//!
//! What an answer promises is unchanged: it is sent after the fsync of a WAL that holds its batch
//! and every batch before it. Nothing else changes on disk either: in WAL mode `NORMAL` is as safe
//! against corruption as `FULL` (SQLite syncs the WAL itself before it checkpoints into the
//! database file), it only moves the moment of durability, which this module moves back before the
//! answer. One difference remains: a reader may see a batch in the few milliseconds before its
//! fsync; if the machine itself crashes then (power, kernel; not a crash of the process, whose
//! writes the kernel keeps), that batch is lost with no request of it answered, so its clients
//! retry it with their idempotency keys.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use sqlx::{AnyConnection, Executor};

use crate::{Database, Result, Store};

/// The writer's WAL file, opened for fsync. `None` from [`WalFile::open`] on PostgreSQL, whose
/// commits stay durable when they return.
pub struct WalFile {
    path: PathBuf,
    file: File,
    inode: u64,
}

impl WalFile {
    /// On SQLite: opens `kopilka.db-wal` and turns `writer`'s commits to `synchronous = NORMAL`,
    /// after which every answer of that connection's transactions must wait for [`WalFile::sync`].
    /// If the WAL file cannot be opened, the connection keeps `FULL` and `None` is returned.
    pub async fn open(store: &Store, writer: &mut AnyConnection) -> Result<Option<WalFile>> {
        let Database::Sqlite(dir) = &store.database else { return Ok(None) };
        // Every connection of the store is put in WAL mode when it opens; the file exists while any
        // of them is open, and the writer's is. Should it be missing, the commits stay `FULL`.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *writer).await?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        let path = dir.join("kopilka.db-wal");
        let Ok((file, inode)) = open_file(&path) else {
            tracing::warn!(path = %path.display(), "cannot open the WAL to sync it; the writer's commits sync themselves");
            return Ok(None);
        };
        writer.execute("PRAGMA synchronous = NORMAL").await?;
        Ok(Some(WalFile { path, file, inode }))
    }

    /// Writes the WAL's dirty pages to disk (`fdatasync`, which also writes a grown file's size).
    /// SQLite deletes the WAL only when its last connection closes, and the writer holds one, so
    /// the file is the one the commits went to. Should it have been replaced all the same, some
    /// commits went to a file no fsync can reach any more: that is an error, which stops the
    /// writer (`durable`), rather than a sync of the new file that would vouch for them.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path)?.ino() != self.inode {
            return Err(std::io::Error::other(format!("{} was replaced under the writer", self.path.display())));
        }
        self.file.sync_data()
    }
}

fn open_file(path: &std::path::Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let inode = file.metadata()?.ino();
    Ok((file, inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn synchronous(conn: &mut AnyConnection) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous").fetch_one(conn).await.unwrap()
    }

    #[tokio::test]
    async fn the_writer_commits_without_fsync_and_the_wal_file_is_the_one_sqlite_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut writer = store.writer_connection().await.unwrap();
        let mut other = store.writer_connection().await.unwrap();
        assert_eq!(synchronous(&mut writer).await, 2, "connections start FULL");
        let mut wal = WalFile::open(&store, &mut writer).await.unwrap().expect("SQLite has a WAL");
        assert_eq!(synchronous(&mut writer).await, 1, "the writer's commits leave the fsync to WalFile");
        assert_eq!(synchronous(&mut other).await, 2, "other connections keep syncing their own commits");

        let before = wal.file.metadata().unwrap().len();
        writer.execute("CREATE TABLE filler (n INTEGER PRIMARY KEY, b BLOB)").await.unwrap();
        writer.execute("INSERT INTO filler VALUES (1, randomblob(100000))").await.unwrap();
        assert!(wal.file.metadata().unwrap().len() > before, "the commit went to the file WalFile holds");
        wal.sync().unwrap();

        // A WAL replaced under the writer (SQLite never does while the writer is open) is refused.
        std::fs::rename(dir.path().join("kopilka.db-wal"), dir.path().join("moved-wal")).unwrap();
        std::fs::copy(dir.path().join("moved-wal"), dir.path().join("kopilka.db-wal")).unwrap();
        assert!(wal.sync().is_err(), "a sync of another file would vouch for commits it does not hold");
    }
}
