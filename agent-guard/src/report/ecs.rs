//! The events' JSON form, schema version 1 (docs/events.md): Elastic Common Schema names
//! where ECS has a field, agent-guard's own facts under `agent_guard`.
//!
//! Records borrow what they print and serialize straight into the caller's buffer: the
//! daemon writes every decision the kernel reports, at up to a million a second.
use serde::Serialize;

use super::json::JsonWriter;

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

/// One ancestor of the acting process, as far as it is still known.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    pub name: String,
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

/// Writes decision `d` as one JSON object into `out`, field for field as docs/events.md
/// lists them. Written by hand ([`JsonWriter`]): serde_json took 0.9 µs per decision, most
/// of the time the pipeline may spend on one.
pub fn write_decision(
    out: &mut Vec<u8>,
    stamp: Stamp<'_>,
    d: &Decision,
    session: SessionFacts<'_>,
) -> serde_json::Result<()> {
    let denied = d.decision == "deny";
    let (category, kind) = classify(d.op);
    let net = d.net.as_ref();
    let mut w = JsonWriter::new(out);
    w.raw(r#"{"@timestamp":"#);
    w.string(stamp.timestamp);
    w.raw(r#","ecs":{"version":""#);
    w.raw(ECS_VERSION);
    w.raw(if denied {
        r#""},"event":{"kind":"alert","module":"agent_guard","dataset":"agent_guard.decision","action":"#
    } else {
        r#""},"event":{"kind":"event","module":"agent_guard","dataset":"agent_guard.decision","action":"#
    });
    w.string(d.op);
    w.raw(if denied {
        r#","outcome":"failure","sequence":"#
    } else {
        r#","outcome":"success","sequence":"#
    });
    w.number(stamp.sequence);
    w.raw(r#","category":["#);
    w.string(category);
    w.raw(if denied {
        r#"],"type":["denied","#
    } else {
        r#"],"type":["allowed","#
    });
    w.string(kind);
    w.raw(r#"]},"host":{"name":"#);
    w.string(stamp.host);
    w.raw(r#"},"process":{"pid":"#);
    w.number(d.pid.into());
    w.raw(r#","thread":{"id":"#);
    w.number(d.tid.into());
    w.raw(r#"},"parent":{"pid":"#);
    w.number(d.ppid.into());
    w.raw(r#"},"name":"#);
    w.string(&d.comm);
    if let Some(exe) = &d.exe {
        w.raw(r#","executable":"#);
        w.string(exe);
    }
    w.raw(r#"},"user":{"id":"#);
    w.number_as_string(d.uid.into());
    w.raw(r#"},"group":{"id":"#);
    w.number_as_string(d.gid.into());
    w.raw("}");
    if let Some(path) = d.paths.first() {
        w.raw(r#","file":{"path":"#);
        w.string(path);
        if let Some(target) = d.paths.get(1) {
            w.raw(r#","target_path":"#);
            w.string(target);
        }
        w.raw("}");
    }
    if let Some((ip, port)) = net.and_then(|n| Some((n.address?, n.port?))) {
        w.raw(r#","destination":{"ip":"#);
        w.display(ip);
        w.raw(r#","port":"#);
        w.number(port.into());
        if let Some(domain) = session.hostname {
            w.raw(r#","domain":"#);
            w.string(domain);
        }
        w.raw("}");
    }
    if let Some(n) = net {
        w.raw(r#","network":{"#);
        if let Some(transport) = &n.protocol {
            w.raw(r#""transport":"#);
            w.string(transport);
            w.raw(",");
        }
        w.raw(r#""type":"#);
        w.string(match n.family.as_str() {
            "inet" => "ipv4",
            "inet6" => "ipv6",
            other => other,
        });
        w.raw("}");
    }
    w.raw(r#","rule":{"name":"#);
    w.string(d.rule.name(session.rule_names));
    w.raw("}");
    if let Some(code) = errno_name(d.errno) {
        w.raw(r#","error":{"code":"#);
        w.string(code);
        w.raw("}");
    }
    w.raw(r#","agent_guard":{"schema":"#);
    w.number(SCHEMA_VERSION.into());
    w.raw(r#","kind":"decision","session":{"id":"#);
    w.hex8(d.session);
    w.raw(r#"},"policy":"#);
    w.string(session.policy);
    w.raw(r#","mode":"#);
    w.string(session.mode);
    w.raw(r#","decision":"#);
    w.string(d.decision);
    w.raw(r#","errno":"#);
    w.number(d.errno.into());
    w.raw(r#","ancestry":["#);
    for (i, a) in session.ancestry.iter().enumerate() {
        w.raw(if i == 0 { r#"{"pid":"# } else { r#",{"pid":"# });
        w.number(a.pid.into());
        w.raw(r#","name":"#);
        w.string(&a.name);
        w.raw("}");
    }
    w.raw("]");
    if d.truncated {
        w.raw(r#","path_truncated":true"#);
    }
    if let Some(n) = net.filter(|n| n.socket_path.is_some() || n.socket_type.is_some()) {
        w.raw(r#","socket":{"#);
        if let Some(path) = &n.socket_path {
            w.raw(r#""path":"#);
            w.string(path);
            if n.socket_type.is_some() {
                w.raw(",");
            }
        }
        if let Some(ty) = &n.socket_type {
            w.raw(r#""type":"#);
            w.string(ty);
        }
        w.raw("}");
    }
    if d.target_pid != 0 {
        w.raw(r#","target":{"pid":"#);
        w.number(d.target_pid.into());
        w.raw("}");
    }
    match d.op {
        "signal" => {
            w.raw(r#","signal":"#);
            w.number(d.detail.into());
        }
        "ptrace" => {
            w.raw(r#","ptrace_mode":"#);
            w.number(d.detail.into());
        }
        "bpf" => {
            w.raw(r#","bpf_command":"#);
            w.number(d.detail.into());
        }
        "kernel-load" => {
            if let Some(object) = kernel_object_name(d.detail) {
                w.raw(r#","kernel_object":"#);
                w.string(object);
            }
        }
        _ => {}
    }
    w.raw("}}");
    Ok(())
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
    fn every_optional_member_keeps_the_line_valid_json() {
        let mut d = decision();
        d.op = "connect";
        d.paths.clear();
        d.truncated = true;
        d.exe = None;
        d.net = Some(NetDetails {
            family: "unix".into(),
            protocol: None,
            socket_type: Some("stream".into()),
            address: None,
            port: None,
            socket_path: Some("/run/\"odd\"\n.sock".into()),
        });
        let v = render(&d, None);
        assert_eq!(v["agent_guard"]["socket"]["path"], "/run/\"odd\"\n.sock");
        assert_eq!(v["agent_guard"]["socket"]["type"], "stream");
        assert_eq!(v["network"]["type"], "unix");
        assert_eq!(v["agent_guard"]["path_truncated"], true);
        assert!(v["process"].get("executable").is_none());
        let mut d = decision();
        d.op = "signal";
        d.paths.clear();
        d.target_pid = 77;
        d.detail = 9;
        d.decision = "audit";
        d.errno = 0;
        let v = render(&d, None);
        assert_eq!(v["agent_guard"]["signal"], 9);
        assert_eq!(v["agent_guard"]["target"]["pid"], 77);
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["event"]["type"], serde_json::json!(["allowed", "access"]));
        assert!(v.get("error").is_none());
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
