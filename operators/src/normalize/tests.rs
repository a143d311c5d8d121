use super::*;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The tests build field maps; the pipeline normalizes what it decoded from a payload. This sends a map
/// through the pipeline's decoder as the JSON payload a producer would write.
trait NormalizeJson {
    fn normalize_json(
        &self,
        fields: Map<String, Value>,
        position: SourcePosition,
        now_ms: i64,
    ) -> Result<NormalizedEvent, Rejection>;
}

impl NormalizeJson for Normalizer {
    fn normalize_json(
        &self,
        fields: Map<String, Value>,
        position: SourcePosition,
        now_ms: i64,
    ) -> Result<NormalizedEvent, Rejection> {
        let payload = serde_json::to_vec(&fields).expect("a map serializes");
        self.normalize(crate::decode::decode_json_event(&payload)?, position, now_ms)
    }
}

const NOW: i64 = 1_795_600_800_000; // 2026-11-25T10:00:00Z

fn pos() -> SourcePosition {
    SourcePosition { topic: "marketing.events".into(), partition: 2, offset: 41 }
}

fn normalizer() -> Normalizer {
    let mut cfg = NormalizeConfig::default();
    cfg.event_types.aliases.insert("Email Opened".into(), "email_opened".into());
    cfg.event_types.aliases.insert("Opened Email".into(), "email_opened".into());
    Normalizer::new(cfg).unwrap()
}

fn strict() -> Normalizer {
    let mut cfg = NormalizeConfig::default();
    cfg.event_types.known = vec!["email_opened".into(), "Page Viewed".into()];
    cfg.event_types.unknown = UnknownEventTypes::Reject;
    cfg.event_types.aliases.insert("Opened Email".into(), "email_opened".into());
    Normalizer::new(cfg).unwrap()
}

fn valid() -> Map<String, Value> {
    match json!({
        "event_id": "e-1",
        "event_type": "Email Opened",
        "occurred_at": "2026-11-25T11:00:00+01:00",
        "subject_id": "  user-42 ",
        "tenant_id": "acme",
        "source": "web",
        "attributes": {"email": "Ann@Example.COM", "campaign": "Black Friday"}
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn with(mut m: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    m.insert(key.into(), value);
    m
}

fn without(mut m: Map<String, Value>, key: &str) -> Map<String, Value> {
    m.remove(key);
    m
}

fn reason(r: Result<NormalizedEvent, Rejection>) -> RejectReason {
    match r {
        Err(rej) => rej.reason,
        Ok(e) => panic!("expected a rejection, got {e:?}"),
    }
}

#[test]
fn a_valid_event_is_canonicalized() {
    let e = normalizer().normalize_json(valid(), pos(), NOW).unwrap();
    assert_eq!(e.event_id, "e-1");
    assert_eq!(e.event_type, "email_opened");
    assert_eq!(e.occurred_at_ms, NOW);
    assert_eq!(e.subject_id, "user-42");
    assert_eq!(e.tenant_id, "acme");
    assert_eq!(e.source, "web");
    assert_eq!(e.attributes_json, r#"{"campaign":"Black Friday","email":"ann@example.com"}"#);
    assert_eq!(e.ingested_at_ms, NOW);
    assert_eq!(e.position, pos());
}

#[test]
fn every_required_field_is_checked_for_presence() {
    for field in ["event_type", "occurred_at", "subject_id", "attributes"] {
        assert_eq!(
            reason(normalizer().normalize_json(without(valid(), field), pos(), NOW)),
            RejectReason::MissingField,
            "{field}"
        );
        assert_eq!(
            reason(normalizer().normalize_json(with(valid(), field, Value::Null), pos(), NOW)),
            RejectReason::MissingField,
            "{field} null"
        );
    }
}

#[test]
fn wrong_types_are_rejected() {
    let n = normalizer();
    assert_eq!(
        reason(n.normalize_json(with(valid(), "attributes", json!([1])), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "attributes", json!("x")), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "event_type", json!(5)), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "subject_id", json!({"id": 1})), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "subject_id", json!(1.5)), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "tenant_id", json!(["a"])), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
    assert_eq!(
        reason(n.normalize_json(with(valid(), "event_id", json!(true)), pos(), NOW)),
        RejectReason::InvalidFieldType
    );
}

#[test]
fn unparseable_occurred_at_is_an_invalid_timestamp() {
    let n = normalizer();
    for bad in [json!("next tuesday"), json!(""), json!(false), json!("2026-02-30T00:00:00Z")] {
        assert_eq!(
            reason(n.normalize_json(with(valid(), "occurred_at", bad.clone()), pos(), NOW)),
            RejectReason::InvalidTimestamp,
            "{bad}"
        );
    }
}

#[test]
fn epoch_seconds_and_millis_are_accepted() {
    let n = normalizer();
    let secs = n.normalize_json(with(valid(), "occurred_at", json!(NOW / 1000)), pos(), NOW).unwrap();
    let millis = n.normalize_json(with(valid(), "occurred_at", json!(NOW)), pos(), NOW).unwrap();
    assert_eq!(secs.occurred_at_ms, NOW);
    assert_eq!(millis.occurred_at_ms, NOW);
}

#[test]
fn future_skew_is_enforced_at_the_configured_bound() {
    let n =
        Normalizer::new(NormalizeConfig { max_future_skew: Duration::from_secs(3600), ..Default::default() }).unwrap();
    let at_bound = n.normalize_json(with(valid(), "occurred_at", json!(NOW + 3_600_000)), pos(), NOW);
    assert!(at_bound.is_ok());
    let beyond = n.normalize_json(with(valid(), "occurred_at", json!(NOW + 3_600_001)), pos(), NOW);
    assert_eq!(reason(beyond), RejectReason::TimestampInFuture);
    // The default allows 24 hours.
    assert!(normalizer().normalize_json(with(valid(), "occurred_at", json!(NOW + 23 * 3_600_000)), pos(), NOW).is_ok());
    assert_eq!(
        reason(normalizer().normalize_json(with(valid(), "occurred_at", json!(NOW + 25 * 3_600_000)), pos(), NOW)),
        RejectReason::TimestampInFuture
    );
}

#[test]
fn subject_id_is_trimmed_non_empty_and_bounded() {
    let n = normalizer();
    assert_eq!(
        reason(n.normalize_json(with(valid(), "subject_id", json!("   ")), pos(), NOW)),
        RejectReason::InvalidSubjectId
    );
    let long = "x".repeat(257);
    assert_eq!(
        reason(n.normalize_json(with(valid(), "subject_id", json!(long)), pos(), NOW)),
        RejectReason::InvalidSubjectId
    );
    let max = "é".repeat(256); // counted in characters, not bytes
    assert_eq!(n.normalize_json(with(valid(), "subject_id", json!(max.clone())), pos(), NOW).unwrap().subject_id, max);
    assert_eq!(n.normalize_json(with(valid(), "subject_id", json!(12345)), pos(), NOW).unwrap().subject_id, "12345");
}

/// Ids are part of every key, row and record: bounded, and a tenant cannot contain the `/` that state
/// keys (`tenant/subject`) are split at. Before: tenant `a/b` with subject `c` and tenant `a` with subject
/// `b/c` shared the changelog key `a/b/c`.
#[test]
fn tenant_event_and_source_ids_are_bounded_and_tenants_have_no_slash() {
    let n = normalizer();
    for (field, value) in [
        ("tenant_id", json!("acme/eu")),
        ("tenant_id", json!("acme\u{0}")),
        ("tenant_id", json!("t".repeat(129))),
        ("event_id", json!("e".repeat(257))),
        ("source", json!("s".repeat(129))),
    ] {
        assert_eq!(
            reason(n.normalize_json(with(valid(), field, value.clone()), pos(), NOW)),
            RejectReason::InvalidId,
            "{field}={value}"
        );
    }
    let ok = n
        .normalize_json(
            with(
                with(with(valid(), "tenant_id", json!("t".repeat(128))), "event_id", json!("e".repeat(256))),
                "source",
                json!("s".repeat(128)),
            ),
            pos(),
            NOW,
        )
        .unwrap();
    assert_eq!((ok.tenant_id.len(), ok.event_id.len(), ok.source.len()), (128, 256, 128));
}

#[test]
fn event_types_go_through_aliases_then_snake_case() {
    let n = normalizer();
    for (raw, want) in [
        ("Email Opened", "email_opened"),
        ("email-opened", "email_opened"),
        ("OpenedEmail", "email_opened"),
        ("Page Viewed", "page_viewed"),
        ("cartAbandoned", "cart_abandoned"),
    ] {
        assert_eq!(
            n.normalize_json(with(valid(), "event_type", json!(raw)), pos(), NOW).unwrap().event_type,
            want,
            "{raw}"
        );
    }
    assert_eq!(
        reason(n.normalize_json(with(valid(), "event_type", json!("!!!")), pos(), NOW)),
        RejectReason::InvalidEventType
    );
}

#[test]
fn unknown_event_types_follow_the_policy() {
    let loose = normalizer();
    assert_eq!(
        loose.normalize_json(with(valid(), "event_type", json!("Brand New Thing")), pos(), NOW).unwrap().event_type,
        "brand_new_thing"
    );
    let s = strict();
    assert_eq!(
        reason(s.normalize_json(with(valid(), "event_type", json!("Brand New Thing")), pos(), NOW)),
        RejectReason::UnknownEventType
    );
    assert_eq!(
        s.normalize_json(with(valid(), "event_type", json!("pageViewed")), pos(), NOW).unwrap().event_type,
        "page_viewed"
    );
    assert_eq!(
        s.normalize_json(with(valid(), "event_type", json!("Opened Email")), pos(), NOW).unwrap().event_type,
        "email_opened"
    );
}

#[test]
fn bad_alias_tables_are_refused_at_load() {
    let mut cfg = NormalizeConfig::default();
    cfg.event_types.aliases.insert("Email Opened".into(), "a".into());
    cfg.event_types.aliases.insert("email-opened".into(), "b".into());
    assert!(Normalizer::new(cfg).is_err());
    let mut cfg = NormalizeConfig::default();
    cfg.event_types.unknown = UnknownEventTypes::Reject;
    assert!(Normalizer::new(cfg).is_err());
}

#[test]
fn missing_event_id_is_derived_from_content_deterministically() {
    let n = normalizer();
    let a = n.normalize_json(without(valid(), "event_id"), pos(), NOW).unwrap();
    // Same content, different formatting, key order, offset notation, position and clock: same id.
    let reordered = json!({
        "attributes": {"campaign": "Black Friday", "email": "ann@example.com"},
        "subject_id": "user-42", "occurred_at": NOW / 1000, "tenant_id": "acme",
        "event_type": "email-opened", "source": "crm"
    });
    let Value::Object(reordered) = reordered else { unreachable!() };
    let b =
        n.normalize_json(reordered, SourcePosition { topic: "t".into(), partition: 0, offset: 9 }, NOW + 5).unwrap();
    assert!(a.event_id.starts_with("tp-") && a.event_id.len() == 35, "{}", a.event_id);
    assert_eq!(a.event_id, b.event_id);
    // Different content: different id.
    let c = n.normalize_json(with(without(valid(), "event_id"), "subject_id", json!("user-43")), pos(), NOW).unwrap();
    assert_ne!(a.event_id, c.event_id);
    // A blank event_id counts as missing.
    let d = n.normalize_json(with(valid(), "event_id", json!("  ")), pos(), NOW).unwrap();
    assert_eq!(d.event_id, a.event_id);
}

#[test]
fn defaults_fill_tenant_and_source() {
    let e = normalizer().normalize_json(without(without(valid(), "tenant_id"), "source"), pos(), NOW).unwrap();
    assert_eq!(e.tenant_id, "default");
    assert_eq!(e.source, "unknown");
}

proptest::proptest! {
    /// The fast path of `canonical_event_type` takes a plain snake_case name as it is: only sound if
    /// snake_case would give it back unchanged.
    #[test]
    fn plain_snake_case_is_a_fixed_point_of_snake_case(raw in "[a-z0-9_]{0,12}") {
        if is_plain_snake_case(&raw) {
            proptest::prop_assert_eq!(snake_case(&raw), raw);
        }
    }
}

#[test]
fn configured_spellings_give_what_snake_case_and_aliases_give() {
    let n = normalizer();
    for raw in ["Email Opened", "Opened Email", "email-opened", "emailOpened", "page_viewed", "Page  Viewed"] {
        let slow = n.aliases.get(&snake_case(raw)).cloned().unwrap_or_else(|| snake_case(raw));
        assert_eq!(n.canonical_event_type(raw).unwrap(), slow, "{raw}");
    }
}
