//! The data commands: `demo` (a living tenant from a seed), `import` and `export` (CSV in and out),
//! `migrate-store` (a whole store moved to another database).
//!
//! All three talk to the store the way the server does: every change goes through the writer, so
//! an import is checked by the same rules as the API, and reads use the store's read pool. Work is
//! submitted concurrently (bounded by [`IN_FLIGHT_MAX`]) so the writer's group commit can batch it.

mod csv_format;
mod demo;
mod export;
mod import;
mod migrate_store;
mod online_retail;

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use kopilka_server::engine::{Idempotency, Kept, Reply, Request};
use kopilka_server::error::ApiError;
use kopilka_server::writer::{Answer, Writer, BULK_BATCH_SIZE_MAX};
use sha2::{Digest, Sha256};

pub use demo::demo;
pub use export::export;
pub use import::import;
pub use migrate_store::migrate_store;

/// Requests in flight at once: enough to fill the writer's batches (1,024), few enough that memory
/// and the writer's queue (16,384) stay small.
pub const IN_FLIGHT_MAX: usize = 1_000;
/// Requests in flight at once to a bulk writer (`app::open_bulk`): two of its batches, so one
/// fills while the other is written, as many as its queue holds; tens of megabytes.
pub const BULK_IN_FLIGHT_MAX: usize = 2 * BULK_BATCH_SIZE_MAX;

#[derive(Args)]
pub struct DemoArgs {
    /// How many members the demo tenant gets.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Seed of the generator: the same seed makes the same demo.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What a CSV file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataKind {
    Members,
    Transactions,
}

/// The layout of an input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Kopilka's own CSV (what `kopilka export` writes); see the column lists below.
    Kopilka,
    /// The UCI Online Retail file (InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,
    /// CustomerID,Country; .csv or .csv.gz; prices in GBP). Customers become members (external_id
    /// uci-<CustomerID>), invoices purchases at their InvoiceDate (UTC), and cancellations (InvoiceNo
    /// C…) returns of the customer's earlier purchases of the same StockCode, most recent first.
    /// Rows that cannot be lines (no CustomerID, zero prices, ...) are skipped and counted. The tenant's
    /// program must bill in GBP; --new-tenant makes one so. Give `members` or `transactions`: both
    /// import the whole file.
    OnlineRetail,
}

#[derive(Args)]
#[command(after_long_help = import::IMPORT_HELP)]
pub struct ImportArgs {
    /// `members` or `transactions`.
    pub kind: DataKind,
    /// The CSV file (with a header row).
    pub file: PathBuf,
    /// The tenant to import into.
    #[arg(long, required_unless_present = "new_tenant", conflicts_with = "new_tenant")]
    pub tenant: Option<i64>,
    /// Creates a tenant with this name and the default program, prints its id and admin key once,
    /// and imports into it.
    #[arg(long, value_name = "NAME")]
    pub new_tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = InputFormat::Kopilka)]
    pub format: InputFormat,
}

#[derive(Args)]
#[command(after_long_help = "The CSV written is exactly what `kopilka import` reads: see `kopilka import --help`.")]
pub struct ExportArgs {
    /// `members` or `transactions`.
    pub kind: DataKind,
    #[arg(long)]
    pub tenant: i64,
    /// Where to write the CSV; standard output when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The idempotency record of an imported row: a key derived from the file's own ids, and a hash of
/// the command, so that a changed row under an old key is refused rather than silently ignored.
/// `kept` says what a second run needs of the first answer: `kopilka import` only that the row was
/// applied ([`Kept::Status`]), the Online Retail import the member each answer names. No API request
/// can replay these keys: its hash is taken over other bytes.
fn idempotency(key: String, command: &impl serde::Serialize, kept: Kept) -> Idempotency {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(command).expect("commands serialize"));
    Idempotency { key, request_hash: hasher.finalize().to_vec(), kept }
}

/// Runs `tasks` with at most [`IN_FLIGHT_MAX`] at once and returns their results in input order.
async fn run_bounded<T, F>(tasks: impl IntoIterator<Item = F>) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut results: Vec<Option<T>> = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        results.push(None);
        if set.len() >= IN_FLIGHT_MAX {
            let (done, value) = set.join_next().await.expect("the set is not empty")?;
            results[done] = Some(value);
        }
        set.spawn(async move { (index, task.await) });
    }
    while let Some(joined) = set.join_next().await {
        let (done, value) = joined?;
        results[done] = Some(value);
    }
    Ok(results.into_iter().map(|r| r.expect("every task ran")).collect())
}

/// Sends requests to a bulk writer in the order given, at most [`BULK_IN_FLIGHT_MAX`] waiting at once, and
/// returns what `keep` makes of each answer, in the same order. The writer decides requests in
/// arrival order, so ids (members, purchases) follow the input: an import is deterministic, and
/// its export comes back in the same order. Each request is on the writer's queue before the next
/// is sent (an `enqueue` awaited to the end, not polled once: a poll can be refused by tokio's
/// cooperative budget, and the request would then reach the queue only when its answer is
/// awaited, serializing the import into batches of a few requests and letting later requests
/// overtake it). Requests are built from `requests` as they are sent and answers reduced by
/// `keep` as they arrive, so a million-row import holds only those in flight.
async fn submit_in_order<T>(
    writer: &Writer,
    requests: impl IntoIterator<Item = Request>,
    mut keep: impl FnMut(Result<Reply, ApiError>) -> T,
) -> Vec<T> {
    let mut results = Vec::new();
    let mut waiting = VecDeque::new();
    for request in requests {
        if waiting.len() >= BULK_IN_FLIGHT_MAX {
            results.push(keep(wait(waiting.pop_front().expect("not empty")).await));
        }
        waiting.push_back(writer.enqueue(request).await);
    }
    for answer in waiting {
        results.push(keep(wait(answer).await));
    }
    results
}

async fn wait(enqueued: Result<Answer, ApiError>) -> Result<Reply, ApiError> {
    enqueued?.await
}

fn display_name(path: &Path) -> String {
    path.display().to_string()
}
