//! The CSV formats of import and export: column lists, and reading a row by column name with errors
//! that name the file, the line, the column and the fix.

use std::collections::HashMap;
use std::fmt;

use jiff::civil::Date;
use jiff::Timestamp;

/// Members: one row per member. Export writes these columns in this order.
pub const MEMBER_COLUMNS: [&str; 13] = [
    "card",
    "phone",
    "email",
    "external_id",
    "name",
    "birth_date",
    "gender",
    "city",
    "signup_at",
    "consent_email",
    "consent_sms",
    "consent_push",
    "consent_messenger",
];

/// Transactions: one row per receipt line. Export writes these columns in this order.
pub const TRANSACTION_COLUMNS: [&str; 18] = [
    "type",
    "external_id",
    "occurred_at",
    "member_external_id",
    "member_card",
    "member_phone",
    "member_email",
    "channel",
    "store",
    "currency",
    "redeem_points",
    "purchase_external_id",
    "line",
    "sku",
    "category",
    "quantity",
    "unit_price_minor",
    "discount_minor",
];

/// Problems listed before giving up on a file: enough to fix a pattern, not a wall of text.
pub const PROBLEMS_SHOWN_MAX: usize = 20;

/// One thing wrong with an input file, located as precisely as we can.
#[derive(Debug, Clone)]
pub struct Problem {
    pub line: u64,
    pub column: Option<&'static str>,
    pub message: String,
}

impl Problem {
    pub fn at(line: u64, column: &'static str, message: impl Into<String>) -> Problem {
        Problem { line, column: Some(column), message: message.into() }
    }

    pub fn line(line: u64, message: impl Into<String>) -> Problem {
        Problem { line, column: None, message: message.into() }
    }

    pub fn show(&self, file: &str) -> String {
        match self.column {
            Some(column) => format!("{file} line {}, column {column}: {}", self.line, self.message),
            None => format!("{file} line {}: {}", self.line, self.message),
        }
    }
}

/// Every problem of a file, shown together so they can all be fixed in one pass.
#[derive(Debug)]
pub struct Problems {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.problems.iter().take(PROBLEMS_SHOWN_MAX) {
            writeln!(f, "{}", problem.show(&self.file))?;
        }
        if self.problems.len() > PROBLEMS_SHOWN_MAX {
            writeln!(f, "... and {} more problem(s)", self.problems.len() - PROBLEMS_SHOWN_MAX)?;
        }
        write!(
            f,
            "{} problem(s) in {}; nothing was imported. Fix them and run the import again.",
            self.problems.len(),
            self.file
        )
    }
}

impl std::error::Error for Problems {}

/// The header of a file: which known column sits at which position.
pub struct Header {
    positions: HashMap<&'static str, usize>,
    pub width: usize,
}

impl Header {
    /// Checks the header against the known columns: unknown and repeated columns are errors.
    /// Known columns may be left out; a column left out reads as empty on every row.
    pub fn parse(record: &csv::StringRecord, known: &[&'static str]) -> Result<Header, Vec<Problem>> {
        let mut positions = HashMap::new();
        let mut problems = Vec::new();
        for (index, name) in record.iter().enumerate() {
            let name = name.trim().trim_start_matches('\u{feff}');
            match known.iter().find(|k| **k == name) {
                Some(column) => {
                    if positions.insert(*column, index).is_some() {
                        problems.push(Problem::line(1, format!("column {name:?} appears twice in the header")));
                    }
                }
                None => problems.push(Problem::line(
                    1,
                    format!("unknown column {name:?} in the header; the columns are: {}", known.join(",")),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Header { positions, width: record.len() })
        } else {
            Err(problems)
        }
    }
}

/// One data row, read by column name. Values are trimmed; an empty value is `None`.
pub struct Row<'a> {
    pub line: u64,
    header: &'a Header,
    record: &'a csv::StringRecord,
}

impl<'a> Row<'a> {
    pub fn new(line: u64, header: &'a Header, record: &'a csv::StringRecord) -> Row<'a> {
        Row { line, header, record }
    }

    pub fn get(&self, column: &'static str) -> Option<&'a str> {
        let index = *self.header.positions.get(column)?;
        self.record.get(index).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn problem(&self, column: &'static str, message: impl Into<String>) -> Problem {
        Problem::at(self.line, column, message)
    }

    pub fn text(&self, column: &'static str) -> Option<String> {
        self.get(column).map(str::to_string)
    }

    pub fn integer(&self, column: &'static str, what: &str) -> Result<Option<i64>, Problem> {
        let Some(value) = self.get(column) else { return Ok(None) };
        value.parse::<i64>().map(Some).map_err(|_| self.problem(column, format!("{value:?} is not {what}")))
    }

    pub fn timestamp(&self, column: &'static str) -> Result<Option<Timestamp>, Problem> {
        let Some(value) = self.get(column) else { return Ok(None) };
        value.parse::<Timestamp>().map(Some).map_err(|_| {
            self.problem(
                column,
                format!("{value:?} is not a timestamp: write RFC 3339 with an offset, e.g. 2025-03-01T10:15:00+03:00"),
            )
        })
    }

    pub fn date(&self, column: &'static str) -> Result<Option<Date>, Problem> {
        let Some(value) = self.get(column) else { return Ok(None) };
        value
            .parse::<Date>()
            .map(Some)
            .map_err(|_| self.problem(column, format!("{value:?} is not a date: write YYYY-MM-DD, e.g. 1990-04-17")))
    }

    pub fn boolean(&self, column: &'static str) -> Result<bool, Problem> {
        match self.get(column).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") | Some("0") | Some("no") => Ok(false),
            Some("true") | Some("1") | Some("yes") => Ok(true),
            Some(other) => Err(self.problem(column, format!("{other:?} is not a yes/no value: write true or false"))),
        }
    }
}

/// How a file's records are read: flexible, so a short row is reported by us with its line.
pub fn reader<R: std::io::Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(input)
}

/// Formats a timestamp the way import reads it.
pub fn format_timestamp(ts: Timestamp) -> String {
    ts.to_string()
}
