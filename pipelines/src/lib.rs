//! The Touchpoint pipeline: configuration, the timely dataflow, and the commands of the `touchpoint`
//! binary. Start reading at [`topology`], which draws the whole dataflow.

pub mod allocator;
pub mod config;
pub mod connect;
pub mod describe;
pub mod explain;
pub mod metrics;
pub mod replay;
pub mod runtime;
pub mod scenario;
pub mod stages;
pub mod topology;

pub use config::PipelineConfig;
pub use runtime::{run, RunOptions, RunReport};
