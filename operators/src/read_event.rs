//! An event as the pipeline read it.

use serde::{Deserialize, Serialize};
use touchpoint_schemas::NormalizedEvent;

/// A normalized event with its "already stored" flag. After a crash, the records between the
/// committed offsets and what the events sink had stored are read again: those events still drive
/// decisions (every decision is idempotent by key, and their effects may not have been durable), but
/// they are not stored, deduplicated or judged late a second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadEvent {
    pub event: NormalizedEvent,
    /// A previous run stored it (see the source's `already_stored` offsets).
    pub already_stored: bool,
}

impl ReadEvent {
    /// An event read for the first time.
    pub fn new(event: NormalizedEvent) -> Self {
        ReadEvent { event, already_stored: false }
    }
}
