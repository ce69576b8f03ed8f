//! `kopilka export members|transactions --tenant ID [--out FILE]`: CSV out, in exactly the format
//! `kopilka import` reads, so a tenant exported and imported into another one comes out the same.
//!
//! Members merged into another are left out: their points and receipts belong to the survivor, and
//! receipts are written under the survivor. A purchase with returns is followed by one return
//! receipt (`<external_id>:return`) listing what has been returned of each line; the ledger keeps
//! returns per line, not per return receipt, and a single return of the same quantities moves the
//! same points.

use kopilka_store::Database;
use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context};
use kopilka_core::member::IdentifierKind;
use kopilka_core::{MemberId, PurchaseId, TenantId};
use kopilka_store::{MemberRow, Store};

use super::csv_format::{format_timestamp, MEMBER_COLUMNS, TRANSACTION_COLUMNS};
use super::{DataKind, ExportArgs};

/// Rows read from the store per query.
const PAGE_SIZE: i64 = 1_000;

pub async fn export(database: &Database, args: ExportArgs) -> anyhow::Result<()> {
    let store = Store::connect(database).await?;
    let tenant = TenantId(args.tenant);
    if !store.tenant_exists(tenant).await? {
        bail!("--tenant {}: no such tenant", args.tenant);
    }
    let output: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut writer = csv::Writer::from_writer(output);
    let rows = match args.kind {
        DataKind::Members => write_members(&store, tenant, &mut writer).await?,
        DataKind::Transactions => write_transactions(&store, tenant, &mut writer).await?,
    };
    writer.flush()?;
    if let Some(path) = &args.out {
        eprintln!("wrote {rows} rows to {}", path.display());
    }
    Ok(())
}

/// Every member of the tenant, merged ones included, by id.
async fn all_members(store: &Store, tenant: TenantId) -> anyhow::Result<Vec<MemberRow>> {
    let mut members = Vec::new();
    let mut after = MemberId(0);
    loop {
        let page = store.members_page(tenant, after, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        members.extend(page);
    }
    Ok(members)
}

fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("")
}

async fn write_members<W: Write>(store: &Store, tenant: TenantId, out: &mut csv::Writer<W>) -> anyhow::Result<usize> {
    out.write_record(MEMBER_COLUMNS)?;
    let mut rows = 0;
    for member in all_members(store, tenant).await? {
        if member.merged_into.is_some() {
            continue;
        }
        let p = &member.profile;
        let bool_text = |value: bool| if value { "true" } else { "false" };
        out.write_record([
            text(&p.card),
            text(&p.phone),
            text(&p.email),
            text(&p.external_id),
            text(&p.name),
            &p.birth_date.map(|d| d.to_string()).unwrap_or_default(),
            p.gender.map(|g| g.as_str()).unwrap_or(""),
            text(&p.city),
            &format_timestamp(member.signup_at),
            bool_text(p.consents.email),
            bool_text(p.consents.sms),
            bool_text(p.consents.push),
            bool_text(p.consents.messenger),
        ])?;
        rows += 1;
    }
    Ok(rows)
}

/// The column and value that name a member in a transactions file.
fn member_reference(member: &MemberRow) -> Option<(usize, String)> {
    // Positions of member_external_id, member_card, member_phone, member_email.
    [(3, IdentifierKind::ExternalId), (4, IdentifierKind::Card), (5, IdentifierKind::Phone), (6, IdentifierKind::Email)]
        .into_iter()
        .find_map(|(column, kind)| member.profile.identifier(kind).map(|value| (column, value.to_string())))
}

async fn write_transactions<W: Write>(
    store: &Store,
    tenant: TenantId,
    out: &mut csv::Writer<W>,
) -> anyhow::Result<usize> {
    assert_eq!(TRANSACTION_COLUMNS[3], "member_external_id");
    assert_eq!(TRANSACTION_COLUMNS[6], "member_email");
    let members: HashMap<MemberId, MemberRow> =
        all_members(store, tenant).await?.into_iter().map(|m| (m.id, m)).collect();
    let survivor = |mut id: MemberId| -> anyhow::Result<&MemberRow> {
        for _ in 0..members.len() + 1 {
            let row = members.get(&id).with_context(|| format!("member {id} is missing"))?;
            match row.merged_into {
                Some(next) => id = next,
                None => return Ok(row),
            }
        }
        bail!("member {id} is merged in a cycle")
    };
    out.write_record(TRANSACTION_COLUMNS)?;
    let mut rows = 0;
    let mut after = PurchaseId(0);
    loop {
        let page = store.purchases_page(tenant, after, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for purchase in page {
            let member = survivor(purchase.member_id)?;
            let Some((member_column, member_value)) = member_reference(member) else {
                bail!(
                    "member {} (purchase {:?}) has no external_id, card, phone or email, so its receipts cannot be \
                     written in a form import can read: give the member an identifier first",
                    member.id,
                    purchase.external_id
                );
            };
            let occurred_at = format_timestamp(purchase.occurred_at);
            let redeem_points = purchase.points_redeemed.to_string();
            for line in &purchase.lines {
                let mut record: [String; 18] = Default::default();
                record[0] = "purchase".into();
                record[1] = purchase.external_id.clone();
                record[2] = occurred_at.clone();
                record[member_column] = member_value.clone();
                record[7] = purchase.channel.as_str().into();
                record[8] = purchase.store.clone().unwrap_or_default();
                record[9] = purchase.currency.to_string();
                record[10] = redeem_points.clone();
                record[13] = line.sku.clone();
                record[14] = line.category.clone().unwrap_or_default();
                record[15] = line.quantity.to_string();
                record[16] = line.unit_price_minor.to_string();
                record[17] = line.discount_minor.to_string();
                out.write_record(&record)?;
                rows += 1;
            }
            let return_id = format!("{}:return", purchase.external_id);
            for (index, line) in purchase.lines.iter().enumerate().filter(|(_, l)| l.quantity_returned > 0) {
                let mut record: [String; 18] = Default::default();
                record[0] = "return".into();
                record[1] = return_id.clone();
                record[member_column] = member_value.clone();
                record[11] = purchase.external_id.clone();
                record[12] = (index + 1).to_string();
                record[13] = line.sku.clone();
                record[14] = line.category.clone().unwrap_or_default();
                record[15] = line.quantity_returned.to_string();
                out.write_record(&record)?;
                rows += 1;
            }
        }
    }
    Ok(rows)
}
