use std::io::Write as _;

use super::*;
use crate::audit::journal::Journal;

/// `count` sealed lines from sequence 1.
fn chain(count: usize) -> Vec<String> {
    let mut journal = Journal::in_memory();
    (0..count)
        .map(|_| {
            let line = journal
                .append(|sequence, body| {
                    write!(
                        body,
                        r#"{{"event":{{"sequence":{sequence}}},"note":"n{sequence}"}}"#
                    )
                })
                .unwrap();
            line.text.to_string()
        })
        .collect()
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.dir.path().join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn broken(report: Report) -> Break {
    match report {
        Report::Broken(b) => b,
        Report::Intact(i) => panic!("expected a break, got {i:?}"),
    }
}

#[test]
fn an_untouched_chain_is_intact_across_files() {
    let lines = chain(6);
    let files = Files::new();
    let paths = [
        files.write("e.2", &lines[..2]),
        files.write("e.1", &lines[2..5]),
        files.write("e", &lines[5..]),
    ];
    let Report::Intact(intact) = verify(&paths).unwrap() else {
        panic!("not intact")
    };
    let span = intact.span.unwrap();
    assert_eq!(intact.lines, 6);
    assert_eq!((span.first_sequence, span.last_sequence), (1, 6));
    assert_eq!(span.first_prev, "0".repeat(64));
}

#[test]
fn a_chain_may_start_anywhere() {
    let lines = chain(5);
    let files = Files::new();
    let report = verify(&[files.write("e", &lines[2..])]).unwrap();
    let text = report.to_string();
    assert!(
        text.starts_with("intact: 3 lines, sequence 3 to 5"),
        "{text}"
    );
    assert!(
        text.contains("the chain starts at sequence 3 after hash"),
        "{text}"
    );
}

#[test]
fn an_edit_is_named() {
    let mut lines = chain(4);
    lines[2] = lines[2].replace("n3", "n9");
    let files = Files::new();
    let path = files.write("e", &lines);
    let b = broken(verify(std::slice::from_ref(&path)).unwrap());
    assert_eq!(
        b.at,
        Location {
            file: path,
            line: 3
        }
    );
    assert_eq!(b.problem, Problem::Edited { sequence: 3 });
}

#[test]
fn a_deletion_is_missing_and_a_swap_is_out_of_order() {
    let lines = chain(5);
    let files = Files::new();
    let deleted = files.write("deleted", &[&lines[..2], &lines[3..]].concat());
    let b = broken(verify(&[deleted]).unwrap());
    assert_eq!(b.at.line, 3);
    assert_eq!(
        b.problem,
        Problem::Missing {
            previous: 2,
            sequence: 4
        }
    );

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let path = files.write("swapped", &swapped);
    let b = broken(verify(std::slice::from_ref(&path)).unwrap());
    assert_eq!(b.at.line, 2);
    assert_eq!(
        b.problem,
        Problem::OutOfOrder {
            previous: 1,
            sequence: 3,
            expected_at: Some(Location {
                file: path,
                line: 3
            })
        }
    );
}

#[test]
fn a_forged_line_with_a_good_seal_is_named_as_inserted() {
    let lines = chain(3);
    let prev = chain::unseal(lines[0].as_bytes()).unwrap().hash;
    let mut forged = br#"{"event":{"sequence":2},"note":"forged"}"#.to_vec();
    chain::seal(&prev, &mut forged).unwrap();
    let forged = String::from_utf8(forged).unwrap();
    let files = Files::new();
    let path = files.write("e", &[lines[0].clone(), forged, lines[1].clone()]);
    let b = broken(verify(std::slice::from_ref(&path)).unwrap());
    assert_eq!(b.at.line, 3);
    assert_eq!(
        b.problem,
        Problem::Inserted {
            inserted: Location {
                file: path,
                line: 2
            }
        }
    );
}

#[test]
fn a_resealed_edit_is_named_by_the_next_link() {
    let mut lines = chain(3);
    let seal = chain::unseal(lines[1].as_bytes()).unwrap();
    let mut edited = String::from_utf8(seal.content.to_vec())
        .unwrap()
        .replace("n2", "n7")
        .into_bytes();
    edited.push(b'}');
    chain::seal(&seal.prev, &mut edited).unwrap();
    lines[1] = String::from_utf8(edited).unwrap();
    let files = Files::new();
    let b = broken(verify(&[files.write("e", &lines)]).unwrap());
    assert_eq!(b.at.line, 3);
    assert!(matches!(b.problem, Problem::PreviousResealed { ref previous } if previous.line == 2));
}

#[test]
fn a_cut_line_and_an_unreadable_file_are_told_apart() {
    let lines = chain(2);
    let files = Files::new();
    let path = files.dir.path().join("cut");
    std::fs::write(&path, format!("{}\n{}", lines[0], &lines[1][..30])).unwrap();
    let b = broken(verify(&[path]).unwrap());
    assert_eq!(b.at.line, 2);
    assert!(matches!(b.problem, Problem::NotSealed { reason } if reason.contains("cut off")));
    let missing = files.dir.path().join("absent");
    let error = verify(&[missing]).unwrap_err();
    assert!(error.to_string().contains("absent"), "{error}");
}

#[test]
fn a_repeated_line_is_named() {
    let lines = chain(3);
    let files = Files::new();
    let path = files.write("e", &[&lines[..2], &lines[1..]].concat());
    let b = broken(verify(std::slice::from_ref(&path)).unwrap());
    assert_eq!(b.at.line, 3);
    assert_eq!(
        b.problem,
        Problem::Repeated {
            original: Location {
                file: path,
                line: 2
            }
        }
    );
}
