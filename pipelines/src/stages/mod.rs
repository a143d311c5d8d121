//! The timely operators of the pipeline. Each wraps logic from `touchpoint-operators` (or a connector)
//! into a dataflow operator; `crate::topology` wires them together.

pub mod consent;
pub mod dedupe;
pub mod epoch_sink;
pub mod event_time;
pub mod guardrails;
pub mod kafka_source;
pub mod normalize;
pub mod profiles;
pub mod registry_wait;
pub mod sinks;
pub mod tally;
pub mod transaction;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

/// A typed output of a multi-output operator, buffered into vectors (timely's `OperatorBuilder`).
pub type VecOutput<D> = OutputBuilder<Epoch, CapacityContainerBuilder<Vec<D>>>;

/// Adds an output of `D`s to `builder`: the handle the operator writes to, and the stream it feeds.
pub fn vec_output<'s, D: Clone + 'static>(
    builder: &mut OperatorBuilder<'s, Epoch>,
) -> (VecOutput<D>, Stream<'s, Epoch, Vec<D>>) {
    let (output, stream) = builder.new_output::<Vec<D>>();
    (OutputBuilder::from(output), stream)
}

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
