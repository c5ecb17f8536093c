use std::io::Write as _;

use super::*;
use crate::audit::chain::{hash_str, unseal};

fn event(sequence: u64, body: &mut Vec<u8>) -> io::Result<()> {
    write!(
        body,
        r#"{{"@timestamp":"2026-11-30T12:00:00.000000Z","event":{{"sequence":{sequence},"action":"unlink"}}}}"#
    )
}

struct Log {
    _dir: tempfile::TempDir,
    settings: JournalSettings,
}

fn log(rotation: Rotation) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let settings = JournalSettings {
        path: dir.path().join("log/events.jsonl"),
        rotation,
        state_file: dir.path().join("lib/journal"),
    };
    Log {
        _dir: dir,
        settings,
    }
}

const NO_ROTATION: Rotation = Rotation {
    max_bytes: 0,
    keep: 0,
};

/// Appends `count` events, each flushed on its own (a batch of one, as when events come
/// one at a time).
fn append(journal: &mut Journal, count: usize) -> Vec<Line> {
    (0..count)
        .map(|_| {
            let line = journal.append(event).unwrap();
            journal.flush().unwrap();
            line
        })
        .collect()
}

fn prev_of(line: &Line) -> String {
    hash_str(&unseal(line.text.as_bytes()).unwrap().prev).to_owned()
}

fn hash_of(line: &Line) -> String {
    hash_str(&unseal(line.text.as_bytes()).unwrap().hash).to_owned()
}

fn reserved(settings: &JournalSettings) -> u64 {
    read_reservation(&settings.state_file).unwrap().unwrap().0
}

#[test]
fn a_new_log_starts_at_one_from_zeros_and_links_every_line() {
    let log = log(NO_ROTATION);
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    let lines = append(&mut journal, 3);
    assert_eq!(
        lines.iter().map(|l| l.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(prev_of(&lines[0]), "0".repeat(64));
    assert_eq!(prev_of(&lines[1]), hash_of(&lines[0]));
    assert_eq!(prev_of(&lines[2]), hash_of(&lines[1]));
    assert_eq!(journal.head(), (3, hash_of(&lines[2])));
    let written = std::fs::read_to_string(&log.settings.path).unwrap();
    let expected: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
    assert_eq!(written, expected);
    assert!(lines[0].text.contains(r#""sequence":1,"#));
}

#[test]
fn a_reopened_log_goes_on_where_it_stopped() {
    let log = log(NO_ROTATION);
    let first = append(&mut Journal::open(log.settings.clone()).unwrap(), 2);
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    assert_eq!(journal.head(), (2, hash_of(&first[1])));
    let next = journal.append(event).unwrap();
    assert_eq!(next.sequence, 3);
    assert_eq!(prev_of(&next), hash_of(&first[1]));
}

#[test]
fn the_chain_goes_on_across_rotations_and_from_the_newest_rotated_file() {
    let log = log(Rotation {
        max_bytes: 400,
        keep: 3,
    });
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    let lines = append(&mut journal, 5);
    let path = &log.settings.path;
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    assert!(rotated(2).exists(), "the lines are long enough to rotate");
    drop(journal);
    // Rotated away, and stopped before the next line reached the new file.
    std::fs::rename(path, rotated(1)).unwrap();
    std::fs::write(path, "").unwrap();
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    assert_eq!(journal.head(), (5, hash_of(&lines[4])));
    let next = journal.append(event).unwrap();
    assert_eq!((next.sequence, prev_of(&next)), (6, hash_of(&lines[4])));
}

#[test]
fn without_a_log_the_reservation_keeps_numbers_rising() {
    let log = log(NO_ROTATION);
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    append(&mut journal, 5);
    drop(journal);
    assert_eq!(reserved(&log.settings), 1 + RESERVATION_BLOCK);
    std::fs::remove_file(&log.settings.path).unwrap();
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    assert_eq!(journal.head(), (1 + RESERVATION_BLOCK, "0".repeat(64)));
    let next = journal.append(event).unwrap();
    assert_eq!(next.sequence, 2 + RESERVATION_BLOCK);
    assert_eq!(reserved(&log.settings), 2 + 2 * RESERVATION_BLOCK);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&log.settings.state_file).unwrap()).unwrap();
    assert_eq!(
        state["head"],
        "0".repeat(64),
        "the head when it was reserved"
    );
}

#[test]
fn a_lost_state_file_is_written_again_before_the_next_number() {
    let log = log(NO_ROTATION);
    append(&mut Journal::open(log.settings.clone()).unwrap(), 3);
    std::fs::remove_file(&log.settings.state_file).unwrap();
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    assert_eq!(journal.append(event).unwrap().sequence, 4);
    assert_eq!(reserved(&log.settings), 4 + RESERVATION_BLOCK);
}

#[test]
fn the_reservation_is_raised_before_its_last_number_is_used() {
    let log = log(NO_ROTATION);
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    let limit = 1 + RESERVATION_BLOCK;
    append(&mut journal, (limit - 1) as usize);
    assert_eq!(reserved(&log.settings), limit);
    let line = journal.append(event).unwrap();
    assert_eq!(line.sequence, limit);
    assert_eq!(reserved(&log.settings), limit + RESERVATION_BLOCK);
    let stored = read_reservation(&log.settings.state_file).unwrap().unwrap();
    assert_eq!(
        hash_str(&stored.1),
        prev_of(&line),
        "the head before the line"
    );
}

#[test]
fn a_line_cut_short_is_left_on_its_own() {
    let log = log(NO_ROTATION);
    let lines = append(&mut Journal::open(log.settings.clone()).unwrap(), 2);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&log.settings.path)
        .unwrap();
    file.write_all(&lines[1].text.as_bytes()[..40]).unwrap();
    let mut journal = Journal::open(log.settings.clone()).unwrap();
    assert_eq!(journal.head().0, 2);
    let next = journal.append(event).unwrap();
    journal.flush().unwrap();
    let text = std::fs::read_to_string(&log.settings.path).unwrap();
    let last_two: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(last_two, [&lines[1].text[..40], &*next.text]);
}

#[test]
fn a_bad_state_file_is_refused_with_its_name() {
    let log = log(NO_ROTATION);
    std::fs::create_dir_all(log.settings.state_file.parent().unwrap()).unwrap();
    std::fs::write(&log.settings.state_file, "12\n").unwrap();
    let error = Journal::open(log.settings.clone()).err().unwrap();
    assert!(
        error
            .to_string()
            .contains("lib/journal: not the journal's state"),
        "{error}"
    );
}

struct Failing;

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_is_returned_and_counted_and_the_line_kept() {
    let mut journal = Journal::to_writer(Box::new(Failing));
    let line = journal.append(event).unwrap();
    assert_eq!(line.sequence, 1);
    assert_eq!(journal.unwritten(), 1);
    assert!(
        journal.flush().is_err(),
        "the flush reports the failed write"
    );
    assert_eq!(journal.write_errors(), 1);
    assert_eq!(journal.unwritten(), 0);
    assert_eq!(journal.head().0, 1);
}

#[test]
fn a_body_that_is_not_an_object_uses_no_number() {
    let mut journal = Journal::in_memory();
    let refused = journal.append(|_, body| {
        body.extend_from_slice(b"[1]");
        Ok(())
    });
    assert!(matches!(refused, Err(JournalError::NotAnObject(_))));
    assert_eq!(journal.append(event).unwrap().sequence, 1);
}

#[test]
fn the_state_file_and_the_log_are_kept_from_sessions() {
    use crate::policy::{Access, SELF_PROTECTED};
    let protected = |path: &str| {
        SELF_PROTECTED
            .iter()
            .any(|p| p.access == Access::Modify && Path::new(path).starts_with(p.path))
    };
    let config =
        crate::daemon::config::Config::parse(Path::new("/etc/agent-guard/config.toml"), "")
            .unwrap();
    assert!(protected(DEFAULT_STATE_FILE));
    assert!(protected(config.events.to_str().unwrap()));
}
