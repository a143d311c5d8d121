use std::path::Path;

use super::*;

const WELCOME: &str = r#"id: welcome-series
label: november
trigger:
  event: signed_up
  where: "event.attributes.plan in ['free', 'pro']"
reentry: after 30d
exit_on:
  - event: order_completed
steps:
  - id: welcome
    send: {channel: email, template: welcome, category: onboarding, payload: {plan: event.attributes.plan}}
    next: wait-2d
  - id: wait-2d
    wait: 2d
    next: opened
  - id: opened
    condition: happened(email_opened, 2d)
    then: done
    else: split
  - id: split
    split: [{percent: 50, next: nudge}, {percent: 50, next: done}]
  - id: nudge
    wait_for: {event: email_opened, timeout: 1d}
    next: done
    on_timeout: done
  - id: done
    exit: true
"#;

fn parse(text: &str) -> Result<Journey, JourneyError> {
    Journey::parse(text, Path::new("journeys/welcome.yaml"))
}

/// The problems of an invalid file, as `line: message`.
fn problems(text: &str) -> Vec<(usize, String)> {
    parse(text).expect_err("must be refused").problems
}

fn one_problem(text: &str, needle: &str) -> usize {
    let p = problems(text);
    let hit = p.iter().find(|(_, m)| m.contains(needle));
    hit.unwrap_or_else(|| panic!("no problem mentions {needle:?}: {p:?}")).0
}

#[test]
fn a_valid_journey_loads_with_a_content_version() {
    let j = parse(WELCOME).expect("valid");
    assert_eq!(j.id, "welcome-series");
    assert!(j.version.starts_with("november-"), "{}", j.version);
    assert_eq!(j.reentry, Reentry::After { cooldown_ms: 30 * 86_400_000 });
    assert_eq!(j.steps.len(), 6);
    assert!(matches!(j.steps[0].kind, StepKind::Send { next: Some(1), .. }));
    assert!(matches!(j.steps[3].kind, StepKind::Split { ref branches } if branches == &vec![(50, 4), (100, 5)]));
    // Comments and formatting do not change the version; content does.
    let reformatted = WELCOME.replace("reentry: after 30d", "# cooldown\nreentry:    after 30d");
    assert_eq!(parse(&reformatted).expect("valid").version, j.version);
    let changed = WELCOME.replace("wait: 2d", "wait: 3d");
    assert_ne!(parse(&changed).expect("valid").version, j.version);
}

#[test]
fn an_unknown_step_reference_is_refused_at_its_line() {
    let text = WELCOME.replace("next: opened", "next: openned");
    let line = one_problem(&text, "refers to unknown step `openned`");
    assert_eq!(line, 15);
}

#[test]
fn an_unreachable_step_is_refused() {
    let text = WELCOME.replace("then: done\n    else: split", "then: done\n    else: done");
    let p = problems(&text);
    assert!(p.iter().any(|(l, m)| *l == 20 && m.contains("step `split` is unreachable")), "{p:?}");
    assert!(p.iter().any(|(_, m)| m.contains("step `nudge` is unreachable")), "{p:?}");
}

#[test]
fn a_cycle_without_a_wait_is_refused_but_one_through_a_wait_is_fine() {
    let looping = WELCOME.replace("then: done\n    else: split", "then: welcome\n    else: split").replace(
        "next: wait-2d\n  - id: wait-2d\n    wait: 2d\n    next: opened",
        "next: opened\n  - id: wait-2d\n    wait: 2d\n    next: opened",
    );
    let p = problems(&looping);
    assert!(p.iter().any(|(_, m)| m.contains("cycle without a wait: welcome -> opened -> welcome")), "{p:?}");
    // welcome → wait-2d → opened → welcome: the wait breaks the instant.
    let weekly = WELCOME.replace("then: done\n    else: split", "then: welcome\n    else: split");
    parse(&weekly).expect("a loop through a wait is a valid weekly series");
}

#[test]
fn bad_durations_are_refused() {
    assert_eq!(one_problem(&WELCOME.replace("wait: 2d", "wait: 2 dayz"), "wait:"), 14);
    one_problem(&WELCOME.replace("wait: 2d", "wait: 0s"), "greater than zero");
    one_problem(&WELCOME.replace("timeout: 1d", "timeout: soon"), "timeout:");
    one_problem(&WELCOME.replace("reentry: after 30d", "reentry: after a while"), "reentry:");
    one_problem(&WELCOME.replace("reentry: after 30d", "reentry: sometimes"), "once, always, after");
}

#[test]
fn bad_expressions_are_refused_with_the_column() {
    let line = one_problem(&WELCOME.replace("happened(email_opened, 2d)", "happened(email_opened, 2d"), "`)`");
    assert_eq!(line, 17);
    let p = problems(&WELCOME.replace("event.attributes.plan in", "plan in"));
    assert!(p.iter().any(|(l, m)| *l == 5 && m.contains("column 1") && m.contains("paths start with")), "{p:?}");
}

#[test]
fn step_shape_errors() {
    one_problem(&WELCOME.replace("    wait: 2d\n", "    wait: 2d\n    exit: true\n"), "exactly one of");
    one_problem(&WELCOME.replace("    wait: 2d\n    next: opened\n", "    wait: 2d\n"), "needs `next`");
    one_problem(&WELCOME.replace("percent: 50, next: done", "percent: 40, next: done"), "add up to 90");
    one_problem(&WELCOME.replace("channel: email", "channel: pigeon"), "not a channel");
    one_problem(&WELCOME.replace("{plan: event.attributes.plan}", "{plan: attributes.plan}"), "payload `plan`");
    let dup = WELCOME.replace("  - id: done\n", "  - id: nudge\n    exit: true\n  - id: done\n");
    one_problem(&dup, "defined twice");
}

#[test]
fn yaml_errors_name_the_line() {
    let p = problems(&WELCOME.replace("reentry: after 30d", "reentry: after 30d\ncolour: blue"));
    assert_eq!(p.len(), 1);
    assert!(p[0].1.contains("unknown field `colour`"), "{p:?}");
    assert_eq!(p[0].0, 7);
    let err = parse(&WELCOME.replace("reentry: after 30d", "reentry: after 30d\ncolour: blue")).expect_err("refused");
    assert!(err.to_string().starts_with("journeys/welcome.yaml:7: "), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = WELCOME.replace("wait: 2d", "wait: never").replace("channel: email", "channel: fax");
    assert_eq!(problems(&text).len(), 2);
}

#[test]
fn huge_split_percentages_are_refused_not_wrapped() {
    let text = WELCOME.replace("percent: 50, next: nudge", "percent: 4294967246, next: nudge");
    one_problem(&text, "add up to");
}
