use super::*;
use proptest::prelude::*;

const H: i64 = 3_600_000;
const M: i64 = 60_000;

fn rule(id: &str, channel: Option<Channel>, limit: u32, window: CapWindow) -> CapRule {
    CapRule { id: id.into(), channel, category: None, tag: None, limit, window }
}

fn caps(rules: Vec<CapRule>) -> FrequencyCaps {
    FrequencyCaps::new(&CapsConfig { rules, ..Default::default() }).unwrap()
}

fn at(ms: i64) -> CapQuery<'static> {
    CapQuery { channel: Channel::Email, category: "promotional", tags: &[], at_ms: ms, time_zone: None }
}

fn utc_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn allowed(v: &CapVerdict) -> bool {
    *v == CapVerdict::Allowed
}

#[test]
fn rolling_window_caps_and_reopens() {
    let c = caps(vec![rule("email-hourly", Some(Channel::Email), 2, CapWindow::Rolling(Duration::from_secs(3600)))]);
    let mut s = SubjectCaps::default();
    let t0 = 1_795_600_800_000;
    assert!(allowed(&c.decide(&mut s, &at(t0))));
    assert!(allowed(&c.decide(&mut s, &at(t0 + 10 * M))));
    match c.decide(&mut s, &at(t0 + 20 * M)) {
        CapVerdict::Capped { rule_id, count, limit, window } => {
            assert_eq!((rule_id.as_str(), count, limit, window.as_str()), ("email-hourly", 2, 2, "rolling 1h"));
        }
        other => panic!("{other:?}"),
    }
    // Capped intents are not counted: once the first send leaves the window, one more fits.
    assert!(!allowed(&c.decide(&mut s, &at(t0 + H - M))));
    assert!(allowed(&c.decide(&mut s, &at(t0 + H + 2 * M))));
    assert!(!allowed(&c.decide(&mut s, &at(t0 + H + 3 * M))));
}

#[test]
fn a_late_send_cannot_overfill_a_later_window() {
    let c = caps(vec![rule("r", None, 2, CapWindow::Rolling(Duration::from_secs(3600)))]);
    let mut s = SubjectCaps::default();
    let t0 = 1_795_600_800_000;
    assert!(allowed(&c.decide(&mut s, &at(t0 + 30 * M))));
    assert!(allowed(&c.decide(&mut s, &at(t0 + 50 * M))));
    // Arrives late: the window [t0+10m, t0+70m) would hold three.
    assert!(!allowed(&c.decide(&mut s, &at(t0 + 10 * M))));
}

/// A weekly message at the same hour every week under "1 per rolling 7d": each is allowed. With
/// bucketed windows the send exactly a week after the last one was capped (its bucket straddled the
/// window's edge), so every other week was suppressed.
#[test]
fn a_send_exactly_one_window_after_the_last_is_allowed() {
    let c = caps(vec![rule("weekly", None, 1, CapWindow::Rolling(Duration::from_secs(7 * 86_400)))]);
    let mut s = SubjectCaps::default();
    let t0 = 1_795_600_800_000 + 17 * M; // not on a bucket edge
    for week in 0..6 {
        let t = t0 + week * 7 * 24 * H;
        assert!(allowed(&c.decide(&mut s, &at(t))), "week {week}");
        assert!(!allowed(&c.decide(&mut s, &at(t + 1))), "a second send the same week, week {week}");
        c.expire(&mut s, t);
    }
    // One millisecond short of a week is still inside the window.
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &at(t0))));
    assert!(!allowed(&c.decide(&mut s, &at(t0 + 7 * 24 * H - 1))));
}

/// State written with bucketed rolling counters (before windows were exact) is read conservatively:
/// each bucket's sends count from the bucket's last millisecond, so nothing the buckets capped is
/// allowed, and the state is exact from then on.
#[test]
fn bucketed_state_from_before_is_read_as_bucket_end_times() {
    let c = caps(vec![rule("hourly", None, 1, CapWindow::Rolling(Duration::from_secs(3600)))]);
    let key = key_hash("hourly@rolling 1h");
    let t0: i64 = 1_795_600_800_000;
    let bucket = t0.div_euclid(60_000); // 1h / 60 buckets
    let old = serde_json::json!({"counters": [[key, [[bucket, 1]]]], "sent": []});
    let mut s: SubjectCaps = serde_json::from_value(old).unwrap();
    assert!(!s.exact);
    // The old send counts until an hour after its bucket's end, not only after its bucket's start.
    assert!(!allowed(&c.decide(&mut s, &at(bucket * 60_000 + H - 1))));
    assert!(s.exact);
    assert!(allowed(&c.decide(&mut s, &at(bucket * 60_000 + 60_000 - 1 + H))));
    assert_eq!(serde_json::to_value(SubjectCaps::default()).unwrap()["exact"], serde_json::json!(true));
}

/// 2026-11-01 is the day US clocks fall back (a 25-hour day in New York); Berlin fell back on
/// 2026-10-25. "1 per calendar day" follows each subject's local days.
#[test]
fn calendar_days_follow_the_subjects_time_zone_across_dst() {
    let c = caps(vec![rule("daily", None, 1, CapWindow::Calendar(CalendarUnit::Day))]);
    let ny = |ms| CapQuery { time_zone: Some("America/New_York"), ..at(ms) };
    let berlin = |ms| CapQuery { time_zone: Some("Europe/Berlin"), ..at(ms) };

    // New York, 2026-11-01 00:30 EDT (04:30Z) and 23:30 EST (2026-11-02 04:30Z): 25 h apart, same local day.
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &ny(utc_ms("2026-11-01T04:30:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &ny(utc_ms("2026-11-02T04:30:00Z")))), "23:30 on the 25-hour day");
    assert!(allowed(&c.decide(&mut s, &ny(utc_ms("2026-11-02T05:30:00Z")))), "00:30 on Nov 2 is a new day");

    // New York spring forward 2026-03-08 (a 23-hour day): 00:30 EST (05:30Z) and 23:30 EDT (03:30Z next day).
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &ny(utc_ms("2026-03-08T05:30:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &ny(utc_ms("2026-03-09T03:30:00Z")))), "22 h later, same local day");
    assert!(allowed(&c.decide(&mut s, &ny(utc_ms("2026-03-09T04:30:00Z")))));

    // Berlin 2026-10-25 (25 hours): 00:30 CEST (2026-10-24T22:30Z) and 23:30 CET (2026-10-25T22:30Z).
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &berlin(utc_ms("2026-10-24T22:30:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &berlin(utc_ms("2026-10-25T22:30:00Z")))));
    assert!(allowed(&c.decide(&mut s, &berlin(utc_ms("2026-10-25T23:30:00Z")))));

    // One instant, two local days: 2026-11-25T03:00Z is the 24th in New York and the 25th in Berlin.
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &ny(utc_ms("2026-11-24T20:00:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &ny(utc_ms("2026-11-25T03:00:00Z")))), "still the 24th in New York");
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &berlin(utc_ms("2026-11-24T20:00:00Z")))));
    assert!(allowed(&c.decide(&mut s, &berlin(utc_ms("2026-11-25T03:00:00Z")))), "already the 25th in Berlin");
}

#[test]
fn calendar_weeks_start_on_local_mondays() {
    let c = caps(vec![rule("weekly", None, 1, CapWindow::Calendar(CalendarUnit::Week))]);
    let tokyo = |ms| CapQuery { time_zone: Some("Asia/Tokyo"), ..at(ms) };
    let mut s = SubjectCaps::default();
    // Sunday 2026-11-29 23:00 JST, then Monday 2026-11-30 00:30 JST: a new week.
    assert!(allowed(&c.decide(&mut s, &tokyo(utc_ms("2026-11-29T14:00:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &tokyo(utc_ms("2026-11-23T01:00:00Z")))), "Monday of the same week");
    assert!(allowed(&c.decide(&mut s, &tokyo(utc_ms("2026-11-29T15:30:00Z")))));
}

#[test]
fn unknown_time_zones_fall_back_to_the_default() {
    let c = FrequencyCaps::new(&CapsConfig {
        default_time_zone: "America/New_York".into(),
        rules: vec![rule("daily", None, 1, CapWindow::Calendar(CalendarUnit::Day))],
        ..Default::default()
    })
    .unwrap();
    let mut s = SubjectCaps::default();
    let bogus = |ms| CapQuery { time_zone: Some("Mars/Olympus"), ..at(ms) };
    assert!(allowed(&c.decide(&mut s, &bogus(utc_ms("2026-11-24T20:00:00Z")))));
    assert!(!allowed(&c.decide(&mut s, &bogus(utc_ms("2026-11-25T03:00:00Z")))), "New York days");
}

#[test]
fn exempt_categories_are_neither_counted_nor_capped() {
    let c = caps(vec![rule("any-daily", None, 1, CapWindow::Calendar(CalendarUnit::Day))]);
    let mut s = SubjectCaps::default();
    let t = utc_ms("2026-11-25T10:00:00Z");
    let receipt = |ms| CapQuery { category: "transactional", ..at(ms) };
    for i in 0..5 {
        assert_eq!(c.decide(&mut s, &receipt(t + i)), CapVerdict::Exempt);
    }
    assert!(allowed(&c.decide(&mut s, &at(t))), "receipts did not use the promotional budget");
    assert!(!allowed(&c.decide(&mut s, &at(t + 1))));
    assert_eq!(c.decide(&mut s, &receipt(t + 2)), CapVerdict::Exempt, "still not capped");
}

#[test]
fn scopes_select_channel_category_and_tag() {
    let c = caps(vec![
        rule("sms-daily", Some(Channel::Sms), 1, CapWindow::Calendar(CalendarUnit::Day)),
        CapRule {
            category: Some("promotional".into()),
            ..rule("promo-daily", None, 2, CapWindow::Calendar(CalendarUnit::Day))
        },
        CapRule {
            tag: Some("black_friday".into()),
            ..rule("bf-daily", None, 1, CapWindow::Calendar(CalendarUnit::Day))
        },
    ]);
    let t = utc_ms("2026-11-27T10:00:00Z");
    let mut s = SubjectCaps::default();
    let sms = |cat| CapQuery { channel: Channel::Sms, category: cat, ..at(t) };
    assert!(allowed(&c.decide(&mut s, &sms("news"))));
    assert!(matches!(c.decide(&mut s, &sms("news")), CapVerdict::Capped { rule_id, .. } if rule_id == "sms-daily"));
    assert!(allowed(&c.decide(&mut s, &at(t))), "email is not capped by the sms rule");
    assert!(allowed(&c.decide(&mut s, &at(t))), "the sms sends were news, not promotional");
    assert!(matches!(c.decide(&mut s, &at(t)), CapVerdict::Capped { rule_id, .. } if rule_id == "promo-daily"));
    let tags = vec!["black_friday".to_string()];
    let mut s = SubjectCaps::default();
    let bf = CapQuery { category: "news", tags: &tags, ..at(t) };
    assert!(allowed(&c.decide(&mut s, &bf)));
    assert!(matches!(c.decide(&mut s, &bf), CapVerdict::Capped { rule_id, .. } if rule_id == "bf-daily"));
}

#[test]
fn expired_state_is_dropped_and_memory_stays_bounded() {
    let c = caps(vec![
        rule("hourly", None, 1_000_000, CapWindow::Rolling(Duration::from_secs(3600))),
        rule("daily", None, 1_000_000, CapWindow::Calendar(CalendarUnit::Day)),
    ]);
    let mut s = SubjectCaps::default();
    let t0 = utc_ms("2026-11-01T00:00:00Z");
    for i in 0..10_000 {
        c.decide(&mut s, &at(t0 + i * 17 * M));
        c.expire(&mut s, t0 + i * 17 * M);
    }
    assert!(s.counter_count() <= 2 * ROLLING_BUCKETS as usize + 2 + 16, "{} counters", s.counter_count());
    assert!(!c.expire(&mut s, t0 + 10_000 * 17 * M), "recent activity is kept");
    assert!(c.expire(&mut s, t0 + 10_000 * 17 * M + 30 * 24 * H), "a month of silence empties the state");
}

#[test]
fn counters_follow_rule_ids_across_rule_set_changes() {
    let daily = rule("daily", None, 1, CapWindow::Calendar(CalendarUnit::Day));
    let hourly = rule("hourly", None, 5, CapWindow::Rolling(Duration::from_secs(3600)));
    let before = caps(vec![hourly.clone(), daily.clone()]);
    let after = caps(vec![daily.clone()]);
    let mut s = SubjectCaps::default();
    let t = utc_ms("2026-11-25T10:00:00Z");
    assert!(allowed(&before.decide(&mut s, &at(t))));
    // A restart with a different rule set: the daily counter still holds today's send.
    assert!(!allowed(&after.decide(&mut s, &at(t + 1))));
    // A changed window starts afresh.
    let weekly = caps(vec![rule("daily", None, 1, CapWindow::Calendar(CalendarUnit::Week))]);
    assert!(allowed(&weekly.decide(&mut s, &at(t + 2))));
}

#[test]
fn windows_are_written_as_text() {
    for (text, window) in [
        ("rolling 1h", CapWindow::Rolling(Duration::from_secs(3600))),
        ("rolling 7days", CapWindow::Rolling(Duration::from_secs(7 * 86_400))),
        ("calendar day", CapWindow::Calendar(CalendarUnit::Day)),
        ("calendar week", CapWindow::Calendar(CalendarUnit::Week)),
    ] {
        assert_eq!(CapWindow::try_from(text.to_string()), Ok(window.clone()), "{text}");
        assert_eq!(CapWindow::try_from(String::from(window.clone())), Ok(window));
    }
    for bad in ["daily", "calendar month", "rolling soon", ""] {
        assert!(CapWindow::try_from(bad.to_string()).is_err(), "{bad}");
    }
}

#[test]
fn bad_rule_sets_are_refused_and_versions_follow_content() {
    let r = rule("a", None, 1, CapWindow::Calendar(CalendarUnit::Day));
    assert!(FrequencyCaps::new(&CapsConfig { rules: vec![r.clone(), r.clone()], ..Default::default() }).is_err());
    assert!(FrequencyCaps::new(&CapsConfig { rules: vec![CapRule { limit: 0, ..r.clone() }], ..Default::default() })
        .is_err());
    assert!(FrequencyCaps::new(&CapsConfig { default_time_zone: "Nowhere/Else".into(), ..Default::default() }).is_err());
    let v1 = caps(vec![r.clone()]).version().to_string();
    let v2 = caps(vec![CapRule { limit: 2, ..r.clone() }]).version().to_string();
    assert_ne!(v1, v2);
    assert_eq!(v1, caps(vec![r]).version());
}

proptest! {
    /// The check against a brute-force reference: a send at `t` is allowed exactly when every window
    /// `[a, a + w)` with `t - w < a <= t` holds fewer than `limit` sends, tried for every start `a` (time in
    /// minutes, so every start can be tried), in random order, with sends exactly `w` apart included.
    #[test]
    fn the_rolling_check_is_exact(
        times in proptest::collection::vec(0i64..600, 1..60),
        spaced in proptest::collection::vec(0i64..5, 0..10),
        limit in 1u32..4,
        window_min in 1i64..120,
    ) {
        let w = window_min * M;
        let c = caps(vec![rule("r", None, limit, CapWindow::Rolling(Duration::from_millis(w as u64)))]);
        let base = utc_ms("2026-10-31T00:00:00Z");
        // Random minutes, plus sends exactly a window apart.
        let mut minutes = times;
        minutes.extend(spaced.iter().map(|k| 100 + k * window_min));
        let mut s = SubjectCaps::default();
        let mut sent: Vec<i64> = Vec::new();
        for m in minutes {
            let t = base + m * M;
            let reference = ((m - window_min + 1)..=m).all(|a_min| {
                let (a, end) = (base + a_min * M, base + (a_min + window_min) * M);
                (sent.iter().filter(|x| **x >= a && **x < end).count() as u32) < limit
            });
            let verdict = allowed(&c.decide(&mut s, &at(t)));
            prop_assert_eq!(verdict, reference, "send at minute {} after {:?}", m, sent);
            if verdict {
                sent.push(t);
            }
        }
    }

    /// Whatever the order and spacing of intents, no window of the rule's length ever holds more than
    /// `limit` allowed sends (rolling), and no local day more than `limit` (calendar).
    #[test]
    fn caps_are_never_exceeded(
        times in proptest::collection::vec(0i64..(3 * 24 * H), 1..200),
        limit in 1u32..5,
        window_min in 1i64..600,
        tz in prop::sample::select(vec!["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
    ) {
        let w = window_min * M;
        let c = caps(vec![
            rule("rolling", None, limit, CapWindow::Rolling(Duration::from_millis(w as u64))),
            rule("daily", None, limit + 1, CapWindow::Calendar(CalendarUnit::Day)),
        ]);
        let base = utc_ms("2026-10-31T00:00:00Z");
        let mut s = SubjectCaps::default();
        let mut sent = Vec::new();
        for t in times {
            let q = CapQuery { time_zone: Some(tz), ..at(base + t) };
            if c.decide(&mut s, &q) == CapVerdict::Allowed {
                sent.push(base + t);
            }
        }
        sent.sort_unstable();
        for (i, start) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|t| **t < start + w).count();
            prop_assert!(in_window as u32 <= limit, "{} sends in [{}, +{}ms)", in_window, start, w);
        }
        let tz: Tz = tz.parse().unwrap();
        let mut per_day = std::collections::BTreeMap::new();
        for t in &sent {
            *per_day.entry(local_period(CalendarUnit::Day, *t, tz)).or_insert(0u32) += 1;
        }
        prop_assert!(per_day.values().all(|n| *n <= limit + 1), "{:?}", per_day);
    }
}

#[test]
fn expiry_before_any_event_time_keeps_everything() {
    // A worker that has only fired timers knows no event time yet: expiry must neither panic nor drop.
    let c = caps(vec![
        rule("hourly", Some(Channel::Email), 2, CapWindow::Rolling(Duration::from_secs(3600))),
        rule("daily", None, 5, CapWindow::Calendar(CalendarUnit::Day)),
    ]);
    let mut s = SubjectCaps::default();
    assert!(allowed(&c.decide(&mut s, &at(1_795_600_800_000))));
    let before = s.clone();
    assert!(!c.expire(&mut s, i64::MIN));
    assert_eq!(s, before);
}
