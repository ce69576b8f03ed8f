//! Sending a webhook: the stored body, POSTed as JSON with its delivery id, event kind and
//! signature headers. Any 2xx is acceptance; anything else, or no answer, is a failed attempt.

use jiff::Timestamp;

use crate::db::{DeliveryRow, WebhookRow};
use crate::http::{check_response, describe};
use crate::signing::{self, DELIVERY_ID_HEADER, EVENT_HEADER, SIGNATURE_HEADER};

pub async fn send(
    client: &reqwest::Client,
    webhook: &WebhookRow,
    delivery: &DeliveryRow,
    now: Timestamp,
) -> Result<(), String> {
    let body = delivery.payload.as_bytes().to_vec();
    let signature = signing::signature_header(&webhook.signing_secrets(now), now.as_second(), &body);
    let response = client
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_ID_HEADER, &delivery.id)
        .header(EVENT_HEADER, &delivery.event_kind)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(describe)?;
    check_response(response).await.map(|_| ())
}

/// The longest webhook URL accepted.
pub const URL_LEN_MAX: usize = 2_048;

/// Checks a subscription before it is created: an http(s) URL with a host, and known kinds.
pub fn validate_subscription(url: &str, event_kinds: &[String]) -> crate::Result<()> {
    let parsed = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if parsed.is_none() || url.len() > URL_LEN_MAX {
        return Err(crate::NotifyError::invalid("validation_failed", "url", format!("{url:?} is not an http(s) URL")));
    }
    if let Some(kind) = event_kinds.iter().find(|k| !crate::templates::EVENT_KINDS.contains(&k.as_str())) {
        return Err(crate::NotifyError::invalid(
            "unknown_event_kind",
            "event_kinds",
            format!("no event of kind {kind:?}; known kinds: {}", crate::templates::EVENT_KINDS.join(", ")),
        ));
    }
    Ok(())
}
