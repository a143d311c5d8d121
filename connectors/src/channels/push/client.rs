use std::sync::Arc;

use touchpoint_schemas::ChannelMessage;

use super::config::PushConfig;
use super::mapping;
use crate::channels::templates::Templates;
use crate::channels::{
    http_error, transport_error, ChannelClient, DeliveryRef, ProviderStatus, SendError, SendReceipt,
};

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
    fn channel(&self) -> &'static str {
        "push"
    }

    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        let rendered = self.templates.render(message).map_err(SendError::permanent)?;
        let body = mapping::request(message, &rendered)?;
        let response = self
            .http
            .post(format!("{}/messages:send", self.base))
            .bearer_auth(&self.token)
            .header("idempotency-key", &message.idempotency_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let name = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_string));
            return Ok(SendReceipt {
                delivery_id: message.delivery_id(),
                provider_message_id: name,
                status: ProviderStatus::Accepted,
            });
        }
        match http_error(status, &headers, &text) {
            SendError::Permanent { reason, .. } if status.as_u16() == 404 && mapping::is_unregistered(&text) => {
                Err(SendError::Permanent { reason, bounce: true })
            }
            e => Err(e),
        }
    }

    /// Looks the message up by its idempotency key.
    async fn status(&self, delivery: &DeliveryRef) -> Result<ProviderStatus, SendError> {
        let key: String = delivery
            .idempotency_key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let response = self
            .http
            .get(format!("{}/messages:byKey/{key}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        match response.status().as_u16() {
            200..=299 => Ok(ProviderStatus::Accepted),
            404 => Ok(ProviderStatus::NotFound),
            _ => {
                let (status, headers) = (response.status(), response.headers().clone());
                Err(http_error(status, &headers, &response.text().await.unwrap_or_default()))
            }
        }
    }
}
