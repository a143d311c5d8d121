//! Records that wait for the schema registry, without blocking a timely worker.
//!
//! A record whose schema cannot be fetched (registry down) is not at fault: it must neither be
//! dead-lettered nor overtaken by the records behind it. Sleeping in the operator until the registry
//! answers would stall the whole worker: no other operator steps, no offsets commit, a stop request
//! is not seen. Instead the operator keeps the record, and everything that arrives after it, here, with
//! capabilities for the record's epoch (so the epoch cannot complete), and asks timely to activate it
//! again after a backoff.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use timely::dataflow::operators::{Capability, InputCapability};
use timely::scheduling::Activator;
use touchpoint_connectors::kafka::SourceRecord;
use touchpoint_connectors::Backoff;
use touchpoint_schemas::SourcePosition;

use super::normalize::RegistryUnavailable;
use super::Epoch;

const REGISTRY_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Records held back, in arrival order: one entry per container, with one capability per output.
#[derive(Default)]
pub struct RegistryWait {
    queue: VecDeque<(Vec<Capability<Epoch>>, VecDeque<SourceRecord>)>,
    attempt: u32,
    not_before: Option<Instant>,
}

impl RegistryWait {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Keeps `records` (of the epoch of `cap`) behind what already waits.
    pub fn hold(&mut self, cap: &InputCapability<Epoch>, outputs: usize, records: VecDeque<SourceRecord>) {
        if records.is_empty() {
            return;
        }
        let caps = (0..outputs).filter_map(|port| cap.retain_least(port)).collect();
        self.queue.push_back((caps, records));
    }

    /// Runs `container` on each waiting container whose try is due, oldest first, with its capabilities
    /// (one per output, for the sessions). `container` takes records from the front and hands back the
    /// one the registry could not serve, if any: it goes back in front of the rest, and they all wait for
    /// the backoff. Then asks for an activation when records still wait.
    pub fn run_due(
        &mut self,
        activator: &Activator,
        mut container: impl FnMut(&[Capability<Epoch>], &mut VecDeque<SourceRecord>) -> Option<RegistryUnavailable>,
    ) {
        while let Some((caps, mut records)) = self.take_due() {
            let blocked = container(&caps, &mut records);
            let stop = blocked.is_some();
            if let Some(b) = blocked {
                self.failed(&b.position, &b.why);
                records.push_front(b.record);
            }
            self.put_back(caps, records);
            if stop {
                break;
            }
        }
        if let Some(delay) = self.retry_in() {
            activator.activate_after(delay);
        }
    }

    /// The registry failed for the record at `position`: the next try waits for the backoff.
    fn failed(&mut self, position: &SourcePosition, why: &str) {
        let delay = REGISTRY_RETRY.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.not_before = Some(Instant::now() + delay);
        tracing::warn!(%why, topic = %position.topic, partition = position.partition, offset = position.offset,
            retry_in = ?delay, "schema registry unavailable; the record and those after it wait");
    }

    /// How long until the next try, if records wait (for an activation after it).
    fn retry_in(&self) -> Option<Duration> {
        if self.queue.is_empty() {
            return None;
        }
        Some(self.not_before.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now())))
    }

    /// The oldest waiting container, when its next try is due.
    fn take_due(&mut self) -> Option<(Vec<Capability<Epoch>>, VecDeque<SourceRecord>)> {
        if self.not_before.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.queue.pop_front()
    }

    /// Puts back what is left of a container [`take_due`](Self::take_due) gave (at the front), or
    /// notes that it went through.
    fn put_back(&mut self, caps: Vec<Capability<Epoch>>, rest: VecDeque<SourceRecord>) {
        if rest.is_empty() {
            self.attempt = 0;
        } else {
            self.queue.push_front((caps, rest));
        }
    }
}
