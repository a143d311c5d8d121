//! A sink that writes complete epochs in batches and holds each epoch open until its write is durable.
//!
//! Records are collected per epoch. When the input frontier passes an epoch, it is queued; a sink has at
//! most [`BatchWriter::writes_in_flight`] writes in flight (one by default), on the async runtime, and
//! every epoch queued meanwhile goes into the next write, in epoch order (so a slow store gets fewer,
//! larger writes instead of a growing line of small ones: ClickHouse pays per INSERT; benches/README.md,
//! "Profiling"). The operator keeps a capability for every epoch of a write until the write succeeded
//! (failed writes are retried with the same batch and backoff, forever: a sink outage shows as growing
//! lag, never as loss). A probe after the sinks therefore tells the source which epochs are durable, and
//! only those are committed: with several writes in flight a later epoch may be durable first, but the
//! sink's progress passes an epoch only once it and every earlier one are. With one write in flight,
//! writes land in epoch order, which changelogs need (the latest record per key wins on restore).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use touchpoint_connectors::Backoff;

use futures::future::BoxFuture;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::Epoch;

/// The records of one write, in epoch order, as the containers that brought them: a write reads each
/// record once (to encode it), so copying them into one vector first was a copy of every record into
/// freshly faulted memory (up to a tenth of a worker's time, perf).
pub struct Batch<D> {
    containers: Vec<Vec<D>>,
    len: usize,
}

impl<D> Batch<D> {
    pub fn new(containers: Vec<Vec<D>>) -> Self {
        let len = containers.iter().map(Vec::len).sum();
        Batch { containers, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &D> + Clone + Send
    where
        D: Sync,
    {
        self.containers.iter().flatten()
    }
}

/// Writes a batch of one or more complete epochs durably (or fails, and is called again with the same
/// batch). `epoch` is the newest epoch in the batch.
pub trait BatchWriter<D>: Send + Sync + 'static {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    fn write(&self, epoch: Epoch, batch: Arc<Batch<D>>) -> BoxFuture<'static, anyhow::Result<()>>;
    /// How many writes may be in flight at once. One (the default) keeps writes in epoch order; more is
    /// for stores where order does not matter and waiting for the previous write is pure latency (sends,
    /// each carrying its own idempotency key).
    fn writes_in_flight(&self) -> usize {
        1
    }
}

/// How long to wait before retrying a failed write: 100 ms doubling to 5 s.
pub fn retry_delay(attempt: u32) -> Duration {
    const SINK_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    SINK_RETRY.delay(attempt)
}

pub fn epoch_sink<'s, D, W>(
    stream: Stream<'s, Epoch, Vec<D>>,
    writer: W,
    runtime: tokio::runtime::Handle,
) -> Stream<'s, Epoch, Vec<()>>
where
    D: Clone + Send + Sync + 'static,
    W: BatchWriter<D>,
{
    let scope = stream.scope();
    let writer = Arc::new(writer);
    let name = writer.name();
    let max_in_flight = writer.writes_in_flight().max(1);
    stream.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        name,
        move |_, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let (done_tx, done_rx) = mpsc::channel::<Vec<Epoch>>();
            // An epoch's records as the containers that brought them (see [`Batch`]).
            let mut collecting: BTreeMap<Epoch, (Capability<Epoch>, Vec<Vec<D>>)> = BTreeMap::new();
            let mut writing: HashMap<Epoch, Capability<Epoch>> = HashMap::new();
            let mut ready: VecDeque<(Epoch, Vec<Vec<D>>)> = VecDeque::new();
            let mut in_flight = 0usize;
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry = collecting
                        .entry(epoch)
                        .or_insert_with(|| (cap.delayed(&epoch, output.output_index()), Vec::new()));
                    for batch in data {
                        entry.1.push(std::mem::take(batch));
                    }
                });

                // Epochs the input frontier has passed are complete: queue them for writing.
                while let Some((&epoch, _)) = collecting.first_key_value() {
                    if frontier.frontier().less_equal(&epoch) {
                        break;
                    }
                    let Some((cap, batch)) = collecting.remove(&epoch) else { break };
                    writing.insert(epoch, cap);
                    ready.push_back((epoch, batch));
                }

                // Durable epochs release their capability, which lets the probe (and commits) advance.
                while let Ok(epochs) = done_rx.try_recv() {
                    for epoch in epochs {
                        writing.remove(&epoch);
                    }
                    in_flight -= 1;
                }

                // Everything queued, in epoch order, as one batch, when a write slot is free.
                if in_flight < max_in_flight && !ready.is_empty() {
                    let epochs: Vec<Epoch> = ready.iter().map(|(epoch, _)| *epoch).collect();
                    let batch = Batch::new(ready.drain(..).flat_map(|(_, containers)| containers).collect());
                    let Some(&epoch) = epochs.last() else { return };
                    in_flight += 1;
                    let batch = Arc::new(batch);
                    let (writer, done, activator) = (writer.clone(), done_tx.clone(), activator.clone());
                    runtime.spawn(async move {
                        let mut attempt = 0u32;
                        let started = std::time::Instant::now();
                        loop {
                            match writer.write(epoch, batch.clone()).await {
                                Ok(()) => {
                                    tracing::debug!(
                                        sink = writer.name(),
                                        epoch,
                                        epochs = epochs.len(),
                                        records = batch.len(),
                                        elapsed = ?started.elapsed(),
                                        "epochs written",
                                    );
                                    if attempt > 0 {
                                        tracing::info!(
                                            sink = writer.name(),
                                            epoch,
                                            attempts = attempt + 1,
                                            elapsed = ?started.elapsed(),
                                            "write succeeded after retries",
                                        );
                                        crate::metrics::sink_retrying(writer.name(), -1);
                                    }
                                    break;
                                }
                                Err(e) => {
                                    crate::metrics::SINK_WRITE_FAILURES.add(1);
                                    if attempt == 0 {
                                        crate::metrics::sink_retrying(writer.name(), 1);
                                    }
                                    let delay = retry_delay(attempt);
                                    tracing::warn!(
                                        sink = writer.name(),
                                        epoch,
                                        attempt,
                                        records = batch.len(),
                                        error = format!("{e:#}"),
                                        ?delay,
                                        "write failed; retrying (source offsets are not committed meanwhile)"
                                    );
                                    tokio::time::sleep(delay).await;
                                    attempt = attempt.saturating_add(1);
                                }
                            }
                        }
                        let _ = done.send(epochs);
                        let _ = activator.activate();
                    });
                }
            }
        },
    )
}

/// Passes each epoch's records on only once `durable` (a sink's progress) has passed that epoch: a
/// state changelog written after the sends it describes never runs ahead of them, so a crash can repeat
/// a send (same idempotency key) but never lose one.
pub fn after_durable<'s, D: Clone + 'static>(
    stream: Stream<'s, Epoch, Vec<D>>,
    durable: Stream<'s, Epoch, Vec<()>>,
    name: &str,
) -> Stream<'s, Epoch, Vec<D>> {
    stream.binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<D>>, _, _, _, _>(
        durable,
        Pipeline,
        Pipeline,
        name,
        move |_, _| {
            let mut held: BTreeMap<Epoch, (Capability<Epoch>, Vec<Vec<D>>)> = BTreeMap::new();
            move |(input, _), (progress, durable_frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let entry = held.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new()));
                    for batch in data {
                        entry.1.push(std::mem::take(batch));
                    }
                });
                progress.for_each(|_, _| {});
                while let Some((&epoch, _)) = held.first_key_value() {
                    if durable_frontier.frontier().less_equal(&epoch) {
                        break;
                    }
                    let Some((cap, containers)) = held.remove(&epoch) else { break };
                    let mut session = output.session(&cap);
                    for mut records in containers {
                        session.give_container(&mut records);
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn retry_delay_doubles_up_to_five_seconds() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(5), Duration::from_millis(3200));
        assert_eq!(retry_delay(6), Duration::from_secs(5));
        assert_eq!(retry_delay(60), Duration::from_secs(5));
    }
}
