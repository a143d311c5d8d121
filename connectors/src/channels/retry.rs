//! Retries of transient failures: exponential backoff with jitter, honoring `Retry-After`.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per message, the first included; after the last the message is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles for every further one.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The longest `Retry-After` honored; a provider asking for more is waited for this long.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

fn default_max_attempts() -> u32 {
    6
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based). Without `Retry-After`: "equal jitter", half
    /// of `min(max, initial·2^(attempt-1))` plus a random part of the other half, so many workers that
    /// failed together do not come back together, yet every wait keeps half its backoff. With
    /// `Retry-After`: exactly what the provider asked (capped at `max_retry_after`).
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, unit_random: f64) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let ceiling = crate::Backoff::new(self.initial_backoff, self.max_backoff).delay(attempt.saturating_sub(1));
        let half = ceiling / 2;
        half + half.mul_f64(unit_random.clamp(0.0, 1.0))
    }

    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); a date in the past is zero.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn backoff_doubles_up_to_the_ceiling_with_jitter_in_the_upper_half() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(p.backoff(1, None, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, None, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, None, 0.5), Duration::from_millis(300));
        assert_eq!(p.backoff(10, None, 1.0), Duration::from_secs(1));
        assert_eq!(p.backoff(10, None, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff(u32::MAX, None, 1.0), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, Some(Duration::from_secs(7)), 0.9), Duration::from_secs(7));
        assert_eq!(p.backoff(1, Some(Duration::from_secs(3600)), 0.9), Duration::from_secs(300));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(12)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn attempts_are_counted_from_one() {
        let p = RetryPolicy { max_attempts: 3, ..Default::default() };
        assert!(!p.exhausted(2));
        assert!(p.exhausted(3));
    }
}
