//! Touchpoint's stream operators as plain Rust.
//!
//! Each module holds one operator's configuration, state and unit tests. Nothing here knows about
//! Kafka, ClickHouse or timely: the dataflow in `pipelines/src/topology.rs` wires these into timely
//! operators, and the connectors feed and drain them.
//!
//! - [`decode`]: bytes → the event fields normalization reads, or a field map (JSON, or Avro in the
//!   Confluent wire format);
//! - [`normalize`]: validation and canonicalization into a [`touchpoint_schemas::NormalizedEvent`];
//! - [`read_event`]: an event with its "already stored by a previous run" flag;
//! - [`dedupe`]: drop repeated `event_id`s within a time-to-live;
//! - [`tally`]: the per-epoch accounting that proves nothing is silently dropped;
//! - [`intent`]: send intents from rules in the pipeline file;
//! - [`consent`]: the consent table (latest consent per subject × channel × purpose);
//! - [`profile`]: subject profiles (recipients, time zone, locale, attributes), newest wins per field;
//! - [`segment`]: streaming segment definitions and per-subject membership;
//! - [`small_map`]: a few named values in one sorted vector (compact per-subject state);
//! - [`quiet_hours`]: local-time windows in which sends are held or dropped;
//! - [`frequency_cap`]: caps per subject over rolling and calendar windows;
//! - [`decision`]: consent then caps, one decision per intent;
//! - [`send_ledger`]: the idempotency keys already emitted per subject (`exactly_once_keys`);
//! - [`journey`]: journey definitions, the predicate language, per-subject journey state;
//! - [`version`]: content-hash versions of rule sets and journey files;
//! - [`watermark`]: event time: per-partition watermarks, idle partitions, late events;
//! - [`key_groups`]: which worker holds a subject's state;
//! - [`guardrails`]: one worker's subject-keyed work per epoch: consent, profiles, segments, journeys,
//!   intents, caps, the send ledger.

pub mod consent;
pub mod decision;
pub mod decode;
pub mod dedupe;
pub mod evaluate;
pub mod fast_hash;
pub mod frequency_cap;
pub mod guardrails;
pub mod intent;
pub mod journey;
pub mod key_groups;
pub mod normalize;
pub mod profile;
pub mod quiet_hours;
pub mod read_event;
pub mod segment;
pub mod send_ledger;
pub mod small_map;
pub mod tally;
pub mod version;
pub mod watermark;
