//! A circuit breaker per provider: opens after consecutive failures, half-opens after a cool-down to
//! let one trial through (a real attempt of a real message); while open, messages wait: no request is
//! made, nothing is failed, and no attempt is spent.

use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    #[serde(default = "default_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
}

fn default_failures() -> u32 {
    10
}
fn default_cool_down() -> Duration {
    Duration::from_secs(10)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failures: default_failures(), cool_down: default_cool_down() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial is out; everyone else waits for its outcome.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker { config, state: BreakerState::Closed { failures: 0 } }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a request go now? `Err(wait)` says when to ask again.
    pub fn permit(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open { until } => Err(until - now),
            BreakerState::HalfOpen => Err(Duration::from_millis(50)),
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// A transient failure (permanent ones say nothing about the provider's health).
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.config.failures => {
                BreakerState::Closed { failures: failures + 1 }
            }
            _ => BreakerState::Open { until: now + self.config.cool_down },
        };
    }
}

/// A breaker shared by every task of a worker.
#[derive(Debug, Clone)]
pub struct SharedBreaker(std::sync::Arc<std::sync::Mutex<CircuitBreaker>>);

impl SharedBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        SharedBreaker(std::sync::Arc::new(std::sync::Mutex::new(CircuitBreaker::new(config))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        match self.0.lock() {
            Ok(mut b) => f(&mut b),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Waits until the breaker lets a request through. `false` if that would be after `deadline` (the
    /// worker then hands the message back to be read again, rather than stop polling Kafka for long).
    pub async fn wait_for_permit(&self, deadline: Instant) -> bool {
        let mut logged = false;
        loop {
            match self.with(|b| b.permit(Instant::now())) {
                Ok(()) => return true,
                Err(wait) => {
                    if Instant::now() + wait > deadline {
                        return false;
                    }
                    if !logged {
                        tracing::warn!(?wait, "circuit breaker open; messages wait");
                        logged = true;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    pub fn on_success(&self) {
        self.with(CircuitBreaker::on_success);
    }

    pub fn on_failure(&self) {
        self.with(|b| b.on_failure(Instant::now()));
    }

    pub fn state(&self) -> BreakerState {
        self.with(|b| b.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig { failures: 3, cool_down: Duration::from_secs(5) })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let t = Instant::now();
        let mut b = breaker();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success();
        b.on_failure(t);
        b.on_failure(t);
        assert!(b.permit(t).is_ok(), "a success in between resets the count");
        b.on_failure(t);
        assert_eq!(b.permit(t + Duration::from_secs(1)), Err(Duration::from_secs(4)));
    }

    #[test]
    fn half_opens_after_the_cool_down_for_one_trial() {
        let t = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(5);
        assert!(b.permit(later).is_ok(), "the trial");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.permit(later).is_err(), "others wait for the trial");
        b.on_failure(later);
        assert_eq!(b.state(), BreakerState::Open { until: later + Duration::from_secs(5) }, "a failed trial re-opens");
        let again = later + Duration::from_secs(5);
        assert!(b.permit(again).is_ok());
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert!(b.permit(again).is_ok());
    }
}
