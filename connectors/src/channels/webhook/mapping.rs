//! A channel message → the JSON body and signature headers of a webhook request.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use touchpoint_schemas::ChannelMessage;

/// The body receivers get: the message, with our delivery id.
pub fn body(m: &ChannelMessage) -> Vec<u8> {
    let v = serde_json::json!({
        "type": "touchpoint.message",
        "delivery_id": m.delivery_id(),
        "idempotency_key": m.idempotency_key,
        "tenant_id": m.tenant_id,
        "subject_id": m.subject_id,
        "template": m.template,
        "category": m.category,
        "purpose": m.purpose,
        "data": m.data,
        "metadata": m.metadata,
        "event": {"id": m.event_id, "type": m.event_type, "occurred_at": m.occurred_at},
        "journey": m.journey,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The HMAC key of a secret: a Standard Webhooks secret `whsec_<base64>` is its decoded bytes; any
/// other string is its UTF-8 bytes.
pub fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow::anyhow!("webhook secret: whsec_ secrets are base64 after the prefix: {e}")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// HMAC-SHA256 over `"{id}.{timestamp}.{body}"`, the Standard Webhooks signed content: what a sender
/// signs ([`signature`]) and a receiver checks (`touchpoint ingest`).
pub fn signed_content_mac(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `v1,<base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))>`.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = signed_content_mac(secret, id, timestamp, body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn plain_secrets_are_their_bytes_and_bad_whsec_is_refused() {
        assert_eq!(signing_key("local-secret").unwrap(), b"local-secret");
        assert!(signing_key("whsec_not base64!").is_err());
    }

    #[test]
    fn the_body_carries_the_delivery_id_and_data() {
        let m = crate::channels::templates::tests::message(None, serde_json::json!({"a": 1}));
        let v: serde_json::Value = serde_json::from_slice(&body(&m)).unwrap();
        assert_eq!(v["delivery_id"], m.delivery_id());
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["idempotency_key"], "key-1");
    }
}
