//! Channel connector workers (`touchpoint connect`) end to end: real Kafka, real peers
//! (`deploy/peers/`: aiosmtpd and HTTP providers), real ClickHouse for the delivery outcomes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{produce_json, runtime, TestPipeline};
use serde_json::{json, Value};
use touchpoint_connectors::kafka::{read_all, ReadRecord};
use touchpoint_connectors::testing::{unique_name, Peers, ServiceAddresses};
use touchpoint_schemas::{Delivery, DeliveryStatus};

struct Harness {
    tp: TestPipeline,
    /// The peers' bucket of this test (and, with `.test`, its email domain).
    bucket: String,
    peers: Peers,
    callbacks: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn harness(prefix: &str, overrides: &[(&str, &str)]) -> Harness {
    let bucket = unique_name(prefix).replace('_', "-").to_lowercase();
    let callbacks = format!("127.0.0.1:{}", free_port());
    let mut all: Vec<(String, String)> = vec![
        ("/hooks/local".into(), format!("/hooks/{bucket}")),
        ("/push/local".into(), format!("/push/{bucket}")),
        ("/sms/local".into(), format!("/sms/{bucket}")),
        ("${TOUCHPOINT_CALLBACKS_LISTEN:-127.0.0.1:18095}".into(), callbacks.clone()),
    ];
    all.extend(overrides.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let refs: Vec<(&str, &str)> = all.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let tp = TestPipeline::new(prefix, &refs);
    tp.prepare();
    let peers = Peers::new(&ServiceAddresses::from_env());
    Harness { tp, bucket, peers, callbacks }
}

impl Harness {
    fn domain(&self) -> String {
        format!("{}.test", self.bucket)
    }

    fn topic(&self, channel: &str) -> String {
        format!("{}.connector.{channel}", self.tp.name)
    }

    /// A channel message as the pipeline writes it.
    fn message(&self, channel: &str, i: usize, recipient: &str, data: Value) -> (String, Value) {
        let subject = format!("u{i}");
        let v = json!({
            "idempotency_key": format!("{}-{channel}-{i}", self.bucket), "channel": channel, "tenant_id": "acme",
            "subject_id": subject, "recipient": recipient, "template": "welcome", "data": data,
            "metadata": {}, "category": "onboarding", "purpose": "marketing", "priority": 0,
            "event_id": format!("e{i}"), "event_type": "signed_up", "occurred_at": 1_764_000_000_000i64,
            "rule_id": "welcome-email", "intents_version": "v1", "caps_version": "c1", "journey": null
        });
        (format!("acme/{subject}"), v)
    }

    fn produce(&self, channel: &str, records: Vec<(String, Value)>) {
        produce_json(&self.tp, &self.topic(channel), records);
    }

    fn start(&self, command: &str, channel: Option<&str>, log: &str) -> Child {
        self.start_with(command, channel, log, &[])
    }

    fn start_with(&self, command: &str, channel: Option<&str>, log: &str, args: &[&str]) -> Child {
        let mut c = Command::new(env!("CARGO_BIN_EXE_touchpoint"));
        c.arg(command).arg("--config").arg(&self.tp.path).args(args);
        if let Some(ch) = channel {
            c.args(["--channel", ch]);
        }
        c.stdout(Stdio::null())
            .stderr(
                std::fs::File::create(std::env::temp_dir().join(format!("{}-{log}.log", self.tp.name))).expect("log"),
            )
            .spawn()
            .expect("starting touchpoint")
    }

    fn mail(&self) -> Vec<Value> {
        runtime().block_on(self.peers.mail(&self.domain())).expect("peer mail")
    }

    fn records(&self) -> Vec<Value> {
        runtime().block_on(self.peers.records(&self.bucket)).expect("peer records")
    }

    fn deliveries(&self) -> Vec<Delivery> {
        read_all(
            &self.tp.config.kafka,
            &self.tp.config.topics.deliveries.name,
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .expect("reading deliveries")
        .into_iter()
        .filter_map(|r| r.payload.and_then(|p| serde_json::from_slice(&p).ok()))
        .collect()
    }

    fn dead_letters(&self, channel: &str) -> Vec<ReadRecord> {
        read_all(
            &self.tp.config.kafka,
            &format!("{}.dlq", self.topic(channel)),
            Duration::from_millis(500),
            Duration::from_secs(60),
        )
        .expect("reading the dead-letter topic")
    }
}

fn stop(mut child: Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("SIGTERM");
    let status = child.wait().expect("worker exit");
    assert!(status.success(), "the worker did not stop cleanly: {status}");
}

fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count_by<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

fn statuses(deliveries: &[Delivery]) -> HashMap<DeliveryStatus, usize> {
    let mut m = HashMap::new();
    for d in deliveries {
        *m.entry(d.status).or_insert(0) += 1;
    }
    m
}

#[test]
fn a_thousand_emails_arrive_exactly_once_with_their_merge_fields_even_when_produced_twice() {
    let h = harness("connect_email", &[]);
    let plans = ["free", "pro", "team"];
    let records = (0..1000)
        .map(|i| {
            h.message(
                "email",
                i,
                &format!("user{i}@{}", h.domain()),
                json!({"first_name": format!("Name{i}"), "plan": plans[i % 3]}),
            )
        })
        .collect::<Vec<_>>();
    // Every tenth message twice, as the pipeline produces a send again when it dies between producing
    // it and writing its send ledger (docs/exactly-once.md): the same key, the same partition.
    let repeats: Vec<_> = records.iter().step_by(10).cloned().collect();
    h.produce("email", records);
    h.produce("email", repeats);
    let worker = h.start("connect", Some("email"), "email");
    wait_until("1,000 emails at the SMTP server", 240, || h.mail().len() >= 1000);
    // The repeats behind the last first copies: read and dropped within a few rounds.
    std::thread::sleep(Duration::from_secs(3));
    stop(worker);
    assert_eq!(worker_stat(&h, "email", "sent"), 1000);
    assert_eq!(worker_stat(&h, "email", "already_done"), 100, "every repeat was read and dropped by its key");

    let mail = h.mail();
    assert_eq!(mail.len(), 1000, "every email exactly once");
    let by_rcpt = count_by(mail.iter().map(|m| m["rcpt_tos"][0].as_str().unwrap_or_default().to_string()));
    assert_eq!(by_rcpt.len(), 1000);
    for m in &mail {
        let rcpt = m["rcpt_tos"][0].as_str().unwrap();
        let i: usize = rcpt.trim_start_matches("user").split('@').next().unwrap().parse().unwrap();
        assert_eq!(m["subject"], format!("Welcome to Touchpoint, Name{i}"), "{m}");
        let plan = plans[i % 3];
        assert!(m["text"].as_str().unwrap().contains(&format!("the {plan} plan")), "{m}");
        assert!(m["html"].as_str().unwrap().contains(&format!("<b>{plan}</b>")), "{m}");
        assert_eq!(m["authenticated_as"], "touchpoint");
    }
    let deliveries = h.deliveries();
    let sent: Vec<_> = deliveries.iter().filter(|d| d.status == DeliveryStatus::Sent).collect();
    assert_eq!(count_by(sent.iter().map(|d| d.idempotency_key.clone())).len(), 1000);
    assert!(h.dead_letters("email").is_empty());
}

#[test]
fn a_receiver_failing_30_percent_gets_every_signed_webhook_exactly_once() {
    let h = harness(
        "connect_hook",
        &[(
            "retry: {max_attempts: 8, initial_backoff: 100ms, max_backoff: 5s}",
            "retry: {max_attempts: 14, initial_backoff: 20ms, max_backoff: 200ms}",
        )],
    );
    runtime()
        .block_on(
            h.peers.control(
                &h.bucket,
                json!({"secret": "whsec-local-demo", "fail_rate": 0.3, "fail_status": 503, "seed": 7}),
            ),
        )
        .unwrap();
    h.produce("webhook", (0..300).map(|i| h.message("webhook", i, "", json!({"n": i}))).collect());
    let worker = h.start("connect", Some("webhook"), "webhook");
    let accepted =
        |r: &Vec<Value>| r.iter().filter(|x| x["status"].as_u64().is_some_and(|s| (200..300).contains(&s))).count();
    wait_until("300 accepted webhooks", 240, || accepted(&h.records()) >= 300);
    std::thread::sleep(Duration::from_secs(1));
    stop(worker);

    let records = h.records();
    let ok: Vec<&Value> = records.iter().filter(|x| x["status"] == 200).collect();
    let failed = records.iter().filter(|x| x["status"] == 503).count();
    assert_eq!(ok.len(), 300, "each message accepted exactly once");
    assert_eq!(count_by(ok.iter().map(|x| x["headers"]["webhook-id"].as_str().unwrap_or_default())).len(), 300);
    assert!(ok.iter().all(|x| x["signature_valid"] == true && x["duplicate"] == false));
    assert!(failed > 40, "the receiver failed only {failed} times");
    let deliveries = h.deliveries();
    let s = statuses(&deliveries);
    assert_eq!(s.get(&DeliveryStatus::Retrying).copied().unwrap_or(0), failed, "one retrying event per 503");
    assert_eq!(
        count_by(deliveries.iter().filter(|d| d.status == DeliveryStatus::Sent).map(|d| &d.idempotency_key)).len(),
        300
    );
    assert!(h.dead_letters("webhook").is_empty());
}

#[test]
fn permanent_failures_and_exhausted_retries_end_in_the_dead_letter_topic_with_their_reason() {
    let h = harness(
        "connect_dlq",
        &[(
            "retry: {max_attempts: 6, initial_backoff: 200ms, max_backoff: 10s}",
            "retry: {max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms}",
        )],
    );
    let d = h.domain();
    let data = json!({"first_name": "Bo"});
    let mut records = vec![
        h.message("email", 0, &format!("bounce-0@{d}"), data.clone()),
        h.message("email", 1, &format!("ok-1@{d}"), data.clone()),
        h.message("email", 2, &format!("tempfail-2@{d}"), data.clone()),
        h.message("email", 3, "no address at all", data.clone()),
        h.message("email", 4, &format!("ok-4@{d}"), data.clone()),
    ];
    records.push(("acme/u9".into(), json!({"not": "a channel message"})));
    h.produce("email", records);
    let worker = h.start("connect", Some("email"), "dlq");
    wait_until("four dead letters", 120, || h.dead_letters("email").len() >= 4);
    std::thread::sleep(Duration::from_secs(1));
    stop(worker);

    let dlq = h.dead_letters("email");
    assert_eq!(dlq.len(), 4, "{dlq:?}");
    let by_key: HashMap<String, &ReadRecord> =
        dlq.iter().map(|r| (r.header("tp.idempotency_key").unwrap_or_default().to_string(), r)).collect();
    let key = |i: usize| format!("{}-email-{i}", h.bucket);
    let bounce = by_key[&key(0)];
    assert_eq!(bounce.header("tp.dlq.status"), Some("bounced"));
    assert!(bounce.header("tp.dlq.reason").unwrap().contains("550"), "{bounce:?}");
    let exhausted = by_key[&key(2)];
    assert_eq!(exhausted.header("tp.dlq.status"), Some("failed"));
    assert!(exhausted.header("tp.dlq.reason").unwrap().starts_with("gave up after 3 attempts"), "{exhausted:?}");
    assert_eq!(exhausted.header("tp.dlq.attempts"), Some("3"));
    assert!(by_key[&key(3)].header("tp.dlq.reason").unwrap().contains("invalid recipient address"));
    let invalid = by_key[""];
    assert_eq!(invalid.header("tp.dlq.status"), Some("invalid"));
    assert!(invalid.header("tp.dlq.reason").unwrap().starts_with("not a channel message"));
    assert_eq!(invalid.payload.as_deref(), Some(br#"{"not":"a channel message"}"#.as_slice()), "the original bytes");

    let mail = h.mail();
    assert_eq!(count_by(mail.iter().map(|m| m["rcpt_tos"][0].as_str().unwrap_or_default().to_string())).len(), 2);
    let s = statuses(&h.deliveries());
    assert_eq!(s.get(&DeliveryStatus::Bounced), Some(&2), "{s:?}");
    assert_eq!(s.get(&DeliveryStatus::Failed), Some(&1), "{s:?}");
    assert_eq!(s.get(&DeliveryStatus::DeadLettered), Some(&3), "{s:?}");
    assert_eq!(s.get(&DeliveryStatus::Retrying), Some(&2), "{s:?}");
    assert_eq!(s.get(&DeliveryStatus::Sent), Some(&2), "{s:?}");
}

/// A poison message on a connector topic (issue 21): 950 KB that is no channel message. Its dead letter
/// (the original bytes and the headers) is over `MAX_RECORD_BYTES`, at the edge of what a broker takes
/// (a dead letter the broker refused used to fail the worker, which restarted, read the same message and
/// failed again). Now it is a reference (no value, the original size in `tp.original.bytes`), and the
/// message after it, on the same partition, is sent. A refusal by a broker with a lower limit takes the
/// same way (`AckedProducer::send_all_or_references`).
#[test]
fn an_oversized_poison_message_is_dead_lettered_as_a_reference_and_the_next_one_is_sent() {
    let h = harness("connect_poison", &[]);
    let d = h.domain();
    let (key, valid) = h.message("email", 1, &format!("ok-1@{d}"), json!({"first_name": "Bo"}));
    // One key: both on one partition, the poison first.
    h.produce("email", vec![(key.clone(), json!({"not": "x".repeat(950_000)})), (key, valid)]);
    let mut worker = h.start("connect", Some("email"), "poison");
    wait_until("the message after the poison sent", 120, || !h.mail().is_empty());
    assert!(worker.try_wait().expect("worker status").is_none(), "the worker keeps running");
    stop(worker);

    let dlq = h.dead_letters("email");
    assert_eq!(dlq.len(), 1, "the poison is dead-lettered once");
    let reference = &dlq[0];
    assert_eq!(reference.payload, None, "a reference carries no value");
    let bytes: usize = reference.header("tp.original.bytes").expect("the original size").parse().expect("a number");
    assert!(bytes > touchpoint_connectors::kafka::MAX_RECORD_BYTES, "{bytes}");
    assert_eq!(reference.header("tp.dlq.status"), Some("invalid"));
    let mail = h.mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0]["rcpt_tos"][0].as_str(), Some(format!("ok-1@{d}").as_str()));
}

#[test]
fn sms_status_callbacks_are_reconciled_into_clickhouse_deliveries() {
    let h = harness("connect_sms", &[]);
    let data = json!({"first_name": "Ada", "plan": "pro"});
    let mut records: Vec<_> =
        (0..10).map(|i| h.message("sms", i, &format!("+4915100000{i:03}"), data.clone())).collect();
    records.push(h.message("sms", 10, "+4915100009999", data.clone()));
    records.push(h.message("sms", 11, "not-a-number", data.clone()));
    h.produce("sms", records);
    let loader = h.start("deliveries", None, "deliveries");
    let worker = h.start("connect", Some("sms"), "sms");
    let store = h.tp.store();
    let count = |sql: String| runtime().block_on(store.client().query(&sql).fetch_one::<u64>()).unwrap_or(0);
    let table = format!("{}.deliveries", h.tp.config.clickhouse.database);
    wait_until("callbacks in ClickHouse", 120, || {
        count(format!("SELECT count() FROM {table} FINAL WHERE source = 'callback'")) >= 11
    });
    // The generic JSON callback, by our delivery id; an id nobody knows is refused so the provider retries.
    let post = |body: Value| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", "--data"])
            .arg(body.to_string())
            .arg(format!("http://{}/callbacks/sms", h.callbacks).replace("/sms", "/generic"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first_id = touchpoint_schemas::delivery_id(touchpoint_schemas::Channel::Sms, &format!("{}-sms-0", h.bucket));
    assert_eq!(post(json!({"delivery_id": "sms-unknown", "status": "delivered"})), "404");
    assert_eq!(post(json!({"delivery_id": first_id, "status": "failed", "reason": "carrier blocked"})), "200");
    wait_until("the generic callback in ClickHouse", 60, || {
        count(format!("SELECT count() FROM {table} FINAL WHERE status = 'failed' AND source = 'callback'")) >= 1
    });
    stop(worker);
    stop(loader);

    let by = |status: &str, source: &str| {
        count(format!("SELECT count() FROM {table} FINAL WHERE status = '{status}' AND source = '{source}'"))
    };
    assert_eq!(by("sent", "connector"), 11);
    assert_eq!(by("delivered", "callback"), 10);
    assert_eq!(by("bounced", "callback"), 1, "the 9999 number came back undelivered");
    assert_eq!(by("bounced", "connector"), 1, "the bad number was refused");
    assert_eq!(by("dead_lettered", "connector"), 1);
    // Callbacks are matched to our message through the provider's SID.
    let unmatched = count(format!(
        "SELECT count() FROM {table} FINAL WHERE source = 'callback' AND idempotency_key NOT IN \
         (SELECT idempotency_key FROM {table} WHERE status = 'sent')"
    ));
    assert_eq!(unmatched, 0);
    let reason = runtime()
        .block_on(
            store
                .client()
                .query(&format!("SELECT reason FROM {table} FINAL WHERE status = 'failed' AND source = 'callback'"))
                .fetch_one::<String>(),
        )
        .unwrap();
    assert_eq!(reason, "carrier blocked");
}

/// SIGKILL while pushes are in flight, restart: every message reaches the provider exactly once. An
/// attempt in doubt is looked up at the provider (by idempotency key) and not sent again if it is there.
#[test]
fn push_survives_a_sigkill_mid_batch_without_loss_or_duplicates() {
    let h = harness("connect_crash", &[]);
    runtime().block_on(h.peers.control(&h.bucket, json!({"delay_ms": 4}))).unwrap();
    let n = 600;
    h.produce(
        "push",
        (0..n).map(|i| h.message("push", i, &format!("device-{i}"), json!({"first_name": "Ada"}))).collect(),
    );
    // A stable instance name: the restarted worker takes its partitions back at once (static membership).
    let mut worker = h.start_with("connect", Some("push"), "push-1", &["--instance", "w1"]);
    wait_until("a quarter of the pushes", 120, || h.records().len() >= n / 4);
    worker.kill().expect("SIGKILL");
    worker.wait().expect("reaped");
    let before = h.records().len();
    assert!(before < n, "the kill came after everything was sent ({before})");
    let worker = h.start_with("connect", Some("push"), "push-2", &["--instance", "w1"]);
    let distinct = |r: &Vec<Value>| {
        count_by(r.iter().map(|x| x["headers"]["idempotency-key"].as_str().unwrap_or_default().to_string())).len()
    };
    wait_until("every push", 240, || distinct(&h.records()) >= n);
    std::thread::sleep(Duration::from_secs(2));
    stop(worker);

    let records = h.records();
    assert!(records.iter().all(|r| r["status"] == 200), "no failures were injected");
    let per_key =
        count_by(records.iter().map(|x| x["headers"]["idempotency-key"].as_str().unwrap_or_default().to_string()));
    assert_eq!(per_key.len(), n, "no message lost");
    let repeated: Vec<_> = per_key.iter().filter(|(_, c)| **c > 1).collect();
    assert!(repeated.is_empty(), "sent more than once: {repeated:?}");
    let sent = h.deliveries().into_iter().filter(|d| d.status == DeliveryStatus::Sent);
    assert_eq!(count_by(sent.map(|d| d.idempotency_key)).len(), n);
}

/// The same crash on SMTP, which has no lookup: an attempt in doubt is sent again with the same
/// Message-ID. Nothing is lost, and a repeat can only be an in-doubt attempt — at most one per partition
/// worked on at the kill — carrying the same Message-ID (docs/channels.md).
#[test]
fn email_survives_a_sigkill_losing_nothing_and_repeating_only_in_doubt_attempts() {
    let h = harness("connect_crash_mail", &[]);
    runtime().block_on(h.peers.control(&h.domain(), json!({"delay_ms": 4}))).unwrap();
    let n = 400;
    let data = json!({"first_name": "Ada"});
    h.produce(
        "email",
        (0..n).map(|i| h.message("email", i, &format!("user{i}@{}", h.domain()), data.clone())).collect(),
    );
    let mut worker = h.start_with("connect", Some("email"), "mail-1", &["--instance", "w1"]);
    wait_until("a quarter of the emails", 120, || h.mail().len() >= n / 4);
    worker.kill().expect("SIGKILL");
    worker.wait().expect("reaped");
    let before = h.mail().len();
    assert!(before < n, "the kill came after everything was sent ({before})");
    let worker = h.start_with("connect", Some("email"), "mail-2", &["--instance", "w1"]);
    let distinct =
        |m: &Vec<Value>| count_by(m.iter().map(|x| x["rcpt_tos"][0].as_str().unwrap_or_default().to_string())).len();
    wait_until("every email", 240, || distinct(&h.mail()) >= n);
    std::thread::sleep(Duration::from_secs(2));
    stop(worker);

    let mail = h.mail();
    let per_rcpt = count_by(mail.iter().map(|x| x["rcpt_tos"][0].as_str().unwrap_or_default().to_string()));
    assert_eq!(per_rcpt.len(), n, "no email lost");
    let repeats = mail.len() - n;
    let partitions = usize::try_from(h.tp.config.topics.connectors.partitions).unwrap();
    assert!(repeats <= partitions, "{repeats} repeats: more than the attempts in doubt at the kill");
    // Every repeat is an attempt the restarted worker found in doubt and logged as sent again.
    let resent = worker_stat(&h, "mail-2", "resent_in_doubt");
    assert!(repeats <= resent, "{repeats} repeats but only {resent} in-doubt resends");
}

/// A counter from the last stats line a worker logged (`... sent=12 ...`).
fn worker_stat(h: &Harness, log: &str, name: &str) -> usize {
    let text =
        std::fs::read_to_string(std::env::temp_dir().join(format!("{}-{log}.log", h.tp.name))).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(&format!(" {name}=")).nth(1))
        .filter_map(|rest| rest.split_whitespace().next().and_then(|v| v.parse::<usize>().ok()))
        .next_back()
        .unwrap_or(0)
}

/// Two workers of one channel share its partitions through the consumer group. The second joins in the
/// middle of the stream, so partitions change hands while messages are in flight: still each message
/// reaches the receiver exactly once (a webhook receiver has no lookup, so a race would show as a repeat).
#[test]
fn a_second_worker_joining_mid_stream_takes_partitions_without_repeats() {
    // Small rounds: a worker hands partitions over between rounds, so the second one gets work.
    let h = harness(
        "connect_scale",
        &[(
            "retry: {max_attempts: 8, initial_backoff: 100ms, max_backoff: 5s}",
            "retry: {max_attempts: 8, initial_backoff: 100ms, max_backoff: 5s}\n    batch: 100",
        )],
    );
    runtime().block_on(h.peers.control(&h.bucket, json!({"secret": "whsec-local-demo", "delay_ms": 5}))).unwrap();
    let n = 800;
    h.produce("webhook", (0..n).map(|i| h.message("webhook", i, "", json!({"n": i}))).collect());
    let first = h.start("connect", Some("webhook"), "scale-1");
    wait_until("a tenth of the webhooks", 120, || h.records().len() >= n / 10);
    let second = h.start("connect", Some("webhook"), "scale-2");
    let ids = |r: &Vec<Value>| {
        count_by(r.iter().map(|x| x["headers"]["webhook-id"].as_str().unwrap_or_default().to_string()))
    };
    wait_until("every webhook", 240, || ids(&h.records()).len() >= n);
    std::thread::sleep(Duration::from_secs(2));
    stop(first);
    stop(second);

    let records = h.records();
    let repeated: Vec<_> = ids(&records).into_iter().filter(|(_, c)| *c > 1).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
    assert_eq!(records.len(), n);
    let (a, b) = (worker_stat(&h, "scale-1", "sent"), worker_stat(&h, "scale-2", "sent"));
    assert_eq!(a + b, n, "the workers' own counts");
    assert!(b > 0, "the second worker never got a partition ({a} / {b})");
}

/// A provider that fails opens the breaker: nothing is sent during the cool-down (the retry backoff alone
/// would come back within 20 ms), then a trial goes, and every message still arrives once.
#[test]
fn an_open_breaker_holds_messages_back_until_the_cool_down_ends() {
    let h = harness(
        "connect_breaker",
        &[(
            "retry: {max_attempts: 8, initial_backoff: 100ms, max_backoff: 5s}",
            "retry: {max_attempts: 10, initial_backoff: 10ms, max_backoff: 20ms}\n    breaker: \
                {failures: 2, cool_down: 2s}",
        )],
    );
    runtime().block_on(h.peers.control(&h.bucket, json!({"secret": "whsec-local-demo", "fail_first": 4}))).unwrap();
    h.produce("webhook", (0..20).map(|i| h.message("webhook", i, "", json!({"n": i}))).collect());
    let worker = h.start("connect", Some("webhook"), "breaker");
    let ok = |r: &Vec<Value>| r.iter().filter(|x| x["status"] == 200).count();
    wait_until("every webhook", 120, || ok(&h.records()) >= 20);
    stop(worker);

    let records = h.records();
    assert_eq!(ok(&records), 20, "each message once");
    assert_eq!(records.iter().filter(|x| x["status"] == 503).count(), 4);
    let at = |x: &Value| x["at"].as_f64().unwrap_or_default();
    let last_failure = records.iter().filter(|x| x["status"] == 503).map(at).fold(f64::MIN, f64::max);
    let first_success = records.iter().filter(|x| x["status"] == 200).map(at).fold(f64::MAX, f64::min);
    assert!(
        first_success - last_failure >= 1.9,
        "the next request came {:.3} s after the last failure, inside the breaker's cool-down",
        first_success - last_failure
    );
    assert!(h.dead_letters("webhook").is_empty());
}
