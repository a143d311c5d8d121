//! Channel connectors: turn allowed sends (`connector.<channel>`) into deliveries and report back
//! (`marketing.deliveries`).
//!
//! Every channel has the same rooms, so learning one teaches them all:
//!
//! | room      | email                      | webhook                  | push (FCM-like)     | sms (Twilio-like)   |
//! |-----------|----------------------------|--------------------------|---------------------|---------------------|
//! | `config`  | SMTP host, TLS, auth, from | URL, secret, timeout     | URL, project, token | URL, account, from  |
//! | `client`  | `lettre` SMTP transport    | `reqwest` POST + HMAC    | `reqwest` POST      | `reqwest` form POST |
//! | `mapping` | template → MIME message    | message → signed JSON    | → FCM message       | → Messages form     |
//! | tests     | `connectors/tests/channels.rs`, against the peers of `deploy/peers/` (real SMTP and HTTP) |
//!
//! Around every client the same machinery ([`worker`]): a durable dedupe [`ledger`], a token-bucket
//! [`rate_limit`], a [`breaker`], [`retry`] with backoff and jitter, the dead-letter topic
//! `connector.<channel>.dlq`, and offsets committed only after outcomes are durable.
//! The decisions behind it are in `docs/channels.md`.

pub mod breaker;
pub mod callbacks;
pub mod config;
pub mod email;
pub mod envelope;
pub mod ledger;
pub mod push;
pub mod rate_limit;
pub mod retry;
pub mod sms;
pub mod templates;
pub mod unsubscribe;
pub mod webhook;
pub mod worker;

use std::future::Future;
use std::time::Duration;

use touchpoint_schemas::ChannelMessage;

/// What the provider said when it accepted a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// Our delivery id ([`ChannelMessage::delivery_id`]), the same for every attempt of a message.
    pub delivery_id: String,
    /// The provider's own id for it (FCM message name, Twilio SID, the SMTP server's reply).
    pub provider_message_id: Option<String>,
    pub status: ProviderStatus,
}

/// A provider's view of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    /// Accepted, not yet known to be delivered.
    Accepted,
    Delivered,
    /// Rejected after acceptance (bounce, undelivered), with the provider's reason.
    Failed(String),
    /// The provider has no such delivery.
    NotFound,
    /// The provider cannot be asked (SMTP has no lookup; generic webhooks have none).
    Unknown,
}

/// Why a send did not go through, sorted into what a retry can fix and what it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Timeouts, connection errors, 5xx, 429, SMTP 4xx: try again, after `retry_after` if the
    /// provider said so.
    Transient { reason: String, retry_after: Option<Duration> },
    /// 4xx, SMTP 5xx, an invalid address or message: never retried. `bounce` marks a recipient that
    /// does not exist (an address-level failure) as opposed to a rejected request.
    Permanent { reason: String, bounce: bool },
}

impl SendError {
    pub fn transient(reason: impl Into<String>) -> Self {
        SendError::Transient { reason: reason.into(), retry_after: None }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        SendError::Permanent { reason: reason.into(), bounce: false }
    }
    pub fn reason(&self) -> &str {
        match self {
            SendError::Transient { reason, .. } | SendError::Permanent { reason, .. } => reason,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient { reason, .. } => write!(f, "transient: {reason}"),
            SendError::Permanent { reason, .. } => write!(f, "permanent: {reason}"),
        }
    }
}

/// Which delivery to look up: our id and key always, the provider's id when we got one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRef {
    pub delivery_id: String,
    pub idempotency_key: String,
    pub provider_message_id: Option<String>,
}

/// The contract of every channel connector.
///
/// `send` makes one attempt (retries, rate limits and the breaker live in [`worker`], the same for all
/// channels) and passes the message's idempotency key to providers that accept one. `status` asks the
/// provider about a delivery; the worker uses it after a crash, for a message whose attempt started but
/// whose outcome was never recorded, to learn whether it must be sent again.
pub trait ChannelClient: Send + Sync + 'static {
    fn channel(&self) -> touchpoint_schemas::Channel;

    fn send(&self, message: &ChannelMessage) -> impl Future<Output = Result<SendReceipt, SendError>> + Send;

    fn status(&self, delivery: &DeliveryRef) -> impl Future<Output = Result<ProviderStatus, SendError>> + Send;
}

/// Sorts an HTTP answer: 2xx is not an error; 408, 425, 429 and 5xx are transient (429/503 may say
/// `Retry-After`); every other status is permanent.
pub fn http_error(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap, body: &str) -> SendError {
    let reason = format!("HTTP {}: {}", status.as_u16(), body.chars().take(300).collect::<String>());
    let code = status.as_u16();
    if code == 408 || code == 425 || code == 429 || status.is_server_error() {
        SendError::Transient { reason, retry_after: retry::parse_retry_after(headers, std::time::SystemTime::now()) }
    } else {
        SendError::Permanent { reason, bounce: false }
    }
}

pub use crate::now_ms;

/// An HTTP answer read whole, so every HTTP channel sorts answers the same way.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpAnswer {
    /// Sends the request; a transport failure (connect, timeout) is a transient error.
    pub async fn send(request: reqwest::RequestBuilder) -> Result<Self, SendError> {
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Ok(HttpAnswer { status, headers, body })
    }

    /// The answer as an error (see [`http_error`]).
    pub fn error(&self) -> SendError {
        http_error(self.status, &self.headers, &self.body)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// A transport error from `reqwest` (connect, timeout, body): always transient.
pub fn transport_error(e: &reqwest::Error) -> SendError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    SendError::transient(format!("{kind}: {e}"))
}
