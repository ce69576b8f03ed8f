//! The jobs' keys a member's state gives (`tier_review_key`, `first_purchase_day`), which the
//! writer stores beside the state, are what migration 0014 computed with SQL from the stored JSON,
//! and the review keys order as the dates they stand for. The two sources fill the same indexed
//! columns: if they disagreed, the tier review and anniversary jobs would miss members.

use jiff::civil::date;
use kopilka_core::member_state::{MemberState, TierAssignment};
use kopilka_core::Timestamp;
use proptest::prelude::*;

/// SQL's `substr(text, 6, 5)`: five characters from the sixth.
fn sql_substr_6_5(text: &str) -> String {
    text.chars().skip(5).take(5).collect()
}

fn tiered() -> MemberState {
    let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    MemberState {
        tier: Some(TierAssignment { tier: "silver".into(), since, until: None, manual: false }),
        ..MemberState::default()
    }
}

proptest! {
    #[test]
    fn the_first_purchase_day_is_what_the_migration_read_from_the_json(
        seconds in 0i64..4_102_444_800,
        nanos in 0i32..1_000_000_000,
    ) {
        let mut state = MemberState::default();
        state.stats.first_purchase_at = Some(Timestamp::new(seconds, nanos).unwrap());
        let json = serde_json::to_value(&state).unwrap();
        let stored = json["stats"]["first_purchase_at"].as_str().expect("a timestamp is stored as text");
        prop_assert_eq!(state.first_purchase_day(), Some(sql_substr_6_5(stored)));
    }

    #[test]
    fn tier_review_keys_order_as_their_dates(
        a in (1900i16..2200, 1i8..=12, 1i8..=28),
        b in (1900i16..2200, 1i8..=12, 1i8..=28),
    ) {
        let (a, b) = (date(a.0, a.1, a.2), date(b.0, b.1, b.2));
        let key = |reviewed| MemberState { tier_reviewed: Some(reviewed), ..tiered() }.tier_review_key().unwrap();
        prop_assert_eq!(key(a).cmp(&key(b)), a.cmp(&b));
        let json = serde_json::to_value(MemberState { tier_reviewed: Some(a), ..tiered() }).unwrap();
        let stored = json["tier_reviewed"].as_str().map(String::from);
        prop_assert_eq!(stored, Some(key(a)), "the migration copied the JSON text");
    }
}

#[test]
fn only_a_member_holding_a_tier_has_a_review_key_and_one_never_reviewed_comes_first() {
    assert_eq!(MemberState::default().tier_review_key(), None);
    assert_eq!(MemberState { tier_reviewed: Some(date(2026, 1, 1)), ..MemberState::default() }.tier_review_key(), None);
    let never = tiered().tier_review_key().unwrap();
    assert_eq!(never, "");
    let reviewed = MemberState { tier_reviewed: Some(date(1900, 1, 1)), ..tiered() }.tier_review_key().unwrap();
    assert!(never < reviewed, "a tier never reviewed is due before any reviewed one");
    assert_eq!(MemberState::default().first_purchase_day(), None);
}
