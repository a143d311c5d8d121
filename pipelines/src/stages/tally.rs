//! Per-epoch accounting across workers: every operator adds to its worker's [`TallyBook`]; when an
//! epoch is complete everywhere, each worker sends its share to worker 0, which logs the sum and checks
//! that it balances (in = out + dlq + duplicates + already stored).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;
use touchpoint_operators::tally::EpochTally;

use super::Epoch;

/// One worker's partial tallies, by epoch.
#[derive(Clone, Default)]
pub struct TallyBook(Rc<RefCell<BTreeMap<Epoch, EpochTally>>>);

impl TallyBook {
    pub fn with<R>(&self, epoch: Epoch, f: impl FnOnce(&mut EpochTally) -> R) -> R {
        f(self.0.borrow_mut().entry(epoch).or_default())
    }

    /// Removes and returns the tallies of epochs before `frontier` (all of them for `None`).
    pub fn take_before(&self, frontier: Option<Epoch>) -> Vec<(Epoch, EpochTally)> {
        let mut book = self.0.borrow_mut();
        match (book.first_key_value(), frontier) {
            (None, _) => return Vec::new(),
            (Some((&first, _)), Some(f)) if first >= f => return Vec::new(),
            _ => {}
        }
        let keep = match frontier {
            Some(f) => book.split_off(&f),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut *book, keep).into_iter().collect()
    }
}

/// Totals of a run, as seen by worker 0 of process 0.
#[derive(Debug, Clone, Default)]
pub struct RunTotals {
    pub tally: EpochTally,
    pub epochs: u64,
    pub unbalanced_epochs: u64,
}

/// Sums partial tallies per epoch on worker 0 and logs each epoch once it is complete.
pub fn log_epoch_tallies<'s>(
    partials: Stream<'s, Epoch, Vec<EpochTally>>,
    totals: Arc<Mutex<RunTotals>>,
) -> Stream<'s, Epoch, Vec<()>> {
    partials.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &EpochTally| 0),
        "EpochTally",
        move |_, _| {
            let mut pending: BTreeMap<Epoch, EpochTally> = BTreeMap::new();
            move |(input, frontier), _output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let sum = pending.entry(epoch).or_default();
                    for batch in data {
                        for partial in batch.iter() {
                            sum.merge(partial);
                        }
                    }
                });
                let done: Vec<Epoch> = pending.keys().copied().filter(|e| !frontier.frontier().less_equal(e)).collect();
                for epoch in done {
                    let Some(t) = pending.remove(&epoch) else { continue };
                    if t.is_empty() {
                        continue;
                    }
                    let balanced = t.is_balanced();
                    if balanced {
                        tracing::info!(epoch, balanced, "{t}");
                    } else {
                        tracing::error!(epoch, balanced, "epoch does not balance: {t}");
                    }
                    if let Ok(mut totals) = totals.lock() {
                        totals.tally.merge(&t);
                        totals.epochs += 1;
                        totals.unbalanced_epochs += u64::from(!balanced);
                    }
                }
            }
        },
    )
}
