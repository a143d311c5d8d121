//! Confluent-compatible Schema Registry, through `schema_registry_converter` (blocking client: lookups
//! happen on timely worker threads, rarely, and are cached).

mod client;
mod config;

pub use client::RegistryClient;
pub use config::SchemaRegistryConfig;
