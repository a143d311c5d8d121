//! Restoring state at start: the keyed state from its changelogs and the dedupe ids from ClickHouse,
//! read once per process and grouped by the worker that owns them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use touchpoint_connectors::clickhouse::EventStore;
use touchpoint_connectors::kafka::{partition_count, visit_partitions, ReadRecord};
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::fast_hash::FastHashMap;
use touchpoint_operators::guardrails::SubjectSendState;
use touchpoint_operators::key_groups::owner as guardrail_owner;
use touchpoint_schemas::SubjectRef;

use crate::config::PipelineConfig;
use crate::stages::dedupe::owner;

/// Reads the event ids stored within the dedupe TTL once per process and groups them by the worker
/// that owns them (the dedupe exchange's routing), keeping the workers of this process.
pub(super) async fn restore_event_ids(
    config: &PipelineConfig,
    peers: usize,
    local_workers: std::ops::Range<usize>,
) -> Result<HashMap<usize, Vec<(u128, i64)>>> {
    let ttl_ms = i64::try_from(config.dedupe.ttl.as_millis()).unwrap_or(i64::MAX);
    let since = chrono::Utc::now().timestamp_millis().saturating_sub(ttl_ms);
    let mut by_worker: HashMap<usize, Vec<(u128, i64)>> = HashMap::new();
    // Streamed: a hash per id is kept, never the ids' text, and at most `dedupe.max_ids` per worker
    // (the newest: what its deduplicator would keep), trimmed whenever a worker's list doubles.
    let max_ids = config.dedupe.max_ids.max(1);
    let keep_newest = |ids: &mut Vec<(u128, i64)>| {
        ids.sort_unstable_by_key(|&(_, seen_at)| std::cmp::Reverse(seen_at));
        ids.truncate(max_ids);
    };
    EventStore::new(&config.clickhouse)
        .visit_event_ids_since(since, |id| {
            let worker = owner(&id.tenant_id, &id.event_id, peers);
            if local_workers.contains(&worker) {
                let ids = by_worker.entry(worker).or_default();
                ids.push((dedupe_key(&id.tenant_id, &id.event_id), id.ingested_at_ms));
                if ids.len() >= 2 * max_ids {
                    keep_newest(ids);
                }
            }
        })
        .await?;
    for ids in by_worker.values_mut() {
        if ids.len() > max_ids {
            keep_newest(ids);
            tracing::warn!(
                max_ids,
                "more stored event ids within the dedupe TTL than dedupe.max_ids: the oldest are not restored"
            );
        }
        // Oldest first: the deduplicator's expiry queue is in time order (an id out of order lives longer).
        ids.sort_unstable_by_key(|&(_, seen_at)| seen_at);
    }
    Ok(by_worker)
}

/// Reads the cap changelog (cap counters and send ledger; latest value per subject wins; a tombstone
/// forgets) and groups the state by owning worker, keeping the workers of this process.
pub fn restore_caps(
    config: &PipelineConfig,
    peers: usize,
    local_workers: std::ops::Range<usize>,
    partial: PartialRestore,
) -> Result<HashMap<usize, FastHashMap<SubjectRef, SubjectSendState>>> {
    let topic = config.topics.caps_changelog(&config.pipeline.group_id).name;
    restore_changelog(config, &topic, "frequency-cap", peers, local_workers, partial)
}

/// Reads `topic` to its end for a restore of `what`, within `source.restore_timeout`: not reaching the
/// end is an error unless a partial restore is accepted. Small topics only (journey versions): a
/// changelog is folded as it is read ([`visit_for_restore`]).
pub(super) fn read_for_restore(
    config: &PipelineConfig,
    topic: &str,
    what: &str,
    partial: PartialRestore,
) -> Result<Vec<ReadRecord>> {
    let mut out = Vec::new();
    visit_for_restore(config, topic, what, partial, |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// [`read_for_restore`], handing each record to `visit` as it is read: memory holds what `visit` keeps,
/// not the whole log.
pub(super) fn visit_for_restore(
    config: &PipelineConfig,
    topic: &str,
    what: &str,
    partial: PartialRestore,
    visit: impl FnMut(ReadRecord) -> Result<()>,
) -> Result<()> {
    let (idle, timeout) = (Duration::from_millis(500), config.source.restore_timeout);
    let partitions: Vec<i32> = (0..partition_count(&config.kafka, topic)?).collect();
    let strict = partial == PartialRestore::Refuse;
    let read = visit_partitions(&config.kafka, topic, &partitions, idle, timeout, strict, visit);
    if strict {
        read.with_context(|| format!("restoring {what} (start with --accept-partial-restore to run with less)"))
    } else {
        read
    }
}

/// What a restore does when it cannot read everything (its deadline passed, or a record it cannot
/// parse): by default the start fails, naming the topic, partition and offset, since subjects whose
/// state is missing would start afresh (caps reset, sends repeated). An operator may accept that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartialRestore {
    #[default]
    Refuse,
    /// `--accept-partial-restore`: log what is missing and run with what was read.
    Accept,
}

/// Reads a subject-keyed changelog (latest value per subject wins; a tombstone forgets) and groups the
/// state by owning worker, keeping the workers of this process.
pub fn restore_changelog<T: serde::de::DeserializeOwned>(
    config: &PipelineConfig,
    topic: &str,
    what: &str,
    peers: usize,
    local_workers: std::ops::Range<usize>,
    partial: PartialRestore,
) -> Result<HashMap<usize, FastHashMap<SubjectRef, T>>> {
    let started = std::time::Instant::now();
    // Folded as read: the latest value per subject, never the log itself.
    let mut latest: HashMap<SubjectRef, Option<T>> = HashMap::new();
    let mut count = 0usize;
    let mut unreadable = 0usize;
    visit_for_restore(config, topic, &format!("{what} state"), partial, |r| {
        count += 1;
        let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else { return Ok(()) };
        let Some((tenant, subject)) = key.split_once('/') else { return Ok(()) };
        let subject = SubjectRef::new(tenant, subject);
        let value = match r.payload.as_deref() {
            None => None,
            Some(p) => match serde_json::from_slice::<T>(p) {
                Ok(v) => Some(v),
                Err(e) if partial == PartialRestore::Refuse => bail!(
                    "restoring {what} state: {topic} partition {} offset {} (key {key:?}) is unreadable: {e} \
                     (start with --accept-partial-restore to run without it; the subject then starts afresh)",
                    r.partition,
                    r.offset
                ),
                Err(e) => {
                    // Never silently: a state record this version cannot read is reported.
                    unreadable += 1;
                    tracing::error!(
                        topic,
                        partition = r.partition,
                        offset = r.offset,
                        key,
                        error = %e,
                        "unreadable state record; the subject starts afresh (partial restore accepted)",
                    );
                    None
                }
            },
        };
        latest.insert(subject, value);
        Ok(())
    })?;
    let mut by_worker: HashMap<usize, FastHashMap<SubjectRef, T>> = HashMap::new();
    let mut subjects = 0usize;
    for (subject, state) in latest {
        let Some(state) = state else { continue };
        let worker = guardrail_owner(&subject, peers);
        if local_workers.contains(&worker) {
            by_worker.entry(worker).or_default().insert(subject, state);
            subjects += 1;
        }
    }
    tracing::info!(topic, records = count, subjects, unreadable, elapsed = ?started.elapsed(), "restored {what} state");
    Ok(by_worker)
}
