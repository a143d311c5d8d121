use std::time::Duration;

use serde::Deserialize;

use crate::channels::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The From mailbox, e.g. `Touchpoint <hello@example.com>`.
    pub from: String,
    /// Right-hand side of Message-IDs (`<delivery id@domain>`).
    #[serde(default = "default_domain")]
    pub message_id_domain: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// SMTP connections kept open.
    #[serde(default = "default_pool")]
    pub pool_size: u32,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP (a local relay or test peer only).
    #[default]
    None,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS, refusing servers without it (port 587).
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

fn default_port() -> u16 {
    25
}
fn default_domain() -> String {
    "touchpoint.local".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pool() -> u32 {
    4
}
