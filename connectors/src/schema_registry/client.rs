//! Schema lookups by id (cached) and schema registration.
//!
//! Error classification matters: only "the registry answered 404 for this id" makes a record's schema
//! unknown (dead-letter). Anything else (connection refused, timeout, 5xx) is the registry's problem,
//! and the record is retried, never dead-lettered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apache_avro::Schema;
use schema_registry_converter::blocking::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use touchpoint_operators::decode::{SchemaLookup, SchemaLookupError};

use super::SchemaRegistryConfig;

/// How long an id the registry does not know is remembered as unknown: records with random schema ids
/// cost one request per id and minute, not one each, and a schema registered meanwhile is found.
const UNKNOWN_TTL: Duration = Duration::from_secs(60);
/// At most this many unknown ids are remembered (a producer can invent ids without end).
const UNKNOWN_MAX: usize = 10_000;

pub struct RegistryClient {
    url: String,
    http: reqwest::blocking::Client,
    settings: SrSettings,
    cache: Mutex<HashMap<u32, Arc<Schema>>>,
    /// Ids the registry answered 404 (or an unparsable schema) for, and when.
    unknown: Mutex<HashMap<u32, (Instant, SchemaLookupError)>>,
    requests: AtomicU64,
}

impl RegistryClient {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self> {
        let settings = SrSettings::new_builder(config.url.clone())
            .set_timeout(config.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("schema registry client: {e}"))?;
        let http = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .build()
            .context("schema registry HTTP client")?;
        Ok(RegistryClient {
            url: config.url.trim_end_matches('/').to_string(),
            http,
            settings,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests made to the registry for lookups so far (cached answers are not requests).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Registers an Avro schema under `subject` (or finds it) and returns its id.
    pub fn register_avro(&self, subject: &str, schema: &str) -> Result<u32> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("registering a schema under {subject}"))?;
        Ok(registered.id)
    }

    /// `GET /schemas/ids/{id}`, classified by status code: 404 is an unknown id (the record is
    /// dead-lettered); any other failure is the registry's (the record waits and is tried again).
    fn fetch(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/schemas/ids/{id}", self.url);
        let response = self.http.get(&url).send().map_err(|e| SchemaLookupError::Unavailable(format!("{url}: {e}")))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => return Err(SchemaLookupError::NotFound(id)),
            status if !status.is_success() => {
                return Err(SchemaLookupError::Unavailable(format!("{url}: HTTP {status}")));
            }
            _ => {}
        }
        #[derive(serde::Deserialize)]
        struct Registered {
            schema: String,
        }
        let registered: Registered =
            response.json().map_err(|e| SchemaLookupError::Unavailable(format!("{url}: unreadable answer: {e}")))?;
        let schema = Schema::parse_str(&registered.schema)
            .map_err(|e| SchemaLookupError::Invalid { id, message: e.to_string() })?;
        Ok(Arc::new(schema))
    }
}

impl SchemaLookup for RegistryClient {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        if let Some(s) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(s);
        }
        if let Some(e) = self
            .unknown
            .lock()
            .ok()
            .and_then(|u| u.get(&id).filter(|(at, _)| at.elapsed() < UNKNOWN_TTL).map(|(_, e)| e.clone()))
        {
            return Err(e);
        }
        match self.fetch(id) {
            Ok(schema) => {
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(id, schema.clone());
                }
                Ok(schema)
            }
            Err(e @ (SchemaLookupError::NotFound(_) | SchemaLookupError::Invalid { .. })) => {
                if let Ok(mut u) = self.unknown.lock() {
                    if u.len() >= UNKNOWN_MAX {
                        u.retain(|_, (at, _)| at.elapsed() < UNKNOWN_TTL);
                        if u.len() >= UNKNOWN_MAX {
                            u.clear();
                        }
                    }
                    u.insert(id, (Instant::now(), e.clone()));
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}
