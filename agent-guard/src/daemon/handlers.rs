//! Requests on the control socket, and the watch on the policy directory.
//!
//! Who may do what is decided from the kernel's SO_PEERCRED, never from the request:
//! root may do everything; members of the daemon's group may start sessions and see their
//! own; nobody else gets past the socket's mode, and is refused here again if they do.
use std::{cell::RefCell, path::Path, rc::Rc};

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{
    peer::{self, Peer},
    protocol::{read_request, write_message, MessageError, PolicyText, Request, Response},
    registry::{Counts, Session, SessionRecord},
    Daemon,
};
use crate::{
    events::session_label,
    network::live::{self, LiveNetwork},
    policy::{Policy, ResolvedPolicy, SessionContext},
};

/// Serves one connection: one request, one response (or a stream of events).
pub async fn connection(daemon: Rc<RefCell<Daemon>>, stream: UnixStream) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let peer = Peer {
        pid: cred.pid().unwrap_or(0).max(0) as u32,
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let request = match read_request(&mut reader).await {
        Ok(request) => request,
        Err(MessageError::Closed) => return,
        Err(e) => {
            let hint = match e {
                MessageError::TooLong => "send a shorter policy; the control socket takes one JSON request per line",
                _ => "the control socket takes one JSON request per line, as `agent-guard` itself sends them; see docs/deploy.md",
            };
            let _ = write_message(&mut write, &Response::error(e.to_string(), hint)).await;
            return;
        }
    };
    let outside = outside_sessions(&mut daemon.borrow_mut(), &peer);
    let allowed = outside.and_then(|()| authorize(&daemon.borrow(), &peer, &request));
    if let Err(refusal) = allowed {
        let _ = write_message(&mut write, &refusal).await;
        return;
    }
    let response = match request {
        Request::Run {
            pid,
            cwd,
            command,
            policy,
            policy_name,
        } => {
            run(
                &daemon,
                &peer,
                pid,
                &cwd,
                command.join(" "),
                policy,
                policy_name,
            )
            .await
        }
        Request::Started { session, pid } => {
            started(&mut daemon.borrow_mut(), &peer, &session, pid)
        }
        Request::Attach {
            pid,
            cgroup,
            policy,
            policy_name,
            cwd,
            label,
        } => {
            attach(
                &daemon,
                &peer,
                Target { pid, cgroup },
                policy,
                policy_name,
                &cwd,
                label,
            )
            .await
        }
        Request::Sessions => sessions(&mut daemon.borrow_mut(), &peer),
        Request::Status => status(&mut daemon.borrow_mut()),
        Request::Reload => {
            let mut d = daemon.borrow_mut();
            d.reload("a reload request");
            match &d.reload_error {
                None => Response::ok(),
                Some(e) => Response::error(
                    format!("the new policies are refused; the previous ones stay in force:\n{e}"),
                    "fix the file at the location given and reload again",
                ),
            }
        }
        Request::Events { session, follow } => {
            events(&daemon, &peer, session, follow, &mut write).await;
            return;
        }
    };
    let _ = write_message(&mut write, &response).await;
    let _ = write.shutdown().await;
}

/// Refuses a peer inside a guarded session, asked of the kernel. The kernel already keeps
/// sessions from connecting to sockets under /run/agent-guard; this holds wherever the
/// socket is, and for a descriptor a session got from outside.
fn outside_sessions(daemon: &mut Daemon, peer: &Peer) -> Result<(), Response> {
    match daemon.guard.session_of(peer.pid) {
        Ok(None) => Ok(()),
        Ok(Some(session)) => Err(Response::error(
            format!(
                "process {} is inside guarded session {}; sessions cannot use the daemon",
                peer.pid,
                session_label(session)
            ),
            "",
        )),
        Err(e) => Err(Response::error(
            format!("cannot tell whether the requesting process is guarded ({e}); refused"),
            "",
        )),
    }
}

/// Whether `peer` may make `request`.
fn authorize(daemon: &Daemon, peer: &Peer, request: &Request) -> Result<(), Response> {
    if peer.is_root() {
        return Ok(());
    }
    let member = daemon.group_gid.is_some_and(|gid| peer.in_group(gid));
    match request {
        Request::Attach { .. } | Request::Reload => Err(Response::error(
            "only root may attach sessions or reload policies",
            "run it with sudo",
        )),
        _ if !member => Err(Response::error(
            format!("uid {} is not in group `{}`", peer.uid, daemon.config.group),
            format!(
                "an administrator adds you with `usermod -aG {} USER`; log in again afterwards",
                daemon.config.group
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads a client's policy with the client's own file permissions, so that `extends`
/// cannot make the daemon read a file its user could not.
fn parse_as(peer: &Peer, text: &PolicyText) -> Result<Policy, String> {
    // SAFETY: setfsuid/setfsgid change only this thread's file-access identity; the
    // previous values are restored before returning.
    let (old_uid, old_gid) = unsafe {
        (
            libc::setfsuid(peer.uid) as u32,
            libc::setfsgid(peer.gid) as u32,
        )
    };
    let parsed = Policy::parse(&text.name, &text.text).map_err(|e| e.to_string());
    // SAFETY: as above.
    unsafe {
        libc::setfsgid(old_gid);
        libc::setfsuid(old_uid);
    }
    parsed
}

/// The policy a request names, combined with the base policy and resolved for `ctx`.
fn session_policy(
    daemon: &Daemon,
    peer: &Peer,
    text: Option<&PolicyText>,
    name: Option<&str>,
    ctx: &SessionContext,
) -> Result<ResolvedPolicy, String> {
    let policy = match (text, name) {
        (Some(_), Some(_)) => return Err("give a policy file or a policy name, not both".into()),
        (Some(text), None) => parse_as(peer, text)?,
        (None, Some(name)) => daemon.policies.named.get(name).cloned().ok_or_else(|| {
            format!(
                "the daemon has no policy named `{name}`; it has: {}\n  hint: named policies are the *.toml files in {}",
                daemon.policies.named.keys().cloned().collect::<Vec<_>>().join(", "),
                daemon.config.policy_dir.display()
            )
        })?,
        (None, None) => daemon
            .policies
            .named
            .get("default")
            .cloned()
            .unwrap_or_else(Policy::builtin),
    };
    match &daemon.policies.base {
        Some(base) => crate::policy::combine(base, &policy, ctx).map_err(|e| e.to_string()),
        None => policy.resolve(ctx).map_err(|e| e.to_string()),
    }
}

/// The home directory of `uid`, for `~` in its policies.
fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    nix::unistd::User::from_uid(uid.into()).ok()?.map(|u| u.dir)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    daemon: &Rc<RefCell<Daemon>>,
    peer: &Peer,
    pid: u32,
    cwd: &Path,
    command: String,
    policy: Option<PolicyText>,
    policy_name: Option<String>,
) -> Response {
    // The process to enrol must be the client's own waiting child.
    if crate::session::parent_of(pid) != Some(peer.pid) || peer::uid_of(pid) != Some(peer.uid) {
        return Response::error(
            format!("process {pid} is not a child of the requesting process {} with its user", peer.pid),
            "`agent-guard run` sends its own waiting child; other processes are attached by root with `agent-guard attach`",
        );
    }
    if !cwd.is_absolute() || !cwd.is_dir() {
        return Response::error(
            format!(
                "the working directory `{}` is not an absolute path to a directory",
                cwd.display()
            ),
            "",
        );
    }
    // Nor may it already be guarded: it would leave its session for this one.
    let child = Peer { pid, ..*peer };
    let guarded = outside_sessions(&mut daemon.borrow_mut(), &child);
    if let Err(refusal) = guarded {
        return refusal;
    }
    let spec = NewSession {
        origin: "run",
        uid: peer.uid,
        root_pid: pid,
        command,
        cwd,
        cgroup: None,
        policy: policy.as_ref(),
        policy_name: policy_name.as_deref(),
    };
    open_session(daemon, peer, spec, |guard, session| {
        guard
            .enroll(pid, session)
            .map(|()| Vec::new())
            .map_err(|e| format!("cannot enrol process {pid}: {e}"))
    })
    .await
}

/// A session about to be opened, whoever asked for it.
struct NewSession<'a> {
    origin: &'static str,
    /// Who the session's `~` and records belong to.
    uid: u32,
    root_pid: u32,
    command: String,
    cwd: &'a Path,
    cgroup: Option<std::path::PathBuf>,
    policy: Option<&'a PolicyText>,
    policy_name: Option<&'a str>,
}

/// Builds the session's policy (combined with the base), installs it, lets `enrol` put
/// its processes in, and registers it. Any failure removes what was installed.
async fn open_session(
    daemon: &Rc<RefCell<Daemon>>,
    peer: &Peer,
    spec: NewSession<'_>,
    enrol: impl FnOnce(&mut crate::bpf::Guard, u32) -> Result<Vec<u32>, String>,
) -> Response {
    let ctx = SessionContext {
        workspace: spec.cwd.to_owned(),
        home: home_of(spec.uid),
    };
    let mut resolved = {
        let mut d = daemon.borrow_mut();
        let mut resolved = match session_policy(&d, peer, spec.policy, spec.policy_name, &ctx) {
            Ok(resolved) => resolved,
            Err(e) => return Response::error(e, ""),
        };
        if let Err(e) = d.guard.identify_policy(&mut resolved) {
            return Response::error(
                format!("cannot resolve the policy's paths in the kernel: {e}"),
                "",
            );
        }
        resolved
    };
    // Lookups take time: the daemon serves others meanwhile.
    let (hostnames, warnings) = live::prepare(&mut resolved).await;
    let mut d = daemon.borrow_mut();
    let session = new_session_id(&mut d);
    if let Err(e) = d.guard.add_session(session, &resolved) {
        d.guard.remove_session(session);
        return Response::error(format!("cannot install the session's policy: {e}"), "");
    }
    let enrolled = match enrol(&mut d.guard, session) {
        Ok(enrolled) => enrolled,
        Err(e) => {
            let _ = d.guard.detach_all(session);
            d.guard.remove_session(session);
            return Response::error(e, "");
        }
    };
    let network = LiveNetwork::new(session, resolved, hostnames);
    let record = SessionRecord {
        session,
        origin: spec.origin.into(),
        uid: spec.uid,
        root_pid: spec.root_pid,
        command: spec.command,
        cwd: spec.cwd.to_owned(),
        policy: network.policy.source.clone(),
        mode: network.policy.mode.as_str().into(),
        started: super::registry::now(),
        rule_names: network.policy.rule_names(),
        rule_hosts: network.rule_hosts(),
        cgroup: spec.cgroup,
    };
    d.begin_session(Session {
        record,
        counts: Counts::default(),
        // A `run`'s first process counts as alive until its exec enrolled it.
        pending: (spec.origin == "run").then_some(spec.root_pid),
        unconfirmed_client: (spec.origin == "run").then_some(peer.pid),
        network: Some(network),
        seen: Default::default(),
    });
    let mut response = Response::ok();
    response.session = Some(session_label(session));
    response.data = serde_json::json!({ "attached": enrolled, "warnings": warnings });
    response
}

/// What `attach` puts into a session.
struct Target {
    pid: Option<u32>,
    cgroup: Option<std::path::PathBuf>,
}

/// Puts a running process tree or a cgroup into a new session (root only, checked by
/// [`authorize`]).
#[allow(clippy::too_many_arguments)]
async fn attach(
    daemon: &Rc<RefCell<Daemon>>,
    peer: &Peer,
    target: Target,
    policy: Option<PolicyText>,
    policy_name: Option<String>,
    cwd: &Path,
    label: String,
) -> Response {
    let owner = match (&target.pid, &target.cgroup) {
        (Some(pid), None) => match peer::uid_of(*pid) {
            Some(uid) => uid,
            None => return Response::error(format!("no process {pid}"), "check the pid with `ps`"),
        },
        (None, Some(path)) if path.is_dir() => peer.uid,
        (None, Some(path)) => {
            return Response::error(
                format!("{} is not a cgroup directory", path.display()),
                "give a directory under /sys/fs/cgroup, or --unit NAME.service",
            )
        }
        _ => return Response::error("give exactly one of a pid and a cgroup", ""),
    };
    if target.pid == Some(std::process::id()) {
        return Response::error("the daemon cannot guard itself", "");
    }
    let spec = NewSession {
        origin: "attach",
        uid: owner,
        root_pid: target.pid.unwrap_or(0),
        command: label,
        cwd,
        cgroup: target.cgroup.clone(),
        policy: policy.as_ref(),
        policy_name: policy_name.as_deref(),
    };
    open_session(daemon, peer, spec, |guard, session| {
        match (&target.pid, &target.cgroup) {
            (Some(pid), _) => guard.attach_pids(session, *pid),
            (None, Some(path)) => guard.attach_cgroup(session, path),
            (None, None) => unreachable!("checked above"),
        }
        .map_err(|e| format!("cannot attach: {e}"))
    })
    .await
}

/// A session id no live session has, in the daemon or in the kernel's tables.
fn new_session_id(daemon: &mut Daemon) -> u32 {
    let live = daemon.guard.tasks_by_session();
    loop {
        let id = crate::session::random_session_id();
        if !daemon.sessions.contains_key(&id) && !live.contains_key(&id) {
            return id;
        }
    }
}

/// The client's child has exec'd: it must be in the session now, or it is killed.
fn started(daemon: &mut Daemon, peer: &Peer, label: &str, pid: u32) -> Response {
    let Some((&id, session)) = daemon
        .sessions
        .iter()
        .find(|(id, _)| session_label(**id) == label)
    else {
        return Response::error(format!("no session {label}"), "");
    };
    if session.record.uid != peer.uid && !peer.is_root() {
        return Response::error(format!("session {label} is not yours"), "");
    }
    if session.record.root_pid != pid {
        return Response::error(
            format!("process {pid} is not the first process of session {label}"),
            "",
        );
    }
    if daemon.guard.enrolment_pending(pid) {
        // Exec'd without being enrolled: it must not run on.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        daemon.guard.cancel_enrolment(pid);
        if let Some(session) = daemon.sessions.get_mut(&id) {
            session.pending = None;
            session.unconfirmed_client = None;
        }
        return Response::error(
            format!("the kernel did not enrol process {pid} at its exec; it was killed before it could act unguarded"),
            "",
        );
    }
    if let Some(session) = daemon.sessions.get_mut(&id) {
        session.pending = None;
        session.unconfirmed_client = None;
    }
    Response::ok()
}

fn sessions(daemon: &mut Daemon, peer: &Peer) -> Response {
    let members = daemon.members();
    let list: Vec<serde_json::Value> = daemon
        .sessions
        .iter()
        .filter(|(_, s)| peer.is_root() || s.record.uid == peer.uid)
        .map(|(id, s)| s.describe(members.get(id).copied().unwrap_or(0)))
        .collect();
    Response::ok().with_data(serde_json::json!({ "sessions": list }))
}

fn status(daemon: &mut Daemon) -> Response {
    let stats = daemon.guard.stats().unwrap_or_default();
    let head = daemon.reporter.head();
    let lsms = crate::selfcheck::active_lsms().unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_default();
    Response::ok().with_data(serde_json::json!({
        "kernel": {
            "release": release,
            "lsms": lsms.join(","),
            "bpf_lsm": lsms.iter().any(|l| l == "bpf"),
        },
        "programs": {
            "origin": daemon.origin.programs,
            "hooks": daemon.guard.attached.len(),
            "pinned_in": daemon.config.pin_dir,
            "object": crate::bpf::object_id(),
        },
        "started_in_ms": daemon.origin.start_ms,
        "load_ms": daemon.origin.load_ms,
        "canary_ms": daemon.origin.canary_ms,
        "uptime_seconds": daemon.started.elapsed().as_secs(),
        "adopted_sessions": daemon.origin.adopted_sessions,
        "sessions": daemon.sessions.len(),
        "decisions": { "denied": stats.denied, "audited": stats.audited },
        "lost_events": stats.lost,
        "audit_log": {
            "path": daemon.config.events,
            "written": daemon.reporter.sealed - daemon.reporter.write_errors(),
            "write_errors": daemon.reporter.write_errors(),
            "sequence": head.0,
            "head": head.1,
        },
        "sinks": daemon.sinks.as_ref().map(crate::sinks::SinkSet::health).unwrap_or_default(),
        "policies": daemon.policies.describe(),
        "reload": {
            "at": daemon.reloaded_at,
            "error": daemon.reload_error,
        },
    }))
}

/// Sends the recent events a peer may see and, with `follow`, every new one until the
/// peer hangs up. A session's events end with its `session-end` record.
async fn events(
    daemon: &Rc<RefCell<Daemon>>,
    peer: &Peer,
    session: Option<String>,
    follow: bool,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) {
    let visible = |line: &super::EventLine| {
        let mine = peer.is_root() || line.uid == Some(peer.uid);
        let wanted = session
            .as_deref()
            .is_none_or(|s| session_label(line.session) == s);
        mine && wanted
    };
    let (recent, mut feed) = {
        let d = daemon.borrow();
        let recent: Vec<super::EventLine> =
            d.recent.iter().filter(|l| visible(l)).cloned().collect();
        (recent, d.followers.subscribe())
    };
    if write_message(write, &Response::ok()).await.is_err() {
        return;
    }
    for line in recent {
        if write_line(write, &line.json).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    loop {
        match feed.recv().await {
            Ok(line) if visible(&line) => {
                if write_line(write, &line.json).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let notice = serde_json::json!({
                    "kind": "follower-lagged",
                    "missed": n,
                    "hint": "the event log has every event",
                });
                if write_line(write, &notice.to_string()).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn write_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    json: &str,
) -> std::io::Result<()> {
    write.write_all(json.as_bytes()).await?;
    write.write_all(b"\n").await
}

/// Watches the configuration and policy directories for changes.
pub struct PolicyWatcher {
    fd: Option<tokio::io::unix::AsyncFd<Watch>>,
}

/// The inotify instance, as tokio polls it.
struct Watch(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

impl PolicyWatcher {
    pub fn new(config: &super::config::Config) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .ok()
            .and_then(|inotify| {
                let flags = AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE;
                let mut watched = false;
                for dir in [
                    config.base_policy.parent(),
                    Some(config.policy_dir.as_path()),
                ]
                .into_iter()
                .flatten()
                {
                    watched |= inotify.add_watch(dir, flags).is_ok();
                }
                watched.then_some(inotify)
            })
            .and_then(|inotify| poll(Watch(inotify)));
        Self { fd }
    }

    /// Resolves to `true` once something changed. The events are read as soon as the
    /// descriptor is readable, with no await in between, so that the event loop dropping
    /// this future for another branch never loses a change (the caller waits for the
    /// burst of events an editor makes to settle).
    pub async fn changed(&self) -> bool {
        let Some(fd) = &self.fd else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return std::future::pending().await;
            };
            let seen = matches!(fd.get_ref().0.read_events(), Ok(events) if !events.is_empty());
            ready.clear_ready();
            if seen {
                return true;
            }
        }
    }
}

/// Registers `watch` with tokio.
fn poll(watch: Watch) -> Option<tokio::io::unix::AsyncFd<Watch>> {
    #[expect(
        deprecated,
        reason = "tokio 1.54 deprecates AsyncFd::new but has no replacement yet"
    )]
    tokio::io::unix::AsyncFd::new(watch).ok()
}
