//! The Touchpoint pipeline: configuration, the timely dataflow, and the commands of the `touchpoint`
//! binary. Start reading at [`topology`], which draws the whole dataflow.

pub mod allocator;
mod config;
pub mod connect;
pub mod describe;
pub mod explain;
pub mod ingest;
pub mod metrics;
pub mod produce;
pub mod replay;
mod runtime;
pub mod scenario;
pub mod stages;
pub mod topology;

pub use config::{BuiltRules, ConfigError, PipelineConfig};
pub use runtime::{restore_caps, restore_changelog, run, PartialRestore, RunOptions, RunReport};
