//! Member profiles and the identifiers a member is found by. Identifiers are parsed and normalized
//! here, once, so that "+7 (912) 000-00-00" and "+79120000000" find the same member.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::DomainError;

/// How a member can be looked up.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Card,
    Phone,
    Email,
    ExternalId,
}

impl IdentifierKind {
    pub const ALL: [IdentifierKind; 4] =
        [IdentifierKind::Card, IdentifierKind::Phone, IdentifierKind::Email, IdentifierKind::ExternalId];

    pub fn as_str(&self) -> &'static str {
        match self {
            IdentifierKind::Card => "card",
            IdentifierKind::Phone => "phone",
            IdentifierKind::Email => "email",
            IdentifierKind::ExternalId => "external_id",
        }
    }

    /// Normalizes a raw identifier of this kind, or says what is wrong with it.
    pub fn normalize(&self, raw: &str) -> Result<String, DomainError> {
        let raw = raw.trim();
        let field = self.as_str();
        match self {
            IdentifierKind::Card | IdentifierKind::ExternalId => {
                let ok = !raw.is_empty()
                    && raw.len() <= 64
                    && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                if !ok {
                    return Err(DomainError::invalid(field, "must be 1 to 64 letters, digits or - _ . :"));
                }
                Ok(raw.to_string())
            }
            IdentifierKind::Phone => {
                let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
                let allowed = raw.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
                if !raw.starts_with('+') || !allowed || !(7..=15).contains(&digits.len()) {
                    return Err(DomainError::invalid(field, "must be in international form, e.g. +79120000000"));
                }
                Ok(format!("+{digits}"))
            }
            IdentifierKind::Email => {
                let lower = raw.to_lowercase();
                let mut parts = lower.split('@');
                let (local, domain) = (parts.next().unwrap_or(""), parts.next());
                let ok = lower.len() <= 254
                    && !local.is_empty()
                    && parts.next().is_none()
                    && domain.is_some_and(|d| d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
                    && !lower.chars().any(char::is_whitespace);
                if !ok {
                    return Err(DomainError::invalid(field, "must be an address such as anna@example.com"));
                }
                Ok(lower)
            }
        }
    }
}

/// The channels a member may be contacted through, each with its own consent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consents {
    #[serde(default)]
    pub email: bool,
    #[serde(default)]
    pub sms: bool,
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub messenger: bool,
}

/// A member's gender as the member chose to state it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gender {
    Female,
    Male,
    Other,
}

impl Gender {
    pub fn as_str(&self) -> &'static str {
        match self {
            Gender::Female => "female",
            Gender::Male => "male",
            Gender::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<Gender> {
        Some(match text {
            "female" => Gender::Female,
            "male" => Gender::Male,
            "other" => Gender::Other,
            _ => return None,
        })
    }
}

/// The profile of a member: identifiers and what the program may use for segments and offers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub card: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Date))]
    pub birth_date: Option<Date>,
    pub gender: Option<Gender>,
    pub city: Option<String>,
    #[serde(default)]
    pub consents: Consents,
    /// The member's IANA time zone (`Asia/Vladivostok`): quiet hours and the daily message cap
    /// follow it. Absent, the tenant's notification time zone applies.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The language messages are written in for this member, one of `LANGUAGES`. Absent, the
    /// tenant's default applies.
    #[serde(default)]
    pub language: Option<String>,
}

/// The languages a member may choose; messages have templates in each.
pub const LANGUAGES: &[&str] = &["en", "ru"];

impl Profile {
    pub const TEXT_LEN_MAX: usize = 200;

    pub fn identifier(&self, kind: IdentifierKind) -> Option<&str> {
        match kind {
            IdentifierKind::Card => self.card.as_deref(),
            IdentifierKind::Phone => self.phone.as_deref(),
            IdentifierKind::Email => self.email.as_deref(),
            IdentifierKind::ExternalId => self.external_id.as_deref(),
        }
    }

    /// Normalizes identifiers and checks every field; the first problem is returned with its field.
    pub fn normalized(mut self) -> Result<Profile, DomainError> {
        for kind in IdentifierKind::ALL {
            let slot = match kind {
                IdentifierKind::Card => &mut self.card,
                IdentifierKind::Phone => &mut self.phone,
                IdentifierKind::Email => &mut self.email,
                IdentifierKind::ExternalId => &mut self.external_id,
            };
            if let Some(raw) = slot.take() {
                *slot = Some(kind.normalize(&raw)?);
            }
        }
        for (field, text) in [("name", &self.name), ("city", &self.city)] {
            if text.as_ref().is_some_and(|t| t.chars().count() > Self::TEXT_LEN_MAX) {
                return Err(DomainError::invalid(field, format!("must be at most {} characters", Self::TEXT_LEN_MAX)));
            }
        }
        if let Some(zone) = self.time_zone.take() {
            let tz = jiff::tz::TimeZone::get(zone.trim())
                .map_err(|_| DomainError::UnknownTimeZone { field: "time_zone".into(), zone: zone.clone() })?;
            // The canonical spelling, so `asia/vladivostok` is stored as `Asia/Vladivostok`.
            self.time_zone = Some(tz.iana_name().map_or(zone, str::to_string));
        }
        if let Some(language) = self.language.take() {
            let language = language.trim().to_ascii_lowercase();
            if !LANGUAGES.contains(&language.as_str()) {
                return Err(DomainError::UnknownLanguage { field: "language".into(), language });
            }
            self.language = Some(language);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalized_to_international_digits() {
        assert_eq!(IdentifierKind::Phone.normalize("+7 (912) 000-00-00").unwrap(), "+79120000000");
        assert!(IdentifierKind::Phone.normalize("89120000000").is_err());
        assert!(IdentifierKind::Phone.normalize("+7 912 abc").is_err());
    }

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(IdentifierKind::Email.normalize(" Anna@Example.COM ").unwrap(), "anna@example.com");
        for bad in ["anna", "anna@", "@example.com", "a@b@c.com", "anna@example", "an na@example.com"] {
            assert!(IdentifierKind::Email.normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_normalization_names_the_bad_field() {
        let profile = Profile { card: Some("  C-001 ".into()), email: Some("bad".into()), ..Profile::default() };
        let error = profile.normalized().unwrap_err();
        assert!(matches!(error, DomainError::Invalid { ref field, .. } if field == "email"), "{error:?}");
    }

    #[test]
    fn time_zones_and_languages_are_checked_and_spelled_canonically() {
        let profile =
            Profile { time_zone: Some("asia/vladivostok".into()), language: Some(" RU ".into()), ..Profile::default() };
        let profile = profile.normalized().unwrap();
        assert_eq!(profile.time_zone.as_deref(), Some("Asia/Vladivostok"));
        assert_eq!(profile.language.as_deref(), Some("ru"));
        let bad = Profile { time_zone: Some("Mars/Olympus".into()), ..Profile::default() };
        let error = bad.normalized().unwrap_err();
        assert_eq!(error.code(), "unknown_time_zone");
        assert_eq!(error.field(), Some("time_zone"));
        let bad = Profile { language: Some("de".into()), ..Profile::default() };
        assert_eq!(bad.normalized().unwrap_err().code(), "unknown_language");
    }
}
