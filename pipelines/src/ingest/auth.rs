//! Who is calling: a bearer API key, an HMAC-signed body (Standard Webhooks), or a client certificate
//! (mTLS). Each gives a [`Caller`], whose tenant every event of the request belongs to.

use axum::http::{header, HeaderMap};
use base64::Engine;
use hmac::Mac;
use touchpoint_connectors::channels::webhook::mapping::signed_content_mac;

use super::config::{Caller, IngestSettings};

/// The header a signed request names its signing key in (Standard Webhooks has one secret per
/// endpoint; an API serving many senders needs to know whose secret to check).
pub const KEY_ID_HEADER: &str = "tp-key-id";
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// What the TLS handshake said about the peer, put on each request of the connection.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// The names of a verified client certificate: DNS and URI subject-alternative names, then the
    /// common name. Empty without one.
    pub names: Vec<String>,
}

/// Why a request is `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a credential is required: Authorization: Bearer <key>, a signed request, or a client certificate")]
    Missing,
    #[error("the API key is not known")]
    UnknownKey,
    #[error("tp-key-id names no signing key")]
    UnknownSigningKey,
    #[error("a signed request needs webhook-id, webhook-timestamp, webhook-signature and tp-key-id")]
    IncompleteSignature,
    #[error("webhook-timestamp {0} is not within {1} s of the server's clock")]
    StaleTimestamp(i64, u64),
    #[error("no webhook-signature matches the body")]
    BadSignature,
    #[error("the client certificate ({0}) is not one of ingest.clients")]
    UnknownCertificate(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::UnknownKey => "unauthorized",
            AuthError::UnknownSigningKey | AuthError::IncompleteSignature | AuthError::BadSignature => "bad_signature",
            AuthError::StaleTimestamp(..) => "stale_timestamp",
            AuthError::UnknownCertificate(_) => "unknown_client_certificate",
        }
    }
}

/// True when the request carries any credential at all (checked before its body is read).
pub fn presents_credential(headers: &HeaderMap, peer: &PeerIdentity) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(WEBHOOK_SIGNATURE) || !peer.names.is_empty()
}

/// The caller of a request. A client certificate wins (the connection is the service); then a bearer
/// key; then a signature over `id.timestamp.body`.
pub fn authenticate<'s>(
    settings: &'s IngestSettings,
    headers: &HeaderMap,
    peer: &PeerIdentity,
    body: &[u8],
    now_s: i64,
) -> Result<&'s Caller, AuthError> {
    if !peer.names.is_empty() {
        return peer
            .names
            .iter()
            .find_map(|n| settings.client(n))
            .ok_or_else(|| AuthError::UnknownCertificate(peer.names.join(", ")));
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::UnknownKey)?;
        let key =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::UnknownKey)?;
        return settings.caller(key.trim()).ok_or(AuthError::UnknownKey);
    }
    if headers.contains_key(WEBHOOK_SIGNATURE) {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(key_id), Some(id), Some(ts), Some(signatures)) =
            (get(KEY_ID_HEADER), get(WEBHOOK_ID), get(WEBHOOK_TIMESTAMP), get(WEBHOOK_SIGNATURE))
        else {
            return Err(AuthError::IncompleteSignature);
        };
        let (secret, caller) = settings.signing_key(key_id).ok_or(AuthError::UnknownSigningKey)?;
        let ts: i64 = ts.trim().parse().map_err(|_| AuthError::IncompleteSignature)?;
        let tolerance = settings.signature_tolerance.as_secs();
        if now_s.abs_diff(ts) > tolerance {
            return Err(AuthError::StaleTimestamp(ts, tolerance));
        }
        return if verify(secret, id, ts, body, signatures) { Ok(caller) } else { Err(AuthError::BadSignature) };
    }
    Err(AuthError::Missing)
}

/// Any of the space-separated `v1,<base64>` signatures is the HMAC-SHA256 of `id.timestamp.body`
/// (several let a sender roll its secret). Compared in constant time.
pub fn verify(secret: &[u8], id: &str, timestamp: i64, body: &[u8], signatures: &str) -> bool {
    signatures.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).any(|b64| {
        let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        signed_content_mac(secret, id, timestamp, body).verify_slice(&expected).is_ok()
    })
}

/// The names a (chain-verified) client certificate is known by.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string));
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::config::{ApiKeyConfig, IngestConfig};
    use axum::http::HeaderValue;
    use touchpoint_connectors::channels::config::Secret;
    use touchpoint_connectors::channels::webhook::mapping::{signature, signing_key};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn settings() -> IngestSettings {
        IngestSettings::new(&IngestConfig {
            api_keys: vec![ApiKeyConfig {
                id: "billing".into(),
                tenant: "acme".into(),
                sha256: None,
                signing_secret: Some(Secret::Inline(SECRET.into())),
                rate_limit: None,
                internal: false,
            }],
            ..IngestConfig::default()
        })
        .unwrap()
    }

    fn signed(id: &str, ts: i64, body: &[u8], key_id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let sig = signature(&signing_key(SECRET).unwrap(), id, ts, body);
        h.insert(WEBHOOK_ID, HeaderValue::from_str(id).unwrap());
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_str(&ts.to_string()).unwrap());
        h.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(&format!("v1,bm90IGl0 {sig}")).unwrap());
        h.insert(KEY_ID_HEADER, HeaderValue::from_str(key_id).unwrap());
        h
    }

    #[test]
    fn a_signed_body_names_its_caller_and_any_change_breaks_it() {
        let s = settings();
        let none = PeerIdentity::default();
        let body = br#"{"event_type":"signed_up"}"#;
        let now = 1_800_000_000;
        let ok = authenticate(&s, &signed("msg_1", now, body, "billing"), &none, body, now).unwrap();
        assert_eq!(ok.tenant, "acme");
        // Another body, id or key under the same signature; an unknown key id.
        assert_eq!(
            authenticate(&s, &signed("msg_1", now, body, "billing"), &none, b"{}", now),
            Err(AuthError::BadSignature)
        );
        let mut h = signed("msg_1", now, body, "billing");
        h.insert(WEBHOOK_ID, HeaderValue::from_static("msg_2"));
        assert_eq!(authenticate(&s, &h, &none, body, now), Err(AuthError::BadSignature));
        assert_eq!(
            authenticate(&s, &signed("msg_1", now, body, "web"), &none, body, now),
            Err(AuthError::UnknownSigningKey)
        );
        // Outside the replay window, either way.
        assert!(matches!(
            authenticate(&s, &signed("msg_1", now - 301, body, "billing"), &none, body, now),
            Err(AuthError::StaleTimestamp(..))
        ));
        assert!(matches!(
            authenticate(&s, &signed("msg_1", now + 301, body, "billing"), &none, body, now),
            Err(AuthError::StaleTimestamp(..))
        ));
        assert!(authenticate(&s, &signed("msg_1", now - 299, body, "billing"), &none, body, now).is_ok());
        let mut h = signed("msg_1", now, body, "billing");
        h.remove(KEY_ID_HEADER);
        assert_eq!(authenticate(&s, &h, &none, body, now), Err(AuthError::IncompleteSignature));
        assert_eq!(authenticate(&s, &HeaderMap::new(), &none, body, now), Err(AuthError::Missing));
    }

    #[test]
    fn the_standard_webhooks_example_verifies() {
        let secret = signing_key(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, sig));
        assert!(!verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, sig));
        assert!(!verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, "v1,!!"));
    }

    #[test]
    fn a_certificate_is_known_by_its_names() {
        let mut params = rcgen::CertificateParams::new(vec!["crm.acme.internal".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "crm");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_names(cert.der()), vec!["crm.acme.internal".to_string(), "crm".to_string()]);
        assert!(certificate_names(b"not a certificate").is_empty());
    }
}
