//! The events' JSON form, schema version 1 (docs/events.md): Elastic Common Schema names
//! where ECS has a field, agent-guard's own facts under `agent_guard`.
//!
//! Records borrow what they print and serialize straight into the caller's buffer: the
//! daemon writes every decision the kernel reports, at up to a million a second.
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use crate::events::{errno_name, kernel_object_name, session_label, Decision};

/// `agent_guard.schema`: raised whenever a field is renamed, retyped or given a new
/// meaning; adding a field keeps it.
pub const SCHEMA_VERSION: u32 = 1;
pub const ECS_VERSION: &str = "8.11.0";

/// What every event shares: where and when, and its place in the host's sequence.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub timestamp: &'a str,
    pub sequence: u64,
    pub host: &'a str,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Host<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct EventMeta<'a> {
    kind: &'static str,
    module: &'static str,
    dataset: &'static str,
    action: &'a str,
    outcome: &'static str,
    sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<[&'static str; 1]>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kinds: Option<[&'static str; 2]>,
}

/// ECS keeps user and group ids as strings.
#[derive(Serialize)]
struct Id {
    #[serde(serialize_with = "as_string")]
    id: u32,
}

fn as_string<S: Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

#[derive(Serialize)]
struct Thread {
    id: u32,
}

#[derive(Serialize)]
struct Parent {
    pid: u32,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    thread: Thread,
    parent: Parent,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
}

#[derive(Serialize)]
struct File<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_path: Option<&'a str>,
}

#[derive(Serialize)]
struct Destination<'a> {
    ip: IpAddr,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
}

#[derive(Serialize)]
struct Network<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'a str>,
    #[serde(rename = "type")]
    family: &'a str,
}

#[derive(Serialize)]
struct Rule<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct ErrorCode {
    code: &'static str,
}

#[derive(Serialize)]
struct SessionId {
    id: String,
}

/// One ancestor of the acting process, as far as it is still known.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub name: String,
}

#[derive(Serialize)]
struct Socket<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    socket_type: Option<&'a str>,
}

#[derive(Serialize)]
struct Target {
    pid: u32,
}

#[derive(Serialize)]
struct DecisionFacts<'a> {
    schema: u32,
    kind: &'static str,
    session: SessionId,
    policy: &'a str,
    mode: &'a str,
    decision: &'static str,
    errno: u32,
    ancestry: &'a [Ancestor],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<Socket<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ptrace_mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bpf_command: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_object: Option<&'static str>,
}

#[derive(Serialize)]
struct DecisionEvent<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: Ecs,
    event: EventMeta<'a>,
    host: Host<'a>,
    process: Process<'a>,
    user: Id,
    group: Id,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<Destination<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
    rule: Rule<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorCode>,
    agent_guard: DecisionFacts<'a>,
}

/// What a decision's session tells about it.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub policy: &'a str,
    pub mode: &'a str,
    /// Names of the policy's rules by the index events carry.
    pub rule_names: &'a [String],
    /// The hostname of the deciding `hosts` rule that resolved to the destination.
    pub hostname: Option<&'a str>,
    pub ancestry: &'a [Ancestor],
}

/// ECS category and type of each operation.
fn classify(op: &str) -> (&'static str, &'static str) {
    match op {
        "unlink" | "rmdir" => ("file", "deletion"),
        "create" | "mkdir" | "symlink" | "link" => ("file", "creation"),
        "read" => ("file", "access"),
        "rename" | "truncate" | "open-write" | "write" | "mmap-write" | "chmod" | "chown"
        | "setxattr" | "removexattr" | "utimes" => ("file", "change"),
        "mount" | "umount" | "pivot-root" => ("host", "change"),
        "exec" | "fork" => ("process", "start"),
        "signal" | "ptrace" | "bpf" => ("process", "access"),
        "kernel-load" => ("driver", "start"),
        "connect" | "send" => ("network", "connection"),
        "bind" | "listen" => ("network", "start"),
        _ => ("network", "info"),
    }
}

/// Writes decision `d` as one JSON object into `out`.
pub fn write_decision(
    out: &mut Vec<u8>,
    stamp: Stamp<'_>,
    d: &Decision,
    session: SessionFacts<'_>,
) -> serde_json::Result<()> {
    let denied = d.decision == "deny";
    let (category, kind) = classify(d.op);
    let net = d.net.as_ref();
    let destination = net.and_then(|n| {
        Some(Destination {
            ip: n.address?,
            port: n.port?,
            domain: session.hostname,
        })
    });
    let event = DecisionEvent {
        timestamp: stamp.timestamp,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        event: EventMeta {
            kind: if denied { "alert" } else { "event" },
            module: "agent_guard",
            dataset: "agent_guard.decision",
            action: d.op,
            outcome: if denied { "failure" } else { "success" },
            sequence: stamp.sequence,
            category: Some([category]),
            kinds: Some([if denied { "denied" } else { "allowed" }, kind]),
        },
        host: Host { name: stamp.host },
        process: Process {
            pid: d.pid,
            thread: Thread { id: d.tid },
            parent: Parent { pid: d.ppid },
            name: &d.comm,
            executable: d.exe.as_deref(),
        },
        user: Id { id: d.uid },
        group: Id { id: d.gid },
        file: d.paths.first().map(|path| File {
            path,
            target_path: d.paths.get(1).map(String::as_str),
        }),
        destination,
        network: net.map(|n| Network {
            transport: n.protocol.as_deref(),
            family: match n.family.as_str() {
                "inet" => "ipv4",
                "inet6" => "ipv6",
                other => other,
            },
        }),
        rule: Rule {
            name: d.rule.name(session.rule_names),
        },
        error: errno_name(d.errno).map(|code| ErrorCode { code }),
        agent_guard: DecisionFacts {
            schema: SCHEMA_VERSION,
            kind: "decision",
            session: SessionId {
                id: session_label(d.session),
            },
            policy: session.policy,
            mode: session.mode,
            decision: d.decision,
            errno: d.errno,
            ancestry: session.ancestry,
            path_truncated: d.truncated,
            socket: net
                .filter(|n| n.socket_path.is_some() || n.socket_type.is_some())
                .map(|n| Socket {
                    path: n.socket_path.as_deref(),
                    socket_type: n.socket_type.as_deref(),
                }),
            target: (d.target_pid != 0).then_some(Target { pid: d.target_pid }),
            signal: (d.op == "signal").then_some(d.detail),
            ptrace_mode: (d.op == "ptrace").then_some(d.detail),
            bpf_command: (d.op == "bpf").then_some(d.detail),
            kernel_object: if d.op == "kernel-load" {
                kernel_object_name(d.detail)
            } else {
                None
            },
        },
    };
    serde_json::to_writer(out, &event)
}

/// A report about the reporting (a session's start or end, lost events, a reload, a sink
/// overflow): ECS fields in `ecs_fields`, agent-guard's own in `facts`.
pub struct Report<'a, F: Serialize> {
    pub kind: &'static str,
    pub dataset: &'static str,
    pub outcome: &'static str,
    /// `user`, `process`, `error`...: a JSON object's members, merged at the top level.
    pub ecs_fields: Option<serde_json::Map<String, serde_json::Value>>,
    pub facts: &'a F,
}

#[derive(Serialize)]
struct ReportFacts<'a, F: Serialize> {
    schema: u32,
    kind: &'static str,
    #[serde(flatten)]
    facts: &'a F,
}

#[derive(Serialize)]
struct ReportEvent<'a, F: Serialize> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: Ecs,
    event: EventMeta<'a>,
    host: Host<'a>,
    #[serde(flatten)]
    ecs_fields: &'a serde_json::Map<String, serde_json::Value>,
    agent_guard: ReportFacts<'a, F>,
}

/// Writes `report` as one JSON object into `out`.
pub fn write_report<F: Serialize>(
    out: &mut Vec<u8>,
    stamp: Stamp<'_>,
    report: &Report<'_, F>,
) -> serde_json::Result<()> {
    let empty = serde_json::Map::new();
    let event = ReportEvent {
        timestamp: stamp.timestamp,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        event: EventMeta {
            kind: "event",
            module: "agent_guard",
            dataset: report.dataset,
            action: report.kind,
            outcome: report.outcome,
            sequence: stamp.sequence,
            category: None,
            kinds: None,
        },
        host: Host { name: stamp.host },
        ecs_fields: report.ecs_fields.as_ref().unwrap_or(&empty),
        agent_guard: ReportFacts {
            schema: SCHEMA_VERSION,
            kind: report.kind,
            facts: report.facts,
        },
    };
    serde_json::to_writer(out, &event)
}

/// `agent_guard` facts of a `lost-events` report.
#[derive(Debug, Serialize)]
pub struct LostFacts {
    pub lost: LostCounts,
}

#[derive(Debug, Serialize)]
pub struct LostCounts {
    /// Dropped by the kernel's ring buffer since the previous report.
    pub count: u64,
    /// Dropped since the programs were loaded.
    pub total: u64,
}

/// The report of events the ring buffer dropped; the kernel still decided every one.
pub fn lost_report(facts: &LostFacts) -> Report<'_, LostFacts> {
    Report {
        kind: "lost-events",
        dataset: "agent_guard.lost",
        outcome: "unknown",
        ecs_fields: None,
        facts,
    }
}

/// `agent_guard` facts of a `session-start` or `session-end` report.
#[derive(Debug, Serialize)]
pub struct SessionChange<'a> {
    pub session: SessionLabel,
    pub policy: &'a str,
    pub mode: &'a str,
    /// `run` or `attach`.
    pub origin: &'a str,
    /// A session's decisions, at its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<SessionCounts>,
}

/// A session's decisions, as `session-end` reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SessionCounts {
    pub denied: u64,
    pub audited: u64,
}

/// A session id as events print it.
#[derive(Debug, Serialize)]
pub struct SessionLabel {
    pub id: String,
}

impl SessionLabel {
    pub fn of(session: u32) -> Self {
        Self {
            id: session_label(session),
        }
    }
}

/// The report of a session's start or end: who asked (`user.id`) and its first process.
pub fn session_report<'a>(
    kind: &'static str,
    facts: &'a SessionChange<'a>,
    uid: u32,
    pid: u32,
    command: &str,
) -> Report<'a, SessionChange<'a>> {
    let fields = serde_json::json!({
        "user": { "id": uid.to_string() },
        "process": { "pid": pid, "command_line": command },
    });
    Report {
        kind,
        dataset: "agent_guard.session",
        outcome: "success",
        ecs_fields: fields.as_object().cloned(),
        facts,
    }
}

/// `agent_guard` facts of a `policy-reload` report.
#[derive(Debug, Serialize)]
pub struct ReloadFacts<'a> {
    pub reload: ReloadDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ReloadDetail<'a> {
    /// What asked for it: `SIGHUP`, `change in /etc/agent-guard`, ...
    pub trigger: &'a str,
    /// The named policies in force after it.
    pub policies: Vec<String>,
}

/// The report of a policy reload; a refused one carries its located errors.
pub fn reload_report<'a>(
    facts: &'a ReloadFacts<'a>,
    error: Option<&str>,
) -> Report<'a, ReloadFacts<'a>> {
    Report {
        kind: "policy-reload",
        dataset: "agent_guard.reload",
        outcome: if error.is_some() {
            "failure"
        } else {
            "success"
        },
        ecs_fields: error.and_then(|message| {
            serde_json::json!({ "error": { "message": message } })
                .as_object()
                .cloned()
        }),
        facts,
    }
}

/// `agent_guard` facts of a `sink-overflow` report.
#[derive(Debug, Serialize)]
pub struct OverflowFacts<'a> {
    pub sink: OverflowDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct OverflowDetail<'a> {
    pub name: &'a str,
    /// Events this sink lost since its previous report.
    pub dropped: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// The report of events a sink could not take; the audit log and the other sinks still
/// have them.
pub fn overflow_report<'a>(facts: &'a OverflowFacts<'a>) -> Report<'a, OverflowFacts<'a>> {
    Report {
        kind: "sink-overflow",
        dataset: "agent_guard.sink",
        outcome: "failure",
        ecs_fields: None,
        facts,
    }
}

/// The host's name, as `uname -n` gives it.
pub fn host_name() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{NetDetails, RuleId};
    use serde_json::Value;

    fn decision() -> Decision {
        Decision {
            session: 0xabc,
            op: "rename",
            decision: "deny",
            rule: RuleId::Policy(1),
            errno: 1,
            pid: 10,
            tid: 11,
            ppid: 9,
            uid: 1000,
            gid: 100,
            comm: "mv".into(),
            exe: Some("/usr/bin/mv".into()),
            paths: vec!["/srv/prod/db".into(), "/tmp/db".into()],
            truncated: false,
            ktime_ns: 0,
            target_pid: 0,
            detail: 0,
            net: None,
        }
    }

    fn render(d: &Decision, hostname: Option<&str>) -> Value {
        let mut out = Vec::new();
        let rules = ["first".to_owned(), "protect-prod".to_owned()];
        let ancestry = [Ancestor {
            pid: 9,
            name: "bash".into(),
        }];
        write_decision(
            &mut out,
            Stamp {
                timestamp: "2026-11-30T00:00:00.000000Z",
                sequence: 7,
                host: "build-1.example.com",
            },
            d,
            SessionFacts {
                policy: "ci",
                mode: "enforce",
                rule_names: &rules,
                hostname,
                ancestry: &ancestry,
            },
        )
        .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_file_decision_carries_the_ecs_fields() {
        let v = render(&decision(), None);
        assert_eq!(v["@timestamp"], "2026-11-30T00:00:00.000000Z");
        assert_eq!(v["event"]["action"], "rename");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(v["event"]["sequence"], 7);
        assert_eq!(v["event"]["type"], serde_json::json!(["denied", "change"]));
        assert_eq!(v["process"]["pid"], 10);
        assert_eq!(v["process"]["parent"]["pid"], 9);
        assert_eq!(v["process"]["executable"], "/usr/bin/mv");
        assert_eq!(v["user"]["id"], "1000");
        assert_eq!(v["file"]["path"], "/srv/prod/db");
        assert_eq!(v["file"]["target_path"], "/tmp/db");
        assert_eq!(v["rule"]["name"], "protect-prod");
        assert_eq!(v["host"]["name"], "build-1.example.com");
        assert_eq!(v["error"]["code"], "EPERM");
        assert_eq!(v["agent_guard"]["session"]["id"], "00000abc");
        assert_eq!(v["agent_guard"]["mode"], "enforce");
        assert_eq!(v["agent_guard"]["ancestry"][0]["name"], "bash");
        assert!(v.get("destination").is_none());
    }

    #[test]
    fn a_network_decision_names_its_destination() {
        let mut d = decision();
        d.op = "connect";
        d.paths.clear();
        d.net = Some(NetDetails {
            family: "inet".into(),
            protocol: Some("tcp".into()),
            socket_type: None,
            address: Some("192.0.2.7".parse().unwrap()),
            port: Some(443),
            socket_path: None,
        });
        let v = render(&d, Some("api.example.com"));
        assert_eq!(v["destination"]["ip"], "192.0.2.7");
        assert_eq!(v["destination"]["port"], 443);
        assert_eq!(v["destination"]["domain"], "api.example.com");
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["network"]["type"], "ipv4");
        assert!(v.get("file").is_none());
    }

    #[test]
    fn reports_share_the_common_fields() {
        let mut out = Vec::new();
        let facts = LostFacts {
            lost: LostCounts { count: 3, total: 5 },
        };
        write_report(
            &mut out,
            Stamp {
                timestamp: "t",
                sequence: 1,
                host: "h.test",
            },
            &lost_report(&facts),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"]["action"], "lost-events");
        assert_eq!(v["agent_guard"]["kind"], "lost-events");
        assert_eq!(v["agent_guard"]["schema"], 1);
        assert_eq!(v["agent_guard"]["lost"]["count"], 3);
        // The audit chain is appended after `agent_guard`, the last member.
        assert!(out.ends_with(b"}}"));
    }
}
