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

/// Starts `touchpoint ingest` on the test's pipeline file with the shipped ingest section, this test's
/// port, small limits (5 events, 4 KiB, 1 KiB per event), the bearer key `web` for acme and `extra`
/// lines after it; `scheme` is `https` when the section has `tls`.
fn start_ingest(tp: &TestPipeline, extra: &[&str], tls: Option<&str>) -> (std::process::Child, KillOnDrop, String) {
    let (child, guard, base, _) = start_ingest_with_internal(tp, extra, tls);
    (child, guard, base)
}

/// [`start_ingest`], also giving the internal API's base URL.
fn start_ingest_with_internal(
    tp: &TestPipeline,
    extra: &[&str],
    tls: Option<&str>,
) -> (std::process::Child, KillOnDrop, String, String) {
    let port = free_port();
    let internal_port = free_port();
    let mut yaml = tp.yaml.clone();
    let mut keys = format!("api_keys:\n    - {{id: web, tenant: acme, sha256: {}}}", sha256_hex(KEY));
    for line in extra {
        keys.push_str("\n  ");
        keys.push_str(line);
    }
    for (from, to) in [
        ("${TOUCHPOINT_INGEST_LISTEN:-127.0.0.1:18200}".to_string(), format!("127.0.0.1:{port}")),
        ("${TOUCHPOINT_INGEST_INTERNAL_LISTEN:-127.0.0.1:18201}".to_string(), format!("127.0.0.1:{internal_port}")),
        ("max_events: 500".into(), "max_events: 5".into()),
        ("read_timeout: 10s".into(), "read_timeout: 2s".into()),
        ("max_request_bytes: 524288".into(), "max_request_bytes: 4096".into()),
        ("max_event_bytes: 32768".into(), "max_event_bytes: 1024".into()),
        ("api_keys: ${TOUCHPOINT_INGEST_API_KEYS:-[]}".into(), keys.clone()),
    ] {
        assert!(yaml.contains(&from), "the shipped ingest section has {from}");
        yaml = yaml.replace(&from, &to);
    }
    let path = tp.path.with_extension("ingest.yaml");
    std::fs::write(&path, yaml).expect("pipeline file");
    let log = std::env::temp_dir().join(format!("{}-ingest.log", tp.name));
    let child = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["ingest", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("starting touchpoint ingest");
    let mut guard = KillOnDrop::default();
    guard.watch(&child);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://localhost:{port}");
    let internal = format!("{scheme}://localhost:{internal_port}");
    // Up when the port takes connections (a TLS server is probed without a certificate).
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "touchpoint ingest did not come up: see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    (child, guard, base, internal)
}

#[test]
fn the_api_takes_valid_events_of_the_keys_tenant_and_says_what_it_refused() {
    let tp = TestPipeline::new("it_ingest", &[]);
    tp.prepare();
    let (mut child, _guard, base) = start_ingest(&tp, &[], None);
    let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
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

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LIMITED: &str = "tp-test-key-limited";

fn produced_ids(tp: &TestPipeline) -> Vec<(String, String)> {
    let records =
        read_all(&tp.config.kafka, &tp.config.topics.events.name, Duration::from_secs(2), Duration::from_secs(60))
            .expect("reading the events topic");
    let mut ids: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON payload");
            (
                v["event_id"].as_str().unwrap_or_default().to_string(),
                r.header("tp.ingest.key_id").unwrap_or_default().to_string(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn signed_bodies_idempotency_keys_rate_limits_and_slow_clients() {
    use touchpoint_connectors::channels::webhook::mapping::{signature, signing_key};
    let tp = TestPipeline::new("it_ingest_sig", &[]);
    tp.prepare();
    let signing = format!("  - {{id: billing, tenant: acme, signing_secret: {SIGNING_SECRET}}}");
    let limited =
        format!("  - {{id: limited, tenant: acme, sha256: {}, rate_limit: {{per_second: 1}}}}", sha256_hex(LIMITED));
    let (mut child, _guard, base) = start_ingest(&tp, &[&signing, &limited], None);
    let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("{base}/automation/events");
    let secret = signing_key(SIGNING_SECRET).expect("secret");
    let signed = |id: &str, ts: i64, body: &str, sig_body: &str| {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .header("tp-key-id", "billing")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature(&secret, id, ts, sig_body.as_bytes()))
            .body(body.to_string())
            .send()
            .expect("request");
        let replayed = response.headers().contains_key("idempotent-replayed");
        (response.status(), replayed, response.json::<Value>().unwrap_or(Value::Null))
    };
    let now = chrono::Utc::now().timestamp();

    // Signed: a good signature is accepted; a body changed after signing, a stale or future timestamp,
    // an unknown key id are 401 and produce nothing.
    let body = json!({"events": [event("s-1", "ann")]}).to_string();
    let (status, replayed, answer) = signed("msg_1", now, &body, &body);
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, false), "{answer}");
    let tampered = json!({"events": [event("s-evil", "ann")]}).to_string();
    let (status, _, answer) = signed("msg_2", now, &tampered, &body);
    assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("bad_signature")));
    let old = json!({"events": [event("s-old", "ann")]}).to_string();
    let (status, _, answer) = signed("msg_3", now - 600, &old, &old);
    assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("stale_timestamp")));
    let (status, _, _) = signed("msg_3", now + 600, &old, &old);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a timestamp from the future is refused too");
    // A replay of the signed request (same webhook-id) gets the first answer and produces nothing; the
    // same id over another body is refused.
    let (status, replayed, answer) = signed("msg_1", now, &body, &body);
    assert_eq!((status, replayed, answer["accepted"].as_u64()), (StatusCode::ACCEPTED, true, Some(1)));
    let other = json!({"events": [event("s-2", "bob")]}).to_string();
    let (status, _, answer) = signed("msg_1", now, &other, &other);
    assert_eq!((status, answer["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused")));

    // Idempotency-Key with a bearer key: the retry is answered as the first, nothing produced twice.
    let keyed = |key: &str, body: &str| {
        let r = http
            .post(&url)
            .bearer_auth(KEY)
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .expect("request");
        (r.status(), r.headers().contains_key("idempotent-replayed"))
    };
    let body = json!([event("i-1", "carol"), event("i-2", "dave")]).to_string();
    assert_eq!(keyed("order-77", &body), (StatusCode::ACCEPTED, false));
    assert_eq!(keyed("order-77", &body), (StatusCode::ACCEPTED, true));
    assert_eq!(keyed(&"k".repeat(300), &body).0, StatusCode::BAD_REQUEST, "keys over 255 characters");

    // 429: the limited key (1 event/s, a burst of one full batch: 5) takes 5 events, then is refused
    // with Retry-After until the bucket refills.
    let post_limited = |events: Vec<Value>| {
        http.post(&url).bearer_auth(LIMITED).body(json!({"events": events}).to_string()).send().expect("request")
    };
    let five: Vec<Value> = (0..5).map(|i| event(&format!("r-{i}"), "erin")).collect();
    assert_eq!(post_limited(five).status(), StatusCode::ACCEPTED);
    let refused = post_limited(vec![event("r-5", "erin")]);
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(post_limited(vec![event("r-6", "erin")]).status(), StatusCode::ACCEPTED, "after Retry-After");
    // Other keys have their own bucket.
    assert_eq!(keyed("other-key", &json!([event("i-3", "fay")]).to_string()).0, StatusCode::ACCEPTED);

    // Slow clients (read_timeout 2 s): a body that does not arrive in time is 408; headers that do not
    // arrive get the connection closed.
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").replace("localhost", "127.0.0.1");
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        slow,
        "POST /automation/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"events\": ["
    )
    .expect("write");
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body: {answer:?}");
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(slow, "POST /automation/events HTTP/1.1\r\nHost: x\r\n").expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(9), "stalled headers: the server closes the connection");

    // The OpenAPI document is served and names every route this server answers.
    let doc: Value = http.get(format!("{base}/openapi.json")).send().expect("openapi").json().expect("JSON");
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    for path in &paths {
        let documented = doc["paths"][path.as_str()].as_object().expect("methods");
        // Path-level keys that are not operations (`parameters`, `summary`, ...) are skipped.
        for method in documented.keys().filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str())) {
            let status = http
                .request(method.to_uppercase().parse().expect("method"), format!("{base}{path}"))
                .send()
                .expect("request")
                .status();
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status}"
            );
        }
    }
    assert_eq!(http.get(format!("{base}/undocumented")).send().expect("request").status(), StatusCode::NOT_FOUND);

    let want: Vec<(String, String)> = [
        ("i-1", "web"),
        ("i-2", "web"),
        ("i-3", "web"),
        ("r-0", "limited"),
        ("r-1", "limited"),
        ("r-2", "limited"),
        ("r-3", "limited"),
        ("r-4", "limited"),
        ("r-6", "limited"),
        ("s-1", "billing"),
    ]
    .iter()
    .map(|(e, k)| (e.to_string(), k.to_string()))
    .collect();
    assert_eq!(produced_ids(&tp), want, "each accepted event once; nothing refused or replayed is produced");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
}

#[test]
fn client_certificates_name_the_tenant_and_untrusted_ones_are_refused() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let tp = TestPipeline::new("it_ingest_mtls", &[]);
    tp.prepare();
    let dir = std::env::temp_dir().join(format!("{}-tls", tp.name));
    std::fs::create_dir_all(&dir).expect("dir");
    // A CA, the server's certificate (localhost), a client known as crm.acme.internal, one with a name
    // the file does not know, and one from another CA.
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        (cert, key, params)
    };
    let (ca_cert, ca_key, ca_params) = ca("touchpoint test CA");
    let (_, other_key, other_params) = ca("another CA");
    let issue = |names: &[&str], issuer: &Issuer<'_, KeyPair>| {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let other_issuer = Issuer::new(other_params, other_key);
    let (server_cert, server_key) = issue(&["localhost"], &issuer);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let cert = write("server.pem", &server_cert);
    let key = write("server.key", &server_key);
    let ca_file = write("ca.pem", &ca_cert.pem());
    let tls = format!("tls: {{cert: {cert}, key: {key}, client_ca: {ca_file}}}");
    let (mut child, _guard, base) =
        start_ingest(&tp, &[&tls, "clients:", "  - {id: crm, tenant: acme, name: crm.acme.internal}"], Some("https"));
    let client = |identity: Option<(String, String)>| {
        let mut b = Client::builder()
            .timeout(Duration::from_secs(30))
            .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).expect("ca"));
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("identity"));
        }
        b.build().expect("client")
    };
    let url = format!("{base}/automation/events");
    let body = |id: &str| json!({"events": [event(id, "ann")]}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client(None).get(format!("{base}/healthz")).send().is_err() {
        assert!(Instant::now() < deadline, "the HTTPS listener did not answer");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The known client certificate: accepted as acme, the event carries the client's id.
    let crm = client(Some(issue(&["crm.acme.internal"], &issuer)));
    let r = crm.post(&url).body(body("m-1")).send().expect("request");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The tenant is the certificate's: another tenant's event is 403.
    let mut foreign = event("m-x", "ann");
    foreign["tenant_id"] = json!("globex");
    let r = crm.post(&url).body(json!([foreign]).to_string()).send().expect("request");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A certificate of the CA with a name the file does not know: 401.
    let stranger = client(Some(issue(&["intruder.example"], &issuer)));
    let r = stranger.post(&url).body(body("m-2")).send().expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().expect("JSON")["error"], "unknown_client_certificate");
    // A certificate of another CA, even with the known name: the handshake is refused.
    let forged = client(Some(issue(&["crm.acme.internal"], &other_issuer)));
    assert!(forged.post(&url).body(body("m-3")).send().is_err(), "an untrusted certificate gets no answer");
    // No certificate: an API key over HTTPS still works; nothing at all is 401.
    let r = client(None).post(&url).bearer_auth(KEY).body(body("m-4")).send().expect("request");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(client(None).post(&url).body(body("m-5")).send().expect("request").status(), StatusCode::UNAUTHORIZED);

    let want: Vec<(String, String)> =
        [("m-1", "crm"), ("m-4", "web")].iter().map(|(e, k)| (e.to_string(), k.to_string())).collect();
    assert_eq!(produced_ids(&tp), want);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
}

const SERVICE: &str = "tp-test-key-internal-service";

#[test]
fn trusted_services_trigger_and_dry_run_and_a_one_click_unsubscribe_reaches_the_pipeline() {
    let tp = TestPipeline::new("it_trigger", &[(common::JOURNEYS_OFF, &common::journeys_in("journeys"))]);
    tp.prepare();
    common::produce_profiles_of(&tp, "acme", ["t-1".to_string(), "t-2".to_string()]);
    let consent = json!({"subject_id": "t-1", "tenant_id": "acme", "channel": "email", "purpose": "marketing",
                         "status": "granted", "updated_at": "2026-11-01T00:00:00Z", "source": "test"});
    common::produce_json(&tp, &tp.config.topics.consent.name, vec![("acme/t-1/email/marketing".into(), consent)]);
    let service = format!("  - {{id: crm, tenant: acme, sha256: {}, internal: true}}", sha256_hex(SERVICE));
    let (mut child, _guard, public, internal) = start_ingest_with_internal(&tp, &[&service], None);
    let mut guard = KillOnDrop::default();
    let mut run = common::spawn_run(&tp, &std::env::temp_dir().join(format!("{}-run.log", tp.name)));
    guard.watch(&run);

    let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = format!("{internal}/internal/automation/trigger");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{internal}/readyz")).send().is_err() {
        assert!(Instant::now() < deadline, "the internal listener did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let trigger = |key: &str, body: Value| {
        let r = http.post(&url).bearer_auth(key).json(&body).send().expect("request");
        let status = r.status();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    // A journey (welcome-series: its own trigger is signed_up) and a rule (order-receipt: on
    // order_completed), started directly; the first trigger is sent twice (a retry): one event.
    let journey =
        json!({"subject_id": "t-1", "journey": "welcome-series", "trigger_id": "tr-1", "data": {"plan": "pro"}});
    let (status, body) = trigger(SERVICE, journey.clone());
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["event_id"], "tr-1");
    assert_eq!(trigger(SERVICE, journey).0, StatusCode::ACCEPTED);
    let (status, body) = trigger(SERVICE, json!({"subject_id": "t-2", "rule": "order-receipt", "trigger_id": "tr-2"}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Refused: a credential without `internal`, an unknown journey, both or neither target, no subject.
    let (status, body) = trigger(KEY, json!({"subject_id": "t-1", "journey": "welcome-series"}));
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("not_internal")));
    let (status, body) = trigger(SERVICE, json!({"subject_id": "t-1", "journey": "no-such-journey"}));
    assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_target")));
    assert_eq!(
        trigger(SERVICE, json!({"subject_id": "t-1", "journey": "welcome-series", "rule": "order-receipt"})).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(trigger(SERVICE, json!({"journey": "welcome-series"})).0, StatusCode::BAD_REQUEST);
    assert_eq!(trigger("tp-wrong", json!({"subject_id": "t-1", "rule": "order-receipt"})).0, StatusCode::UNAUTHORIZED);
    // The internal API is not on the public listener.
    let on_public =
        http.post(format!("{public}/internal/automation/trigger")).bearer_auth(SERVICE).send().expect("request");
    assert_eq!(on_public.status(), StatusCode::NOT_FOUND);

    // Through the pipeline: t-1 entered welcome-series by the trigger and got the welcome email once;
    // t-2 got the receipt; both are events in ClickHouse like any other.
    let entered =
        "SELECT count() FROM journey_transitions FINAL WHERE subject_id = 't-1' AND journey = 'welcome-series' \
                   AND from_step = '' AND cause = 'trigger:automation_triggered'";
    let n = common::wait_for_count(&tp, entered, 1, Duration::from_secs(120));
    let causes = common::query_lines(
        &tp,
        "SELECT DISTINCT toString(cause) AS line FROM journey_transitions WHERE subject_id = 't-1'",
    );
    assert_eq!(n, 1, "entered once; causes: {causes:?}");
    let receipt = "SELECT count() FROM decisions FINAL WHERE subject_id = 't-2' AND intent_rule = 'order-receipt' AND decision = 'allowed'";
    assert_eq!(common::wait_for_count(&tp, receipt, 1, Duration::from_secs(60)), 1);
    let events = "SELECT count() FROM events WHERE event_type = 'automation_triggered'";
    assert_eq!(common::wait_for_count(&tp, events, 2, Duration::from_secs(60)), 2, "the retry is deduped");
    std::thread::sleep(Duration::from_secs(2));
    let sends: Vec<(String, String)> = common::connector_keys(&tp);
    assert_eq!(sends.iter().filter(|(_, c)| c == "email").count(), 2, "one welcome, one receipt: {sends:?}");

    // Dry runs, answered by the running pipeline's worker from its live state: t-1 granted email
    // marketing (and has a profile), t-2 has no record (marketing's default: deny), push for t-1 neither.
    let evaluate = |key: &str, body: Value| {
        let r = http.post(format!("{internal}/internal/automation/evaluate")).bearer_auth(key).json(&body).send();
        let r = r.expect("request");
        let status = r.status();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let ask =
        |subject: &str, channel: &str| json!({"subject_id": subject, "channel": channel, "category": "promotional"});
    for _ in 0..3 {
        let (status, reply) = evaluate(SERVICE, ask("t-1", "email"));
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(
            (reply["decision"].as_str(), reply["consent"].as_str()),
            (Some("allowed"), Some("granted")),
            "{reply}"
        );
        assert_eq!(reply["has_profile"], true);
        assert_eq!(reply["recipient_source"], "profile");
    }
    let (_, reply) = evaluate(SERVICE, ask("t-2", "email"));
    assert_eq!(reply["decision"], "suppressed_consent", "{reply}");
    assert_eq!(reply["consent"], "missing(default deny)");
    let (_, reply) = evaluate(SERVICE, ask("t-1", "push"));
    assert_eq!(reply["decision"], "suppressed_consent", "{reply}");
    let (status, _) = evaluate(KEY, ask("t-1", "email"));
    assert_eq!(status, StatusCode::FORBIDDEN, "not an internal credential");
    let (status, _) = evaluate(SERVICE, json!({"subject_id": "t-1", "channel": "fax", "category": "x"}));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A dry run decides nothing for real: no decision row, no send.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(common::count(&tp, "SELECT count() FROM decisions WHERE event_type = 'evaluate'"), 0);
    assert_eq!(common::connector_keys(&tp).len(), 2, "still one welcome and one receipt");

    // One-click unsubscribe: the link a marketing email of t-1 carries (same secret as the connector),
    // posted to the public listener, denies t-1's email marketing consent; the running pipeline's next
    // decision for t-1 says so. A replay, a changed token and an expired one write nothing.
    let links = tp.config.compliance.unsubscribe_links().expect("links").expect("compliance.unsubscribe in local.yaml");
    let now_s = chrono::Utc::now().timestamp();
    let link =
        links.link("acme", "t-1", touchpoint_schemas::Channel::Email, touchpoint_schemas::Purpose::Marketing, now_s);
    let token = link.rsplit('/').next().expect("token").to_string();
    let unsubscribe = |token: &str| {
        let r = http.post(format!("{public}/u/{token}")).body("List-Unsubscribe=One-Click").send().expect("request");
        let status = r.status();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let page = http.get(format!("{public}/u/{token}")).send().expect("page");
    assert_eq!(page.status(), StatusCode::OK, "opening the link changes nothing and shows a button");
    let (status, body) = unsubscribe(&token);
    assert_eq!((status, body["unsubscribed"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    let (status, body) = unsubscribe(&token);
    assert_eq!((status, body["already"].as_bool()), (StatusCode::OK, Some(true)), "a replay: {body}");
    let mut changed = token.clone();
    changed.replace_range(5..6, if &token[5..6] == "A" { "B" } else { "A" });
    assert_eq!(unsubscribe(&changed).0, StatusCode::BAD_REQUEST);
    let expired = links.mint(&touchpoint_connectors::channels::unsubscribe::Unsubscribe {
        tenant_id: "acme".into(),
        subject_id: "t-2".into(),
        channel: touchpoint_schemas::Channel::Email,
        purpose: touchpoint_schemas::Purpose::Marketing,
        expires_at_s: now_s - 1,
    });
    assert_eq!(unsubscribe(&expired).0, StatusCode::GONE);
    let denials: Vec<Value> =
        read_all(&tp.config.kafka, &tp.config.topics.consent.name, Duration::from_secs(2), Duration::from_secs(60))
            .expect("consent topic")
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(r.payload.as_deref()?).ok())
            .filter(|v| v["source"] == "unsubscribe")
            .collect();
    assert_eq!(denials.len(), 1, "one denial, for the valid token alone: {denials:?}");
    assert_eq!((denials[0]["subject_id"].as_str(), denials[0]["status"].as_str()), (Some("t-1"), Some("denied")));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, reply) = evaluate(SERVICE, ask("t-1", "email"));
        if reply["decision"] == "suppressed_consent" {
            assert_eq!(reply["consent"], "denied", "{reply}");
            break;
        }
        assert!(Instant::now() < deadline, "the denial never reached the pipeline: {reply}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
    run.kill().expect("stopping the pipeline");
    run.wait().expect("wait");
}
