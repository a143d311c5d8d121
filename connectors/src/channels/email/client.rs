//! SMTP sends with `lettre`'s pooled async transport.

use std::sync::Arc;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use touchpoint_schemas::ChannelMessage;

use super::config::{EmailConfig, SmtpTls};
use super::mapping;
use crate::channels::templates::Templates;
use crate::channels::unsubscribe::UnsubscribeLinks;
use crate::channels::{ChannelClient, DeliveryRef, ProviderStatus, SendError, SendReceipt};

pub struct EmailClient {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    domain: String,
    templates: Arc<Templates>,
    unsubscribe: Option<UnsubscribeLinks>,
}

impl EmailClient {
    /// `unsubscribe`: links for one-click unsubscribe on marketing emails (none: no such headers).
    pub fn new(
        config: &EmailConfig,
        templates: Arc<Templates>,
        unsubscribe: Option<UnsubscribeLinks>,
    ) -> anyhow::Result<Self> {
        let from: Mailbox =
            config.from.parse().map_err(|e| anyhow::anyhow!("channels.email.provider.from {:?}: {e}", config.from))?;
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Opportunistic => Tls::Opportunistic(TlsParameters::new(config.host.clone())?),
            SmtpTls::Starttls => Tls::Required(TlsParameters::new(config.host.clone())?),
            SmtpTls::Tls => Tls::Wrapper(TlsParameters::new(config.host.clone())?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(config.pool_size.max(1)));
        if let Some(user) = &config.username {
            let password = config.password.as_ref().map(|p| p.resolve()).transpose()?.unwrap_or_default();
            builder = builder
                .credentials(Credentials::new(user.clone(), password))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(EmailClient {
            transport: builder.build(),
            from,
            domain: config.message_id_domain.clone(),
            templates,
            unsubscribe,
        })
    }
}

/// SMTP replies: 4xx transient, 5xx permanent; 550–553 at RCPT mean the mailbox does not exist (a
/// bounce). Connection-level errors (refused, timeout, TLS) are transient.
fn smtp_error(e: &lettre::transport::smtp::Error) -> SendError {
    let reason = format!("SMTP: {e}");
    if e.is_permanent() {
        let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
        let bounce = matches!(code, Some(550..=553));
        SendError::Permanent { reason, bounce }
    } else {
        SendError::transient(reason)
    }
}

impl ChannelClient for EmailClient {
    fn channel(&self) -> touchpoint_schemas::Channel {
        touchpoint_schemas::Channel::Email
    }

    async fn send(&self, message: &ChannelMessage) -> Result<SendReceipt, SendError> {
        let rendered = self.templates.render(message).map_err(|e| SendError::permanent(e.to_string()))?;
        let now_s = crate::now_ms() / 1000;
        let email = mapping::to_email(message, &rendered, &self.from, &self.domain, self.unsubscribe.as_ref(), now_s)?;
        self.transport.send(email).await.map_err(|e| smtp_error(&e))?;
        Ok(SendReceipt {
            delivery_id: message.delivery_id(),
            provider_message_id: Some(mapping::message_id(message, &self.domain)),
            status: ProviderStatus::Accepted,
        })
    }

    /// SMTP has no lookup: after a crash an attempt in doubt is sent again, with the same Message-ID
    /// (see docs/channels.md).
    async fn status(&self, _delivery: &DeliveryRef) -> Result<ProviderStatus, SendError> {
        Ok(ProviderStatus::Unknown)
    }
}
