//! A transactional producer for `processing.guarantee: exactly_once_v2`: records for any number of topics
//! and the source offsets of a consumer group, committed together or not at all (Kafka's EOS v2, as in
//! Kafka Streams: KIP-98, KIP-447).
//!
//! The transactional id is stable per job, so a restarted (or a second, duplicate) instance fences the
//! earlier one in [`TransactionalProducer::new`]: the broker aborts the old instance's open transaction
//! and refuses its later commits ([`TxnError::Fenced`]). Create it *before* reading the committed
//! offsets, so that the new instance reads what the old one committed last.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConfig, OutgoingRecord};

/// How long one transactional call (init, offsets, commit, abort) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Another producer with the same transactional id took over: this instance must stop.
    #[error(
        "fenced: another instance with transactional.id {transactional_id} started (same pipeline.group_id); \
         this one stops without committing anything more ({source})"
    )]
    Fenced { transactional_id: String, source: KafkaError },
    /// The producer cannot go on (librdkafka marked it fatally failed).
    #[error("the transactional producer {transactional_id} failed fatally: {source}")]
    Fatal { transactional_id: String, source: KafkaError },
    /// The transaction was aborted (or never began); the same records may be committed again later.
    #[error("transaction aborted, to be retried: {0}")]
    Aborted(KafkaError),
}

pub struct TransactionalProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    group: ConsumerGroupMetadata,
    transactional_id: String,
}

impl TransactionalProducer {
    /// Creates the producer and registers its transactional id with the broker (fencing any earlier
    /// producer with that id). `group_id` is the consumer group whose offsets the transactions commit.
    pub fn new(config: &KafkaConfig, transactional_id: &str, group_id: &str) -> anyhow::Result<Self> {
        let mut client = config.producer_config();
        client.set("transactional.id", transactional_id);
        let producer: ThreadedProducer<DefaultProducerContext> =
            client.create().context("creating the transactional producer")?;
        producer
            .init_transactions(CALL_TIMEOUT)
            .with_context(|| format!("initializing transactions for transactional.id {transactional_id}"))?;
        // The group's metadata for `send_offsets_to_transaction`. The source assigns its partitions by
        // hand (no group membership), so the group id is what identifies the offsets.
        let consumer: BaseConsumer = config.consumer_config(group_id).create().context("creating the group handle")?;
        let group = consumer.group_metadata().context("the consumer has no group metadata")?;
        tracing::info!(transactional_id, group_id, "transactions initialized");
        Ok(TransactionalProducer { producer, group, transactional_id: transactional_id.to_string() })
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Produces `records` and moves the group's offsets to `offsets` ((topic, partition, next offset))
    /// in one transaction. Blocks until the broker committed it. On [`TxnError::Aborted`] nothing of it
    /// is visible to `read_committed` readers and the call may be repeated with the same arguments.
    pub fn commit<'r>(
        &self,
        records: impl IntoIterator<Item = &'r OutgoingRecord>,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), TxnError> {
        self.producer.begin_transaction().map_err(|e| self.classify(e))?;
        let result = self.fill_and_commit(records, offsets);
        if let Err(TxnError::Aborted(e)) = &result {
            tracing::warn!(error = %e, "transaction failed; aborting it");
            if let Err(abort) = self.producer.abort_transaction(CALL_TIMEOUT) {
                return Err(self.classify(abort));
            }
        }
        result
    }

    fn fill_and_commit<'r>(
        &self,
        records: impl IntoIterator<Item = &'r OutgoingRecord>,
        offsets: &[(String, i32, i64)],
    ) -> Result<(), TxnError> {
        for r in records {
            let headers = r.kafka_headers();
            let mut record = BaseRecord::<[u8], [u8]>::to(&r.topic).headers(headers);
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = r.payload.as_deref() {
                record = record.payload(v);
            }
            // A full local queue drains as the background thread sends: wait for room.
            let mut pending = record;
            loop {
                match self.producer.send(pending) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        pending = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(self.classify(e)),
                }
            }
        }
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, next) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).map_err(|e| self.classify(e))?;
            }
            self.producer.send_offsets_to_transaction(&tpl, &self.group, CALL_TIMEOUT).map_err(|e| self.classify(e))?;
        }
        // Flushes every record of the transaction; fails if any of them was not delivered.
        self.producer.commit_transaction(CALL_TIMEOUT).map_err(|e| self.classify(e))
    }

    fn classify(&self, e: KafkaError) -> TxnError {
        let is_fence = |code| {
            matches!(
                code,
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            )
        };
        // A fence met while producing (adding a partition to the transaction) surfaces as a generic
        // fatal production error; the client's fatal error says what it was.
        let fenced = e.rdkafka_error_code().is_some_and(is_fence)
            || self.producer.client().fatal_error().is_some_and(|(code, _)| is_fence(code));
        let fatal = match &e {
            KafkaError::Transaction(t) => t.is_fatal(),
            _ => self.producer.client().fatal_error().is_some(),
        };
        let transactional_id = self.transactional_id.clone();
        if fenced {
            TxnError::Fenced { transactional_id, source: e }
        } else if fatal {
            TxnError::Fatal { transactional_id, source: e }
        } else {
            TxnError::Aborted(e)
        }
    }
}
