//! Prometheus metrics, kept in plain atomics and rendered as text at `/metrics`. No global
//! recorder: each server (and each test server in one process) has its own.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    pub writer_batches: AtomicU64,
    pub writer_commands: AtomicU64,
    pub writer_commit_failures: AtomicU64,
    /// Batches decided a second time because a command met a ledger loaded light.
    pub writer_whole_reloads: AtomicU64,
    pub writer_commit_micros: AtomicU64,
    /// Where the writer's time goes, per [`WriterStage`]: what bounds its batches.
    pub writer_stage_micros: [AtomicU64; WriterStage::ALL.len()],
    /// fsyncs of SQLite's WAL made before answers go out (`durable`), and their time: batches per
    /// fsync is `writer_batches / writer_wal_syncs`.
    pub writer_wal_syncs: AtomicU64,
    pub writer_wal_sync_micros: AtomicU64,
    pub job_movements: AtomicU64,
}

/// The steps of a writer batch, one after another on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterStage {
    /// BEGIN (the write lock), programs saved by other nodes, the id seeds.
    Begin,
    /// Reading what the batch's commands name: members' ledgers, idempotency keys, purchases.
    Load,
    /// Deciding every command in memory.
    Decide,
    /// The multi-row INSERTs and UPDATEs, and the id seeds saved.
    Flush,
    /// COMMIT: PostgreSQL's fsync; on SQLite the WAL written, its fsync running beside the writer.
    Commit,
}

impl WriterStage {
    pub const ALL: [WriterStage; 5] =
        [WriterStage::Begin, WriterStage::Load, WriterStage::Decide, WriterStage::Flush, WriterStage::Commit];

    pub fn name(self) -> &'static str {
        match self {
            WriterStage::Begin => "begin",
            WriterStage::Load => "load",
            WriterStage::Decide => "decide",
            WriterStage::Flush => "flush",
            WriterStage::Commit => "commit",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Metrics {
    pub fn add_stage(&self, stage: WriterStage, elapsed: Duration) {
        self.writer_stage_micros[stage as usize].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Seconds the writer has spent in each stage, in [`WriterStage::ALL`]'s order.
    pub fn stage_seconds(&self) -> Vec<(&'static str, f64)> {
        WriterStage::ALL
            .iter()
            .map(|stage| (stage.name(), self.writer_stage_micros[*stage as usize].load(Ordering::Relaxed) as f64 / 1e6))
            .collect()
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().expect("metrics lock");
        let histogram = requests.entry((method.to_string(), route.to_string(), status)).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_s += seconds;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE kopilka_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in self.requests.lock().expect("metrics lock").iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (count, bound) in h.buckets.iter().zip(LATENCY_BUCKETS_S) {
                let _ =
                    writeln!(out, "kopilka_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "kopilka_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "kopilka_http_request_duration_seconds_sum{{{labels}}} {}", h.sum_s);
            let _ = writeln!(out, "kopilka_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        for (name, help, value) in [
            ("kopilka_writer_batches_total", "Transactions committed by the writer", &self.writer_batches),
            ("kopilka_writer_commands_total", "Commands applied by the writer", &self.writer_commands),
            ("kopilka_writer_commit_failures_total", "Batches whose commit failed", &self.writer_commit_failures),
            (
                "kopilka_writer_whole_reloads_total",
                "Batches decided again with every ledger whole (a command met a ledger loaded light)",
                &self.writer_whole_reloads,
            ),
            (
                "kopilka_writer_commit_microseconds_total",
                "Time spent writing and committing batches",
                &self.writer_commit_micros,
            ),
            ("kopilka_writer_wal_syncs_total", "fsyncs of SQLite's WAL before answers", &self.writer_wal_syncs),
            (
                "kopilka_writer_wal_sync_microseconds_total",
                "Time spent in fsyncs of SQLite's WAL, beside the writer",
                &self.writer_wal_sync_micros,
            ),
            ("kopilka_job_movements_total", "Activation and expiry movements made by jobs", &self.job_movements),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "kopilka_writer_stage_microseconds_total";
        let _ = writeln!(out, "# HELP {name} Time the writer spent in each step of its batches\n# TYPE {name} counter");
        for stage in WriterStage::ALL {
            let micros = self.writer_stage_micros[stage as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{stage=\"{}\"}} {micros}", stage.name());
        }
        out
    }
}
