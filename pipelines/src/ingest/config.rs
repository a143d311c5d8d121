//! The `ingest:` section of a pipeline file, checked once into [`IngestSettings`].

use std::collections::HashMap;

use serde::Deserialize;

/// As written in the pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// `host:port` the API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most events in one request (a batch).
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Most bytes of one request body.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most bytes of one event (its JSON).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// API keys: each names its tenant and the SHA-256 of the key (hex), never the key itself.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs (which key was used), not secret.
    pub id: String,
    pub tenant: String,
    /// `sha256sum` of the key, lower-case hex.
    pub sha256: String,
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

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: default_listen(),
            max_events: default_max_events(),
            max_request_bytes: default_max_request_bytes(),
            max_event_bytes: default_max_event_bytes(),
            api_keys: Vec::new(),
        }
    }
}

/// A caller the API knows: the key's id and the tenant its events belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub tenant: String,
}

/// The section, checked.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub listen: String,
    pub max_events: usize,
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    /// SHA-256 of a key → its caller.
    keys: HashMap<[u8; 32], Caller>,
}

/// An `ingest:` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    #[error("ingest.api_keys.{0}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)")]
    BadHash(String),
    #[error("ingest.api_keys: id {0:?} is used twice")]
    DuplicateId(String),
    #[error("ingest.api_keys.{0}: the same key hash as another key")]
    DuplicateKey(String),
    #[error("ingest.api_keys.{0}: tenant must not be empty")]
    NoTenant(String),
    #[error("ingest.{0} must be greater than zero")]
    Zero(&'static str),
}

impl IngestSettings {
    pub fn new(config: &IngestConfig) -> Result<Self, IngestConfigError> {
        for (name, value) in [
            ("max_events", config.max_events),
            ("max_request_bytes", config.max_request_bytes),
            ("max_event_bytes", config.max_event_bytes),
        ] {
            if value == 0 {
                return Err(IngestConfigError::Zero(name));
            }
        }
        let mut keys = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for k in &config.api_keys {
            if !ids.insert(k.id.as_str()) {
                return Err(IngestConfigError::DuplicateId(k.id.clone()));
            }
            if k.tenant.trim().is_empty() {
                return Err(IngestConfigError::NoTenant(k.id.clone()));
            }
            let hash = parse_hash(&k.sha256).ok_or_else(|| IngestConfigError::BadHash(k.id.clone()))?;
            let caller = Caller { key_id: k.id.clone(), tenant: k.tenant.clone() };
            if keys.insert(hash, caller).is_some() {
                return Err(IngestConfigError::DuplicateKey(k.id.clone()));
            }
        }
        Ok(IngestSettings {
            listen: config.listen.clone(),
            max_events: config.max_events,
            max_request_bytes: config.max_request_bytes,
            max_event_bytes: config.max_event_bytes,
            keys,
        })
    }

    /// The caller a presented key belongs to. Compared by hash: the file holds no key, and a lookup by
    /// hash leaks nothing about how close a wrong key came.
    pub fn caller(&self, key: &str) -> Option<&Caller> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        self.keys.get(&hash)
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

    #[test]
    fn a_key_is_found_by_its_hash_and_names_its_tenant() {
        let config = IngestConfig {
            api_keys: vec![ApiKeyConfig { id: "web".into(), tenant: "acme".into(), sha256: hash_of("s3cret") }],
            ..IngestConfig::default()
        };
        let s = IngestSettings::new(&config).unwrap();
        assert_eq!(s.caller("s3cret").map(|c| c.tenant.as_str()), Some("acme"));
        assert!(s.caller("s3cret ").is_none());
        assert!(s.caller("").is_none());
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_named() {
        let key = |id: &str, sha256: &str| ApiKeyConfig { id: id.into(), tenant: "acme".into(), sha256: sha256.into() };
        let with = |keys| IngestConfig { api_keys: keys, ..IngestConfig::default() };
        let e = IngestSettings::new(&with(vec![key("web", "s3cret")])).unwrap_err().to_string();
        assert!(e.contains("ingest.api_keys.web") && e.contains("64 hex"), "{e}");
        let e = IngestSettings::new(&with(vec![key("a", ACME), key("b", ACME)])).unwrap_err().to_string();
        assert!(e.contains("ingest.api_keys.b"), "{e}");
        let e = IngestSettings::new(&IngestConfig { max_events: 0, ..IngestConfig::default() }).unwrap_err();
        assert!(e.to_string().contains("max_events"));
    }
}
