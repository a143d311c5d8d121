//! The timely operators of the pipeline. Each wraps logic from `touchpoint-operators` (or a connector)
//! into a dataflow operator; `crate::topology` wires them together.

pub mod consent;
pub mod dedupe;
pub mod epoch_sink;
pub mod event_time;
pub mod guardrails;
pub mod kafka_source;
pub mod normalize;
pub mod sinks;
pub mod tally;
pub mod transaction;

/// Timely timestamps are epochs: `tick << 16 | sub`. Ticks advance with wall-clock time in lock-step on
/// every worker; a worker that fills an epoch (max records) moves to the next sub-epoch of the same tick.
/// So no worker can run ahead of the others by more than one tick, and commits never wait for long.
pub type Epoch = u64;

pub const SUB_EPOCH_BITS: u32 = 16;

pub fn epoch_of_tick(tick: u64) -> Epoch {
    tick << SUB_EPOCH_BITS
}

pub fn tick_of(epoch: Epoch) -> u64 {
    epoch >> SUB_EPOCH_BITS
}
