//! Hash maps and sets of the operators' per-event paths.
//!
//! The standard library's SipHash was about 8% of the operator chain (callgrind): subjects, event types
//! and event ids are hashed several times per event. foldhash is several times faster on short keys and,
//! like SipHash, seeded at random per process, so producers cannot choose keys that collide.

/// A `HashMap` with foldhash.
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash.
pub type FastHashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
