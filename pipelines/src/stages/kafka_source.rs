//! The Kafka source operator: reads this worker's partitions and stamps records with epochs.
//!
//! The operator shares its state with the worker loop (`crate::runtime`), which commits offsets: when
//! the sinks' probe shows that every worker finished epoch `e`, the positions recorded at the close of
//! `e` are committed. So a committed offset always means "everything before it is durable downstream".

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};
use touchpoint_connectors::kafka::{LeaseHeld, PartitionSource, SourceError, SourceRecord};

use super::tally::TallyBook;
use super::{epoch_of_tick, tick_of, Epoch, SUB_EPOCH_BITS};
use crate::config::EpochConfig;

/// Records read per activation before yielding to the other operators.
const READ_BUDGET: usize = 4096;

/// State shared between the source operator and the worker loop.
pub struct SourceState {
    pub source: PartitionSource,
    /// (partition, offset) of records a previous run already stored: flagged (not stored again), counted.
    pub already_stored: HashSet<(i32, i64)>,
    /// Epoch → the next offset per partition after that epoch (what to commit once it is durable).
    pub closed: BTreeMap<Epoch, Vec<(i32, i64)>>,
    /// The epoch the source is reading into (`None` before it starts and once it finished).
    pub open: Option<Epoch>,
    /// The source has stopped reading (drained, asked to stop, or failed).
    pub finished: bool,
    pub error: Option<SourceError>,
}

pub type SharedSource = Rc<RefCell<SourceState>>;

impl SourceState {
    pub fn new(source: PartitionSource, already_stored: HashSet<(i32, i64)>) -> SharedSource {
        Rc::new(RefCell::new(SourceState {
            source,
            already_stored,
            closed: BTreeMap::new(),
            open: None,
            finished: false,
            error: None,
        }))
    }

    /// Removes the epochs before `frontier` (all for `None`) and returns the positions to commit.
    pub fn take_committable(&mut self, frontier: Option<Epoch>) -> Option<Vec<(i32, i64)>> {
        match (self.closed.first_key_value(), frontier) {
            (None, _) => return None,
            (Some((&first, _)), Some(f)) if first >= f => return None,
            _ => {}
        }
        let rest = match frontier {
            Some(f) => self.closed.split_off(&f),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.closed, rest);
        ready.into_values().next_back()
    }
}

/// What a source feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRole {
    /// A stream (events): resumes from committed offsets; offsets are committed once durable. Its
    /// epochs start at tick 1, so that restored tables (epoch 0) always come first.
    Stream,
    /// A table (consent): replayed from the beginning at every start and never committed. Everything
    /// up to the high watermark at start-up is emitted at epoch 0 ("restore"); later changes follow
    /// in ticks like a stream.
    Table,
}

/// When the source stops by itself.
#[derive(Clone)]
pub struct StopPolicy {
    /// Stop once drained: idle for `drain_idle` and at the high watermark of every partition.
    pub until_drained: bool,
    pub drain_idle: Duration,
    /// Set by a signal handler: stop now (close the current epoch cleanly).
    pub stop: Arc<AtomicBool>,
    /// The pipeline's lease: nothing new is read while another instance may hold it.
    pub lease: LeaseHeld,
}

pub fn kafka_source<'s>(
    scope: Scope<'s, Epoch>,
    name: &str,
    role: SourceRole,
    state: SharedSource,
    epochs: EpochConfig,
    policy: StopPolicy,
    tally: Option<TallyBook>,
) -> Stream<'s, Epoch, Vec<SourceRecord>> {
    let name_owned = name.to_string();
    source::<_, timely::container::CapacityContainerBuilder<Vec<SourceRecord>>, _, _>(
        scope,
        name,
        move |capability, info| {
            let activator = scope.activator_for(info.address.clone());
            // New data wakes the worker; otherwise the source looks again at least every `idle_wait`
            // (to close epochs on time and to notice that it has drained).
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            state.borrow_mut().source.set_wakeup(move || {
                let _ = wake.activate();
            });
            let idle_wait = (epochs.interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
            let started = Instant::now();
            let interval_ms = epochs.interval.as_millis().max(1);
            let tick_now = move || u64::try_from(started.elapsed().as_millis() / interval_ms).unwrap_or(u64::MAX);
            let mut cap = Some(capability);
            let mut in_epoch = 0usize;
            // Bytes read into the current epoch (keys and values): a few huge records close it early.
            let mut in_epoch_bytes = 0usize;
            let mut last_record = Instant::now();
            // A table source stays at epoch 0 until it has caught up with the topic as of start-up.
            let mut restoring = role == SourceRole::Table;
            let mut last_catch_up_check = Instant::now();
            let mut restored = 0u64;
            // Time the source waited because `epochs.max_in_flight` epochs were not yet durable (logged at
            // the end: the sinks, not the source, set the pace then).
            let mut held_back = Duration::ZERO;
            let mut held_since: Option<Instant> = None;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let mut st = state.borrow_mut();

                // Time moves every worker to the next tick together (streams start at tick 1).
                let tick = tick_now().max(1);
                if !restoring && tick_of(*c.time()) < tick {
                    if role == SourceRole::Stream {
                        close_epoch(&mut st, *c.time(), in_epoch);
                    }
                    c.downgrade(&epoch_of_tick(tick));
                    in_epoch = 0;
                    in_epoch_bytes = 0;
                }

                let epoch = *c.time();
                let mut read = 0usize;
                {
                    let mut session = output.session(&*c);
                    // Backpressure: no reading while too many epochs wait for their sinks.
                    let in_flight = st.closed.len();
                    match (in_flight >= epochs.max_in_flight, held_since) {
                        (true, None) => held_since = Some(Instant::now()),
                        (false, Some(since)) => {
                            held_back += since.elapsed();
                            held_since = None;
                        }
                        _ => {}
                    }
                    while read < READ_BUDGET
                        && in_flight < epochs.max_in_flight
                        && policy.lease.get()
                        && (restoring || (in_epoch < epochs.max_records && in_epoch_bytes < epochs.max_bytes))
                    {
                        match st.source.poll(Duration::ZERO) {
                            Ok(Some(mut record)) => {
                                read += 1;
                                in_epoch += 1;
                                in_epoch_bytes += record.payload.as_ref().map_or(0, Vec::len)
                                    + record.key.as_ref().map_or(0, Vec::len);
                                last_record = Instant::now();
                                let skip = st.already_stored.remove(&(record.partition, record.offset));
                                if let Some(tally) = &tally {
                                    tally.with(epoch, |t| {
                                        t.received += 1;
                                        t.already_stored += u64::from(skip);
                                    });
                                }
                                restored += u64::from(restoring);
                                record.already_stored = skip;
                                session.give(record);
                            }
                            Ok(None) => break,
                            Err(
                                e @ (SourceError::SkippedRecords { .. } | SourceError::NoRecordsAfterResume { .. }),
                            ) => {
                                tracing::error!(error = %e, "source stopped");
                                st.error = Some(e);
                                break;
                            }
                            Err(e) => {
                                // librdkafka recovers from transport errors by itself; keep polling.
                                tracing::warn!(error = %e, "Kafka poll error");
                                break;
                            }
                        }
                    }
                }

                // Read again right away while data flows; otherwise sleep until woken or `idle_wait`.
                if read > 0 {
                    activator.activate();
                } else {
                    activator.activate_after(idle_wait);
                }

                if restoring && read == 0 && last_catch_up_check.elapsed() >= Duration::from_millis(100) {
                    last_catch_up_check = Instant::now();
                    if st.source.caught_up().unwrap_or(false) {
                        restoring = false;
                        tracing::info!(source = name_owned.as_str(), records = restored, "table restored");
                        c.downgrade(&epoch_of_tick(tick_now().max(1)));
                        in_epoch = 0;
                        in_epoch_bytes = 0;
                    }
                }

                // A full epoch moves this worker to the next sub-epoch of the same tick.
                if !restoring
                    && (in_epoch >= epochs.max_records || in_epoch_bytes >= epochs.max_bytes)
                    && (epoch & ((1 << SUB_EPOCH_BITS) - 1)) < (1 << SUB_EPOCH_BITS) - 1
                {
                    if role == SourceRole::Stream {
                        close_epoch(&mut st, epoch, in_epoch);
                    }
                    c.downgrade(&(epoch + 1));
                    in_epoch = 0;
                    in_epoch_bytes = 0;
                }

                let stop_now = st.error.is_some() || policy.stop.load(Ordering::Relaxed);
                let drained = policy.until_drained
                    && !restoring
                    && read == 0
                    && last_record.elapsed() >= policy.drain_idle
                    && st.source.caught_up().unwrap_or(false);
                if stop_now || drained {
                    let epoch = *c.time();
                    if role == SourceRole::Stream {
                        close_epoch(&mut st, epoch, in_epoch);
                    }
                    st.finished = true;
                    cap = None;
                    tracing::info!(source = name_owned.as_str(), drained, ?held_back, "source finished");
                }
                st.open = cap.as_ref().map(|c| *c.time());
            }
        },
    )
}

fn close_epoch(st: &mut SourceState, epoch: Epoch, records: usize) {
    if records > 0 {
        let positions = st.source.positions();
        st.closed.insert(epoch, positions);
    }
}
