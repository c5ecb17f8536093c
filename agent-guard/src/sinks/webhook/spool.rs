//! The webhook's write-ahead spool: every line is appended to disk before it is sent, and
//! only a receiver's 2xx moves the cursor past it. A restarted daemon sends again from the
//! cursor, so a line is delivered at least once; a duplicate carries the same
//! `event.sequence` and the same bytes.
//!
//! On disk, in the sink's directory:
//! - `NNNNNNNNNNNNNNNNNNNN.jsonl`: segments of JSON lines, numbered in the order written.
//!   The newest one is appended to; the oldest is deleted once every line in it is
//!   acknowledged, or dropped (and reported) when the spool outgrows its bound.
//! - `cursor`: `SEGMENT OFFSET`, the first byte not yet acknowledged. It is replaced
//!   atomically and fsynced on every acknowledgement; losing the latest replacement
//!   (power loss before the directory reaches the disk) only means sending a batch again.
//! - `lock`: held while a sink uses the directory, so two daemons never share a spool.
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    report::{rotating_file::open_append, Line},
    sinks::stats::Stats,
};

/// How often the appending side fsyncs the segment it writes, at most.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long a waiting sender sleeps before it looks at the abandon flag again.
const POLL: Duration = Duration::from_millis(100);

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes written, whole lines only.
    bytes: u64,
    lines: u64,
    first_sequence: Option<u64>,
    last_sequence: Option<u64>,
}

struct State {
    /// Oldest first; the last one is the one appended to.
    segments: VecDeque<Segment>,
    writer: File,
    /// The first unacknowledged byte; always in the oldest segment.
    cursor: Position,
    /// Lines of the oldest segment before the cursor.
    acked_in_oldest: u64,
    /// Written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    /// No more lines will be appended.
    closed: bool,
}

/// Lines read from the spool for one POST.
pub struct Batch {
    start: Position,
    end: Position,
    pub lines: u64,
    /// The lines, each followed by a newline: the POST's body as is.
    pub body: Vec<u8>,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    state: Mutex<State>,
    grew: Condvar,
    stats: Arc<Stats>,
    _lock: Flock<File>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and picks up where a previous one stopped.
    pub fn open(dir: &Path, max_bytes: u64, stats: Arc<Stats>) -> io::Result<Self> {
        // The lines name what agents tried: the spool is root's alone.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = open_rw(&dir.join("lock"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("another sink holds its lock ({errno})"),
            )
        })?;
        let mut ids = segment_ids(dir)?;
        let mut cursor = read_cursor(dir).unwrap_or(Position {
            segment: 0,
            offset: 0,
        });
        // Segments before the cursor's were acknowledged entirely.
        while ids.first().is_some_and(|&id| id < cursor.segment) {
            fs::remove_file(segment_path(dir, ids.remove(0)))?;
        }
        if ids.is_empty() {
            let id = cursor.segment.max(1);
            File::create(segment_path(dir, id))?;
            ids.push(id);
        }
        let mut segments = VecDeque::with_capacity(ids.len());
        for id in ids {
            segments.push_back(recover_segment(&segment_path(dir, id), id)?);
        }
        let oldest = &segments[0];
        if cursor.segment != oldest.id || cursor.offset > oldest.bytes {
            cursor = Position {
                segment: oldest.id,
                offset: 0,
            };
        }
        let acked_in_oldest = count_lines(&segment_path(dir, oldest.id), cursor.offset)?;
        let newest = segments.back().map_or(0, |s| s.id);
        let writer = open_append(&segment_path(dir, newest))?;
        let spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_max: (max_bytes / 8).clamp(512, 8 << 20),
            state: Mutex::new(State {
                segments,
                writer,
                cursor,
                acked_in_oldest,
                dirty: false,
                last_sync: Instant::now(),
                closed: false,
            }),
            grew: Condvar::new(),
            stats,
            _lock: lock,
        };
        spool.publish(&spool.lock());
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `lines`, starting a new segment when the current one is full, then drops
    /// the oldest segments while the spool is over its bound. Lines that cannot be
    /// written are counted dropped.
    pub fn append(&self, lines: &[Line]) {
        let mut state = self.lock();
        if let Err(e) = self.append_locked(&mut state, lines) {
            self.stats
                .set_error(format!("writing the spool {}: {e}", self.dir.display()));
        }
        self.enforce_bound(&mut state);
        self.publish(&state);
        drop(state);
        self.grew.notify_all();
    }

    fn append_locked(&self, state: &mut State, lines: &[Line]) -> io::Result<()> {
        let mut buf = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let len = line.text.len() as u64 + 1;
            let current = state.segments.back().map_or(0, |s| s.bytes) + buf.len() as u64;
            if current > 0 && current + len > self.segment_max {
                if let Err(e) = self.flush(state, &mut buf).and_then(|()| self.seal(state)) {
                    self.count_lost(&lines[i..]);
                    return Err(e);
                }
            }
            buf.extend_from_slice(line.text.as_bytes());
            buf.push(b'\n');
            let segment = state.segments.back_mut().expect("a spool has a segment");
            segment.lines += 1;
            segment.first_sequence.get_or_insert(line.sequence);
            segment.last_sequence = Some(line.sequence);
        }
        self.flush(state, &mut buf)
    }

    /// Writes `buf` to the newest segment; the lines it holds are only counted in once
    /// they are written whole.
    fn flush(&self, state: &mut State, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let written = state.writer.write_all(buf);
        let segment = state.segments.back_mut().expect("a spool has a segment");
        match written {
            Ok(()) => {
                segment.bytes += buf.len() as u64;
                state.dirty = true;
                buf.clear();
                Ok(())
            }
            Err(e) => {
                // Forget the lines of this write: the reader stops at `bytes`, and the
                // next write starts where this one did.
                let lost = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                segment.lines -= lost;
                let _ = state.writer.set_len(segment.bytes);
                let _ = state.writer.seek(SeekFrom::Start(segment.bytes));
                if let (Some(last), true) = (segment.last_sequence, lost > 0) {
                    self.stats.add_dropped(lost, last, last);
                }
                buf.clear();
                Err(e)
            }
        }
    }

    fn count_lost(&self, lines: &[Line]) {
        if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
            self.stats
                .add_dropped(lines.len() as u64, first.sequence, last.sequence);
        }
    }

    /// Closes the newest segment (durably) and starts the next.
    fn seal(&self, state: &mut State) -> io::Result<()> {
        state.writer.sync_data()?;
        let id = state.segments.back().map_or(0, |s| s.id) + 1;
        state.writer = open_append(&segment_path(&self.dir, id))?;
        state.segments.push_back(Segment {
            id,
            bytes: 0,
            lines: 0,
            first_sequence: None,
            last_sequence: None,
        });
        state.dirty = false;
        state.last_sync = Instant::now();
        Ok(())
    }

    /// Drops the oldest segments while the spool is over its bound, reporting the
    /// unacknowledged lines they held. The newest segment is never dropped.
    fn enforce_bound(&self, state: &mut State) {
        while state.segments.len() > 1 && total_bytes(state) > self.max_bytes {
            let oldest = state.segments.pop_front().expect("more than one segment");
            let lost = oldest.lines - state.acked_in_oldest;
            let first = if state.acked_in_oldest == 0 {
                oldest.first_sequence
            } else {
                sequence_at(&segment_path(&self.dir, oldest.id), state.cursor.offset)
            };
            if let (true, Some(first), Some(last)) = (lost > 0, first, oldest.last_sequence) {
                self.stats.add_dropped(lost, first, last);
            }
            let _ = fs::remove_file(segment_path(&self.dir, oldest.id));
            state.cursor = Position {
                segment: state.segments[0].id,
                offset: 0,
            };
            state.acked_in_oldest = 0;
        }
    }

    /// Fsyncs the newest segment if it was written to and the last fsync is a while ago.
    pub fn sync_if_due(&self) {
        let mut state = self.lock();
        if state.dirty && state.last_sync.elapsed() >= SYNC_INTERVAL {
            Self::sync(&mut state);
        }
    }

    fn sync(state: &mut State) {
        if state.writer.sync_data().is_ok() {
            state.dirty = false;
            state.last_sync = Instant::now();
        }
    }

    /// No more lines will come: the sender ends once it has delivered the rest.
    pub fn close(&self) {
        let mut state = self.lock();
        Self::sync(&mut state);
        state.closed = true;
        drop(state);
        self.grew.notify_all();
    }

    /// The next lines to send, at most `batch_max`, waiting up to `batch_wait` for that
    /// many once there is one. `None` when the spool is closed and everything in it was
    /// acknowledged, or when `abandon` is set.
    pub fn next_batch(
        &self,
        batch_max: usize,
        batch_wait: Duration,
        abandon: &AtomicBool,
    ) -> io::Result<Option<Batch>> {
        let mut waiting_since: Option<Instant> = None;
        let mut state = self.lock();
        loop {
            if abandon.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let oldest = &state.segments[0];
            let sealed = state.segments.len() > 1;
            let available = oldest.bytes - state.cursor.offset;
            if available == 0 {
                if sealed {
                    self.retire_oldest(&mut state)?;
                    continue;
                }
                if state.closed {
                    return Ok(None);
                }
                state = self.wait(state, POLL);
                continue;
            }
            let unsent = oldest.lines - state.acked_in_oldest;
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let waited = since.elapsed();
            if unsent < batch_max as u64 && !sealed && !state.closed && waited < batch_wait {
                state = self.wait(state, (batch_wait - waited).min(POLL));
                continue;
            }
            let start = state.cursor;
            let end_of_data = oldest.bytes;
            drop(state);
            match self.read_batch(start, end_of_data, batch_max) {
                Ok(batch) => return Ok(Some(batch)),
                // The segment was dropped for the bound meanwhile: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => state = self.lock(),
                Err(e) => return Err(e),
            }
        }
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.grew
            .wait_timeout(state, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Deletes the oldest segment, every line of which was acknowledged.
    fn retire_oldest(&self, state: &mut State) -> io::Result<()> {
        let done = state.segments.pop_front().expect("a sealed segment");
        state.cursor = Position {
            segment: state.segments[0].id,
            offset: 0,
        };
        state.acked_in_oldest = 0;
        write_cursor(&self.dir, state.cursor)?;
        fs::remove_file(segment_path(&self.dir, done.id))?;
        self.publish(state);
        Ok(())
    }

    fn read_batch(&self, start: Position, end: u64, batch_max: usize) -> io::Result<Batch> {
        let mut file = File::open(segment_path(&self.dir, start.segment))?;
        file.seek(SeekFrom::Start(start.offset))?;
        let mut reader = BufReader::new(file.take(end - start.offset));
        let mut body = Vec::new();
        let mut lines = 0;
        while lines < batch_max as u64 {
            let before = body.len();
            if reader.read_until(b'\n', &mut body)? == 0 {
                break;
            }
            if body.last() != Some(&b'\n') {
                // Never happens for bytes counted as written; stop short rather than send
                // half a line.
                body.truncate(before);
                break;
            }
            lines += 1;
        }
        Ok(Batch {
            start,
            end: Position {
                segment: start.segment,
                offset: start.offset + body.len() as u64,
            },
            lines,
            body,
        })
    }

    /// Whether `batch` is still the next thing to send (it is not once its segment was
    /// dropped for the bound).
    pub fn is_current(&self, batch: &Batch) -> bool {
        self.lock().cursor == batch.start
    }

    /// The receiver acknowledged `batch`: move the cursor past it, durably.
    pub fn acknowledge(&self, batch: &Batch) -> io::Result<()> {
        let mut state = self.lock();
        if state.cursor != batch.start {
            return Ok(());
        }
        state.cursor = batch.end;
        state.acked_in_oldest += batch.lines;
        self.publish(&state);
        write_cursor(&self.dir, state.cursor)
    }

    /// Tells the stats how much is spooled and not yet acknowledged.
    fn publish(&self, state: &State) {
        let lines: u64 = state.segments.iter().map(|s| s.lines).sum();
        self.stats
            .set_spool(lines - state.acked_in_oldest, total_bytes(state));
    }
}

fn total_bytes(state: &State) -> u64 {
    state.segments.iter().map(|s| s.bytes).sum()
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.jsonl"))
}

fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if let Ok(id) = stem.parse() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads a segment back: a line cut short by a crash is cut off, the rest counted.
fn recover_segment(path: &Path, id: u64) -> io::Result<Segment> {
    let data = fs::read(path)?;
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < data.len() {
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(whole as u64)?;
    }
    let lines: Vec<&[u8]> = data[..whole]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    Ok(Segment {
        id,
        bytes: whole as u64,
        lines: lines.len() as u64,
        first_sequence: lines.first().and_then(|l| sequence_of(l)),
        last_sequence: lines.last().and_then(|l| sequence_of(l)),
    })
}

fn count_lines(path: &Path, upto: u64) -> io::Result<u64> {
    let mut data = Vec::new();
    File::open(path)?.take(upto).read_to_end(&mut data)?;
    Ok(data.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// The `event.sequence` of the line starting at `offset`.
fn sequence_at(path: &Path, offset: u64) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut line = Vec::new();
    BufReader::new(file).read_until(b'\n', &mut line).ok()?;
    sequence_of(&line)
}

/// A spooled line's `event.sequence`, read back after a restart.
fn sequence_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Event {
        event: Sequence,
    }
    #[derive(serde::Deserialize)]
    struct Sequence {
        sequence: u64,
    }
    serde_json::from_slice::<Event>(line)
        .ok()
        .map(|e| e.event.sequence)
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn write_cursor(dir: &Path, cursor: Position) -> io::Result<()> {
    let temporary = dir.join("cursor.new");
    let mut file = File::create(&temporary)?;
    writeln!(file, "{} {}", cursor.segment, cursor.offset)?;
    file.sync_data()?;
    fs::rename(temporary, dir.join("cursor"))
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sequence: u64) -> Line {
        Line {
            sequence,
            text: format!(
                r#"{{"event":{{"sequence":{sequence}}},"pad":"{}"}}"#,
                "x".repeat(40)
            )
            .into(),
        }
    }

    fn never() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn acknowledged_lines_are_not_sent_again_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        spool.append(&(1..=5).map(line).collect::<Vec<_>>());
        let batch = spool
            .next_batch(3, Duration::ZERO, &never())
            .unwrap()
            .unwrap();
        assert_eq!(batch.lines, 3);
        spool.acknowledge(&batch).unwrap();
        // Sent, never acknowledged: comes again after a restart.
        let unacked = spool
            .next_batch(10, Duration::ZERO, &never())
            .unwrap()
            .unwrap();
        assert_eq!(unacked.lines, 2);
        assert_eq!(stats.backlog(), 2);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        let again = spool
            .next_batch(10, Duration::ZERO, &never())
            .unwrap()
            .unwrap();
        assert_eq!(again.body, unacked.body);
        assert_eq!(stats.backlog(), 2);
    }

    #[test]
    fn a_second_spool_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let _first = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        let err = Spool::open(dir.path(), 1 << 20, stats).err().unwrap();
        assert!(err.to_string().contains("lock"), "{err}");
    }

    #[test]
    fn the_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("siem");
        let _spool = Spool::open(&dir, 1 << 20, Arc::new(Stats::default())).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let spool = Spool::open(dir.path(), 1 << 20, stats.clone()).unwrap();
        spool.append(&[line(1)]);
        drop(spool);
        let segment = segment_path(dir.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"{\"event\":{\"seq").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, stats).unwrap();
        spool.append(&[line(2)]);
        let batch = spool
            .next_batch(10, Duration::ZERO, &never())
            .unwrap()
            .unwrap();
        assert_eq!(batch.lines, 2);
        assert!(std::str::from_utf8(&batch.body).unwrap().ends_with("}\n"));
    }

    #[test]
    fn the_bound_drops_the_oldest_segments_and_says_which_lines() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        // 4096-byte bound: 512-byte segments of five 81-byte lines.
        let spool = Spool::open(dir.path(), 4096, stats.clone()).unwrap();
        for n in 1..=100 {
            spool.append(&[line(n)]);
        }
        // The oldest segments, one after the other: a single run from line 1.
        let runs = stats.take_overflow();
        assert_eq!(runs.len(), 1, "{runs:?}");
        let dropped = runs[0];
        assert_eq!(dropped.first, 1);
        let batch = spool
            .next_batch(1000, Duration::ZERO, &never())
            .unwrap()
            .unwrap();
        let first_kept = sequence_of(batch.body.split(|&b| b == b'\n').next().unwrap());
        assert_eq!(first_kept, Some(dropped.last + 1));
        assert_eq!(dropped.dropped, dropped.last);
        assert!(stats.spool_bytes() <= 4096, "{}", stats.spool_bytes());
    }
}
