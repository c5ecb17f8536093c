//! Events: decoding what the kernel side reports, and where their lines go. Their JSON
//! form is in `report::ecs`.
use std::{io, path::PathBuf};

use std::net::IpAddr;

use agent_guard_common::{
    Event, EventHeader, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, DECISION_AUDIT,
    DECISION_DENY, EVENT_DATA_LEN, EVENT_DECISION, EVENT_PATHS, FLAG_ABSTRACT_NAME, FLAG_NETWORK,
    FLAG_PATH_TRUNCATED, LOAD_FIRMWARE, LOAD_KEXEC_IMAGE, LOAD_KEXEC_INITRAMFS, LOAD_MODULE,
    LOAD_POLICY, LOAD_X509_CERTIFICATE, OP_BIND, OP_BPF, OP_CHMOD, OP_CHOWN, OP_CONNECT, OP_CREATE,
    OP_EXEC, OP_FORK, OP_KERNEL_LOAD, OP_LINK, OP_LISTEN, OP_MKDIR, OP_MMAP, OP_MOUNT,
    OP_OPEN_WRITE, OP_PIVOT_ROOT, OP_PTRACE, OP_READ, OP_REMOVEXATTR, OP_RENAME, OP_RMDIR, OP_SEND,
    OP_SETXATTR, OP_SIGNAL, OP_SOCKET, OP_SYMLINK, OP_TRUNCATE, OP_UMOUNT, OP_UNLINK, OP_UTIMES,
    OP_WRITE, PATH_EXE, PATH_TARGET, PATH_TARGET2, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, RULE_ABSTRACT_UNIX, RULE_EGRESS_DEFAULT, RULE_LISTEN, RULE_LOCAL_DESTINATION,
    RULE_MOUNT, RULE_MULTI_LINK, RULE_NO_BPF, RULE_NO_KERNEL_LOAD, RULE_OUTSIDE_SCOPE,
    RULE_OUTSIDE_SESSION, RULE_PATH_TOO_DEEP, RULE_POLICY_BASE, RULE_RAW_SOCKET, RULE_SCOPE_ROOT,
    RULE_SESSION_TABLE_FULL, RULE_UNCHECKED_PROTOCOL, RULE_UNRESOLVED, SOCK_DGRAM, SOCK_RAW,
    SOCK_SEQPACKET, SOCK_STREAM,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown {field} {value} in an event")]
    Unknown { field: &'static str, value: u32 },
}

/// Operation names as they appear in events.
pub fn op_name(op: u32) -> Result<&'static str, DecodeError> {
    Ok(match op {
        OP_UNLINK => "unlink",
        OP_RMDIR => "rmdir",
        OP_RENAME => "rename",
        OP_TRUNCATE => "truncate",
        OP_OPEN_WRITE => "open-write",
        OP_LINK => "link",
        OP_FORK => "fork",
        OP_EXEC => "exec",
        OP_MOUNT => "mount",
        OP_SIGNAL => "signal",
        OP_PTRACE => "ptrace",
        OP_BPF => "bpf",
        OP_CHMOD => "chmod",
        OP_CHOWN => "chown",
        OP_SETXATTR => "setxattr",
        OP_REMOVEXATTR => "removexattr",
        OP_CREATE => "create",
        OP_MKDIR => "mkdir",
        OP_SYMLINK => "symlink",
        OP_READ => "read",
        OP_WRITE => "write",
        OP_MMAP => "mmap-write",
        OP_UTIMES => "utimes",
        OP_UMOUNT => "umount",
        OP_PIVOT_ROOT => "pivot-root",
        OP_CONNECT => "connect",
        OP_SEND => "send",
        OP_BIND => "bind",
        OP_LISTEN => "listen",
        OP_SOCKET => "socket",
        OP_KERNEL_LOAD => "kernel-load",
        value => {
            return Err(DecodeError::Unknown {
                field: "operation",
                value,
            })
        }
    })
}

/// The rule that decided: a built-in reason, or a rule of the session's policy by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleId {
    Builtin(&'static str),
    Policy(u16),
}

impl RuleId {
    /// Decodes a rule code.
    pub fn decode(code: u32) -> Result<Self, DecodeError> {
        if code >= RULE_POLICY_BASE {
            return u16::try_from(code - RULE_POLICY_BASE)
                .map(Self::Policy)
                .map_err(|_| DecodeError::Unknown {
                    field: "rule",
                    value: code,
                });
        }
        rule_name(code).map(Self::Builtin)
    }

    /// The name events print, given the names of the session's policy rules.
    pub fn name<'a>(&self, policy_rules: &'a [String]) -> &'a str {
        match *self {
            Self::Builtin(name) => name,
            Self::Policy(index) => policy_rules
                .get(index as usize)
                .map_or("unknown-policy-rule", String::as_str),
        }
    }
}

/// Names of the built-in reasons as they appear in events.
pub fn rule_name(rule: u32) -> Result<&'static str, DecodeError> {
    Ok(match rule {
        RULE_OUTSIDE_SCOPE => "outside-writable-scope",
        RULE_PATH_TOO_DEEP => "path-too-deep",
        RULE_UNRESOLVED => "unresolved-location",
        RULE_MULTI_LINK => "multi-link-file",
        RULE_SESSION_TABLE_FULL => "session-table-full",
        RULE_SCOPE_ROOT => "scope-root",
        RULE_MOUNT => "no-mount",
        RULE_OUTSIDE_SESSION => "target-outside-session",
        RULE_NO_BPF => "no-bpf",
        RULE_EGRESS_DEFAULT => "egress-default",
        RULE_LOCAL_DESTINATION => "local-destination",
        RULE_LISTEN => "listen-not-allowed",
        RULE_RAW_SOCKET => "raw-socket",
        RULE_ABSTRACT_UNIX => "abstract-unix-socket",
        RULE_UNCHECKED_PROTOCOL => "unchecked-protocol",
        RULE_NO_KERNEL_LOAD => "no-kernel-load",
        value => {
            return Err(DecodeError::Unknown {
                field: "rule",
                value,
            })
        }
    })
}

/// What a `kernel-load` event's detail says the kernel was asked to load, named as the
/// kernel names it (`kernel_read_file_str`).
pub fn kernel_object_name(id: u32) -> Option<&'static str> {
    match id {
        LOAD_FIRMWARE => Some("firmware"),
        LOAD_MODULE => Some("kernel-module"),
        LOAD_KEXEC_IMAGE => Some("kexec-image"),
        LOAD_KEXEC_INITRAMFS => Some("kexec-initramfs"),
        LOAD_POLICY => Some("security-policy"),
        LOAD_X509_CERTIFICATE => Some("x509-certificate"),
        _ => None,
    }
}

pub fn errno_name(errno: u32) -> Option<&'static str> {
    match errno as i32 {
        0 => None,
        libc::EPERM => Some("EPERM"),
        libc::EAGAIN => Some("EAGAIN"),
        libc::ENOMEM => Some("ENOMEM"),
        libc::EACCES => Some("EACCES"),
        _ => None,
    }
}

/// One decision, as decoded from the ring buffer (before it is tied to wall-clock time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub session: u32,
    pub op: &'static str,
    pub decision: &'static str,
    pub rule: RuleId,
    pub errno: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub paths: Vec<String>,
    pub truncated: bool,
    pub ktime_ns: u64,
    /// Target process of signal and ptrace decisions.
    pub target_pid: u32,
    /// Signal number, ptrace mode or bpf command.
    pub detail: u32,
    /// The socket and destination of a network decision.
    pub net: Option<NetDetails>,
}

/// What a network event says about the socket and the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDetails {
    pub family: String,
    /// IP sockets: `tcp`, `udp`, `icmp`, or the number.
    pub protocol: Option<String>,
    /// Unix sockets and socket creation: `stream`, `dgram`, `raw`, ...
    pub socket_type: Option<String>,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// A unix socket's file as the kernel resolved it, or `@name` for an abstract one.
    pub socket_path: Option<String>,
}

fn family_name(family: u16) -> String {
    match family {
        AF_UNIX => "unix".into(),
        AF_INET => "inet".into(),
        AF_INET6 => "inet6".into(),
        AF_NETLINK => "netlink".into(),
        AF_PACKET => "packet".into(),
        other => other.to_string(),
    }
}

fn protocol_name(protocol: u16) -> String {
    match u8::try_from(protocol) {
        Ok(PROTO_TCP) => "tcp".into(),
        Ok(PROTO_UDP) => "udp".into(),
        Ok(PROTO_ICMP) => "icmp".into(),
        Ok(PROTO_ICMPV6) => "icmpv6".into(),
        Ok(PROTO_SCTP) => "sctp".into(),
        _ => protocol.to_string(),
    }
}

fn socket_type_name(ty: u16) -> String {
    match ty {
        SOCK_STREAM => "stream".into(),
        SOCK_DGRAM => "dgram".into(),
        SOCK_RAW => "raw".into(),
        SOCK_SEQPACKET => "seqpacket".into(),
        other => other.to_string(),
    }
}

impl NetDetails {
    fn decode(h: &EventHeader, op: u32, socket_path: Option<String>) -> Self {
        let ip = h.family == AF_INET || h.family == AF_INET6;
        // An IPv6 socket's address reads as it was given (`::ffff:127.0.0.1`), an IPv4
        // socket's as IPv4.
        let address = if h.family == AF_INET6 {
            IpAddr::V6(std::net::Ipv6Addr::from(h.addr))
        } else {
            crate::policy::network::display_addr(h.addr)
        };
        Self {
            family: family_name(h.family),
            // A packet socket's protocol is an ethertype, not an IP protocol: left out.
            protocol: ip.then(|| protocol_name(h.protocol)),
            socket_type: (!ip || op == OP_SOCKET).then(|| socket_type_name(h.socket_type)),
            address: (ip && op != OP_SOCKET).then_some(address),
            port: (ip && op != OP_SOCKET).then_some(h.port),
            socket_path,
        }
    }
}

/// Rebuilds an absolute path from the kernel's leaf-first, NUL-separated components.
pub fn path_from_components(bytes: &[u8]) -> String {
    // Built in one buffer, leaf last: this runs for every path of every event.
    let mut out = Vec::with_capacity(bytes.len() + 1);
    for part in bytes.rsplit(|&b| b == 0).filter(|p| !p.is_empty()) {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    match String::from_utf8(out) {
        Ok(path) => path,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Decision {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let header_len = size_of::<EventHeader>();
        if bytes.len() < header_len {
            return Err(DecodeError::Short(bytes.len()));
        }
        // SAFETY: `bytes` holds at least one EventHeader, which is plain integers with no
        // padding; read_unaligned copes with any alignment of the ring buffer record.
        let h: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if h.kind != EVENT_DECISION {
            return Err(DecodeError::Unknown {
                field: "event kind",
                value: h.kind,
            });
        }
        let decision = match h.decision {
            DECISION_DENY => "deny",
            DECISION_AUDIT => "audit",
            value => {
                return Err(DecodeError::Unknown {
                    field: "decision",
                    value,
                })
            }
        };
        // Paths follow one another after the header.
        let mut starts = [0usize; EVENT_PATHS];
        let mut next = header_len;
        for (slot, start) in starts.iter_mut().enumerate() {
            *start = next;
            next += h.path_len[slot] as usize;
        }
        let path = |slot: usize| -> Option<String> {
            let len = h.path_len[slot] as usize;
            if len == 0 {
                return None;
            }
            let raw = bytes.get(starts[slot]..starts[slot] + len)?;
            let path = path_from_components(raw);
            // A path cut short lacks its top: say so rather than pass it off as absolute.
            let cut = h.flags & (FLAG_PATH_TRUNCATED << slot) != 0;
            Some(if cut { format!("…{path}") } else { path })
        };
        let mut paths = Vec::new();
        let mut net = None;
        if h.flags & FLAG_NETWORK != 0 {
            // A network event's one path is the unix socket it was aimed at.
            let socket_path = if h.flags & FLAG_ABSTRACT_NAME != 0 {
                let len = h.path_len[PATH_TARGET] as usize;
                bytes
                    .get(starts[PATH_TARGET]..starts[PATH_TARGET] + len)
                    .map(|name| format!("@{}", String::from_utf8_lossy(name)))
            } else {
                path(PATH_TARGET)
            };
            net = Some(NetDetails::decode(&h, h.op, socket_path));
        } else {
            for slot in [PATH_TARGET, PATH_TARGET2] {
                if let Some(p) = path(slot) {
                    paths.push(p);
                }
            }
        }
        let truncated = (0..EVENT_PATHS).any(|slot| h.flags & (FLAG_PATH_TRUNCATED << slot) != 0);
        Ok(Self {
            session: h.session,
            op: op_name(h.op)?,
            decision,
            rule: RuleId::decode(h.rule)?,
            errno: h.errno,
            pid: h.pid,
            tid: h.tid,
            ppid: h.ppid,
            uid: h.uid,
            gid: h.gid,
            comm: cstr(&h.comm),
            exe: path(PATH_EXE),
            paths,
            truncated,
            ktime_ns: h.ktime_ns,
            target_pid: h.target_pid,
            detail: h.detail,
            net,
        })
    }
}

const _: () = assert!(size_of::<Event>() == size_of::<EventHeader>() + EVENT_DATA_LEN);

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds, sampled at start.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn sample() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, ktime_ns: u64) -> i128 {
        ktime_ns as i128 + self.offset_ns
    }

    /// RFC 3339 UTC time now.
    pub fn now(&self) -> String {
        rfc3339(clock_ns(libc::CLOCK_REALTIME))
    }
}

/// Formats Unix-epoch nanoseconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn rfc3339(unix_ns: i128) -> String {
    let mut out = [0u8; 27];
    rfc3339_into(unix_ns, &mut out);
    // The buffer holds ASCII digits and separators only.
    String::from_utf8_lossy(&out).into_owned()
}

/// [`rfc3339`] into a fixed buffer, digit by digit: it runs for every event, and the
/// formatting machinery costs more than the date arithmetic.
pub fn rfc3339_into(unix_ns: i128, out: &mut [u8; 27]) {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999);
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, (rem % 3600 / 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 6, u64::from(micros));
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[at] = c;
    }
}

/// The hostname of the rule that decided `d`, if that rule names hosts and one of them was
/// found at `d`'s address: `rule_hosts` are the hostnames of each rule by index,
/// `hostnames` every name each address was found for.
pub fn deciding_hostname<'a>(
    d: &Decision,
    rule_hosts: &[Vec<String>],
    hostnames: &'a std::collections::BTreeMap<IpAddr, Vec<String>>,
) -> Option<&'a str> {
    let address = d.net.as_ref()?.address?;
    let RuleId::Policy(index) = d.rule else {
        return None;
    };
    let rule_hosts = rule_hosts.get(usize::from(index))?;
    hostnames
        .get(&address)?
        .iter()
        .find(|name| rule_hosts.contains(name))
        .map(String::as_str)
}

/// Session ids print as eight hex digits.
pub fn session_label(session: u32) -> String {
    format!("{session:08x}")
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stderr => f.write_str("stderr"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Destination {
    /// Opens the destination for appending; a new file is created readable by its owner
    /// only, in a directory created as needed.
    pub fn open(&self) -> io::Result<Box<dyn io::Write + Send>> {
        Ok(match self {
            Self::Stderr => Box::new(io::stderr()),
            Self::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(crate::report::rotating_file::open_append(path)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_reversed_into_an_absolute_path() {
        assert_eq!(
            path_from_components(b"db.sqlite\0prod\0srv\0"),
            "/srv/prod/db.sqlite"
        );
        assert_eq!(path_from_components(b""), "/");
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(1_795_608_000_123_456_789),
            "2026-11-25T12:00:00.123456Z"
        );
    }

    fn sample_event() -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<Event>()];
        let header = EventHeader {
            kind: EVENT_DECISION,
            op: OP_RENAME,
            session: 0xabc,
            decision: DECISION_DENY,
            rule: RULE_OUTSIDE_SCOPE,
            errno: 1,
            pid: 10,
            tid: 11,
            ppid: 9,
            uid: 0,
            gid: 0,
            flags: 0,
            target_pid: 0,
            detail: 0,
            ktime_ns: 5,
            comm: *b"mv\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            path_len: [9, 6, 7],
            family: 0,
            protocol: 0,
            socket_type: 0,
            port: 0,
            _pad: 0,
            addr: [0; 16],
        };
        // SAFETY: the buffer is large enough for the header.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), header) };
        let base = size_of::<EventHeader>();
        bytes[base..base + 9].copy_from_slice(b"db\0prod\0\0");
        bytes[base + 9..base + 15].copy_from_slice(b"x\0tmp\0");
        bytes[base + 15..base + 22].copy_from_slice(b"mv\0bin\0");
        // Only the used bytes travel.
        bytes.truncate(base + 22);
        bytes
    }

    #[test]
    fn decodes_a_rename_event() {
        let event = Decision::decode(&sample_event()).unwrap();
        assert_eq!(event.op, "rename");
        assert_eq!(event.decision, "deny");
        assert_eq!(event.rule, RuleId::Builtin("outside-writable-scope"));
        assert_eq!(
            event.paths,
            vec!["/prod/db".to_owned(), "/tmp/x".to_owned()]
        );
        assert_eq!(event.exe.as_deref(), Some("/bin/mv"));
        assert_eq!(event.comm, "mv");
        assert_eq!(event.ppid, 9);
    }

    #[test]
    fn every_operation_has_its_own_name() {
        let names: Vec<&str> = (1..=31).map(|op| op_name(op).unwrap()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(op_name(32).is_err());
    }

    #[test]
    fn every_builtin_reason_is_named_and_reserved() {
        let names: Vec<&str> = (1..=16).map(|rule| rule_name(rule).unwrap()).collect();
        assert!(rule_name(17).is_err());
        assert_eq!(names, crate::policy::BUILTIN_REASONS);
    }

    #[test]
    fn truncated_paths_are_marked() {
        let mut bytes = sample_event();
        bytes[44..48].copy_from_slice(&FLAG_PATH_TRUNCATED.to_ne_bytes()); // flags
        let event = Decision::decode(&bytes).unwrap();
        assert_eq!(event.paths[0], "…/prod/db");
        assert!(event.truncated);
    }

    #[test]
    fn unknown_codes_are_errors_not_defaults() {
        let mut bytes = sample_event();
        bytes[4] = 200; // op
        assert_eq!(
            Decision::decode(&bytes),
            Err(DecodeError::Unknown {
                field: "operation",
                value: 200
            })
        );
        assert_eq!(Decision::decode(&bytes[..10]), Err(DecodeError::Short(10)));
    }
}
