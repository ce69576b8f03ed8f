//! Message templates (minijinja) per event kind, channel and language, checked when saved.
//!
//! The environment's undefined behaviour is strict: a variable the context does not have is an
//! error, not an empty string. A template is saved only after it compiled and rendered against a
//! sample event of its kind, so a typo fails the request that made it, not a message at 3 a.m.
//! The HTML part is auto-escaped; the subject and text parts are not.

use kopilka_core::events::DomainEvent;
use kopilka_core::rewards::{PayoutId, RedemptionId, RewardForm, RewardId};
use kopilka_core::{LotId, MemberId, MovementKind, PurchaseId};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Channel, NotifyError, Result};

/// The largest template part accepted: far above any real message, small enough to bound memory.
pub const TEMPLATE_BYTES_MAX: usize = 64 * 1024;
/// Languages templates may be written in: those a member may choose.
pub const LANGUAGES: &[&str] = kopilka_core::member::LANGUAGES;

/// A template as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The email subject (required for email) or push title; ignored by SMS and messengers.
    #[serde(default)]
    pub subject: Option<String>,
    /// The plain text: the whole message for SMS and messengers, the text part of an email.
    pub text: String,
    /// The HTML part of an email.
    #[serde(default)]
    pub html: Option<String>,
}

/// A template rendered for one member and event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None });
    env
}

/// Renders `template` against `context`; the error names the part and says what went wrong.
pub fn render(template: &Template, context: &Value) -> Result<Rendered, (&'static str, String)> {
    let env = environment();
    let part = |name: &'static str, source: &str| {
        env.render_named_str(name, source, context).map_err(|error| (name, describe(&error)))
    };
    Ok(Rendered {
        subject: template.subject.as_deref().map(|s| part("subject.txt", s)).transpose()?.map(|s| s.trim().to_string()),
        text: part("text.txt", &template.text)?,
        html: template.html.as_deref().map(|s| part("body.html", s)).transpose()?,
    })
}

fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let Some(line) = error.line() {
        if !text.contains("line") {
            text.push_str(&format!(" (line {line})"));
        }
    }
    text
}

/// Checks a template before it is saved: the kind has a sample, the language is known, the parts
/// are within bounds, and every part compiles and renders against the sample in strict mode.
pub fn validate(event_kind: &str, channel: Channel, language: &str, template: &Template) -> Result<()> {
    if !LANGUAGES.contains(&language) {
        return Err(NotifyError::invalid(
            "unknown_language",
            "language",
            format!("language {language:?} is not supported; use one of {LANGUAGES:?}"),
        ));
    }
    let sample = sample_context(event_kind, channel).ok_or_else(|| {
        NotifyError::invalid(
            "unknown_event_kind",
            "event_kind",
            format!("no event of kind {event_kind:?}; known kinds: {}", EVENT_KINDS.join(", ")),
        )
    })?;
    for (field, part) in
        [("subject", &template.subject), ("text", &Some(template.text.clone())), ("html", &template.html)]
    {
        if part.as_ref().is_some_and(|p| p.len() > TEMPLATE_BYTES_MAX) {
            return Err(NotifyError::invalid(
                "template_too_large",
                field,
                format!("a template part may hold at most {TEMPLATE_BYTES_MAX} bytes"),
            ));
        }
    }
    if channel == Channel::Email && template.subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(NotifyError::invalid("template_subject_missing", "subject", "an email template needs a subject"));
    }
    if template.text.trim().is_empty() {
        return Err(NotifyError::invalid("template_text_missing", "text", "a template needs a text part"));
    }
    let env = environment();
    for (field, name, part) in [
        ("subject", "subject.txt", template.subject.as_deref()),
        ("text", "text.txt", Some(template.text.as_str())),
        ("html", "body.html", template.html.as_deref()),
    ] {
        let Some(source) = part else { continue };
        if let Err(error) = env.template_from_named_str(name, source) {
            return Err(NotifyError::invalid("template_syntax", field, describe(&error)));
        }
        if let Err(error) = env.render_named_str(name, source, &sample) {
            let code = if error.kind() == minijinja::ErrorKind::UndefinedError {
                "template_unknown_variable"
            } else {
                "template_render_failed"
            };
            return Err(NotifyError::invalid(code, field, describe(&error)));
        }
    }
    Ok(())
}

/// Every event kind the core emits; templates and webhook filters name these.
pub const EVENT_KINDS: &[&str] = &[
    "member_created",
    "member_updated",
    "member_erased",
    "members_merged",
    "purchase_recorded",
    "purchase_returned",
    "partner_purchase_returned",
    "points_earn",
    "points_activate",
    "points_redeem",
    "points_reverse",
    "points_restore",
    "points_expire",
    "points_adjust",
    "points_merge",
    "coupon_redeemed",
    "tier_changed",
    "reward_redeemed",
    "reward_fulfilled",
    "reward_cancelled",
    "cashback_payout_created",
    "bonus_granted",
    "custom_event",
    "points_expiring",
    "referral_accepted",
    "referral_rejected",
    "referral_rewarded",
    "offer_received",
];

/// A representative event of `kind`, as the outbox stores it.
pub fn sample_event(kind: &str) -> Option<DomainEvent> {
    let member_id = MemberId(1);
    let purchase_id = PurchaseId(1);
    let points = |movement| DomainEvent::Points {
        member_id,
        movement,
        points: 39,
        currency: "PTS".into(),
        purchase_id: Some(purchase_id),
        lot_id: Some(LotId(1)),
        expires_at: Some("2027-01-15T00:00:00Z".parse().expect("a valid sample time")),
    };
    Some(match kind {
        "member_created" => DomainEvent::MemberCreated { member_id },
        "member_updated" => DomainEvent::MemberUpdated { member_id },
        "member_erased" => DomainEvent::MemberErased { member_id },
        "members_merged" => DomainEvent::MembersMerged { survivor_id: member_id, absorbed_id: MemberId(2) },
        "purchase_recorded" => {
            DomainEvent::PurchaseRecorded { member_id, purchase_id, total_minor: 3_900_00, currency: "RUB".into() }
        }
        "purchase_returned" => {
            DomainEvent::PurchaseReturned { member_id, purchase_id, returned_minor: 1_000_00, points_unrecovered: 0 }
        }
        "partner_purchase_returned" => DomainEvent::PartnerPurchaseReturned {
            member_id,
            partner_id: 1,
            external_id: "C-1042".into(),
            points_reversed: 300,
            points_unrecovered: 0,
        },
        "points_earn" => points(MovementKind::Earn),
        "points_activate" => points(MovementKind::Activate),
        "points_redeem" => points(MovementKind::Redeem),
        "points_reverse" => points(MovementKind::Reverse),
        "points_restore" => points(MovementKind::Restore),
        "points_expire" => points(MovementKind::Expire),
        "points_adjust" => points(MovementKind::Adjust),
        "points_merge" => points(MovementKind::Merge),
        "coupon_redeemed" => DomainEvent::CouponRedeemed {
            member_id,
            code: "AUTUMN-2026".into(),
            campaign_id: 1,
            purchase_id,
            discount_minor: 100_00,
        },
        "tier_changed" => DomainEvent::TierChanged {
            member_id,
            from: Some("silver".into()),
            to: Some("gold".into()),
            reason: "qualified".into(),
        },
        "reward_redeemed" => DomainEvent::RewardRedeemed {
            member_id,
            redemption_id: RedemptionId(1),
            reward_id: RewardId(1),
            form: RewardForm::Discount,
            points: 500,
        },
        "reward_fulfilled" => DomainEvent::RewardFulfilled { member_id, redemption_id: RedemptionId(1) },
        "reward_cancelled" => {
            DomainEvent::RewardCancelled { member_id, redemption_id: RedemptionId(1), points_restored: 500 }
        }
        "cashback_payout_created" => DomainEvent::CashbackPayoutCreated {
            member_id,
            payout_id: PayoutId(1),
            redemption_id: RedemptionId(1),
            amount_minor: 500_00,
            currency: "RUB".into(),
        },
        "bonus_granted" => DomainEvent::BonusGranted {
            member_id,
            bonus: "birthday".into(),
            points: 100,
            reason: "birthday 2026".into(),
            expires_at: Some("2027-01-15T00:00:00Z".parse().expect("a valid sample time")),
        },
        "custom_event" => DomainEvent::CustomEvent {
            member_id,
            event_type: "review_written".into(),
            occurred_at: "2026-01-15T10:00:00Z".parse().expect("a valid sample time"),
            attributes: serde_json::json!({ "product": "TYRE-17" }),
            points: 20,
        },
        "points_expiring" => DomainEvent::PointsExpiring {
            member_id,
            points: 39,
            expires_at: "2027-01-15T00:00:00Z".parse().expect("a valid sample time"),
            days: 7,
        },
        "referral_accepted" => {
            DomainEvent::ReferralAccepted { member_id, referrer_id: MemberId(2), welcome_points: 50 }
        }
        "referral_rejected" => DomainEvent::ReferralRejected {
            member_id,
            referrer_id: MemberId(2),
            reason: "self_referral_shared_phone".into(),
        },
        "referral_rewarded" => DomainEvent::ReferralRewarded { member_id, referred_id: MemberId(2), points: 100 },
        "offer_received" => DomainEvent::OfferReceived {
            member_id,
            source: "coupon".into(),
            campaign: "Autumn tyres".into(),
            coupon_campaign_id: Some(1),
            code: Some("AUTUMN-7F3K".into()),
            valid_until: Some("2026-11-30T21:00:00Z".parse().expect("a valid sample time")),
        },
        _ => return None,
    })
}

/// What a channel carries of the built-in offer message: a subject for email and push, the text,
/// and HTML for email.
fn offer_template(channel: Channel, language: &str) -> Template {
    let (subject, greeting, coupon, until, joined, unsubscribe) = match language {
        "ru" => (
            "Персональное предложение для вас",
            "{% if member.name %}{{ member.name }}, з{% else %}З{% endif %}дравствуйте!",
            "Ваш персональный купон {{ event.code }} по акции «{{ event.campaign }}»",
            " действует до {{ event.valid_until }}",
            "Вы участвуете в акции «{{ event.campaign }}»",
            "Отписаться",
        ),
        _ => (
            "A personal offer for you",
            "Hello{% if member.name %}, {{ member.name }}{% endif %}!",
            "Your personal coupon {{ event.code }} for {{ event.campaign }}",
            " is valid until {{ event.valid_until }}",
            "You are in the offer {{ event.campaign }}",
            "Unsubscribe",
        ),
    };
    let body = format!(
        "{{% if event.code %}}{coupon}{{% if event.valid_until %}}{until}{{% endif %}}{{% else %}}{joined}{{% endif %}}."
    );
    let text = match channel {
        Channel::Email => format!("{greeting}\n\n{body}\n\n{unsubscribe}: {{{{ unsubscribe_url }}}}\n"),
        _ => body.clone(),
    };
    Template {
        subject: matches!(channel, Channel::Email | Channel::Push).then(|| subject.to_string()),
        text,
        html: (channel == Channel::Email).then(|| {
            format!(
                "<p>{greeting}</p>\n<p>{body}</p>\n<p><a href=\"{{{{ unsubscribe_url }}}}\">{unsubscribe}</a></p>\n"
            )
        }),
    }
}

/// The templates Kopilka ships, as `(kind, channel, language, template)`: a tenant that saved no
/// template of its own for a kind and channel gets these, so a new kind of message reaches
/// members without a template written first. A saved template of the kind and channel, in any
/// language, replaces them all.
pub fn builtin() -> Vec<(&'static str, Channel, &'static str, Template)> {
    let mut templates = Vec::new();
    for channel in Channel::ALL {
        for language in LANGUAGES {
            templates.push(("offer_received", channel, *language, offer_template(channel, language)));
        }
    }
    templates
}

/// The member as templates see it. Absent fields are empty strings, so `{{ member.name }}` never
/// prints "none".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub card: String,
    pub city: String,
}

/// The context a template renders against: `event` (the stored payload plus `id`, `kind` and
/// `occurred_at`), `member`, `channel` and `unsubscribe_url`.
pub fn context(
    event_id: i64,
    kind: &str,
    occurred_at: &str,
    payload: &Value,
    member: &MemberView,
    channel: Channel,
    unsubscribe_url: &str,
) -> Value {
    let mut event = payload.clone();
    if let Value::Object(map) = &mut event {
        map.insert("id".into(), json!(event_id));
        map.insert("kind".into(), json!(kind));
        map.insert("occurred_at".into(), json!(occurred_at));
    }
    json!({ "event": event, "member": member, "channel": channel.as_str(), "unsubscribe_url": unsubscribe_url })
}

/// The context a preview or a save check renders against.
pub fn sample_context(kind: &str, channel: Channel) -> Option<Value> {
    let event = sample_event(kind)?;
    let member = MemberView {
        id: 1,
        name: "Anna".into(),
        email: "anna@example.com".into(),
        phone: "+79120000001".into(),
        card: "2000001".into(),
        city: "Kazan".into(),
    };
    let payload = serde_json::to_value(&event).expect("events serialize");
    Some(context(
        1,
        kind,
        "2026-01-15T10:00:00Z",
        &payload,
        &member,
        channel,
        "https://loyalty.example/v1/unsubscribe?token=sample",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> std::result::Result<(), (String, String)> {
        let template = Template { subject: Some("Hi".into()), text: text.into(), html: None };
        validate("points_earn", Channel::Email, "en", &template).map_err(|e| match e {
            NotifyError::Invalid { code, field, .. } => (code.to_string(), field),
            other => panic!("{other}"),
        })
    }

    #[test]
    fn templates_are_checked_against_a_sample_of_their_event_when_saved() {
        assert_eq!(check("{{ member.name }}, +{{ event.points }} points"), Ok(()));
        assert_eq!(check("{{ member.name "), Err(("template_syntax".into(), "text".into())));
        assert_eq!(check("{{ member.nickname }}"), Err(("template_unknown_variable".into(), "text".into())));
        assert_eq!(check("{{ points }}"), Err(("template_unknown_variable".into(), "text".into())));
        let no_subject = Template { subject: None, text: "x".into(), html: None };
        assert!(validate("points_earn", Channel::Email, "en", &no_subject).is_err());
        assert!(validate("points_earn", Channel::Sms, "en", &no_subject).is_ok());
        assert!(validate("no_such_kind", Channel::Sms, "en", &no_subject).is_err());
        assert!(validate("points_earn", Channel::Sms, "de", &no_subject).is_err());
    }

    #[test]
    fn every_kind_has_a_sample_whose_kind_is_its_own() {
        for kind in EVENT_KINDS {
            assert_eq!(sample_event(kind).unwrap().kind(), *kind);
        }
    }

    #[test]
    fn the_builtin_templates_pass_the_checks_a_saved_template_must_pass() {
        let builtin = builtin();
        assert_eq!(builtin.len(), Channel::ALL.len() * LANGUAGES.len());
        for (kind, channel, language, template) in builtin {
            validate(kind, channel, language, &template)
                .unwrap_or_else(|e| panic!("{kind} {channel:?} {language}: {e}"));
        }
        let (_, _, _, ru) = super::builtin().into_iter().find(|t| t.1 == Channel::Sms && t.2 == "ru").unwrap();
        let rendered = render(&ru, &sample_context("offer_received", Channel::Sms).unwrap()).unwrap();
        assert_eq!(
            rendered.text,
            "Ваш персональный купон AUTUMN-7F3K по акции «Autumn tyres» действует до 2026-11-30T21:00:00Z."
        );
    }

    #[test]
    fn the_html_part_is_escaped_and_the_text_part_is_not() {
        let template = Template {
            subject: Some("S".into()),
            text: "{{ member.name }}".into(),
            html: Some("<p>{{ member.name }}</p>".into()),
        };
        let member = MemberView { name: "<Anna & Co>".into(), ..MemberView::default() };
        let ctx = context(1, "member_created", "t", &json!({"type": "member_created"}), &member, Channel::Email, "u");
        let rendered = render(&template, &ctx).unwrap();
        assert_eq!(rendered.text, "<Anna & Co>");
        assert_eq!(rendered.html.unwrap(), "<p>&lt;Anna &amp; Co&gt;</p>");
    }
}
