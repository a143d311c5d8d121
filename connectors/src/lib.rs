//! Touchpoint's connections to the outside world. Every connector has the same rooms:
//!
//! | room        | kafka                         | clickhouse                   | schema_registry      |
//! |-------------|-------------------------------|------------------------------|----------------------|
//! | `config`    | brokers, client overrides     | url, database, credentials   | url                  |
//! | client      | `source`, `producer`, `admin` | `client`, `migrate`          | `client`             |
//! | `encoding`  | headers of dead letters       | row types (RowBinary)        | Confluent framing    |
//! | tests       | `tests/kafka.rs`              | `tests/clickhouse.rs`        | `tests/schema_registry.rs` |
//!
//! Integration tests run against the real services started by `deploy/scripts/stack.sh`; their
//! addresses come from `testing::ServiceAddresses` (feature `testing`).

mod backoff;
pub mod channels;
pub mod clickhouse;
pub mod kafka;
mod runtime;
pub mod schema_registry;
#[cfg(feature = "testing")]
pub mod testing;

pub use backoff::Backoff;
pub use runtime::io_runtime;

/// Wall clock, epoch milliseconds (row times, delivery outcomes, dead-letter stamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
