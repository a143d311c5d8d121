//! What protects the API from its callers: a token bucket of events per credential (`429`), and the
//! idempotency cache that answers a retried request with its first answer instead of producing again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use touchpoint_connectors::channels::rate_limit::TokenBucket;

use super::config::Caller;

/// One token bucket per credential that has a rate (credentials are the pipeline file's: bounded).
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimits {
    /// Takes `events` tokens from the caller's bucket, or says how long until they are there.
    pub fn take(&self, caller: &Caller, events: usize, now: Instant) -> Result<(), Duration> {
        let Some((rate, burst)) = caller.rate else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(caller.key_id.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .try_take_n(events as f64, now)
    }
}

/// The first answer to a request, kept for its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// What a request with an idempotency key finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not seen (or expired): go on, then [`Idempotency::finish`].
    New,
    /// Answered before: this is the answer, nothing is produced again.
    Replay(Answer),
    /// The same key is being answered right now.
    InFlight,
    /// The key came before with another body: a client bug, refused.
    Mismatch,
}

enum Entry {
    InFlight { body: u128, generation: u64 },
    Done { body: u128, answer: Answer, expires: Instant, generation: u64 },
}

impl Entry {
    fn generation(&self) -> u64 {
        match self {
            Entry::InFlight { generation, .. } | Entry::Done { generation, .. } => *generation,
        }
    }
    fn bytes(&self, key: &(String, String)) -> usize {
        let answer = match self {
            Entry::Done { answer, .. } => answer.body.len(),
            Entry::InFlight { .. } => 0,
        };
        key.0.len() + key.1.len() + answer + 64
    }
}

/// Keys by (credential, key), bounded in entries and bytes; the oldest go first. An entry that went
/// early only means a late retry is produced again, and the pipeline's dedupe drops its events (same
/// `event_id`s), so the bounds never cost correctness.
pub struct Idempotency {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    /// Insertion order (= expiry order, the TTL being one), with each entry's generation, so a stale
    /// position of a key that was re-inserted does not evict the new entry.
    order: VecDeque<((String, String), u64)>,
    bytes: usize,
    next_generation: u64,
}

/// The longest idempotency key taken (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

impl Idempotency {
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Idempotency { ttl, max_entries, max_bytes, inner: Mutex::default() }
    }

    pub fn claim(&self, caller: &str, key: &str, body: u128, now: Instant) -> Claim {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.expire(now);
        let k = (caller.to_string(), key.to_string());
        match inner.entries.get(&k) {
            Some(Entry::InFlight { body: b, .. }) if *b == body => return Claim::InFlight,
            Some(Entry::Done { body: b, answer, expires, .. }) if *expires > now => {
                return if *b == body { Claim::Replay(answer.clone()) } else { Claim::Mismatch };
            }
            Some(Entry::InFlight { .. }) => return Claim::Mismatch,
            _ => {}
        }
        let generation = inner.bump();
        inner.insert(k, Entry::InFlight { body, generation });
        inner.evict(self.max_entries, self.max_bytes);
        Claim::New
    }

    /// Records the answer of a claimed key, or forgets the key when the answer is not final (`429`,
    /// `503`: the retry must be tried for real).
    pub fn finish(&self, caller: &str, key: &str, body: u128, answer: Option<Answer>, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let k = (caller.to_string(), key.to_string());
        let Some(answer) = answer else {
            inner.remove(&k);
            return;
        };
        let generation = inner.bump();
        inner.insert(k, Entry::Done { body, answer, expires: now + self.ttl, generation });
        inner.evict(self.max_entries, self.max_bytes);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn insert(&mut self, k: (String, String), e: Entry) {
        self.bytes += e.bytes(&k);
        self.order.push_back((k.clone(), e.generation()));
        if let Some(old) = self.entries.insert(k.clone(), e) {
            self.bytes -= old.bytes(&k);
        }
    }

    fn remove(&mut self, k: &(String, String)) {
        if let Some(old) = self.entries.remove(k) {
            self.bytes -= old.bytes(k);
        }
    }

    /// Drops the oldest positions while over a bound.
    fn evict(&mut self, max_entries: usize, max_bytes: usize) {
        while self.entries.len() > max_entries || self.bytes > max_bytes || self.order.len() > 2 * max_entries + 16 {
            let Some((k, generation)) = self.order.pop_front() else { break };
            if self.entries.get(&k).is_some_and(|e| e.generation() == generation) {
                self.remove(&k);
            }
        }
    }

    /// Drops expired answers from the front (the oldest first; an answer in flight stops it, and is
    /// settled soon: the handler's guard finishes or forgets it).
    fn expire(&mut self, now: Instant) {
        while let Some((k, generation)) = self.order.front() {
            let expired = match self.entries.get(k) {
                Some(e) if e.generation() == *generation => match e {
                    Entry::Done { expires, .. } if *expires <= now => true,
                    _ => break,
                },
                // A stale position of a key answered or forgotten since.
                _ => false,
            };
            let Some((k, _)) = self.order.pop_front() else { break };
            if expired {
                self.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &'static str) -> Answer {
        Answer { status: StatusCode::ACCEPTED, body: Bytes::from_static(text.as_bytes()) }
    }

    #[test]
    fn a_retry_gets_the_first_answer_until_the_ttl() {
        let cache = Idempotency::new(Duration::from_secs(60), 100, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(cache.claim("web", "k1", 7, t0), Claim::New);
        assert_eq!(cache.claim("web", "k1", 7, t0), Claim::InFlight, "the same request, still being answered");
        cache.finish("web", "k1", 7, Some(answer("first")), t0);
        assert_eq!(cache.claim("web", "k1", 7, t0 + Duration::from_secs(59)), Claim::Replay(answer("first")));
        assert_eq!(cache.claim("web", "k1", 8, t0), Claim::Mismatch, "another body under the same key");
        assert_eq!(cache.claim("other", "k1", 8, t0), Claim::New, "keys are per credential");
        assert_eq!(cache.claim("web", "k1", 7, t0 + Duration::from_secs(61)), Claim::New, "expired");
    }

    #[test]
    fn an_answer_that_is_not_final_is_forgotten() {
        let cache = Idempotency::new(Duration::from_secs(60), 100, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(cache.claim("web", "k", 1, t0), Claim::New);
        cache.finish("web", "k", 1, None, t0);
        assert_eq!(cache.claim("web", "k", 1, t0), Claim::New, "a 503 is tried again for real");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes() {
        let t0 = Instant::now();
        let cache = Idempotency::new(Duration::from_secs(60), 10, 1 << 20);
        for i in 0..1000u128 {
            let key = format!("k{i}");
            assert_eq!(cache.claim("web", &key, i, t0), Claim::New);
            cache.finish("web", &key, i, Some(answer("ok")), t0);
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.claim("web", "k999", 999, t0), Claim::Replay(answer("ok")), "the newest stay");
        let big = Answer { status: StatusCode::ACCEPTED, body: Bytes::from(vec![b'x'; 10_000]) };
        let cache = Idempotency::new(Duration::from_secs(60), 1000, 50_000);
        for i in 0..100u128 {
            let key = format!("k{i}");
            let _ = cache.claim("web", &key, i, t0);
            cache.finish("web", &key, i, Some(big.clone()), t0);
        }
        assert!(cache.len() <= 5, "{} answers of 10 kB under 50 kB", cache.len());
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= 50_000 && inner.order.len() <= 2 * 1000 + 16);
    }

    #[test]
    fn a_bucket_refuses_a_batch_over_its_tokens_and_says_when() {
        let limits = RateLimits::default();
        let caller =
            Caller { key_id: "web".into(), tenant: "acme".into(), rate: Some((100.0, 500.0)), internal: false };
        let t0 = Instant::now();
        assert!(limits.take(&caller, 500, t0).is_ok());
        let wait = limits.take(&caller, 100, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        assert!(limits.take(&caller, 100, t0 + Duration::from_secs(1)).is_ok());
        let free = Caller { rate: None, ..caller };
        assert!(limits.take(&free, 10_000, t0).is_ok());
    }
}
