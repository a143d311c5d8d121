use std::path::Path;

use super::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_795_168_800_000;

fn journey(text: &str) -> Journey {
    Journey::parse(text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

const WELCOME: &str = r#"id: welcome
label: one
trigger: {event: signed_up}
exit_on: [{event: order_completed}]
steps:
  - id: hello
    send: {channel: email, template: welcome, category: onboarding, payload: {plan: event.attributes.plan}}
    next: wait-2d
  - id: wait-2d
    wait: 2d
    next: opened
  - id: opened
    condition: happened(email_opened, 2d)
    then: tips
    else: nudge
  - id: tips
    send: {channel: email, template: tips, category: onboarding}
    next: done
  - id: nudge
    send: {channel: push, template: come_back, category: promotional}
    on_suppressed: done
    next: done
  - id: done
    exit: true
"#;

/// Records decisions; allows every send except on the channels listed.
#[derive(Default)]
struct Recorder {
    blocked: Vec<Channel>,
    no_consent: bool,
    sent: Vec<SendIntent>,
    suppressed: Vec<SendIntent>,
}

impl Guardrails for Recorder {
    fn consent(&self, _channel: Channel, _purpose: Purpose) -> bool {
        !self.no_consent
    }
    fn send(&mut self, intent: SendIntent) -> SendOutcome {
        if self.blocked.contains(&intent.channel) {
            self.suppressed.push(intent);
            SendOutcome::Suppressed("blocked".into())
        } else {
            self.sent.push(intent);
            SendOutcome::Sent
        }
    }
}

fn subject(id: &str) -> SubjectRef {
    SubjectRef { tenant_id: "acme".into(), subject_id: id.into() }
}

fn event(id: &str, event_type: &str, at: i64, attributes: &str) -> NormalizedEvent {
    NormalizedEvent {
        event_id: id.into(),
        event_type: event_type.into(),
        occurred_at_ms: at,
        subject_id: "s".into(),
        tenant_id: "acme".into(),
        source: "test".into(),
        attributes_json: attributes.into(),
        ingested_at_ms: 0,
        position: SourcePosition { topic: "t".into(), partition: 0, offset: 0 },
        late: false,
    }
}

fn templates(intents: &[SendIntent]) -> Vec<&str> {
    intents.iter().map(|i| i.template.as_str()).collect()
}

fn causes(transitions: &[Transition]) -> Vec<String> {
    transitions
        .iter()
        .map(|t| {
            format!("{}>{}:{}", t.from_step.as_deref().unwrap_or("-"), t.to_step.as_deref().unwrap_or("-"), t.cause)
        })
        .collect()
}

#[test]
fn welcome_series_sends_waits_and_branches_on_history() {
    let journeys = Journeys::new(vec![journey(WELCOME)], "time_zone");
    let (s, mut state, mut g) = (subject("ann"), SubjectJourneys::default(), Recorder::default());
    let t = journeys.on_event(
        &s,
        &mut state,
        &event("e1", "signed_up", T0, r#"{"plan":"pro","email":"ann@x.io"}"#),
        &mut g,
    );
    assert_eq!(causes(&t), vec!["->hello:trigger:signed_up", "hello>wait-2d:sent"]);
    assert_eq!(templates(&g.sent), vec!["welcome"]);
    assert_eq!(g.sent[0].payload.get("plan"), Some(&Value::String("pro".into())));
    assert_eq!(g.sent[0].recipient.as_deref(), Some("ann@x.io"));
    assert_eq!(state.next_due(), Some(T0 + 2 * DAY));

    // Time short of the wait: nothing; an email opened meanwhile is remembered.
    assert!(journeys.on_time(&s, &mut state, T0 + 2 * DAY - 1, &mut g).is_empty());
    journeys.on_event(&s, &mut state, &event("e2", "email_opened", T0 + DAY, "{}"), &mut g);
    let t = journeys.on_time(&s, &mut state, T0 + 3 * DAY, &mut g);
    assert_eq!(
        causes(&t),
        vec!["wait-2d>opened:wait elapsed", "opened>tips:condition:true", "tips>done:sent", "done>-:exit"]
    );
    assert_eq!(templates(&g.sent), vec!["welcome", "tips"]);
    assert_eq!(g.sent[1].occurred_at_ms, T0 + 2 * DAY, "a timer acts at its due time, not the watermark's");
    assert_eq!(g.sent[1].event_id, "e1", "after a wait the send belongs to the entry event");
    assert!(state.active.is_empty());
}

#[test]
fn without_the_event_the_condition_takes_the_else_branch_and_a_suppressed_send_follows_its_rule() {
    let journeys = Journeys::new(vec![journey(WELCOME)], "time_zone");
    let (s, mut state) = (subject("bob"), SubjectJourneys::default());
    let mut g = Recorder { blocked: vec![Channel::Push], ..Default::default() };
    journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
    // An email opened before the 2-day window does not count.
    journeys.on_event(&s, &mut state, &event("e0", "email_opened", T0 - 3 * DAY, "{}"), &mut g);
    let t = journeys.on_time(&s, &mut state, T0 + 2 * DAY, &mut g);
    assert_eq!(
        causes(&t),
        vec![
            "wait-2d>opened:wait elapsed",
            "opened>nudge:condition:false",
            "nudge>done:suppressed (blocked)",
            "done>-:exit"
        ]
    );
    assert_eq!(templates(&g.suppressed), vec!["come_back"]);
}

#[test]
fn a_goal_event_takes_the_subject_out_while_it_waits() {
    let journeys = Journeys::new(vec![journey(WELCOME)], "time_zone");
    let (s, mut state, mut g) = (subject("cy"), SubjectJourneys::default(), Recorder::default());
    journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
    let t = journeys.on_event(&s, &mut state, &event("e2", "order_completed", T0 + HOUR, "{}"), &mut g);
    assert_eq!(causes(&t), vec!["wait-2d>-:goal:order_completed"]);
    assert!(state.active.is_empty());
    assert!(journeys.on_time(&s, &mut state, T0 + 10 * DAY, &mut g).is_empty(), "its timer is gone");
    assert_eq!(g.sent.len(), 1);
}

const CART: &str = r#"id: cart
trigger: {event: cart_updated, where: "event.attributes.amount >= 50"}
reentry: after 7d
steps:
  - id: wait-order
    wait_for: {event: order_completed, timeout: 4h}
    next: thanks
    on_timeout: reminder
  - id: thanks
    exit: true
  - id: reminder
    send: {channel: email, template: cart_reminder, category: promotional}
"#;

#[test]
fn wait_for_an_event_or_time_out() {
    let journeys = Journeys::new(vec![journey(CART)], "time_zone");
    let mut g = Recorder::default();
    // The order comes in time.
    let (s, mut state) = (subject("d"), SubjectJourneys::default());
    journeys.on_event(&s, &mut state, &event("c1", "cart_updated", T0, r#"{"amount":80}"#), &mut g);
    let t = journeys.on_event(&s, &mut state, &event("o1", "order_completed", T0 + HOUR, "{}"), &mut g);
    assert_eq!(causes(&t), vec!["wait-order>thanks:event:order_completed", "thanks>-:exit"]);
    // It does not: the timeout branch sends and, with no `next`, the journey ends.
    let (s, mut state) = (subject("e"), SubjectJourneys::default());
    journeys.on_event(&s, &mut state, &event("c2", "cart_updated", T0, r#"{"amount":80}"#), &mut g);
    let t = journeys.on_time(&s, &mut state, T0 + 4 * HOUR, &mut g);
    assert_eq!(causes(&t), vec!["wait-order>reminder:timeout", "reminder>-:sent; end"]);
    assert_eq!(templates(&g.sent), vec!["cart_reminder"]);
    // Below the trigger's threshold: no entry.
    let (s, mut state) = (subject("f"), SubjectJourneys::default());
    assert!(journeys.on_event(&s, &mut state, &event("c3", "cart_updated", T0, r#"{"amount":10}"#), &mut g).is_empty());
}

#[test]
fn reentry_policies() {
    let text = |policy: &str| CART.replace("reentry: after 7d", &format!("reentry: {policy}"));
    let cart = |id: &str, at: i64| event(id, "cart_updated", at, r#"{"amount":80}"#);
    let entries = |policy: &str| {
        let journeys = Journeys::new(vec![journey(&text(policy))], "time_zone");
        let (s, mut state, mut g) = (subject("r"), SubjectJourneys::default(), Recorder::default());
        let mut entered = 0;
        for (i, at) in [T0, T0 + HOUR, T0 + 5 * HOUR, T0 + 3 * DAY, T0 + 8 * DAY].into_iter().enumerate() {
            journeys.on_time(&s, &mut state, at, &mut g);
            let t = journeys.on_event(&s, &mut state, &cart(&format!("c{i}"), at), &mut g);
            entered += t.iter().filter(|t| t.from_step.is_none()).count();
        }
        entered
    };
    // T0 enters; T0+1h is inside (no second entry); T0+5h has left (timed out at T0+4h).
    assert_eq!(entries("once"), 1);
    assert_eq!(entries("always"), 4, "every trigger while outside");
    assert_eq!(entries("after 7d"), 2, "T0, then T0+8d (the cooldown counts from the last entry)");
}

const AB: &str = r#"id: ab
trigger: {event: signed_up}
reentry: always
steps:
  - id: split
    split: [{percent: 30, next: a}, {percent: 70, next: b}]
  - id: a
    send: {channel: email, template: variant_a, category: promo}
  - id: b
    send: {channel: email, template: variant_b, category: promo}
"#;

#[test]
fn splits_are_stable_per_subject_and_follow_the_percentages() {
    let journeys = Journeys::new(vec![journey(AB)], "time_zone");
    let mut g = Recorder::default();
    let mut first = Vec::new();
    for i in 0..2_000 {
        let s = subject(&format!("u{i}"));
        let mut state = SubjectJourneys::default();
        journeys.on_event(&s, &mut state, &event(&format!("a{i}"), "signed_up", T0, "{}"), &mut g);
        first.push(g.sent.last().map(|x| x.template.clone()));
        // Again later (re-entry always): the same variant.
        journeys.on_event(&s, &mut state, &event(&format!("b{i}"), "signed_up", T0 + DAY, "{}"), &mut g);
        assert_eq!(g.sent.last().map(|x| x.template.clone()), first[i], "subject u{i} switched variants");
    }
    let a = first.iter().filter(|t| t.as_deref() == Some("variant_a")).count();
    assert!((500..700).contains(&a), "30% of 2,000 expected, got {a}");
}

#[test]
fn idempotency_keys_are_stable_on_replay_and_distinct_per_send() {
    let journeys = Journeys::new(vec![journey(WELCOME)], "time_zone");
    let s = subject("k");
    let run = || {
        let (mut state, mut g) = (SubjectJourneys::default(), Recorder::default());
        journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
        journeys.on_time(&s, &mut state, T0 + 3 * DAY, &mut g);
        g.sent.iter().map(|i| i.idempotency_key.clone()).collect::<Vec<_>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b, "replaying the same events makes the same keys");
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1]);
    let key = journey_send_key(&s, "welcome", "v", "hello", "e1", 1);
    assert_ne!(key, journey_send_key(&s, "welcome", "v", "hello", "e2", 1), "another entry event");
    assert_ne!(key, journey_send_key(&s, "welcome", "v", "hello", "e1", 5), "another visit of the step");
}

#[test]
fn subjects_in_flight_stay_on_their_version_unless_the_new_one_migrates() {
    let v1 = journey(WELCOME);
    let v2_text = WELCOME.replace("label: one", "label: two").replace("template: tips", "template: tips_v2");
    let v2 = journey(&v2_text);
    let s = subject("m");
    let mut g = Recorder::default();
    let mut state = SubjectJourneys::default();
    Journeys::new(vec![v1.clone()], "time_zone").on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
    journeys_v2_continue(&v1, &v2, &s, state.clone(), "tips", &v1.version);

    let v2_migrating = journey(&v2_text.replace("steps:", "migrate: true\nsteps:"));
    journeys_v2_continue(&v1, &v2_migrating, &s, state.clone(), "tips_v2", &v2_migrating.version);

    // Without the old version loaded, the subject leaves visibly.
    let mut journeys = Journeys::new(vec![v2], "time_zone");
    let t = journeys.on_time(&s, &mut state, T0 + 3 * DAY, &mut g);
    assert_eq!(causes(&t), vec!["wait-2d>-:version unavailable"]);
    journeys.archive(v1);
    assert_eq!(journeys.versions().count(), 2);
}

fn journeys_v2_continue(
    v1: &Journey,
    v2: &Journey,
    s: &SubjectRef,
    mut state: SubjectJourneys,
    template: &str,
    version: &str,
) {
    let mut journeys = Journeys::new(vec![v2.clone()], "time_zone");
    journeys.archive(v1.clone());
    let mut g = Recorder::default();
    journeys.on_event(s, &mut state, &event("e2", "email_opened", T0 + HOUR, "{}"), &mut g);
    journeys.on_time(s, &mut state, T0 + 3 * DAY, &mut g);
    assert_eq!(templates(&g.sent), vec![template]);
    assert_eq!(g.sent[0].journey.as_ref().map(|j| j.version.as_str()), Some(version));
}

#[test]
fn consent_conditions_ask_the_guardrails() {
    let text = r#"id: c
trigger: {event: signed_up}
steps:
  - id: check
    condition: consent(email)
    then: hello
    else: done
  - id: hello
    send: {channel: email, template: hi, category: onboarding}
  - id: done
    exit: true
"#;
    let journeys = Journeys::new(vec![journey(text)], "time_zone");
    let (s, mut state) = (subject("n"), SubjectJourneys::default());
    let mut g = Recorder { no_consent: true, ..Default::default() };
    let t = journeys.on_event(&s, &mut state, &event("e", "signed_up", T0, "{}"), &mut g);
    assert_eq!(causes(&t), vec!["->check:trigger:signed_up", "check>done:condition:false", "done>-:exit"]);
    assert!(g.sent.is_empty());
}

#[test]
fn a_waiting_subject_keeps_only_the_trigger_attributes_its_journey_reads() {
    let text = CART.replace(
        "send: {channel: email, template: cart_reminder, category: promotional}",
        "send: {channel: email, template: cart_reminder, category: promotional, payload: {total: event.attributes.amount}}",
    );
    let journeys = Journeys::new(vec![journey(&text)], "time_zone");
    let (s, mut state, mut g) = (subject("snap"), SubjectJourneys::default(), Recorder::default());
    let attributes =
        r#"{"amount":80,"email":"s@x.io","time_zone":"Europe/Berlin","basket":["a","b","c"],"note":"long text"}"#;
    journeys.on_event(&s, &mut state, &event("c1", "cart_updated", T0, attributes), &mut g);
    let kept: Value = serde_json::from_str(&state.active[0].trigger).expect("JSON");
    assert_eq!(kept["attributes"], serde_json::json!({"amount": 80, "email": "s@x.io", "time_zone": "Europe/Berlin"}));
    journeys.on_time(&s, &mut state, T0 + 4 * HOUR, &mut g);
    let sent = &g.sent[0];
    assert_eq!(sent.payload.get("total"), Some(&serde_json::json!(80)), "read from the kept trigger after the wait");
    assert_eq!(sent.recipient.as_deref(), Some("s@x.io"));
    assert_eq!(sent.time_zone.as_deref(), Some("Europe/Berlin"));
}

#[test]
fn events_no_journey_reacts_to_leave_the_state_alone() {
    let journeys = Journeys::new(vec![journey(CART)], "time_zone");
    let (s, mut state, mut g) = (subject("quiet"), SubjectJourneys::default(), Recorder::default());
    assert!(journeys.on_event(&s, &mut state, &event("p1", "page_viewed", T0, "{}"), &mut g).is_empty());
    assert!(state.is_empty());
}

#[test]
fn variables_captured_at_entry_are_read_after_waits_by_conditions_and_payloads() {
    let text = r#"id: coupon
trigger: {event: signed_up}
vars: {coupon: event.attributes.coupon, who: subject.id}
steps:
  - id: wait
    wait: 1d
    next: has-coupon
  - id: has-coupon
    condition: exists(vars.coupon) and vars.coupon starts_with 'WELCOME'
    then: remind
    else: done
  - id: remind
    send: {channel: email, template: coupon_reminder, category: promotional, payload: {code: vars.coupon, name: vars.who}}
  - id: done
    exit: true
"#;
    let journeys = Journeys::new(vec![journey(text)], "time_zone");
    let mut g = Recorder::default();
    let (s, mut state) = (subject("v1"), SubjectJourneys::default());
    journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, r#"{"coupon":"WELCOME10","plan":"pro"}"#), &mut g);
    journeys.on_time(&s, &mut state, T0 + DAY, &mut g);
    assert_eq!(templates(&g.sent), vec!["coupon_reminder"]);
    assert_eq!(g.sent[0].payload.get("code"), Some(&Value::String("WELCOME10".into())));
    assert_eq!(g.sent[0].payload.get("name"), Some(&Value::String("v1".into())));
    // Without a coupon the condition fails.
    let (s, mut state) = (subject("v2"), SubjectJourneys::default());
    journeys.on_event(&s, &mut state, &event("e2", "signed_up", T0, "{}"), &mut g);
    let t = journeys.on_time(&s, &mut state, T0 + DAY, &mut g);
    assert!(causes(&t).contains(&"has-coupon>done:condition:false".to_string()), "{t:?}");
    // A bad variable path is refused at load.
    let bad = text.replace("who: subject.id", "who: vars.x");
    let err = Journey::parse(&bad, Path::new("coupon.yaml")).expect_err("refused");
    assert!(err.to_string().contains("coupon.yaml:3: vars: `who: vars.x`"), "{err}");
}

#[test]
fn an_awaited_event_after_the_timeout_does_not_match_the_timeout_wins() {
    let journeys = Journeys::new(vec![journey(CART)], "time_zone");
    let (s, mut state, mut g) = (subject("late-order"), SubjectJourneys::default(), Recorder::default());
    journeys.on_event(&s, &mut state, &event("c1", "cart_updated", T0, r#"{"amount":80,"email":"x@y.z"}"#), &mut g);
    // The watermark has not reached T0+4h yet, but the order comes at T0+5h: the timeout came first.
    let t = journeys.on_event(&s, &mut state, &event("o1", "order_completed", T0 + 5 * HOUR, "{}"), &mut g);
    assert_eq!(causes(&t), vec!["wait-order>reminder:timeout", "reminder>-:sent; end"]);
    assert_eq!(g.sent[0].occurred_at_ms, T0 + 4 * HOUR);
    assert_eq!(g.sent[0].recipient.as_deref(), Some("x@y.z"));
}

#[test]
fn a_migration_never_lands_a_waiting_subject_on_a_step_that_is_not_a_wait() {
    let v1 = journey(WELCOME);
    // v2 turns `wait-2d` into a send: a subject waiting there must stay on v1.
    let v2 = journey(&WELCOME.replace("label: one", "label: two\nmigrate: true").replace(
        "    wait: 2d\n    next: opened",
        "    send: {channel: email, template: x, category: onboarding}\n    next: opened",
    ));
    let s = subject("mig");
    let (mut state, mut g) = (SubjectJourneys::default(), Recorder::default());
    Journeys::new(vec![v1.clone()], "time_zone").on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
    let mut journeys = Journeys::new(vec![v2], "time_zone");
    journeys.archive(v1.clone());
    let t = journeys.on_time(&s, &mut state, T0 + 3 * DAY, &mut g);
    assert_eq!(t[0].cause.to_string(), "wait elapsed", "{t:?}");
    assert_eq!(t[0].version, v1.version);
}

#[test]
fn a_frequent_event_type_does_not_push_a_rare_one_out_of_the_history() {
    let text = r#"id: h
trigger: {event: signed_up}
steps:
  - id: wait
    wait: 1d
    next: check
  - id: check
    condition: happened(order_completed, 30d) and happened(email_opened, 1d)
    then: yes
    else: no
  - id: yes
    send: {channel: email, template: loyal, category: onboarding}
  - id: no
    exit: true
"#;
    let journeys = Journeys::new(vec![journey(text)], "time_zone");
    let (s, mut state, mut g) = (subject("h"), SubjectJourneys::default(), Recorder::default());
    journeys.on_event(&s, &mut state, &event("o", "order_completed", T0 - 10 * DAY, "{}"), &mut g);
    journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, "{}"), &mut g);
    for k in 0..100 {
        journeys.on_event(&s, &mut state, &event(&format!("m{k}"), "email_opened", T0 + k * 60_000, "{}"), &mut g);
    }
    assert_eq!(state.history.iter().filter(|(t, _)| t == "email_opened").count(), HISTORY_PER_TYPE);
    journeys.on_time(&s, &mut state, T0 + DAY, &mut g);
    assert_eq!(templates(&g.sent), vec!["loyal"], "the order 10 days ago is still remembered");
}

#[test]
fn a_trigger_too_large_to_keep_does_not_enter_and_says_so() {
    // WELCOME reads `event.attributes.plan` after its first step: the plan is kept with the enrollment.
    let journeys = Journeys::new(vec![journey(WELCOME)], "time_zone");
    let (s, mut state, mut g) = (subject("huge"), SubjectJourneys::default(), Recorder::default());
    let plan = "p".repeat(MAX_ENROLLMENT_CONTEXT_BYTES);
    let t =
        journeys.on_event(&s, &mut state, &event("e1", "signed_up", T0, &format!(r#"{{"plan":"{plan}"}}"#)), &mut g);
    assert_eq!(t.len(), 1);
    let cause = t[0].cause.to_string();
    assert!(cause.starts_with("context too large (") && cause.ends_with("bytes > 16384); not entered"), "{cause}");
    assert_eq!((t[0].from_step.as_deref(), t[0].to_step.as_deref()), (None, None));
    assert!(state.is_empty(), "nothing is kept: no enrollment, no entry time");
    assert!(g.sent.is_empty());

    // A trigger that fits enters as before.
    let t = journeys.on_event(&s, &mut state, &event("e2", "signed_up", T0, r#"{"plan":"pro"}"#), &mut g);
    assert_eq!(causes(&t), vec!["->hello:trigger:signed_up", "hello>wait-2d:sent"]);
}

#[test]
fn a_direct_trigger_enters_the_journey_it_names_and_keeps_the_reentry_rule() {
    let journeys = Journeys::new(vec![journey(WELCOME), journey(AB)], "time_zone");
    let (s, mut state, mut g) = (subject("d"), SubjectJourneys::default(), Recorder::default());
    let trigger = |id: &str, target: &str| {
        event(id, AUTOMATION_TRIGGERED, T0, &format!(r#"{{"journey":"{target}","plan":"pro"}}"#))
    };
    assert!(journeys.concerns(AUTOMATION_TRIGGERED));
    // Welcome's own trigger is signed_up; the direct trigger enters it all the same, and only it.
    let t = journeys.on_event(&s, &mut state, &trigger("t1", "welcome"), &mut g);
    assert_eq!(t.iter().filter(|t| t.from_step.is_none()).map(|t| t.journey.as_str()).collect::<Vec<_>>(), ["welcome"]);
    assert_eq!(templates(&g.sent), ["welcome"], "the first step runs, reading the trigger's attributes");
    assert_eq!(g.sent[0].payload.get("plan"), Some(&serde_json::json!("pro")));
    // Inside already: a second trigger does not enter again; an unknown name enters nothing.
    assert!(journeys.on_event(&s, &mut state, &trigger("t2", "welcome"), &mut g).iter().all(|t| t.from_step.is_some()));
    assert!(journeys.on_event(&s, &mut state, &trigger("t3", "no-such-journey"), &mut g).is_empty());
    assert_eq!(templates(&g.sent), ["welcome"]);
}
