//! Push notifications through an HTTP provider with the request shape of Firebase Cloud Messaging
//! HTTP v1 (`POST /v1/projects/<project>/messages:send`, `{"message": {"token", "notification",
//! "data"}}`), plus an `Idempotency-Key` header and a lookup by key (see `deploy/peers/README.md`).

pub mod client;
pub mod config;
pub mod mapping;

pub use client::PushClient;
pub use config::PushConfig;
