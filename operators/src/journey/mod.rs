//! Journeys: versioned definitions (YAML files), a predicate language, and the per-subject state
//! machine that moves subjects through their steps on event time.
//!
//! - [`expr`]: the predicate language of triggers and conditions;
//! - [`definition`]: journey files, validation (file, line, problem) and versions;
//! - [`machine`]: the per-subject state machine (entries, steps, timers, goals, versions).

pub mod definition;
pub mod expr;
pub mod machine;

pub use definition::{load_dir, Journey, JourneyError, Reentry, Step, StepKind};
pub use expr::{Context, Expr};
pub use machine::{Cause, Enrollment, Guardrails, Journeys, SendOutcome, SubjectJourneys, Transition};
