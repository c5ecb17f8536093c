//! How many events a second the journal seals and writes on one core, with a decision of
//! typical size serialized by serde. Run in release:
//! `cargo run --release -p agent-guard --example journal_throughput [COUNT]`.
use std::time::Instant;

use agent_guard::{
    audit::journal::{Journal, JournalSettings},
    report::rotating_file::Rotation,
};
use serde::Serialize;

#[derive(Serialize)]
struct Decision<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: Ecs,
    event: EventFields<'a>,
    process: Process<'a>,
    file: File<'a>,
    agent_guard: AgentGuard<'a>,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct EventFields<'a> {
    kind: &'a str,
    module: &'a str,
    dataset: &'a str,
    action: &'a str,
    outcome: &'a str,
    sequence: u64,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    name: &'a str,
    executable: &'a str,
}

#[derive(Serialize)]
struct File<'a> {
    path: &'a str,
}

#[derive(Serialize)]
struct AgentGuard<'a> {
    schema: u32,
    kind: &'a str,
    decision: &'a str,
    session: Session<'a>,
    policy: &'a str,
}

#[derive(Serialize)]
struct Session<'a> {
    id: &'a str,
}

fn decision(sequence: u64) -> Decision<'static> {
    Decision {
        timestamp: "2026-11-30T12:00:00.123456Z",
        ecs: Ecs { version: "8.11.0" },
        event: EventFields {
            kind: "alert",
            module: "agent_guard",
            dataset: "agent_guard.decision",
            action: "unlink",
            outcome: "failure",
            sequence,
        },
        process: Process {
            pid: 4242,
            name: "python3",
            executable: "/usr/bin/python3.12",
        },
        file: File {
            path: "/home/builder/project/src/important/module/file.rs",
        },
        agent_guard: AgentGuard {
            schema: 1,
            kind: "decision",
            decision: "deny",
            session: Session { id: "0000002a" },
            policy: "coding-agent",
        },
    }
}

fn measure(name: &str, journal: &mut Journal, count: u64) {
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut bytes = 0;
    for _ in 0..count {
        let line = journal
            .append(|sequence, body| Ok(serde_json::to_writer(body, &decision(sequence))?))
            .expect("append");
        bytes += line.text.len() + 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds() - cpu_start;
    println!(
        "{name}: {count} events of {} bytes in {seconds:.3} s ({cpu:.3} s on the CPU): \
         {:.0} events/s, {:.0} per CPU second, {:.0} ns each",
        bytes as u64 / count,
        count as f64 / seconds,
        count as f64 / cpu,
        cpu * 1e9 / count as f64
    );
}

/// What serializing alone costs, to tell the journal's share from serde's.
fn baseline(count: u64) {
    let cpu_start = thread_cpu_seconds();
    let mut body = Vec::with_capacity(4096);
    for sequence in 0..count {
        body.clear();
        serde_json::to_writer(&mut body, &decision(sequence)).expect("serialize");
        std::hint::black_box(&body);
    }
    let cpu = thread_cpu_seconds() - cpu_start;
    println!(
        "serialized only (no journal): {:.0} per CPU second, {:.0} ns each",
        count as f64 / cpu,
        cpu * 1e9 / count as f64
    );
}

/// The CPU time of this thread: on a shared machine, wall time also counts the others.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let count = std::env::args()
        .nth(1)
        .map_or(2_000_000, |n| n.parse().expect("COUNT is a number"));
    baseline(count);
    measure("sealed in memory", &mut Journal::in_memory(), count);
    let dir = std::env::temp_dir().join(format!("journal-throughput-{}", std::process::id()));
    let mut journal = Journal::open(JournalSettings {
        path: dir.join("events.jsonl"),
        rotation: Rotation {
            max_bytes: 256 << 20,
            keep: 2,
        },
        state_file: dir.join("journal"),
    })
    .expect("open the journal");
    measure(
        &format!("sealed and written to {}", dir.display()),
        &mut journal,
        count,
    );
    std::fs::remove_dir_all(&dir).expect("remove the log");
}
