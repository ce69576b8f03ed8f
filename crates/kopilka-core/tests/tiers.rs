//! Tiers across the calendar: upgrades the moment a purchase crosses a threshold, reviews at the
//! end of a window that take a member down one level at most, grace days, an admin's assignment,
//! year ends in the program's time zone, and benefits in the rules.

use kopilka_core::member_state::{MemberState, StateChange};
use kopilka_core::purchase::{PurchaseRecord, RecordedLine};
use kopilka_core::{Currency, MemberId, Program, PurchaseId, Timestamp};

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Silver from 10,000 RUB and gold from 50,000 RUB of spend in a calendar year, Moscow time.
fn program(extra: serde_json::Value) -> Program {
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["tiers"] = serde_json::json!({
        "metric": "spend", "window": "calendar_year",
        "levels": [
            { "id": "silver", "name": "Silver", "threshold": 10_000_00 },
            { "id": "gold", "name": "Gold", "threshold": 50_000_00,
              "benefits": { "earn_multiplier_percent": 200, "discount_percent": 5, "entitlements": ["free-delivery"] } },
            { "id": "platinum", "name": "Platinum", "threshold": 200_000_00 },
        ],
    });
    for (field, value) in extra.as_object().unwrap() {
        json["tiers"][field] = value.clone();
    }
    Program::from_json(&json.to_string()).unwrap_or_else(|issues| panic!("{issues:#?}"))
}

fn purchase(when: &str, total_minor: i64) -> PurchaseRecord {
    PurchaseRecord {
        id: PurchaseId(1),
        member_id: MemberId(1),
        external_id: "R".into(),
        occurred_at: at(when),
        channel: Default::default(),
        store: None,
        currency: Currency::parse("RUB").unwrap(),
        total_minor,
        points_redeemed: 0,
        redeemed_value_minor: 0,
        points_earned: 0,
        earn_lot_id: None,
        lines: Vec::<RecordedLine>::new(),
        returned_minor: 0,
        points_reversed: 0,
        points_restored: 0,
        points_unrecovered: 0,
        points_lapsed: 0,
        program_version: 1,
        returns: Vec::new(),
    }
}

/// Records a purchase and upgrades as the engine does; returns the tier after it.
fn buy(state: &mut MemberState, program: &Program, when: &str, total_minor: i64) -> Option<String> {
    let record = purchase(when, total_minor);
    state.record_purchase(program, &record);
    state.upgrade_if_qualified(program, record.occurred_at);
    state.tier_at(record.occurred_at).map(str::to_string)
}

#[test]
fn a_purchase_that_crosses_a_threshold_upgrades_at_once_even_past_a_level() {
    let program = program(serde_json::json!({}));
    let mut state = MemberState::default();
    assert_eq!(buy(&mut state, &program, "2026-03-01T10:00:00Z", 9_999_99), None);
    assert_eq!(buy(&mut state, &program, "2026-03-02T10:00:00Z", 1), Some("silver".into()));
    assert_eq!(buy(&mut state, &program, "2026-03-03T10:00:00Z", 300_000_00), Some("platinum".into()));
    let reasons: Vec<(Option<&str>, Option<&str>)> =
        state.tier_history.iter().map(|c| (c.from.as_deref(), c.to.as_deref())).collect();
    assert_eq!(reasons, [(None, Some("silver")), (Some("silver"), Some("platinum"))]);
}

#[test]
fn a_review_at_the_year_end_takes_a_member_down_one_level_at_most() {
    let program = program(serde_json::json!({}));
    let mut state = MemberState::default();
    assert_eq!(buy(&mut state, &program, "2026-05-01T10:00:00Z", 250_000_00), Some("platinum".into()));
    // Nothing is reviewed within the year the tier was earned.
    assert!(state.review_tier(&program, at("2026-12-31T20:00:00Z")).is_none());
    // 2026 qualified for platinum: it holds through 2027.
    assert!(state.review_tier(&program, at("2027-01-01T00:00:00+03:00")).is_none());
    assert_eq!(state.tier_at(at("2027-06-01T00:00:00Z")), Some("platinum"));
    // 2027: 12,000 RUB, enough for silver only; one level down at the next review.
    buy(&mut state, &program, "2027-06-01T10:00:00Z", 12_000_00);
    let change = state.review_tier(&program, at("2028-01-01T09:00:00Z")).expect("a downgrade");
    assert_eq!(
        (change.from.as_deref(), change.to.as_deref(), change.reason.as_str()),
        (Some("platinum"), Some("gold"), "review")
    );
    assert!(state.review_tier(&program, at("2028-01-02T09:00:00Z")).is_none(), "once per window");
    // 2028: nothing bought. Gold → silver, then silver → no tier.
    assert_eq!(state.review_tier(&program, at("2029-01-01T09:00:00Z")).unwrap().to.as_deref(), Some("silver"));
    assert_eq!(state.review_tier(&program, at("2030-01-01T09:00:00Z")).unwrap().to, None);
}

#[test]
fn the_year_ends_in_the_programs_time_zone_and_grace_days_delay_the_review() {
    let program = program(serde_json::json!({ "downgrade": { "max_levels": 2, "grace_days": 30 } }));
    let mut state = MemberState::default();
    // 23:30 on 31 December in Moscow is still 2026 there...
    buy(&mut state, &program, "2026-12-31T20:30:00Z", 60_000_00);
    assert_eq!(state.tier_at(at("2026-12-31T20:30:00Z")), Some("gold"));
    // ...while 00:30 on 1 January in Moscow counts for 2027.
    let mut late = MemberState::default();
    buy(&mut late, &program, "2026-12-31T21:30:00Z", 60_000_00);
    assert_eq!(
        late.sum(
            &program,
            kopilka_core::member_state::MonthFigure::Spend,
            kopilka_core::member_state::SpendWindow::CalendarYear,
            at("2027-02-01T00:00:00Z")
        ),
        60_000_00
    );

    // 2027 brings nothing; the review waits 30 days into 2028, then takes gold down two levels.
    assert!(state.review_tier(&program, at("2027-01-05T00:00:00Z")).is_none(), "2026 qualified for gold");
    assert!(state.review_tier(&program, at("2028-01-30T00:00:00Z")).is_none(), "still in grace");
    assert_eq!(state.tier_at(at("2028-01-30T00:00:00Z")), Some("gold"));
    let change = state.review_tier(&program, at("2028-01-31T00:00:00Z")).expect("after grace");
    assert_eq!(change.to, None, "two levels down from gold is no tier");
}

#[test]
fn an_admins_tier_holds_until_its_end_date_and_a_leap_day_is_a_day_like_any_other() {
    let program = program(serde_json::json!({ "window": "rolling_12_months" }));
    let mut state = MemberState::default();
    let change = StateChange {
        tier: Some(Some("gold".into())),
        tier_until: Some(at("2028-03-01T00:00:00Z")),
        ..StateChange::default()
    };
    state.apply(&change, at("2028-02-01T00:00:00Z")).unwrap();
    assert!(state.tier.as_ref().unwrap().manual);
    // Rolling windows are reviewed monthly; the assignment holds through February (29 days in 2028).
    assert!(state.review_tier(&program, at("2028-02-29T12:00:00Z")).is_none());
    assert_eq!(state.tier_at(at("2028-02-29T23:59:59Z")), Some("gold"));
    assert_eq!(state.tier_at(at("2028-03-01T00:00:00Z")), None, "it ends with its date");
    buy(&mut state, &program, "2028-03-02T10:00:00Z", 10_000_00);
    assert_eq!(state.tier_at(at("2028-03-02T10:00:00Z")), Some("silver"));
}

#[test]
fn benefits_become_a_rule_and_a_discount_for_members_of_the_tier() {
    let program = program(serde_json::json!({}));
    let gold = program.for_tier(Some("gold"));
    assert_eq!(gold.earn_rules.last().unwrap().id, "tier.gold");
    assert_eq!(gold.discounts.last().unwrap().id, "tier.gold");
    assert!(matches!(program.for_tier(Some("silver")), std::borrow::Cow::Borrowed(_)), "no benefits, no copy");
    assert!(matches!(program.for_tier(None), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn overlapping_thresholds_and_unknown_tiers_are_named_with_their_paths() {
    let mut json = serde_json::to_value(Program::example()).unwrap();
    json["tiers"] = serde_json::json!({ "metric": "purchases", "window": "lifetime", "levels": [
        { "id": "silver", "name": "Silver", "threshold": 10 },
        { "id": "gold", "name": "Gold", "threshold": 10 },
    ] });
    json["earn_rules"] = serde_json::json!([{ "id": "p", "name": "P", "condition": { "tier": ["platinum"] }, "effect": { "bonus_per_line": 1 } }]);
    json["discounts"] = serde_json::json!([{ "id": "d", "name": "D", "kind": { "tier": { "bronze": 3 } } }]);
    let issues = Program::from_json(&json.to_string()).unwrap_err();
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["tiers.levels[1].threshold", "earn_rules[0].condition.tier", "discounts[0].kind.tier.bronze"]);
    assert!(issues[0].message.contains("overlaps \"silver\""), "{}", issues[0].message);
}

#[test]
fn reviews_missed_over_several_month_ends_are_each_done_in_turn() {
    let program = program(serde_json::json!({ "window": "rolling_12_months" }));
    let mut state = MemberState::default();
    buy(&mut state, &program, "2026-01-10T10:00:00Z", 60_000_00);
    assert_eq!(state.tier_at(at("2026-01-10T10:00:00Z")), Some("gold"));
    // Nothing reviewed from January 2026 until mid-April 2027. The year to January 2027 kept
    // gold; the reviews of 1 February and 1 March 2027 each take a level.
    let changes = state.review_tiers(&program, at("2027-04-15T12:00:00Z"));
    let steps: Vec<(Timestamp, Option<&str>)> = changes.iter().map(|c| (c.at, c.to.as_deref())).collect();
    // Midnight in Moscow is 21:00 UTC the day before.
    assert_eq!(steps, [(at("2027-01-31T21:00:00Z"), Some("silver")), (at("2027-02-28T21:00:00Z"), None)]);
    assert!(state.review_tiers(&program, at("2027-04-20T12:00:00Z")).is_empty(), "each review once");
}

#[test]
fn an_admins_tier_that_ends_falls_back_to_the_level_the_metric_qualifies_for() {
    let program = program(serde_json::json!({}));
    let mut state = MemberState::default();
    buy(&mut state, &program, "2026-03-10T10:00:00Z", 12_000_00);
    let change = StateChange {
        tier: Some(Some("platinum".into())),
        tier_until: Some(at("2026-06-01T00:00:00Z")),
        ..StateChange::default()
    };
    state.apply(&change, at("2026-04-01T00:00:00Z")).unwrap();
    assert_eq!(state.manual_tier_until(), Some(at("2026-06-01T00:00:00Z")));
    assert!(state.review_tiers(&program, at("2026-05-31T23:00:00Z")).is_empty(), "it still holds");

    let changes = state.review_tiers(&program, at("2026-06-10T00:00:00Z"));
    assert_eq!(changes.len(), 1, "{changes:?}");
    let ended = &changes[0];
    assert_eq!(
        (ended.at, ended.from.as_deref(), ended.to.as_deref(), ended.reason.as_str()),
        (at("2026-06-01T00:00:00Z"), Some("platinum"), Some("silver"), "manual_ended")
    );
    assert_eq!(state.tier_at(at("2026-06-10T00:00:00Z")), Some("silver"));
    assert!(!state.tier.as_ref().unwrap().manual);
    assert_eq!(state.manual_tier_until(), None, "nothing left for the job to find");
    assert_eq!(state.tier_history.last(), Some(ended));
    assert!(state.review_tiers(&program, at("2026-06-11T00:00:00Z")).is_empty(), "ended once");
}

#[test]
fn the_next_review_waits_for_the_grace_days() {
    let program = program(serde_json::json!({ "downgrade": { "max_levels": 1, "grace_days": 30 } }));
    let tiers = program.tiers.as_ref().unwrap();
    let day = |text: &str| text.parse::<jiff::civil::Date>().unwrap();
    let reviewed = Some(day("2026-01-01"));
    assert_eq!(tiers.next_review(day("2026-06-15"), reviewed), Some(day("2027-01-31")));
    assert_eq!(tiers.next_review(day("2027-01-10"), reviewed), Some(day("2027-01-31")), "2026's review, in grace");
    assert_eq!(tiers.next_review(day("2027-01-31"), reviewed), Some(day("2028-01-31")));
    let earned_this_year = Some(day("2027-01-01"));
    assert_eq!(tiers.next_review(day("2027-01-10"), earned_this_year), Some(day("2028-01-31")), "nothing to review");
}
