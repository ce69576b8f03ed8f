//! `kopilka import transactions --format online-retail FILE`: the UCI Online Retail file.
//!
//! The file (`InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country`,
//! one row per invoice line, .csv or .csv.gz) is a year of a UK web shop in GBP. The import runs in
//! three steps:
//!
//! 1. **Read** the file as a stream into invoices. A value that cannot be read (a quantity that is
//!    not a number, a date in no known form) is a problem with its line and column, and nothing is
//!    imported. Rows that read fine but cannot be a receipt line (no CustomerID, a sale with a zero
//!    price, ...) are skipped and counted by reason.
//! 2. **Plan**, with no store involved: invoices sorted by InvoiceDate (then file order) become
//!    purchases; each cancellation (`C…`) is matched, line by line on StockCode and quantity, to the
//!    same customer's earlier purchases that still have that item to return, most recent first, and
//!    becomes one return per purchase it touches. What matches nothing (the file starts in the
//!    middle of the shop's history) is counted.
//! 3. **Replay** the plan through the writer on a [`ManualClock`] that walks through the year: each
//!    customer becomes a member (`external_id` `uci-<CustomerID>`, `signup_at` at their first
//!    invoice), purchases carry `occurred_at` = InvoiceDate, and the clock stands at each
//!    cancellation's time when its returns are decided, so the program's return window and expiry
//!    apply as they would have. Receipts close together are sent as one "tick" (all concurrently,
//!    so the writer's group commit batches them; a customer's receipts one after another); the
//!    activation and expiry jobs run at every midnight (UTC) from the first invoice until the last
//!    points earned have expired, and once more at the real now. Finally the ledger is verified.
//!
//! Every member and receipt has an idempotency key from the file's own ids
//! (`online-retail:member:<CustomerID>`, `online-retail:purchase:<InvoiceNo>`,
//! `online-retail:return:<cancellation>:<purchase>`), so running the same file again into the same
//! tenant changes nothing.

use kopilka_store::Database;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use kopilka_core::member::{IdentifierKind, Profile};
use kopilka_core::purchase::{Channel, LineInput, ReturnLine, LINES_MAX, QUANTITY_MAX, TEXT_LEN_MAX};
use kopilka_core::{Currency, MemberId, Program, TenantId};
use kopilka_server::app::{self, AppState};
use kopilka_server::clock::{Clock, ManualClock};
use kopilka_server::dto::{PurchaseRequest, ReturnRequest};
use kopilka_server::engine::{Command, Kept, Reply, Request};
use kopilka_server::error::ApiError;
use kopilka_server::jobs::{self, Job};

use super::csv_format::{reader, Header, Problem, Problems, Row};
use super::{display_name, idempotency, ImportArgs, IN_FLIGHT_MAX};

/// The columns of the file. Description and Country are read past: a receipt line has no place
/// for them.
pub const COLUMNS: [&str; 8] =
    ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"];
const REQUIRED_COLUMNS: [&str; 6] = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"];

/// The currency of the file's prices.
const FILE_CURRENCY: &str = "GBP";
/// The time zone given to the program of a tenant made for the file.
const FILE_TIME_ZONE: &str = "Europe/London";

/// How far apart the purchases of one tick may be. Purchases keep their own `occurred_at`; the
/// clock stands at the last of the tick, so a purchase is recorded at most this long after it
/// happened. Returns always get a tick that ends at their own time.
const TICK_WINDOW: SignedDuration = SignedDuration::from_hours(1);
/// Receipts per tick at most: a tick is one or two writer batches.
const TICK_RECEIPTS_MAX: usize = IN_FLIGHT_MAX;
/// Refused receipts listed before the count.
const REFUSED_SHOWN_MAX: usize = 20;

// ---------------------------------------------------------------------------------------------
// Reading

/// Why a row was not imported, though it could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    NoCustomer,
    NotASaleOrCancellation,
    NoStockCode,
    SaleQuantityNotPositive,
    SaleQuantityTooLarge,
    SalePriceNotPositive,
    SalePriceUnderAPenny,
    CancellationQuantityNotNegative,
    OtherCustomer,
    TooManyLines,
}

impl Skip {
    pub fn reason(&self) -> String {
        match self {
            Skip::NoCustomer => "without CustomerID".into(),
            Skip::NotASaleOrCancellation => "with an InvoiceNo that is neither a sale nor a cancellation (C…)".into(),
            Skip::NoStockCode => format!("without a StockCode of 1 to {TEXT_LEN_MAX} characters"),
            Skip::SaleQuantityNotPositive => "sale rows with a zero or negative Quantity".into(),
            Skip::SaleQuantityTooLarge => format!("sale rows with a Quantity above {QUANTITY_MAX}"),
            Skip::SalePriceNotPositive => "sale rows with a zero or negative UnitPrice".into(),
            Skip::SalePriceUnderAPenny => "sale rows with a UnitPrice under a penny".into(),
            Skip::CancellationQuantityNotNegative => "cancellation rows with a zero or positive Quantity".into(),
            Skip::OtherCustomer => "rows whose CustomerID differs from their invoice's first row".into(),
            Skip::TooManyLines => format!("rows beyond {LINES_MAX} on one invoice"),
        }
    }
}

/// One line of an invoice. For a cancellation, `quantity` is what was cancelled (positive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sku: String,
    pub quantity: i64,
    pub price_minor: i64,
}

/// The rows of one InvoiceNo that can be imported.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub number: String,
    /// Index into [`FileData::customers`].
    pub customer: usize,
    pub cancellation: bool,
    /// The earliest InvoiceDate of its rows (a few invoices span two minutes).
    pub at: Timestamp,
    pub first_line: u64,
    pub items: Vec<Item>,
}

/// A customer of the file: its CustomerID and its first invoice (of any kind).
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub first_invoice_at: Timestamp,
}

/// What the file holds once read.
#[derive(Debug, Default)]
pub struct FileData {
    pub rows: u64,
    pub invoices: Vec<Invoice>,
    pub customers: Vec<Customer>,
    pub skipped: BTreeMap<Skip, u64>,
    customer_index: HashMap<String, usize>,
    invoice_index: HashMap<String, usize>,
}

impl FileData {
    fn skip(&mut self, why: Skip) {
        *self.skipped.entry(why).or_default() += 1;
    }

    fn customer(&mut self, id: &str, at: Timestamp) -> usize {
        if let Some(&index) = self.customer_index.get(id) {
            let first = &mut self.customers[index].first_invoice_at;
            *first = (*first).min(at);
            return index;
        }
        self.customers.push(Customer { id: id.to_string(), first_invoice_at: at });
        self.customer_index.insert(id.to_string(), self.customers.len() - 1);
        self.customers.len() - 1
    }

    /// Reads one row: a problem when a value cannot be read, a skip when the row cannot be a line.
    fn add(&mut self, row: &Row) -> Result<(), Problem> {
        let required = |column: &'static str| row.get(column).ok_or_else(|| row.problem(column, "empty"));
        let number = required("InvoiceNo")?;
        let quantity =
            row.integer("Quantity", "a whole number of items")?.ok_or_else(|| row.problem("Quantity", "empty"))?;
        let price_text = required("UnitPrice")?;
        let price_minor = pence(price_text)
            .ok_or_else(|| row.problem("UnitPrice", format!("{price_text:?} is not a price in pounds, e.g. 2.55")))?;
        let date_text = required("InvoiceDate")?;
        let at = invoice_date(date_text).ok_or_else(|| {
            row.problem(
                "InvoiceDate",
                format!("{date_text:?} is not a date and time: write 2010-12-01T08:26:00 or 12/1/2010 8:26"),
            )
        })?;
        let customer = match row.get("CustomerID") {
            None => None,
            Some(text) => Some(customer_id(text).ok_or_else(|| {
                row.problem("CustomerID", format!("{text:?} is not a customer id: letters and digits, up to 60"))
            })?),
        };
        self.rows += 1;

        let Some(customer) = customer else {
            self.skip(Skip::NoCustomer);
            return Ok(());
        };
        let customer = self.customer(customer, at);
        let cancellation = number.starts_with(['C', 'c']);
        if !cancellation && !number.starts_with(|c: char| c.is_ascii_digit()) {
            self.skip(Skip::NotASaleOrCancellation);
            return Ok(());
        }
        let Some(sku) = row.get("StockCode").filter(|s| s.chars().count() <= TEXT_LEN_MAX) else {
            self.skip(Skip::NoStockCode);
            return Ok(());
        };
        let quantity = if cancellation {
            if quantity >= 0 {
                self.skip(Skip::CancellationQuantityNotNegative);
                return Ok(());
            }
            -quantity
        } else {
            let skip = if quantity <= 0 {
                Some(Skip::SaleQuantityNotPositive)
            } else if quantity > QUANTITY_MAX {
                Some(Skip::SaleQuantityTooLarge)
            } else if price_minor < 0 || (price_minor == 0 && !price_text.chars().any(|c| ('1'..='9').contains(&c))) {
                Some(Skip::SalePriceNotPositive)
            } else if price_minor == 0 {
                Some(Skip::SalePriceUnderAPenny)
            } else {
                None
            };
            if let Some(skip) = skip {
                self.skip(skip);
                return Ok(());
            }
            quantity
        };
        let item = Item { sku: sku.to_string(), quantity, price_minor };
        match self.invoice_index.get(number) {
            Some(&index) => {
                let invoice = &mut self.invoices[index];
                if invoice.customer != customer {
                    self.skip(Skip::OtherCustomer);
                } else if invoice.items.len() >= LINES_MAX {
                    self.skip(Skip::TooManyLines);
                } else {
                    invoice.at = invoice.at.min(at);
                    invoice.items.push(item);
                }
            }
            None => {
                self.invoice_index.insert(number.to_string(), self.invoices.len());
                self.invoices.push(Invoice {
                    number: number.to_string(),
                    customer,
                    cancellation,
                    at,
                    first_line: row.line,
                    items: vec![item],
                });
            }
        }
        Ok(())
    }
}

/// Pence from a price in pounds: "2.55" is 255. A third decimal rounds half up ("0.005" is 1,
/// "0.001" is 0).
pub fn pence(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) || whole.len() > 12 {
        return None;
    }
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let digit = |i: usize| fraction.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    let mut minor = whole * 100 + digit(0) * 10 + digit(1);
    if digit(2) >= 5 {
        minor += 1;
    }
    Some(if negative { -minor } else { minor })
}

/// An InvoiceDate, read as UTC: ISO 8601 (`2010-12-01T08:26:00`, as in the CRAN copy), RFC 3339
/// with an offset, or the UCI spreadsheet's `12/1/2010 8:26` (month first).
pub fn invoice_date(text: &str) -> Option<Timestamp> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    let civil = match text.parse::<DateTime>() {
        Ok(civil) => civil,
        Err(_) => {
            let (date, time) = text.split_once(' ')?;
            let mut date = date.split('/').map(|part| part.trim().parse::<i32>().ok());
            let (month, day, year) = (date.next()??, date.next()??, date.next()??);
            let mut time = time.trim().split(':').map(|part| part.parse::<i32>().ok());
            let (hour, minute) = (time.next()??, time.next()??);
            let second = time.next().unwrap_or(Some(0))?;
            if date.next().is_some() || time.next().is_some() {
                return None;
            }
            let narrow = |n: i32| i8::try_from(n).ok();
            DateTime::new(
                i16::try_from(year).ok()?,
                narrow(month)?,
                narrow(day)?,
                narrow(hour)?,
                narrow(minute)?,
                narrow(second)?,
                0,
            )
            .ok()?
        }
    };
    civil.to_zoned(TimeZone::UTC).ok().map(|zoned| zoned.timestamp())
}

/// A CustomerID as the file writes it: "17850", or "17850.0" from a spreadsheet.
fn customer_id(text: &str) -> Option<&str> {
    let id = text.strip_suffix(".0").unwrap_or(text);
    let valid = !id.is_empty() && id.len() <= 60 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some(id)
}

/// Reads the file (.csv, or .csv.gz) as a stream of rows into invoices.
pub fn read_file(path: &Path) -> anyhow::Result<FileData> {
    let file_name = display_name(path);
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {file_name}"))?;
    let input: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut csv = reader(input);
    let mut record = csv::StringRecord::new();
    let unreadable = |error: csv::Error| {
        let line = error.position().map_or(0, |p| p.line());
        anyhow::anyhow!("{file_name} line {line}: not readable as CSV: {error}")
    };
    if !csv.read_record(&mut record).map_err(unreadable)? {
        bail!("{file_name} is empty: it needs the header row {}", COLUMNS.join(","));
    }
    let fail = |problems| Problems { file: file_name.clone(), problems };
    let header = Header::parse(&record, &COLUMNS).map_err(fail)?;
    let present: Vec<&str> = record.iter().map(|name| name.trim().trim_start_matches('\u{feff}')).collect();
    let missing: Vec<Problem> = REQUIRED_COLUMNS
        .iter()
        .filter(|column| !present.contains(column))
        .map(|column| {
            Problem::line(1, format!("the header has no column {column:?}; the columns are: {}", COLUMNS.join(",")))
        })
        .collect();
    if !missing.is_empty() {
        return Err(fail(missing).into());
    }
    let mut data = FileData::default();
    let mut problems = Vec::new();
    while csv.read_record(&mut record).map_err(unreadable)? {
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // a blank line
        }
        if record.len() != header.width {
            problems.push(Problem::line(
                line,
                format!(
                    "{} values but the header has {} columns; quote values that contain commas",
                    record.len(),
                    header.width
                ),
            ));
            continue;
        }
        if let Err(problem) = data.add(&Row::new(line, &header, &record)) {
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems).into());
    }
    Ok(data)
}

// ---------------------------------------------------------------------------------------------
// Planning

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptKind {
    Purchase { invoice: String, lines: Vec<LineInput> },
    Return { cancellation: String, purchase: String, lines: Vec<ReturnLine> },
}

/// One writer command of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub customer: usize,
    /// When it happened: the purchase's InvoiceDate, or the cancellation's.
    pub at: Timestamp,
    pub first_line: u64,
    pub kind: ReceiptKind,
}

impl Receipt {
    fn key(&self) -> String {
        match &self.kind {
            ReceiptKind::Purchase { invoice, .. } => format!("online-retail:purchase:{invoice}"),
            ReceiptKind::Return { cancellation, purchase, .. } => {
                format!("online-retail:return:{cancellation}:{purchase}")
            }
        }
    }

    fn label(&self) -> String {
        match &self.kind {
            ReceiptKind::Purchase { invoice, .. } => format!("invoice {invoice} (line {})", self.first_line),
            ReceiptKind::Return { cancellation, purchase, .. } => {
                format!("cancellation {cancellation} of invoice {purchase} (line {})", self.first_line)
            }
        }
    }

    fn request(&self, tenant: TenantId, member: MemberId) -> Request {
        let key = self.key();
        match &self.kind {
            ReceiptKind::Purchase { invoice, lines } => {
                let purchase = PurchaseRequest {
                    member_id: member.0,
                    external_id: invoice.clone(),
                    occurred_at: Some(self.at),
                    channel: Channel::Web,
                    store: None,
                    currency: FILE_CURRENCY.into(),
                    lines: lines.clone(),
                    redeem_points: 0,
                    program_id: None,
                    explain: false,
                };
                let idempotency = idempotency(key, &purchase, Kept::Answer);
                Request { tenant, idempotency: Some(idempotency), command: Command::Purchase(purchase) }
            }
            ReceiptKind::Return { purchase, lines, .. } => {
                let ret = ReturnRequest {
                    purchase_id: None,
                    purchase_external_id: Some(purchase.clone()),
                    lines: Some(lines.clone()),
                };
                let idempotency = idempotency(key, &ret, Kept::Answer);
                Request { tenant, idempotency: Some(idempotency), command: Command::Return(ret) }
            }
        }
    }
}

/// How the cancellations matched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Matching {
    pub cancellations: u64,
    pub cancellations_matched: u64,
    pub cancellations_partly: u64,
    pub cancellations_unmatched: u64,
    pub lines: u64,
    pub lines_matched: u64,
    pub lines_partly: u64,
    pub lines_unmatched: u64,
    pub units_matched: i64,
    pub units_unmatched: i64,
}

/// Receipts in the order they are recorded, and what could not be matched.
#[derive(Debug, Default)]
pub struct Plan {
    pub receipts: Vec<Receipt>,
    pub purchases: u64,
    pub purchase_lines: u64,
    pub returns: u64,
    pub matching: Matching,
}

/// Turns the invoices into purchases and returns. Invoices are taken by InvoiceDate, then by
/// their place in the file; a cancellation returns from the purchases before it.
pub fn plan(data: &FileData) -> Plan {
    let mut order: Vec<&Invoice> = data.invoices.iter().collect();
    order.sort_by_key(|invoice| (invoice.at, invoice.first_line));
    let mut plan = Plan::default();
    // Per customer and StockCode, the (receipt, line) of purchases in time order; and per purchase
    // receipt, the quantity of each line still returnable.
    let mut bought: HashMap<(usize, &str), Vec<(usize, usize)>> = HashMap::new();
    let mut returnable: HashMap<usize, Vec<i64>> = HashMap::new();
    for invoice in order {
        if !invoice.cancellation {
            let at = plan.receipts.len();
            for (line, item) in invoice.items.iter().enumerate() {
                bought.entry((invoice.customer, item.sku.as_str())).or_default().push((at, line));
            }
            returnable.insert(at, invoice.items.iter().map(|item| item.quantity).collect());
            plan.purchases += 1;
            plan.purchase_lines += invoice.items.len() as u64;
            plan.receipts.push(Receipt {
                customer: invoice.customer,
                at: invoice.at,
                first_line: invoice.first_line,
                kind: ReceiptKind::Purchase {
                    invoice: invoice.number.clone(),
                    lines: invoice
                        .items
                        .iter()
                        .map(|item| LineInput {
                            sku: item.sku.clone(),
                            category: None,
                            brand: None,
                            quantity: item.quantity,
                            unit_price_minor: item.price_minor,
                            discount_minor: 0,
                        })
                        .collect(),
                },
            });
            continue;
        }
        let matching = &mut plan.matching;
        matching.cancellations += 1;
        // Per purchase receipt, the quantity returned of each of its lines.
        let mut taken: BTreeMap<usize, BTreeMap<usize, i64>> = BTreeMap::new();
        let (mut all_matched, mut any_matched) = (true, false);
        for item in &invoice.items {
            let mut wanted = item.quantity;
            if let Some(candidates) = bought.get(&(invoice.customer, item.sku.as_str())) {
                for &(receipt, line) in candidates.iter().rev() {
                    if wanted == 0 {
                        break;
                    }
                    let left = &mut returnable.get_mut(&receipt).expect("every purchase is returnable")[line];
                    let take = wanted.min(*left);
                    if take > 0 {
                        *left -= take;
                        wanted -= take;
                        *taken.entry(receipt).or_default().entry(line).or_default() += take;
                    }
                }
            }
            matching.lines += 1;
            matching.units_matched += item.quantity - wanted;
            matching.units_unmatched += wanted;
            if wanted == 0 {
                matching.lines_matched += 1;
                any_matched = true;
            } else if wanted < item.quantity {
                matching.lines_partly += 1;
                any_matched = true;
                all_matched = false;
            } else {
                matching.lines_unmatched += 1;
                all_matched = false;
            }
        }
        match (any_matched, all_matched) {
            (true, true) => matching.cancellations_matched += 1,
            (true, false) => matching.cancellations_partly += 1,
            (false, _) => matching.cancellations_unmatched += 1,
        }
        for (receipt, lines) in taken {
            let ReceiptKind::Purchase { invoice: purchase, .. } = &plan.receipts[receipt].kind else {
                unreachable!("only purchases are bought from")
            };
            let purchase = purchase.clone();
            plan.returns += 1;
            plan.receipts.push(Receipt {
                customer: invoice.customer,
                at: invoice.at,
                first_line: invoice.first_line,
                kind: ReceiptKind::Return {
                    cancellation: invoice.number.clone(),
                    purchase,
                    lines: lines.into_iter().map(|(line, quantity)| ReturnLine { line, quantity }).collect(),
                },
            });
        }
    }
    plan
}

/// A run of receipts sent together, with the clock at `clock` (the time of the last of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub start: Timestamp,
    pub clock: Timestamp,
    pub receipts: std::ops::Range<usize>,
}

fn day(ts: Timestamp) -> i64 {
    ts.as_second().div_euclid(86_400)
}

/// Cuts the receipts (in time order) into ticks: within one UTC day, at most [`TICK_WINDOW`] long,
/// and ending at every return, so that a return is decided with the clock at its own time.
pub fn ticks(receipts: &[Receipt]) -> Vec<Tick> {
    let mut ticks: Vec<Tick> = Vec::new();
    let mut has_return = false;
    for (index, receipt) in receipts.iter().enumerate() {
        let is_return = matches!(receipt.kind, ReceiptKind::Return { .. });
        if let Some(tick) = ticks.last_mut() {
            let later = receipt.at > tick.clock;
            let cut = has_return
                || day(receipt.at) != day(tick.start)
                || receipt.at.duration_since(tick.start) > TICK_WINDOW
                || tick.receipts.len() >= TICK_RECEIPTS_MAX;
            if !(later && cut) {
                tick.clock = tick.clock.max(receipt.at);
                tick.receipts.end = index + 1;
                has_return |= is_return;
                continue;
            }
        }
        ticks.push(Tick { start: receipt.at, clock: receipt.at, receipts: index..index + 1 });
        has_return = is_return;
    }
    ticks
}

// ---------------------------------------------------------------------------------------------
// Replaying through the writer

/// What became of one member or receipt.
enum Answer {
    Imported(Reply),
    Already(Reply),
    Refused(String),
}

impl Answer {
    fn of(result: Result<Reply, ApiError>) -> Answer {
        match result {
            Ok(reply) if reply.replayed => Answer::Already(reply),
            Ok(reply) => Answer::Imported(reply),
            Err(ApiError::IdempotencyKeyReused { .. }) => Answer::Refused(
                "imported before with different values; an import never changes what it recorded".into(),
            ),
            Err(error) => Answer::Refused(format!("{error} ({})", error.problem().code)),
        }
    }
}

enum Task {
    Member(usize),
    Receipts(Vec<usize>),
}

enum Done {
    Member(usize, Result<(MemberId, bool), String>),
    Receipts(Vec<(usize, Answer)>),
}

#[derive(Default)]
struct Counts {
    members_created: u64,
    members_already: u64,
    purchases: [u64; 2],
    returns: [u64; 2],
    lines_imported: u64,
    points_earned: i64,
    points_reversed: i64,
    points_unrecovered: i64,
    refused: Vec<(u64, String, String)>,
    jobs_movements: i64,
}

fn member_key(customer: &Customer) -> String {
    format!("online-retail:member:{}", customer.id)
}

/// Creates the member of a customer, or finds it when it exists (imported before, or made
/// otherwise with the same external_id).
async fn create_member(state: &AppState, tenant: TenantId, customer: &Customer) -> Result<(MemberId, bool), String> {
    let external_id = format!("uci-{}", customer.id);
    let profile = Profile { external_id: Some(external_id.clone()), ..Profile::default() };
    let signup_at = Some(customer.first_invoice_at);
    let hashed = (&profile, signup_at);
    let request = Request {
        tenant,
        idempotency: Some(idempotency(member_key(customer), &hashed, Kept::Answer)),
        command: Command::CreateMember { profile, signup_at },
    };
    let refused = match Answer::of(state.writer.submit(request).await) {
        Answer::Imported(reply) | Answer::Already(reply) => {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
            let id = body["id"].as_i64().ok_or("the member's answer has no id")?;
            return Ok((MemberId(id), reply.replayed));
        }
        Answer::Refused(reason) => reason,
    };
    match super::import::find_member(&state.store, tenant, IdentifierKind::ExternalId, &external_id).await {
        Ok(Some(id)) => Ok((id, true)),
        Ok(None) => Err(refused),
        Err(error) => Err(format!("{refused}; looking it up failed: {error}")),
    }
}

async fn run_task(
    state: &AppState,
    tenant: TenantId,
    data: &FileData,
    plan: &Plan,
    members: &[Option<MemberId>],
    task: Task,
) -> Done {
    match task {
        Task::Member(customer) => Done::Member(customer, create_member(state, tenant, &data.customers[customer]).await),
        Task::Receipts(chain) => {
            let mut answers = Vec::with_capacity(chain.len());
            for index in chain {
                let receipt = &plan.receipts[index];
                let answer = match members[receipt.customer] {
                    Some(member) => Answer::of(state.writer.submit(receipt.request(tenant, member)).await),
                    None => Answer::Refused(format!(
                        "customer {} could not be made a member",
                        data.customers[receipt.customer].id
                    )),
                };
                answers.push((index, answer));
            }
            Done::Receipts(answers)
        }
    }
}

impl Counts {
    fn add(&mut self, plan: &Plan, members: &mut [Option<MemberId>], data: &FileData, done: Done) {
        match done {
            Done::Member(customer, Ok((id, already))) => {
                members[customer] = Some(id);
                if already {
                    self.members_already += 1;
                } else {
                    self.members_created += 1;
                }
            }
            Done::Member(customer, Err(reason)) => {
                let id = &data.customers[customer].id;
                self.refused.push((0, format!("customer {id}"), reason));
            }
            Done::Receipts(answers) => {
                for (index, answer) in answers {
                    let receipt = &plan.receipts[index];
                    let is_purchase = matches!(receipt.kind, ReceiptKind::Purchase { .. });
                    let counter = if is_purchase { &mut self.purchases } else { &mut self.returns };
                    let reply = match answer {
                        Answer::Imported(reply) => {
                            counter[0] += 1;
                            if let ReceiptKind::Purchase { lines, .. } = &receipt.kind {
                                self.lines_imported += lines.len() as u64;
                            }
                            reply
                        }
                        Answer::Already(reply) => {
                            counter[1] += 1;
                            reply
                        }
                        Answer::Refused(reason) => {
                            self.refused.push((receipt.first_line, receipt.label(), reason));
                            continue;
                        }
                    };
                    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                    let field = |name: &str| body[name].as_i64().unwrap_or(0);
                    if is_purchase {
                        self.points_earned += body["purchase"]["points_earned"].as_i64().unwrap_or(0);
                    } else {
                        self.points_reversed += field("points_reversed");
                        self.points_unrecovered += field("points_unrecovered");
                    }
                }
            }
        }
    }
}

/// Sends tasks through the writer, at most [`IN_FLIGHT_MAX`] at once, and counts what came back.
async fn run_tasks(
    state: &AppState,
    tenant: TenantId,
    data: &FileData,
    plan: &Plan,
    members: &mut [Option<MemberId>],
    counts: &mut Counts,
    tasks: Vec<Task>,
) {
    let known: &[Option<MemberId>] = members;
    let done: Vec<Done> = stream::iter(tasks)
        .map(|task| run_task(state, tenant, data, plan, known, task))
        .buffer_unordered(IN_FLIGHT_MAX)
        .collect()
        .await;
    for done in done {
        counts.add(plan, members, data, done);
    }
}

/// A customer's receipts of a tick, in order, one chain per customer in order of first receipt.
fn chains(plan: &Plan, receipts: std::ops::Range<usize>) -> Vec<Task> {
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut chain_of: HashMap<usize, usize> = HashMap::new();
    for index in receipts {
        let customer = plan.receipts[index].customer;
        let chain = *chain_of.entry(customer).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[chain].push(index);
    }
    chains.into_iter().map(Task::Receipts).collect()
}

async fn run_jobs(state: &AppState, clock: &ManualClock, tenant: TenantId) -> anyhow::Result<i64> {
    let mut movements = 0;
    for job in [Job::Activate, Job::Expiry] {
        movements += jobs::run_once(&state.store, &state.writer, clock, job, Some(tenant)).await?.movements;
    }
    Ok(movements)
}

/// Runs the jobs at every midnight (UTC) the clock passes, as a server would have through the year.
struct Midnights {
    /// The next midnight, in days since the epoch.
    next: Option<i64>,
    movements: i64,
    runs: u64,
}

impl Midnights {
    /// Runs the jobs at each midnight after the last one run and at or before `until`.
    async fn run_until(
        &mut self,
        state: &AppState,
        clock: &ManualClock,
        tenant: TenantId,
        until: Timestamp,
    ) -> anyhow::Result<()> {
        let next = self.next.get_or_insert(day(until) + 1);
        while *next <= day(until) {
            clock.set(Timestamp::from_second(*next * 86_400).expect("midnights of the file are in range"));
            self.movements += run_jobs(state, clock, tenant).await?;
            self.runs += 1;
            *next += 1;
        }
        Ok(())
    }
}

/// What the replay did beside the receipts.
struct Replayed {
    counts: Counts,
    ticks: usize,
    job_runs: u64,
}

/// Replays the plan: members just ahead of their first receipt, ticks in order, the jobs at every
/// midnight until the last points earned have expired (or the real now, if sooner), and the jobs
/// once more at the real now.
async fn replay(
    state: &AppState,
    clock: &ManualClock,
    tenant: TenantId,
    program: &Program,
    data: &FileData,
    plan: &Plan,
    started: Instant,
) -> anyhow::Result<Replayed> {
    let mut counts = Counts::default();
    let mut members: Vec<Option<MemberId>> = vec![None; data.customers.len()];
    let mut by_signup: Vec<usize> = (0..data.customers.len()).collect();
    by_signup.sort_by_key(|&c| (data.customers[c].first_invoice_at, c));
    let mut next_member = 0;
    // Members whose first invoice is at or before `until`, not yet sent.
    let mut members_until = |until: Timestamp| {
        let mut tasks = Vec::new();
        while next_member < by_signup.len() && data.customers[by_signup[next_member]].first_invoice_at <= until {
            tasks.push(Task::Member(by_signup[next_member]));
            next_member += 1;
        }
        tasks
    };
    let ticks = ticks(&plan.receipts);
    if let Some(first) = ticks.first() {
        clock.set(first.start);
        let tasks = members_until(first.clock);
        run_tasks(state, tenant, data, plan, &mut members, &mut counts, tasks).await;
    }
    let mut midnights = Midnights { next: None, movements: 0, runs: 0 };
    let progress_every = (ticks.len() / 10).max(1);
    for (k, tick) in ticks.iter().enumerate() {
        midnights.run_until(state, clock, tenant, tick.start).await?;
        clock.set(tick.clock);
        let mut tasks = chains(plan, tick.receipts.clone());
        // The members of the next tick are made with this one, so they are there when it starts.
        if let Some(next) = ticks.get(k + 1) {
            tasks.extend(members_until(next.clock));
        }
        run_tasks(state, tenant, data, plan, &mut members, &mut counts, tasks).await;
        if (k + 1) % progress_every == 0 {
            eprintln!(
                "  … {} of {} receipts, the clock at {}, {:.1} s",
                tick.receipts.end,
                plan.receipts.len(),
                tick.clock,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Customers with no receipt after their first invoice (only unmatched cancellations, say).
    let rest = members_until(Timestamp::MAX);
    if let Some(&last) = by_signup.last().filter(|_| !rest.is_empty()) {
        clock.set(clock.now().max(data.customers[last].first_invoice_at));
        run_tasks(state, tenant, data, plan, &mut members, &mut counts, rest).await;
    }
    let now = Timestamp::now();
    if let Some(last) = plan.receipts.last() {
        let settled = [program.available_from(last.at), program.expires_at(last.at)]
            .into_iter()
            .filter(|at| *at < Timestamp::MAX)
            .max()
            .unwrap_or(last.at);
        midnights.run_until(state, clock, tenant, settled.min(now)).await?;
        eprintln!(
            "  … the jobs run every midnight until {}, {:.1} s",
            settled.min(now),
            started.elapsed().as_secs_f64()
        );
    }
    clock.set(now.max(clock.now()));
    let movements = run_jobs(state, clock, tenant).await?;
    counts.jobs_movements = midnights.movements + movements;
    Ok(Replayed { counts, ticks: ticks.len(), job_runs: midnights.runs + 1 })
}

/// The tenant to import into, with a program billing in GBP: a new one (its program switched to
/// GBP and Europe/London), or the one named, checked.
async fn gbp_tenant(state: &AppState, args: &ImportArgs) -> anyhow::Result<(TenantId, Program)> {
    let tenant = super::import::target_tenant(state, args).await?;
    let Some((program_id, _, program)) = state.store.program(tenant, None).await? else {
        bail!("tenant {} has no program: create one billing in {FILE_CURRENCY} first", tenant.0);
    };
    if args.tenant.is_some() {
        if program.bill_currency.to_string() != FILE_CURRENCY {
            bail!(
                "tenant {}'s program bills in {}, but the Online Retail file's prices are in {FILE_CURRENCY}: import \
                 into a tenant whose program bills in {FILE_CURRENCY}, or use --new-tenant NAME to create one",
                tenant.0,
                program.bill_currency
            );
        }
        return Ok((tenant, program));
    }
    let mut program = program;
    program.bill_currency = Currency::parse(FILE_CURRENCY).expect("GBP is ISO 4217");
    program.time_zone = FILE_TIME_ZONE.into();
    if let Err(issues) = program.validate() {
        let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
        bail!("the default program in {FILE_CURRENCY} does not validate: {}", issues.join("; "));
    }
    let command = Command::SaveProgram { id: Some(program_id), program: Box::new(program.clone()) };
    state.writer.submit(Request { tenant, idempotency: None, command }).await?;
    println!("Its program {program_id} now bills in {FILE_CURRENCY}, in time zone {FILE_TIME_ZONE}.");
    Ok((tenant, program))
}

pub async fn import(database: &Database, args: &ImportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let file = display_name(&args.file);
    let data = read_file(&args.file)?;
    let plan = plan(&data);
    let read_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{file}: read {} rows in {read_seconds:.1} s: {} customers, {} purchases, {} returns from {} cancellations; importing",
        data.rows,
        data.customers.len(),
        plan.purchases,
        plan.returns,
        plan.matching.cancellations
    );
    let clock = Arc::new(ManualClock::new(Timestamp::now()));
    let (state, writer_task) = app::open(database, clock.clone()).await?;
    let result = async {
        let (tenant, program) = gbp_tenant(&state, args).await?;
        let replayed = replay(&state, &clock, tenant, &program, &data, &plan, started).await?;
        let ledger = state.store.verify().await?;
        anyhow::Ok((tenant, replayed, ledger))
    }
    .await;
    drop(state);
    writer_task.await?;
    let (tenant, Replayed { mut counts, ticks, job_runs }, ledger) = result?;

    let seconds = started.elapsed().as_secs_f64();
    let m = &plan.matching;
    println!("{file} into tenant {}:", tenant.0);
    println!(
        "  customers: {} members ({} created, {} already imported)",
        data.customers.len(),
        counts.members_created,
        counts.members_already
    );
    println!(
        "  purchases: {} invoices with {} lines ({} imported, {} already imported, {} refused); {} lines imported now",
        plan.purchases,
        plan.purchase_lines,
        counts.purchases[0],
        counts.purchases[1],
        plan.purchases - counts.purchases[0] - counts.purchases[1],
        counts.lines_imported
    );
    println!(
        "  cancellations: {} with a customer: {} matched in full, {} in part, {} matched nothing; {} lines: {} matched, \
         {} in part, {} unmatched; {} items returned, {} items unmatched",
        m.cancellations,
        m.cancellations_matched,
        m.cancellations_partly,
        m.cancellations_unmatched,
        m.lines,
        m.lines_matched,
        m.lines_partly,
        m.lines_unmatched,
        m.units_matched,
        m.units_unmatched
    );
    println!(
        "  returns: {} ({} imported, {} already imported, {} refused)",
        plan.returns,
        counts.returns[0],
        counts.returns[1],
        plan.returns - counts.returns[0] - counts.returns[1]
    );
    let skipped: u64 = data.skipped.values().sum();
    let reasons: Vec<String> = data.skipped.iter().map(|(why, n)| format!("{n} {}", why.reason())).collect();
    println!("  skipped rows: {skipped}{}{}", if reasons.is_empty() { "" } else { ": " }, reasons.join("; "));
    println!(
        "  points: {} earned, {} reversed by returns, {} spent before their return; jobs moved {} in {} runs (the \
         clock in {} ticks, the jobs at every midnight, then at the real now)",
        counts.points_earned, counts.points_reversed, counts.points_unrecovered, counts.jobs_movements, job_runs, ticks
    );
    println!(
        "  ledger: {} movements, {} postings checked, {} problem(s)",
        ledger.movements,
        ledger.postings,
        ledger.problems.len()
    );
    println!("  {} rows in {seconds:.2} s, {:.0} rows/s", data.rows, data.rows as f64 / seconds.max(1e-9));

    for problem in &ledger.problems {
        eprintln!("ledger: {problem}");
    }
    counts.refused.sort();
    for (_, what, reason) in counts.refused.iter().take(REFUSED_SHOWN_MAX) {
        eprintln!("{file}: {what}: refused: {reason}");
    }
    if counts.refused.len() > REFUSED_SHOWN_MAX {
        eprintln!("{file}: ... and {} more refused", counts.refused.len() - REFUSED_SHOWN_MAX);
    }
    if !ledger.problems.is_empty() {
        bail!("the ledger does not balance after the import: {} problem(s), listed above", ledger.problems.len());
    }
    if !counts.refused.is_empty() {
        bail!(
            "{} member(s) or receipt(s) refused (listed above); the rest was imported. Run the same import again \
             after fixing the cause: what was imported is skipped",
            counts.refused.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_become_pence() {
        assert_eq!(pence("2.55"), Some(255));
        assert_eq!(pence("2.5"), Some(250));
        assert_eq!(pence("11062.06"), Some(1_106_206));
        assert_eq!(pence("-11062.06"), Some(-1_106_206));
        assert_eq!(pence("0"), Some(0));
        assert_eq!(pence("0.001"), Some(0));
        assert_eq!(pence("0.005"), Some(1));
        assert_eq!(pence(".5"), Some(50));
        assert_eq!(pence("2,55"), None);
        assert_eq!(pence(""), None);
        assert_eq!(pence("."), None);
        assert_eq!(pence("1e3"), None);
    }

    #[test]
    fn invoice_dates_in_every_form_are_utc() {
        let expected: Timestamp = "2010-12-01T08:26:00Z".parse().unwrap();
        assert_eq!(invoice_date("2010-12-01T08:26:00"), Some(expected));
        assert_eq!(invoice_date("2010-12-01 08:26:00"), Some(expected));
        assert_eq!(invoice_date("12/1/2010 8:26"), Some(expected));
        assert_eq!(invoice_date("12/01/2010 08:26:00"), Some(expected));
        assert_eq!(invoice_date("2010-12-01T08:26:00Z"), Some(expected));
        assert_eq!(invoice_date("2010-12-01T09:26:00+01:00"), Some(expected));
        assert_eq!(invoice_date("13/1/2010 8:26"), None);
        assert_eq!(invoice_date("yesterday"), None);
    }

    fn file(rows: &[&str]) -> FileData {
        let mut text = COLUMNS.join(",");
        for row in rows {
            text.push('\n');
            text.push_str(row);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.csv");
        std::fs::write(&path, text).unwrap();
        read_file(&path).unwrap()
    }

    #[test]
    fn cancellations_return_the_most_recent_purchases_first_and_count_what_matches_nothing() {
        let data = file(&[
            "1001,A,a,5,2011-01-01T10:00:00,1.00,7,UK",
            "1001,B,b,1,2011-01-01T10:00:00,2.00,7,UK",
            "1002,A,a,2,2011-01-02T10:00:00,1.00,7,UK",
            "1003,A,a,9,2011-01-02T11:00:00,1.00,8,UK",
            // 3 of A: 2 from 1002 (the latest), 1 from 1001; 1 of B from 1001; 4 of Z match nothing.
            "C1004,A,a,-3,2011-01-03T10:00:00,1.00,7,UK",
            "C1004,B,b,-1,2011-01-03T10:00:00,2.00,7,UK",
            "C1004,Z,z,-4,2011-01-03T10:00:00,2.00,7,UK",
            // 4 of A are left for customer 7, all in 1001: 4 matched, 6 not.
            "C1005,A,a,-10,2011-01-04T10:00:00,1.00,7,UK",
            // Customer 9 bought nothing.
            "C1006,A,a,-1,2011-01-04T10:00:00,1.00,9,UK",
            "1007,A,a,1,2011-01-04T10:00:00,0.00,9,UK",
            "1008,A,a,1,2011-01-04T10:00:00,1.00,,UK",
        ]);
        assert_eq!(data.rows, 11);
        assert_eq!(data.customers.len(), 3);
        assert_eq!(data.skipped.get(&Skip::NoCustomer), Some(&1));
        assert_eq!(data.skipped.get(&Skip::SalePriceNotPositive), Some(&1));
        let plan = plan(&data);
        assert_eq!((plan.purchases, plan.purchase_lines, plan.returns), (3, 4, 3));
        let returns: Vec<String> = plan
            .receipts
            .iter()
            .filter_map(|r| match &r.kind {
                ReceiptKind::Return { cancellation, purchase, lines } => {
                    let lines: Vec<String> = lines.iter().map(|l| format!("{}x{}", l.line, l.quantity)).collect();
                    Some(format!("{cancellation} {purchase} {}", lines.join(" ")))
                }
                ReceiptKind::Purchase { .. } => None,
            })
            .collect();
        assert_eq!(returns, vec!["C1004 1001 0x1 1x1", "C1004 1002 0x2", "C1005 1001 0x4"]);
        let m = &plan.matching;
        assert_eq!(
            (m.cancellations, m.cancellations_matched, m.cancellations_partly, m.cancellations_unmatched),
            (3, 0, 2, 1)
        );
        assert_eq!((m.lines, m.lines_matched, m.lines_partly, m.lines_unmatched), (5, 2, 1, 2));
        assert_eq!((m.units_matched, m.units_unmatched), (8, 11));
    }

    #[test]
    fn ticks_end_at_every_return_and_at_every_midnight() {
        let data = file(&[
            "1,A,a,1,2011-01-01T10:00:00,1.00,7,UK",
            "2,A,a,1,2011-01-01T10:30:00,1.00,8,UK",
            "C3,A,a,-1,2011-01-01T10:40:00,1.00,7,UK",
            "4,A,a,1,2011-01-01T10:40:00,1.00,9,UK",
            "5,A,a,1,2011-01-01T10:50:00,1.00,9,UK",
            "6,A,a,1,2011-01-01T12:00:00,1.00,9,UK",
            "7,A,a,1,2011-01-02T00:10:00,1.00,9,UK",
        ]);
        let plan = plan(&data);
        let ticks = ticks(&plan.receipts);
        let shape: Vec<(String, std::ops::Range<usize>)> =
            ticks.iter().map(|t| (t.clock.to_string(), t.receipts.clone())).collect();
        assert_eq!(
            shape,
            vec![
                ("2011-01-01T10:40:00Z".to_string(), 0..4),
                ("2011-01-01T10:50:00Z".to_string(), 4..5),
                ("2011-01-01T12:00:00Z".to_string(), 5..6),
                ("2011-01-02T00:10:00Z".to_string(), 6..7),
            ]
        );
    }

    #[test]
    fn a_value_that_cannot_be_read_stops_the_file_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        let text =
            format!("{}\n1,A,a,six,2011-01-01T10:00:00,1.00,7,UK\n1,A,a,1,someday,1.00,7,UK\n", COLUMNS.join(","));
        std::fs::write(&path, text).unwrap();
        let message = read_file(&path).unwrap_err().to_string();
        assert!(message.contains("line 2, column Quantity: \"six\" is not a whole number of items"), "{message}");
        assert!(message.contains("line 3, column InvoiceDate"), "{message}");
        assert!(message.contains("nothing was imported"), "{message}");
    }
}
