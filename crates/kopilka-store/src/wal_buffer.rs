//! SQLite's WAL frames written in 64 KB pieces at each commit instead of two writes per page.
//!
//! SQLite appends each frame of a commit to the WAL with two writes, its 24-byte header and then
//! its page, so a batch of ~60 purchases (~420 pages) was ~840 `pwrite` calls: a quarter of the
//! writer's SQLite thread at the HTTP peak went to those system calls (BENCHMARKS.md). This module
//! registers a VFS, [`VFS_NAME`], that is SQLite's own default VFS except for WAL files, whose
//! appends are gathered in memory and written in a few large writes when the commit's last frame is
//! complete. The store opens every SQLite connection through it.
//!
//! What SQLite relies on is kept: frames are in the file (the kernel's page cache, where every
//! other connection's reads and the writer's fsync thread find them) before SQLite publishes the
//! commit in the WAL index. A commit frame is the one whose header holds the database size in
//! bytes 4..8 (zero in every other frame), and SQLite writes its page right after that header, so
//! the write of that page ends the commit and empties the buffer. Everything else goes straight to
//! the file after the buffer is emptied: a write that does not continue the appends (the WAL's
//! header after a restart; the checksum rewrites of a transaction that spilled, which the store's
//! connections never make, see below), and every other operation on the file (a read, sync,
//! truncate, size, lock or file control). Uncommitted frames still in the buffer when the file is
//! closed or the process dies are dropped: no commit covers them.
//!
//! One thing the VFS cannot see is a rollback: it happens in the WAL index, not the file. Frames a
//! transaction spilled to the WAL before its commit (SQLite does so when its page cache fills) and
//! that were still buffered when it rolled back would be written later, possibly over frames
//! another connection committed in between. So the store opens every connection with
//! `cache_spill = OFF` (`store.rs`): without spills, every run of appends is a commit, which ends
//! with its commit frame and leaves the buffer empty. A connection through this VFS must not
//! spill. The price is memory: a transaction keeps every page it changed until it commits, which
//! matters only for the largest (`migrate-store` into SQLite copies a whole store in one).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::size_of;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// The name the VFS is registered under, for `vfs=` in a connection's URL.
pub const VFS_NAME: &str = "kopilka-wal-buffer";
const VFS_NAME_C: &CStr = c"kopilka-wal-buffer";

/// Frames gathered before they are written even without a commit: a transaction larger than this
/// (an import's) is written in pieces of this size.
const BUFFER_MAX: usize = 4 << 20;
/// The size of a WAL frame's header.
const FRAME_HEADER: usize = 24;
/// The most one write to the default VFS may carry: its `unixWrite` masks a write's length to 17
/// bits (`seekAndWriteFd`), so a larger one would come out short and read as a full disk.
const WRITE_MAX: usize = 64 << 10;

/// Writes this process's WAL files took into a buffer instead of passing them on.
static GATHERED: AtomicU64 = AtomicU64::new(0);

/// How many writes to WAL files went into a buffer so far in this process (tests and diagnostics:
/// zero means the store's connections do not go through this VFS).
pub fn writes_gathered() -> u64 {
    GATHERED.load(Ordering::Relaxed)
}

/// Registers the VFS once per process. `None` when SQLite has no default VFS to wrap or refuses
/// the registration; connections then open through SQLite's default VFS, unbuffered.
pub fn vfs() -> Option<&'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    // SAFETY: `register` runs once; see there.
    let registered = *REGISTERED.get_or_init(|| unsafe { register() });
    registered.then_some(VFS_NAME)
}

/// SAFETY: must run at most once per process (the VFS struct is leaked and registered by name).
unsafe fn register() -> bool {
    let default = ffi::sqlite3_vfs_find(ptr::null());
    if default.is_null() {
        return false;
    }
    let base = &*default;
    let vfs = Box::new(ffi::sqlite3_vfs {
        iVersion: base.iVersion,
        szOsFile: (real_offset() + base.szOsFile as usize) as c_int,
        mxPathname: base.mxPathname,
        pNext: ptr::null_mut(),
        zName: VFS_NAME_C.as_ptr(),
        pAppData: default.cast(),
        xOpen: Some(open),
        xDelete: Some(delete),
        xAccess: Some(access),
        xFullPathname: Some(full_pathname),
        // SQLite's unix VFS does not look at the VFS it is called with in these.
        xDlOpen: base.xDlOpen,
        xDlError: base.xDlError,
        xDlSym: base.xDlSym,
        xDlClose: base.xDlClose,
        xRandomness: base.xRandomness,
        xSleep: base.xSleep,
        xCurrentTime: base.xCurrentTime,
        xGetLastError: base.xGetLastError,
        xCurrentTimeInt64: base.xCurrentTimeInt64,
        xSetSystemCall: base.xSetSystemCall,
        xGetSystemCall: base.xGetSystemCall,
        xNextSystemCall: base.xNextSystemCall,
    });
    ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) == ffi::SQLITE_OK
}

/// The default VFS this one wraps.
unsafe fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    (*vfs).pAppData.cast()
}

/// A WAL file: the default VFS's file lives in the same allocation, `real_offset()` bytes in.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Appended frames not yet written, which end at `frontier`.
    buffer: Vec<u8>,
    /// Where the last write ended: a write starting there continues the appends.
    frontier: i64,
    /// The last write was a commit frame's header: the page that follows ends the commit.
    commit_pending: bool,
}

const fn real_offset() -> usize {
    size_of::<WalFile>().next_multiple_of(16)
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: the shared-memory and memory-map methods belong to the database file, never the WAL.
    iVersion: 1,
    xClose: Some(wal_close),
    xRead: Some(wal_read),
    xWrite: Some(wal_write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(wal_sector_size),
    xDeviceCharacteristics: Some(wal_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs(vfs);
    let real_open = (*real_vfs).xOpen.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the default VFS's own file, in the (larger) space SQLite gave this one.
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real: *mut ffi::sqlite3_file = file.cast::<u8>().add(real_offset()).cast();
    (*real).pMethods = ptr::null();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        if !(*real).pMethods.is_null() {
            if let Some(close) = (*(*real).pMethods).xClose {
                close(real);
            }
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file { pMethods: &WAL_METHODS },
            real,
            buffer: Vec::new(),
            frontier: -1,
            commit_pending: false,
        },
    );
    ffi::SQLITE_OK
}

unsafe extern "C" fn delete(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let real = real_vfs(vfs);
    (*real).xDelete.expect("a VFS deletes files")(real, name, sync_dir)
}

unsafe extern "C" fn access(vfs: *mut ffi::sqlite3_vfs, name: *const c_char, flags: c_int, out: *mut c_int) -> c_int {
    let real = real_vfs(vfs);
    (*real).xAccess.expect("a VFS checks access")(real, name, flags, out)
}

unsafe extern "C" fn full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let real = real_vfs(vfs);
    (*real).xFullPathname.expect("a VFS resolves paths")(real, name, n, out)
}

unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *file.cast::<WalFile>()
}

unsafe fn methods(file: &WalFile) -> &ffi::sqlite3_io_methods {
    &*(*file.real).pMethods
}

/// Writes what the buffer holds.
unsafe fn flush(file: &mut WalFile) -> c_int {
    if file.buffer.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods(file).xWrite.expect("files are written");
    let mut rc = ffi::SQLITE_OK;
    let mut offset = file.frontier - file.buffer.len() as i64;
    for piece in file.buffer.chunks(WRITE_MAX) {
        rc = write(file.real, piece.as_ptr().cast(), piece.len() as c_int, offset);
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += piece.len() as i64;
    }
    file.buffer.clear();
    rc
}

unsafe extern "C" fn wal_write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let file = wal(file);
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount as usize);
    if offset == file.frontier {
        file.buffer.extend_from_slice(bytes);
        GATHERED.fetch_add(1, Ordering::Relaxed);
    } else {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let rc = methods(file).xWrite.expect("files are written")(file.real, data, amount, offset);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    file.frontier = offset + i64::from(amount);
    let ends_commit = file.commit_pending;
    file.commit_pending = bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4];
    if ends_commit || file.buffer.len() >= BUFFER_MAX {
        return flush(file);
    }
    ffi::SQLITE_OK
}

/// Closes the file, dropping what the buffer holds: every commit empties it, so anything left
/// belongs to a transaction that ended without one, and written now it could land on frames
/// another connection committed since.
unsafe extern "C" fn wal_close(file: *mut ffi::sqlite3_file) -> c_int {
    let wal_file = wal(file);
    let real = wal_file.real;
    let closed = methods(wal_file).xClose.expect("files are closed")(real);
    ptr::drop_in_place(file.cast::<WalFile>());
    closed
}

/// Empties the buffer, then passes the call on: every operation but an appending write sees the
/// file as SQLite wrote it.
macro_rules! flushed_then {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            let file = wal(file);
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            methods(file).$method.expect(stringify!($method))(file.real $(, $arg)*)
        }
    };
}

flushed_then!(wal_read, xRead, (data: *mut c_void, amount: c_int, offset: i64));
flushed_then!(wal_truncate, xTruncate, (size: i64));
flushed_then!(wal_sync, xSync, (flags: c_int));
flushed_then!(wal_file_size, xFileSize, (size: *mut i64));
flushed_then!(wal_lock, xLock, (level: c_int));
flushed_then!(wal_unlock, xUnlock, (level: c_int));
flushed_then!(wal_check_reserved_lock, xCheckReservedLock, (out: *mut c_int));
flushed_then!(wal_file_control, xFileControl, (op: c_int, arg: *mut c_void));

unsafe extern "C" fn wal_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let file = wal(file);
    methods(file).xSectorSize.map_or(4096, |sector_size| sector_size(file.real))
}

unsafe extern "C" fn wal_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let file = wal(file);
    methods(file).xDeviceCharacteristics.map_or(0, |characteristics| characteristics(file.real))
}
