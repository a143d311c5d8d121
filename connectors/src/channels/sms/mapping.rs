//! A channel message → the Messages form; Twilio answers → outcomes.

use touchpoint_schemas::ChannelMessage;

use crate::channels::templates::Rendered;
use crate::channels::{ProviderStatus, SendError};

/// E.164: `+`, then 7 to 15 digits, the first not 0.
pub fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else { return false };
    (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

pub fn form(
    m: &ChannelMessage,
    r: &Rendered,
    from: &str,
    callback: Option<&str>,
) -> Result<Vec<(&'static str, String)>, SendError> {
    let to = m.recipient.as_deref().unwrap_or_default();
    if !is_e164(to) {
        return Err(SendError::Permanent {
            reason: format!("invalid phone number {to:?} (E.164 expected)"),
            bounce: true,
        });
    }
    let body = r.body.clone().or_else(|| r.text.clone()).ok_or_else(|| {
        SendError::permanent(format!("nothing to send: template {:?} has no body or text", m.template))
    })?;
    let mut form = vec![("To", to.to_string()), ("From", from.to_string()), ("Body", body)];
    if let Some(cb) = callback {
        form.push(("StatusCallback", cb.to_string()));
    }
    Ok(form)
}

/// Twilio message statuses.
pub fn status(s: &str) -> ProviderStatus {
    match s {
        "delivered" | "read" => ProviderStatus::Delivered,
        "undelivered" | "failed" | "canceled" => ProviderStatus::Failed(s.to_string()),
        _ => ProviderStatus::Accepted,
    }
}

/// Twilio error 21211 (invalid To), 21614 (not a mobile number), 21610 (unsubscribed): the number is
/// no good.
pub fn is_bad_number(body: &str) -> bool {
    ["21211", "21614", "21610"].iter().any(|c| body.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::templates::tests::message;

    #[test]
    fn numbers_and_forms() {
        assert!(is_e164("+4915112345678"));
        assert!(!is_e164("015112345678"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+12"));
        let mut m = message(None, serde_json::json!({}));
        m.recipient = Some("+4915112345678".into());
        let r = Rendered { body: Some("hello".into()), ..Default::default() };
        let f = form(&m, &r, "+15550001111", Some("http://cb")).unwrap();
        assert_eq!(f[2], ("Body", "hello".to_string()));
        assert_eq!(f[3], ("StatusCallback", "http://cb".to_string()));
        m.recipient = Some("12345".into());
        assert!(matches!(form(&m, &r, "+1", None), Err(SendError::Permanent { bounce: true, .. })));
    }

    #[test]
    fn statuses() {
        assert_eq!(status("queued"), ProviderStatus::Accepted);
        assert_eq!(status("delivered"), ProviderStatus::Delivered);
        assert_eq!(status("undelivered"), ProviderStatus::Failed("undelivered".into()));
    }
}
