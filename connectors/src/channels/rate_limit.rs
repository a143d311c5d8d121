//! Per-provider rate limits: a token bucket refilled continuously, with a burst.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// `per_second` or `per_minute` (one of them), and how many may go at once after a quiet spell.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub per_second: Option<f64>,
    #[serde(default)]
    pub per_minute: Option<f64>,
    /// Bucket size; default one second's worth (at least 1).
    #[serde(default)]
    pub burst: Option<f64>,
}

impl RateLimitConfig {
    /// Tokens per second, or `None` for no limit.
    pub fn rate(&self) -> Option<f64> {
        self.per_second.or(self.per_minute.map(|m| m / 60.0)).filter(|r| *r > 0.0)
    }
}

/// The bucket itself; time is passed in, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate_per_second: f64, burst: f64, now: Instant) -> Self {
        let capacity = burst.max(1.0);
        TokenBucket { rate: rate_per_second, capacity, tokens: capacity, last: now }
    }

    pub fn from_config(c: &RateLimitConfig, now: Instant) -> Option<Self> {
        let rate = c.rate()?;
        Some(TokenBucket::new(rate, c.burst.unwrap_or(rate), now))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.try_take_n(1.0, now)
    }

    /// Takes `n` tokens at once (a batch), or says how long until they are there. Nothing is taken
    /// when they are not, so a refused batch costs nothing.
    pub fn try_take_n(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
}

/// A bucket shared by every task of a worker; `acquire` waits for a token.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bucket: Option<std::sync::Arc<std::sync::Mutex<TokenBucket>>>,
}

impl RateLimiter {
    pub fn new(config: Option<&RateLimitConfig>) -> Self {
        let bucket = config
            .and_then(|c| TokenBucket::from_config(c, Instant::now()))
            .map(|b| std::sync::Arc::new(std::sync::Mutex::new(b)));
        RateLimiter { bucket }
    }

    pub fn unlimited() -> Self {
        RateLimiter { bucket: None }
    }

    pub async fn acquire(&self) {
        let Some(bucket) = &self.bucket else { return };
        loop {
            let wait = match bucket.lock() {
                Ok(mut b) => b.try_take(Instant::now()),
                Err(poisoned) => poisoned.into_inner().try_take(Instant::now()),
            };
            match wait {
                Ok(()) => return,
                Err(d) => tokio::time::sleep(d).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_the_burst_through_then_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(150)).is_err());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 5.0, t0);
        // Ask every millisecond for 10 s: 5 (burst) + 50/s × 10 s get through.
        let taken = (0..10_000).filter(|ms| b.try_take(t0 + Duration::from_millis(*ms)).is_ok()).count();
        assert!((504..=506).contains(&taken), "{taken}");
    }

    #[test]
    fn the_bucket_never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 2.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn per_minute_is_a_rate_too() {
        let c = RateLimitConfig { per_second: None, per_minute: Some(120.0), burst: None };
        assert_eq!(c.rate(), Some(2.0));
        assert_eq!(RateLimitConfig { per_second: None, per_minute: None, burst: None }.rate(), None);
    }
}
