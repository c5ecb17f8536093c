//! Host integration tests of the audit log through the real binary: `audit verify` finds
//! an intact chain intact, across rotated files, and names the right line for each kind
//! of tampering; `events --file`/`--log` filter the log offline.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use agent_guard::{
    audit::{
        chain,
        journal::{Journal, JournalSettings},
    },
    report::rotating_file::Rotation,
};

fn agent_guard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agent-guard"))
}

fn run(args: &[&str], files: &[PathBuf]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = agent_guard().args(args).args(files).output().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn verify(files: &[PathBuf]) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run(&["audit", "verify"], files);
    (code, format!("{stdout}{stderr}"))
}

/// One event of the schema, as the daemon would serialize it.
struct Event {
    session: &'static str,
    time: &'static str,
    action: &'static str,
    decision: Option<&'static str>,
}

const EVENTS: &[Event] = &[
    Event {
        session: "0000000a",
        time: "2026-11-30T11:00:00.000000Z",
        action: "session-start",
        decision: None,
    },
    Event {
        session: "0000000a",
        time: "2026-11-30T11:30:00.000000Z",
        action: "unlink",
        decision: Some("deny"),
    },
    Event {
        session: "0000000b",
        time: "2026-11-30T11:45:00.000000Z",
        action: "connect",
        decision: Some("audit"),
    },
    Event {
        session: "0000000a",
        time: "2026-11-30T12:00:00.000000Z",
        action: "rename",
        decision: Some("deny"),
    },
    Event {
        session: "0000000b",
        time: "2026-11-30T12:15:00.000000Z",
        action: "unlink",
        decision: Some("audit"),
    },
    Event {
        session: "0000000a",
        time: "2026-11-30T12:30:00.000000Z",
        action: "session-end",
        decision: None,
    },
];

fn append(journal: &mut Journal, event: &Event) -> agent_guard::report::Line {
    journal
        .append(|sequence, body| {
            let mut value = serde_json::json!({
                "@timestamp": event.time,
                "event": {"sequence": sequence, "action": event.action},
                "host": {"name": "builder"},
                "agent_guard": {"schema": 1, "session": {"id": event.session}},
            });
            if let Some(decision) = event.decision {
                value["agent_guard"]["decision"] = decision.into();
            }
            serde_json::to_writer(&mut *body, &value)?;
            Ok(())
        })
        .unwrap()
}

struct Log {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Log {
    /// `count` events written by the journal, rotated by `max_bytes` (0: never).
    fn written(count: usize, max_bytes: u64) -> (Log, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut journal = Journal::open(JournalSettings {
            path: path.clone(),
            rotation: Rotation {
                max_bytes,
                keep: 10,
            },
            state_file: dir.path().join("journal"),
        })
        .unwrap();
        // One flush per line, as the daemon does when events come one at a time, so the
        // log rotates between lines.
        for n in 0..count {
            append(&mut journal, &EVENTS[n % EVENTS.len()]);
            journal.flush().unwrap();
        }
        (Log { dir, path }, journal)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Writes `lines` to a new file beside the log.
    fn tampered(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rotated(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }
}

fn at(line: usize, file: &Path) -> String {
    format!("line {line} of {}", file.display())
}

#[test]
fn a_journal_chain_is_intact_across_rotated_files() {
    let (log, journal) = Log::written(30, 2000);
    assert!(log.rotated(2).exists(), "the log rotated at least twice");
    let files: Vec<PathBuf> = agent_guard::audit::query::log_files(&log.path);
    let (code, out) = verify(&files);
    assert_eq!(code, Some(0), "{out}");
    let (last, head) = journal.head();
    assert_eq!(last, 30);
    assert!(
        out.starts_with(&format!("intact: 30 lines, sequence 1 to 30, head {head}")),
        "{out}"
    );
    assert!(
        out.contains("the chain starts at its first line ever"),
        "{out}"
    );

    // The newest files alone: the chain starts where the oldest kept file does.
    let (code, out) = verify(&files[1..]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the chain starts at sequence"), "{out}");

    // Given in the wrong order, the files do not link.
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    let (code, out) = verify(&swapped);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("the link to {}", at(1, &swapped[1]))),
        "{out}"
    );
}

#[test]
fn an_edited_field_is_named() {
    let (log, _) = Log::written(10, 0);
    let mut lines = log.lines();
    assert!(lines[3].contains(r#""action":"rename""#), "{}", lines[3]);
    lines[3] = lines[3].replace(r#""action":"rename""#, r#""action":"unlink""#);
    let file = log.tampered("edited", &lines);
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{} was edited (sequence 4)", at(4, &file))),
        "{out}"
    );
}

#[test]
fn a_deleted_line_is_named_missing() {
    let (log, _) = Log::written(10, 0);
    let mut lines = log.lines();
    lines.remove(5);
    let file = log.tampered("deleted", &lines);
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the link to {} is broken: it holds sequence 7 after 5; sequence 6 is missing",
            at(6, &file)
        )),
        "{out}"
    );
}

#[test]
fn swapped_lines_are_named_reordered() {
    let (log, _) = Log::written(10, 0);
    let mut lines = log.lines();
    lines.swap(2, 3);
    let file = log.tampered("swapped", &lines);
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the link to {} is broken: it holds sequence 4 after 2; lines were reordered (3 is at {})",
            at(3, &file),
            at(4, &file)
        )),
        "{out}"
    );
}

#[test]
fn a_forged_line_is_named_inserted() {
    let (log, _) = Log::written(10, 0);
    let mut lines = log.lines();
    // The forger seals properly and links to the line before, but cannot rewrite the
    // lines after without rewriting the rest of the chain.
    let prev = chain::unseal(lines[4].as_bytes()).unwrap().hash;
    let mut forged = lines[5].clone().into_bytes();
    let content_len = chain::unseal(&forged).unwrap().content.len();
    forged.truncate(content_len);
    let mut forged = String::from_utf8(forged)
        .unwrap()
        .replace("0000000a", "0000000c")
        .into_bytes();
    forged.push(b'}');
    chain::seal(&prev, &mut forged).unwrap();
    lines.insert(5, String::from_utf8(forged).unwrap());
    let file = log.tampered("forged", &lines);
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{} was inserted: {} links to the line before it",
            at(6, &file),
            at(7, &file)
        )),
        "{out}"
    );

    // A forgery with a made-up seal fails on its own line.
    let mut lines = log.lines();
    let fake = lines[2].replace("0000000b", "0000000c");
    lines.insert(3, fake);
    let file = log.tampered("fake", &lines);
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{} was edited", at(4, &file))),
        "{out}"
    );
}

#[test]
fn a_file_cut_mid_line_is_named() {
    let (log, _) = Log::written(10, 0);
    let text = std::fs::read_to_string(&log.path).unwrap();
    let eighth = text.match_indices('\n').nth(6).unwrap().0 + 1;
    let file = log.dir.path().join("cut");
    std::fs::write(&file, &text[..eighth + 50]).unwrap();
    let (code, out) = verify(std::slice::from_ref(&file));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{} is not a sealed event", at(8, &file))) && out.contains("cut off"),
        "{out}"
    );
}

#[test]
fn a_deletion_at_a_rotation_boundary_names_the_file() {
    let (log, _) = Log::written(30, 2000);
    let mut current = log.lines();
    let first = current.remove(0);
    std::fs::write(
        &log.path,
        current.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let sequence: serde_json::Value = serde_json::from_str(&first).unwrap();
    let missing = sequence["event"]["sequence"].as_u64().unwrap();
    let (code, out) = verify(&agent_guard::audit::query::log_files(&log.path));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the link to {} is broken: it holds sequence {} after {}; sequence {missing} is missing",
            at(1, &log.path),
            missing + 1,
            missing - 1
        )),
        "{out}"
    );
}

#[test]
fn an_unreadable_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.jsonl");
    let (code, _, stderr) = run(&["audit", "verify"], std::slice::from_ref(&absent));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {}", absent.display())),
        "{stderr}"
    );
}

/// The sessions and actions of what `events` printed.
fn printed(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                event["agent_guard"]["session"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                event["event"]["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn events(args: &[&str], log: &Log) -> Vec<(String, String)> {
    let mut all = vec!["events".to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    for file in agent_guard::audit::query::log_files(&log.path) {
        all.push("--file".into());
        all.push(file.display().to_string());
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run(&all, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    printed(&stdout)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(s, a)| (s.to_string(), a.to_string()))
        .collect()
}

#[test]
fn events_from_files_filter_by_session_time_action_and_decision() {
    let (log, _) = Log::written(EVENTS.len(), 600);
    assert!(
        log.rotated(1).exists(),
        "the filters read across rotated files"
    );
    assert_eq!(events(&[], &log).len(), EVENTS.len());
    assert_eq!(
        events(&["--session", "0000000b"], &log),
        pairs(&[("0000000b", "connect"), ("0000000b", "unlink")])
    );
    assert_eq!(
        events(&["--since", "2026-11-30T12:00:00Z"], &log),
        pairs(&[
            ("0000000a", "rename"),
            ("0000000b", "unlink"),
            ("0000000a", "session-end")
        ])
    );
    assert_eq!(
        events(&["--op", "unlink", "--op", "session-start"], &log),
        pairs(&[
            ("0000000a", "session-start"),
            ("0000000a", "unlink"),
            ("0000000b", "unlink")
        ])
    );
    assert_eq!(
        events(&["--decision", "deny"], &log),
        pairs(&[("0000000a", "unlink"), ("0000000a", "rename")])
    );
    assert_eq!(
        events(&["--decision", "audit", "--op", "unlink"], &log),
        pairs(&[("0000000b", "unlink")])
    );
    // Every event of the log is years from now or in the past; an age keeps none or all.
    let recent = events(&["--since", "10m"], &log);
    let now = std::time::SystemTime::now();
    let log_time = humantime::parse_rfc3339("2026-11-30T12:30:00Z").unwrap();
    assert_eq!(
        recent.is_empty(),
        now > log_time + std::time::Duration::from_secs(600)
    );
}

#[test]
fn events_print_lines_unchanged_so_they_still_verify() {
    let (log, _) = Log::written(EVENTS.len(), 0);
    let out = agent_guard()
        .args(["events", "--file"])
        .arg(&log.path)
        .output()
        .unwrap();
    assert_eq!(out.stdout, std::fs::read(&log.path).unwrap());
}

#[test]
fn events_from_the_configured_log() {
    let (log, _) = Log::written(EVENTS.len(), 600);
    let config = log.dir.path().join("config.toml");
    let mut file = std::fs::File::create(&config).unwrap();
    writeln!(file, "events = \"events.jsonl\"").unwrap();
    let (code, stdout, stderr) = run(
        &["events", "--log", "--decision", "deny", "--config"],
        &[config],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        printed(&stdout),
        pairs(&[("0000000a", "unlink"), ("0000000a", "rename")])
    );
}

#[test]
fn bad_filter_values_say_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, "").unwrap();
    for (args, accepted) in [
        (
            &["--since", "yesterday"][..],
            "RFC 3339 in UTC (2026-11-30T12:00:00Z) or an age",
        ),
        (&["--decision", "denied"], "give `deny` or `audit`"),
        (&["--op", "delete"], "the actions are: unlink,"),
    ] {
        let mut all = vec!["events", "--file", file.to_str().unwrap()];
        all.extend(args);
        let (code, _, stderr) = run(&all, &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(accepted), "{args:?}: {stderr}");
    }
}
