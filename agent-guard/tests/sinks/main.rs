//! Host tests of the sinks with real receivers: an HTTP server in the test for the webhook,
//! Debian's rsyslogd for syslog. No BPF needed.
mod receiver;
mod rsyslog;
mod webhook;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_guard::{
    report::Line,
    sinks::{parse_sinks, Overflow, SinkConfig, SinkHealth, SinkSet},
};

/// An event line as the schema shapes it; every tenth one a denial.
pub fn event(sequence: u64) -> Line {
    let (kind, agent_kind) = if sequence.is_multiple_of(10) {
        ("alert", "decision")
    } else {
        ("event", "session-start")
    };
    let text = format!(
        r#"{{"@timestamp":"2026-11-30T12:00:00.{micros:06}Z","ecs":{{"version":"8.11.0"}},"event":{{"kind":"{kind}","module":"agent_guard","sequence":{sequence}}},"host":{{"name":"build-1.example.com"}},"file":{{"path":"/home/dev/café/{sequence}.txt"}},"agent_guard":{{"schema":1,"kind":"{agent_kind}"}},"chain":{{"prev":"{zeros}","hash":"{zeros}"}}}}"#,
        micros = sequence % 1_000_000,
        zeros = "0".repeat(64),
    );
    Line {
        sequence,
        text: Arc::from(text),
    }
}

/// The `event.sequence` of a received line.
pub fn sequence_of(line: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
    value["event"]["sequence"].as_u64().expect("event.sequence")
}

pub fn sinks(toml_text: &str) -> Vec<SinkConfig> {
    #[derive(serde::Deserialize)]
    struct Doc {
        sink: Vec<toml::Table>,
    }
    let doc: Doc = toml::from_str(toml_text).unwrap();
    parse_sinks(&doc.sink).unwrap_or_else(|e| panic!("{e}\n  hint: {}", e.hint))
}

/// Waits until `done` holds, for at most `limit`; panics naming `what` otherwise.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn health_of(set: &SinkSet, name: &str) -> SinkHealth {
    set.health()
        .into_iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no sink {name}"))
}

/// Adds each overflow's range to `dropped`, per sink.
pub fn collect_overflows(set: &SinkSet, into: &mut BTreeMap<String, Vec<Overflow>>) {
    for overflow in set.take_overflows() {
        into.entry(overflow.sink.clone())
            .or_default()
            .push(overflow);
    }
}

mod isolation {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::receiver::{Mode, Receiver};

    /// A webhook whose receiver accepts connections and never answers and a syslog sink
    /// whose socket is gone, next to a file sink: submitting stays fast and the file gets
    /// everything.
    #[test]
    fn a_dead_sink_does_not_block_the_others() {
        const TOTAL: u64 = 100_000;
        let receiver = Receiver::start(Mode::Hang);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out/extra.jsonl");
        // The queue holds every line: this test is about isolation, not the queue's size.
        let configs = sinks(&format!(
            r#"
            [[sink]]
            type = "webhook"
            name = "stuck"
            url = "{}"
            timeout_ms = 60000
            [[sink]]
            type = "syslog"
            name = "gone"
            address = "{}"
            [[sink]]
            type = "file"
            path = "{}"
            queue_max = {TOTAL}
            "#,
            receiver.url(),
            dir.path().join("nobody.sock").display(),
            file.display()
        ));
        let set = Arc::new(SinkSet::start(&configs, &dir.path().join("spool")).unwrap());
        let lines: Arc<Vec<Line>> = Arc::new((1..=TOTAL).map(event).collect());
        // Submitting on a thread of its own, so a submit that blocks fails the test
        // rather than hanging it.
        let (done, took) = std::sync::mpsc::channel();
        let submitter = {
            let (set, lines) = (set.clone(), lines.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                for line in lines.iter() {
                    set.submit(line);
                }
                done.send(start.elapsed()).unwrap();
            })
        };
        let submitting = took
            .recv_timeout(Duration::from_secs(10))
            .expect("submit blocked");
        submitter.join().unwrap();
        assert!(
            submitting < Duration::from_secs(2),
            "submitting {TOTAL} lines took {submitting:?}"
        );
        wait_for("the file sink", Duration::from_secs(60), || {
            health_of(&set, "file").delivered == TOTAL
        });
        let written = std::fs::read_to_string(&file).unwrap();
        let mut count = 0;
        for (line, expected) in written.lines().zip(lines.iter()) {
            assert_eq!(line, &*expected.text);
            count += 1;
        }
        assert_eq!(count, TOTAL);
        let file_health = health_of(&set, "file");
        assert_eq!((file_health.dropped, file_health.backlog), (0, 0));
        let stuck = health_of(&set, "stuck");
        assert_eq!(stuck.delivered, 0);
        assert_eq!(stuck.backlog + stuck.dropped, TOTAL, "{stuck:?}");
        // The syslog sink holds one line in hand and a full queue; the rest is dropped.
        let gone = health_of(&set, "gone");
        assert_eq!(gone.delivered, 0);
        assert!(gone.dropped >= TOTAL - 10_001, "{gone:?}");
        let mut overflows = BTreeMap::new();
        collect_overflows(&set, &mut overflows);
        assert!(!overflows.contains_key("file"), "{overflows:?}");
        assert_eq!(overflows["gone"][0].dropped, gone.dropped);
        assert_eq!(overflows["gone"][0].last_sequence, TOTAL);

        // The hanging POST does not hold up the shutdown past its deadline.
        let start = Instant::now();
        let set = Arc::into_inner(set).expect("the submitter is done");
        set.shutdown(Duration::from_millis(300));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "shutdown took {:?}",
            start.elapsed()
        );
    }

    /// A sink whose thread cannot keep up drops lines for itself alone, counted with their
    /// range.
    #[test]
    fn a_full_queue_drops_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        // Syslog to a socket nobody listens on: the sink retries its first line forever.
        let configs = sinks(&format!(
            r#"
            [[sink]]
            type = "syslog"
            address = "{}"
            queue_max = 10
            "#,
            dir.path().join("nobody.sock").display()
        ));
        let set = SinkSet::start(&configs, dir.path()).unwrap();
        for n in 1..=100 {
            set.submit(&event(n));
        }
        let overflows = set.take_overflows();
        // One run, or two when the sink took its first line only in the middle of the
        // submits and one line found the room it left.
        assert!((1..=2).contains(&overflows.len()), "{overflows:?}");
        assert!(overflows.iter().all(|o| o.sink == "syslog"));
        let dropped: u64 = overflows.iter().map(|o| o.dropped).sum();
        // One line is being retried, ten are queued: the rest is dropped.
        assert!((89..=90).contains(&dropped), "{overflows:?}");
        assert_eq!(overflows.last().unwrap().last_sequence, 100);
        for o in &overflows {
            assert_eq!(
                o.last_sequence - o.first_sequence + 1,
                o.dropped,
                "each run names exactly the lines dropped: {overflows:?}"
            );
        }
        assert!(set.take_overflows().is_empty());
        wait_for("the failure to show", Duration::from_secs(10), || {
            health_of(&set, "syslog").last_error.is_some()
        });
        let health = health_of(&set, "syslog");
        assert_eq!(health.dropped, dropped);
        // The line in hand and the full queue.
        assert_eq!(health.dropped + health.backlog, 100, "{health:?}");
    }
}
