//! A tenant's notification policy: time zone and quiet hours, the daily cap per member, the
//! default language, and the public address that unsubscribe links point to.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::{NotifyError, Result};

/// The most messages a cap may allow per member and day; beyond this it is no cap.
pub const DAILY_CAP_MAX: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Local time quiet starts, `HH:MM`.
    pub start: String,
    /// Local time quiet ends, `HH:MM`; before `start` means quiet spans midnight.
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// IANA time zone of quiet hours and of the cap's day for members who set none of their own.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Messages between `start` and `end` wait until `end`; none when absent.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Messages per member per local day across all channels; webhooks do not count.
    #[serde(default = "default_daily_cap")]
    pub daily_cap_per_member: u32,
    /// The template language for members who chose none (`en` or `ru`).
    #[serde(default = "default_language")]
    pub language: String,
    /// Where this server is reached from outside, for unsubscribe links.
    #[serde(default = "default_public_base_url")]
    pub public_base_url: String,
}

fn default_time_zone() -> String {
    "Europe/Moscow".into()
}
fn default_daily_cap() -> u32 {
    5
}
fn default_language() -> String {
    "ru".into()
}
fn default_public_base_url() -> String {
    "http://127.0.0.1:8080".into()
}

impl Default for Settings {
    fn default() -> Settings {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

fn parse_time(field: &str, text: &str) -> Result<Time> {
    Time::strptime("%H:%M", text)
        .map_err(|_| NotifyError::invalid("validation_failed", field, format!("{text:?} is not a time HH:MM")))
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        TimeZone::get(&self.time_zone).map_err(|_| {
            NotifyError::invalid("validation_failed", "time_zone", format!("unknown time zone {:?}", self.time_zone))
        })?;
        if let Some(quiet) = &self.quiet_hours {
            let (start, end) =
                (parse_time("quiet_hours.start", &quiet.start)?, parse_time("quiet_hours.end", &quiet.end)?);
            if start == end {
                return Err(NotifyError::invalid(
                    "validation_failed",
                    "quiet_hours.end",
                    "quiet hours must not be empty",
                ));
            }
        }
        if self.daily_cap_per_member == 0 || self.daily_cap_per_member > DAILY_CAP_MAX {
            return Err(NotifyError::invalid(
                "validation_failed",
                "daily_cap_per_member",
                format!("must be 1 to {DAILY_CAP_MAX}"),
            ));
        }
        if !crate::templates::LANGUAGES.contains(&self.language.as_str()) {
            return Err(NotifyError::invalid("unknown_language", "language", "use en or ru"));
        }
        let url = reqwest::Url::parse(&self.public_base_url)
            .map_err(|e| NotifyError::invalid("validation_failed", "public_base_url", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotifyError::invalid("validation_failed", "public_base_url", "must be http(s)"));
        }
        Ok(())
    }

    fn zone(&self) -> TimeZone {
        TimeZone::get(&self.time_zone).unwrap_or(TimeZone::UTC)
    }

    /// The zone a member's quiet hours and day are counted in: their own, else the tenant's.
    pub fn zone_of(&self, member_zone: Option<&str>) -> TimeZone {
        member_zone.and_then(|zone| TimeZone::get(zone).ok()).unwrap_or_else(|| self.zone())
    }

    /// When a message created at `now` may go: `now`, or the end of the quiet hours `now` is in,
    /// in the tenant's time zone.
    pub fn release_at(&self, now: Timestamp) -> Timestamp {
        self.release_at_in(&self.zone(), now)
    }

    /// `release_at` with the quiet hours read in `zone` (a member's).
    pub fn release_at_in(&self, zone: &TimeZone, now: Timestamp) -> Timestamp {
        let Some(quiet) = &self.quiet_hours else { return now };
        let (Ok(start), Ok(end)) = (parse_time("", &quiet.start), parse_time("", &quiet.end)) else { return now };
        let local = now.to_zoned(zone.clone());
        let time = local.time();
        let quiet_now = if start < end { time >= start && time < end } else { time >= start || time < end };
        if !quiet_now {
            return now;
        }
        let mut release = local.date().to_datetime(end);
        if time >= end {
            release = release.checked_add(1.day()).expect("dates stay in range");
        }
        release.to_zoned(zone.clone()).map(|z| z.timestamp()).unwrap_or(now)
    }

    /// The start and end of the local day `now` falls in, for the frequency cap.
    pub fn day_of(&self, now: Timestamp) -> (Timestamp, Timestamp) {
        self.day_of_in(&self.zone(), now)
    }

    /// `day_of` in `zone` (a member's).
    pub fn day_of_in(&self, zone: &TimeZone, now: Timestamp) -> (Timestamp, Timestamp) {
        let local = now.to_zoned(zone.clone());
        let start = local.start_of_day().map(|z| z.timestamp()).unwrap_or(now);
        let end = local.tomorrow().and_then(|z| z.start_of_day()).map(|z| z.timestamp()).unwrap_or(now);
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(start: &str, end: &str) -> Settings {
        Settings {
            time_zone: "Europe/Moscow".into(),
            quiet_hours: Some(QuietHours { start: start.into(), end: end.into() }),
            ..Settings::default()
        }
    }

    #[test]
    fn quiet_hours_delay_a_message_to_their_end_in_the_tenant_time_zone() {
        let overnight = settings("22:00", "09:00");
        // 23:30 and 02:00 Moscow time wait until 09:00 Moscow (06:00 UTC); noon goes at once.
        let late: Timestamp = "2026-01-15T20:30:00Z".parse().unwrap();
        assert_eq!(overnight.release_at(late), "2026-01-16T06:00:00Z".parse().unwrap());
        let small_hours: Timestamp = "2026-01-15T23:00:00Z".parse().unwrap();
        assert_eq!(overnight.release_at(small_hours), "2026-01-16T06:00:00Z".parse().unwrap());
        let noon: Timestamp = "2026-01-15T09:00:00Z".parse().unwrap();
        assert_eq!(overnight.release_at(noon), noon);
        let lunch = settings("13:00", "14:00");
        let in_lunch: Timestamp = "2026-01-15T10:30:00Z".parse().unwrap();
        assert_eq!(lunch.release_at(in_lunch), "2026-01-15T11:00:00Z".parse().unwrap());
    }

    #[test]
    fn a_member_zone_moves_the_quiet_hours_and_an_unknown_one_falls_back_to_the_tenant() {
        let overnight = settings("22:00", "08:00");
        // 13:00 UTC is 23:00 in Vladivostok (UTC+10), quiet until 08:00 there (22:00 UTC); it is
        // 15:00 in Kaliningrad (UTC+2), not quiet.
        let now: Timestamp = "2026-01-15T13:00:00Z".parse().unwrap();
        let vladivostok = overnight.zone_of(Some("Asia/Vladivostok"));
        assert_eq!(overnight.release_at_in(&vladivostok, now), "2026-01-15T22:00:00Z".parse().unwrap());
        assert_eq!(overnight.release_at_in(&overnight.zone_of(Some("Europe/Kaliningrad")), now), now);
        assert_eq!(overnight.zone_of(Some("Mars/Olympus")), overnight.zone_of(None));
    }

    #[test]
    fn settings_are_validated_by_field() {
        assert!(Settings::default().validate().is_ok());
        let bad = Settings { time_zone: "Mars/Olympus".into(), ..Settings::default() };
        assert!(matches!(bad.validate(), Err(NotifyError::Invalid { field, .. }) if field == "time_zone"));
        let bad = settings("25:00", "09:00");
        assert!(matches!(bad.validate(), Err(NotifyError::Invalid { field, .. }) if field == "quiet_hours.start"));
    }
}
