//! The daemon's clients: `sessions`, `status`, `events`, `attach`.
use std::path::PathBuf;

use clap::Args;

use super::{report_error, EXIT_GUARD_UNAVAILABLE, EXIT_USAGE};
use crate::{
    client::{self, ClientError, Connection},
    daemon::protocol::{PolicyText, Request, Response},
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
    #[arg(long, short)]
    pub follow: bool,
    /// Only this session's events (its id, as `sessions` shows it).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
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
    for sink in d["sinks"].as_array().into_iter().flatten() {
        println!(
            "sink:       {} {}: {} written, {} write errors{}",
            sink["kind"].as_str().unwrap_or("?"),
            sink["path"].as_str().unwrap_or("?"),
            sink["written"],
            sink["write_errors"],
            if sink["healthy"].as_bool() == Some(true) {
                ""
            } else {
                " (UNHEALTHY)"
            },
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
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => return 0,
            Err(e) => return client_failure(&e),
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
