//! `processing.guarantee: exactly_once_v2`: one Kafka transaction commits, for a run of complete epochs,
//! every record the pipeline writes to Kafka (sends, both state changelogs, dead letters, late events)
//! together with the source offsets that produced them. See docs/exactly-once.md, "exactly_once_v2".
//!
//! Every worker turns its Kafka-bound outputs into [`TxnItem::Record`]s and its source positions into
//! [`TxnItem::Position`]s; all of them travel to worker 0, held back until the epoch's ClickHouse rows
//! are durable (ClickHouse is idempotent by its dedupe tokens, and must never be *behind* committed
//! offsets). Worker 0's [`TransactionalCommit`] is an ordinary epoch sink: it writes complete epochs in
//! order, one transaction per write, and retries an aborted transaction with the same batch. One
//! committer for the whole job, on purpose: with a transaction per process, a crash between two
//! processes' commits would leave one process's offsets committed while the other's aborted outputs
//! included effects of the first one's events (the keyed state is exchanged between processes), and
//! those effects would never be produced again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use touchpoint_connectors::kafka::{OutgoingRecord, TransactionalProducer, TxnError};

use super::epoch_sink::{Batch, BatchWriter};
use super::Epoch;

/// What the committing worker receives from every worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TxnItem {
    /// A record for a Kafka topic.
    Record(OutgoingRecord),
    /// A record whose value could not be encoded: the epoch cannot commit (its write fails, visibly,
    /// and is retried) rather than commit without it.
    Unencodable(String),
    /// A source partition's next offset at the close of the item's epoch.
    Position { partition: i32, next: i64 },
}

/// Where a fatal transaction error (fencing) is left for the worker loops, which stop the run with it.
pub type FatalSlot = Arc<Mutex<Option<String>>>;

/// The commit of `exactly_once_v2`, at worker 0 (on other workers `producer` is `None` and nothing
/// reaches them).
pub struct TransactionalCommit {
    pub producer: Option<Arc<TransactionalProducer>>,
    /// The source topic whose positions the transactions commit (under the pipeline's group).
    pub source_topic: String,
    pub fatal: FatalSlot,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TxnItem {
    /// An encoded record, or the reason it could not be encoded.
    pub fn encoded(record: Result<OutgoingRecord, super::sinks::EncodeError>) -> Self {
        match record {
            Ok(r) => TxnItem::Record(r),
            Err(e) => TxnItem::Unencodable(e.to_string()),
        }
    }
}

impl BatchWriter<TxnItem> for TransactionalCommit {
    fn name(&self) -> &'static str {
        "KafkaTransaction"
    }

    fn write(&self, epoch: Epoch, batch: Arc<Batch<TxnItem>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let Some(producer) = self.producer.clone() else {
            let items = batch.len();
            return async move {
                anyhow::ensure!(items == 0, "{items} transactional records reached a worker without the producer");
                Ok(())
            }
            .boxed();
        };
        let (topic, fatal, stop) = (self.source_topic.clone(), self.fatal.clone(), self.stop.clone());
        if fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
            // Fenced already: nothing can commit. The epoch is let go (not committed: its offsets stay
            // where the last commit put them) so that the dataflow can end and the run report the error.
            return async { Ok(()) }.boxed();
        }
        async move {
            if let Some(error) = batch.iter().find_map(|item| match item {
                TxnItem::Unencodable(e) => Some(e.clone()),
                _ => None,
            }) {
                anyhow::bail!("{error}");
            }
            let offsets = positions(&batch, &topic);
            let (n, o) = (records(&batch).count(), offsets.len());
            let result = tokio::task::spawn_blocking(move || producer.commit(records(&batch), &offsets)).await?;
            match result {
                Ok(()) => {
                    tracing::debug!(epoch, records = n, offsets = o, "transaction committed");
                    crate::metrics::COMMITS.add(1);
                    Ok(())
                }
                Err(e @ (TxnError::Fenced { .. } | TxnError::Fatal { .. })) => {
                    // Nothing this instance writes to Kafka can commit any more: stop the run.
                    tracing::error!(error = %e, "stopping: the transactional producer cannot commit");
                    if let Ok(mut slot) = fatal.lock() {
                        slot.get_or_insert_with(|| e.to_string());
                    }
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    // Retrying cannot help; the worker loops end the run with the error.
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }
}

/// The batch's records, in epoch order (borrowed: a retried write sends the same batch again).
fn records(batch: &Batch<TxnItem>) -> impl Iterator<Item = &OutgoingRecord> {
    batch.iter().filter_map(|item| match item {
        TxnItem::Record(r) => Some(r),
        TxnItem::Position { .. } | TxnItem::Unencodable(_) => None,
    })
}

/// Per partition, the newest position in the batch (positions only grow).
fn positions(batch: &Batch<TxnItem>, topic: &str) -> Vec<(String, i32, i64)> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for item in batch.iter() {
        if let TxnItem::Position { partition, next: n } = item {
            let e = next.entry(*partition).or_insert(*n);
            *e = (*e).max(*n);
        }
    }
    next.into_iter().map(|(p, n)| (topic.to_string(), p, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_records_in_order_and_the_newest_position_per_partition() {
        let record = |k: &str| {
            TxnItem::Record(OutgoingRecord {
                topic: "t".into(),
                partition: None,
                key: Some(k.as_bytes().to_vec()),
                payload: None,
                headers: vec![],
            })
        };
        let batch = Batch::new(vec![
            vec![record("a"), TxnItem::Position { partition: 0, next: 5 }, TxnItem::Position { partition: 1, next: 3 }],
            vec![record("b"), TxnItem::Position { partition: 0, next: 9 }],
        ]);
        let offsets = positions(&batch, "events");
        let keys: Vec<_> = records(&batch).map(|r| r.key.clone().unwrap()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(offsets, vec![("events".to_string(), 0, 9), ("events".to_string(), 1, 3)]);
    }
}
