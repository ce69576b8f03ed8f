//! Peak resident memory (`VmHWM` in `/proc/PID/status`) of the processes the suite measures.
//!
//! A child process is watched by a thread that reads its `VmHWM` until it exits, because the
//! kernel drops the figure from a zombie's status. The bench's own figure can be reset between
//! phases through `/proc/self/clear_refs`, so an in-process phase reports its own peak.

use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `VmHWM` of `pid` (or of this process) in KiB; `None` where /proc does not say.
pub fn peak_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resets this process's `VmHWM` to its current resident size (Linux ≥ 4.0), so the next reading
/// is the peak of what runs in between. Returns false where the kernel refused.
pub fn reset_own_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The highest `VmHWM` read of a child so far, kept by a watching thread while the child lives.
#[derive(Clone, Default)]
pub struct Watch(Arc<AtomicU64>);

impl Watch {
    pub fn start(child: &Child) -> Watch {
        let watch = Watch::default();
        let (pid, peak) = (child.id(), watch.0.clone());
        std::thread::spawn(move || {
            while let Some(kib) = peak_kib(Some(pid)) {
                peak.fetch_max(kib, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        watch
    }

    /// Reads once more now (the thread may be between reads) and returns the peak in KiB.
    pub fn peak_now(&self, pid: u32) -> u64 {
        if let Some(kib) = peak_kib(Some(pid)) {
            self.0.fetch_max(kib, Ordering::Relaxed);
        }
        self.0.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
