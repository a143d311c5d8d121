//! Hash maps and sets of the operators' per-event paths, and the hex ids made from hashes.
//!
//! The standard library's SipHash was about 8% of the operator chain (callgrind): subjects, event types
//! and event ids are hashed several times per event. foldhash is several times faster on short keys and,
//! like SipHash, seeded at random per process, so producers cannot choose keys that collide.

/// A `HashMap` with foldhash.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash.
pub type FastHashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// `prefix` then `hash` as 32 lower-case hex digits: what `format!("{prefix}{hash:032x}")` writes, without
/// the formatting machinery (padding and a growing string cost ~1,000 instructions per id, and event ids,
/// idempotency keys and journey send keys are made several times per event).
pub fn hex_id(prefix: &str, hash: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = DIGITS[((hash >> ((31 - i) * 4)) & 0xf) as usize];
    }
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    // Always ASCII hex digits.
    id.push_str(std::str::from_utf8(&digits).unwrap_or_default());
    id
}

/// The bytes a deterministic key is hashed from: text parts each followed by a NUL (so that `("ab", "c")`
/// and `("a", "bc")` differ), and raw bytes where the layout ends with a number or free text. One
/// builder for every key of the pipeline (event ids, dedupe keys, idempotency keys, journey send keys,
/// split buckets), so their layouts are written the same way; each key's layout must never change (the
/// keys are stored: in ledgers, ClickHouse rows, dedupe state).
#[derive(Debug, Default)]
pub struct KeyBytes(Vec<u8>);

impl KeyBytes {
    pub fn with_capacity(capacity: usize) -> Self {
        KeyBytes(Vec::with_capacity(capacity))
    }

    /// `text`, then a NUL.
    pub fn part(mut self, text: &str) -> Self {
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
        self
    }

    /// `bytes` as they are (no separator).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn hash64(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.0)
    }

    pub fn hash128(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{hex_id, KeyBytes};

    #[test]
    fn parts_are_separated_and_the_layout_is_the_bytes_written() {
        let ab_c = KeyBytes::default().part("ab").part("c");
        let a_bc = KeyBytes::default().part("a").part("bc");
        assert_ne!(ab_c.hash128(), a_bc.hash128());
        assert_eq!(ab_c.hash64(), xxhash_rust::xxh3::xxh3_64(b"ab\0c\0"));
        assert_eq!(KeyBytes::default().part("t").raw(b"e").hash128(), xxhash_rust::xxh3::xxh3_128(b"t\0e"));
    }

    #[test]
    fn hex_ids_are_what_format_writes() {
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for v in [0, 1, 0xf, 1 << 64, u128::MAX, u128::MAX - 1, x] {
            assert_eq!(hex_id("tp-", v), format!("tp-{v:032x}"));
        }
        for _ in 0..1_000 {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d_2545_f491_4f6c_dd1d).wrapping_add(0x9e37);
            assert_eq!(hex_id("tpk-", x), format!("tpk-{x:032x}"));
        }
        assert_eq!(hex_id("", 0xabc), format!("{:032x}", 0xabc));
    }
}
