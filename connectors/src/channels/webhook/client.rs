//! Signed POSTs with `reqwest`.

use touchpoint_schemas::ChannelMessage;

use super::config::WebhookConfig;
use super::mapping;
use crate::channels::{ChannelClient, DeliveryRef, HttpAnswer, ProviderStatus, SendError, SendReceipt};

pub struct WebhookClient {
    http: reqwest::Client,
    config: WebhookConfig,
    secret: Vec<u8>,
}

impl WebhookClient {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Self> {
        let http =
            reqwest::Client::builder().timeout(config.timeout).connect_timeout(config.connect_timeout).build()?;
        let secret = mapping::signing_key(&config.secret.resolve()?)?;
        Ok(WebhookClient { http, secret, config: config.clone() })
    }

    fn url<'a>(&'a self, m: &'a ChannelMessage) -> &'a str {
        match &m.recipient {
            Some(r) if self.config.url_from_recipient && (r.starts_with("http://") || r.starts_with("https://")) => r,
            _ => &self.config.url,
        }
    }
}

impl ChannelClient for WebhookClient {
    fn channel(&self) -> touchpoint_schemas::Channel {
        touchpoint_schemas::Channel::Webhook
    }

    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        let id = message.delivery_id();
        let body = mapping::body(message);
        // Signed per attempt: a retry an hour later must not be refused as stale.
        let timestamp = crate::channels::now_ms() / 1000;
        let mut request = self
            .http
            .post(self.url(message))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", mapping::signature(&self.secret, &id, timestamp, &body))
            .header("idempotency-key", &message.idempotency_key);
        for (k, v) in &self.config.headers {
            request = request.header(k, v);
        }
        let answer = HttpAnswer::send(request.body(body)).await?;
        if answer.status.is_success() {
            return Ok(SendReceipt { delivery_id: id, provider_message_id: None, status: ProviderStatus::Accepted });
        }
        Err(answer.error())
    }

    /// A generic receiver has no lookup; a resend carries the same `webhook-id`, by which conforming
    /// receivers drop repeats.
    async fn status(&self, _delivery: &DeliveryRef) -> Result<ProviderStatus, SendError> {
        Ok(ProviderStatus::Unknown)
    }
}
