//! Signatures: the `Kopilka-Signature` header of webhooks, and unsubscribe tokens.
//!
//! A webhook is signed with HMAC-SHA256 over `"{t}.{body}"`, where `t` is the Unix time in seconds
//! sent in the same header: `Kopilka-Signature: t=1767261600,v1=<hex>`. While a rotated secret is in
//! its grace period the header carries one `v1=` per valid secret (new first), so a receiver that
//! still holds the old secret keeps verifying. Receivers should also reject a `t` far from their
//! own clock, which stops replays of captured requests.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Kopilka-Signature";
/// The header carrying the delivery's stable id, the same on every attempt.
pub const DELIVERY_ID_HEADER: &str = "Kopilka-Delivery-Id";
/// The header carrying the event kind.
pub const EVENT_HEADER: &str = "Kopilka-Event";

/// A fresh webhook secret: a recognizable prefix and 256 random bits.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`, in lowercase hex.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Kopilka-Signature` value signed with every secret in `secrets`.
pub fn signature_header(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    assert!(!secrets.is_empty(), "a webhook is signed with at least one secret");
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, timestamp, body));
    }
    header
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the header is not t=<unix>,v1=<hex>[,v1=<hex>]")]
    Malformed,
    #[error("the timestamp is {skew_seconds} s away from now, more than the tolerance")]
    Stale { skew_seconds: i64 },
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Checks a `Kopilka-Signature` header as a receiver would: the timestamp within
/// `tolerance_seconds` of `now_unix`, and one `v1` matching `secret` (compared in constant time).
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.parse::<i64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", value)) => candidates.push(hex::decode(value).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if candidates.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let skew_seconds = (now_unix - timestamp).abs();
    if skew_seconds > tolerance_seconds {
        return Err(VerifyError::Stale { skew_seconds });
    }
    for candidate in candidates {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&candidate).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

/// A fresh key for a tenant's unsubscribe tokens.
pub fn generate_unsubscribe_key() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// An unsubscribe token: `{tenant}.{member}.{channel}.{hmac}`. Unguessable without the tenant's
/// key, and self-describing, so the link needs no state of its own.
pub fn unsubscribe_token(key: &[u8], tenant: i64, member: i64, channel: &str) -> String {
    let claim = format!("{tenant}.{member}.{channel}");
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(claim.as_bytes());
    format!("{claim}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// The claim of a token, unverified: (tenant, member, channel, signature). The caller fetches the
/// tenant's key and calls `verify_unsubscribe_token`.
pub fn parse_unsubscribe_token(token: &str) -> Option<(i64, i64, String, Vec<u8>)> {
    let mut parts = token.split('.');
    let tenant = parts.next()?.parse().ok()?;
    let member = parts.next()?.parse().ok()?;
    let channel = parts.next()?.to_string();
    let signature = hex::decode(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((tenant, member, channel, signature))
}

pub fn verify_unsubscribe_token(key: &[u8], tenant: i64, member: i64, channel: &str, signature: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{tenant}.{member}.{channel}").as_bytes());
    mac.verify_slice(signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_either_secret_during_rotation_and_not_after_tampering() {
        let body = br#"{"kind":"points_earn"}"#;
        let header = signature_header(&["new", "old"], 1_767_261_600, body);
        assert_eq!(verify(&header, body, "new", 1_767_261_610, 300), Ok(()));
        assert_eq!(verify(&header, body, "old", 1_767_261_610, 300), Ok(()));
        assert_eq!(verify(&header, body, "other", 1_767_261_610, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(&header, b"{}", "new", 1_767_261_610, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(&header, body, "new", 1_767_262_600, 300), Err(VerifyError::Stale { skew_seconds: 1000 }));
        assert_eq!(verify("v1=00", body, "new", 0, 300), Err(VerifyError::Malformed));
    }

    #[test]
    fn an_unsubscribe_token_names_its_member_and_channel_and_cannot_be_altered() {
        let key = generate_unsubscribe_key();
        let token = unsubscribe_token(&key, 1, 42, "email");
        let (tenant, member, channel, signature) = parse_unsubscribe_token(&token).unwrap();
        assert_eq!((tenant, member, channel.as_str()), (1, 42, "email"));
        assert!(verify_unsubscribe_token(&key, tenant, member, &channel, &signature));
        assert!(!verify_unsubscribe_token(&key, tenant, 43, &channel, &signature));
        assert!(!verify_unsubscribe_token(&generate_unsubscribe_key(), tenant, member, &channel, &signature));
    }
}
