//! Import of purchases from CSV through the real `kopilka import transactions` (every row checked,
//! then each receipt one writer command), beside the store writing the same rows raw.
//!
//! The file is generated in Kopilka's own CSV format (`kopilka import --help`) from the bench's
//! workload: one line per receipt, so a million purchases are a million rows. The Complete Journey
//! file in /work/shared/data has 1.47 M lines but far fewer receipts and no format `import` reads.
//! The members are imported first, untimed, by the same command. The anchor is the purchases
//! phase's anchor (`anchor_phase`): the rows a purchase writes, through the store's own `flush`,
//! 1,000 purchases per transaction, into a fresh store with the same members.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use kopilka_store::Database;

use super::server::{run_cli, Target};
use super::{anchor_phase, memory, table_counts, Phase, Sizes, Workload};
use crate::data::{self, DataKind, ImportArgs, InputFormat};

#[derive(Debug, Clone)]
pub struct ImportFigures {
    pub purchases: usize,
    pub members: usize,
    pub elapsed: Duration,
    pub anchor: Phase,
    pub peak_kib: u64,
    pub file_bytes: u64,
}

impl ImportFigures {
    pub fn rate(&self) -> f64 {
        self.purchases as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn measure(
    target: &Target,
    dir: &Path,
    purchases: usize,
    members: usize,
    seed: u64,
) -> anyhow::Result<ImportFigures> {
    let workload = Workload::generate_with_lines(members, purchases, 1, seed);
    let (store_dir, files) = (dir.join("import"), dir.join("import-files"));
    std::fs::create_dir_all(&files)?;
    let (members_csv, purchases_csv) = (files.join("members.csv"), files.join("purchases.csv"));
    write_files(&workload, &members_csv, &purchases_csv)?;
    let file_bytes = std::fs::metadata(&purchases_csv)?.len();

    import(target, &store_dir, DataKind::Members, &members_csv, None).await?;
    let before = counts(target, &store_dir).await?;
    let (elapsed, peak_kib) = import(target, &store_dir, DataKind::Transactions, &purchases_csv, Some(1)).await?;
    let after = counts(target, &store_dir).await?;
    let rows: Vec<(&'static str, i64)> = after.iter().zip(&before).map(|((t, a), (_, b))| (*t, a - b)).collect();
    let imported = rows.iter().find(|(t, _)| *t == "purchases").map(|(_, n)| *n).unwrap_or(0);
    ensure!(imported == purchases as i64, "{imported} of {purchases} purchases imported");

    let sizes = Sizes { members, purchases, in_flight: 1, http_purchases: 0, http_clients: 1 };
    let anchor = anchor_phase(Database::Sqlite(dir.join("import-anchor")), &workload, sizes, 1_000).await?;
    ensure!(anchor.rows == rows, "the anchor must write the import's rows: import {rows:?}, anchor {:?}", anchor.rows);
    Ok(ImportFigures { purchases, members, elapsed, anchor, peak_kib, file_bytes })
}

fn write_files(workload: &Workload, members: &Path, purchases: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(members)?);
    writeln!(out, "card")?;
    for i in 0..workload.members {
        writeln!(out, "{}", Workload::card(i))?;
    }
    out.flush()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(purchases)?);
    writeln!(out, "type,external_id,member_card,currency,store,sku,category,quantity,unit_price_minor")?;
    for spec in &workload.purchases {
        for line in &spec.lines {
            writeln!(
                out,
                "purchase,{},{},RUB,{},{},{},{},{}",
                spec.external_id,
                Workload::card(spec.member),
                spec.store,
                line.sku,
                line.category.as_deref().unwrap_or(""),
                line.quantity,
                line.unit_price_minor
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `kopilka import KIND FILE` into `dir` (a new tenant when `tenant` is `None`); its time and peak
/// memory (KiB).
async fn import(
    target: &Target,
    dir: &Path,
    kind: DataKind,
    file: &Path,
    tenant: Option<i64>,
) -> anyhow::Result<(Duration, u64)> {
    if let Some(exe) = &target.exe {
        let kind = if kind == DataKind::Members { "members" } else { "transactions" };
        let mut args = vec!["import".to_string(), kind.to_string(), file.display().to_string()];
        match tenant {
            Some(id) => args.extend(["--tenant".to_string(), id.to_string()]),
            None => args.extend(["--new-tenant".to_string(), "bench".to_string()]),
        }
        let ran = run_cli(exe, dir, &args).await?;
        return Ok((ran.elapsed, ran.peak_kib));
    }
    memory::reset_own_peak();
    let started = Instant::now();
    let args = ImportArgs {
        kind,
        file: file.to_path_buf(),
        tenant,
        new_tenant: tenant.is_none().then(|| "bench".to_string()),
        format: InputFormat::Kopilka,
    };
    data::import(&dir.into(), args).await?;
    Ok((started.elapsed(), memory::peak_kib(None).unwrap_or(0)))
}

async fn counts(target: &Target, dir: &Path) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let store = target.open_store(dir).await?;
    let mut conn = store.pool.acquire().await?;
    let rows = table_counts(&mut conn).await?;
    drop(conn);
    store.pool.close().await;
    Ok(rows)
}
