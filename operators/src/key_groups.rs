//! Key groups: how subject-keyed state is spread over workers.
//!
//! A subject belongs to one of [`KEY_GROUPS`] key groups (a stable hash of `tenant \0 subject`), and key
//! group `g` lives on worker `g mod W`. Co-location therefore does not depend on how producers
//! partitioned the topics, and a fixed number of key groups lets a pipeline restart with another worker
//! count (state is restored per key), as Flink's max parallelism does.

use touchpoint_schemas::SubjectRef;

/// Fixed number of key groups.
pub const KEY_GROUPS: u64 = 256;

pub fn key_group(subject: &SubjectRef) -> u64 {
    key_group_of(&subject.tenant_id, &subject.subject_id)
}

/// [`key_group`] of a subject given by its parts: the hash of `tenant \0 subject` (the
/// [`KeyBytes`](crate::fast_hash::KeyBytes) layout, checked by a test), on the stack for ids of usual
/// length (the exchange routes every event by it; building a `SubjectRef` and a buffer for that were
/// three allocations per event).
pub fn key_group_of(tenant_id: &str, subject_id: &str) -> u64 {
    const INLINE: usize = 256;
    let len = tenant_id.len() + subject_id.len() + 1;
    let fill = |buf: &mut [u8]| {
        buf[..tenant_id.len()].copy_from_slice(tenant_id.as_bytes());
        buf[tenant_id.len()] = 0;
        buf[tenant_id.len() + 1..].copy_from_slice(subject_id.as_bytes());
    };
    let hash = if len <= INLINE {
        let mut buf = [0u8; INLINE];
        fill(&mut buf[..len]);
        xxhash_rust::xxh3::xxh3_64(&buf[..len])
    } else {
        let mut buf = vec![0u8; len];
        fill(&mut buf);
        xxhash_rust::xxh3::xxh3_64(&buf)
    };
    hash % KEY_GROUPS
}

/// The worker that owns a subject's state.
pub fn owner(subject: &SubjectRef, peers: usize) -> usize {
    (key_group(subject) % peers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_the_hash_of_tenant_nul_subject_for_short_and_long_ids() {
        // Key groups decide which worker owns (and restores) a subject: they must not change.
        // The layout of every key hash (`KeyBytes`); here copied on the stack, being hashed per event.
        let reference = |tenant: &str, subject: &str| {
            crate::fast_hash::KeyBytes::default().part(tenant).raw(subject.as_bytes()).hash64() % KEY_GROUPS
        };
        let long = "x".repeat(300);
        for (tenant, subject) in [("acme", "user-42"), ("", ""), ("default", long.as_str()), (long.as_str(), "s")] {
            assert_eq!(key_group_of(tenant, subject), reference(tenant, subject), "{tenant:.10}/{subject:.10}");
            let s = SubjectRef { tenant_id: tenant.into(), subject_id: subject.into() };
            assert_eq!(key_group(&s), reference(tenant, subject));
        }
    }
}
