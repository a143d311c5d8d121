//! Email over SMTP (`lettre`): templates with merge fields rendered into a text/HTML message, sent with
//! a Message-ID derived from the idempotency key (the same for every attempt and after a crash).

pub mod client;
pub mod config;
pub mod mapping;

pub use client::EmailClient;
pub use config::{EmailConfig, SmtpTls};
