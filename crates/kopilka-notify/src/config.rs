//! Channel configuration per tenant: which provider carries each channel, and its settings.
//!
//! A configuration is parsed, not merely validated: `parse` turns the JSON a tenant sends into a
//! `ChannelConfig` or an error naming the field at fault (`config.port`), with a stable code. What
//! is stored is the parsed value, so a sender never meets a malformed one. Secrets (passwords,
//! tokens) are `Secret`s: never printed, and replaced by `"***"` in `redacted()`, which is what the
//! API shows after creation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Channel, NotifyError, Result, Secret};

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// No TLS: allowed only to a loopback relay (a local MTA that relays onwards).
    Plain,
    /// Upgrade with STARTTLS, refusing to go on without it.
    Starttls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender, as `Name <address>` or a bare address.
    pub from: String,
    /// A PEM certificate trusted as a root for STARTTLS besides the public ones: for a relay
    /// with a private or self-signed certificate. Certificates are never left unchecked.
    #[serde(default)]
    pub root_certificate_pem: Option<String>,
}

/// Twilio's Messages API (form-encoded, HTTP basic auth with the account SID and auth token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: String,
    #[serde(default = "twilio_base_url")]
    pub base_url: String,
}

fn twilio_base_url() -> String {
    "https://api.twilio.com".into()
}

/// FCM HTTP v1 (`projects/{id}/messages:send`) with an OAuth2 access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    pub project_id: String,
    pub access_token: Secret,
    #[serde(default = "fcm_base_url")]
    pub base_url: String,
}

fn fcm_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// Telegram Bot API `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    pub bot_token: Secret,
    #[serde(default = "telegram_base_url")]
    pub base_url: String,
}

fn telegram_base_url() -> String {
    "https://api.telegram.org".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Post,
    Put,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHeader {
    pub name: String,
    pub value: Secret,
}

/// Any HTTP provider: the request is described, the body rendered from a minijinja template with
/// `to`, `subject` and `text` (use `|tojson` inside JSON bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: HttpMethod,
    #[serde(default)]
    pub auth_header: Option<AuthHeader>,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    pub body_template: String,
}

fn default_method() -> HttpMethod {
    HttpMethod::Post
}

fn default_content_type() -> String {
    "application/json".into()
}

/// A channel's provider and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum ChannelConfig {
    Smtp(SmtpConfig),
    Twilio(TwilioConfig),
    Fcm(FcmConfig),
    Telegram(TelegramConfig),
    Http(HttpConfig),
}

impl ChannelConfig {
    pub fn provider(&self) -> &'static str {
        match self {
            ChannelConfig::Smtp(_) => "smtp",
            ChannelConfig::Twilio(_) => "twilio",
            ChannelConfig::Fcm(_) => "fcm",
            ChannelConfig::Telegram(_) => "telegram",
            ChannelConfig::Http(_) => "http",
        }
    }

    /// The configuration with every secret replaced by `"***"`.
    pub fn redacted(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("configs serialize");
        for key in ["password", "auth_token", "access_token", "bot_token"] {
            if let Some(secret) = value.get_mut(key).filter(|v| !v.is_null()) {
                *secret = Value::String("***".into());
            }
        }
        if let Some(header) = value.get_mut("auth_header").and_then(|h| h.get_mut("value")) {
            *header = Value::String("***".into());
        }
        value
    }
}

/// Providers each channel accepts.
pub fn providers_of(channel: Channel) -> &'static [&'static str] {
    match channel {
        Channel::Email => &["smtp"],
        Channel::Sms => &["twilio", "http"],
        Channel::Push => &["fcm", "http"],
        Channel::Messenger => &["telegram"],
    }
}

fn invalid(field: &str, detail: impl Into<String>) -> NotifyError {
    NotifyError::invalid("channel_config_invalid", format!("config.{field}"), detail)
}

/// Parses a channel's configuration as sent to the API.
pub fn parse(channel: Channel, json: &Value) -> Result<ChannelConfig> {
    let provider = json
        .get("provider")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("provider", format!("name the provider: one of {:?}", providers_of(channel))))?;
    if !providers_of(channel).contains(&provider) {
        return Err(NotifyError::invalid(
            "channel_provider_unsupported",
            "config.provider",
            format!("{} cannot go through {provider:?}; use one of {:?}", channel.as_str(), providers_of(channel)),
        ));
    }
    let mut fields = json.clone();
    if let Some(map) = fields.as_object_mut() {
        map.remove("provider");
    }
    // Internally tagged enums lose the path of an error; deserializing the provider's own struct
    // through serde_path_to_error keeps it, so the error names `config.port`, not the whole body.
    fn typed<T: serde::de::DeserializeOwned>(fields: Value) -> Result<T> {
        serde_path_to_error::deserialize(fields).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner().to_string();
            let field = if path == "." {
                inner.split('`').nth(1).filter(|_| inner.contains("field `")).unwrap_or("provider").to_string()
            } else {
                path
            };
            invalid(&field, inner)
        })
    }
    let config = match provider {
        "smtp" => ChannelConfig::Smtp(typed(fields)?),
        "twilio" => ChannelConfig::Twilio(typed(fields)?),
        "fcm" => ChannelConfig::Fcm(typed(fields)?),
        "telegram" => ChannelConfig::Telegram(typed(fields)?),
        "http" => ChannelConfig::Http(typed(fields)?),
        other => unreachable!("providers_of admitted {other}"),
    };
    check(&config)?;
    Ok(config)
}

fn check_url(field: &str, url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(field, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(field, format!("{url:?} must be an http(s) URL with a host")));
    }
    Ok(())
}

fn check_present(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check(config: &ChannelConfig) -> Result<()> {
    match config {
        ChannelConfig::Smtp(smtp) => {
            check_present("host", &smtp.host)?;
            if smtp.port == 0 {
                return Err(invalid("port", "must be 1 to 65535"));
            }
            if smtp.security == SmtpSecurity::Plain && !is_loopback(&smtp.host) {
                return Err(invalid("security", "plain SMTP is allowed only to a loopback relay; use starttls"));
            }
            if smtp.password.is_some() != smtp.username.is_some() {
                return Err(invalid("username", "username and password go together"));
            }
            if let Some(pem) = &smtp.root_certificate_pem {
                if smtp.security != SmtpSecurity::Starttls {
                    return Err(invalid("root_certificate_pem", "a root certificate is for starttls"));
                }
                crate::smtp::tls_parameters(&smtp.host, Some(pem))
                    .map_err(|detail| invalid("root_certificate_pem", detail))?;
            }
            smtp.from
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| invalid("from", format!("{:?} is not an email address: {e}", smtp.from)))?;
        }
        ChannelConfig::Twilio(twilio) => {
            check_present("account_sid", &twilio.account_sid)?;
            check_present("auth_token", twilio.auth_token.expose())?;
            check_present("from", &twilio.from)?;
            check_url("base_url", &twilio.base_url)?;
        }
        ChannelConfig::Fcm(fcm) => {
            check_present("project_id", &fcm.project_id)?;
            check_present("access_token", fcm.access_token.expose())?;
            check_url("base_url", &fcm.base_url)?;
        }
        ChannelConfig::Telegram(telegram) => {
            check_present("bot_token", telegram.bot_token.expose())?;
            check_url("base_url", &telegram.base_url)?;
        }
        ChannelConfig::Http(http) => {
            check_url("url", &http.url)?;
            if let Some(header) = &http.auth_header {
                reqwest::header::HeaderName::from_bytes(header.name.as_bytes())
                    .map_err(|_| invalid("auth_header.name", format!("{:?} is not a header name", header.name)))?;
                reqwest::header::HeaderValue::from_str(header.value.expose())
                    .map_err(|_| invalid("auth_header.value", "is not a valid header value"))?;
            }
            reqwest::header::HeaderValue::from_str(&http.content_type)
                .map_err(|_| invalid("content_type", "is not a valid header value"))?;
            let sample = serde_json::json!({ "to": "+79120000001", "subject": "Subject", "text": "Text" });
            crate::http::render_body(&http.body_template, &sample)
                .map_err(|detail| invalid("body_template", detail))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(channel: Channel, json: Value) -> String {
        match parse(channel, &json) {
            Err(NotifyError::Invalid { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_malformed_config_is_refused_naming_the_field() {
        let smtp = json!({"provider": "smtp", "host": "127.0.0.1", "port": 2525, "security": "plain", "from": "shop@example.com"});
        assert!(parse(Channel::Email, &smtp).is_ok());
        let mut bad = smtp.clone();
        bad["port"] = json!("twenty");
        assert_eq!(field_of(Channel::Email, bad), "config.port");
        let mut bad = smtp.clone();
        bad["host"] = json!("mail.example.com");
        assert_eq!(field_of(Channel::Email, bad), "config.security");
        let mut bad = smtp.clone();
        bad["from"] = json!("not an address");
        assert_eq!(field_of(Channel::Email, bad), "config.from");
        assert_eq!(field_of(Channel::Email, json!({"provider": "twilio"})), "config.provider");
        assert_eq!(field_of(Channel::Sms, json!({"provider": "twilio", "from": "+1"})), "config.account_sid");
        let mut bad = smtp.clone();
        bad["security"] = json!("starttls");
        bad["root_certificate_pem"] = json!("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
        assert_eq!(field_of(Channel::Email, bad), "config.root_certificate_pem");
        let http = json!({"provider": "http", "url": "http://127.0.0.1:9/sms", "body_template": "{{ nope }}"});
        assert_eq!(field_of(Channel::Sms, http), "config.body_template");
        let http = json!({"provider": "http", "url": "ftp://x", "body_template": "{{ text }}"});
        assert_eq!(field_of(Channel::Push, http), "config.url");
    }

    #[test]
    fn secrets_are_redacted_and_never_debug_printed() {
        let config = parse(Channel::Messenger, &json!({"provider": "telegram", "bot_token": "123:SECRET"})).unwrap();
        assert_eq!(config.redacted()["bot_token"], "***");
        assert!(!format!("{config:?}").contains("SECRET"));
    }
}
