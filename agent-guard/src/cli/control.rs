//! The daemon's clients: `sessions`, `status`, `events`, `attach`; and `events --file`,
//! which reads the audit log without the daemon.
use std::{
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::SystemTime,
};

use clap::Args;

use super::{report_error, EXIT_GUARD_UNAVAILABLE, EXIT_USAGE};
use crate::{
    audit::query::{self, Decision, Filter},
    client::{self, ClientError, Connection},
    daemon::{
        config::Config,
        protocol::{PolicyText, Request, Response},
    },
    paths,
};

/// Where the daemon listens: `--socket`, else `$AGENT_GUARD_SOCKET`, else the default.
#[derive(Debug, Args)]
pub struct SocketArg {
    /// The daemon's control socket [default: $AGENT_GUARD_SOCKET or /run/agent-guard/agent-guard.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    pub fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(paths::socket)
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Keep printing events as they come.
    #[arg(long, short, conflicts_with_all = ["file", "log"])]
    pub follow: bool,
    /// Only this session's events (its id, as `sessions` shows it).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only events at or after TIME: RFC 3339 in UTC (2026-11-30T12:00:00Z) or an age
    /// (30s, 10m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = |t: &str| query::parse_since(t, SystemTime::now()))]
    pub since: Option<SystemTime>,
    /// Only events of this action: an operation (unlink, connect, ...) or session-start,
    /// session-end, lost-events, policy-reload, sink-overflow. Repeatable.
    #[arg(long, value_name = "OP", value_parser = query::parse_op)]
    pub op: Vec<String>,
    /// Only decisions that denied (deny) or that audit mode let pass (audit).
    #[arg(long, value_name = "deny|audit")]
    pub decision: Option<Decision>,
    /// Read this audit log file instead of asking the daemon. Repeatable, oldest first.
    #[arg(long, value_name = "FILE", conflicts_with = "log")]
    pub file: Vec<PathBuf>,
    /// Read the daemon's audit log and its rotated files instead of asking the daemon.
    #[arg(long)]
    pub log: bool,
    /// The daemon's configuration, which names its audit log (for --log).
    #[arg(long, value_name = "FILE", default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "cgroup", "unit"])))]
pub struct AttachArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Guard process PID and all its descendants, from now on.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Guard every process of a cgroup (v2), and every process that joins it later.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Guard a systemd unit: its cgroup, so restarts and reloads stay guarded too.
    #[arg(long, value_name = "NAME.service")]
    pub unit: Option<String>,
    /// Policy file (TOML).
    #[arg(long, value_name = "FILE", conflicts_with = "policy_name")]
    pub policy: Option<PathBuf>,
    /// A policy from the daemon's policy directory, by name.
    #[arg(long, value_name = "NAME")]
    pub policy_name: Option<String>,
}

/// Exit status and message for a failed exchange with the daemon.
pub fn client_failure(error: &ClientError) -> i32 {
    eprintln!("agent-guard: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    match error {
        ClientError::Refused { .. } => EXIT_USAGE,
        _ => EXIT_GUARD_UNAVAILABLE,
    }
}

fn ask(socket: &SocketArg, request: &Request) -> Result<Response, i32> {
    client::request(&socket.path(), request).map_err(|e| client_failure(&e))
}

pub fn sessions(args: ListArgs) -> i32 {
    let response = match ask(&args.socket, &Request::Sessions) {
        Ok(r) => r,
        Err(status) => return status,
    };
    if args.json {
        println!("{}", response.data);
        return 0;
    }
    let list = response.data["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "{:<9} {:<7} {:>6} {:>7} {:>8} {:>6} {:>7} {:<8} {:<24} COMMAND",
        "SESSION", "ORIGIN", "UID", "PID", "AGE", "PROCS", "DENIED", "MODE", "POLICY"
    );
    for s in list {
        println!(
            "{:<9} {:<7} {:>6} {:>7} {:>8} {:>6} {:>7} {:<8} {:<24} {}",
            s["session"].as_str().unwrap_or("?"),
            s["origin"].as_str().unwrap_or("?"),
            s["uid"].as_u64().unwrap_or(0),
            s["pid"].as_u64().unwrap_or(0),
            age(s["age_seconds"].as_u64().unwrap_or(0)),
            s["processes"].as_u64().unwrap_or(0),
            s["denied"].as_u64().unwrap_or(0),
            s["mode"].as_str().unwrap_or("?"),
            s["policy"].as_str().unwrap_or("?"),
            s["command"].as_str().unwrap_or("?"),
        );
    }
    0
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

pub fn status(args: ListArgs) -> i32 {
    let response = match ask(&args.socket, &Request::Status) {
        Ok(r) => r,
        Err(status) => return status,
    };
    let d = &response.data;
    if args.json {
        println!("{d}");
        return 0;
    }
    println!(
        "kernel:     {} (active LSMs: {}; BPF LSM {})",
        d["kernel"]["release"].as_str().unwrap_or("?"),
        d["kernel"]["lsms"].as_str().unwrap_or("?"),
        if d["kernel"]["bpf_lsm"].as_bool() == Some(true) {
            "active"
        } else {
            "NOT active"
        },
    );
    println!(
        "programs:   {} hooks, {} and pinned in {} (object {}), enforcing {} ms after start",
        d["programs"]["hooks"],
        d["programs"]["origin"].as_str().unwrap_or("?"),
        d["programs"]["pinned_in"].as_str().unwrap_or("?"),
        d["programs"]["object"].as_str().unwrap_or("?"),
        d["started_in_ms"],
    );
    println!("sessions:   {} running", d["sessions"]);
    println!(
        "decisions:  {} denied, {} audited; lost events: {}",
        d["decisions"]["denied"], d["decisions"]["audited"], d["lost_events"]
    );
    let log = &d["audit_log"];
    println!(
        "audit log:  {}: {} written, {} write errors{}; sequence {}, chain head {}",
        log["path"].as_str().unwrap_or("?"),
        log["written"],
        log["write_errors"],
        if log["write_errors"].as_u64() == Some(0) {
            ""
        } else {
            " (UNHEALTHY)"
        },
        log["sequence"],
        log["head"].as_str().unwrap_or("?"),
    );
    for sink in d["sinks"].as_array().into_iter().flatten() {
        println!(
            "sink:       {} ({}): {} delivered, {} dropped, backlog {}{}",
            sink["name"].as_str().unwrap_or("?"),
            sink["kind"].as_str().unwrap_or("?"),
            sink["delivered"],
            sink["dropped"],
            sink["backlog"],
            sink["last_error"]
                .as_str()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
        );
    }
    println!(
        "policies:   base {}, named: {}",
        d["policies"]["base"].as_str().unwrap_or("none"),
        d["policies"]["named"]
    );
    match d["reload"]["error"].as_str() {
        Some(error) => {
            println!("reload:     REFUSED; the previous policies stay in force:");
            for line in error.lines() {
                println!("  {line}");
            }
            return 1;
        }
        None => println!("reload:     ok"),
    }
    0
}

pub fn events(args: EventsArgs) -> i32 {
    let filter = Filter {
        session: args.session.clone(),
        since: args.since,
        ops: args.op.clone(),
        decision: args.decision,
    };
    if args.log || !args.file.is_empty() {
        return events_from_log(&args, &filter);
    }
    let request = Request::Events {
        session: args.session,
        follow: args.follow,
    };
    let mut connection = match Connection::send(&args.socket.path(), &request) {
        Ok(c) => c,
        Err(e) => return client_failure(&e),
    };
    if let Err(e) = connection.response() {
        return client_failure(&e);
    }
    loop {
        match connection.line() {
            Ok(Some(line)) if filter.matches_line(&line) => println!("{line}"),
            Ok(Some(_)) => {}
            Ok(None) => return 0,
            Err(e) => return client_failure(&e),
        }
    }
}

/// `events --file`/`--log`: the audit log read offline, without the daemon.
fn events_from_log(args: &EventsArgs, filter: &Filter) -> i32 {
    let files = if args.log {
        match Config::load(&args.config) {
            Ok(config) => query::log_files(&config.events),
            Err(e) => {
                report_error("cannot find the audit log", &e);
                return EXIT_USAGE;
            }
        }
    } else {
        args.file.clone()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    match query::copy_matching(&files, filter, &mut out)
        .and_then(|_| out.flush().map_err(query::QueryError::Write))
    {
        Ok(()) => 0,
        Err(e) => {
            report_error("cannot read the audit log", &e);
            EXIT_USAGE
        }
    }
}

/// Reads a policy file for the daemon.
pub fn policy_text(path: &std::path::Path) -> Result<PolicyText, i32> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(PolicyText {
            name: std::path::absolute(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
                .to_string(),
            text,
        }),
        Err(e) => {
            report_error(&format!("cannot read policy {}", path.display()), &e);
            Err(EXIT_USAGE)
        }
    }
}

/// The cgroup of a systemd unit, from systemd itself.
fn unit_cgroup(unit: &str) -> Result<PathBuf, String> {
    let output = std::process::Command::new("systemctl")
        .args(["show", "--property=ControlGroup", "--value", unit])
        .output()
        .map_err(|e| format!("cannot ask systemctl for the cgroup of `{unit}`: {e}"))?;
    let group = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || group.is_empty() {
        return Err(format!(
            "unit `{unit}` has no cgroup (is it running?)\n  hint: start it first; `systemctl status {unit}`"
        ));
    }
    Ok(PathBuf::from("/sys/fs/cgroup").join(group.trim_start_matches('/')))
}

pub fn attach(args: AttachArgs) -> i32 {
    let policy = match &args.policy {
        Some(path) => match policy_text(path) {
            Ok(text) => Some(text),
            Err(status) => return status,
        },
        None => None,
    };
    let cgroup = match (&args.cgroup, &args.unit) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(unit)) => match unit_cgroup(unit) {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("agent-guard: {e}");
                return EXIT_USAGE;
            }
        },
        (None, None) => None,
    };
    let label = match (&args.pid, &args.unit, &cgroup) {
        (Some(pid), _, _) => std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.replace('\0', " ").trim().to_owned())
            .unwrap_or_else(|_| format!("pid {pid}")),
        (None, Some(unit), _) => unit.clone(),
        (None, None, Some(path)) => path.display().to_string(),
        (None, None, None) => String::new(),
    };
    let request = Request::Attach {
        pid: args.pid,
        cgroup,
        policy,
        policy_name: args.policy_name,
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        label,
    };
    match ask(&args.socket, &request) {
        Ok(response) => {
            println!(
                "agent-guard: session {} guards {}",
                response.session.as_deref().unwrap_or("?"),
                response.data["attached"]
            );
            0
        }
        Err(status) => status,
    }
}
