//! Currencies: ISO 4217 bill currencies (amounts travel as integer minor units beside their
//! currency, e.g. `total_minor` and `currency` of a purchase) and point currencies.
//!
//! Floats never hold money. A currency is parsed once at the edge (`Currency::parse`), so an unknown
//! code cannot travel into the ledger.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::DomainError;

/// Active ISO 4217 codes with their number of minor-unit digits.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWL", 2),
];

/// An ISO 4217 currency known to this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    minor_digits: u8,
}

impl Currency {
    /// Parses an upper-case ISO 4217 code such as `RUB`.
    pub fn parse(code: &str) -> Result<Currency, DomainError> {
        ISO_4217
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(known, digits)| {
                let bytes = known.as_bytes();
                Currency { code: [bytes[0], bytes[1], bytes[2]], minor_digits: *digits }
            })
            .ok_or_else(|| DomainError::UnknownCurrency { code: code.to_string() })
    }

    pub fn code(&self) -> &str {
        // The code came from the ASCII table above.
        std::str::from_utf8(&self.code).expect("ISO codes are ASCII")
    }

    /// How many digits the minor unit has: 2 for RUB (kopecks), 0 for JPY.
    pub fn minor_digits(&self) -> u8 {
        self.minor_digits
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.code().to_string()
    }
}

/// The code of a point currency ("PTS", "MILES", a game currency): 1 to 16 upper-case ASCII letters,
/// digits or underscores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PointCurrency(String);

impl PointCurrency {
    pub const CODE_LEN_MAX: usize = 16;

    pub fn parse(code: &str) -> Result<PointCurrency, DomainError> {
        let valid = !code.is_empty()
            && code.len() <= Self::CODE_LEN_MAX
            && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(DomainError::Invalid {
                field: "point_currency".into(),
                reason: "must be 1 to 16 upper-case letters, digits or underscores, e.g. PTS".into(),
            });
        }
        Ok(PointCurrency(code.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PointCurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PointCurrency {
    type Error = DomainError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        PointCurrency::parse(&code)
    }
}

impl From<PointCurrency> for String {
    fn from(currency: PointCurrency) -> String {
        currency.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_currencies_parse_with_their_minor_digits() {
        assert_eq!(Currency::parse("RUB").unwrap().minor_digits(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().minor_digits(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_digits(), 3);
    }

    #[test]
    fn unknown_or_lower_case_currency_is_rejected() {
        assert!(matches!(Currency::parse("XYZ"), Err(DomainError::UnknownCurrency { .. })));
        assert!(Currency::parse("rub").is_err());
    }

    #[test]
    fn point_currency_codes_are_bounded() {
        assert!(PointCurrency::parse("PTS").is_ok());
        assert!(PointCurrency::parse("").is_err());
        assert!(PointCurrency::parse("pts").is_err());
        assert!(PointCurrency::parse(&"A".repeat(17)).is_err());
    }
}

#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};

    fn code_schema(description: &str, example: &str) -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).description(Some(description)).examples([example]).into()
    }

    impl utoipa::PartialSchema for super::Currency {
        fn schema() -> RefOr<Schema> {
            code_schema("An ISO 4217 currency code", "RUB")
        }
    }
    impl utoipa::ToSchema for super::Currency {}

    impl utoipa::PartialSchema for super::PointCurrency {
        fn schema() -> RefOr<Schema> {
            code_schema("A point currency code: 1 to 16 upper-case letters, digits or underscores", "PTS")
        }
    }
    impl utoipa::ToSchema for super::PointCurrency {}
}
