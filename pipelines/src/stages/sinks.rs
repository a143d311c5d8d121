//! The two sinks of the normalization pipeline, as [`BatchWriter`]s for [`super::epoch_sink`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use touchpoint_connectors::clickhouse::batch_token;
use touchpoint_connectors::clickhouse::EventStore;
use touchpoint_connectors::kafka::{AckedProducer, OutgoingRecord};
use touchpoint_operators::decision::Decision;
use touchpoint_schemas::SubjectRef;
use touchpoint_schemas::{headers, ChannelMessageRef, NormalizedEvent};
use touchpoint_schemas::{JourneyStepRef, NO_METADATA};

use super::epoch_sink::{Batch, BatchWriter};
use super::Epoch;

/// Normalized events → ClickHouse `events`, one INSERT per epoch and worker, deduplicated by token.
pub struct ClickHouseEvents {
    pub store: EventStore,
}

impl BatchWriter<NormalizedEvent> for ClickHouseEvents {
    fn name(&self) -> &'static str {
        "ClickHouseEvents"
    }

    fn write(&self, _epoch: Epoch, batch: Arc<Batch<NormalizedEvent>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move {
            let token = batch_token("events", batch.iter());
            store.insert(batch.iter(), &token).await
        }
        .boxed()
    }
}

/// Something written to one topic as one record each.
pub trait TopicRecord {
    fn to_record(&self, topic: &str) -> OutgoingRecord;
}

/// A dry run's answer, keyed by its correlation id.
impl TopicRecord for touchpoint_operators::evaluate::EvaluateReply {
    fn to_record(&self, topic: &str) -> OutgoingRecord {
        OutgoingRecord {
            topic: topic.to_string(),
            partition: None,
            key: Some(self.correlation_id.clone().into_bytes()),
            payload: Some(serde_json::to_vec(self).unwrap_or_default()),
            headers: Vec::new(),
        }
    }
}

/// Records → one topic, acknowledged by the broker: rejected records to a dead-letter topic
/// (`DeadLetterTopic`), late events to the late-events topic (`LateEventsTopic`, policy `route`).
pub struct TopicSink {
    pub name: &'static str,
    pub producer: AckedProducer,
    pub topic: String,
}

impl<T: TopicRecord + Send + Sync + 'static> BatchWriter<T> for TopicSink {
    fn name(&self) -> &'static str {
        self.name
    }

    /// Bounded: a record too large to write goes as a reference, and one the broker still refuses for
    /// good (its limit lower than ours) goes again as its reference instead of stalling the epoch.
    fn write(&self, _epoch: Epoch, batch: Arc<Batch<T>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let producer = self.producer.clone();
        let records: Vec<_> = batch.iter().map(|r| r.to_record(&self.topic).bounded()).collect();
        // Dead letters and late events: not compacted, so every refused record may go as a reference.
        async move { Ok(producer.send_all_or_references(&records, |_| true).await?) }.boxed()
    }
}

/// Decisions → ClickHouse `decisions`, one INSERT per epoch and worker.
pub struct ClickHouseDecisions {
    pub store: touchpoint_connectors::clickhouse::DecisionStore,
}

impl BatchWriter<Arc<Decision>> for ClickHouseDecisions {
    fn name(&self) -> &'static str {
        "ClickHouseDecisions"
    }

    fn write(&self, _epoch: Epoch, batch: Arc<Batch<Arc<Decision>>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for d in batch.iter() {
                h.update(d.intent.idempotency_key.as_bytes());
            }
            store.insert(batch.iter(), &format!("decisions-{:032x}", h.digest128())).await
        }
        .boxed()
    }
}

/// The message a channel connector receives for an allowed send: a [`ChannelMessage`] as JSON (key
/// `tenant/subject`, header `tp.idempotency_key`), written from the decision's own fields
/// ([`ChannelMessageRef`]).
///
/// [`ChannelMessage`]: touchpoint_schemas::ChannelMessage
pub fn send_record(d: &Decision, topic_prefix: &str) -> Result<OutgoingRecord, EncodeError> {
    let i = &d.intent;
    let message = ChannelMessageRef {
        idempotency_key: &i.idempotency_key,
        channel: i.channel,
        tenant_id: &i.subject.tenant_id,
        subject_id: &i.subject.subject_id,
        recipient: i.recipient.as_deref(),
        template: Some(&i.template),
        data: &i.payload,
        metadata: &NO_METADATA,
        category: &i.category,
        purpose: i.purpose,
        priority: i.priority,
        event_id: &i.event_id,
        event_type: &i.event_type,
        occurred_at: i.occurred_at_ms,
        rule_id: &i.rule_id,
        intents_version: &i.ruleset_version,
        caps_version: &d.caps_version,
        journey: i.journey.as_ref().map(|j| JourneyStepRef { journey: &j.journey, version: &j.version, step: &j.step }),
    };
    let mut topic = String::with_capacity(topic_prefix.len() + 8);
    topic.push_str(topic_prefix);
    topic.push_str(i.channel.as_str());
    let payload = serde_json::to_vec(&message).map_err(|source| EncodeError { topic: topic.clone(), source })?;
    Ok(OutgoingRecord {
        topic,
        partition: None,
        key: Some(subject_key(&i.subject)),
        payload: Some(payload),
        headers: vec![(headers::IDEMPOTENCY_KEY.into(), i.idempotency_key.clone().into_bytes())],
    })
}

/// A record value that could not be encoded. It is never written as an empty value instead: on a
/// compacted topic that is a tombstone, which would erase the subject's state. The sink fails the
/// write (and retries, visibly) rather than lose or corrupt anything.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a record for {topic}: {source}")]
pub struct EncodeError {
    pub topic: String,
    #[source]
    pub source: serde_json::Error,
}

/// The record key of a subject's records (sends, state changelogs): `tenant/subject`.
pub fn subject_key(subject: &SubjectRef) -> Vec<u8> {
    let (tenant, id) = (subject.tenant_id.as_bytes(), subject.subject_id.as_bytes());
    let mut key = Vec::with_capacity(tenant.len() + 1 + id.len());
    key.extend_from_slice(tenant);
    key.push(b'/');
    key.extend_from_slice(id);
    key
}

/// Allowed sends → `connector.<channel>`, acknowledged.
pub struct ConnectorTopics {
    pub producer: AckedProducer,
    pub prefix: String,
}

impl BatchWriter<Arc<Decision>> for ConnectorTopics {
    fn name(&self) -> &'static str {
        "ConnectorTopics"
    }

    fn write(&self, _epoch: Epoch, batch: Arc<Batch<Arc<Decision>>>) -> BoxFuture<'static, anyhow::Result<()>> {
        let producer = self.producer.clone();
        let records: Result<Vec<_>, _> = batch.iter().map(|d| send_record(d, &self.prefix)).collect();
        async move {
            producer.send_all(&records?).await?;
            Ok(())
        }
        .boxed()
    }

    /// Sends do not need each other: every record carries its idempotency key, and the ledger is written
    /// only once every earlier epoch's sends are durable too (the sink's progress). Not waiting for the
    /// previous batch's acknowledgements takes a broker round trip off event-to-send latency.
    fn writes_in_flight(&self) -> usize {
        4
    }
}

/// A subject-keyed state changelog (compacted; key `tenant/subject`, JSON value, tombstone when the
/// subject has nothing left): `<group>.caps-changelog`, `<group>.journeys-changelog`.
pub struct StateChangelog {
    pub name: &'static str,
    pub producer: AckedProducer,
    pub topic: String,
}

impl<T: serde::Serialize + Send + Sync + 'static> BatchWriter<touchpoint_operators::guardrails::SubjectSnapshot<T>>
    for StateChangelog
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn write(
        &self,
        _epoch: Epoch,
        batch: Arc<Batch<touchpoint_operators::guardrails::SubjectSnapshot<T>>>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let producer = self.producer.clone();
        let records: Result<Vec<_>, _> = batch.iter().map(|s| changelog_record(&self.topic, s)).collect();
        async move {
            producer.send_all(&records?).await?;
            Ok(())
        }
        .boxed()
    }
}

/// A subject's state as its changelog record: key `tenant/subject`, JSON value, or a tombstone when the
/// subject has nothing left (and only then).
pub fn changelog_record<T: serde::Serialize>(
    topic: &str,
    snapshot: &touchpoint_operators::guardrails::SubjectSnapshot<T>,
) -> Result<OutgoingRecord, EncodeError> {
    let payload = snapshot
        .state
        .as_ref()
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|source| EncodeError { topic: topic.to_string(), source })?;
    Ok(OutgoingRecord {
        partition: None,
        topic: topic.to_string(),
        key: Some(subject_key(&snapshot.subject)),
        payload,
        headers: vec![],
    })
}

/// Journey transitions → ClickHouse `journey_transitions`, one INSERT per epoch and worker.
pub struct ClickHouseTransitions {
    pub store: touchpoint_connectors::clickhouse::TransitionStore,
}

impl BatchWriter<touchpoint_operators::journey::Transition> for ClickHouseTransitions {
    fn name(&self) -> &'static str {
        "ClickHouseTransitions"
    }

    fn write(
        &self,
        _epoch: Epoch,
        batch: Arc<Batch<touchpoint_operators::journey::Transition>>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move { store.insert(batch.iter()).await }.boxed()
    }
}

/// Changed profiles → ClickHouse `profiles`, one INSERT per epoch and worker.
pub struct ClickHouseProfiles {
    pub store: touchpoint_connectors::clickhouse::ProfileStore,
}

impl BatchWriter<touchpoint_operators::guardrails::ProfileSnapshot> for ClickHouseProfiles {
    fn name(&self) -> &'static str {
        "ClickHouseProfiles"
    }

    fn write(
        &self,
        _epoch: Epoch,
        batch: Arc<Batch<touchpoint_operators::guardrails::ProfileSnapshot>>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move { store.insert(batch.iter()).await }.boxed()
    }
}

/// Segment entries and exits → ClickHouse `segment_memberships`, one INSERT per epoch and worker.
pub struct ClickHouseSegmentMemberships {
    pub store: touchpoint_connectors::clickhouse::SegmentMembershipStore,
}

impl BatchWriter<touchpoint_operators::segment::SegmentChange> for ClickHouseSegmentMemberships {
    fn name(&self) -> &'static str {
        "ClickHouseSegmentMemberships"
    }

    fn write(
        &self,
        _epoch: Epoch,
        batch: Arc<Batch<touchpoint_operators::segment::SegmentChange>>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        let store = self.store.clone();
        async move { store.insert(batch.iter()).await }.boxed()
    }
}
