//! A channel message and its rendered template → an RFC 5322 message.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;
use touchpoint_schemas::{ChannelMessage, Purpose};

use crate::channels::templates::Rendered;
use crate::channels::unsubscribe::UnsubscribeLinks;
use crate::channels::SendError;

/// The Message-ID of every attempt of this message: a resend after a crash is recognisably the same.
pub fn message_id(m: &ChannelMessage, domain: &str) -> String {
    format!("<{}@{domain}>", m.delivery_id())
}

/// The RFC 5322 message; a marketing email gets one-click unsubscribe headers (RFC 8058) when `links`
/// is configured (`now_s` dates the link's expiry).
pub fn to_email(
    m: &ChannelMessage,
    r: &Rendered,
    from: &Mailbox,
    domain: &str,
    links: Option<&UnsubscribeLinks>,
    now_s: i64,
) -> Result<Message, SendError> {
    let rcpt = m
        .recipient
        .as_deref()
        .ok_or_else(|| SendError::Permanent { reason: "no recipient address".into(), bounce: true })?;
    let to: Mailbox = rcpt.parse().map_err(|e| SendError::Permanent {
        reason: format!("invalid recipient address {rcpt:?}: {e}"),
        bounce: true,
    })?;
    let subject = r.subject.clone().unwrap_or_default();
    let mut builder =
        Message::builder().from(from.clone()).to(to).subject(subject).message_id(Some(message_id(m, domain)));
    for (name, value) in
        [("X-Touchpoint-Idempotency-Key", m.idempotency_key.as_str()), ("X-Touchpoint-Category", m.category.as_str())]
    {
        builder = builder.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string()));
    }
    if let (Some(links), Purpose::Marketing) = (links, m.purpose) {
        let url = links.link(&m.tenant_id, &m.subject_id, m.channel, m.purpose, now_s);
        for (name, value) in
            [("List-Unsubscribe", format!("<{url}>")), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into())]
        {
            builder = builder.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(name), value));
        }
    }
    let built = match (&r.text, &r.html) {
        (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(text.clone(), html.clone())),
        (None, Some(html)) => {
            builder.singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone()))
        }
        (Some(text), None) => {
            builder.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text.clone()))
        }
        (None, None) => {
            return Err(SendError::permanent(format!(
                "nothing to send: template {:?} has no text or html, and the message no raw content",
                m.template
            )))
        }
    };
    built.map_err(|e| SendError::permanent(format!("building the email: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::templates::tests::message;

    fn from() -> Mailbox {
        "Touchpoint <hello@example.com>".parse().unwrap()
    }

    #[test]
    fn multipart_with_a_stable_message_id() {
        let m = message(None, serde_json::json!({}));
        let r = Rendered {
            subject: Some("Hi".into()),
            text: Some("t".into()),
            html: Some("<p>h</p>".into()),
            ..Default::default()
        };
        let raw = String::from_utf8(to_email(&m, &r, &from(), "tp.test", None, 0).unwrap().formatted()).unwrap();
        assert!(raw.contains(&format!("Message-ID: <{}@tp.test>", m.delivery_id())), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("X-Touchpoint-Idempotency-Key: key-1"), "{raw}");
        assert!(raw.contains("Subject: Hi"), "{raw}");
    }

    #[test]
    fn a_bad_address_is_a_bounce_and_an_empty_message_is_refused() {
        let mut m = message(None, serde_json::json!({}));
        m.recipient = Some("not an address".into());
        let r = Rendered { text: Some("t".into()), ..Default::default() };
        assert!(matches!(to_email(&m, &r, &from(), "d", None, 0), Err(SendError::Permanent { bounce: true, .. })));
        let m = message(None, serde_json::json!({}));
        assert!(matches!(
            to_email(&m, &Rendered::default(), &from(), "d", None, 0),
            Err(SendError::Permanent { bounce: false, .. })
        ));
    }

    #[test]
    fn marketing_emails_carry_one_click_unsubscribe_headers() {
        use crate::channels::config::Secret;
        use crate::channels::unsubscribe::{UnsubscribeConfig, UnsubscribeLinks};
        let links = UnsubscribeLinks::new(&UnsubscribeConfig {
            base_url: "https://api.example.com".into(),
            secret: Secret::Inline("0123456789abcdef0123456789abcdef".into()),
            ttl: std::time::Duration::from_secs(86_400),
        })
        .unwrap();
        let r = Rendered { text: Some("t".into()), ..Default::default() };
        let mut m = message(None, serde_json::json!({}));
        m.purpose = Purpose::Marketing;
        let raw = String::from_utf8(to_email(&m, &r, &from(), "d", Some(&links), 1_000).unwrap().formatted()).unwrap();
        assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{raw}");
        let start = raw.find("List-Unsubscribe: <https://api.example.com/u/").expect("the link header");
        let token: String = raw[start + "List-Unsubscribe: <https://api.example.com/u/".len()..]
            .chars()
            .take_while(|c| *c != '>')
            .filter(|c| !c.is_whitespace())
            .collect();
        let what = links.verify(&token, 1_000).expect("a token the ingest API accepts");
        assert_eq!((what.subject_id, what.channel), (m.subject_id.clone(), m.channel));
        // Transactional mail carries none: it is not something to unsubscribe from.
        m.purpose = Purpose::Transactional;
        let raw = String::from_utf8(to_email(&m, &r, &from(), "d", Some(&links), 1_000).unwrap().formatted()).unwrap();
        assert!(!raw.contains("List-Unsubscribe"), "{raw}");
    }
}
