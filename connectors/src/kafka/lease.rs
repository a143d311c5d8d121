//! One instance of a pipeline at a time: a lease held through Kafka's own group membership.
//!
//! Two `touchpoint run` of one pipeline (a rolling deploy with surge) or a `replay` during a live run
//! would each restore the keyed state and decide and send on their own. Under `exactly_once_v2` the
//! transactional id fences the older one, but only when it next commits, and the other guarantees have
//! no fence at all. So every instance first takes the pipeline's lease: the single partition of the
//! topic `<group>.lease`, assigned through the consumer group `<group>.lease-<process>` with the
//! cooperative-sticky assignor. The holder keeps the partition while it lives (a new member does not
//! take it away); a second instance gets nothing and waits, or fails when told not to wait. When the
//! holder stops, it leaves the group and the next one gets the partition at once; when it is killed, a
//! session timeout ([`SESSION_TIMEOUT`]) later.
//!
//! The holder learns that it lost the lease (its session expired, e.g. cut off from the coordinator)
//! from a revocation: from then on it reads nothing new ([`Lease::held`]), and after [`LOST_GRACE`]
//! without getting it back it is stopped through `on_lost`. A broker restart shorter than that costs a
//! pause, not the run. Nothing is written to the lease topic; it only anchors the assignment. Works the
//! same on any Kafka-protocol cluster (group membership is part of the protocol).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use super::config::{KafkaConfig, TopicSpec};

/// How long the broker waits for a silent holder (killed, or cut off) before giving the lease to the
/// next instance. The broker's `group.min.session.timeout.ms` defaults to 6 s.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a holder that lost the lease may wait to get it back before it stops.
pub const LOST_GRACE: Duration = Duration::from_secs(60);
/// How often a waiting instance says what it waits for.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The lease topic of a pipeline group: one partition, no data.
pub fn lease_topic(group_id: &str) -> TopicSpec {
    TopicSpec { name: format!("{group_id}.lease"), partitions: 1, retention: None, compacted: false }
}

/// What to do when another instance holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWait {
    /// Wait until it is free (a rolling deploy: the new instance starts when the old one stops).
    UntilFree,
    /// Fail at once (a replay must not wait behind a live run that never ends).
    Fail,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another instance of pipeline group {group} is running (it holds the lease {topic}, consumer group \
         {lease_group}); stop it first"
    )]
    Held { group: String, topic: String, lease_group: String },
    #[error("stop requested while waiting for the lease of pipeline group {group}")]
    Stopped { group: String },
    #[error("starting the lease thread: {0}")]
    Thread(std::io::Error),
    #[error("taking the lease of pipeline group {group}: {source}")]
    Kafka { group: String, source: rdkafka::error::KafkaError },
}

/// What the group's answers say, shared between the polling thread and the lease.
#[derive(Default)]
struct LeaseState {
    held: AtomicBool,
    /// A rebalance finished without giving us the partition: someone else has it.
    refused: AtomicBool,
    /// When the lease was lost (revoked while held).
    lost_at: Mutex<Option<Instant>>,
    /// Being dropped: a revocation now is the release, not a loss.
    closing: AtomicBool,
}

struct LeaseContext {
    state: Arc<LeaseState>,
    topic: String,
}

impl ClientContext for LeaseContext {}

impl ConsumerContext for LeaseContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ours = |tpl: &rdkafka::TopicPartitionList| tpl.elements().iter().any(|e| e.topic() == self.topic);
        match rebalance {
            Rebalance::Assign(tpl) if ours(tpl) => {
                self.state.held.store(true, Ordering::SeqCst);
                if let Ok(mut lost) = self.state.lost_at.lock() {
                    if lost.take().is_some() {
                        tracing::info!(topic = %self.topic, "lease taken back");
                    }
                }
            }
            // An assignment without the partition (cooperative: the rebalance left it elsewhere).
            Rebalance::Assign(_) => {
                if !self.state.held.load(Ordering::SeqCst) {
                    self.state.refused.store(true, Ordering::SeqCst);
                }
            }
            Rebalance::Revoke(tpl) if ours(tpl) => {
                if self.state.closing.load(Ordering::SeqCst) {
                    self.state.held.store(false, Ordering::SeqCst);
                    tracing::info!(topic = %self.topic, "lease released");
                } else if self.state.held.swap(false, Ordering::SeqCst) {
                    tracing::error!(topic = %self.topic, "lease lost: reading no new input until it is back");
                    if let Ok(mut lost) = self.state.lost_at.lock() {
                        lost.get_or_insert_with(Instant::now);
                    }
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(topic = %self.topic, error = %e, "lease group rebalance error"),
        }
    }
}

/// A held lease; dropping it leaves the group (the next instance gets the lease at once).
pub struct Lease {
    state: Arc<LeaseState>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lease {
    /// Joins the lease group of `group_id` (process `process` of the run) and returns once this instance
    /// holds the lease. `stop` ends a wait (a signal). `on_lost` is called once if the lease is lost and
    /// not back within [`LOST_GRACE`].
    pub fn acquire(
        config: &KafkaConfig,
        group_id: &str,
        process: usize,
        wait: LeaseWait,
        stop: &AtomicBool,
        on_lost: impl FnOnce(String) + Send + 'static,
    ) -> Result<Lease, LeaseError> {
        let topic = lease_topic(group_id).name;
        let lease_group = format!("{group_id}.lease-{process}");
        let kafka = |source| LeaseError::Kafka { group: group_id.to_string(), source };
        let state = Arc::new(LeaseState::default());
        let context = LeaseContext { state: state.clone(), topic: topic.clone() };
        let consumer: BaseConsumer<LeaseContext> = config
            .consumer_config(&lease_group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", SESSION_TIMEOUT.as_millis().to_string())
            .set("heartbeat.interval.ms", "500")
            .create_with_context(context)
            .map_err(kafka)?;
        consumer.subscribe(&[&topic]).map_err(kafka)?;

        // The group is driven by polls: a thread polls until the lease is dropped.
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, shutdown, topic) = (state.clone(), shutdown.clone(), topic.clone());
            std::thread::Builder::new()
                .name("touchpoint-lease".into())
                .spawn(move || poll_until_dropped(consumer, &state, &shutdown, &topic, on_lost))
                .map_err(LeaseError::Thread)?
        };
        let lease = Lease { state, shutdown, thread: Some(thread) };

        let started = Instant::now();
        let mut logged: Option<Instant> = None;
        while !lease.held() {
            if stop.load(Ordering::Relaxed) {
                return Err(LeaseError::Stopped { group: group_id.to_string() });
            }
            let refused = lease.state.refused.load(Ordering::SeqCst);
            if refused && wait == LeaseWait::Fail {
                return Err(LeaseError::Held { group: group_id.to_string(), topic, lease_group });
            }
            if refused && logged.is_none_or(|at| at.elapsed() >= WAIT_LOG_EVERY) {
                logged = Some(Instant::now());
                tracing::warn!(
                    group = group_id,
                    lease = %topic,
                    waited = ?started.elapsed(),
                    "another instance of this pipeline is running: waiting for it to stop",
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(group = group_id, lease = %topic, waited = ?started.elapsed(), "lease taken");
        Ok(lease)
    }

    /// Whether this instance holds the lease now (false for a while after a lost session).
    pub fn held(&self) -> bool {
        self.state.held.load(Ordering::SeqCst)
    }

    /// A flag that follows [`held`](Self::held), for readers that cannot keep a reference.
    pub fn held_flag(&self) -> LeaseHeld {
        LeaseHeld(self.state.clone())
    }
}

/// Whether the lease is held, shareable across threads.
#[derive(Clone)]
pub struct LeaseHeld(Arc<LeaseState>);

impl LeaseHeld {
    pub fn get(&self) -> bool {
        self.0.held.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for LeaseHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseHeld({})", self.get())
    }
}

fn poll_until_dropped(
    consumer: BaseConsumer<LeaseContext>,
    state: &LeaseState,
    shutdown: &AtomicBool,
    topic: &str,
    on_lost: impl FnOnce(String),
) {
    let mut on_lost = Some(on_lost);
    while !shutdown.load(Ordering::Relaxed) {
        // Nothing is ever written to the topic: a poll only serves the group's callbacks.
        let _ = consumer.poll(Duration::from_millis(100));
        let lost_for = state.lost_at.lock().ok().and_then(|l| l.map(|at| at.elapsed()));
        if lost_for.is_some_and(|d| d >= LOST_GRACE) {
            if let Some(f) = on_lost.take() {
                f(format!(
                    "lost the pipeline's lease ({topic}) for {}s: another instance may be running; stopping",
                    LOST_GRACE.as_secs()
                ));
            }
        }
    }
    // Dropping the consumer leaves the group: the next instance is assigned the lease right away.
    drop(consumer);
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
