//! ClickHouse over HTTP with RowBinary (the `clickhouse` crate). The same code talks to an official
//! server in production and to the local stack's chdb-based server (`deploy/clickhouse/`).

mod client;
mod config;
mod encoding;
mod migrate;

pub use client::{
    DecisionStore, DeliveryStore, EventStore, KnownDelivery, ProfileStore, SegmentMembershipStore, TransitionStore,
};
pub use config::ClickHouseConfig;
pub use encoding::{batch_token, EventRow};
pub use migrate::{drop_databases_with_prefix, migrate};
