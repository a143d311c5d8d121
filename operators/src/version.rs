//! Versions of rule sets and journey files: a hash of their canonical JSON form (field order fixed by
//! the types, formatting and comments of the source file gone), recorded with every decision and step.

use serde::Serialize;

/// The content hash of `config`'s canonical JSON form.
pub fn config_hash<T: Serialize>(config: &T) -> Result<u64, serde_json::Error> {
    serde_json::to_vec(config).map(|bytes| xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// `<prefix>-<16 hex digits of the content hash>`, e.g. `caps-0123456789abcdef`.
pub fn config_version<T: Serialize>(prefix: &str, config: &T) -> Result<String, serde_json::Error> {
    Ok(format!("{prefix}-{:016x}", config_hash(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_follows_the_content_not_the_instance() {
        let a = config_version("caps", &serde_json::json!({"rules": [1, 2]})).unwrap();
        let b = config_version("caps", &serde_json::json!({"rules": [1, 2]})).unwrap();
        let c = config_version("caps", &serde_json::json!({"rules": [2, 1]})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("caps-") && a.len() == "caps-".len() + 16, "{a}");
    }
}
