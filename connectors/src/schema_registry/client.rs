//! Schema lookups by id (cached) and schema registration.
//!
//! Error classification matters: only "the registry answered 404 for this id" makes a record's schema
//! unknown (dead-letter). Anything else (connection refused, timeout, 5xx) is the registry's problem,
//! and the record is retried, never dead-lettered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use apache_avro::Schema;
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use touchpoint_operators::decode::{SchemaLookup, SchemaLookupError};

use super::SchemaRegistryConfig;

pub struct RegistryClient {
    settings: SrSettings,
    cache: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl RegistryClient {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self> {
        let settings = SrSettings::new_builder(config.url.clone())
            .set_timeout(config.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("schema registry client: {e}"))?;
        Ok(RegistryClient { settings, cache: Mutex::new(HashMap::new()) })
    }

    /// Registers an Avro schema under `subject` (or finds it) and returns its id.
    pub fn register_avro(&self, subject: &str, schema: &str) -> Result<u32> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("registering a schema under {subject}"))?;
        Ok(registered.id)
    }
}

impl SchemaLookup for RegistryClient {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        if let Some(s) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(s);
        }
        let registered = get_schema_by_id(id, &self.settings).map_err(|e| classify(id, &e))?;
        let schema = Schema::parse_str(&registered.schema)
            .map_err(|e| SchemaLookupError::Invalid { id, message: e.to_string() })?;
        let schema = Arc::new(schema);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id, schema.clone());
        }
        Ok(schema)
    }
}

fn classify(id: u32, e: &SRCError) -> SchemaLookupError {
    let text = format!("{} {}", e.error, e.cause.as_deref().unwrap_or_default());
    if !e.retriable && (text.contains("status 404") || text.contains("40403")) {
        SchemaLookupError::NotFound(id)
    } else {
        SchemaLookupError::Unavailable(text)
    }
}
