//! Shared contracts of the Touchpoint pipeline: the canonical event type, the reasons a record can be
//! rejected, the Avro schemas of the topics, and the ordered ClickHouse migrations.
//!
//! Everything here is data: no I/O, so every crate (operators, connectors, pipelines, benches) can
//! depend on it.

pub mod avro;
pub mod channel;
pub mod clickhouse;
pub mod event;
pub mod reject;
pub mod vocabulary;

pub use channel::{ChannelMessage, ChannelMessageRef, Delivery, DeliveryStatus};
pub use event::{NormalizedEvent, SourcePosition};
pub use reject::{headers, RejectReason};
pub use vocabulary::{Channel, Purpose, SubjectRef};
