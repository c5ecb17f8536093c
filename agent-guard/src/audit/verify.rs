//! `audit verify`: checks that one or more audit log files, in chronological order, form
//! one unbroken chain, and names the first line that does not fit. Files are streamed:
//! memory stays flat however long the log.
use std::{
    fmt,
    fs::File,
    io::{self, BufRead as _, BufReader},
    path::{Path, PathBuf},
};

use super::{
    chain::{self, HexHash, GENESIS},
    fields,
};

/// How many lines past a forward jump are searched for the number that was expected, to
/// tell a reordering from a deletion.
const LOOKAHEAD: usize = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", file.display())]
pub struct VerifyError {
    pub file: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// From 1.
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} of {}", self.line, self.file.display())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Intact(Intact),
    Broken(Break),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub lines: u64,
    /// Where the chain starts and ends: `None` when the files hold no line.
    pub span: Option<Span>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first_sequence: u64,
    /// `chain.prev` of the first line: 64 zeros when it is the first line ever.
    pub first_prev: String,
    pub last_sequence: u64,
    /// `chain.hash` of the last line.
    pub head: String,
}

/// The first line that does not fit the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub at: Location,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not a JSON object with a seal and an `event.sequence`.
    NotSealed { reason: &'static str },
    /// Its hash does not recompute from its bytes.
    Edited { sequence: u64 },
    /// It links to something else than the line before, and its sequence jumps ahead:
    /// the lines in between are gone.
    Missing { previous: u64, sequence: u64 },
    /// It links to something else than the line before, and its sequence is not the
    /// next: lines were moved. `expected_at` is where the next number turned up, if it
    /// did soon after.
    OutOfOrder {
        previous: u64,
        sequence: u64,
        expected_at: Option<Location>,
    },
    /// It links to the line two before it: the line before was put in.
    Inserted { inserted: Location },
    /// It is the line before, once more.
    Repeated { original: Location },
    /// Its sequence follows but it links to another version of the line before, which was
    /// edited and given a fresh seal.
    PreviousResealed { previous: Location },
    /// The link holds but the number does not follow: the writer skipped or repeated.
    Misnumbered { previous: u64, sequence: u64 },
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Intact(Intact { lines, span: None }) => {
                write!(f, "intact: {lines} lines, no events")
            }
            Report::Intact(Intact {
                lines,
                span: Some(span),
            }) => {
                write!(
                    f,
                    "intact: {lines} lines, sequence {} to {}, head {}; ",
                    span.first_sequence, span.last_sequence, span.head
                )?;
                if span.first_prev == chain::hash_str(&GENESIS) {
                    write!(f, "the chain starts at its first line ever")
                } else {
                    write!(
                        f,
                        "the chain starts at sequence {} after hash {}…",
                        span.first_sequence,
                        &span.first_prev[..16]
                    )
                }
            }
            Report::Broken(Break { at, problem }) => write!(f, "broken: {}", describe(at, problem)),
        }
    }
}

fn describe(at: &Location, problem: &Problem) -> String {
    match problem {
        Problem::NotSealed { reason } => format!("{at} is not a sealed event: {reason}"),
        Problem::Edited { sequence } => {
            format!("{at} was edited (sequence {sequence}): its hash does not recompute")
        }
        Problem::Missing { previous, sequence } => {
            let gone = if sequence - previous == 2 {
                format!("sequence {} is", previous + 1)
            } else {
                format!("sequences {} to {} are", previous + 1, sequence - 1)
            };
            format!(
                "the link to {at} is broken: it holds sequence {sequence} after {previous}; \
                 {gone} missing before it"
            )
        }
        Problem::OutOfOrder {
            previous,
            sequence,
            expected_at,
        } => {
            let found = expected_at
                .as_ref()
                .map_or(String::new(), |l| format!(" ({} is at {l})", previous + 1));
            format!(
                "the link to {at} is broken: it holds sequence {sequence} after {previous}; \
                 lines were reordered{found}"
            )
        }
        Problem::Repeated { original } => format!("{at} repeats {original}"),
        Problem::Inserted { inserted } => {
            format!("{inserted} was inserted: {at} links to the line before it")
        }
        Problem::PreviousResealed { previous } => {
            format!("{previous} was edited and resealed: {at} links to another version of it")
        }
        Problem::Misnumbered { previous, sequence } => {
            format!("{at} is linked but holds sequence {sequence} after {previous}")
        }
    }
}

/// The line before, as the next one must link to it.
struct Previous {
    at: Location,
    sequence: u64,
    hash: HexHash,
    /// The hash of the line before it, to recognise an inserted line.
    before: Option<HexHash>,
}

/// Checks `files` as one chain, in the order given.
pub fn verify(files: &[PathBuf]) -> Result<Report, VerifyError> {
    let mut lines = Lines::new(files);
    let mut previous: Option<Previous> = None;
    let mut count = 0;
    let mut first: Option<(u64, HexHash)> = None;
    while let Some(raw) = lines.next()? {
        let at = raw.at;
        let broken = |problem| {
            Ok(Report::Broken(Break {
                at: at.clone(),
                problem,
            }))
        };
        if raw.text.is_empty() {
            return broken(Problem::NotSealed {
                reason: "it is empty",
            });
        }
        let Some(seal) = chain::unseal(&raw.text) else {
            return broken(Problem::NotSealed {
                reason: if raw.terminated {
                    "it does not end with a seal"
                } else {
                    "it does not end with a seal, and the file ends inside it (cut off?)"
                },
            });
        };
        let sequence = match fields::sequence_of_line(&raw.text) {
            Ok(Some(sequence)) => sequence,
            Ok(None) => {
                return broken(Problem::NotSealed {
                    reason: "it has no event.sequence",
                })
            }
            Err(_) => {
                return broken(Problem::NotSealed {
                    reason: "it is not valid JSON",
                })
            }
        };
        if !seal.recomputes() {
            return broken(Problem::Edited { sequence });
        }
        if let Some(before) = &previous {
            let expected = before.sequence + 1;
            if seal.prev != before.hash {
                let problem = if seal.hash == before.hash {
                    Problem::Repeated {
                        original: before.at.clone(),
                    }
                } else if Some(seal.prev) == before.before {
                    Problem::Inserted {
                        inserted: before.at.clone(),
                    }
                } else if sequence == expected {
                    Problem::PreviousResealed {
                        previous: before.at.clone(),
                    }
                } else if sequence > expected {
                    match lines.find_sequence(expected)? {
                        Some(found) => Problem::OutOfOrder {
                            previous: before.sequence,
                            sequence,
                            expected_at: Some(found),
                        },
                        None => Problem::Missing {
                            previous: before.sequence,
                            sequence,
                        },
                    }
                } else {
                    Problem::OutOfOrder {
                        previous: before.sequence,
                        sequence,
                        expected_at: None,
                    }
                };
                return broken(problem);
            }
            if sequence != expected {
                return broken(Problem::Misnumbered {
                    previous: before.sequence,
                    sequence,
                });
            }
        }
        first.get_or_insert((sequence, seal.prev));
        count += 1;
        previous = Some(Previous {
            at,
            sequence,
            hash: seal.hash,
            before: previous.map(|p| p.hash),
        });
    }
    Ok(Report::Intact(Intact {
        lines: count,
        span: first
            .zip(previous)
            .map(|((first_sequence, first_prev), last)| Span {
                first_sequence,
                first_prev: chain::hash_str(&first_prev).to_owned(),
                last_sequence: last.sequence,
                head: chain::hash_str(&last.hash).to_owned(),
            }),
    }))
}

struct RawLine {
    at: Location,
    text: Vec<u8>,
    /// Whether a newline ended it (the last line of a file cut short has none).
    terminated: bool,
}

/// The lines of several files, one after the other.
struct Lines<'a> {
    files: std::slice::Iter<'a, PathBuf>,
    current: Option<(&'a Path, BufReader<File>, u64)>,
}

impl<'a> Lines<'a> {
    fn new(files: &'a [PathBuf]) -> Self {
        Self {
            files: files.iter(),
            current: None,
        }
    }

    fn next(&mut self) -> Result<Option<RawLine>, VerifyError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                let file = File::open(path).map_err(|source| VerifyError {
                    file: path.clone(),
                    source,
                })?;
                self.current = Some((path, BufReader::with_capacity(1 << 16, file), 0));
            }
            let (path, reader, number) = self.current.as_mut().expect("opened above");
            let mut text = Vec::new();
            let read = reader
                .read_until(b'\n', &mut text)
                .map_err(|source| VerifyError {
                    file: path.to_path_buf(),
                    source,
                })?;
            if read == 0 {
                self.current = None;
                continue;
            }
            *number += 1;
            let terminated = text.last() == Some(&b'\n');
            if terminated {
                text.pop();
            }
            return Ok(Some(RawLine {
                at: Location {
                    file: path.to_path_buf(),
                    line: *number,
                },
                text,
                terminated,
            }));
        }
    }

    /// Reads on for a while, looking for the line holding `sequence`.
    fn find_sequence(&mut self, sequence: u64) -> Result<Option<Location>, VerifyError> {
        for _ in 0..LOOKAHEAD {
            let Some(raw) = self.next()? else {
                return Ok(None);
            };
            if fields::sequence_of_line(&raw.text).ok().flatten() == Some(sequence) {
                return Ok(Some(raw.at));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
