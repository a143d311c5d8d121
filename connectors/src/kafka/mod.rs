//! Kafka, through `rdkafka` (librdkafka). Nothing here is specific to the local broker (Apache Kafka,
//! `deploy/kafka/`): the same code runs against any Kafka-protocol cluster.

mod admin;
mod config;
mod encoding;
mod lease;
mod producer;
mod reader;
mod source;
mod transactional;

pub use admin::{delete_topics_with_prefix, ensure_topics, wait_for_brokers};
pub use config::{KafkaConfig, TopicSpec};
pub use encoding::{bounded_text, OutgoingRecord, MAX_REASON_BYTES, MAX_RECORD_BYTES};
pub use lease::{lease_topic, Lease, LeaseError, LeaseHeld, LeaseWait, LOST_GRACE, SESSION_TIMEOUT};
pub use producer::{is_permanent, AckedProducer, ProduceError};
pub use reader::{read_all, read_partitions, recv_batch, visit_partitions, ReadRecord};
pub use source::{log_bounds, owned_partitions, partition_count, PartitionSource, SourceError, SourceRecord};
pub use transactional::{TransactionalProducer, TxnError};
