//! Shared contracts of the Touchpoint pipeline: the canonical event type, the reasons a record can be
//! rejected, the Avro schemas of the topics, and the ordered ClickHouse migrations.
//!
//! Everything here is data: no I/O, so every crate (operators, connectors, pipelines, benches) can
//! depend on it.

pub mod avro;
mod channel;
pub mod clickhouse;
mod event;
mod reject;
mod vocabulary;

pub use channel::{
    delivery_id, ChannelMessage, ChannelMessageRef, Delivery, DeliverySource, DeliveryStatus, JourneyStep,
    JourneyStepRef, NO_METADATA,
};
pub use event::{NormalizedEvent, SourcePosition};
pub use reject::{headers, RejectReason};
pub use vocabulary::{
    Channel, Purpose, SubjectRef, AUTOMATION_TRIGGERED, TRIGGER_JOURNEY_ATTRIBUTE, TRIGGER_RULE_ATTRIBUTE,
};
