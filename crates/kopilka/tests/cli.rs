//! The data commands run as the real binary on a fresh data directory: demo, import, export.

mod support;

use jiff::Timestamp;
use support::{p, text, Kopilka};

const MEMBERS_HEADER: &str = "card,phone,email,external_id,name,birth_date,gender,city,signup_at,consent_email,\
                              consent_sms,consent_push,consent_messenger";
const TRANSACTIONS_HEADER: &str = "type,external_id,occurred_at,member_external_id,member_card,member_phone,\
                                   member_email,channel,store,currency,redeem_points,purchase_external_id,line,sku,\
                                   category,quantity,unit_price_minor,discount_minor";

fn days_ago(days: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() - days * 86_400).expect("in range").to_string()
}

fn members_csv() -> String {
    format!(
        "{MEMBERS_HEADER}\n\
         770000000001,+79120000001,anna@example.com,CRM-1,Анна Смирнова,1990-04-17,female,Москва,2024-01-15T10:00:00Z,true,false,true,false\n\
         770000000002,+79120000002,,,Иван Петров,,male,Казань,2024-02-01T08:30:00Z,false,true,false,false\n\
         ,,olga@example.com,,,,,,2024-03-01T12:00:00Z,false,false,false,true\n"
    )
}

/// Purchases a while ago (points available now), a redemption, a partial and a whole return, written
/// in exactly the form export writes.
fn transactions_csv() -> String {
    let (a, b, c) = (days_ago(60), days_ago(40), days_ago(5));
    format!(
        "{TRANSACTIONS_HEADER}\n\
         purchase,P-1,{a},CRM-1,,,,pos,\"Москва, Тверская 12\",RUB,0,,,MILK,dairy,3,10000,0\n\
         purchase,P-1,{a},CRM-1,,,,pos,\"Москва, Тверская 12\",RUB,0,,,CHEESE,dairy,1,25000,5000\n\
         return,P-1:return,,CRM-1,,,,,,,,P-1,1,MILK,dairy,1,,\n\
         purchase,P-2,{b},,770000000002,,,web,,RUB,0,,,COFFEE,beverages,2,54900,0\n\
         return,P-2:return,,,770000000002,,,,,,,P-2,1,COFFEE,beverages,2,,\n\
         purchase,P-3,{c},,,,olga@example.com,app,,RUB,0,,,BREAD,bakery,1,5990,0\n\
         purchase,P-4,{c},CRM-1,,,,pos,,RUB,2,,,TEA,beverages,1,28900,0\n"
    )
}

#[test]
fn demo_makes_a_tenant_that_verifies() {
    let kopilka = Kopilka::new();
    let out = kopilka.ok(&["demo", "--members", "25", "--seed", "7"]);
    assert!(out.contains("Created tenant 1"), "{out}");
    assert!(out.contains("kpk_"), "the admin key is printed once: {out}");
    assert!(out.contains("25 members"), "{out}");
    let verified = kopilka.ok(&["verify"]);
    assert!(verified.contains("the ledger balances"), "{verified}");
    let transactions = kopilka.export("transactions", "1");
    assert!(transactions.lines().count() > 100, "a year of purchases:\n{transactions}");
}

#[test]
fn import_then_export_gives_back_the_files_and_round_trips_to_another_tenant() {
    let kopilka = Kopilka::new();
    // Made once: its times count back from now, so a second call a second later differs.
    let transactions_csv = transactions_csv();
    let members = kopilka.write("members.csv", &members_csv());
    let transactions = kopilka.write("transactions.csv", &transactions_csv);
    let out = kopilka.ok(&["import", "members", p(&members), "--new-tenant", "shop"]);
    assert!(out.contains("Created tenant 1"), "{out}");
    assert!(out.contains("3 members imported"), "{out}");
    let out = kopilka.ok(&["import", "transactions", p(&transactions), "--tenant", "1"]);
    assert!(out.contains("6 receipts imported, 0 already imported, 0 refused"), "{out}");
    assert_eq!(kopilka.export("members", "1"), members_csv());
    assert_eq!(kopilka.export("transactions", "1"), transactions_csv);

    let exported_members = kopilka.write("exported_members.csv", &kopilka.export("members", "1"));
    let exported_transactions = kopilka.write("exported_transactions.csv", &kopilka.export("transactions", "1"));
    kopilka.ok(&["import", "members", p(&exported_members), "--new-tenant", "copy"]);
    kopilka.ok(&["import", "transactions", p(&exported_transactions), "--tenant", "2"]);
    assert_eq!(kopilka.export("members", "2"), members_csv());
    assert_eq!(kopilka.export("transactions", "2"), transactions_csv);
    assert!(kopilka.ok(&["verify"]).contains("the ledger balances"));
}

#[test]
fn a_bad_file_is_refused_whole_with_its_line_and_column() {
    let kopilka = Kopilka::new();
    let members = kopilka.write("members.csv", &members_csv());
    kopilka.ok(&["import", "members", p(&members), "--new-tenant", "shop"]);
    // Line 3 has a price with a decimal comma; everything else is fine.
    let bad = transactions_csv().replacen(",1,25000,5000", ",1,\"12,50\",5000", 1);
    let file = kopilka.write("transactions.csv", &bad);
    let output = kopilka.run(&["import", "transactions", p(&file), "--tenant", "1"]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains(r#"line 3, column unit_price_minor: "12,50" is not an integer number of minor units"#),
        "{message}"
    );
    assert!(message.contains("nothing was imported"), "{message}");
    assert_eq!(kopilka.export("transactions", "1"), format!("{TRANSACTIONS_HEADER}\n"));

    let nul = members_csv().replacen("Казань", "Каз\0ань", 1);
    let file = kopilka.write("members_nul.csv", &nul);
    let message = text(&kopilka.run(&["import", "members", p(&file), "--tenant", "1"]));
    assert!(message.contains("line 3, column city: holds the NUL character"), "{message}");

    let unknown = members_csv().replacen("city", "town", 1);
    let file = kopilka.write("members2.csv", &unknown);
    let message = text(&kopilka.run(&["import", "members", p(&file), "--tenant", "1"]));
    assert!(message.contains(r#"line 1: unknown column "town""#), "{message}");

    let missing_member = transactions_csv().replace("CRM-1", "CRM-404");
    let file = kopilka.write("transactions3.csv", &missing_member);
    let message = text(&kopilka.run(&["import", "transactions", p(&file), "--tenant", "1"]));
    assert!(
        message.contains(r#"line 2, column member_external_id: no member with external_id "CRM-404""#),
        "{message}"
    );
    assert_eq!(kopilka.export("transactions", "1"), format!("{TRANSACTIONS_HEADER}\n"));
}

#[test]
fn running_an_import_again_changes_nothing() {
    let kopilka = Kopilka::new();
    let members = kopilka.write("members.csv", &members_csv());
    let transactions = kopilka.write("transactions.csv", &transactions_csv());
    kopilka.ok(&["import", "members", p(&members), "--new-tenant", "shop"]);
    kopilka.ok(&["import", "transactions", p(&transactions), "--tenant", "1"]);
    let before = (kopilka.export("members", "1"), kopilka.export("transactions", "1"), kopilka.ok(&["verify"]));

    let out = kopilka.ok(&["import", "members", p(&members), "--tenant", "1"]);
    assert!(out.contains("0 members imported, 3 already imported"), "{out}");
    let out = kopilka.ok(&["import", "transactions", p(&transactions), "--tenant", "1"]);
    assert!(out.contains("0 receipts imported, 6 already imported"), "{out}");
    let after = (kopilka.export("members", "1"), kopilka.export("transactions", "1"), kopilka.ok(&["verify"]));
    assert_eq!(before, after);
}

/// More receipts than the writer takes in one batch, of three members, each return right behind
/// its purchase: the import must keep the file's order (a return never reaches the writer before
/// its purchase, ids follow the file), which the export shows line for line.
#[test]
fn a_long_import_keeps_the_order_of_the_file() {
    let kopilka = Kopilka::new();
    let members = kopilka.write("members.csv", &members_csv());
    kopilka.ok(&["import", "members", p(&members), "--new-tenant", "shop"]);
    let when = days_ago(30);
    let buyers = ["CRM-1,,,", ",770000000002,,", ",,,olga@example.com"];
    let mut csv = format!("{TRANSACTIONS_HEADER}\n");
    for i in 0..2_500 {
        let buyer = buyers[i % buyers.len()];
        let price = 1_000 + i * 10;
        csv.push_str(&format!("purchase,P-{i},{when},{buyer},pos,,RUB,0,,,MILK,dairy,2,{price},0\n"));
        if i % 7 == 3 {
            csv.push_str(&format!("return,P-{i}:return,,{buyer},,,,,P-{i},1,MILK,dairy,1,,\n"));
        }
    }
    let file = kopilka.write("transactions.csv", &csv);
    let out = kopilka.ok(&["import", "transactions", p(&file), "--tenant", "1"]);
    assert!(out.contains("2857 receipts imported, 0 already imported, 0 refused"), "{out}");
    assert_eq!(kopilka.export("transactions", "1"), csv);
    assert!(kopilka.ok(&["verify"]).contains("the ledger balances"));
}
