//! Confluent-compatible Schema Registry, through `schema_registry_converter` (blocking client: lookups
//! happen on timely worker threads, rarely, and are cached).

pub mod client;
pub mod config;

pub use client::RegistryClient;
pub use config::SchemaRegistryConfig;
