//! Each channel client against a real peer (`deploy/peers/`: aiosmtpd, and HTTP servers shaped like a
//! Standard Webhooks receiver, FCM and Twilio): what arrives, and how failures are sorted.

use std::sync::Arc;
use std::time::Duration;

use touchpoint_connectors::channels::config::Secret;
use touchpoint_connectors::channels::email::{EmailClient, EmailConfig, SmtpTls};
use touchpoint_connectors::channels::push::{PushClient, PushConfig};
use touchpoint_connectors::channels::sms::{SmsClient, SmsConfig};
use touchpoint_connectors::channels::templates::{Template, Templates};
use touchpoint_connectors::channels::webhook::{WebhookClient, WebhookConfig};
use touchpoint_connectors::channels::{ChannelClient, DeliveryRef, ProviderStatus, SendError};
use touchpoint_connectors::testing::{unique_name, Peers, ServiceAddresses};
use touchpoint_schemas::ChannelMessage;

fn bucket() -> String {
    unique_name("ch").replace('_', "-").to_lowercase()
}

fn message(channel: &str, key: &str, recipient: &str, data: serde_json::Value) -> ChannelMessage {
    serde_json::from_value(serde_json::json!({
        "idempotency_key": key, "channel": channel, "tenant_id": "acme", "subject_id": "u1",
        "recipient": recipient, "template": "welcome", "data": data, "metadata": {"campaign": "spring"},
        "category": "onboarding", "purpose": "marketing", "priority": 0, "event_id": "e1",
        "event_type": "signed_up", "occurred_at": 0, "rule_id": "r", "intents_version": "v", "caps_version": "c"
    }))
    .expect("message")
}

fn templates() -> Arc<Templates> {
    let mut t = Templates::default();
    t.insert(
        "welcome",
        Template {
            subject: Some("Welcome, {{ first_name }}".into()),
            text: Some("Your plan: {{ plan | \"free\" }}".into()),
            html: Some("<p>Hi {{ first_name }}</p>".into()),
            title: Some("Hi {{ first_name }}".into()),
            body: Some("Plan {{ plan | \"free\" }}".into()),
        },
    );
    Arc::new(t)
}

fn email_client(services: &ServiceAddresses, password: &str) -> EmailClient {
    let config = EmailConfig {
        host: services.smtp_host.clone(),
        port: services.smtp_port,
        tls: SmtpTls::None,
        username: Some("touchpoint".into()),
        password: Some(Secret::Inline(password.into())),
        from: "Touchpoint <hello@touchpoint.example>".into(),
        message_id_domain: "touchpoint.example".into(),
        timeout: Duration::from_secs(5),
        pool_size: 2,
    };
    EmailClient::new(&config, templates(), None).expect("email client")
}

#[tokio::test]
async fn email_arrives_rendered_authenticated_with_a_stable_message_id() {
    let services = ServiceAddresses::from_env();
    let peers = Peers::new(&services);
    let domain = format!("{}.test", bucket());
    let client = email_client(&services, "secret");
    let m = message(
        "email",
        "k-email-1",
        &format!("ada@{domain}"),
        serde_json::json!({"first_name": "Ada", "plan": "pro"}),
    );
    let receipt = client.send(&m).await.expect("sent");
    assert_eq!(receipt.delivery_id, m.delivery_id());
    let mail = peers.mail(&domain).await.unwrap();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let got = &mail[0];
    assert_eq!(got["subject"], "Welcome, Ada");
    assert_eq!(got["text"].as_str().unwrap().trim(), "Your plan: pro");
    assert!(got["html"].as_str().unwrap().contains("<p>Hi Ada</p>"));
    assert_eq!(got["message_id"], format!("<{}@touchpoint.example>", m.delivery_id()));
    assert_eq!(got["authenticated_as"], "touchpoint");
    assert_eq!(got["headers"]["x-touchpoint-idempotency-key"], "k-email-1");
}

#[tokio::test]
async fn smtp_rejections_are_sorted_into_bounces_and_transient_failures() {
    let services = ServiceAddresses::from_env();
    let domain = format!("{}.test", bucket());
    let client = email_client(&services, "secret");
    let data = serde_json::json!({"first_name": "Bo"});
    let bounce = client.send(&message("email", "k2", &format!("bounce-1@{domain}"), data.clone())).await;
    assert!(
        matches!(&bounce, Err(SendError::Permanent { bounce: true, reason }) if reason.contains("550")),
        "{bounce:?}"
    );
    let later = client.send(&message("email", "k3", &format!("tempfail-1@{domain}"), data.clone())).await;
    assert!(matches!(&later, Err(SendError::Transient { .. })), "{later:?}");
    let missing_field = client.send(&message("email", "k4", &format!("ok@{domain}"), serde_json::json!({}))).await;
    assert!(
        matches!(&missing_field, Err(SendError::Permanent { reason, .. }) if reason.contains("`first_name` missing")),
        "{missing_field:?}"
    );
    let wrong_password =
        email_client(&services, "wrong").send(&message("email", "k5", &format!("ok@{domain}"), data)).await;
    assert!(
        matches!(&wrong_password, Err(SendError::Permanent { reason, .. }) if reason.contains("535")),
        "bad credentials are not worth retrying: {wrong_password:?}"
    );
}

#[tokio::test]
async fn webhooks_are_signed_and_503_with_retry_after_is_transient() {
    let services = ServiceAddresses::from_env();
    let peers = Peers::new(&services);
    let b = bucket();
    peers
        .control(
            &b,
            serde_json::json!({"secret": "whsec-test", "fail_first": 1, "fail_status": 503, "retry_after": "7"}),
        )
        .await
        .unwrap();
    let config = WebhookConfig {
        url: format!("{}/hooks/{b}", peers.url),
        url_from_recipient: false,
        secret: Secret::Inline("whsec-test".into()),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        headers: [("x-tenant".to_string(), "acme".to_string())].into(),
    };
    let client = WebhookClient::new(&config).unwrap();
    let m = message("webhook", "k-hook-1", "", serde_json::json!({"a": 1}));
    let first = client.send(&m).await;
    assert!(
        matches!(&first, Err(SendError::Transient { retry_after: Some(d), reason }) if *d == Duration::from_secs(7) && reason.contains("503")),
        "{first:?}"
    );
    client.send(&m).await.expect("second attempt");
    let records = peers.records(&b).await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["status"], 503);
    let ok = &records[1];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["signature_valid"], true, "{ok}");
    assert_eq!(ok["headers"]["webhook-id"], m.delivery_id());
    assert_eq!(ok["headers"]["x-tenant"], "acme");
    let body: serde_json::Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"]["a"], 1);

    let bad = WebhookClient::new(&WebhookConfig { secret: Secret::Inline("other".into()), ..config }).unwrap();
    let refused = bad.send(&m).await;
    assert!(matches!(&refused, Err(SendError::Permanent { reason, .. }) if reason.contains("401")), "{refused:?}");
}

#[tokio::test]
async fn push_sends_once_per_key_and_answers_status_lookups() {
    let services = ServiceAddresses::from_env();
    let peers = Peers::new(&services);
    let b = bucket();
    let client = PushClient::new(
        &PushConfig {
            url: format!("{}/push/{b}", peers.url),
            project: "demo".into(),
            token: Secret::Inline("t".into()),
            timeout: Duration::from_secs(5),
        },
        templates(),
    )
    .unwrap();
    let m = message("push", "k/push 1", "device-1", serde_json::json!({"first_name": "Ada"}));
    let lookup = DeliveryRef {
        delivery_id: m.delivery_id(),
        idempotency_key: m.idempotency_key.clone(),
        provider_message_id: None,
    };
    assert_eq!(client.status(&lookup).await.unwrap(), ProviderStatus::NotFound);
    let receipt = client.send(&m).await.unwrap();
    assert!(receipt.provider_message_id.as_deref().unwrap().starts_with("projects/demo/messages/"));
    assert_eq!(client.status(&lookup).await.unwrap(), ProviderStatus::Accepted);
    // The same key again (a retry after a lost answer): the provider answers with the first message.
    let again = client.send(&m).await.unwrap();
    assert_eq!(again.provider_message_id, receipt.provider_message_id);
    let records = peers.records(&b).await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["duplicate"], true);
    let body: serde_json::Value = serde_json::from_str(records[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"]["notification"]["title"], "Hi Ada");
    assert_eq!(body["message"]["data"]["campaign"], "spring");
    assert_eq!(records[0]["headers"]["idempotency-key"], "k/push 1");

    let gone = client.send(&message("push", "k-push-2", "invalid-token", serde_json::json!({"first_name": "A"}))).await;
    assert!(matches!(gone, Err(SendError::Permanent { bounce: true, .. })), "{gone:?}");
}

#[tokio::test]
async fn sms_sends_with_basic_auth_and_finds_messages_by_key() {
    let services = ServiceAddresses::from_env();
    let peers = Peers::new(&services);
    let b = bucket();
    let client = SmsClient::new(
        &SmsConfig {
            url: format!("{}/sms/{b}", peers.url),
            account_sid: "ACtest".into(),
            auth_token: Secret::Inline("tok".into()),
            from: "+15550000001".into(),
            status_callback: None,
            timeout: Duration::from_secs(5),
        },
        templates(),
    )
    .unwrap();
    let m = message("sms", "k-sms-1", "+4915112345678", serde_json::json!({"first_name": "Ada", "plan": "pro"}));
    let receipt = client.send(&m).await.unwrap();
    let sid = receipt.provider_message_id.clone().unwrap();
    assert!(sid.starts_with("SM"), "{sid}");
    let by_key =
        DeliveryRef { delivery_id: m.delivery_id(), idempotency_key: "k-sms-1".into(), provider_message_id: None };
    assert_ne!(client.status(&by_key).await.unwrap(), ProviderStatus::NotFound);
    let unknown = DeliveryRef { idempotency_key: "nope".into(), ..by_key };
    assert_eq!(client.status(&unknown).await.unwrap(), ProviderStatus::NotFound);
    let records = peers.records(&b).await.unwrap();
    assert!(records[0]["body"].as_str().unwrap().contains("Body=Plan+pro"), "{}", records[0]["body"]);

    let bad = client.send(&message("sms", "k-sms-2", "0151", serde_json::json!({"first_name": "A"}))).await;
    assert!(matches!(bad, Err(SendError::Permanent { bounce: true, .. })), "{bad:?}");
}
