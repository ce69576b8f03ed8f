//! The referral guards as a table: two parties and the referrer's history in, a verdict out.

use jiff::{SignedDuration, Timestamp};
use kopilka_core::referrals::{check_referral, Party, PeriodLimit, ReferralProgram};

fn terms() -> ReferralProgram {
    ReferralProgram {
        welcome_points: 50,
        referrer_points: 100,
        min_purchase_minor: 50_000,
        link_base: "https://shop.example.com/".into(),
        limit_total: Some(5),
        limit_per_period: Some(PeriodLimit { count: 2, period_days: 30 }),
        check_device: true,
    }
}

fn party<'a>(phone: &'a str, email: &'a str, card: &'a str, device: &'a str) -> Party<'a> {
    let some = |text: &'a str| (!text.is_empty()).then_some(text);
    Party { phone: some(phone), email: some(email), card: some(card), devices: some(device).into_iter().collect() }
}

#[test]
fn each_guard_names_its_reason() {
    let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let days_ago = |days: i64| now - SignedDuration::from_hours(24 * days);
    let anna = party("+79120000001", "anna.k@example.com", "0002000001", "dev-a");
    let cases: [(Party, Vec<Timestamp>, &str); 9] = [
        (party("+79120000002", "boris@example.com", "2000002", "dev-b"), vec![], "accepted"),
        (party("+89120000001", "", "", ""), vec![], "self_referral_shared_phone"),
        (party("", "AnnaK+promo@Example.com", "", ""), vec![], "self_referral_shared_email"),
        (party("", "", "2000001", ""), vec![], "self_referral_shared_card"),
        (party("", "", "2000-001", ""), vec![], "self_referral_shared_card"),
        (party("", "", "", "dev-a"), vec![], "self_referral_shared_device"),
        (party("", "", "", ""), vec![days_ago(1), days_ago(2)], "referrer_limit_per_period_reached"),
        (party("", "", "", ""), vec![days_ago(31), days_ago(2)], "accepted"),
        (party("", "", "", ""), (40..45).map(days_ago).collect(), "referrer_limit_reached"),
    ];
    let mut verdicts = Vec::new();
    let mut expected = Vec::new();
    for (referred, history, reason) in cases {
        let verdict = check_referral(&terms(), &anna, &referred, &history, now);
        verdicts.push(verdict.map_or_else(|reason| reason.as_str(), |()| "accepted"));
        expected.push(reason);
    }
    assert_eq!(verdicts, expected);
}

#[test]
fn a_device_match_counts_only_when_the_program_checks_devices() {
    let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let terms = ReferralProgram { check_device: false, ..terms() };
    let verdict = check_referral(&terms, &party("", "", "", "dev-a"), &party("", "", "", "dev-a"), &[], now);
    assert_eq!(verdict, Ok(()));
    assert_eq!(terms.link("ABC"), "https://shop.example.com/r/ABC");
}

#[test]
fn bad_referral_terms_are_named_by_path() {
    let terms = ReferralProgram {
        welcome_points: -1,
        link_base: "shop".into(),
        limit_per_period: Some(PeriodLimit { count: 1, period_days: 0 }),
        ..terms()
    };
    let paths: Vec<String> = terms.issues().into_iter().map(|issue| issue.path).collect();
    assert_eq!(paths, ["referrals.welcome_points", "referrals.link_base", "referrals.limit_per_period.period_days"]);
}
