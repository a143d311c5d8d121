//! One-click unsubscribe (RFC 8058): a signed, expiring token naming the tenant, subject, channel and
//! purpose of a message. The email connector puts `List-Unsubscribe: <{base_url}/u/{token}>` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` on every marketing email; `touchpoint ingest`
//! serves `POST /u/{token}`, verifies it and writes a consent denial (source `unsubscribe`).
//!
//! The token is `v1.<base64url(JSON)>.<base64url(HMAC-SHA256(secret, "v1." + JSON part))>`: it carries
//! what it revokes, so the endpoint needs no lookup, and nobody without the secret can make one (no
//! producer or recipient chooses whom a link unsubscribes).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use touchpoint_schemas::{Channel, Purpose};

use crate::channels::config::Secret;

/// The longest token accepted (a URL path segment; what a real token needs is ~250 bytes).
pub const MAX_TOKEN_BYTES: usize = 2048;

/// What a link unsubscribes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    #[serde(rename = "t")]
    pub tenant_id: String,
    #[serde(rename = "s")]
    pub subject_id: String,
    #[serde(rename = "c")]
    pub channel: Channel,
    #[serde(rename = "p")]
    pub purpose: Purpose,
    /// Unix seconds after which the link no longer works.
    #[serde(rename = "e")]
    pub expires_at_s: i64,
}

/// Why a token is refused; nothing is changed for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an unsubscribe token")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the link expired")]
    Expired,
}

/// The pipeline file's `compliance.unsubscribe`: where links point, the signing secret, how long a
/// link works.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// The public base URL of `touchpoint ingest` (links are `{base_url}/u/{token}`).
    pub base_url: String,
    /// At least 32 bytes; `{env: NAME}` in production.
    pub secret: Secret,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(60 * 86_400)
}

/// The config, checked: mints and verifies tokens.
#[derive(Clone)]
pub struct UnsubscribeLinks {
    base_url: String,
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for UnsubscribeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsubscribeLinks").field("base_url", &self.base_url).field("ttl", &self.ttl).finish()
    }
}

impl UnsubscribeLinks {
    pub fn new(config: &UnsubscribeConfig) -> anyhow::Result<Self> {
        let key = config.secret.resolve()?.into_bytes();
        anyhow::ensure!(key.len() >= 32, "compliance.unsubscribe.secret: at least 32 bytes");
        anyhow::ensure!(
            config.base_url.starts_with("http://") || config.base_url.starts_with("https://"),
            "compliance.unsubscribe.base_url: an http(s) URL"
        );
        Ok(UnsubscribeLinks { base_url: config.base_url.trim_end_matches('/').to_string(), key, ttl: config.ttl })
    }

    /// The link for a message sent now (`now_s`, Unix seconds).
    pub fn link(&self, tenant_id: &str, subject_id: &str, channel: Channel, purpose: Purpose, now_s: i64) -> String {
        let what = Unsubscribe {
            tenant_id: tenant_id.into(),
            subject_id: subject_id.into(),
            channel,
            purpose,
            expires_at_s: now_s.saturating_add(self.ttl.as_secs() as i64),
        };
        format!("{}/u/{}", self.base_url, self.mint(&what))
    }

    pub fn mint(&self, what: &Unsubscribe) -> String {
        let body = format!("v1.{}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(what).unwrap_or_default()));
        let sig = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// What a token unsubscribes, if it is ours, unchanged and not expired at `now_s`.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Unsubscribe, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let payload = body.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        // Constant time: a wrong signature says nothing about how close it came.
        self.mac(body.as_bytes()).verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let what: Unsubscribe = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now_s > what.expires_at_s {
            return Err(TokenError::Expired);
        }
        Ok(what)
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(secret: &str) -> UnsubscribeLinks {
        UnsubscribeLinks::new(&UnsubscribeConfig {
            base_url: "https://api.example.com/".into(),
            secret: Secret::Inline(secret.into()),
            ttl: Duration::from_secs(3600),
        })
        .unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_link_names_what_it_unsubscribes_until_it_expires() {
        let l = links(SECRET);
        let url = l.link("acme", "ann", Channel::Email, Purpose::Marketing, 1_000);
        let token = url.strip_prefix("https://api.example.com/u/").expect("the base URL, one slash");
        let what = l.verify(token, 1_000).unwrap();
        assert_eq!((what.tenant_id.as_str(), what.subject_id.as_str(), what.channel), ("acme", "ann", Channel::Email));
        assert_eq!(l.verify(token, 1_000 + 3600).map(|w| w.purpose), Ok(Purpose::Marketing));
        assert_eq!(l.verify(token, 1_000 + 3601), Err(TokenError::Expired));
    }

    #[test]
    fn a_changed_or_foreign_token_is_refused() {
        let l = links(SECRET);
        let token = l.mint(&Unsubscribe {
            tenant_id: "acme".into(),
            subject_id: "ann".into(),
            channel: Channel::Email,
            purpose: Purpose::Marketing,
            expires_at_s: 10_000,
        });
        // Another subject under the same signature.
        let (body, sig) = token.rsplit_once('.').unwrap();
        let forged_body = format!(
            "v1.{}",
            URL_SAFE_NO_PAD.encode(br#"{"t":"acme","s":"bob","c":"email","p":"marketing","e":10000}"#)
        );
        assert_eq!(l.verify(&format!("{forged_body}.{sig}"), 0), Err(TokenError::BadSignature));
        assert_eq!(links("another-secret-another-secret-xx").verify(&token, 0), Err(TokenError::BadSignature));
        assert_eq!(l.verify(body, 0), Err(TokenError::Malformed));
        assert_eq!(l.verify("", 0), Err(TokenError::Malformed));
        assert_eq!(l.verify(&"a".repeat(5000), 0), Err(TokenError::Malformed));
        assert!(UnsubscribeLinks::new(&UnsubscribeConfig {
            base_url: "https://x".into(),
            secret: Secret::Inline("short".into()),
            ttl: Duration::from_secs(1)
        })
        .is_err());
    }
}
