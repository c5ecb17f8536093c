//! Reporting upstream (issue #6), end to end through the daemon: a real rsyslogd and a
//! webhook receiver on loopback get every event, the webhook through an outage and a
//! daemon killed and restarted in the middle; Prometheus is scraped; the audit log
//! verifies and reads back with filters; and a flood is enforced, counted to the event and
//! kept in bounded memory while a sink hangs.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;

use crate::{
    daemonfix::{open_to_nobody, Daemon},
    fixture::{wait_until, Fixture, PRECIOUS, PROBE},
    receivers::{sequence_of, Blackhole, Rsyslog, Webhook},
};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a session through the daemon in which `count` unlinks of prod/keep are refused;
/// returns its session id.
fn denials(daemon: &Daemon, fx: &Fixture, count: u32) -> String {
    let script = format!(
        "for i in $(seq {count}); do {PROBE} unlink {} >/dev/null; done; exit 0",
        fx.s("prod/keep")
    );
    let out = daemon
        .client_as_nobody(true, &fx.ws, &["run", "--", "sh", "-c", &script])
        .output()
        .expect("run a session through the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the session failed: {stderr}");
    fx.assert_intact("prod/keep");
    let start = daemon
        .events()
        .into_iter()
        .rev()
        .find(|e| e["agent_guard"]["kind"] == "session-start")
        .expect("a session-start in the audit log");
    start["agent_guard"]["session"]["id"]
        .as_str()
        .expect("a session id")
        .to_owned()
}

/// The audit log's lines by sequence number.
fn audit_lines(daemon: &Daemon) -> BTreeMap<u64, String> {
    fs::read_to_string(&daemon.events)
        .unwrap_or_default()
        .lines()
        .map(|l| (sequence_of(l), l.to_owned()))
        .collect()
}

/// GET /metrics.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the scrape");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

/// The value of the sample named exactly `series` (with its labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn syslog_and_a_webhook_get_every_event_through_an_outage_and_a_daemon_restart() {
    let fx = Fixture::new("report-sinks");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let rsyslog = Rsyslog::start(&fx.root);
    let mut hook = Webhook::start();
    let metrics_port = crate::receivers::free_port();
    let mut daemon = Daemon::new(&fx, "sinks");
    daemon.configure(&format!(
        r#"metrics = "127.0.0.1:{metrics_port}"

[[sink]]
type = "syslog"
name = "local-syslog"
address = "{unix}"

[[sink]]
type = "syslog"
name = "remote-syslog"
address = "tcp://127.0.0.1:{tcp}"

[[sink]]
type = "webhook"
name = "siem"
url = "http://127.0.0.1:{http}/events"
batch_max = 4
batch_wait_ms = 50
"#,
        unix = rsyslog.socket.display(),
        tcp = rsyslog.port,
        http = hook.port,
    ));
    daemon.start();

    // 1. Everything up.
    let first = denials(&daemon, &fx, 3);
    wait_until("the webhook to get the first session", TIMEOUT, || {
        let got = hook.by_sequence();
        audit_lines(&daemon).keys().all(|s| got.contains_key(s))
    });
    // 2. The receiver is down: its events wait in the daemon's spool.
    hook.pause();
    denials(&daemon, &fx, 3);
    let before_kill = audit_lines(&daemon);
    wait_until("rsyslogd to get every event twice", TIMEOUT, || {
        let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, message) in rsyslog.messages() {
            *copies.entry(sequence_of(&message)).or_default() += 1;
        }
        before_kill.keys().all(|s| copies.get(s) == Some(&2))
    });
    // 3. The daemon dies with the spool on disk; its successor sends it on.
    daemon.kill9();
    daemon.start();
    denials(&daemon, &fx, 3);
    hook.resume();
    let audit = audit_lines(&daemon);
    let last = *audit.keys().last().expect("an audit log");
    wait_until("the webhook to get every event", TIMEOUT, || {
        let got = hook.by_sequence();
        (1..=last).all(|s| got.contains_key(&s))
    });

    // Every event arrived, byte for byte as the audit log has it; a duplicate differs in
    // nothing (same sequence number, same line).
    assert_eq!(
        audit.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "the audit log numbers its lines 1, 2, 3... across the restart"
    );
    for (sequence, copies) in hook.by_sequence() {
        let Some(original) = audit.get(&sequence) else {
            continue; // written after `audit` was read
        };
        for copy in copies {
            assert_eq!(&copy, original, "webhook copy of event {sequence}");
        }
    }
    // rsyslogd got each event from both syslog sinks, as RFC 5424 with the JSON intact.
    for (header, message) in rsyslog.messages() {
        let sequence = sequence_of(&message);
        if let Some(original) = before_kill.get(&sequence) {
            assert_eq!(&message, original, "syslog copy of event {sequence}");
            assert!(header.starts_with('<'), "an RFC 5424 priority: {header}");
            assert!(header.contains(" agent-guard "), "the app name: {header}");
        }
    }
    let first_denials = audit
        .values()
        .filter(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            e["agent_guard"]["session"]["id"] == first.as_str()
                && e["agent_guard"]["kind"] == "decision"
        })
        .count();
    assert_eq!(
        first_denials, 3,
        "the first session's denials in the audit log"
    );

    // Prometheus: decisions since the restart, per operation and decision.
    let metrics = scrape(metrics_port);
    assert_eq!(
        sample(
            &metrics,
            r#"agent_guard_events_total{op="unlink",decision="deny"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"agent_guard_sink_backlog{sink="siem"}"#),
        "{metrics}"
    );

    // The audit log verifies, and reads back filtered.
    let verify = daemon.client(&["audit", "verify", &daemon.events.display().to_string()]);
    let verdict = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "audit verify: {verdict}");
    let filtered = daemon.client(&[
        "events",
        "--file",
        &daemon.events.display().to_string(),
        "--session",
        &first,
        "--op",
        "unlink",
        "--decision",
        "deny",
    ]);
    let text = String::from_utf8_lossy(&filtered.stdout);
    assert!(filtered.status.success(), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_flood_through_the_daemon_is_enforced_counted_exactly_and_held_in_bounded_memory() {
    const FLOOD: u64 = 20_000;
    let fx = Fixture::new("report-flood");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let hung = Blackhole::start();
    let mut daemon = Daemon::new(&fx, "flood");
    let copy = daemon.state.join("copy.jsonl");
    daemon.configure(&format!(
        r#"
[[sink]]
type = "webhook"
name = "hung-siem"
url = "http://127.0.0.1:{port}/events"
timeout_ms = 600000
spool_max_bytes = 262144

[[sink]]
type = "file"
name = "copy"
path = "{copy}"
"#,
        port = hung.port,
        copy = copy.display(),
    ));
    daemon.start();
    let before = daemon.status();
    let script = format!("{PROBE} unlink-many {} {FLOOD}", fx.s("prod/keep"));
    let out = daemon
        .client_as_nobody(true, &fx.ws, &["run", "--", "sh", "-c", &script])
        .output()
        .expect("run the flood");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("EPERM"),
        "every unlink refused: {stdout}"
    );
    fx.assert_intact("prod/keep");
    wait_until("the session's end", TIMEOUT, || {
        daemon
            .events()
            .iter()
            .any(|e| e["agent_guard"]["kind"] == "session-end")
    });
    let after = daemon.status();
    let peak_kib = fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .expect("VmHWM");
    let kernel_denied = after["decisions"]["denied"].as_u64().unwrap()
        - before["decisions"]["denied"].as_u64().unwrap();
    assert_eq!(kernel_denied, FLOOD, "the kernel counted every refusal");
    // Stopping flushes the sinks and reports their last overflows.
    assert!(daemon.stop().success(), "{}", daemon.log());

    let audit = audit_lines(&daemon);
    let events: Vec<Value> = audit
        .values()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions = events
        .iter()
        .filter(|e| e["agent_guard"]["kind"] == "decision")
        .count() as u64;
    let lost: u64 = events
        .iter()
        .filter(|e| e["agent_guard"]["kind"] == "lost-events")
        .map(|e| e["agent_guard"]["lost"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        decisions + lost,
        FLOOD,
        "every refusal is an event in the audit log or counted lost ({decisions} + {lost})"
    );
    // Each sink accounts for every line: delivered, or inside a range it reported lost.
    let dropped_by = |sink: &str| -> BTreeSet<u64> {
        events
            .iter()
            .filter(|e| {
                e["agent_guard"]["kind"] == "sink-overflow"
                    && e["agent_guard"]["sink"]["name"] == sink
            })
            .flat_map(|e| {
                let s = &e["agent_guard"]["sink"];
                s["first_sequence"].as_u64().unwrap()..=s["last_sequence"].as_u64().unwrap()
            })
            .collect()
    };
    let copied: BTreeSet<u64> = fs::read_to_string(&copy)
        .unwrap_or_default()
        .lines()
        .map(sequence_of)
        .collect();
    let copy_dropped = dropped_by("copy");
    for sequence in audit.keys() {
        assert!(
            copied.contains(sequence) || copy_dropped.contains(sequence),
            "event {sequence} neither in the file sink nor reported lost to it"
        );
    }
    assert!(
        !dropped_by("hung-siem").is_empty(),
        "a spool of 256 KiB cannot hold the flood: its overflow is reported"
    );
    // The end-to-end rate: decisions the kernel took, as the audit log timed them.
    let times: Vec<std::time::SystemTime> = events
        .iter()
        .filter(|e| e["agent_guard"]["kind"] == "decision")
        .filter_map(|e| crate::events::parse_rfc3339(e["@timestamp"].as_str()?))
        .collect();
    let span = match (times.first(), times.last()) {
        (Some(first), Some(last)) => last.duration_since(*first).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    eprintln!(
        "flood via the daemon: {FLOOD} refusals in {:.2} s of guest time ({:.0} decisions/s end to end), {decisions} events, {lost} lost, file sink {} copied, {} reported dropped; peak RSS {} MiB",
        span.as_secs_f64(),
        decisions as f64 / span.as_secs_f64().max(1e-9),
        copied.len(),
        copy_dropped.len(),
        peak_kib / 1024
    );
    assert!(
        peak_kib < 128 * 1024,
        "the daemon's memory stays bounded while a sink hangs: peak {peak_kib} KiB"
    );
}
