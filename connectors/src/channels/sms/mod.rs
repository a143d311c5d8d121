//! SMS through an HTTP provider with the request shape of Twilio's Messaging API
//! (`POST /2010-04-01/Accounts/<sid>/Messages.json`, form `To`, `From`, `Body`, `StatusCallback`, HTTP
//! Basic auth), plus an `Idempotency-Key` header and a lookup by key.

pub mod client;
pub mod config;
pub mod mapping;

pub use client::SmsClient;
pub use config::SmsConfig;
