//! `agent-guard run`: a command as a guarded session.
//!
//! Order matters: the policy is validated, BPF LSM is proven to enforce (LSM list, load,
//! attach, canary), the session's maps are filled, and only then is the command started.
//! `run` stays alive until the last process of the session is gone, because its loaded
//! programs are what guards them.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use clap::Args;
use nix::{
    sys::signal::{kill, Signal},
    unistd::{geteuid, getpid, Pid},
};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::{report_error, EXIT_GUARD_UNAVAILABLE, EXIT_USAGE};
use crate::{
    audit::journal::Journal,
    bpf::{Guard, Stats},
    events::{session_label, Clock, Decision, Destination},
    network::live::{self, LiveNetwork},
    policy::{combine, Policy, ResolvedPolicy, SessionContext, BASE_POLICY_PATH},
    report::{
        ecs::{lost_report, LostCounts, LostFacts},
        reporter::{Reporter, SessionView},
    },
    selfcheck::{require_bpf_lsm, run_canary},
    session::{
        become_subreaper, children_of, random_session_id, spawn_enrolled, wait_all, SpawnError,
    },
};

/// Where events go when `--events` is not given: outside any workspace, owned by root.
pub const DEFAULT_EVENTS_DIR: &str = "/var/log/agent-guard";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (TOML). Without it, the built-in policy: the current directory is the
    /// only writable scope.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Append events (JSON lines) to FILE; `-` writes them to stderr. Default:
    /// /var/log/agent-guard/session-<id>.jsonl
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// A policy from the daemon's policy directory, by name (through the daemon only).
    #[arg(long, value_name = "NAME", conflicts_with = "policy")]
    pub policy_name: Option<String>,
    /// Never use the daemon: load the programs in this process (needs root).
    #[arg(long)]
    pub standalone: bool,
    /// The command to guard, and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The session's policy, combined with the administrator's mandatory base policy when
/// [`BASE_POLICY_PATH`] exists. A base that exists but cannot be read or used stops the
/// session: it is mandatory.
fn resolve_under_base(policy: &Policy, ctx: &SessionContext) -> Result<ResolvedPolicy, String> {
    let base_path = Path::new(BASE_POLICY_PATH);
    match std::fs::symlink_metadata(base_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            policy.resolve(ctx).map_err(|e| e.to_string())
        }
        _ => {
            let base =
                Policy::load(base_path).map_err(|e| format!("the mandatory base policy: {e}"))?;
            combine(&base, policy, ctx).map_err(|e| e.to_string())
        }
    }
}

pub fn run(args: RunArgs) -> i32 {
    // A running daemon serves the session, so no privileges are needed here.
    let socket = crate::paths::socket();
    if !args.standalone && socket.exists() {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(_) => return super::run_client::run_via_daemon(&args, &socket),
            // A socket left by a dead daemon: fall back to standalone.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                report_error(
                    &format!("cannot reach the daemon on {}", socket.display()),
                    &e,
                );
                eprintln!("  hint: the daemon serves root and group `{}`; `--standalone` runs without it (as root)", crate::paths::GROUP);
                return EXIT_GUARD_UNAVAILABLE;
            }
        }
    }
    if args.policy_name.is_some() {
        eprintln!("agent-guard: --policy-name picks one of the daemon's policies, and no daemon answers on {}
  hint: give the policy file with --policy", socket.display());
        return EXIT_USAGE;
    }
    // 1. The policy: bad input stops everything before anything is loaded.
    let policy = match &args.policy {
        Some(path) => Policy::load(path),
        None => Ok(Policy::builtin()),
    };
    let policy = match policy {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("agent-guard: {e}");
            return EXIT_USAGE;
        }
    };
    let ctx = match SessionContext::current() {
        Ok(ctx) => ctx,
        Err(e) => {
            report_error("cannot read the current directory", &e);
            return EXIT_USAGE;
        }
    };
    let resolved = match resolve_under_base(&policy, &ctx) {
        Ok(resolved) => resolved,
        Err(message) => {
            eprintln!("agent-guard: {message}");
            return EXIT_USAGE;
        }
    };

    // 2. Prove that the kernel enforces.
    if !geteuid().is_root() {
        eprintln!(
            "agent-guard: `run` loads BPF LSM programs and needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_MAC_ADMIN)\n  hint: run it with sudo"
        );
        return EXIT_GUARD_UNAVAILABLE;
    }
    if let Err(e) = require_bpf_lsm() {
        report_error("refusing to start the command unguarded", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    let mut guard = match Guard::load() {
        Ok(guard) => guard,
        Err(e) => {
            report_error(
                "cannot load the BPF LSM programs; refusing to start the command unguarded",
                &e,
            );
            eprintln!("  hint: the kernel needs BPF LSM and BPF trampolines (CONFIG_BPF_LSM, CONFIG_DEBUG_INFO_BTF); some hypervisors and lockdown settings refuse them");
            return EXIT_GUARD_UNAVAILABLE;
        }
    };
    let mut ring = match guard.take_events() {
        Ok(ring) => ring,
        Err(e) => {
            report_error("cannot open the event ring buffer", &e);
            return EXIT_GUARD_UNAVAILABLE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            report_error(
                "cannot find agent-guard's own executable for the canary",
                &e,
            );
            return EXIT_GUARD_UNAVAILABLE;
        }
    };
    let mut session = random_session_id();
    let canary_session = session ^ 0x8000_0000;
    let early = match run_canary(&mut guard, &mut ring, canary_session, &exe) {
        Ok(early) => early,
        Err(e) => {
            report_error(
                "self-check failed; refusing to start the command unguarded",
                &e,
            );
            return EXIT_GUARD_UNAVAILABLE;
        }
    };
    if session == canary_session {
        session ^= 1;
    }
    let baseline = guard.stats().unwrap_or_default();

    // 3. Where events go; failing to open it is an error before the command starts.
    let destination = match &args.events {
        Some(path) if path.as_os_str() == "-" => Destination::Stderr,
        Some(path) => Destination::File(path.clone()),
        None => Destination::File(
            PathBuf::from(DEFAULT_EVENTS_DIR)
                .join(format!("session-{}.jsonl", session_label(session))),
        ),
    };
    let writer = match destination.open() {
        Ok(writer) => writer,
        Err(e) => {
            report_error(&format!("cannot open the event log {destination}"), &e);
            return EXIT_USAGE;
        }
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            report_error("cannot start the event loop", &e);
            return EXIT_GUARD_UNAVAILABLE;
        }
    };

    // 4. The session, keyed by the identities the kernel side itself sees, and the
    //    network as it is now: the host's addresses and the policy's hostnames.
    let mut resolved = resolved;
    if let Err(e) = guard.identify_policy(&mut resolved) {
        report_error("cannot resolve the policy's paths in the kernel", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    let (hostnames, warnings) = runtime.block_on(live::prepare(&mut resolved));
    report_warnings(&warnings);
    if let Err(e) = guard.add_session(session, &resolved) {
        report_error("cannot install the session's policy", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    // What add_session installed; hostname refreshes replace it.
    let mut network = LiveNetwork::new(session, resolved, hostnames);
    let resolved = network.policy.clone();
    // Signal handlers go in before the fork, so a Ctrl-C can never kill `run` (and with it
    // the guard) while the command lives. The child's exec resets them.
    let _enter = runtime.enter();
    let signals = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .map(|kind| tokio::signal::unix::signal(kind).ok());
    if let Err(e) = become_subreaper() {
        report_error("cannot become the reaper of the session's orphans", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    // This session's own log: numbered from 1 and chained from its first line, so
    // `agent-guard audit verify` checks it like the daemon's.
    let mut out = Output {
        reporter: Reporter::new(Journal::to_writer(writer), Clock::sample()),
        destination,
        policy: resolved.source.clone(),
        mode: resolved.mode.as_str(),
        rule_names: resolved.rule_names(),
        rule_hosts: network.rule_hosts(),
        root_pid: 0,
        session,
        lost_reported: 0,
    };
    for decision in early {
        out.decision(&decision, &network.seen);
    }
    out.flush();
    let command = match spawn_enrolled(&mut guard, session, &args.command) {
        Ok(pid) => {
            out.root_pid = pid.as_raw() as u32;
            pid
        }
        Err(e) => {
            report_error("cannot start the command", &e);
            guard.remove_session(session);
            return match e {
                SpawnError::Exec { exit_status, .. } => exit_status,
                _ => EXIT_GUARD_UNAVAILABLE,
            };
        }
    };

    let status = runtime.block_on(supervise(
        command,
        &mut ring,
        &mut out,
        &mut guard,
        &mut network,
        baseline,
        signals,
    ));
    drop(_enter);
    drop(runtime);

    // 5. Everything after the last process: final drain and the summary.
    drain(&mut ring, &mut out, &network.seen);
    let stats = guard.stats().unwrap_or_default();
    let lost = stats.lost.saturating_sub(baseline.lost);
    out.lost(lost);
    guard.remove_session(session);
    summary(&out, &resolved, stats, baseline, status);
    status
}

fn report_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("agent-guard: {warning}");
    }
}

/// Writes events and keeps the counts for the summary.
struct Output {
    reporter: Reporter,
    destination: Destination,
    policy: String,
    mode: &'static str,
    /// Names of the policy's rules, by the index events carry.
    rule_names: Vec<String>,
    /// Hostnames of each rule, by the same index.
    rule_hosts: Vec<Vec<String>>,
    /// The command, where ancestry ends.
    root_pid: u32,
    session: u32,
    /// Lost events already reported.
    lost_reported: u64,
}

impl Output {
    fn decision(&mut self, d: &Decision, hostnames: &BTreeMap<IpAddr, Vec<String>>) {
        let view = SessionView {
            policy: &self.policy,
            mode: self.mode,
            root_pid: self.root_pid,
            rule_names: &self.rule_names,
            rule_hosts: &self.rule_hosts,
            hostnames,
        };
        // A line that cannot be written is counted by the journal and named in the
        // summary.
        let _ = self.reporter.decision(d, &view);
    }

    /// Reports events the ring buffer dropped since the last report.
    fn lost(&mut self, lost_total: u64) {
        let reported = self.lost_reported;
        self.lost_reported = lost_total.max(reported);
        if lost_total > reported {
            let facts = LostFacts {
                lost: LostCounts {
                    count: lost_total - reported,
                    total: lost_total,
                },
            };
            let _ = self.reporter.report(&lost_report(&facts));
            self.flush();
        }
    }

    /// Writes what was sealed; a failure is counted and named in the summary.
    fn flush(&mut self) {
        let _ = self.reporter.flush();
    }

    /// Lines written whole.
    fn written(&self) -> u64 {
        self.reporter.sealed - self.reporter.write_errors()
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Output, hostnames: &BTreeMap<IpAddr, Vec<String>>) {
    while let Some(item) = ring.next() {
        match Decision::decode(&item) {
            Ok(decision) => out.decision(&decision, hostnames),
            Err(e) => eprintln!("agent-guard: undecodable event: {e}"),
        }
    }
    out.flush();
}

/// Runs until every process of the session is gone: forwards signals to the session, writes
/// events as they arrive and reports lost events every second. Returns the command's status.
async fn supervise(
    command: Pid,
    ring: &mut RingBuf<MapData>,
    out: &mut Output,
    guard: &mut Guard,
    network: &mut LiveNetwork,
    baseline: Stats,
    signals: [Option<tokio::signal::unix::Signal>; 3],
) -> i32 {
    let mut waiter = tokio::task::spawn_blocking(move || wait_all(command));
    // The fd belongs to `ring`, which outlives this registration.
    #[expect(
        deprecated,
        reason = "tokio 1.54 deprecates AsyncFd::new but has no replacement yet"
    )]
    let ring_fd = match AsyncFd::new(ring.as_raw_fd()) {
        Ok(fd) => Some(fd),
        Err(e) => {
            report_error(
                "cannot poll the event ring buffer; events are written at exit",
                &e,
            );
            None
        }
    };
    let [mut int, mut term, mut hup] = signals;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            status = &mut waiter => return status.unwrap_or(crate::session::EXIT_CANNOT_EXEC),
            ready = async { ring_fd.as_ref().unwrap().readable().await }, if ring_fd.is_some() => {
                if let Ok(mut ready) = ready {
                    drain(ring, out, &network.seen);
                    ready.clear_ready();
                }
            }
            Some(()) = async { int.as_mut()?.recv().await } => {
                // Ctrl-C at a terminal reaches the whole foreground process group, the
                // command included; forwarding it too would deliver it twice.
                if !terminal_foreground() {
                    forward(Signal::SIGINT, command);
                }
            }
            Some(()) = async { term.as_mut()?.recv().await } => forward(Signal::SIGTERM, command),
            Some(()) = async { hup.as_mut()?.recv().await } => forward(Signal::SIGHUP, command),
            _ = tick.tick() => {
                if let Ok(stats) = guard.stats() {
                    out.lost(stats.lost.saturating_sub(baseline.lost));
                }
            }
            () = sleep_until_due(network.hostnames.next_due()), if network.hostnames.next_due().is_some() => {
                report_warnings(&network.refresh(guard).await);
            }
        }
    }
}

async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether this process is in the foreground process group of the terminal on stdin.
fn terminal_foreground() -> bool {
    // SAFETY: plain libc calls on fd 0; tcgetpgrp fails harmlessly when it is no terminal.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Passes a signal on to the command and to every orphan of the session re-parented to us.
fn forward(signal: Signal, command: Pid) {
    let _ = kill(command, signal);
    for child in children_of(getpid()) {
        if child != command {
            let _ = kill(child, signal);
        }
    }
}

fn summary(out: &Output, policy: &ResolvedPolicy, stats: Stats, baseline: Stats, status: i32) {
    let denied = stats.denied.saturating_sub(baseline.denied);
    let audited = stats.audited.saturating_sub(baseline.audited);
    let lost = stats.lost.saturating_sub(baseline.lost);
    eprintln!(
        "agent-guard: session {} ended (status {status}, {} mode, policy {}): denied {denied}, audited {audited}, lost {lost}; {} events written to {}{}",
        session_label(out.session),
        policy.mode.as_str(),
        policy.source,
        out.written(),
        out.destination,
        match out.reporter.write_errors() {
            0 => String::new(),
            n => format!(" ({n} could not be written)"),
        },
    );
}
