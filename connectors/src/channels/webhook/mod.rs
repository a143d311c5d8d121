//! Webhooks: the message as JSON, POSTed with `reqwest` and signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `id.timestamp.body`), so receivers can check origin and freshness and drop repeats by id.

pub mod client;
pub mod config;
pub mod mapping;

pub use client::WebhookClient;
pub use config::WebhookConfig;
