//! ClickHouse over HTTP with RowBinary (the `clickhouse` crate). The same code talks to an official
//! server in production and to the local stack's chdb-based server (`deploy/clickhouse/`).

pub mod client;
pub mod config;
pub mod encoding;
pub mod migrate;

pub use client::{DecisionStore, DeliveryStore, EventStore, KnownDelivery, TransitionStore};
pub use config::ClickHouseConfig;
pub use encoding::EventRow;
pub use migrate::{drop_databases_with_prefix, migrate};
