//! `touchpoint connect --channel <c>` (a channel connector worker) and `touchpoint deliveries` (delivery
//! outcomes into ClickHouse, and the provider callback endpoint). The machinery is in
//! `touchpoint_connectors::channels`; this module picks the client and wires the pipeline file in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use touchpoint_connectors::channels::callbacks::{self, CallbackState};
use touchpoint_connectors::channels::config::ChannelConfig;
use touchpoint_connectors::channels::email::EmailClient;
use touchpoint_connectors::channels::push::PushClient;
use touchpoint_connectors::channels::sms::SmsClient;
use touchpoint_connectors::channels::webhook::WebhookClient;
use touchpoint_connectors::channels::worker::{ConnectorWorker, WorkerSettings};
use touchpoint_connectors::channels::ChannelClient;
use touchpoint_connectors::clickhouse::DeliveryStore;
use touchpoint_connectors::kafka::{ensure_topics, recv_batch, AckedProducer};
use touchpoint_connectors::{io_runtime, Backoff};
use touchpoint_schemas::{Channel, Delivery};

use crate::PipelineConfig;

/// The consumer group of a channel's workers: every worker of a channel shares it, so partitions are
/// spread over them.
pub fn connector_group(config: &PipelineConfig, channel: Channel) -> String {
    format!("{}.connect.{channel}", config.pipeline.group_id)
}

fn settings<P>(c: &ChannelConfig<P>) -> WorkerSettings {
    WorkerSettings {
        retry: c.retry.clone(),
        rate_limit: c.rate_limit.clone(),
        breaker: c.breaker.clone(),
        concurrency: c.concurrency,
        batch: c.batch,
    }
}

/// Runs a connector worker for `channel` until SIGTERM/SIGINT (or `stop`).
pub fn connect(config: &PipelineConfig, channel: Channel, instance: Option<&str>) -> Result<()> {
    let runtime = io_runtime("touchpoint-io")?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::runtime::spawn_signal_handler(&runtime, stop.clone());
    let mut config = config.clone();
    if let Some(instance) = instance {
        // Static membership (KIP-345): the group keeps this worker's partitions for it across a restart.
        config
            .kafka
            .consumer
            .insert("group.instance.id".into(), format!("{}-{instance}", connector_group(&config, channel)));
    }
    runtime.block_on(connect_until(&config, channel, stop))
}

pub async fn connect_until(config: &PipelineConfig, channel: Channel, stop: Arc<AtomicBool>) -> Result<()> {
    let templates = Arc::new(config.templates()?);
    let missing = || anyhow::anyhow!("the pipeline file has no channels.{channel} section");
    let channels = &config.channels;
    match channel {
        Channel::Email => {
            let c = channels.email.as_ref().ok_or_else(missing)?;
            let links = config.compliance.unsubscribe_links()?;
            run_worker(config, EmailClient::new(&c.provider, templates, links)?, settings(c), stop).await
        }
        Channel::Webhook => {
            let c = channels.webhook.as_ref().ok_or_else(missing)?;
            run_worker(config, WebhookClient::new(&c.provider)?, settings(c), stop).await
        }
        Channel::Push => {
            let c = channels.push.as_ref().ok_or_else(missing)?;
            run_worker(config, PushClient::new(&c.provider, templates)?, settings(c), stop).await
        }
        Channel::Sms => {
            let c = channels.sms.as_ref().ok_or_else(missing)?;
            run_worker(config, SmsClient::new(&c.provider, templates)?, settings(c), stop).await
        }
    }
}

async fn run_worker<C: ChannelClient>(
    config: &PipelineConfig,
    client: C,
    settings: WorkerSettings,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let channel = client.channel();
    let topics = config.topics.channel(channel);
    let mut specs = topics.specs(config.topics.connectors.partitions);
    specs.push(config.topics.deliveries.clone());
    ensure_topics(&config.kafka, &specs).await?;
    let worker = ConnectorWorker::new(client, &config.kafka, &connector_group(config, channel), topics, settings)?;
    worker.run(stop).await
}

/// `touchpoint deliveries`: loads `marketing.deliveries` into ClickHouse `deliveries` (offsets committed
/// after each insert) and serves the provider callback endpoint (`channels.callbacks_listen`).
pub fn deliveries(config: &PipelineConfig) -> Result<()> {
    let runtime = io_runtime("touchpoint-io")?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::runtime::spawn_signal_handler(&runtime, stop.clone());
    runtime.block_on(async {
        ensure_topics(&config.kafka, std::slice::from_ref(&config.topics.deliveries)).await?;
        touchpoint_connectors::clickhouse::migrate(&config.clickhouse).await?;
        let store = DeliveryStore::new(&config.clickhouse);
        if let Some(listen) = config.channels.callbacks_listen.clone() {
            let state = CallbackState {
                store: store.clone(),
                producer: AckedProducer::new(&config.kafka)?,
                deliveries_topic: config.topics.deliveries.name.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = callbacks::serve(&listen, state).await {
                    tracing::error!(error = %e, "the callback endpoint stopped");
                }
            });
        }
        load_deliveries(config, store, stop).await
    })
}

async fn load_deliveries(config: &PipelineConfig, store: DeliveryStore, stop: Arc<AtomicBool>) -> Result<()> {
    let topic = &config.topics.deliveries.name;
    let consumer: StreamConsumer =
        config.kafka.consumer_config(&format!("{}.deliveries", config.pipeline.group_id)).create()?;
    consumer.subscribe(&[topic])?;
    tracing::info!(%topic, "loading delivery outcomes into ClickHouse deliveries");
    let mut loaded = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let mut batch: Vec<Delivery> = Vec::new();
        let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
        for m in recv_batch(&consumer, 5_000, Duration::from_millis(50)).await {
            next.insert(m.partition(), m.offset() + 1);
            match m.payload().map(serde_json::from_slice::<Delivery>) {
                Some(Ok(d)) => batch.push(d),
                _ => tracing::warn!(partition = m.partition(), offset = m.offset(), "not a delivery record; skipped"),
            }
        }
        if next.is_empty() {
            continue;
        }
        // The same records inserted again (a crash before the commit) carry the same token.
        let token =
            format!("deliveries-{}", next.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","));
        const INSERT_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut attempt = 0;
        while let Err(e) = store.insert(&batch, &token).await {
            // Stopping: the batch is not committed, so it is loaded again at the next start.
            if stop.load(Ordering::Relaxed) {
                tracing::warn!(error = %e, "stop requested while ClickHouse is unavailable; the batch is loaded again at the next start");
                return Ok(());
            }
            tracing::warn!(error = %e, "inserting deliveries failed; retrying");
            tokio::time::sleep(INSERT_RETRY.delay(attempt)).await;
            attempt += 1;
        }
        loaded += batch.len();
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &next {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o)).context("offsets")?;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "committing delivery offsets failed");
        }
        tracing::debug!(loaded, "deliveries loaded");
    }
    tracing::info!(loaded, "delivery loader stopped");
    Ok(())
}
