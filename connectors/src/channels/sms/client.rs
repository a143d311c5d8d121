use std::sync::Arc;

use touchpoint_schemas::ChannelMessage;

use super::config::SmsConfig;
use super::mapping;
use crate::channels::templates::Templates;
use crate::channels::{ChannelClient, DeliveryRef, HttpAnswer, ProviderStatus, SendError, SendReceipt};

pub struct SmsClient {
    http: reqwest::Client,
    base: String,
    account: String,
    token: String,
    from: String,
    callback: Option<String>,
    templates: Arc<Templates>,
}

impl SmsClient {
    pub fn new(config: &SmsConfig, templates: Arc<Templates>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let base = format!("{}/2010-04-01/Accounts/{}", config.url.trim_end_matches('/'), config.account_sid);
        Ok(SmsClient {
            http,
            base,
            account: config.account_sid.clone(),
            token: config.auth_token.resolve()?,
            from: config.from.clone(),
            callback: config.status_callback.clone(),
            templates,
        })
    }

    async fn lookup(&self, url: String, query: &[(&str, &str)]) -> Result<Option<serde_json::Value>, SendError> {
        let answer =
            HttpAnswer::send(self.http.get(url).query(query).basic_auth(&self.account, Some(&self.token))).await?;
        match answer.status.as_u16() {
            200..=299 => Ok(Some(answer.json())),
            404 => Ok(None),
            _ => Err(answer.error()),
        }
    }
}

impl ChannelClient for SmsClient {
    fn channel(&self) -> touchpoint_schemas::Channel {
        touchpoint_schemas::Channel::Sms
    }

    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        let rendered = self.templates.render(message).map_err(|e| SendError::permanent(e.to_string()))?;
        let form = mapping::form(message, &rendered, &self.from, self.callback.as_deref())?;
        let answer = HttpAnswer::send(
            self.http
                .post(format!("{}/Messages.json", self.base))
                .basic_auth(&self.account, Some(&self.token))
                .header("idempotency-key", &message.idempotency_key)
                .form(&form),
        )
        .await?;
        if answer.status.is_success() {
            let v = answer.json();
            return Ok(SendReceipt {
                delivery_id: message.delivery_id(),
                provider_message_id: v["sid"].as_str().map(str::to_string),
                status: mapping::status(v["status"].as_str().unwrap_or("queued")),
            });
        }
        match answer.error() {
            SendError::Permanent { reason, .. } if mapping::is_bad_number(&answer.body) => {
                Err(SendError::Permanent { reason, bounce: true })
            }
            e => Err(e),
        }
    }

    /// By the provider's SID when known, else by idempotency key.
    async fn status(&self, delivery: &DeliveryRef) -> Result<ProviderStatus, SendError> {
        let found = match &delivery.provider_message_id {
            Some(sid) => self.lookup(format!("{}/Messages/{sid}.json", self.base), &[]).await?,
            None => self
                .lookup(
                    format!("{}/Messages.json", self.base),
                    &[("IdempotencyKey", delivery.idempotency_key.as_str())],
                )
                .await?
                .and_then(|v| v["messages"].as_array().and_then(|a| a.first().cloned())),
        };
        Ok(match found {
            Some(m) => mapping::status(m["status"].as_str().unwrap_or("queued")),
            None => ProviderStatus::NotFound,
        })
    }
}
