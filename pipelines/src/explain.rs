//! `touchpoint explain --subject X [--journey J]`: why did subject X (not) get message Y? The subject's
//! path through its journeys and every decision on its send intents, with reasons and rule versions,
//! merged in event-time order from `journey_transitions` and `decisions`, each allowed send followed by
//! what became of it (`deliveries`: sent, retried, bounced, delivered...). The subject's segment
//! memberships come first (`segment_memberships`): an entry is what starts a journey like win-back.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use touchpoint_connectors::clickhouse::ClickHouseConfig;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TransitionLine {
    event_time: i64,
    journey: String,
    journey_version: String,
    from_step: String,
    to_step: String,
    cause: String,
    event_id: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct DecisionLine {
    /// The event time of the decision: its event's, or the end of the quiet hours that held it.
    decided_at: i64,
    released: bool,
    journey: String,
    journey_step: String,
    intent_rule: String,
    channel: String,
    template: String,
    decision: String,
    reason: String,
    caps_version: String,
    intents_version: String,
    event_id: String,
    late: bool,
    idempotency_key: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct DeliveryLine {
    idempotency_key: String,
    at: i64,
    status: String,
    attempt: i32,
    source: String,
    reason: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MembershipLine {
    segment: String,
    version: String,
    entered_at: i64,
    exited_at: Option<i64>,
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The report, as text.
pub async fn explain(config: &ClickHouseConfig, tenant: &str, subject: &str, journey: Option<&str>) -> Result<String> {
    let client = config.client();
    let journey_filter = if journey.is_some() { " AND journey = ?" } else { "" };
    let mut q = client
        .query(&format!(
            "SELECT toUnixTimestamp64Milli(event_time) AS event_time, journey, journey_version, from_step, to_step, \
             cause, event_id FROM journey_transitions FINAL WHERE tenant_id = ? AND subject_id = ?{journey_filter} \
             ORDER BY event_time, journey, seq"
        ))
        .bind(tenant)
        .bind(subject);
    if let Some(j) = journey {
        q = q.bind(j);
    }
    let transitions: Vec<TransitionLine> = q.fetch_all().await.context("reading journey_transitions")?;
    let mut q = client
        .query(&format!(
            "SELECT toUnixTimestamp64Milli(greatest(occurred_at, released_at)) AS decided_at, \
             released_at > occurred_at AS released, journey, journey_step, intent_rule, channel, \
             template, decision, reason, caps_version, intents_version, event_id, late, idempotency_key \
             FROM decisions FINAL \
             WHERE tenant_id = ? AND subject_id = ?{journey_filter} ORDER BY decided_at, intent_rule"
        ))
        .bind(tenant)
        .bind(subject);
    if let Some(j) = journey {
        q = q.bind(j);
    }
    let decisions: Vec<DecisionLine> = q.fetch_all().await.context("reading decisions")?;
    let deliveries: Vec<DeliveryLine> = client
        .query(
            "SELECT idempotency_key, toUnixTimestamp64Milli(at) AS at, status, attempt, source, reason \
             FROM deliveries FINAL WHERE tenant_id = ? AND subject_id = ? ORDER BY at, attempt",
        )
        .bind(tenant)
        .bind(subject)
        .fetch_all()
        .await
        .context("reading deliveries")?;

    let memberships: Vec<MembershipLine> = client
        .query(
            "SELECT segment, version, toUnixTimestamp64Milli(entered_at) AS entered_at, \
             toUnixTimestamp64Milli(exited_at) AS exited_at FROM segment_memberships FINAL \
             WHERE tenant_id = ? AND subject_id = ? ORDER BY entered_at, segment",
        )
        .bind(tenant)
        .bind(subject)
        .fetch_all()
        .await
        .context("reading segment_memberships")?;

    let mut out = String::new();
    let scope = journey.map(|j| format!(", journey {j}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "subject {tenant}/{subject}{scope}: {} movements, {} decisions",
        transitions.len(),
        decisions.len()
    );
    for m in &memberships {
        let until = m.exited_at.map_or_else(|| "member now".to_string(), |e| format!("left {}", time(e)));
        let _ = writeln!(out, "  segment {} {}: entered {}, {until}", m.segment, m.version, time(m.entered_at));
    }
    if transitions.is_empty() && decisions.is_empty() {
        let _ = writeln!(out, "  nothing recorded: no journey was entered and no send intent was decided");
        return Ok(out);
    }
    // Merge by event time; at equal times a movement comes before the decision it led to.
    let mut t = transitions.iter().peekable();
    let mut d = decisions.iter().peekable();
    loop {
        let take_transition = match (t.peek(), d.peek()) {
            (Some(a), Some(b)) => a.event_time <= b.decided_at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_transition {
            let Some(x) = t.next() else { break };
            let from = if x.from_step.is_empty() { "(enter)" } else { &x.from_step };
            let to = if x.to_step.is_empty() { "(leave)" } else { &x.to_step };
            let by = if x.event_id.is_empty() { String::new() } else { format!(" [event {}]", x.event_id) };
            let _ = writeln!(
                out,
                "  {}  {} {}  {from} -> {to}  ({}){by}",
                time(x.event_time),
                x.journey,
                x.journey_version,
                x.cause
            );
        } else {
            let Some(x) = d.next() else { break };
            let source = if x.journey.is_empty() {
                format!("rule {} ({})", x.intent_rule, x.intents_version)
            } else {
                format!("{} step {}", x.journey, x.journey_step)
            };
            let late = if x.late { " [late event]" } else { "" };
            let released = if x.released { " [released from quiet hours]" } else { "" };
            let _ = writeln!(
                out,
                "  {}  {source}: {} {} -> {}: {} (caps {}) [event {}]{late}{released}",
                time(x.decided_at),
                x.channel,
                x.template,
                x.decision.to_uppercase(),
                x.reason,
                x.caps_version,
                x.event_id
            );
            // What the channel connector made of an allowed send.
            for v in deliveries.iter().filter(|v| v.idempotency_key == x.idempotency_key) {
                let attempt = if v.attempt > 0 { format!(" attempt {}", v.attempt) } else { String::new() };
                let reason = if v.reason.is_empty() { String::new() } else { format!(": {}", v.reason) };
                let _ = writeln!(out, "      {}  delivery {}{attempt} ({}){reason}", time(v.at), v.status, v.source);
            }
        }
    }
    Ok(out)
}
