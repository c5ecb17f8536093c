//! The registry's text, checked by a small parser of the exposition format, and the server,
//! scraped over real sockets on the loopback.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use super::*;

/// One sample: its name and labels (in order), and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses exposition text, checking as it goes that each sample belongs to a family declared
/// by a `# TYPE` line before it (with `# HELP`), that a family is declared once, and that
/// label values are escaped correctly. Returns the samples and the families' types.
pub(crate) fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut types = BTreeMap::new();
    let mut helped = BTreeMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(!help.is_empty(), "{line}");
            assert!(
                helped.insert(name.to_owned(), ()).is_none(),
                "HELP twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(helped.contains_key(name), "HELP comes before TYPE: {line}");
            let old = types.insert(name.to_owned(), kind.to_owned());
            assert!(old.is_none(), "TYPE twice: {line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        assert!(
            types.contains_key(name),
            "sample {line:?} has no TYPE before it"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                let eq = rest.find("=\"").expect("label=\"value\"");
                let label = rest[..eq].to_owned();
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next().expect("an unterminated label value") {
                        (_, '\\') => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("unknown escape \\{c} in {line:?}"),
                        },
                        (i, '"') => break eq + 2 + i + 1,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label, value));
                rest = &rest[end..];
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else {
                    rest = rest.strip_prefix('}').expect("labels end with }");
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("a space before the value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        samples.push((name.to_owned(), labels, value));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && l.iter()
                    .zip(labels)
                    .all(|((a, b), (c, d))| a == c && b == d)
        })
        .map(|s| s.2)
}

#[test]
fn a_new_registry_declares_every_family_and_counts_zero() {
    let (samples, types) = parse(&Metrics::new().render());
    for (name, kind) in [
        ("agent_guard_events_total", "counter"),
        ("agent_guard_reports_total", "counter"),
        ("agent_guard_lost_events_total", "counter"),
        ("agent_guard_sink_backlog", "gauge"),
        ("agent_guard_sink_delivered_total", "counter"),
        ("agent_guard_sink_dropped_total", "counter"),
        ("agent_guard_sessions", "gauge"),
        ("agent_guard_event_sequence", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // No ring watched yet: no ring gauges rather than made-up zeros.
    assert!(!types.contains_key("agent_guard_ring_buffer_used_bytes"));
    assert_eq!(
        value(&samples, "agent_guard_lost_events_total", &[]),
        Some(0.0)
    );
    assert_eq!(value(&samples, "agent_guard_sessions", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "agent_guard_event_sequence", &[]),
        Some(0.0)
    );
    assert_eq!(samples.len(), 3, "{samples:?}");
}

#[test]
fn updates_show_in_the_text() {
    let m = Metrics::new();
    for _ in 0..3 {
        m.record_decision("unlink", "deny");
    }
    m.record_decision("unlink", "audit");
    m.record_decision("connect", "deny");
    m.record_report("session-start");
    m.record_report("session-start");
    m.record_report("lost-events");
    m.set_lost_events(17);
    m.set_sessions(2);
    m.set_event_sequence(12345);
    m.set_sink(
        "siem",
        SinkSnapshot {
            backlog: 4,
            delivered: 100,
            dropped: 1,
        },
    );
    m.set_sink("old", SinkSnapshot::default());
    m.set_sink(
        "siem",
        SinkSnapshot {
            backlog: 5,
            delivered: 101,
            dropped: 1,
        },
    );
    m.remove_sink("old");

    let (s, _) = parse(&m.render());
    let events = "agent_guard_events_total";
    assert_eq!(
        value(&s, events, &[("op", "unlink"), ("decision", "deny")]),
        Some(3.0)
    );
    assert_eq!(
        value(&s, events, &[("op", "unlink"), ("decision", "audit")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, events, &[("op", "connect"), ("decision", "deny")]),
        Some(1.0)
    );
    let reports = "agent_guard_reports_total";
    assert_eq!(value(&s, reports, &[("kind", "session-start")]), Some(2.0));
    assert_eq!(value(&s, reports, &[("kind", "lost-events")]), Some(1.0));
    assert_eq!(value(&s, "agent_guard_lost_events_total", &[]), Some(17.0));
    assert_eq!(value(&s, "agent_guard_sessions", &[]), Some(2.0));
    assert_eq!(value(&s, "agent_guard_event_sequence", &[]), Some(12345.0));
    let siem = [("sink", "siem")];
    assert_eq!(value(&s, "agent_guard_sink_backlog", &siem), Some(5.0));
    assert_eq!(
        value(&s, "agent_guard_sink_delivered_total", &siem),
        Some(101.0)
    );
    assert_eq!(
        value(&s, "agent_guard_sink_dropped_total", &siem),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "agent_guard_sink_backlog", &[("sink", "old")]),
        None,
        "removed"
    );
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    let odd = "a\\b\"c\nd é";
    m.set_sink(
        odd,
        SinkSnapshot {
            backlog: 1,
            delivered: 2,
            dropped: 3,
        },
    );
    let text = m.render();
    assert!(
        text.contains(r#"agent_guard_sink_backlog{sink="a\\b\"c\nd é"} 1"#),
        "{text}"
    );
    let (s, _) = parse(&text);
    assert_eq!(
        value(&s, "agent_guard_sink_dropped_total", &[("sink", odd)]),
        Some(3.0)
    );
}

/// A scrape's answer: status code, header fields (names in lower case), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request(addr: SocketAddr, raw: &str) -> Answer {
    try_request(addr, raw).expect("a request and its answer")
}

fn try_request(addr: SocketAddr, raw: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let text = String::from_utf8(bytes).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r[..3].parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").expect("name: value");
            (n.to_ascii_lowercase(), v.to_owned())
        })
        .collect::<Vec<_>>();
    let answer = Answer {
        status,
        headers,
        body: body.to_owned(),
    };
    let length: usize = answer
        .header("content-length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    if raw.starts_with("HEAD ") {
        assert!(answer.body.is_empty(), "no body for HEAD");
        assert!(length > 0, "the length GET would have");
    } else {
        assert_eq!(length, answer.body.len(), "Content-Length matches the body");
    }
    Ok(answer)
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n"),
    )
}

fn start(metrics: &Arc<Metrics>) -> ServerHandle {
    serve("127.0.0.1:0".parse().unwrap(), Arc::clone(metrics)).expect("serve on the loopback")
}

#[test]
fn a_scrape_returns_the_current_values() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    metrics.record_decision("unlink", "deny");
    metrics.set_sessions(1);
    let a = get(addr, "/metrics");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (s, _) = parse(&a.body);
    let deny = [("op", "unlink"), ("decision", "deny")];
    assert_eq!(value(&s, "agent_guard_events_total", &deny), Some(1.0));
    assert_eq!(value(&s, "agent_guard_sessions", &[]), Some(1.0));

    metrics.record_decision("unlink", "deny");
    metrics.set_sessions(0);
    let (s, _) = parse(&get(addr, "/metrics?x=1").body);
    assert_eq!(value(&s, "agent_guard_events_total", &deny), Some(2.0));
    assert_eq!(value(&s, "agent_guard_sessions", &[]), Some(0.0));
    server.shutdown();
}

#[test]
fn other_paths_and_methods_are_refused() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let addr = server.local_addr();
    assert_eq!(get(addr, "/").status, 404);
    assert_eq!(get(addr, "/metrics/x").status, 404);
    let post = request(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(request(addr, "garbage\r\n\r\n").status, 400);
    let head = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(request(addr, &huge).status, 431);
    // Still serving after all that.
    assert_eq!(get(addr, "/metrics").status, 200);
}

#[test]
fn a_silent_client_does_not_hold_up_the_next_scrape() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let addr = server.local_addr();
    let silent = TcpStream::connect(addr).expect("connect");
    let half = TcpStream::connect(addr).expect("connect");
    (&half).write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    assert_eq!(get(addr, "/metrics").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the scrape waited {:?} behind silent clients",
        started.elapsed()
    );
    drop((silent, half));
}

#[test]
fn a_silent_client_is_let_go() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let mut silent = TcpStream::connect(server.local_addr()).expect("connect");
    silent
        .set_read_timeout(Some(server::HEAD_TIMEOUT * 3))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent
        .read(&mut buf)
        .expect("the server closes the connection");
    assert_eq!(n, 0, "no answer, just the end");
    let waited = started.elapsed();
    assert!(
        waited >= server::HEAD_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
    assert!(waited < server::HEAD_TIMEOUT * 2, "{waited:?}");
}

#[test]
fn too_many_connections_are_told_to_come_back() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let addr = server.local_addr();
    let silent: Vec<_> = (0..server::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // The accepting thread takes them in order; a connection after them finds no slot.
    // A reset instead of the 503 is allowed (the request can arrive after the close).
    let scrape = "GET /metrics HTTP/1.1\r\n\r\n";
    let busy = wait_for(|| match try_request(addr, scrape) {
        Ok(a) => (a.status == 503).then_some(a),
        Err(_) => None,
    });
    assert_eq!(busy.body, "busy\n");
    drop(silent);
    let ok = wait_for(|| {
        let a = get(addr, "/metrics");
        (a.status == 200).then_some(a)
    });
    assert_eq!(ok.status, 200);
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "condition not met within 3 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().unwrap();
    let err = serve(addr, Arc::new(Metrics::new())).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("in use"), "{text}");
}

#[test]
fn shutdown_stops_listening() {
    let metrics = Arc::new(Metrics::new());
    let server = start(&metrics);
    let addr = server.local_addr();
    assert_eq!(get(addr, "/metrics").status, 200);
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "nobody listens after shutdown"
    );
    // And the port is free again.
    drop(serve(addr, metrics).expect("serve again on the same address"));
}

#[test]
fn a_watched_ring_shows_its_fill() {
    let m = Metrics::new();
    let size = 4 * 4096;
    let fd = ring_fill::tests::create_ring(size);
    let fill = RingFill::new(std::os::fd::AsFd::as_fd(&fd), size).expect("map the ring");
    assert!(m.watch_ring(fill));
    let (s, types) = parse(&m.render());
    assert_eq!(types["agent_guard_ring_buffer_used_bytes"], "gauge");
    assert_eq!(
        value(&s, "agent_guard_ring_buffer_used_bytes", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "agent_guard_ring_buffer_size_bytes", &[]),
        Some(f64::from(size))
    );
}
