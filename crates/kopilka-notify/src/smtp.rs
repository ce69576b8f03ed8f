//! Email over SMTP with lettre: a text and (when the template has one) an HTML part, the
//! unsubscribe link in a `List-Unsubscribe` header, and the delivery id as `Message-ID` and
//! `Kopilka-Delivery-Id`, so a retry after a lost answer is recognizable as the same message.

use std::time::Duration;

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{SmtpConfig, SmtpSecurity};
use crate::fanout::Message;

/// How long one SMTP conversation may take before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(text: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(text.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 8058 one-click: mail clients POST to the `List-Unsubscribe` URL instead of opening it.
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

#[derive(Debug, Clone)]
struct DeliveryId(String);

impl Header for DeliveryId {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Kopilka-Delivery-Id")
    }

    fn parse(text: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(DeliveryId(text.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// Builds the email of a delivery.
pub fn build(config: &SmtpConfig, delivery_id: &str, message: &Message) -> Result<lettre::Message, String> {
    let from: Mailbox = config.from.parse().map_err(|e| format!("from address: {e}"))?;
    let to: Mailbox = message.to.parse().map_err(|e| format!("member address: {e}"))?;
    let builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(message.subject.clone().unwrap_or_default())
        .message_id(Some(format!("<{delivery_id}@kopilka>")))
        .header(ListUnsubscribe(format!("<{}>", message.unsubscribe_url)))
        .header(ListUnsubscribePost)
        .header(DeliveryId(delivery_id.to_string()));
    let email = match &message.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(message.text.clone(), html.clone())),
        None => builder.header(ContentType::TEXT_PLAIN).body(message.text.clone()),
    };
    email.map_err(|e| format!("building the email: {e}"))
}

/// TLS for `host`: the public roots, plus `root_pem` when the relay's certificate is private.
pub fn tls_parameters(host: &str, root_pem: Option<&str>) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(pem) = root_pem {
        let certificate = Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("root certificate: {e}"))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|e| format!("TLS: {e}"))
}

pub async fn send(config: &SmtpConfig, delivery_id: &str, message: &Message) -> Result<(), String> {
    let email = build(config, delivery_id, message)?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .timeout(Some(SMTP_TIMEOUT));
    transport = match config.security {
        SmtpSecurity::Plain => transport.tls(Tls::None),
        SmtpSecurity::Starttls => {
            let parameters = tls_parameters(&config.host, config.root_certificate_pem.as_deref())?;
            transport.tls(Tls::Required(parameters))
        }
    };
    if let (Some(username), Some(password)) = (&config.username, &config.password) {
        transport = transport.credentials(Credentials::new(username.clone(), password.expose().to_string()));
    }
    transport.build().send(email).await.map(|_| ()).map_err(|e| format!("SMTP: {e}"))
}
