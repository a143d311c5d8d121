//! `touchpoint ingest` on the real broker: API keys (by hash) and the tenant they carry, per-item
//! errors from the pipeline's own normalizer, the request limits, and that exactly the accepted events
//! reach the events topic, with the key's tenant and id.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, KillOnDrop, TestPipeline};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};
use touchpoint_connectors::kafka::read_all;

const KEY: &str = "tp-test-key-for-acme";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn event(id: &str, subject: &str) -> Value {
    json!({"event_id": id, "event_type": "signed_up", "occurred_at": common::rfc3339(chrono::Utc::now().timestamp_millis()),
           "subject_id": subject, "attributes": {"plan": "pro"}})
}

#[test]
fn the_api_takes_valid_events_of_the_keys_tenant_and_says_what_it_refused() {
    let tp = TestPipeline::new("it_ingest", &[]);
    tp.prepare();
    let port = free_port();
    // The shipped file's ingest section with this test's port, small limits and one key.
    let mut yaml = tp.yaml.clone();
    for (from, to) in [
        ("${TOUCHPOINT_INGEST_LISTEN:-127.0.0.1:18200}".to_string(), format!("127.0.0.1:{port}")),
        ("max_events: 500".into(), "max_events: 5".into()),
        ("max_request_bytes: 524288".into(), "max_request_bytes: 4096".into()),
        ("max_event_bytes: 32768".into(), "max_event_bytes: 1024".into()),
        (
            "api_keys: ${TOUCHPOINT_INGEST_API_KEYS:-[]}".into(),
            format!("api_keys: [{{id: web, tenant: acme, sha256: {}}}]", sha256_hex(KEY)),
        ),
    ] {
        assert!(yaml.contains(&from), "the shipped ingest section has {from}");
        yaml = yaml.replace(&from, &to);
    }
    let path = tp.path.with_extension("ingest.yaml");
    std::fs::write(&path, yaml).expect("pipeline file");
    let log = std::env::temp_dir().join(format!("{}-ingest.log", tp.name));
    let mut child = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["ingest", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("starting touchpoint ingest");
    let mut guard = KillOnDrop::default();
    guard.watch(&child);

    let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{base}/healthz")).send().is_ok_and(|r| r.status() == StatusCode::OK) {
        assert!(Instant::now() < deadline, "touchpoint ingest did not come up: see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    let post = |body: String, key: Option<&str>| {
        let mut request = http.post(format!("{base}/automation/events")).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.body(body).send().expect("request");
        let status = response.status();
        (status, response.json::<Value>().unwrap_or(Value::Null))
    };
    let batch = |events: Vec<Value>| json!({"events": events}).to_string();

    // No key, a wrong key: 401, nothing produced.
    assert_eq!(post(batch(vec![event("n-1", "ann")]), None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(post(batch(vec![event("n-2", "ann")]), Some("tp-wrong")).0, StatusCode::UNAUTHORIZED);
    // Another tenant's data: 403 for the whole request.
    let mut foreign = event("n-3", "ann");
    foreign["tenant_id"] = json!("globex");
    let (status, body) = post(batch(vec![event("n-4", "ann"), foreign]), Some(KEY));
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden_tenant");
    // Limits and shape.
    let six: Vec<Value> = (0..6).map(|i| event(&format!("n-5{i}"), "ann")).collect();
    assert_eq!(post(batch(six), Some(KEY)).0, StatusCode::PAYLOAD_TOO_LARGE, "more than max_events");
    let big = json!({"events": [{"event_type": "signed_up", "attributes": {"x": "y".repeat(5_000)}}]}).to_string();
    assert_eq!(post(big, Some(KEY)).0, StatusCode::PAYLOAD_TOO_LARGE, "more than max_request_bytes");
    let (status, body) = post("{not json".into(), Some(KEY));
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));

    // A batch: two valid events (one names the key's tenant itself), one without attributes, one too large.
    let mut own = event("ok-2", "bob");
    own["tenant_id"] = json!("acme");
    let mut missing = event("bad-1", "carol");
    missing.as_object_mut().expect("object").remove("attributes");
    let mut large = event("bad-2", "dave");
    large["attributes"]["note"] = json!("z".repeat(1_200));
    let (status, body) = post(batch(vec![event("ok-1", "ann"), missing, own, large]), Some(KEY));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    let errors: Vec<(u64, String)> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| (e["index"].as_u64().unwrap_or(99), e["code"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(errors, vec![(1, "missing_field".to_string()), (3, "event_too_large".to_string())]);
    // One event alone, as an object: accepted.
    let (status, body) = post(event("ok-3", "erin").to_string(), Some(KEY));
    assert_eq!((status, body["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(1)), "{body}");
    // Only invalid events: 400 with the errors.
    let mut bad = event("bad-3", "fay");
    bad["event_type"] = json!(17);
    let (status, body) = post(batch(vec![bad]), Some(KEY));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["code"], "invalid_field_type");

    // The topic holds exactly the accepted events, as the key's tenant, with the key's id.
    let records =
        read_all(&tp.config.kafka, &tp.config.topics.events.name, Duration::from_secs(2), Duration::from_secs(60))
            .expect("reading the events topic");
    let mut seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON payload");
            (
                v["event_id"].as_str().unwrap_or_default().to_string(),
                v["tenant_id"].as_str().unwrap_or_default().to_string(),
                r.header("tp.ingest.key_id").unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, String)> =
        ["ok-1", "ok-2", "ok-3"].iter().map(|id| (id.to_string(), "acme".into(), "web".into())).collect();
    assert_eq!(seen, want);
    // SIGTERM: requests in flight finish, then the process ends cleanly.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success(), "touchpoint ingest stops cleanly on SIGTERM");
}
