//! Schema Registry client against the real registry (rivven-schema, or TOUCHPOINT_SCHEMA_REGISTRY_URL).

use touchpoint_connectors::schema_registry::{RegistryClient, SchemaRegistryConfig};
use touchpoint_connectors::testing::{unique_name, ServiceAddresses};
use touchpoint_operators::decode::{SchemaLookup, SchemaLookupError};

fn client() -> RegistryClient {
    RegistryClient::new(&SchemaRegistryConfig::new(ServiceAddresses::from_env().schema_registry_url)).unwrap()
}

#[test]
fn registered_schemas_are_found_by_id_and_registration_is_idempotent() {
    let c = client();
    let subject = format!("{}-value", unique_name("it_sr"));
    let id = c.register_avro(&subject, touchpoint_schemas::avro::MARKETING_EVENT).unwrap();
    assert_eq!(c.register_avro(&subject, touchpoint_schemas::avro::MARKETING_EVENT).unwrap(), id);
    let schema = c.schema(id).unwrap();
    let expected = apache_avro::Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).unwrap();
    assert_eq!(schema.canonical_form(), expected.canonical_form());
}

#[test]
fn an_unknown_id_is_not_found() {
    match client().schema(2_000_000_000) {
        Err(SchemaLookupError::NotFound(id)) => assert_eq!(id, 2_000_000_000),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Records with random schema ids cost one registry request per id (for a minute), not one each.
#[test]
fn unknown_ids_are_remembered_and_known_ones_cached() {
    let c = client();
    for _ in 0..3 {
        assert!(matches!(c.schema(2_000_000_001), Err(SchemaLookupError::NotFound(_))));
    }
    assert_eq!(c.requests(), 1, "one request for three lookups of the same unknown id");
    let subject = format!("{}-value", unique_name("it_sr_cache"));
    let id = c.register_avro(&subject, touchpoint_schemas::avro::MARKETING_EVENT).unwrap();
    for _ in 0..3 {
        c.schema(id).unwrap();
    }
    assert_eq!(c.requests(), 2);
}

#[test]
fn an_unreachable_registry_is_unavailable_not_unknown() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let c = RegistryClient::new(&SchemaRegistryConfig::new("http://127.0.0.1:9")).unwrap();
    match c.schema(1) {
        Err(SchemaLookupError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
