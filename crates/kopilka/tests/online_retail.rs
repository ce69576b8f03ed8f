//! `kopilka import transactions --format online-retail` run as the real binary on a small file in
//! the UCI Online Retail layout, checked through `kopilka export` and the store.

use std::io::Write;
use std::path::Path;

mod support;

use jiff::Timestamp;
use kopilka_core::member::IdentifierKind;
use kopilka_core::{MovementKind, TenantId};
use kopilka_store::Store;
use support::{p, text, Kopilka};

/// Three customers over four days. 536365 is partly cancelled by C536379 two days later (inside
/// the default program's 14-day return window); C536383 cancels what customer 15311 never bought
/// here; 536367 has a free line; 536368 has no customer. 536367 writes its dates as the UCI
/// spreadsheet does.
const SAMPLE: &str = "\
InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,10,2010-12-01T08:26:00,50.00,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,2010-12-01T08:26:00,3.39,17850,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01T08:28:00,1.85,17850,United Kingdom
536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,12/1/2010 8:34,1.69,13047,United Kingdom
536367,22745,POPPY'S PLAYHOUSE BEDROOM,6,12/1/2010 8:34,0.00,13047,United Kingdom
536368,22960,JAM MAKING SET WITH JARS,6,2010-12-01T08:34:00,4.25,,United Kingdom
C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-4,2010-12-03T09:41:00,50.00,17850,United Kingdom
C536383,35004C,SET OF 3 COLOURED FLYING DUCKS,-1,2010-12-03T09:49:00,4.65,15311,United Kingdom
536384,82484,\"WOOD BLACK BOARD, ANT WHITE FINISH\",12,2010-12-04T09:53:00,6.45,15311,United Kingdom
";

impl Kopilka {
    fn store(&self) -> (tokio::runtime::Runtime, Store) {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let store = runtime.block_on(Store::open(&self.path("data"))).expect("the store opens");
        (runtime, store)
    }
}

fn ts(text: &str) -> Timestamp {
    text.parse().expect("a timestamp")
}

fn write_gz(path: &Path, text: &str) {
    let file = std::fs::File::create(path).expect("creates");
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("writes");
    encoder.finish().expect("finishes");
}

#[test]
fn the_sample_becomes_members_purchases_and_returns_at_their_own_times_and_a_rerun_changes_nothing() {
    let kopilka = Kopilka::new();
    let gz = kopilka.path("online_retail.csv.gz");
    write_gz(&gz, SAMPLE);
    let out = kopilka.ok(&["import", "transactions", "--format", "online-retail", p(&gz), "--new-tenant", "uci"]);
    assert!(out.contains("Created tenant 1"), "{out}");
    assert!(out.contains("now bills in GBP, in time zone Europe/London"), "{out}");
    assert!(out.contains("customers: 3 members (3 created, 0 already imported)"), "{out}");
    assert!(out.contains("purchases: 4 invoices with 5 lines (4 imported, 0 already imported, 0 refused)"), "{out}");
    assert!(out.contains("cancellations: 2 with a customer: 1 matched in full, 0 in part, 1 matched nothing"), "{out}");
    assert!(out.contains("returns: 1 (1 imported, 0 already imported, 0 refused)"), "{out}");
    assert!(
        out.contains("skipped rows: 2: 1 without CustomerID; 1 sale rows with a zero or negative UnitPrice"),
        "{out}"
    );
    assert!(out.contains("0 problem(s)"), "{out}");
    assert!(out.contains("9 rows in"), "{out}");

    let members = kopilka.export("members", "1");
    let signups: Vec<(&str, &str)> = members
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[3], fields[8])
        })
        .collect();
    assert_eq!(
        signups,
        [
            ("uci-17850", "2010-12-01T08:26:00Z"),
            ("uci-13047", "2010-12-01T08:34:00Z"),
            ("uci-15311", "2010-12-03T09:49:00Z"),
        ],
        "{members}"
    );

    let transactions = kopilka.export("transactions", "1");
    let lines: Vec<&str> = transactions.lines().skip(1).collect();
    assert_eq!(lines.len(), 6, "5 purchase lines and 1 return line:\n{transactions}");
    assert!(
        transactions.contains("purchase,536365,2010-12-01T08:26:00Z,uci-17850,,,,web,,GBP,0,,,85123A,,10,5000,0"),
        "{transactions}"
    );
    assert!(transactions.contains("return,536365:return,,uci-17850,,,,,,,,536365,1,85123A,,4,,"), "{transactions}");
    assert!(transactions.contains("purchase,536367,2010-12-01T08:34:00Z,uci-13047,,,,web,,GBP,0,,,84879,,32,169,0"));
    assert!(!transactions.contains("22745"), "the free line is skipped:\n{transactions}");
    assert!(!transactions.contains("536368"), "the row without customer is skipped:\n{transactions}");

    {
        let (runtime, store) = kopilka.store();
        runtime.block_on(async {
            let tenant = TenantId(1);
            let (_, _, program) = store.program(tenant, None).await.unwrap().expect("a program");
            assert_eq!(program.bill_currency.to_string(), "GBP");
            assert_eq!(program.time_zone, "Europe/London");
            let member = store.member_by(tenant, IdentifierKind::ExternalId, "uci-17850").await.unwrap().unwrap();
            let purchases = store.purchases_of(tenant, &[member.id]).await.unwrap();
            let bought = purchases.iter().find(|p| p.external_id == "536365").expect("536365");
            // 520.34 GBP at the default 1 point per 100: 5 points, all on the lantern-free first line;
            // 4 of its 10 come back while the points are pending, so 2 are reversed, none lost.
            assert_eq!(bought.occurred_at, ts("2010-12-01T08:26:00Z"));
            assert_eq!(bought.total_minor, 10 * 5000 + 6 * 339);
            assert_eq!(bought.points_earned, 5);
            assert_eq!(bought.lines[0].quantity_returned, 4);
            assert_eq!(bought.returned_minor, 4 * 5000);
            assert_eq!((bought.points_reversed, bought.points_unrecovered), (2, 0));
            let history = store.history(tenant, &[member.id], None, 100).await.unwrap();
            let at = |kind: MovementKind| -> Vec<Timestamp> {
                let mut times: Vec<Timestamp> =
                    history.iter().filter(|m| m.kind == kind).map(|m| m.occurred_at).collect();
                times.sort();
                times
            };
            // Purchases up to an hour apart are sent together with the clock at the last of them
            // (536367, 08:34): the earn is recorded then, for points that count from 08:26.
            assert_eq!(at(MovementKind::Earn), [ts("2010-12-01T08:34:00Z")], "{history:#?}");
            assert_eq!(at(MovementKind::Reverse), [ts("2010-12-03T09:41:00Z")], "the return at its cancellation");
            // The other 3 points became available 14 days later (at the next midnight's job) and
            // expired 12 months after they were earned (the job at the next midnight).
            assert_eq!(at(MovementKind::Activate), [ts("2010-12-16T00:00:00Z")], "{history:#?}");
            assert_eq!(at(MovementKind::Expire), [ts("2011-12-02T00:00:00Z")], "{history:#?}");
            assert!(store.verify().await.unwrap().problems.is_empty());
        });
    }

    // Again, from the plain .csv into the same tenant: everything is replayed, nothing moves.
    let before = (kopilka.export("members", "1"), kopilka.export("transactions", "1"), kopilka.ok(&["verify"]));
    let csv = kopilka.path("online_retail.csv");
    std::fs::write(&csv, SAMPLE).unwrap();
    let out = kopilka.ok(&["import", "transactions", "--format", "online-retail", p(&csv), "--tenant", "1"]);
    assert!(out.contains("customers: 3 members (0 created, 3 already imported)"), "{out}");
    assert!(out.contains("(0 imported, 4 already imported, 0 refused)"), "{out}");
    assert!(out.contains("returns: 1 (0 imported, 1 already imported, 0 refused)"), "{out}");
    assert!(out.contains("jobs moved 0"), "{out}");
    let after = (kopilka.export("members", "1"), kopilka.export("transactions", "1"), kopilka.ok(&["verify"]));
    assert_eq!(before, after);
}

#[test]
fn a_tenant_whose_program_is_not_in_gbp_is_refused_before_anything_is_written() {
    let kopilka = Kopilka::new();
    kopilka.ok(&["demo", "--members", "3"]);
    let before = kopilka.export("transactions", "1");
    let csv = kopilka.path("online_retail.csv");
    std::fs::write(&csv, SAMPLE).unwrap();
    let output = kopilka.run(&["import", "transactions", "--format", "online-retail", p(&csv), "--tenant", "1"]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains(
            "tenant 1's program bills in RUB, but the Online Retail file's prices are in GBP: import into a tenant \
             whose program bills in GBP, or use --new-tenant NAME to create one"
        ),
        "{message}"
    );
    assert_eq!(kopilka.export("transactions", "1"), before);
    assert!(!kopilka.export("members", "1").contains("uci-"));
}

#[test]
fn a_value_that_cannot_be_read_stops_the_import_with_its_line_and_column() {
    let kopilka = Kopilka::new();
    let bad = SAMPLE.replacen(",32,12/1/2010 8:34,1.69,", ",32,12/1/2010 8:34,\"1,69\",", 1);
    let csv = kopilka.path("online_retail.csv");
    std::fs::write(&csv, bad).unwrap();
    let output = kopilka.run(&["import", "transactions", "--format", "online-retail", p(&csv), "--new-tenant", "uci"]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(message.contains(r#"line 5, column UnitPrice: "1,69" is not a price in pounds, e.g. 2.55"#), "{message}");
    assert!(message.contains("nothing was imported"), "{message}");
    assert!(!message.contains("Created tenant"), "no tenant is made for a file that cannot be read: {message}");
}
