//! The journal: the one writer of the audit chain. It owns the host's event sequence, the
//! chain head and the audit log, and turns each event into a sealed [`Line`] that reaches
//! the log before anyone else sees it.
//!
//! Sequence numbers never repeat on a host, even when the log is deleted: a state file
//! holds a reservation, a number at least as high as any used, raised a block at a time
//! so that only one write in [`RESERVATION_BLOCK`] events waits for the disk.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::{
    chain::{self, HexHash, NotAnObject, GENESIS},
    fields,
};
use crate::report::{
    rotating_file::{RotatingFile, Rotation},
    Line,
};

/// How many sequence numbers one write of the state file reserves.
pub const RESERVATION_BLOCK: u64 = 10_000;

/// Where the daemon keeps its reservation by default. Under `/var/lib/agent-guard`, which
/// self-protection keeps every session from modifying.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/agent-guard/journal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// The audit log (its rotated files are `PATH.1`, `PATH.2`, ...).
    pub path: PathBuf,
    pub rotation: Rotation,
    /// The reservation of sequence numbers.
    pub state_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot serialize event {sequence}")]
    Serialize {
        sequence: u64,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    NotAnObject(#[from] NotAnObject),
    #[error("event {sequence} is not UTF-8")]
    NotUtf8 { sequence: u64 },
    #[error("cannot reserve sequence numbers in {path}")]
    Reserve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The line is sealed and the chain has moved past it: the caller may still deliver
    /// it elsewhere, and the log shows it as missing.
    #[error("cannot write event {} to {target}", line.sequence)]
    Write {
        target: String,
        line: Line,
        #[source]
        source: io::Error,
    },
}

/// The state file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    /// No sequence number above this has been used.
    reserved: u64,
    /// The chain head when the reservation was written: where a journal that finds no
    /// log line links on.
    head: String,
}

enum Output {
    Log(RotatingFile),
    Writer(Box<dyn Write + Send>),
    Nowhere,
}

pub struct Journal {
    output: Output,
    /// The sequence of the last line sealed (0: none yet).
    last: u64,
    head: HexHash,
    /// The state file and the number reserved in it; `None` for a journal without one.
    reservation: Option<(PathBuf, u64)>,
    /// Reused for every line: the body, then the sealed line and its newline.
    buffer: Vec<u8>,
    /// Sealed lines not written yet, and how many: written by `flush` in one `write`.
    pending: Vec<u8>,
    pending_lines: u64,
    write_errors: u64,
}

/// Past this many bytes of sealed lines, `append` writes them out itself.
const PENDING_LIMIT: usize = 256 * 1024;

impl Journal {
    /// Opens the audit log for appending and resumes the chain where it stopped: after
    /// the newest sealed line of the log (or of its newest rotated file when the current
    /// one has none), else after the reservation of the state file, else from the start.
    pub fn open(settings: JournalSettings) -> io::Result<Journal> {
        let mut file = RotatingFile::open(&settings.path, settings.rotation)?;
        let reservation = read_reservation(&settings.state_file)?;
        let tail = match newest_line(&settings.path)? {
            Some(tail) => Some(tail),
            None => newest_line(&file.rotated(1))?,
        };
        if ends_torn(&settings.path)? {
            // A line cut short (a crash mid-write, a full disk) stays a line of its own
            // that `audit verify` names, instead of swallowing the next one.
            file.append_terminated(b"\n")?;
        }
        let reserved = reservation.as_ref().map_or(0, |r| r.0);
        let (last, head) = match (tail, reservation) {
            (Some(tail), _) => tail,
            (None, Some(reservation)) => reservation,
            (None, None) => (0, GENESIS),
        };
        Ok(Journal {
            output: Output::Log(file),
            last,
            head,
            reservation: Some((settings.state_file, reserved)),
            buffer: Vec::with_capacity(4096),
            pending: Vec::with_capacity(PENDING_LIMIT + 4096),
            pending_lines: 0,
            write_errors: 0,
        })
    }

    /// A journal that only seals: sequence from 1, chain from 64 zeros.
    pub fn in_memory() -> Journal {
        Self::fresh(Output::Nowhere)
    }

    /// A journal writing each sealed line with its newline to `output` in one
    /// `write_all` (a single session's log, or stderr): sequence from 1, chain from 64
    /// zeros.
    pub fn to_writer(output: Box<dyn Write + Send>) -> Journal {
        Self::fresh(Output::Writer(output))
    }

    fn fresh(output: Output) -> Journal {
        Journal {
            output,
            last: 0,
            head: GENESIS,
            reservation: None,
            buffer: Vec::with_capacity(4096),
            pending: Vec::with_capacity(PENDING_LIMIT + 4096),
            pending_lines: 0,
            write_errors: 0,
        }
    }

    /// Seals the next event and queues it for writing. `write_body` serializes the event,
    /// with `event.sequence` set to the number it is given, as one JSON object into the
    /// (empty) buffer it is given.
    ///
    /// Lines are written by [`flush`](Self::flush), a batch in one `write` (one syscall
    /// per line would halve the throughput), or here once the batch is large. A caller
    /// hands a line to anyone else only after the flush that wrote it: a line that left
    /// the host must be in the log, or a restarted journal would number another event
    /// the same.
    pub fn append<F>(&mut self, write_body: F) -> Result<Line, JournalError>
    where
        F: FnOnce(u64, &mut Vec<u8>) -> io::Result<()>,
    {
        let sequence = self.last + 1;
        if let Some((path, reserved)) = &mut self.reservation {
            if sequence >= *reserved {
                let raised = sequence + RESERVATION_BLOCK;
                write_reservation(path, raised, &self.head).map_err(|source| {
                    JournalError::Reserve {
                        path: path.clone(),
                        source,
                    }
                })?;
                *reserved = raised;
            }
        }
        self.buffer.clear();
        write_body(sequence, &mut self.buffer)
            .map_err(|source| JournalError::Serialize { sequence, source })?;
        let hash = chain::seal(&self.head, &mut self.buffer)?;
        // Checked once, sealed: the seal is ASCII, and nothing has advanced yet.
        let text: Arc<str> = std::str::from_utf8(&self.buffer)
            .map_err(|_| JournalError::NotUtf8 { sequence })?
            .into();
        self.last = sequence;
        self.head = hash;
        let line = Line { sequence, text };
        self.buffer.push(b'\n');
        self.pending.extend_from_slice(&self.buffer);
        self.pending_lines += 1;
        if self.pending.len() < PENDING_LIMIT {
            return Ok(line);
        }
        match self.flush() {
            Ok(()) => Ok(line),
            Err(source) => Err(JournalError::Write {
                target: self.target(),
                line,
                source,
            }),
        }
    }

    /// Writes the lines sealed since the last flush. When that fails, they are counted
    /// as write errors and dropped from the log (their sequence numbers show the gap).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = match &mut self.output {
            Output::Log(file) => file.append_terminated(&self.pending),
            Output::Writer(writer) => writer
                .write_all(&self.pending)
                .and_then(|()| writer.flush()),
            Output::Nowhere => Ok(()),
        };
        if written.is_err() {
            self.write_errors += self.pending_lines;
        }
        self.pending.clear();
        self.pending_lines = 0;
        written
    }

    /// The sequence of the last line sealed (0 when none) and its hash, in hex.
    pub fn head(&self) -> (u64, String) {
        (self.last, chain::hash_str(&self.head).to_owned())
    }

    /// Lines sealed and not written yet.
    pub fn unwritten(&self) -> u64 {
        self.pending_lines
    }

    /// How many lines could not be written.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    fn target(&self) -> String {
        match &self.output {
            Output::Log(file) => format!("the audit log {}", file.path().display()),
            Output::Writer(_) => "the event output".to_owned(),
            Output::Nowhere => "nowhere".to_owned(),
        }
    }
}

impl Drop for Journal {
    /// What is sealed is written, whoever forgot to flush.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// How far from its end a log is first read for its newest line; doubled until a whole
/// line fits.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The sequence and hash of the newest sealed line of `path`, reading only its end.
fn newest_line(path: &Path) -> io::Result<Option<(u64, HexHash)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut window = TAIL_WINDOW;
    let mut tail = Vec::new();
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        tail.clear();
        (&mut file).take(len - start).read_to_end(&mut tail)?;
        let mut lines: Vec<&[u8]> = tail.split(|&b| b == b'\n').collect();
        if start > 0 {
            // The window began inside a line.
            lines.remove(0);
        }
        if let Some(found) = lines.iter().rev().find_map(|line| sealed(line)) {
            return Ok(Some(found));
        }
        if start == 0 {
            return Ok(None);
        }
        window *= 2;
    }
}

/// The sequence and hash of a sealed line.
fn sealed(line: &[u8]) -> Option<(u64, HexHash)> {
    let seal = chain::unseal(line)?;
    Some((fields::sequence_of_line(line).ok()??, seal.hash))
}

/// Whether `path` is non-empty and does not end with a newline.
fn ends_torn(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn read_reservation(path: &Path) -> io::Result<Option<(u64, HexHash)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {what}; it holds {{\"reserved\": N, \"head\": \"64 hex digits\"}}",
                path.display()
            ),
        )
    };
    let state: Reservation = serde_json::from_str(&text)
        .map_err(|e| invalid(&format!("not the journal's state: {e}")))?;
    let head = chain::parse_hash(&state.head).ok_or_else(|| invalid("`head` is not a hash"))?;
    Ok(Some((state.reserved, head)))
}

/// Replaces the state file atomically and durably: a crash leaves the old reservation or
/// the new one, never a torn file.
fn write_reservation(path: &Path, reserved: u64, head: &HexHash) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let state = Reservation {
        reserved,
        head: chain::hash_str(head).to_owned(),
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    serde_json::to_writer(&mut file, &state)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
