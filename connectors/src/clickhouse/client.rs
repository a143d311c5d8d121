//! The `events` table: batched idempotent inserts, and the reads a restart needs.

use anyhow::{Context, Result};
use clickhouse::Row;
use serde::Deserialize;
use touchpoint_schemas::NormalizedEvent;

use super::encoding::EventRow;
use super::ClickHouseConfig;

#[derive(Clone)]
pub struct EventStore {
    client: clickhouse::Client,
}

#[derive(Debug, Row, Deserialize)]
struct StoredOffset {
    kafka_partition: u32,
    kafka_offset: u64,
}

/// An event id already stored, with the time it was ingested (to restore deduplication state).
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct StoredEventId {
    pub tenant_id: String,
    pub event_id: String,
    pub ingested_at_ms: i64,
}

/// One INSERT of `items` as rows of `table` (no request when there are none), with its
/// `insert_deduplication_token` when given: the same batch inserted twice is stored once. The rows are
/// encoded from the items where the caller holds them, never collected first.
async fn insert_rows<'a, R, X>(
    client: &clickhouse::Client,
    table: &str,
    token: Option<&str>,
    items: impl IntoIterator<Item = &'a X, IntoIter: Send>,
    to_row: impl Fn(&'a X) -> R::Value<'a> + Send,
) -> Result<()>
where
    R: clickhouse::RowWrite,
    X: Sync + 'a,
{
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return Ok(());
    }
    let mut insert = client.insert::<R>(table).await.with_context(|| format!("preparing INSERT into {table}"))?;
    if let Some(token) = token {
        insert = insert.with_setting("insert_deduplication_token", token);
    }
    for item in items {
        insert.write(&to_row(item)).await.with_context(|| format!("writing a row to {table}"))?;
    }
    insert.end().await.with_context(|| format!("INSERT into {table}"))
}

impl EventStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        EventStore { client: config.client() }
    }

    /// Inserts one batch as one INSERT. `token` is the batch's `insert_deduplication_token`: the same
    /// batch inserted twice (a retry after a timeout whose insert did succeed) is stored once. The rows
    /// are read from wherever the caller holds them (the pipeline: the containers they arrived in).
    pub async fn insert<'a>(
        &self,
        events: impl IntoIterator<Item = &'a NormalizedEvent, IntoIter: Send>,
        token: &str,
    ) -> Result<()> {
        insert_rows::<EventRow<'_>, _>(&self.client, "events", Some(token), events, EventRow::from).await
    }

    /// Offsets of `topic`/`partition` at or after `from` that are already stored. After a crash, the
    /// source re-reads from its last committed offset; records the previous run already stored are
    /// skipped so that they are not stored twice.
    pub async fn stored_offsets(&self, topic: &str, partitions: &[(i32, i64)]) -> Result<Vec<(i32, i64)>> {
        let mut out = Vec::new();
        for &(partition, from) in partitions {
            let rows: Vec<StoredOffset> = self
                .client
                .query(
                    "SELECT kafka_partition, kafka_offset FROM events \
                     WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset >= ?",
                )
                .bind(topic)
                .bind(u32::try_from(partition).unwrap_or_default())
                .bind(u64::try_from(from).unwrap_or_default())
                .fetch_all()
                .await
                .with_context(|| format!("reading stored offsets of {topic}/{partition}"))?;
            out.extend(rows.into_iter().map(|r| {
                (
                    i32::try_from(r.kafka_partition).unwrap_or_default(),
                    i64::try_from(r.kafka_offset).unwrap_or_default(),
                )
            }));
        }
        Ok(out)
    }

    /// Event ids ingested at or after `since_ms` (UTC ms).
    pub async fn event_ids_since(&self, since_ms: i64) -> Result<Vec<StoredEventId>> {
        let mut out = Vec::new();
        self.visit_event_ids_since(since_ms, |id| out.push(id)).await?;
        Ok(out)
    }

    /// [`event_ids_since`](Self::event_ids_since), one row at a time as the response streams in: the
    /// caller keeps a 16-byte hash per id, not the ids' strings (a day of ids can be many GB of text).
    pub async fn visit_event_ids_since(&self, since_ms: i64, mut visit: impl FnMut(StoredEventId)) -> Result<()> {
        let mut cursor = self
            .client
            // (An alias named like the column would shadow it in WHERE: hence `ingested_at_ms`.)
            .query(
                "SELECT tenant_id, event_id, toUnixTimestamp64Milli(ingested_at) AS ingested_at_ms FROM events \
                 WHERE ingested_at >= fromUnixTimestamp64Milli(?)",
            )
            .bind(since_ms)
            .fetch::<StoredEventId>()
            .context("reading recent event ids")?;
        while let Some(id) = cursor.next().await.context("reading recent event ids")? {
            visit(id);
        }
        Ok(())
    }

    /// Number of rows in `events`.
    pub async fn count(&self) -> Result<u64> {
        self.client.query("SELECT count() FROM events").fetch_one().await.context("counting events")
    }

    /// All event ids stored (tests and the demo summary; not for large tables).
    pub async fn all_event_ids(&self) -> Result<Vec<String>> {
        self.client.query("SELECT event_id FROM events").fetch_all().await.context("reading event ids")
    }

    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }
}

/// The `decisions` table.
#[derive(Clone)]
pub struct DecisionStore {
    client: clickhouse::Client,
}

impl DecisionStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        DecisionStore { client: config.client() }
    }

    /// One INSERT per batch; `token` deduplicates a retried batch. Decisions as the pipeline holds them
    /// (shared with the connector topics' sink) or owned.
    pub async fn insert<'a, D>(
        &self,
        decisions: impl IntoIterator<Item = &'a D, IntoIter: Send>,
        token: &str,
    ) -> Result<()>
    where
        D: std::borrow::Borrow<touchpoint_operators::decision::Decision> + Sync + 'a,
    {
        let decided_at = crate::now_ms();
        insert_rows::<super::encoding::DecisionRow<'_>, D>(&self.client, "decisions", Some(token), decisions, |d| {
            super::encoding::DecisionRow::new(d.borrow(), decided_at)
        })
        .await
    }

    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }
}

/// Journey transitions → `journey_transitions`.
#[derive(Clone)]
pub struct TransitionStore {
    client: clickhouse::Client,
}

impl TransitionStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        TransitionStore { client: config.client() }
    }

    /// One INSERT per batch (ReplacingMergeTree: a batch written again replaces its rows).
    pub async fn insert<'a>(
        &self,
        transitions: impl IntoIterator<Item = &'a touchpoint_operators::journey::Transition, IntoIter: Send>,
    ) -> Result<()> {
        let recorded_at = crate::now_ms();
        insert_rows::<super::encoding::TransitionRow<'_>, _>(
            &self.client,
            "journey_transitions",
            None,
            transitions,
            |t| super::encoding::TransitionRow::new(t, recorded_at),
        )
        .await
    }
}

/// Subject profiles after each change → `profiles`.
#[derive(Clone)]
pub struct ProfileStore {
    client: clickhouse::Client,
}

impl ProfileStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        ProfileStore { client: config.client() }
    }

    /// One INSERT per batch (ReplacingMergeTree on the profile's newest field time: a batch written
    /// again replaces its rows).
    pub async fn insert<'a>(
        &self,
        profiles: impl IntoIterator<Item = &'a touchpoint_operators::guardrails::ProfileSnapshot, IntoIter: Send>,
    ) -> Result<()> {
        let recorded_at = crate::now_ms();
        insert_rows::<super::encoding::ProfileRow<'_>, _>(&self.client, "profiles", None, profiles, |p| {
            super::encoding::ProfileRow::new(p, recorded_at)
        })
        .await
    }
}

/// Segment entries and exits → `segment_memberships`.
#[derive(Clone)]
pub struct SegmentMembershipStore {
    client: clickhouse::Client,
}

impl SegmentMembershipStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        SegmentMembershipStore { client: config.client() }
    }

    /// One INSERT per batch (a membership's row is identified by subject, segment and ordinal: a batch
    /// written again replaces its rows).
    pub async fn insert<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a touchpoint_operators::segment::SegmentChange, IntoIter: Send>,
    ) -> Result<()> {
        let recorded_at = crate::now_ms();
        insert_rows::<super::encoding::SegmentMembershipRow<'_>, _>(
            &self.client,
            "segment_memberships",
            None,
            changes,
            |c| super::encoding::SegmentMembershipRow::new(c, recorded_at),
        )
        .await
    }
}

/// Delivery outcomes → `deliveries`; and the lookup provider callbacks need.
#[derive(Clone)]
pub struct DeliveryStore {
    client: clickhouse::Client,
}

/// A delivery found by one of its ids (ours or the provider's).
#[derive(Debug, Clone, Row, Deserialize, PartialEq, Eq)]
pub struct KnownDelivery {
    pub delivery_id: String,
    pub idempotency_key: String,
    pub channel: String,
    pub tenant_id: String,
    pub subject_id: String,
    pub provider_message_id: String,
}

impl DeliveryStore {
    pub fn new(config: &ClickHouseConfig) -> Self {
        DeliveryStore { client: config.client() }
    }

    /// One INSERT per batch; `token` deduplicates a retried batch.
    pub async fn insert(&self, deliveries: &[touchpoint_schemas::Delivery], token: &str) -> Result<()> {
        insert_rows::<super::encoding::DeliveryRow<'_>, _>(
            &self.client,
            "deliveries",
            Some(token),
            deliveries,
            super::encoding::DeliveryRow::from,
        )
        .await
    }

    /// The delivery a provider callback speaks of: by our delivery id or the provider's message id.
    pub async fn find(&self, id: &str) -> Result<Option<KnownDelivery>> {
        let rows: Vec<KnownDelivery> = self
            .client
            .query(
                "SELECT delivery_id, idempotency_key, channel, tenant_id, subject_id, provider_message_id \
                 FROM deliveries WHERE (delivery_id = ? OR provider_message_id = ?) \
                 AND source IN ('connector', 'reconciled') ORDER BY provider_message_id DESC LIMIT 1",
            )
            .bind(id)
            .bind(id)
            .fetch_all()
            .await
            .with_context(|| format!("looking up delivery {id}"))?;
        Ok(rows.into_iter().next())
    }
}
