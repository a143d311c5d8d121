//! The subject-keyed stage: [`touchpoint_operators::guardrails`] in timely.
//!
//! Events are exchanged to the worker that owns their subject's key group
//! ([`touchpoint_operators::key_groups`]), consent changes likewise; the watermark stays on this worker
//! (every worker holds it). Once an epoch is complete on both inputs, its consent and profile changes
//! and watermark are applied and the epoch is handed to the worker's [`GuardrailWorker`]; what it returns leaves on
//! nine typed outputs. Dry runs
//! (`evaluate`) come on the side input like consent changes and are answered as they arrive.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat};
use timely::dataflow::Stream;
use touchpoint_operators::consent::ConsentChange;
use touchpoint_operators::decision::Decision;
use touchpoint_operators::evaluate::{EvaluateReply, EvaluateRequest};
use touchpoint_operators::guardrails::{
    CapSnapshot, EpochCounts, GuardrailRules, GuardrailState, GuardrailWorker, JourneySnapshot, ProfileSnapshot,
    SegmentSnapshot,
};
use touchpoint_operators::journey::Transition;
use touchpoint_operators::key_groups::{key_group, key_group_of};
use touchpoint_operators::profile::ProfileChange;
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_operators::segment::SegmentChange;
use touchpoint_schemas::NormalizedEvent;

use super::{vec_output, Epoch};

/// The non-keyed side input: consent and profile changes (exchanged by subject) and the watermark
/// (local).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Side {
    Consent(ConsentChange),
    Profile(ProfileChange),
    Watermark(i64),
    /// A dry run, answered as it arrives.
    Evaluate(EvaluateRequest),
}

impl Side {
    /// A table change (as opposed to the watermark or a dry run): applied in log order.
    fn is_change(&self) -> bool {
        matches!(self, Side::Consent(_) | Side::Profile(_))
    }
}

/// The stage's outputs, one stream per kind.
pub struct GuardrailStreams<'s> {
    /// Every decision, allowed or suppressed: read by the decision rows and (allowed ones) the sends.
    pub decisions: Stream<'s, Epoch, Vec<Arc<Decision>>>,
    pub transitions: Stream<'s, Epoch, Vec<Transition>>,
    pub caps: Stream<'s, Epoch, Vec<CapSnapshot>>,
    pub journeys: Stream<'s, Epoch, Vec<JourneySnapshot>>,
    /// Events to store (not those a previous run stored).
    pub events: Stream<'s, Epoch, Vec<NormalizedEvent>>,
    /// The changed subjects' profiles.
    pub profiles: Stream<'s, Epoch, Vec<ProfileSnapshot>>,
    /// The changed subjects' segment state.
    pub segments: Stream<'s, Epoch, Vec<SegmentSnapshot>>,
    /// Segment entries and exits.
    pub memberships: Stream<'s, Epoch, Vec<SegmentChange>>,
    /// Answers to dry runs.
    pub replies: Stream<'s, Epoch, Vec<EvaluateReply>>,
}

/// The stage's outputs number.
const OUTPUTS: usize = 9;

/// What arrived for one epoch: a capability per output, the events as the containers that brought them
/// (never copied into one vector), and the side records.
struct EpochInputs {
    caps: [Capability<Epoch>; OUTPUTS],
    events: Vec<Vec<ReadEvent>>,
    sides: Vec<Side>,
}

impl EpochInputs {
    fn new(cap: &timely::dataflow::operators::InputCapability<Epoch>, epoch: Epoch) -> Self {
        EpochInputs {
            caps: std::array::from_fn(|port| cap.delayed(&epoch, port)),
            events: Vec::new(),
            sides: Vec::new(),
        }
    }
}

/// Metrics and the log line of an epoch's counts (the operator itself updates none).
fn report(counts: EpochCounts) {
    if counts.already_sent + counts.already_suppressed > 0 {
        tracing::info!(
            sent = counts.already_sent,
            suppressed = counts.already_suppressed,
            "intents already decided before (send ledger): not decided or sent again"
        );
        crate::metrics::SENDS_ALREADY_EMITTED.add(counts.already_sent);
        crate::metrics::SUPPRESSED_ALREADY_DECIDED.add(counts.already_suppressed);
    }
    crate::metrics::SENDS_EMITTED.add(counts.allowed);
}

/// The keyed stage; `events` carry their "already stored" flag (see [`GuardrailWorker::process_epoch`]).
pub fn guardrails<'s>(
    events: Stream<'s, Epoch, Vec<ReadEvent>>,
    consent: Stream<'s, Epoch, Vec<ConsentChange>>,
    profiles: Stream<'s, Epoch, Vec<ProfileChange>>,
    watermarks: Stream<'s, Epoch, Vec<i64>>,
    requests: Stream<'s, Epoch, Vec<EvaluateRequest>>,
    state: GuardrailState,
    rules: GuardrailRules,
) -> GuardrailStreams<'s> {
    use timely::dataflow::operators::Exchange as _;
    let side = consent
        .exchange(|c: &ConsentChange| key_group(c.subject()))
        .map(Side::Consent)
        .concat(profiles.exchange(|c: &ProfileChange| key_group(c.subject())).map(Side::Profile))
        .concat(watermarks.map(Side::Watermark))
        .concat(requests.exchange(|r: &EvaluateRequest| key_group(&r.subject())).map(Side::Evaluate));
    let mut worker = GuardrailWorker::new(state, rules);

    let mut builder = OperatorBuilder::new("Guardrails".to_owned(), events.scope());
    let mut events_in =
        builder.new_input(events, Exchange::new(|r: &ReadEvent| key_group_of(&r.event.tenant_id, &r.event.subject_id)));
    let mut side_in = builder.new_input(side, Pipeline);
    // Output ports 0..9, in the order of `EpochInputs::caps`.
    let (mut decisions_out, decisions) = vec_output::<Arc<Decision>>(&mut builder);
    let (mut transitions_out, transitions) = vec_output::<Transition>(&mut builder);
    let (mut caps_out, caps) = vec_output::<CapSnapshot>(&mut builder);
    let (mut journeys_out, journeys) = vec_output::<JourneySnapshot>(&mut builder);
    let (mut events_out, to_store) = vec_output::<NormalizedEvent>(&mut builder);
    let (mut profiles_out, profile_states) = vec_output::<ProfileSnapshot>(&mut builder);
    let (mut segments_out, segment_states) = vec_output::<SegmentSnapshot>(&mut builder);
    let (mut memberships_out, memberships) = vec_output::<SegmentChange>(&mut builder);
    let (mut replies_out, replies) = vec_output::<EvaluateReply>(&mut builder);

    builder.build(move |_| {
        let mut pending: BTreeMap<Epoch, EpochInputs> = BTreeMap::new();
        move |frontiers| {
            events_in.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let entry = pending.entry(epoch).or_insert_with(|| EpochInputs::new(&cap, epoch));
                entry.events.extend(data.map(std::mem::take));
            });
            // Table changes (consent, profiles) no pending or future event precedes are applied as they
            // come: the restores (epoch 0, before any event) would otherwise hold every record of the
            // tables' topics, every version of every entry, until they are complete. Their order
            // relative to the events stays the same: changes first within an epoch, and no earlier
            // event can still arrive.
            let events_frontier = &frontiers[0];
            side_in.for_each_stamp(|cap, data| {
                let Some(&epoch) = cap.least() else { return };
                let nothing_before =
                    pending.range(..epoch).next().is_none() && events_frontier.frontier().iter().all(|t| *t >= epoch);
                let entry = pending.entry(epoch).or_insert_with(|| EpochInputs::new(&cap, epoch));
                for batch in data {
                    // Dry runs are answered on arrival, from the state as processed so far: they change
                    // nothing, so they need not wait for their epoch (which waits for every input).
                    if batch.iter().any(|s| matches!(s, Side::Evaluate(_))) {
                        let mut replies = replies_out.activate();
                        let reply_cap = cap.delayed(&epoch, 8);
                        let mut session = replies.session(&reply_cap);
                        batch.retain(|side| match side {
                            Side::Evaluate(request) => {
                                session.give(worker.evaluate(request));
                                false
                            }
                            _ => true,
                        });
                    }
                    // Not past a change this epoch already holds back: the log order is kept.
                    let holds_changes = entry.sides.iter().any(Side::is_change);
                    if nothing_before && !holds_changes {
                        for side in batch.drain(..) {
                            match side {
                                Side::Consent(change) => worker.apply_consent(&change),
                                Side::Profile(change) => worker.apply_profile(&change),
                                later => entry.sides.push(later),
                            }
                        }
                    } else {
                        entry.sides.append(batch);
                    }
                }
            });
            while let Some(&epoch) = pending.keys().next() {
                if frontiers.iter().any(|f| f.less_equal(&epoch)) {
                    break;
                }
                let Some(inputs) = pending.remove(&epoch) else { break };
                // Consent first (a revocation in this epoch blocks its decisions), then the watermark.
                for side in inputs.sides {
                    match side {
                        Side::Consent(change) => worker.apply_consent(&change),
                        Side::Profile(change) => worker.apply_profile(&change),
                        Side::Watermark(w) => worker.advance_watermark(w),
                        // Answered on arrival (above).
                        Side::Evaluate(_) => {}
                    }
                }
                let out = worker.process_epoch(inputs.events, chrono::Utc::now().timestamp_millis());
                report(out.counts);
                let [c0, c1, c2, c3, c4, c5, c6, c7, _] = &inputs.caps;
                decisions_out.activate().session(c0).give_iterator(out.decisions.into_iter());
                transitions_out.activate().session(c1).give_iterator(out.transitions.into_iter());
                caps_out.activate().session(c2).give_iterator(out.caps.into_iter());
                journeys_out.activate().session(c3).give_iterator(out.journeys.into_iter());
                events_out.activate().session(c4).give_iterator(out.events.into_iter());
                profiles_out.activate().session(c5).give_iterator(out.profiles.into_iter());
                segments_out.activate().session(c6).give_iterator(out.segments.into_iter());
                memberships_out.activate().session(c7).give_iterator(out.memberships.into_iter());
            }
        }
    });
    GuardrailStreams {
        decisions,
        transitions,
        caps,
        journeys,
        events: to_store,
        profiles: profile_states,
        segments: segment_states,
        memberships,
        replies,
    }
}
