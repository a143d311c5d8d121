//! The two sinks of the normalization pipeline, as [`BatchWriter`]s for [`super::epoch_sink`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use touchpoint_connectors::clickhouse::encoding::batch_token;
use touchpoint_connectors::clickhouse::EventStore;
use touchpoint_connectors::kafka::AckedProducer;
use touchpoint_schemas::NormalizedEvent;

use super::epoch_sink::BatchWriter;
use super::normalize::DeadLetter;
use super::Epoch;

/// Normalized events → ClickHouse `events`, one INSERT per epoch and worker, deduplicated by token.
pub struct ClickHouseEvents {
    pub store: EventStore,
}

impl BatchWriter<NormalizedEvent> for ClickHouseEvents {
    fn name(&self) -> &'static str {
        "ClickHouseEvents"
    }

    fn write(&self, _epoch: Epoch, batch: Arc<Vec<NormalizedEvent>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move {
            let token = batch_token("events", &batch);
            store.insert(&batch, &token).await
        }
        .boxed()
    }
}

/// Rejected records → the dead-letter topic, acknowledged by the broker.
pub struct DeadLetterTopic {
    pub producer: AckedProducer,
    pub topic: String,
}

impl BatchWriter<DeadLetter> for DeadLetterTopic {
    fn name(&self) -> &'static str {
        "DeadLetterTopic"
    }

    fn write(&self, _epoch: Epoch, batch: Arc<Vec<DeadLetter>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let producer = self.producer.clone();
        let records: Vec<_> = batch.iter().map(|d| d.to_record(&self.topic)).collect();
        async move { producer.send_all(&records).await.map(|_| ()) }.boxed()
    }
}
