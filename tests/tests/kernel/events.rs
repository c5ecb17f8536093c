//! What `run` reports: its JSON event lines and its summary line on stderr, parsed strictly
//! (a missing or mistyped field is a failure).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// One decision line (`agent_guard.kind` = `decision`).
#[derive(Debug, Clone)]
pub struct Event {
    pub line: String,
    pub time: String,
    pub session: String,
    pub policy: String,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub op: String,
    pub paths: Vec<String>,
    pub decision: String,
    pub rule: String,
    pub errno: u32,
    pub errno_name: Option<String>,
    pub path_truncated: bool,
    /// Network events (`connect`, `send`, `bind`, `listen`, `socket`): `inet`, `inet6`,
    /// `unix` or `packet`. Absent from the others, as are the fields below.
    pub family: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or the protocol number (inet and inet6, the
    /// op `socket` of an IP socket included).
    pub protocol: Option<String>,
    /// `stream`, `dgram`, `seqpacket`, `raw`... (unix, and the op `socket`).
    pub socket_type: Option<String>,
    /// The peer or local address, as Rust displays it (inet and inet6).
    pub address: Option<String>,
    pub port: Option<u16>,
    /// The socket file's path, or `@name` for an abstract socket (unix).
    pub socket_path: Option<String>,
    /// The hostname of the deciding `hosts` rule that resolved to `address`.
    pub hostname: Option<String>,
    /// The process a signal, ptrace or other operation on a process was aimed at.
    pub target_pid: Option<u32>,
    /// The event's `agent_guard` object, for fields only some operations carry (`signal`,
    /// `ptrace_mode`, `bpf_command`, `kernel_object`).
    pub object: Map<String, Value>,
}

/// The events file: decisions, and the number of events reported lost.
#[derive(Debug, Default)]
pub struct EventLog {
    pub decisions: Vec<Event>,
    pub lost: u64,
    pub lines: usize,
}

impl EventLog {
    /// Parses schema-1 lines (docs/events.md). Their sequence numbers must run 1, 2, 3...
    /// with no gap and no repeat, and each line must carry its audit chain link.
    pub fn parse(text: &str) -> Self {
        let mut log = Self::default();
        let mut previous_hash: Option<String> = None;
        for line in text.lines() {
            log.lines += 1;
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
            assert!(value.is_object(), "event line is not an object: {line}");
            assert_eq!(
                at(&value, "/agent_guard/schema", line).as_u64(),
                Some(1),
                "schema version: {line}"
            );
            let sequence = at(&value, "/event/sequence", line)
                .as_u64()
                .unwrap_or_else(|| panic!("`event.sequence` is not a number: {line}"));
            assert_eq!(
                sequence, log.lines as u64,
                "sequence numbers must run 1, 2, 3... with no gap: {line}"
            );
            let prev = text_at(&value, "/chain/prev", line);
            if let Some(previous) = &previous_hash {
                assert_eq!(&prev, previous, "chain link: {line}");
            }
            previous_hash = Some(text_at(&value, "/chain/hash", line));
            match text_at(&value, "/agent_guard/kind", line).as_str() {
                "decision" => log.decisions.push(Event::from_object(&value, line)),
                "lost-events" => {
                    log.lost += at(&value, "/agent_guard/lost/count", line)
                        .as_u64()
                        .unwrap_or_else(|| panic!("lost count is not a number: {line}"))
                }
                other => panic!("unknown event kind {other:?}: {line}"),
            }
        }
        log
    }
}

/// The value at JSON pointer `pointer`, which must be there.
pub fn at<'a>(value: &'a Value, pointer: &str, line: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("event has no `{pointer}`: {line}"))
}

fn text_at(value: &Value, pointer: &str, line: &str) -> String {
    at(value, pointer, line)
        .as_str()
        .unwrap_or_else(|| panic!("`{pointer}` is not a string: {line}"))
        .to_owned()
}

fn u32_at(value: &Value, pointer: &str, line: &str) -> u32 {
    at(value, pointer, line)
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("`{pointer}` is not a 32-bit unsigned integer: {line}"))
}

/// ECS keeps user and group ids as strings of digits.
fn id_at(value: &Value, pointer: &str, line: &str) -> u32 {
    text_at(value, pointer, line)
        .parse()
        .unwrap_or_else(|_| panic!("`{pointer}` is not a numeric id: {line}"))
}

impl Event {
    fn from_object(v: &Value, line: &str) -> Self {
        let optional_str = |pointer: &str| {
            v.pointer(pointer).map(|s| {
                s.as_str()
                    .unwrap_or_else(|| panic!("`{pointer}` is not a string: {line}"))
                    .to_owned()
            })
        };
        let mut paths = Vec::new();
        if let Some(path) = optional_str("/file/path") {
            paths.push(path);
            paths.extend(optional_str("/file/target_path"));
        }
        let decision = text_at(v, "/agent_guard/decision", line);
        let outcome = text_at(v, "/event/outcome", line);
        let expected_outcome = if decision == "deny" {
            "failure"
        } else {
            "success"
        };
        assert_eq!(
            outcome, expected_outcome,
            "event.outcome of a {decision}: {line}"
        );
        let family = optional_str("/network/type").map(|t| match t.as_str() {
            "ipv4" => "inet".to_owned(),
            "ipv6" => "inet6".to_owned(),
            _ => t,
        });
        let agent_guard = at(v, "/agent_guard", line)
            .as_object()
            .unwrap_or_else(|| panic!("`agent_guard` is not an object: {line}"))
            .clone();
        Self {
            line: line.to_owned(),
            time: text_at(v, "/@timestamp", line),
            session: text_at(v, "/agent_guard/session/id", line),
            policy: text_at(v, "/agent_guard/policy", line),
            pid: u32_at(v, "/process/pid", line),
            tid: u32_at(v, "/process/thread/id", line),
            ppid: u32_at(v, "/process/parent/pid", line),
            uid: id_at(v, "/user/id", line),
            gid: id_at(v, "/group/id", line),
            comm: text_at(v, "/process/name", line),
            exe: optional_str("/process/executable"),
            op: text_at(v, "/event/action", line),
            paths,
            decision,
            rule: text_at(v, "/rule/name", line),
            errno: u32_at(v, "/agent_guard/errno", line),
            errno_name: optional_str("/error/code"),
            path_truncated: v
                .pointer("/agent_guard/path_truncated")
                .is_some_and(|v| v == &Value::Bool(true)),
            family,
            protocol: optional_str("/network/transport"),
            socket_type: optional_str("/agent_guard/socket/type"),
            address: optional_str("/destination/ip"),
            port: v.pointer("/destination/port").map(|p| {
                p.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or_else(|| panic!("`destination.port` is not a port number: {line}"))
            }),
            socket_path: optional_str("/agent_guard/socket/path"),
            hostname: optional_str("/destination/domain"),
            target_pid: v
                .pointer("/agent_guard/target/pid")
                .map(|_| u32_at(v, "/agent_guard/target/pid", line)),
            object: agent_guard,
        }
    }
}

/// `agent-guard: session ID ended (status S, MODE mode, policy P): denied N, audited N,
/// lost N; N events written to DEST`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub session: String,
    pub status: i32,
    pub mode: String,
    pub policy: String,
    pub denied: u64,
    pub audited: u64,
    pub lost: u64,
    pub written: u64,
    pub destination: String,
}

impl Summary {
    /// The summary line in `stderr`, if there is one.
    pub fn find(stderr: &str) -> Option<Self> {
        stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("agent-guard: session "))
            .map(|line| {
                Self::parse(line).unwrap_or_else(|| panic!("malformed summary line: {line}"))
            })
    }

    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("agent-guard: session ")?;
        let (session, rest) = rest.split_once(" ended (status ")?;
        let (status, rest) = rest.split_once(", ")?;
        let (mode, rest) = rest.split_once(" mode, policy ")?;
        // The policy may contain anything; the counts follow the last "): ".
        let (policy, counts) = rest.rsplit_once("): ")?;
        let (counts, destination) = counts.split_once(" events written to ")?;
        let number = |text: &str, prefix: &str| -> Option<u64> {
            text.trim().strip_prefix(prefix)?.trim().parse().ok()
        };
        let (tallies, written) = counts.split_once("; ")?;
        let mut tallies = tallies.split(", ");
        Some(Self {
            session: session.to_owned(),
            status: status.parse().ok()?,
            mode: mode.to_owned(),
            policy: policy.to_owned(),
            denied: number(tallies.next()?, "denied")?,
            audited: number(tallies.next()?, "audited")?,
            lost: number(tallies.next()?, "lost")?,
            written: written.trim().parse().ok()?,
            destination: destination.to_owned(),
        })
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-25T07:08:16.162306Z`, or with a `+hh:mm` offset).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = text.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let padded = format!("{:0<9}", &digits[..digits.len().min(9)]);
        nanos = padded.parse().ok()?;
    }
    let offset = match text.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if tz.starts_with('+') {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_utc_and_offsets() {
        let t = parse_rfc3339("2026-11-25T07:08:16.162306Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(secs.as_secs(), 1_795_590_496);
        assert_eq!(secs.subsec_micros(), 162_306);
        assert_eq!(parse_rfc3339("2026-11-25T08:08:16.162306+01:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(951_782_400)
        );
        for bad in [
            "2026-11-25 07:08:16Z",
            "2026-13-25T07:08:16Z",
            "2026-11-25T07:08:16",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn summary_line_parses() {
        let s = Summary::find("noise\nagent-guard: session 733201b8 ended (status 7, enforce mode, policy /p (x).toml): denied 2, audited 0, lost 0; 2 events written to /tmp/e.jsonl\n").unwrap();
        assert_eq!(s.session, "733201b8");
        assert_eq!(s.status, 7);
        assert_eq!(s.mode, "enforce");
        assert_eq!(s.policy, "/p (x).toml");
        assert_eq!((s.denied, s.audited, s.lost, s.written), (2, 0, 0, 2));
        assert_eq!(s.destination, "/tmp/e.jsonl");
    }
}
