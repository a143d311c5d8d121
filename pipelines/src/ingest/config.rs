//! The `ingest:` section of a pipeline file, checked once into [`IngestSettings`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use touchpoint_connectors::channels::config::Secret;

/// As written in the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// `host:port` the API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `host:port` of the internal API (`/internal/automation/...`) for trusted services, apart from the
    /// public one so that it can be firewalled; none: no internal API.
    #[serde(default)]
    pub internal_listen: Option<String>,
    /// Most events in one request (a batch).
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Most bytes of one request body.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most bytes of one event (its JSON).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// A client has this long to send its request headers, and again its body (`408` after it).
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Events per second per credential (a token bucket); a credential's own `rate_limit` overrides it.
    #[serde(default)]
    pub rate_limit: Option<RateConfig>,
    /// How long an `Idempotency-Key` (or a signed request's `webhook-id`) is remembered, and how many.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// How far a signed request's `webhook-timestamp` may be from the server's clock.
    #[serde(default = "default_signature_tolerance", with = "humantime_serde")]
    pub signature_tolerance: Duration,
    /// API keys: bearer keys (their SHA-256, never the key) or signing secrets (HMAC-signed bodies).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// HTTPS, and client certificates (mTLS) when `client_ca` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Services known by their client certificate: a DNS or URI name of the certificate (or its
    /// common name) → the tenant.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and audits (which key was used), not secret.
    pub id: String,
    pub tenant: String,
    /// A bearer key: `sha256sum` of the key, lower-case hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A signing key: requests are signed as Standard Webhooks sign them (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`) and name the key in `tp-key-id`.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    #[serde(default)]
    pub rate_limit: Option<RateConfig>,
    /// May call the internal API (trigger a journey or rule directly).
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Events per second, refilled continuously.
    pub per_second: f64,
    /// Events at once after a quiet spell; default one second's worth, and at least `max_events` (a
    /// full batch must be able to pass).
    #[serde(default)]
    pub burst: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    #[serde(default = "default_idempotency_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(default = "default_idempotency_entries")]
    pub max_entries: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig { ttl: default_idempotency_ttl(), max_entries: default_idempotency_entries() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (relative paths: to the pipeline file).
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates: set, the server asks for one (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse the handshake without a client certificate (else a client may use an API key instead).
    #[serde(default)]
    pub require_client_certificate: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    pub tenant: String,
    /// A DNS or URI subject-alternative name of the certificate, or its common name.
    pub name: String,
    #[serde(default)]
    pub rate_limit: Option<RateConfig>,
    /// May call the internal API.
    #[serde(default)]
    pub internal: bool,
}

fn default_listen() -> String {
    "127.0.0.1:18200".into()
}
fn default_max_events() -> usize {
    500
}
fn default_max_request_bytes() -> usize {
    512 * 1024
}
fn default_max_event_bytes() -> usize {
    32 * 1024
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_signature_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_idempotency_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_idempotency_entries() -> usize {
    100_000
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: default_listen(),
            internal_listen: None,
            max_events: default_max_events(),
            max_request_bytes: default_max_request_bytes(),
            max_event_bytes: default_max_event_bytes(),
            read_timeout: default_read_timeout(),
            rate_limit: None,
            idempotency: IdempotencyConfig::default(),
            signature_tolerance: default_signature_tolerance(),
            api_keys: Vec::new(),
            tls: None,
            clients: Vec::new(),
        }
    }
}

/// A caller the API knows: the credential's id and the tenant its events belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub key_id: String,
    pub tenant: String,
    /// Events per second and burst for this caller, if limited.
    pub rate: Option<(f64, f64)>,
    /// May call the internal API.
    pub internal: bool,
}

/// The section, checked.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub listen: String,
    pub internal_listen: Option<String>,
    pub max_events: usize,
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    pub read_timeout: Duration,
    pub signature_tolerance: Duration,
    pub idempotency_ttl: Duration,
    pub idempotency_entries: usize,
    pub tls: Option<TlsConfig>,
    /// SHA-256 of a bearer key → its caller.
    keys: HashMap<[u8; 32], Caller>,
    /// Signing key id → (HMAC key, caller).
    signing: HashMap<String, (Vec<u8>, Caller)>,
    /// Certificate name → caller.
    clients: HashMap<String, Caller>,
}

/// An `ingest:` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    #[error("ingest.api_keys.{0}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)")]
    BadHash(String),
    #[error("ingest.api_keys.{0}: give either sha256 (a bearer key) or signing_secret (signed requests)")]
    OneKind(String),
    #[error("ingest.api_keys.{0}: signing_secret: {1}")]
    BadSecret(String, String),
    #[error("ingest: credential id {0:?} is used twice (api_keys and clients share one namespace)")]
    DuplicateId(String),
    #[error("ingest.api_keys.{0}: the same key hash as another key")]
    DuplicateKey(String),
    #[error("ingest.clients.{0}: the certificate name {1:?} is another client's too")]
    DuplicateName(String, String),
    #[error("ingest.{0}: tenant must not be empty")]
    NoTenant(String),
    #[error("ingest.{0} must be greater than zero")]
    Zero(String),
    #[error("ingest.clients needs tls.client_ca: without it no client certificate is asked for")]
    ClientsWithoutCa,
}

impl IngestSettings {
    pub fn new(config: &IngestConfig) -> Result<Self, IngestConfigError> {
        for (name, value) in [
            ("max_events", config.max_events),
            ("max_request_bytes", config.max_request_bytes),
            ("max_event_bytes", config.max_event_bytes),
            ("idempotency.max_entries", config.idempotency.max_entries),
        ] {
            if value == 0 {
                return Err(IngestConfigError::Zero(name.into()));
            }
        }
        if config.read_timeout.is_zero() {
            return Err(IngestConfigError::Zero("read_timeout".into()));
        }
        let rate = |own: &Option<RateConfig>, at: String| -> Result<Option<(f64, f64)>, IngestConfigError> {
            match own.as_ref().or(config.rate_limit.as_ref()) {
                None => Ok(None),
                Some(r) if r.per_second <= 0.0 || !r.per_second.is_finite() => {
                    Err(IngestConfigError::Zero(format!("{at}rate_limit.per_second")))
                }
                // A full batch must fit in the bucket, or it would be refused forever.
                Some(r) => Ok(Some((r.per_second, r.burst.unwrap_or(r.per_second).max(config.max_events as f64)))),
            }
        };
        let mut keys = HashMap::new();
        let mut signing = HashMap::new();
        let mut clients = HashMap::new();
        // Ids are one namespace across keys and clients (they name rate buckets and audit headers).
        let mut ids = HashSet::new();
        let mut caller = |section: &str, id: &str, tenant: &str, own_rate: &Option<RateConfig>, internal: bool| {
            if !ids.insert(id.to_string()) {
                return Err(IngestConfigError::DuplicateId(id.to_string()));
            }
            if tenant.trim().is_empty() {
                return Err(IngestConfigError::NoTenant(format!("{section}.{id}")));
            }
            let rate = rate(own_rate, format!("{section}.{id}."))?;
            Ok(Caller { key_id: id.to_string(), tenant: tenant.to_string(), rate, internal })
        };
        for k in &config.api_keys {
            let caller = caller("api_keys", &k.id, &k.tenant, &k.rate_limit, k.internal)?;
            match (&k.sha256, &k.signing_secret) {
                (Some(hex), None) => {
                    let hash = parse_hash(hex).ok_or_else(|| IngestConfigError::BadHash(k.id.clone()))?;
                    if keys.insert(hash, caller).is_some() {
                        return Err(IngestConfigError::DuplicateKey(k.id.clone()));
                    }
                }
                (None, Some(secret)) => {
                    let text =
                        secret.resolve().map_err(|e| IngestConfigError::BadSecret(k.id.clone(), e.to_string()))?;
                    let key = touchpoint_connectors::channels::webhook::mapping::signing_key(&text)
                        .map_err(|e| IngestConfigError::BadSecret(k.id.clone(), e.to_string()))?;
                    if key.len() < 16 {
                        return Err(IngestConfigError::BadSecret(k.id.clone(), "at least 16 bytes".into()));
                    }
                    signing.insert(k.id.clone(), (key, caller));
                }
                _ => return Err(IngestConfigError::OneKind(k.id.clone())),
            }
        }
        if !config.clients.is_empty() && config.tls.as_ref().and_then(|t| t.client_ca.as_ref()).is_none() {
            return Err(IngestConfigError::ClientsWithoutCa);
        }
        for c in &config.clients {
            let caller = caller("clients", &c.id, &c.tenant, &c.rate_limit, c.internal)?;
            if clients.insert(c.name.clone(), caller).is_some() {
                return Err(IngestConfigError::DuplicateName(c.id.clone(), c.name.clone()));
            }
        }
        Ok(IngestSettings {
            listen: config.listen.clone(),
            internal_listen: config.internal_listen.clone(),
            max_events: config.max_events,
            max_request_bytes: config.max_request_bytes,
            max_event_bytes: config.max_event_bytes,
            read_timeout: config.read_timeout,
            signature_tolerance: config.signature_tolerance,
            idempotency_ttl: config.idempotency.ttl,
            idempotency_entries: config.idempotency.max_entries,
            tls: config.tls.clone(),
            keys,
            signing,
            clients,
        })
    }

    /// The caller a presented bearer key belongs to. Compared by hash: the file holds no key, and a
    /// lookup by hash leaks nothing about how close a wrong key came.
    pub fn caller(&self, key: &str) -> Option<&Caller> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        self.keys.get(&hash)
    }

    /// A signing key by its id: the HMAC key and its caller.
    pub fn signing_key(&self, id: &str) -> Option<(&[u8], &Caller)> {
        self.signing.get(id).map(|(k, c)| (k.as_slice(), c))
    }

    /// The client a certificate name belongs to.
    pub fn client(&self, name: &str) -> Option<&Caller> {
        self.clients.get(name)
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("test-key-acme")
    const ACME: &str = "6d1c3f2ef2b1f7e3fb7a63f6e07d6b2a5de9c2d0a2cde0f5e7c3f60c2b8e5d41";

    fn hash_of(key: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn bearer(id: &str, sha256: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            tenant: "acme".into(),
            sha256: Some(sha256.into()),
            signing_secret: None,
            rate_limit: None,
            internal: false,
        }
    }

    #[test]
    fn a_key_is_found_by_its_hash_and_names_its_tenant() {
        let config = IngestConfig { api_keys: vec![bearer("web", &hash_of("s3cret"))], ..IngestConfig::default() };
        let s = IngestSettings::new(&config).unwrap();
        assert_eq!(s.caller("s3cret").map(|c| c.tenant.as_str()), Some("acme"));
        assert!(s.caller("s3cret ").is_none());
        assert!(s.caller("").is_none());
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_named() {
        let with = |keys| IngestConfig { api_keys: keys, ..IngestConfig::default() };
        let e = IngestSettings::new(&with(vec![bearer("web", "s3cret")])).unwrap_err().to_string();
        assert!(e.contains("ingest.api_keys.web") && e.contains("64 hex"), "{e}");
        let e = IngestSettings::new(&with(vec![bearer("a", ACME), bearer("b", ACME)])).unwrap_err().to_string();
        assert!(e.contains("ingest.api_keys.b"), "{e}");
        let e = IngestSettings::new(&IngestConfig { max_events: 0, ..IngestConfig::default() }).unwrap_err();
        assert!(e.to_string().contains("max_events"));
        let mut both = bearer("both", ACME);
        both.signing_secret = Some(Secret::Inline("0123456789abcdef0123".into()));
        let e = IngestSettings::new(&with(vec![both])).unwrap_err().to_string();
        assert!(e.contains("api_keys.both") && e.contains("either"), "{e}");
        let mut short = bearer("short", ACME);
        short.sha256 = None;
        short.signing_secret = Some(Secret::Inline("tiny".into()));
        let e = IngestSettings::new(&with(vec![short])).unwrap_err().to_string();
        assert!(e.contains("api_keys.short") && e.contains("16 bytes"), "{e}");
        let client = ClientConfig {
            id: "crm".into(),
            tenant: "acme".into(),
            name: "crm.acme".into(),
            rate_limit: None,
            internal: false,
        };
        let e = IngestSettings::new(&IngestConfig { clients: vec![client], ..IngestConfig::default() }).unwrap_err();
        assert!(e.to_string().contains("client_ca"), "{e}");
    }

    #[test]
    fn a_rate_limit_always_lets_a_full_batch_through() {
        let config = IngestConfig {
            rate_limit: Some(RateConfig { per_second: 100.0, burst: None }),
            api_keys: vec![bearer("web", ACME)],
            ..IngestConfig::default()
        };
        let s = IngestSettings::new(&config).unwrap();
        let caller = s.keys.values().next().unwrap();
        assert_eq!(caller.rate, Some((100.0, 500.0)), "burst raised to max_events");
    }
}
