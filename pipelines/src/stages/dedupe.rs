//! The deduplication operator: events are exchanged by (tenant, event_id) so that every occurrence of
//! an id meets the same worker's [`EventDeduplicator`].

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::EventDeduplicator;
use touchpoint_schemas::NormalizedEvent;

use super::tally::TallyBook;
use super::Epoch;

/// The worker (out of `peers`) that owns an event id: the exchange below routes by this hash.
pub fn route(tenant_id: &str, event_id: &str) -> u64 {
    dedupe_key(tenant_id, event_id) as u64
}

pub fn owner(tenant_id: &str, event_id: &str, peers: usize) -> usize {
    (route(tenant_id, event_id) % peers as u64) as usize
}

/// Input and output: events with their "already stored by a previous run" flag. Flagged events were
/// unique when first stored (their ids are in the restored state), so they pass without a check and
/// without being counted again: they only feed the decisions downstream, not the events table.
pub fn dedupe<'s>(
    events: Stream<'s, Epoch, Vec<(NormalizedEvent, bool)>>,
    mut deduplicator: EventDeduplicator,
    tally: TallyBook,
) -> Stream<'s, Epoch, Vec<(NormalizedEvent, bool)>> {
    events.unary::<timely::container::CapacityContainerBuilder<Vec<(NormalizedEvent, bool)>>, _, _, _>(
        Exchange::new(|(e, _): &(NormalizedEvent, bool)| route(&e.tenant_id, &e.event_id)),
        "Dedupe",
        move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let mut session = output.session(&cap);
                    let (mut unique, mut duplicates) = (0u64, 0u64);
                    for batch in data {
                        for (event, already_stored) in batch.drain(..) {
                            if already_stored {
                                session.give((event, true));
                            } else if deduplicator.first_seen(dedupe_key(&event.tenant_id, &event.event_id), now_ms) {
                                unique += 1;
                                session.give((event, false));
                            } else {
                                duplicates += 1;
                            }
                        }
                    }
                    tally.with(epoch, |t| {
                        t.normalized += unique;
                        t.duplicates += duplicates;
                    });
                });
            }
        },
    )
}
