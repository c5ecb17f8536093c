//! The daemon's event loop: the control socket, the event ring buffer, the sweep that ends
//! sessions whose last process is gone, signals and policy reloads.
use std::{
    cell::RefCell,
    os::fd::{AsFd as _, AsRawFd as _},
    rc::Rc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::{
    bind_socket, handlers,
    registry::{self, Session},
    Daemon, EventLine, RECENT_EVENTS,
};
use crate::{
    audit::journal::JournalError,
    events::{session_label, Decision},
    metrics::SinkSnapshot,
    policy::PolicyError,
    report::{
        ecs::{
            lost_report, overflow_report, reload_report, session_report, LostCounts, LostFacts,
            OverflowDetail, OverflowFacts, ReloadDetail, ReloadFacts, SessionChange, SessionCounts,
            SessionLabel,
        },
        reporter::SessionView,
        Line,
    },
    sinks::SinkSet,
};

/// How often sessions are checked for their end, lost events for news and hostnames for
/// refreshes.
const TICK: Duration = Duration::from_millis(500);
/// How long the sinks may take to deliver what they hold when the daemon stops.
const SINK_SHUTDOWN: Duration = Duration::from_secs(5);
/// How long the policy directory must be quiet before a change is reloaded.
const RELOAD_SETTLE: Duration = Duration::from_millis(200);

pub fn serve((daemon, ring): (Daemon, RingBuf<MapData>)) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agent-guard daemon: cannot start the event loop: {e}");
            return super::EXIT_UNAVAILABLE;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(daemon, ring))
}

async fn run(mut daemon: Daemon, mut ring: RingBuf<MapData>) -> i32 {
    let listener = match bind_socket(&daemon.config.socket, daemon.group_gid)
        .and_then(tokio::net::UnixListener::from_std)
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "agent-guard daemon: cannot open the control socket {}: {e}\n  hint: is another daemon running? `agent-guard status` asks it",
                daemon.config.socket.display()
            );
            return super::EXIT_UNAVAILABLE;
        }
    };
    if daemon.group_gid.is_none() {
        eprintln!(
            "agent-guard daemon: group `{}` does not exist; only root can use {}\n  hint: `groupadd --system {}` and add the users who start sessions",
            daemon.config.group,
            daemon.config.socket.display(),
            daemon.config.group
        );
    }
    daemon.origin.start_ms = daemon.started.elapsed().as_millis();
    announce(&daemon);
    notify_systemd("READY=1");
    // The fd belongs to `ring`, which outlives this registration.
    #[expect(
        deprecated,
        reason = "tokio 1.54 deprecates AsyncFd::new but has no replacement yet"
    )]
    let ring_fd = match AsyncFd::new(ring.as_fd().as_raw_fd()) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("agent-guard daemon: cannot poll the event ring buffer: {e}");
            return super::EXIT_UNAVAILABLE;
        }
    };
    let watcher = handlers::PolicyWatcher::new(&daemon.config);
    let daemon = Rc::new(RefCell::new(daemon));
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).ok();
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).ok();
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(TICK);
    let mut reload_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::task::spawn_local(handlers::connection(daemon.clone(), stream));
                }
            }
            ready = ring_fd.readable() => {
                if let Ok(mut ready) = ready {
                    daemon.borrow_mut().drain(&mut ring);
                    ready.clear_ready();
                }
            }
            _ = tick.tick() => {
                {
                    let mut d = daemon.borrow_mut();
                    d.drain(&mut ring);
                    d.sweep();
                    d.report_lost();
                    d.report_overflows();
                    d.update_gauges();
                }
                refresh_networks(&daemon).await;
            }
            Some(()) = async { hup.as_mut()?.recv().await } => {
                daemon.borrow_mut().reload("SIGHUP");
            }
            true = watcher.changed() => {
                // Reloaded once the editor's burst of events has settled.
                reload_due = Some(tokio::time::Instant::now() + RELOAD_SETTLE);
            }
            () = sleep_until(reload_due), if reload_due.is_some() => {
                reload_due = None;
                daemon.borrow_mut().reload("a change in the policy directory");
            }
            Some(()) = async { term.as_mut()?.recv().await } => break,
            Some(()) = async { int.as_mut()?.recv().await } => break,
        }
    }
    let mut d = daemon.borrow_mut();
    d.drain(&mut ring);
    d.shutdown();
    0
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hostname lookups of every session that has some due, one session at a time.
async fn refresh_networks(daemon: &Rc<RefCell<Daemon>>) {
    let due: Vec<u32> = {
        let d = daemon.borrow();
        let now = tokio::time::Instant::now();
        d.sessions
            .iter()
            .filter(|(_, s)| {
                s.network
                    .as_ref()
                    .and_then(|n| n.hostnames.next_due())
                    .is_some_and(|at| at <= now)
            })
            .map(|(id, _)| *id)
            .collect()
    };
    for id in due {
        // The session's network leaves the daemon while its lookups run, so that other
        // requests are served meanwhile; nothing else touches it.
        let Some(mut network) = daemon
            .borrow_mut()
            .sessions
            .get_mut(&id)
            .and_then(|s| s.network.take())
        else {
            continue;
        };
        let warnings = {
            // The kernel tables are swapped under the borrow, after the lookups.
            let mut hosts = network.policy.network.hosts.clone();
            let (changed, failures) = network.hostnames.refresh_due(&mut hosts).await;
            let mut d = daemon.borrow_mut();
            let mut warnings: Vec<String> = failures
                .iter()
                .map(crate::network::live::lookup_warning)
                .collect();
            if changed {
                warnings.extend(network.install_hosts(&mut d.guard, hosts));
            }
            warnings
        };
        let mut d = daemon.borrow_mut();
        for warning in warnings {
            eprintln!(
                "agent-guard daemon: session {}: {warning}",
                session_label(id)
            );
        }
        if let Some(session) = d.sessions.get_mut(&id) {
            session.network = Some(network);
        }
    }
}

fn announce(daemon: &Daemon) {
    eprintln!(
        "agent-guard daemon: enforcing: {} {} programs ({} hooks) pinned in {}, {} sessions adopted{}, control socket {}, events to {}, started in {} ms (loading {} ms, canary {} ms)",
        daemon.origin.programs,
        if daemon.origin.programs == "adopted" { "the" } else { "and pinned" },
        daemon.origin.hooks,
        daemon.config.pin_dir.display(),
        daemon.origin.adopted_sessions.len(),
        if daemon.origin.adopted_sessions.is_empty() {
            String::new()
        } else {
            format!(" ({})", daemon.origin.adopted_sessions.join(", "))
        },
        daemon.config.socket.display(),
        daemon.config.events.display(),
        daemon.origin.start_ms,
        daemon.origin.load_ms,
        daemon.origin.canary_ms,
    );
}

/// Tells systemd (Type=notify) the daemon is ready, when started by it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt as _;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..]) {
            let _ = socket.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = socket.send_to(state.as_bytes(), &path);
    }
}

impl Daemon {
    /// Seals a report about the reporting and hands it to every consumer.
    pub fn report<F: serde::Serialize>(
        &mut self,
        session: u32,
        uid: Option<u32>,
        report: &crate::report::ecs::Report<'_, F>,
    ) {
        let sealed = self.reporter.report(report);
        self.metrics.record_report(report.kind);
        self.stage(session, uid, sealed);
        self.release();
    }

    /// Keeps a sealed line until [`release`](Self::release). A line the audit log could not
    /// take still goes out.
    fn stage(&mut self, session: u32, uid: Option<u32>, sealed: Result<Line, JournalError>) {
        match sealed {
            Ok(line) => self.unreleased.push((session, uid, line)),
            Err(JournalError::Write { line, source, .. }) => {
                self.report_write_error(&source);
                self.unreleased.push((session, uid, line));
            }
            Err(e) => eprintln!("agent-guard daemon: an event could not be sealed: {e}"),
        }
    }

    /// Writes the staged lines to the audit log, then hands them to the sinks, the
    /// followers and the recent buffer: no line leaves before the log has it, so a
    /// restarted daemon never numbers another event the same.
    pub fn release(&mut self) {
        if let Err(e) = self.reporter.flush() {
            self.report_write_error(&e);
        }
        for (session, uid, line) in std::mem::take(&mut self.unreleased) {
            if let Some(sinks) = &self.sinks {
                sinks.submit(&line);
            }
            let line = EventLine {
                session,
                uid,
                json: line.text,
            };
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(line.clone());
            let _ = self.followers.send(line);
        }
    }

    fn report_write_error(&mut self, e: &std::io::Error) {
        if !self.audit_log_failing {
            eprintln!(
                "agent-guard daemon: cannot write to the audit log {}: {e}; `status` counts the lines lost to it",
                self.config.events.display()
            );
        }
        self.audit_log_failing = true;
    }

    /// Reads every decision waiting in the ring buffer.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut decisions = Vec::new();
        while let Some(item) = ring.next() {
            match Decision::decode(&item) {
                Ok(decision) => decisions.push(decision),
                Err(e) => eprintln!("agent-guard daemon: undecodable event: {e}"),
            }
        }
        for d in decisions {
            self.decision(&d);
        }
        self.release();
    }

    fn decision(&mut self, d: &Decision) {
        let Some(session) = self.sessions.get_mut(&d.session) else {
            // A session this daemon does not know (a standalone `run`'s programs have
            // their own ring buffer, so this is a session whose record was lost): the
            // decision is still reported, with rule numbers for names.
            let nothing = Default::default();
            let view = SessionView {
                policy: "<unknown session>",
                mode: "unknown",
                root_pid: 0,
                rule_names: &[],
                rule_hosts: &[],
                hostnames: &nothing,
            };
            let sealed = self.reporter.decision(d, &view);
            self.metrics.record_decision(d.op, d.decision);
            self.stage(d.session, None, sealed);
            return;
        };
        session.counts.add(d.decision);
        self.metrics.record_decision(d.op, d.decision);
        let record = &session.record;
        let view = SessionView {
            policy: &record.policy,
            mode: &record.mode,
            root_pid: record.root_pid,
            rule_names: &record.rule_names,
            rule_hosts: &record.rule_hosts,
            hostnames: session.hostnames(),
        };
        let sealed = self.reporter.decision(d, &view);
        let uid = record.uid;
        self.stage(d.session, Some(uid), sealed);
    }

    /// Reports events the ring buffer dropped since the last report.
    pub fn report_lost(&mut self) {
        let Ok(stats) = self.guard.stats() else {
            return;
        };
        if stats.lost > self.lost_reported {
            let facts = LostFacts {
                lost: LostCounts {
                    count: stats.lost - self.lost_reported,
                    total: stats.lost,
                },
            };
            self.lost_reported = stats.lost;
            self.report(0, None, &lost_report(&facts));
        }
    }

    /// Reports the lines each sink had to drop since the last report.
    pub fn report_overflows(&mut self) {
        let overflows = self
            .sinks
            .as_ref()
            .map(SinkSet::take_overflows)
            .unwrap_or_default();
        for o in overflows {
            let facts = OverflowFacts {
                sink: OverflowDetail {
                    name: &o.sink,
                    dropped: o.dropped,
                    first_sequence: o.first_sequence,
                    last_sequence: o.last_sequence,
                },
            };
            self.report(0, None, &overflow_report(&facts));
        }
    }

    /// Brings the metrics' gauges up to date.
    pub fn update_gauges(&mut self) {
        for sink in self.sinks.as_ref().map(SinkSet::health).unwrap_or_default() {
            self.metrics.set_sink(
                &sink.name,
                SinkSnapshot {
                    backlog: sink.backlog,
                    delivered: sink.delivered,
                    dropped: sink.dropped,
                },
            );
        }
        if let Ok(stats) = self.guard.stats() {
            self.metrics.set_lost_events(stats.lost);
        }
        self.metrics.set_sessions(self.sessions.len() as u64);
        self.metrics.set_event_sequence(self.reporter.head().0);
    }

    /// Live processes of each session, counting a `run` whose first process has not
    /// exec'd yet as alive while that process lives, a `run` whose client has not
    /// confirmed the start as alive (with at least one member) while the client lives, the
    /// attached processes that have not reached a hook yet, and an attached cgroup as
    /// alive while it exists (a unit's next process joins it).
    pub fn members(&mut self) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = self.guard.tasks_by_session();
        for (id, session) in &mut self.sessions {
            if session.record.origin == "attach" {
                let waiting = self
                    .guard
                    .attached_processes(*id)
                    .into_iter()
                    .filter(|pid| super::peer::alive(*pid))
                    .count();
                let cgroup = session.record.cgroup.as_ref().is_some_and(|c| c.is_dir());
                *counts.entry(*id).or_insert(0) += waiting + usize::from(cgroup);
            }
            if let Some(pid) = session.pending {
                let pending = self.guard.enrolment_pending(pid);
                if pending && super::peer::alive(pid) {
                    *counts.entry(*id).or_insert(0) += 1;
                } else if pending {
                    // Gone before its exec was enrolled: nothing holds the session open,
                    // so a late confirmation finds no session and the client fails.
                    self.guard.cancel_enrolment(pid);
                    session.pending = None;
                    session.unconfirmed_client = None;
                } else {
                    session.pending = None;
                }
            }
            if let Some(client) = session.unconfirmed_client {
                if super::peer::alive(client) {
                    // Holds the session open; the client is not one of its processes.
                    let members = counts.entry(*id).or_insert(0);
                    *members = (*members).max(1);
                } else {
                    session.unconfirmed_client = None;
                }
            }
        }
        counts
    }

    /// Ends every session whose last process is gone.
    pub fn sweep(&mut self) {
        let members = self.members();
        let ended: Vec<u32> = self
            .sessions
            .keys()
            .filter(|id| members.get(id).copied().unwrap_or(0) == 0)
            .copied()
            .collect();
        for id in ended {
            self.end_session(id);
        }
    }

    fn end_session(&mut self, id: u32) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if let Err(e) = self.guard.detach_all(id) {
            eprintln!(
                "agent-guard daemon: session {}: cannot remove its attachments: {e}",
                session_label(id)
            );
        }
        self.guard.remove_session(id);
        self.store.remove(id);
        self.session_event("session-end", &session.record, Some(session.counts));
        if self.sessions.is_empty() {
            self.reporter.forget_processes();
        }
    }

    /// Reports a session's start or end.
    fn session_event(
        &mut self,
        kind: &'static str,
        record: &registry::SessionRecord,
        counts: Option<registry::Counts>,
    ) {
        let facts = SessionChange {
            session: SessionLabel::of(record.session),
            policy: &record.policy,
            mode: &record.mode,
            origin: &record.origin,
            counts: counts.map(|c| SessionCounts {
                denied: c.denied,
                audited: c.audited,
            }),
        };
        let report = session_report(kind, &facts, record.uid, record.root_pid, &record.command);
        self.report(record.session, Some(record.uid), &report);
    }

    /// Registers a new session and reports its start.
    pub fn begin_session(&mut self, session: Session) {
        let id = session.record.session;
        if let Err(e) = self.store.save(&session.record) {
            eprintln!(
                "agent-guard daemon: cannot record session {} (a restarted daemon would not know it): {e}",
                session_label(id)
            );
        }
        self.session_event("session-start", &session.record, None);
        self.sessions.insert(id, session);
    }

    /// Takes back the sessions of the previous daemon that still have processes; the
    /// records of the others are cleaned up with their maps.
    pub fn adopt_sessions(&mut self) {
        let (records, bad) = self.store.load_all();
        for file in bad {
            eprintln!("agent-guard daemon: ignoring unreadable session record {file}");
        }
        for record in records {
            let session = Session {
                record,
                counts: registry::Counts::default(),
                pending: None,
                unconfirmed_client: None,
                network: None,
                seen: Default::default(),
            };
            self.sessions.insert(session.record.session, session);
        }
        // Counted like the sweep does, so that an attached session whose processes have
        // not reached a hook yet, or whose cgroup waits for its next process, lives on.
        let members = self.members();
        let ids: Vec<u32> = self.sessions.keys().copied().collect();
        for id in ids {
            if members.get(&id).copied().unwrap_or(0) == 0 {
                // It ended while no daemon was running.
                self.end_session(id);
            } else {
                self.origin.adopted_sessions.push(session_label(id));
            }
        }
    }

    /// Validates the configuration directory's policies again and, only when every one
    /// is valid, puts the new set in force for sessions that start from now on. Running
    /// sessions keep the policy they were started with, so none is ever without one.
    pub fn reload(&mut self, trigger: &str) {
        let outcome = super::config::PolicySet::load(&self.config);
        self.reloaded_at = registry::now();
        let error = match outcome {
            Ok(set) => {
                self.policies = set;
                self.reload_error = None;
                eprintln!("agent-guard daemon: policies reloaded ({trigger})");
                None
            }
            Err(errors) => {
                let text = errors
                    .iter()
                    .map(PolicyError::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!(
                    "agent-guard daemon: policy reload ({trigger}) refused; the previous policies stay in force:\n{text}"
                );
                self.reload_error = Some(text.clone());
                Some(text)
            }
        };
        let facts = ReloadFacts {
            reload: ReloadDetail {
                trigger,
                policies: self.policies.named.keys().cloned().collect(),
            },
        };
        self.report(0, None, &reload_report(&facts, error.as_deref()));
    }

    /// Leaves: the pinned programs keep guarding every running session. With none
    /// running, the pins are removed and the programs detach.
    pub fn shutdown(&mut self) {
        self.sweep();
        self.report_lost();
        self.report_overflows();
        // What the sinks still hold gets a few seconds; a webhook's spool stays on disk
        // for the next daemon.
        if let Some(sinks) = self.sinks.take() {
            sinks.shutdown(SINK_SHUTDOWN);
        }
        if self.sessions.is_empty() {
            let _ = std::fs::remove_file(&self.config.socket);
            match crate::bpf::Guard::unpin(&self.config.pin_dir) {
                Ok(()) => eprintln!(
                    "agent-guard daemon: stopped; no session was running, the programs are detached"
                ),
                Err(e) => eprintln!(
                    "agent-guard daemon: stopped; cannot remove {}: {e}",
                    self.config.pin_dir.display()
                ),
            }
            let _ = std::fs::remove_file(super::object_id_file(&self.config));
        } else {
            let _ = std::fs::remove_file(&self.config.socket);
            eprintln!(
                "agent-guard daemon: stopped; {} sessions stay guarded by the programs pinned in {} until a daemon adopts them",
                self.sessions.len(),
                self.config.pin_dir.display()
            );
        }
    }
}
