//! The event pipeline's throughput on one core, as `cargo xtask bench` reports it: raw
//! ring-buffer records, as the kernel side writes them, are decoded, enriched (time, host,
//! session, rule names, ancestry) and written as JSON Lines (1, "unchained"); then the
//! same again numbered and hash-chained by the journal, exactly as the daemon does for
//! each record it drains (2, "pipeline").
//!
//! Baseline, in the same run: writing the very lines the pipeline produced, already
//! rendered, to a log the same way (a batch of 256 lines per write, as the daemon flushes
//! once per drain of the ring buffer). The ratio says what the work before the write costs.
//!
//! `event_pipeline DIR EVENTS` writes its logs under DIR and prints one JSON object.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use agent_guard::{
    audit::journal::{Journal, JournalSettings},
    events::{rfc3339_into, Clock, Decision},
    report::{
        ancestry::Ancestry,
        ecs::{write_decision, SessionFacts, Stamp},
        reporter::{Reporter, SessionView},
        rotating_file::{RotatingFile, Rotation},
    },
};
use agent_guard_common::{
    EventHeader, AF_INET, DECISION_AUDIT, DECISION_DENY, EVENT_DECISION, FLAG_NETWORK, OP_CONNECT,
    OP_OPEN_WRITE, OP_RENAME, OP_UNLINK, PATH_EXE, PATH_TARGET, PATH_TARGET2, PROTO_TCP,
    RULE_EGRESS_DEFAULT, RULE_OUTSIDE_SCOPE, RULE_POLICY_BASE,
};

/// A few kinds of decision, in the proportions a busy agent produces them: mostly file
/// denials with one or two paths, some connections, some audit-mode reports.
fn synthetic_records() -> Vec<Vec<u8>> {
    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let record = |op, decision, rule, paths: [&[u8]; 3], net: bool| {
        let mut h = EventHeader {
            kind: EVENT_DECISION,
            op,
            session: 0x5b0e_93d2,
            decision,
            rule,
            errno: if decision == DECISION_DENY { 1 } else { 0 },
            pid: me,
            tid: me,
            ppid: parent,
            uid: 1000,
            gid: 1000,
            flags: 0,
            target_pid: 0,
            detail: 0,
            ktime_ns: 1_000_000_000,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
            path_len: [0; 3],
            family: 0,
            protocol: 0,
            socket_type: 0,
            port: 0,
            _pad: 0,
            addr: [0; 16],
        };
        if net {
            h.flags = FLAG_NETWORK;
            h.family = AF_INET;
            h.protocol = u16::from(PROTO_TCP);
            h.port = 443;
            h.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7];
        }
        let mut slots: [&[u8]; 3] = [&[]; 3];
        slots[PATH_TARGET] = paths[0];
        slots[PATH_TARGET2] = paths[1];
        slots[PATH_EXE] = paths[2];
        for (slot, bytes) in slots.iter().enumerate() {
            h.path_len[slot] = bytes.len() as u16;
        }
        let mut bytes = vec![0u8; size_of::<EventHeader>()];
        // SAFETY: the buffer holds exactly one header.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), h) };
        for p in slots {
            bytes.extend_from_slice(p);
        }
        bytes
    };
    let exe: &[u8] = b"python3.11\0bin\0usr\0";
    vec![
        record(
            OP_UNLINK,
            DECISION_DENY,
            RULE_OUTSIDE_SCOPE,
            [b"app.conf\0etc\0prod\0srv\0", b"", exe],
            false,
        ),
        record(
            OP_RENAME,
            DECISION_DENY,
            RULE_POLICY_BASE + 1,
            [
                b"db.sqlite\0data\0prod\0srv\0",
                b"db.sqlite.bak\0tmp\0",
                exe,
            ],
            false,
        ),
        record(
            OP_OPEN_WRITE,
            DECISION_AUDIT,
            RULE_POLICY_BASE,
            [b"config\0.git\0repo\0work\0home\0", b"", exe],
            false,
        ),
        record(
            OP_CONNECT,
            DECISION_DENY,
            RULE_EGRESS_DEFAULT,
            [b"", b"", exe],
            true,
        ),
    ]
}

/// Lines gathered and written 256 at a time, as the daemon writes what one drain of the
/// ring buffer sealed.
struct Batches {
    file: RotatingFile,
    batch: Vec<u8>,
    lines: u32,
}

impl Batches {
    fn create(path: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(path);
        let rotation = Rotation {
            max_bytes: 0,
            keep: 0,
        };
        Self {
            file: RotatingFile::open(path, rotation).expect("open a log"),
            batch: Vec::with_capacity(512 * 1024),
            lines: 0,
        }
    }

    /// The buffer the next line goes into; call `line_done` after it.
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.batch
    }

    fn line_done(&mut self) {
        self.batch.push(b'\n');
        self.lines += 1;
        if self.lines == 256 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.file.append_terminated(&self.batch).expect("written");
        }
        self.batch.clear();
        self.lines = 0;
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: event_pipeline DIR EVENTS"));
    let events: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("usage: event_pipeline DIR EVENTS");
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    let rotation = Rotation {
        max_bytes: 0,
        keep: 0,
    };
    let records = synthetic_records();
    let rule_names = vec!["audit-git".to_owned(), "protect-prod".to_owned()];
    let rule_hosts = vec![Vec::new(), Vec::new()];
    let hostnames = BTreeMap::new();
    let view = SessionView {
        policy: "coding-agent",
        mode: "enforce",
        root_pid: std::os::unix::process::parent_id(),
        rule_names: &rule_names,
        rule_hosts: &rule_hosts,
        hostnames: &hostnames,
    };

    // 0. The baseline: the lines the pipeline writes, already rendered, written the same
    //    way. Each stage's file is removed right after it, so that no stage waits on the
    //    write-back of another's.
    let lines: Vec<String> = {
        let mut warm = Reporter::new(Journal::in_memory(), Clock::sample());
        (0..records.len() * 4)
            .map(|n| {
                let d = Decision::decode(&records[n % records.len()]).expect("a valid record");
                warm.decision(&d, &view).expect("sealed").text.to_string()
            })
            .collect()
    };
    let copy = dir.join("baseline.jsonl");
    let mut out = Batches::create(&copy);
    let started = Instant::now();
    for n in 0..events {
        out.buffer()
            .extend_from_slice(lines[(n % lines.len() as u64) as usize].as_bytes());
        out.line_done();
    }
    out.flush();
    let baseline = started.elapsed();
    let _ = std::fs::remove_file(&copy);

    // 1. Decode, enrich, write JSONL: the lines without the audit chain, written as the
    //    journal writes them (a batch per drain).
    let plain = dir.join("plain.jsonl");
    let mut out = Batches::create(&plain);
    let clock = Clock::sample();
    let host = agent_guard::report::ecs::host_name();
    let mut ancestry = Ancestry::default();
    let mut ancestors = Vec::new();
    let started = Instant::now();
    for n in 0..events {
        let raw = &records[(n % records.len() as u64) as usize];
        let d = Decision::decode(raw).expect("a valid record");
        if ancestry.learn(d.pid, d.ppid, &d.comm) || ancestors.is_empty() {
            ancestry.of(d.ppid, view.root_pid, &mut ancestors);
        }
        let mut time = [0u8; 27];
        rfc3339_into(clock.unix_ns(d.ktime_ns), &mut time);
        let stamp = Stamp {
            timestamp: std::str::from_utf8(&time).expect("ASCII"),
            sequence: n + 1,
            host: &host,
        };
        let facts = SessionFacts {
            policy: view.policy,
            mode: view.mode,
            rule_names: view.rule_names,
            hostname: None,
            ancestry: &ancestors,
        };
        write_decision(out.buffer(), stamp, &d, facts).expect("serialized");
        out.line_done();
    }
    out.flush();
    let unchained = started.elapsed();
    let _ = std::fs::remove_file(&plain);

    // 2. The daemon's pipeline: the same, numbered and sealed into the hash chain by the
    //    journal (SHA-256 of every line).
    let log = dir.join("pipeline.jsonl");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(dir.join("pipeline.state"));
    let journal = Journal::open(JournalSettings {
        path: log.clone(),
        rotation,
        state_file: dir.join("pipeline.state"),
    })
    .expect("open the audit log");
    let mut reporter = Reporter::new(journal, Clock::sample());
    let started = Instant::now();
    for n in 0..events {
        let raw = &records[(n % records.len() as u64) as usize];
        let decision = Decision::decode(raw).expect("a valid record");
        reporter
            .decision(&decision, &view)
            .expect("sealed and written");
        if n % 256 == 255 {
            // The daemon flushes once per drain of the ring buffer.
            reporter.flush().expect("flushed");
        }
    }
    reporter.flush().expect("flushed");
    let pipeline = started.elapsed();
    let bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&log);

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "unchained_seconds": unchained.as_secs_f64(),
            "unchained_events_per_second": rate(unchained).round(),
            "pipeline_seconds": pipeline.as_secs_f64(),
            "pipeline_events_per_second": rate(pipeline).round(),
            "baseline_seconds": baseline.as_secs_f64(),
            "baseline_events_per_second": rate(baseline).round(),
            "unchained_ratio": unchained.as_secs_f64() / baseline.as_secs_f64(),
            "ratio": pipeline.as_secs_f64() / baseline.as_secs_f64(),
            "bytes_per_event": bytes as f64 / events as f64,
        })
    );
}
