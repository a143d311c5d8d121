use std::sync::Arc;

use touchpoint_schemas::ChannelMessage;

use super::config::PushConfig;
use super::mapping;
use crate::channels::templates::Templates;
use crate::channels::{ChannelClient, DeliveryRef, HttpAnswer, ProviderStatus, SendError, SendReceipt};

pub struct PushClient {
    http: reqwest::Client,
    base: String,
    token: String,
    templates: Arc<Templates>,
}

impl PushClient {
    pub fn new(config: &PushConfig, templates: Arc<Templates>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let base = format!("{}/v1/projects/{}", config.url.trim_end_matches('/'), config.project);
        Ok(PushClient { http, base, token: config.token.resolve()?, templates })
    }
}

impl ChannelClient for PushClient {
    fn channel(&self) -> touchpoint_schemas::Channel {
        touchpoint_schemas::Channel::Push
    }

    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        let rendered = self.templates.render(message).map_err(|e| SendError::permanent(e.to_string()))?;
        let body = mapping::request(message, &rendered)?;
        let answer = HttpAnswer::send(
            self.http
                .post(format!("{}/messages:send", self.base))
                .bearer_auth(&self.token)
                .header("idempotency-key", &message.idempotency_key)
                .json(&body),
        )
        .await?;
        if answer.status.is_success() {
            return Ok(SendReceipt {
                delivery_id: message.delivery_id(),
                provider_message_id: answer.json()["name"].as_str().map(str::to_string),
                status: ProviderStatus::Accepted,
            });
        }
        match answer.error() {
            SendError::Permanent { reason, .. }
                if answer.status.as_u16() == 404 && mapping::is_unregistered(&answer.body) =>
            {
                Err(SendError::Permanent { reason, bounce: true })
            }
            e => Err(e),
        }
    }

    /// Looks the message up by its idempotency key.
    async fn status(&self, delivery: &DeliveryRef) -> Result<ProviderStatus, SendError> {
        // The key as one path segment, percent-encoded by the URL type.
        let mut url = reqwest::Url::parse(&format!("{}/messages:byKey", self.base))
            .map_err(|e| SendError::permanent(format!("push provider URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| SendError::permanent("push provider URL cannot have a path"))?
            .push(&delivery.idempotency_key);
        let answer = HttpAnswer::send(self.http.get(url).bearer_auth(&self.token)).await?;
        match answer.status.as_u16() {
            200..=299 => Ok(ProviderStatus::Accepted),
            404 => Ok(ProviderStatus::NotFound),
            _ => Err(answer.error()),
        }
    }
}
