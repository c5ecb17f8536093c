//! `agent-guard run`: a command as a guarded session.
//!
//! Order matters: the policy is validated, BPF LSM is proven to enforce (LSM list, load,
//! attach, canary), the session's maps are filled, and only then is the command started.
//! `run` stays alive until the last process of the session is gone, because its loaded
//! programs are what guards them.
use std::{
    collections::BTreeMap, ffi::OsString, net::IpAddr, os::fd::AsRawFd as _, path::PathBuf,
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
    bpf::{Guard, Stats},
    events::{
        errno_name, session_label, Clock, Decision, DecisionRecord, Destination, EventWriter,
        LostRecord, RuleId,
    },
    network::{dns, local_addresses, Hostnames},
    policy::{
        net_compile::{compile_network, NetTables},
        Policy, ResolvedPolicy, SessionContext,
    },
    selfcheck::{require_bpf_lsm, run_canary},
    session::{become_subreaper, children_of, spawn_enrolled, wait_all, SpawnError},
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
    /// The command to guard, and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom into a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        // Uniqueness within this process is all that matters.
        std::process::id().rotate_left(16) ^ 0x5a5a_5a5a
    }
}

pub fn run(args: RunArgs) -> i32 {
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
    let resolved = match policy.resolve(&ctx) {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("agent-guard: {e}");
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
    let mut session = random_u32();
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
    let writer = match EventWriter::open(destination.clone()) {
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
    let mut hostnames = network_facts(&runtime, &mut resolved);
    if let Err(e) = guard.add_session(session, &resolved) {
        report_error("cannot install the session's policy", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    // What add_session installed; hostname refreshes replace it.
    let mut tables = compile_network(&resolved).unwrap_or_default();
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
    let clock = Clock::sample();
    let mut out = Output {
        writer,
        clock,
        policy: resolved.source.clone(),
        rule_names: resolved.rule_names(),
        rule_hosts: resolved
            .rules
            .iter()
            .map(|r| r.net.as_ref().map(|n| n.hosts.clone()).unwrap_or_default())
            .collect(),
        hostnames: tables.hostnames.clone(),
        session,
        write_errors: 0,
        lost_reported: 0,
    };
    for decision in early {
        out.decision(&decision);
    }
    let command = match spawn_enrolled(&mut guard, session, &args.command) {
        Ok(pid) => pid,
        Err(e) => {
            report_error("cannot start the command", &e);
            guard.remove_session(session, &resolved);
            return match e {
                SpawnError::Exec { exit_status, .. } => exit_status,
                _ => EXIT_GUARD_UNAVAILABLE,
            };
        }
    };

    let mut network = LiveNetwork {
        session,
        policy: &mut resolved,
        hostnames: &mut hostnames,
        tables: &mut tables,
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
    drain(&mut ring, &mut out);
    let stats = guard.stats().unwrap_or_default();
    let lost = stats.lost.saturating_sub(baseline.lost);
    out.lost(lost);
    guard.remove_session(session, &resolved);
    summary(&out, &resolved, stats, baseline, status);
    status
}

/// Reads the host's addresses and nameservers into the policy and looks its hostnames up
/// once, before the session starts. A hostname that cannot be looked up stays refused (it
/// has no address yet) and is tried again while the session runs.
fn network_facts(runtime: &tokio::runtime::Runtime, policy: &mut ResolvedPolicy) -> Hostnames {
    policy.network.local = local_addresses();
    if policy.needs_resolvers() {
        match dns::system_nameservers() {
            Ok(servers) if !servers.is_empty() => policy.network.resolvers = servers,
            Ok(_) => eprintln!(
                "agent-guard: {} names no nameserver; hostname rules admit nothing",
                dns::RESOLV_CONF
            ),
            Err(e) => report_error(
                "cannot read the nameservers; hostname rules admit nothing",
                &e,
            ),
        }
    }
    let mut hostnames = Hostnames::new(policy.hostnames(), policy.network.resolvers.clone());
    let (_, failures) = runtime.block_on(hostnames.refresh_due(&mut policy.network.hosts));
    report_lookup_failures(&failures);
    hostnames
}

fn report_lookup_failures(failures: &[crate::network::LookupFailure]) {
    for failure in failures {
        report_error(
            &format!(
                "cannot look up `{}`; addresses it had stay admitted, and it is tried again shortly",
                failure.host
            ),
            &failure.error,
        );
    }
}

/// A running session's network tables and what they are compiled from.
struct LiveNetwork<'a> {
    session: u32,
    policy: &'a mut ResolvedPolicy,
    hostnames: &'a mut Hostnames,
    tables: &'a mut NetTables,
}

impl LiveNetwork<'_> {
    /// Looks up the hostnames that are due and, when their addresses changed, swaps the
    /// kernel tables to the new ones. When the new tables cannot be built or written, the
    /// old ones stay in force and the problem is reported.
    async fn refresh(&mut self, guard: &mut Guard, out: &mut Output) {
        let mut hosts = self.policy.network.hosts.clone();
        let (changed, failures) = self.hostnames.refresh_due(&mut hosts).await;
        report_lookup_failures(&failures);
        if !changed {
            return;
        }
        let mut next = self.policy.clone();
        next.network.hosts = hosts;
        let tables = match compile_network(&next) {
            Ok(tables) => tables,
            Err(e) => {
                report_error(
                    "the hostnames' new addresses do not fit; the old ones stay in force",
                    &e,
                );
                return;
            }
        };
        if let Err(e) = guard.update_network(self.session, self.tables, &tables) {
            report_error("cannot install the hostnames' new addresses", &e);
            return;
        }
        for (addr, names) in &tables.hostnames {
            let known = out.hostnames.entry(*addr).or_default();
            for name in names {
                if !known.contains(name) {
                    known.push(name.clone());
                }
            }
        }
        *self.tables = tables;
        *self.policy = next;
    }
}

/// Writes events and keeps the counts for the summary.
struct Output {
    writer: EventWriter,
    clock: Clock,
    policy: String,
    /// Names of the policy's rules, by the index events carry.
    rule_names: Vec<String>,
    /// Hostnames of each rule, by the same index.
    rule_hosts: Vec<Vec<String>>,
    /// Every hostname each address was found for during the session.
    hostnames: BTreeMap<IpAddr, Vec<String>>,
    session: u32,
    write_errors: u64,
    /// Lost events already reported.
    lost_reported: u64,
}

impl Output {
    /// The hostname of the deciding rule that gave `address`, if the rule names hosts.
    fn hostname(&self, d: &Decision) -> Option<&str> {
        let address = d.net.as_ref()?.address?;
        let RuleId::Policy(index) = d.rule else {
            return None;
        };
        let rule_hosts = self.rule_hosts.get(usize::from(index))?;
        self.hostnames
            .get(&address)?
            .iter()
            .find(|name| rule_hosts.contains(name))
            .map(String::as_str)
    }

    fn decision(&mut self, d: &Decision) {
        let net = d.net.as_ref();
        let hostname = self.hostname(d).map(str::to_owned);
        let record = DecisionRecord {
            time: self.clock.rfc3339(d.ktime_ns),
            kind: "decision",
            session: session_label(d.session),
            policy: &self.policy,
            pid: d.pid,
            tid: d.tid,
            ppid: d.ppid,
            uid: d.uid,
            gid: d.gid,
            comm: &d.comm,
            exe: d.exe.as_deref(),
            op: d.op,
            paths: &d.paths,
            target_pid: (d.target_pid != 0).then_some(d.target_pid),
            signal: (d.op == "signal").then_some(d.detail),
            ptrace_mode: (d.op == "ptrace").then_some(d.detail),
            bpf_command: (d.op == "bpf").then_some(d.detail),
            kernel_object: if d.op == "kernel-load" {
                crate::events::kernel_object_name(d.detail)
            } else {
                None
            },
            family: net.map(|n| n.family.as_str()),
            protocol: net.and_then(|n| n.protocol.as_deref()),
            socket_type: net.and_then(|n| n.socket_type.as_deref()),
            address: net.and_then(|n| n.address),
            port: net.and_then(|n| n.port),
            socket_path: net.and_then(|n| n.socket_path.as_deref()),
            hostname: hostname.as_deref(),
            decision: d.decision,
            rule: d.rule.name(&self.rule_names),
            errno: d.errno,
            errno_name: errno_name(d.errno),
            path_truncated: d.truncated,
        };
        if self.writer.write(&record).is_err() {
            self.write_errors += 1;
        }
    }

    /// Reports events the ring buffer dropped since the last report.
    fn lost(&mut self, lost_total: u64) {
        let reported = self.lost_reported;
        self.lost_reported = lost_total.max(reported);
        if lost_total > reported {
            let record = LostRecord {
                time: self.clock.now(),
                kind: "lost-events",
                session: session_label(self.session),
                policy: &self.policy,
                lost: lost_total - reported,
                lost_total,
            };
            if self.writer.write(&record).is_err() {
                self.write_errors += 1;
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Output) {
    while let Some(item) = ring.next() {
        match Decision::decode(&item) {
            Ok(decision) => out.decision(&decision),
            Err(e) => eprintln!("agent-guard: undecodable event: {e}"),
        }
    }
}

/// Runs until every process of the session is gone: forwards signals to the session, writes
/// events as they arrive and reports lost events every second. Returns the command's status.
async fn supervise(
    command: Pid,
    ring: &mut RingBuf<MapData>,
    out: &mut Output,
    guard: &mut Guard,
    network: &mut LiveNetwork<'_>,
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
                    drain(ring, out);
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
                network.refresh(guard, out).await;
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
        out.writer.written,
        out.writer.destination,
        if out.write_errors > 0 { format!(" ({} could not be written)", out.write_errors) } else { String::new() },
    );
}
