use super::*;

fn event(session: &str, time: &str, action: &str, decision: Option<&str>) -> String {
    let mut event = serde_json::json!({
        "@timestamp": time,
        "event": {"action": action, "sequence": 1},
        "agent_guard": {"session": {"id": session}},
    });
    if let Some(decision) = decision {
        event["agent_guard"]["decision"] = decision.into();
    }
    event.to_string()
}

fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

#[test]
fn each_filter_keeps_only_its_events() {
    let deny = event(
        "0000000a",
        "2026-11-30T12:00:00.000001Z",
        "unlink",
        Some("deny"),
    );
    let audit = event(
        "0000000b",
        "2026-11-30T11:59:59.999999Z",
        "connect",
        Some("audit"),
    );
    let start = event(
        "0000000a",
        "2026-11-30T13:00:00.000000Z",
        "session-start",
        None,
    );
    // Which of deny (0), audit (1) and start (2) the filter keeps.
    let keeps = |filter: Filter| -> Vec<usize> {
        [&deny, &audit, &start]
            .into_iter()
            .enumerate()
            .filter(|(_, l)| filter.matches_line(l))
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(keeps(Filter::default()), [0, 1, 2]);
    assert_eq!(
        keeps(Filter {
            session: Some("0000000a".into()),
            ..Filter::default()
        }),
        [0, 2]
    );
    assert_eq!(
        keeps(Filter {
            since: Some(at("2026-11-30T12:00:00Z")),
            ..Filter::default()
        }),
        [0, 2]
    );
    assert_eq!(
        keeps(Filter {
            ops: vec!["connect".into(), "session-start".into()],
            ..Filter::default()
        }),
        [1, 2]
    );
    assert_eq!(
        keeps(Filter {
            decision: Some(Decision::Audit),
            ..Filter::default()
        }),
        [1]
    );
    assert_eq!(
        keeps(Filter {
            session: Some("0000000a".into()),
            decision: Some(Decision::Audit),
            ..Filter::default()
        }),
        Vec::<usize>::new()
    );
}

#[test]
fn since_takes_a_time_or_an_age() {
    let now = at("2026-11-30T12:00:00Z");
    assert_eq!(
        parse_since("2026-11-30T10:00:00Z", now),
        Ok(at("2026-11-30T10:00:00Z"))
    );
    assert_eq!(parse_since("10m", now), Ok(at("2026-11-30T11:50:00Z")));
    assert_eq!(parse_since("2h", now), Ok(at("2026-11-30T10:00:00Z")));
    assert_eq!(parse_since("1d", now), Ok(at("2026-11-29T12:00:00Z")));
    assert_eq!(parse_since("30s", now), Ok(at("2026-11-30T11:59:30Z")));
    for bad in ["yesterday", "10w", "m", "-1h", "2026-11-30", ""] {
        let error = parse_since(bad, now).unwrap_err().to_string();
        assert!(
            error.contains("RFC 3339") && error.contains("10m"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn decisions_and_actions_are_checked() {
    assert_eq!("deny".parse(), Ok(Decision::Deny));
    let error = "denied".parse::<Decision>().unwrap_err().to_string();
    assert!(error.contains("`deny` or `audit`"), "{error}");
    assert_eq!(parse_op("unlink"), Ok("unlink".to_owned()));
    assert_eq!(parse_op("session-end"), Ok("session-end".to_owned()));
    let error = parse_op("delete").unwrap_err().to_string();
    assert!(
        error.contains("unlink") && error.contains("kernel-load"),
        "{error}"
    );
}

#[test]
fn the_log_and_its_rotated_files_come_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    for name in [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.4",
    ] {
        std::fs::write(dir.path().join(name), "").unwrap();
    }
    let names: Vec<_> = log_files(&log)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["events.jsonl.2", "events.jsonl.1", "events.jsonl"]);
}

#[test]
fn matching_lines_are_copied_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let deny = event(
        "0000000a",
        "2026-11-30T12:00:00.000001Z",
        "unlink",
        Some("deny"),
    );
    let audit = event(
        "0000000b",
        "2026-11-30T12:00:00.000001Z",
        "unlink",
        Some("audit"),
    );
    std::fs::write(&a, format!("{deny}\n{audit}\n")).unwrap();
    std::fs::write(&b, &deny).unwrap();
    let mut out = Vec::new();
    let filter = Filter {
        decision: Some(Decision::Deny),
        ..Filter::default()
    };
    assert_eq!(copy_matching(&[a, b], &filter, &mut out).unwrap(), 2);
    assert_eq!(String::from_utf8(out).unwrap(), format!("{deny}\n{deny}\n"));
}
