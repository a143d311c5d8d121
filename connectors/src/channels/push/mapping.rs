//! A channel message → an FCM v1 message; FCM answers → outcomes.

use serde_json::{json, Value};
use touchpoint_schemas::ChannelMessage;

use crate::channels::templates::Rendered;
use crate::channels::SendError;

pub fn request(m: &ChannelMessage, r: &Rendered) -> Result<Value, SendError> {
    let token = m
        .recipient
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| SendError::Permanent { reason: "no device token".into(), bounce: true })?;
    if r.title.is_none() && r.body.is_none() {
        return Err(SendError::permanent(format!("nothing to send: template {:?} has no title or body", m.template)));
    }
    // FCM data values are strings.
    let mut data: serde_json::Map<String, Value> =
        m.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    data.insert("delivery_id".into(), Value::String(m.delivery_id()));
    data.insert("category".into(), Value::String(m.category.clone()));
    Ok(json!({"message": {
        "token": token,
        "notification": {"title": r.title, "body": r.body},
        "data": data,
    }}))
}

/// FCM's `UNREGISTERED` / `NOT_FOUND` mean the device token is gone: a bounce.
pub fn is_unregistered(body: &str) -> bool {
    body.contains("UNREGISTERED") || body.contains("NOT_FOUND")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::templates::tests::message;

    #[test]
    fn an_fcm_message_with_string_data() {
        let mut m = message(None, json!({}));
        m.recipient = Some("tok-1".into());
        let r = Rendered { title: Some("T".into()), body: Some("B".into()), ..Default::default() };
        let v = request(&m, &r).unwrap();
        assert_eq!(v["message"]["token"], "tok-1");
        assert_eq!(v["message"]["notification"]["title"], "T");
        assert_eq!(v["message"]["data"]["campaign"], "spring");
        assert_eq!(v["message"]["data"]["delivery_id"], m.delivery_id());
        m.recipient = None;
        assert!(matches!(request(&m, &r), Err(SendError::Permanent { bounce: true, .. })));
    }
}
