//! HTTP providers for SMS, push and messengers: a generic adapter (URL, method, auth header, body
//! template) and the request formats of Twilio's Messages API (SMS), FCM HTTP v1 (push) and the
//! Telegram Bot API (`sendMessage`). Every request carries `Kopilka-Delivery-Id`.
//!
//! Errors never include a URL: Telegram's holds the bot token.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Value};

use crate::config::{FcmConfig, HttpConfig, HttpMethod, TelegramConfig, TwilioConfig};
use crate::fanout::Message;
use crate::signing::DELIVERY_ID_HEADER;

/// How much of a provider's error answer is kept in `last_error`.
const ERROR_BODY_CHARS_MAX: usize = 300;

/// Renders a generic adapter's body template (strict: unknown variables are errors).
pub fn render_body(template: &str, context: &Value) -> Result<String, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.render_str(template, context).map_err(|e| e.to_string())
}

/// A transport error with its causes and without the URL.
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Accepts a 2xx answer, returning its body; anything else is an error with the start of the body.
pub async fn check_response(response: reqwest::Response) -> Result<String, String> {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let excerpt: String = body.chars().take(ERROR_BODY_CHARS_MAX).collect();
    Err(format!("HTTP {}: {excerpt}", status.as_u16()))
}

pub async fn send_generic(
    client: &reqwest::Client,
    config: &HttpConfig,
    delivery_id: &str,
    message: &Message,
) -> Result<(), String> {
    let context = json!({ "to": message.to, "subject": message.subject.clone().unwrap_or_default(), "text": message.text, "delivery_id": delivery_id });
    let body = render_body(&config.body_template, &context)?;
    let request = match config.method {
        HttpMethod::Post => client.post(&config.url),
        HttpMethod::Put => client.put(&config.url),
    };
    let mut request =
        request.header(reqwest::header::CONTENT_TYPE, &config.content_type).header(DELIVERY_ID_HEADER, delivery_id);
    if let Some(auth) = &config.auth_header {
        request = request.header(auth.name.as_str(), auth.value.expose());
    }
    let response = request.body(body).send().await.map_err(describe)?;
    check_response(response).await.map(|_| ())
}

/// Twilio: `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth.
pub async fn send_twilio(
    client: &reqwest::Client,
    config: &TwilioConfig,
    delivery_id: &str,
    message: &Message,
) -> Result<(), String> {
    let url =
        format!("{}/2010-04-01/Accounts/{}/Messages.json", config.base_url.trim_end_matches('/'), config.account_sid);
    let response = client
        .post(url)
        .basic_auth(&config.account_sid, Some(config.auth_token.expose()))
        .header(DELIVERY_ID_HEADER, delivery_id)
        .form(&[("To", message.to.as_str()), ("From", config.from.as_str()), ("Body", message.text.as_str())])
        .send()
        .await
        .map_err(describe)?;
    check_response(response).await.map(|_| ())
}

/// FCM HTTP v1: `POST /v1/projects/{id}/messages:send` with a bearer token.
pub async fn send_fcm(
    client: &reqwest::Client,
    config: &FcmConfig,
    delivery_id: &str,
    message: &Message,
) -> Result<(), String> {
    let url = format!("{}/v1/projects/{}/messages:send", config.base_url.trim_end_matches('/'), config.project_id);
    let body = json!({
        "message": {
            "token": message.to,
            "notification": { "title": message.subject.clone().unwrap_or_default(), "body": message.text },
            "data": { "delivery_id": delivery_id },
        }
    });
    let response = client
        .post(url)
        .bearer_auth(config.access_token.expose())
        .header(DELIVERY_ID_HEADER, delivery_id)
        .json(&body)
        .send()
        .await
        .map_err(describe)?;
    check_response(response).await.map(|_| ())
}

/// Telegram: `POST /bot{token}/sendMessage`; the answer must say `"ok": true`.
pub async fn send_telegram(
    client: &reqwest::Client,
    config: &TelegramConfig,
    delivery_id: &str,
    message: &Message,
) -> Result<(), String> {
    let url = format!("{}/bot{}/sendMessage", config.base_url.trim_end_matches('/'), config.bot_token.expose());
    let response = client
        .post(url)
        .header(DELIVERY_ID_HEADER, delivery_id)
        .json(&json!({ "chat_id": message.to, "text": message.text }))
        .send()
        .await
        .map_err(describe)?;
    let body = check_response(response).await?;
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if answer["ok"] != Value::Bool(true) {
        return Err(format!("Telegram refused: {}", answer["description"].as_str().unwrap_or("no description")));
    }
    Ok(())
}
