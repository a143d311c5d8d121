//! The deduplication operator: events are exchanged by (tenant, event_id) so that every occurrence of
//! an id meets the same worker's [`EventDeduplicator`].

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::dedupe::EventDeduplicator;
use touchpoint_operators::read_event::ReadEvent;

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
/// unique when first stored (their ids are in the restored state), so they pass without being counted
/// again, once per run (`first_in_run`): they only feed the decisions downstream, not the events table.
pub fn dedupe<'s>(
    events: Stream<'s, Epoch, Vec<ReadEvent>>,
    mut deduplicator: EventDeduplicator,
    tally: TallyBook,
) -> Stream<'s, Epoch, Vec<ReadEvent>> {
    events.unary::<timely::container::CapacityContainerBuilder<Vec<ReadEvent>>, _, _, _>(
        Exchange::new(|r: &ReadEvent| route(&r.event.tenant_id, &r.event.event_id)),
        "Dedupe",
        move |_, _| {
            let mut evicted_logged = 0u64;
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let Some(&epoch) = cap.least() else { return };
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let mut session = output.session(&cap);
                    let (mut unique, mut duplicates) = (0u64, 0u64);
                    for batch in data {
                        for read in batch.drain(..) {
                            let key = dedupe_key(&read.event.tenant_id, &read.event.event_id);
                            if read.already_stored {
                                // Counted as already stored at the source; goes on once per run.
                                if deduplicator.first_in_run(key, now_ms) {
                                    session.give(read);
                                }
                            } else if deduplicator.first_seen(key, now_ms) {
                                unique += 1;
                                session.give(read);
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
                // Said loudly, once per million: duplicates older than the shrunk window now pass.
                let evicted = deduplicator.evicted();
                if evicted >= evicted_logged + 1_000_000 || (evicted > 0 && evicted_logged == 0) {
                    evicted_logged = evicted;
                    tracing::warn!(
                        evicted,
                        remembered = deduplicator.len(),
                        "dedupe window full (dedupe.max_ids): the oldest ids were forgotten before their TTL",
                    );
                }
            }
        },
    )
}
