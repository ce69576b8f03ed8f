//! `kopilka import members|transactions FILE --tenant ID`: CSV in, through the writer.
//!
//! An import runs in two steps. First the whole file is read and checked: every row parsed, every
//! value in range, receipts assembled, members looked up. If anything is wrong, every problem is
//! reported with its line and column and nothing is submitted. Then each member or receipt is
//! submitted as one writer command, concurrently, with an idempotency key made from the file's
//! own ids (`import:member:card:…`, `import:purchase:<external_id>`, `import:return:<external_id>`),
//! so running the same file again moves nothing twice.
//!
//! A command the writer refuses in the second step (a receipt already recorded by the API, a
//! redemption larger than the balance, an identifier that belongs to another member) is reported
//! with its lines and the import goes on with the rest: the rows are independent, and stopping
//! half-way would leave the operator with a file that is partly imported anyway. The command exits
//! with an error listing the refused rows; after fixing them, the operator runs the same file again
//! and only what was refused is new. See [`IMPORT_HELP`] for the columns.

// foldhash's maps, not std's: a million rows go through them in the check, and SipHash was a
// third of its time.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use kopilka_store::Database;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use jiff::Timestamp;
use kopilka_core::member::{Consents, Gender, IdentifierKind, Profile};
use kopilka_core::purchase::{Channel, LineInput, ReturnLine, AMOUNT_MINOR_MAX, LINES_MAX, QUANTITY_MAX, TEXT_LEN_MAX};
use kopilka_core::{Currency, DomainError, MemberId, TenantId};
use kopilka_server::app::{self, AppState};
use kopilka_server::auth::generate_key;
use kopilka_server::clock::SystemClock;
use kopilka_server::dto::{PurchaseRequest, ReturnRequest, TenantCreated};
use kopilka_server::engine::{Command, Kept, Reply, Request};
use kopilka_server::error::ApiError;
use kopilka_server::metrics::Metrics;
use kopilka_store::Store;

use super::csv_format::{reader, Header, Problem, Problems, Row, MEMBER_COLUMNS, TRANSACTION_COLUMNS};
use super::{display_name, idempotency, submit_in_order, DataKind, ImportArgs, InputFormat};

/// The columns and rules of the CSV files, shown by `kopilka import --help`.
pub const IMPORT_HELP: &str = "\
FILES
  UTF-8 CSV with a header row. Columns may come in any order and may be left out (a column left
  out is empty on every row); an unknown column is an error. An empty value means none.

MEMBERS: one row per member
  card, phone, email, external_id   identifiers; at least one is required. phone in international
                                    form (+79120000000), card and external_id 1-64 of A-Z a-z 0-9 - _ . :
  name, city                        text
  birth_date                        YYYY-MM-DD
  gender                            female, male or other
  signup_at                         RFC 3339, e.g. 2025-03-01T10:15:00+03:00 (empty: the time of import)
  consent_email, consent_sms, consent_push, consent_messenger   true or false (empty: false)
  The first of external_id, card, phone, email names the member for re-runs.

TRANSACTIONS: one row per receipt line; rows with the same type and external_id form one receipt
  type                 purchase or return
  external_id          the receipt number (a return has its own number)
  member_external_id, member_card, member_phone, member_email
                       the member, by exactly one of these (must exist: import members first).
                       Optional on return rows: the purchase names the member.
  occurred_at          purchases: RFC 3339 (empty: the time of import). Returns: informational;
                       a return is recorded at the time of import.
  channel              pos, web, app or partner (empty: pos)
  store                the shop, free text
  currency             ISO 4217 code of the bill, the program's bill currency (e.g. RUB)
  redeem_points        points paying part of the bill (empty: 0); within the balance and the cap
  sku, category        the item; sku is required on purchase rows
  quantity             whole items, 1 or more
  unit_price_minor     price of one item in minor units (kopecks): 12.50 RUB is 1250
  discount_minor       discount on the whole line in minor units (empty: 0)
  purchase_external_id return rows: the receipt number of the purchase returned
  line                 return rows: the position of the returned line on the purchase receipt,
                       counting from 1. May be left empty when the purchase is in the same file
                       and its sku is on one line only.
  Receipt columns (member, occurred_at, channel, store, currency, redeem_points) must be equal on
  every row of a receipt, or empty after its first row. A return row lists line (or sku) and
  quantity; a return receipt with one row whose line, sku and quantity are empty returns
  everything left of the purchase. unit_price_minor, discount_minor, currency, redeem_points,
  channel and store must be empty on return rows: a return takes its prices from the purchase.
  A member's receipts are recorded in file order, so put a purchase before its return.

CHECKS AND RE-RUNS
  The whole file is checked before anything is written; every problem is reported with its line
  and column, and nothing is imported. Each member or receipt is then one command with an
  idempotency key from its id (import:purchase:<external_id>, ...): running the same file again
  skips what was imported. A command refused by the ledger (for example a redemption larger than
  the balance) is reported with its lines; the rest of the file is imported and the command exits
  with an error. Fix the refused rows and run the same file again.

  --format online-retail reads the UCI Online Retail file instead (see --format).";

/// Member identifier columns in transactions, with the identifier each names.
const MEMBER_REF_COLUMNS: [(&str, IdentifierKind); 4] = [
    ("member_external_id", IdentifierKind::ExternalId),
    ("member_card", IdentifierKind::Card),
    ("member_phone", IdentifierKind::Phone),
    ("member_email", IdentifierKind::Email),
];

/// Hops followed from a merged member to its survivor before calling the data corrupt.
const MERGE_HOPS_MAX: usize = 16;

pub async fn import(database: &Database, args: ImportArgs) -> anyhow::Result<()> {
    if args.format == InputFormat::OnlineRetail {
        return super::online_retail::import(database, &args).await;
    }
    let started = Instant::now();
    let file = display_name(&args.file);
    let records = read_records(&args.file)?;
    let (state, writer_task) = app::open_bulk(database, Arc::new(SystemClock)).await?;
    let result = async {
        let tenant = target_tenant(&state, &args).await?;
        match args.kind {
            DataKind::Members => import_members(&state, tenant, &file, &records, started).await,
            DataKind::Transactions => import_transactions(&state, tenant, &file, records, started).await,
        }
    }
    .await;
    drop(state);
    writer_task.await?;
    result
}

/// The tenant named by `--tenant`, or a new one made for `--new-tenant` (its key printed once).
pub async fn target_tenant(state: &AppState, args: &ImportArgs) -> anyhow::Result<TenantId> {
    if let Some(id) = args.tenant {
        if !state.store.tenant_exists(TenantId(id)).await? {
            bail!("--tenant {id}: no such tenant");
        }
        return Ok(TenantId(id));
    }
    let name = args.new_tenant.clone().context("name the tenant with --tenant ID or --new-tenant NAME")?;
    let command = Command::CreateTenant { name: name.clone(), admin_key: generate_key() };
    let reply = state.writer.submit(Request { tenant: TenantId(0), idempotency: None, command }).await?;
    let created: TenantCreated = serde_json::from_slice(&reply.body)?;
    println!("Created tenant {} ({name:?}) with the default program.", created.id);
    println!("Its admin API key, shown this once (only its hash is kept):\n\n    {}\n", created.admin_key);
    Ok(TenantId(created.id))
}

/// Reads a CSV (or .csv.gz) file into records with their line numbers; the header is the first.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<(u64, csv::StringRecord)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let input: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut records = Vec::new();
    for (index, record) in reader(input).into_records().enumerate() {
        let record = record.map_err(|error| {
            let line = error.position().map(|p| p.line()).unwrap_or(index as u64 + 1);
            anyhow::anyhow!("{} line {line}: not readable as CSV: {error}", path.display())
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(index as u64 + 1);
        records.push((line, record));
    }
    if records.is_empty() {
        bail!("{} is empty: it needs a header row", path.display());
    }
    // PostgreSQL's TEXT cannot hold it (SQLite's can), and no column has a use for it.
    let header = records[0].1.clone();
    for (line, record) in &records {
        if let Some(column) = record.iter().position(|field| field.contains('\0')) {
            bail!(
                "{} line {line}, column {}: holds the NUL character (byte 0), which the store cannot keep; remove it \
                 (nothing was imported)",
                path.display(),
                header.get(column).unwrap_or("?")
            );
        }
    }
    Ok(records)
}

/// Checks the header and the width of every row, then hands each row to `parse_row`.
fn parse_rows<T>(
    file: &str,
    records: &[(u64, csv::StringRecord)],
    known: &[&'static str],
    mut parse_row: impl FnMut(&Row) -> Result<T, Problem>,
) -> Result<Vec<T>, Problems> {
    let fail = |problems| Problems { file: file.to_string(), problems };
    let header = Header::parse(&records[0].1, known).map_err(fail)?;
    let mut parsed = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    for (line, record) in &records[1..] {
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // a blank line
        }
        if record.len() != header.width {
            problems.push(Problem::line(
                *line,
                format!(
                    "{} values but the header has {} columns; quote values that contain commas",
                    record.len(),
                    header.width
                ),
            ));
            continue;
        }
        match parse_row(&Row::new(*line, &header, record)) {
            Ok(row) => parsed.push(row),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(fail(problems))
    }
}

/// What happened to one submitted member or receipt.
enum Outcome {
    Imported,
    AlreadyImported,
    Refused(String),
}

impl Outcome {
    fn of(result: &Result<Reply, ApiError>) -> Outcome {
        match result {
            Ok(reply) if reply.replayed => Outcome::AlreadyImported,
            Ok(_) => Outcome::Imported,
            Err(ApiError::IdempotencyKeyReused { .. }) => Outcome::Refused(
                "imported before with different values; an import never changes what it recorded".into(),
            ),
            Err(error) => Outcome::Refused(format!("{} ({})", error, error.problem().code)),
        }
    }
}

/// Counts of an import, printed at the end.
struct Report<'a> {
    file: &'a str,
    rows: usize,
    unit: &'static str,
    imported: usize,
    already: usize,
    /// (first line, lines, reason) of each refused member or receipt.
    refused: Vec<(u64, String, String)>,
}

impl Report<'_> {
    fn add(&mut self, lines: &[u64], outcome: Outcome) {
        match outcome {
            Outcome::Imported => self.imported += 1,
            Outcome::AlreadyImported => self.already += 1,
            Outcome::Refused(reason) => {
                self.refused.push((lines.first().copied().unwrap_or(0), lines_label(lines), reason))
            }
        }
    }

    fn finish(mut self, started: Instant) -> anyhow::Result<()> {
        self.refused.sort();
        for (_, lines, reason) in &self.refused {
            eprintln!("{} {lines}: refused: {reason}", self.file);
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{}: {} rows; {} {} imported, {} already imported, {} refused; {:.2} s, {:.0} rows/s",
            self.file,
            self.rows,
            self.imported,
            self.unit,
            self.already,
            self.refused.len(),
            seconds,
            self.rows as f64 / seconds.max(1e-9)
        );
        if !self.refused.is_empty() {
            bail!(
                "{} {} refused (listed above); the rest was imported. Fix those rows and run the same \
                 import again: what was imported is skipped",
                self.refused.len(),
                self.unit
            );
        }
        Ok(())
    }
}

/// Where the writer's time went: what bounds an import's speed.
fn writer_summary(metrics: &Metrics) -> String {
    let batches = metrics.writer_batches.load(Ordering::Relaxed);
    let commands = metrics.writer_commands.load(Ordering::Relaxed);
    let stages: Vec<String> =
        metrics.stage_seconds().into_iter().map(|(stage, seconds)| format!("{stage} {seconds:.2} s")).collect();
    format!(
        "the writer committed {batches} transactions of {:.0} commands on average; {}",
        commands as f64 / batches.max(1) as f64,
        stages.join(", ")
    )
}

fn lines_label(lines: &[u64]) -> String {
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first == last => format!("line {first}"),
        (Some(first), Some(last)) if (last - first) as usize + 1 == lines.len() => format!("lines {first}-{last}"),
        _ => format!("lines {}", lines.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
    }
}

// ---------------------------------------------------------------------------------------------
// Members

/// A member row, checked and ready to submit.
pub struct MemberImport {
    pub line: u64,
    /// The idempotency key: the member's first identifier.
    pub key: String,
    pub profile: Profile,
    pub signup_at: Option<Timestamp>,
}

fn column_of_field(field: &str, known: &[&'static str]) -> Option<&'static str> {
    known.iter().copied().find(|c| *c == field)
}

fn parse_member(row: &Row) -> Result<MemberImport, Problem> {
    let gender = match row.get("gender") {
        None => None,
        Some(text) => Some(Gender::parse(&text.to_lowercase()).ok_or_else(|| {
            row.problem("gender", format!("{text:?} is not a gender: write female, male or other, or leave it empty"))
        })?),
    };
    let profile = Profile {
        card: row.text("card"),
        phone: row.text("phone"),
        email: row.text("email"),
        external_id: row.text("external_id"),
        name: row.text("name"),
        birth_date: row.date("birth_date")?,
        gender,
        city: row.text("city"),
        consents: Consents {
            email: row.boolean("consent_email")?,
            sms: row.boolean("consent_sms")?,
            push: row.boolean("consent_push")?,
            messenger: row.boolean("consent_messenger")?,
        },
        // Kopilka's member CSV has no columns for these; the API sets them.
        time_zone: None,
        language: None,
    };
    let signup_at = row.timestamp("signup_at")?;
    let profile = profile.normalized().map_err(|error| domain_problem(row.line, error, &MEMBER_COLUMNS))?;
    let key = [IdentifierKind::ExternalId, IdentifierKind::Card, IdentifierKind::Phone, IdentifierKind::Email]
        .into_iter()
        .find_map(|kind| profile.identifier(kind).map(|value| format!("import:member:{}:{value}", kind.as_str())))
        .ok_or_else(|| {
            Problem::line(
                row.line,
                "a member needs at least one of card, phone, email, external_id, so it can be found and imported once",
            )
        })?;
    Ok(MemberImport { line: row.line, key, profile, signup_at })
}

fn domain_problem(line: u64, error: DomainError, known: &[&'static str]) -> Problem {
    match &error {
        DomainError::Invalid { field, reason } => match column_of_field(field, known) {
            Some(column) => Problem::at(line, column, reason.clone()),
            None => Problem::line(line, error.to_string()),
        },
        _ => Problem::line(line, error.to_string()),
    }
}

/// Parses and checks a members file; identifiers repeated within the file are problems too.
pub fn parse_members(file: &str, records: &[(u64, csv::StringRecord)]) -> Result<Vec<MemberImport>, Problems> {
    let members = parse_rows(file, records, &MEMBER_COLUMNS, parse_member)?;
    let mut seen: HashMap<(IdentifierKind, &str), u64> = HashMap::new();
    let mut problems = Vec::new();
    for member in &members {
        for kind in IdentifierKind::ALL {
            let Some(value) = member.profile.identifier(kind) else { continue };
            if let Some(first) = seen.insert((kind, value), member.line) {
                problems.push(Problem::at(
                    member.line,
                    kind.as_str(),
                    format!("{value:?} is also on line {first}: each identifier belongs to one member"),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(members)
    } else {
        Err(Problems { file: file.to_string(), problems })
    }
}

/// Submits checked members through the writer, in file order; returns how each went.
async fn submit_members(
    state: &AppState,
    tenant: TenantId,
    members: Vec<MemberImport>,
) -> Vec<(MemberImport, Outcome)> {
    let requests: Vec<Request> = members
        .iter()
        .map(|member| {
            let command = Command::CreateMember { profile: member.profile.clone(), signup_at: member.signup_at };
            let hashed = (&member.profile, member.signup_at);
            Request { tenant, idempotency: Some(idempotency(member.key.clone(), &hashed, Kept::Status)), command }
        })
        .collect();
    let results = submit_in_order(&state.writer, requests, |result| Outcome::of(&result)).await;
    members.into_iter().zip(results).collect()
}

async fn import_members(
    state: &AppState,
    tenant: TenantId,
    file: &str,
    records: &[(u64, csv::StringRecord)],
    started: Instant,
) -> anyhow::Result<()> {
    let members = parse_members(file, records)?;
    let mut report = Report { file, rows: members.len(), unit: "members", imported: 0, already: 0, refused: vec![] };
    for (member, outcome) in submit_members(state, tenant, members).await {
        report.add(&[member.line], outcome);
    }
    report.finish(started)
}

// ---------------------------------------------------------------------------------------------
// Transactions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReceiptKind {
    Purchase,
    Return,
}

/// A member as a transactions row names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemberRef {
    kind: IdentifierKind,
    value: String,
}

/// One item of a return receipt as the file says it.
#[derive(Debug, Clone)]
struct ReturnItem {
    file_line: u64,
    line: Option<usize>,
    sku: Option<String>,
    quantity: Option<i64>,
}

/// A receipt assembled from its rows.
#[derive(Debug, Clone)]
struct Receipt {
    kind: ReceiptKind,
    external_id: String,
    rows: Vec<u64>,
    member: Option<(MemberRef, u64, &'static str)>,
    occurred_at: Option<Timestamp>,
    channel: Channel,
    store: Option<String>,
    currency: Option<String>,
    redeem_points: i64,
    purchase_external_id: Option<String>,
    lines: Vec<LineInput>,
    items: Vec<ReturnItem>,
}

/// One row of a transactions file, parsed.
struct TransactionRow {
    line: u64,
    kind: ReceiptKind,
    external_id: String,
    member: Option<(MemberRef, &'static str)>,
    occurred_at: Option<Timestamp>,
    channel: Option<Channel>,
    store: Option<String>,
    currency: Option<String>,
    redeem_points: Option<i64>,
    purchase_external_id: Option<String>,
    line_input: Option<LineInput>,
    item: Option<ReturnItem>,
}

fn check_text(row: &Row, column: &'static str) -> Result<Option<String>, Problem> {
    let Some(text) = row.text(column) else { return Ok(None) };
    if text.chars().count() > TEXT_LEN_MAX {
        return Err(row.problem(column, format!("longer than {TEXT_LEN_MAX} characters")));
    }
    Ok(Some(text))
}

fn parse_transaction(row: &Row) -> Result<TransactionRow, Problem> {
    let kind = match row.get("type") {
        Some("purchase") => ReceiptKind::Purchase,
        Some("return") => ReceiptKind::Return,
        Some(other) => return Err(row.problem("type", format!("{other:?} is not a type: write purchase or return"))),
        None => return Err(row.problem("type", "empty: write purchase or return")),
    };
    let external_id = check_text(row, "external_id")?
        .ok_or_else(|| row.problem("external_id", "empty: every row needs its receipt number"))?;
    let mut member = None;
    for (column, identifier) in MEMBER_REF_COLUMNS {
        let Some(raw) = row.get(column) else { continue };
        if let Some((_, first)) = &member {
            return Err(row.problem(
                column,
                format!("the member is already named by {first}: name it by exactly one member_ column"),
            ));
        }
        let value = identifier.normalize(raw).map_err(|error| match error {
            DomainError::Invalid { reason, .. } => row.problem(column, format!("{raw:?}: {reason}")),
            other => row.problem(column, other.to_string()),
        })?;
        member = Some((MemberRef { kind: identifier, value }, column));
    }
    let occurred_at = row.timestamp("occurred_at")?;
    let channel = match row.get("channel") {
        None => None,
        Some(text) => Some(Channel::parse(text).ok_or_else(|| {
            row.problem("channel", format!("{text:?} is not a channel: write pos, web, app or partner"))
        })?),
    };
    let currency = match row.get("currency") {
        None => None,
        Some(code) => {
            Currency::parse(code).map_err(|_| {
                row.problem("currency", format!("{code:?} is not an ISO 4217 currency code: write e.g. RUB"))
            })?;
            Some(code.to_string())
        }
    };
    let redeem_points = row.integer("redeem_points", "a whole number of points")?;
    if redeem_points.is_some_and(|p| !(0..=kopilka_core::purchase::POINTS_MAX).contains(&p)) {
        return Err(row.problem("redeem_points", "must be zero or positive"));
    }
    let purchase_external_id = check_text(row, "purchase_external_id")?;
    let sku = check_text(row, "sku")?;
    let category = check_text(row, "category")?;
    let quantity = row.integer("quantity", "a whole number of items")?;
    if let Some(quantity) = quantity {
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(row.problem("quantity", format!("{quantity} is out of range: write 1 to {QUANTITY_MAX}")));
        }
    }
    let minor_units = "an integer number of minor units (write 12.50 as 1250)";
    let unit_price_minor = row.integer("unit_price_minor", minor_units)?;
    let discount_minor = row.integer("discount_minor", minor_units)?;
    let store = check_text(row, "store")?;
    let line_number = row.integer("line", "a line number (1 for the first line of the purchase)")?;
    let mut parsed = TransactionRow {
        line: row.line,
        kind,
        external_id,
        member,
        occurred_at,
        channel,
        store,
        currency,
        redeem_points,
        purchase_external_id,
        line_input: None,
        item: None,
    };
    match kind {
        ReceiptKind::Purchase => {
            for column in ["purchase_external_id", "line"] {
                if row.get(column).is_some() {
                    return Err(row.problem(column, "only return rows have this column: leave it empty on purchases"));
                }
            }
            if parsed.member.is_none() {
                return Err(Problem::line(
                    row.line,
                    "a purchase names its member: fill one of member_external_id, member_card, member_phone, member_email",
                ));
            }
            let sku = sku.ok_or_else(|| row.problem("sku", "empty: every purchase line needs a sku"))?;
            let quantity = quantity.ok_or_else(|| row.problem("quantity", "empty: write 1 or more"))?;
            let unit_price_minor = unit_price_minor
                .ok_or_else(|| row.problem("unit_price_minor", "empty: write the price of one item in minor units"))?;
            if !(0..=AMOUNT_MINOR_MAX).contains(&unit_price_minor) {
                return Err(row.problem("unit_price_minor", "must be zero or positive"));
            }
            let gross = unit_price_minor
                .checked_mul(quantity)
                .filter(|g| *g <= AMOUNT_MINOR_MAX)
                .ok_or_else(|| row.problem("quantity", "quantity times unit_price_minor is too large"))?;
            let discount_minor = discount_minor.unwrap_or(0);
            if !(0..=gross).contains(&discount_minor) {
                return Err(row.problem(
                    "discount_minor",
                    format!("{discount_minor} must be between 0 and the line's price {gross} (quantity × unit price)"),
                ));
            }
            parsed.line_input =
                Some(LineInput { sku, category, brand: None, quantity, unit_price_minor, discount_minor });
        }
        ReceiptKind::Return => {
            for column in ["unit_price_minor", "discount_minor", "currency", "redeem_points", "channel", "store"] {
                if row.get(column).is_some() {
                    return Err(row.problem(
                        column,
                        "must be empty on a return row: a return takes its prices from the purchase",
                    ));
                }
            }
            if parsed.purchase_external_id.is_none() {
                return Err(row.problem("purchase_external_id", "empty: name the purchase's receipt number"));
            }
            let line = match line_number {
                None => None,
                Some(n) if n >= 1 && n as usize <= LINES_MAX => Some(n as usize - 1),
                Some(n) => return Err(row.problem("line", format!("{n} is not a line: lines count from 1"))),
            };
            if (line.is_some() || sku.is_some()) && quantity.is_none() {
                return Err(row.problem("quantity", "empty: write how many items of the line come back"));
            }
            if quantity.is_some() && line.is_none() && sku.is_none() {
                return Err(row.problem("line", "empty: name the returned line by line (or sku)"));
            }
            parsed.item = Some(ReturnItem { file_line: row.line, line, sku, quantity });
        }
    }
    Ok(parsed)
}

/// Adds a receipt-level value seen on a later row: it must agree with the first.
fn agree<T: PartialEq + std::fmt::Debug>(
    slot: &mut Option<T>,
    value: Option<T>,
    line: u64,
    first_line: u64,
    column: &'static str,
) -> Result<(), Problem> {
    let Some(value) = value else { return Ok(()) };
    match slot {
        Some(existing) if *existing != value => Err(Problem::at(
            line,
            column,
            format!(
                "{value:?} differs from {existing:?} on line {first_line}, the receipt's first row: receipt columns \
                 must be equal on every row of a receipt, or empty"
            ),
        )),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// Groups rows into receipts (in order of first appearance) and checks each receipt as a whole.
fn assemble(rows: Vec<TransactionRow>) -> Result<Vec<Receipt>, Vec<Problem>> {
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut index: HashMap<(ReceiptKind, String), usize> = HashMap::new();
    let mut problems = Vec::new();
    for row in rows {
        let at = *index.entry((row.kind, row.external_id.clone())).or_insert_with(|| {
            receipts.push(Receipt {
                kind: row.kind,
                external_id: row.external_id.clone(),
                rows: Vec::new(),
                member: None,
                occurred_at: None,
                channel: Channel::Pos,
                store: None,
                currency: None,
                redeem_points: 0,
                purchase_external_id: None,
                lines: Vec::new(),
                items: Vec::new(),
            });
            receipts.len() - 1
        });
        let receipt = &mut receipts[at];
        let first_line = receipt.rows.first().copied().unwrap_or(row.line);
        receipt.rows.push(row.line);
        let mut check = |result: Result<(), Problem>| {
            if let Err(problem) = result {
                problems.push(problem);
            }
        };
        if let Some((member, column)) = row.member {
            let mut slot = receipt.member.as_ref().map(|(m, _, _)| m.clone());
            let had = slot.is_some();
            check(agree(&mut slot, Some(member), row.line, first_line, column));
            if !had {
                receipt.member = slot.map(|m| (m, row.line, column));
            }
        }
        check(agree(&mut receipt.occurred_at, row.occurred_at, row.line, first_line, "occurred_at"));
        let mut channel = (receipt.rows.len() > 1).then_some(receipt.channel);
        check(agree(&mut channel, row.channel, row.line, first_line, "channel"));
        receipt.channel = channel.unwrap_or(Channel::Pos);
        check(agree(&mut receipt.store, row.store, row.line, first_line, "store"));
        check(agree(&mut receipt.currency, row.currency, row.line, first_line, "currency"));
        let mut redeem = (receipt.rows.len() > 1).then_some(receipt.redeem_points);
        check(agree(&mut redeem, row.redeem_points, row.line, first_line, "redeem_points"));
        receipt.redeem_points = redeem.unwrap_or(0);
        check(agree(
            &mut receipt.purchase_external_id,
            row.purchase_external_id,
            row.line,
            first_line,
            "purchase_external_id",
        ));
        receipt.lines.extend(row.line_input);
        receipt.items.extend(row.item);
    }
    for receipt in &receipts {
        let first = receipt.rows[0];
        if receipt.kind == ReceiptKind::Purchase {
            if receipt.currency.is_none() {
                problems.push(Problem::at(first, "currency", "empty: write the bill's currency, e.g. RUB"));
            }
            if receipt.lines.len() > LINES_MAX {
                problems.push(Problem::line(first, format!("the receipt has more than {LINES_MAX} lines")));
            }
            let total: i64 = receipt.lines.iter().map(|l| l.unit_price_minor * l.quantity - l.discount_minor).sum();
            if total > AMOUNT_MINOR_MAX {
                problems.push(Problem::line(first, "the receipt's total is too large"));
            }
        }
    }
    if problems.is_empty() {
        Ok(receipts)
    } else {
        Err(problems)
    }
}

/// A return resolved against its purchase: which lines, how many, and whose.
fn resolve_returns(receipts: &mut [Receipt]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let purchases: HashMap<String, usize> = receipts
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == ReceiptKind::Purchase)
        .map(|(i, r)| (r.external_id.clone(), i))
        .collect();
    // Quantity returned so far of each line of purchases in the file, to catch over-returns early.
    let mut returned: HashMap<usize, Vec<i64>> = HashMap::new();
    for at in 0..receipts.len() {
        if receipts[at].kind != ReceiptKind::Return {
            continue;
        }
        let purchase_external_id = receipts[at].purchase_external_id.clone().expect("checked per row");
        let whole = receipts[at].items.iter().all(|item| item.quantity.is_none());
        if whole && receipts[at].items.len() > 1 {
            problems.push(Problem::line(
                receipts[at].rows[1],
                "a whole return has one row with line, sku and quantity empty; list lines to return part",
            ));
            continue;
        }
        if !whole && receipts[at].items.iter().any(|item| item.quantity.is_none()) {
            let item = receipts[at].items.iter().find(|item| item.quantity.is_none()).expect("found above");
            problems.push(Problem::at(item.file_line, "quantity", "empty: write how many items come back"));
            continue;
        }
        let Some(&purchase_at) = purchases.get(&purchase_external_id) else {
            // The purchase was imported before: the writer checks the lines against it.
            for item in &receipts[at].items {
                if item.quantity.is_some() && item.line.is_none() {
                    problems.push(Problem::at(
                        item.file_line,
                        "line",
                        format!(
                            "empty: purchase {purchase_external_id:?} is not in this file, so name the returned \
                             line by its position on that receipt (1 for the first)"
                        ),
                    ));
                }
            }
            continue;
        };
        if purchase_at > at {
            problems.push(Problem::at(
                receipts[at].rows[0],
                "purchase_external_id",
                format!("purchase {purchase_external_id:?} comes later in the file: put it before its return"),
            ));
            continue;
        }
        let purchase = receipts[purchase_at].clone();
        let receipt = &mut receipts[at];
        match (&receipt.member, &purchase.member) {
            (Some((member, line, column)), Some((owner, _, _))) if member != owner => {
                problems.push(Problem::at(
                    *line,
                    column,
                    format!("purchase {purchase_external_id:?} belongs to another member ({:?})", owner.value),
                ));
                continue;
            }
            _ => receipt.member = purchase.member.clone(),
        }
        let counts = returned.entry(purchase_at).or_insert_with(|| vec![0; purchase.lines.len()]);
        if whole {
            let left: i64 = purchase.lines.iter().zip(counts.iter()).map(|(l, r)| l.quantity - r).sum();
            if left == 0 {
                problems.push(Problem::line(
                    receipt.rows[0],
                    format!("purchase {purchase_external_id:?} is already fully returned by earlier rows"),
                ));
            }
            for (count, line) in counts.iter_mut().zip(&purchase.lines) {
                *count = line.quantity;
            }
            continue;
        }
        for item in &mut receipt.items {
            let line = match (item.line, &item.sku) {
                (Some(line), sku) => {
                    let Some(purchased) = purchase.lines.get(line) else {
                        problems.push(Problem::at(
                            item.file_line,
                            "line",
                            format!(
                                "purchase {purchase_external_id:?} has lines 1 to {}, not {}",
                                purchase.lines.len(),
                                line + 1
                            ),
                        ));
                        continue;
                    };
                    if sku.as_ref().is_some_and(|sku| *sku != purchased.sku) {
                        problems.push(Problem::at(
                            item.file_line,
                            "sku",
                            format!(
                                "line {} of purchase {purchase_external_id:?} is sku {:?}",
                                line + 1,
                                purchased.sku
                            ),
                        ));
                        continue;
                    }
                    line
                }
                (None, Some(sku)) => {
                    let matches: Vec<usize> =
                        purchase.lines.iter().enumerate().filter(|(_, l)| l.sku == *sku).map(|(i, _)| i).collect();
                    match matches.as_slice() {
                        [line] => *line,
                        [] => {
                            problems.push(Problem::at(
                                item.file_line,
                                "sku",
                                format!("purchase {purchase_external_id:?} has no line with sku {sku:?}"),
                            ));
                            continue;
                        }
                        several => {
                            let list: Vec<String> = several.iter().map(|i| (i + 1).to_string()).collect();
                            problems.push(Problem::at(
                                item.file_line,
                                "line",
                                format!(
                                    "sku {sku:?} is on lines {} of purchase {purchase_external_id:?}: say which with line",
                                    list.join(", ")
                                ),
                            ));
                            continue;
                        }
                    }
                }
                (None, None) => unreachable!("rows with a quantity name a line or a sku"),
            };
            item.line = Some(line);
            let quantity = item.quantity.expect("checked above");
            let left = purchase.lines[line].quantity - counts[line];
            if quantity > left {
                problems.push(Problem::at(
                    item.file_line,
                    "quantity",
                    format!(
                        "returns {quantity} of line {} of purchase {purchase_external_id:?}, but only {left} of its {} \
                         are left to return",
                        line + 1,
                        purchase.lines[line].quantity
                    ),
                ));
                continue;
            }
            counts[line] += quantity;
        }
    }
    problems
}

/// Finds the members the receipts name, following merges to the survivor; a member that does not
/// exist is a problem at its first row. One query per identifier and chunk of values
/// ([`Store::members_by`]): a query per member cost ~100 µs, a second per 10,000 members.
async fn resolve_members(
    store: &Store,
    tenant: TenantId,
    receipts: &[Receipt],
) -> anyhow::Result<(HashMap<MemberRef, MemberId>, Vec<Problem>)> {
    // Each member named, at the first row that names it, in the file's order.
    let mut named: Vec<(&MemberRef, u64, &'static str)> = Vec::new();
    let mut seen = HashSet::new();
    let mut values: Vec<(IdentifierKind, Vec<String>)> = Vec::new();
    for receipt in receipts {
        let Some((member, line, column)) = &receipt.member else { continue };
        if !seen.insert(member) {
            continue;
        }
        named.push((member, *line, column));
        match values.iter_mut().find(|(kind, _)| *kind == member.kind) {
            Some((_, of_kind)) => of_kind.push(member.value.clone()),
            None => values.push((member.kind, vec![member.value.clone()])),
        }
    }
    let mut holders: HashMap<(IdentifierKind, String), (MemberId, Option<MemberId>)> = HashMap::new();
    for (kind, of_kind) in &values {
        for (value, id, merged_into) in store.members_by(tenant, *kind, of_kind).await? {
            holders.insert((*kind, value), (id, merged_into));
        }
    }
    let mut found = HashMap::with_capacity(named.len());
    let mut problems = Vec::new();
    for (member, line, column) in named {
        let id = match holders.remove(&(member.kind, member.value.clone())) {
            Some((id, None)) => id,
            Some((id, Some(survivor))) => survivor_of(store, tenant, id, survivor).await?,
            None => {
                // One problem per missing member: the first row that names it.
                problems.push(Problem::at(
                    line,
                    column,
                    format!(
                        "no member with {} {:?} in tenant {}: import the members first",
                        member.kind.as_str(),
                        member.value,
                        tenant.0
                    ),
                ));
                MemberId(0)
            }
        };
        found.insert(member.clone(), id);
    }
    Ok((found, problems))
}

/// The member an identifier belongs to, following merges to the survivor.
pub async fn find_member(
    store: &Store,
    tenant: TenantId,
    kind: IdentifierKind,
    value: &str,
) -> anyhow::Result<Option<MemberId>> {
    let Some(row) = store.member_by(tenant, kind, value).await? else { return Ok(None) };
    match row.merged_into {
        None => Ok(Some(row.id)),
        Some(survivor) => survivor_of(store, tenant, row.id, survivor).await.map(Some),
    }
}

/// The member `merged` (merged into `survivor`) now lives on as, through any merges after.
async fn survivor_of(
    store: &Store,
    tenant: TenantId,
    merged: MemberId,
    survivor: MemberId,
) -> anyhow::Result<MemberId> {
    let mut next = survivor;
    for _ in 0..MERGE_HOPS_MAX {
        let row = store.member(tenant, next).await?.with_context(|| format!("member {next} is missing"))?;
        match row.merged_into {
            None => return Ok(row.id),
            Some(survivor) => next = survivor,
        }
    }
    bail!("member {merged} is merged through more than {MERGE_HOPS_MAX} members")
}

/// A receipt ready for the writer, with the rows it came from.
pub struct ReceiptCommand {
    pub rows: Vec<u64>,
    pub key: String,
    pub command: Command,
}

impl ReceiptCommand {
    pub fn is_return(&self) -> bool {
        matches!(self.command, Command::Return(_))
    }

    fn request(&self, tenant: TenantId) -> Request {
        let idempotency = match &self.command {
            Command::Purchase(purchase) => idempotency(self.key.clone(), purchase, Kept::Status),
            Command::Return(ret) => idempotency(self.key.clone(), ret, Kept::Status),
            _ => unreachable!("receipts are purchases and returns"),
        };
        Request { tenant, idempotency: Some(idempotency), command: self.command.clone() }
    }
}

/// Submits receipts in file order and returns how each went. The writer applies requests in the
/// order they reach its queue, one batch after another, and a batch applies its commands in turn
/// on the state the earlier ones left; so a member's receipts are recorded one after another (a
/// redemption sees the points of the purchases before it) while a batch holds up to a thousand
/// receipts of any members. The order, and so every id, depends only on the file.
async fn submit_receipts(
    state: &AppState,
    tenant: TenantId,
    receipts: Vec<ReceiptCommand>,
) -> Vec<(ReceiptCommand, Outcome)> {
    let requests = receipts.iter().map(|receipt| receipt.request(tenant));
    let results = submit_in_order(&state.writer, requests, |result| Outcome::of(&result)).await;
    receipts.into_iter().zip(results).collect()
}

/// Parses and checks a transactions file against the tenant (members, currency) and turns it into
/// writer commands; any problem stops everything before a command is sent.
async fn plan_transactions(
    store: &Store,
    tenant: TenantId,
    file: &str,
    records: &[(u64, csv::StringRecord)],
) -> anyhow::Result<Vec<ReceiptCommand>> {
    let fail = |problems| Problems { file: file.to_string(), problems };
    let rows = parse_rows(file, records, &TRANSACTION_COLUMNS, parse_transaction)?;
    let mut receipts = assemble(rows).map_err(fail)?;
    let problems = resolve_returns(&mut receipts);
    if !problems.is_empty() {
        return Err(fail(problems).into());
    }
    let (members, mut problems) = resolve_members(store, tenant, &receipts).await?;
    if let Some((_, _, program)) = store.program(tenant, None).await? {
        let expected = program.bill_currency.to_string();
        for receipt in &receipts {
            if let Some(currency) = receipt.currency.as_ref().filter(|c| **c != expected) {
                let line = receipt.rows[0];
                problems.push(Problem::at(
                    line,
                    "currency",
                    format!("{currency:?}: the program's bills are in {expected}"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems).into());
    }
    let commands = receipts
        .into_iter()
        .map(|receipt| {
            let member = receipt.member.as_ref().map(|(m, _, _)| members[m]);
            let (key, command) = match receipt.kind {
                ReceiptKind::Purchase => (
                    format!("import:purchase:{}", receipt.external_id),
                    Command::Purchase(PurchaseRequest {
                        member_id: member.expect("purchases name their member").0,
                        external_id: receipt.external_id,
                        occurred_at: receipt.occurred_at,
                        channel: receipt.channel,
                        store: receipt.store,
                        currency: receipt.currency.expect("checked in assemble"),
                        lines: receipt.lines,
                        redeem_points: receipt.redeem_points,
                        program_id: None,
                        explain: false,
                    }),
                ),
                ReceiptKind::Return => {
                    let whole = receipt.items.iter().all(|item| item.quantity.is_none());
                    let lines = (!whole).then(|| {
                        receipt
                            .items
                            .iter()
                            .map(|item| ReturnLine {
                                line: item.line.expect("resolved"),
                                quantity: item.quantity.expect("checked"),
                            })
                            .collect()
                    });
                    (
                        format!("import:return:{}", receipt.external_id),
                        Command::Return(ReturnRequest {
                            purchase_id: None,
                            purchase_external_id: receipt.purchase_external_id,
                            lines,
                        }),
                    )
                }
            };
            ReceiptCommand { rows: receipt.rows, key, command }
        })
        .collect();
    Ok(commands)
}

async fn import_transactions(
    state: &AppState,
    tenant: TenantId,
    file: &str,
    records: Vec<(u64, csv::StringRecord)>,
    started: Instant,
) -> anyhow::Result<()> {
    let receipts = plan_transactions(&state.store, tenant, file, &records).await?;
    // The planned receipts hold everything the rows said; a million rows are a gigabyte less.
    drop(records);
    let rows = receipts.iter().map(|r| r.rows.len()).sum();
    let returns = receipts.iter().filter(|r| r.is_return()).count();
    let purchases = receipts.len() - returns;
    eprintln!("{file}: checked {rows} rows: {purchases} purchases, {returns} returns; importing");
    let mut report = Report { file, rows, unit: "receipts", imported: 0, already: 0, refused: vec![] };
    for (receipt, outcome) in submit_receipts(state, tenant, receipts).await {
        report.add(&receipt.rows, outcome);
    }
    eprintln!("{file}: {}", writer_summary(&state.metrics));
    report.finish(started)
}
