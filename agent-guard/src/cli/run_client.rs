//! `agent-guard run` through the daemon: how a user without privileges starts a guarded
//! session.
//!
//! The command is forked here and waits before its exec; the daemon checks (from the
//! kernel's SO_PEERCRED and /proc) that it is this process's child with this user, builds
//! the session's policy combined with the host's base policy, and marks the child for
//! enrolment. Only then does the child exec, and the daemon confirms that the kernel
//! enrolled it; if it did not, the child is killed. Events come back over a second
//! connection, which ends with the session's `session-end` record.
use std::{io::Write as _, path::Path, sync::mpsc, time::Duration};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::signal::unix::SignalKind;

use super::{
    control::{client_failure, policy_text},
    report_error,
    run::RunArgs,
    EXIT_GUARD_UNAVAILABLE,
};
use crate::{
    client::{self, Connection},
    daemon::protocol::Request,
    session::{become_subreaper, spawn_waiting, wait_all, SpawnError},
};

/// How long after the command's end the daemon's `session-end` record is awaited.
const END_WAIT: Duration = Duration::from_secs(10);

/// Where the session's events are copied.
enum Copy {
    Nowhere,
    Stderr,
    File(std::fs::File),
}

pub fn run_via_daemon(args: &RunArgs, socket: &Path) -> i32 {
    let policy = match &args.policy {
        Some(path) => match policy_text(path) {
            Ok(text) => Some(text),
            Err(status) => return status,
        },
        None => None,
    };
    let mut copy = match &args.events {
        Some(path) if path.as_os_str() == "-" => Copy::Stderr,
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => Copy::File(file),
            Err(e) => {
                report_error(&format!("cannot open the event log {}", path.display()), &e);
                return super::EXIT_USAGE;
            }
        },
        None => Copy::Nowhere,
    };
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            report_error("cannot read the current directory", &e);
            return super::EXIT_USAGE;
        }
    };
    if let Err(e) = become_subreaper() {
        report_error("cannot become the reaper of the session's orphans", &e);
        return EXIT_GUARD_UNAVAILABLE;
    }
    // Forked before any thread exists.
    let waiting = match spawn_waiting(&args.command) {
        Ok(waiting) => waiting,
        Err(e) => {
            report_error("cannot start the command", &e);
            return EXIT_GUARD_UNAVAILABLE;
        }
    };
    let pid = waiting.pid;
    let request = Request::Run {
        pid: pid.as_raw() as u32,
        cwd,
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        policy,
        policy_name: args.policy_name.clone(),
    };
    let response = match client::request(socket, &request) {
        Ok(response) => response,
        Err(e) => {
            waiting.abort();
            return client_failure(&e);
        }
    };
    let session = response.session.unwrap_or_default();
    for warning in response.data["warnings"].as_array().into_iter().flatten() {
        eprintln!("agent-guard: {}", warning.as_str().unwrap_or_default());
    }
    // Subscribed before the command runs, so that no event is missed.
    let mut feed = match Connection::send(
        socket,
        &Request::Events {
            session: Some(session.clone()),
            follow: true,
        },
    )
    .and_then(|mut c| c.response().map(|_| c))
    {
        Ok(feed) => feed,
        Err(e) => {
            waiting.abort();
            return client_failure(&e);
        }
    };
    let (end_tx, end_rx) = mpsc::channel();
    let feed_socket = socket.to_owned();
    let feed_session = session.clone();
    std::thread::spawn(move || {
        loop {
            while let Ok(Some(line)) = feed.line() {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if value["agent_guard"]["kind"] == "session-end" {
                    let _ = end_tx.send(value);
                    return;
                }
                match &mut copy {
                    Copy::Nowhere => {}
                    Copy::Stderr => eprintln!("{line}"),
                    Copy::File(file) => {
                        let _ = writeln!(file, "{line}");
                    }
                }
            }
            // The daemon went away (restarted, say): the session stays guarded by the
            // pinned programs; follow it again on the next daemon, which sends what it
            // drained from the ring buffer meanwhile.
            feed = match resubscribe(&feed_socket, &feed_session) {
                Some(feed) => feed,
                None => return,
            };
        }
    });
    let command = match waiting.go() {
        Ok(pid) => pid,
        Err(e) => {
            report_error("cannot start the command", &e);
            return match e {
                SpawnError::Exec { exit_status, .. } => exit_status,
                _ => EXIT_GUARD_UNAVAILABLE,
            };
        }
    };
    if let Err(e) = client::request(
        socket,
        &Request::Started {
            session: session.clone(),
            pid: pid.as_raw() as u32,
        },
    ) {
        let _ = kill(command, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(command, None);
        return client_failure(&e);
    }
    let status = wait_forwarding_signals(command);
    match end_rx.recv_timeout(END_WAIT) {
        Ok(end) => {
            let counts = &end["agent_guard"]["counts"];
            eprintln!(
                "agent-guard: session {session} ended (status {status}, through the daemon, policy {}): denied {}, audited {}; events in the daemon's log{}",
                end["agent_guard"]["policy"].as_str().unwrap_or("?"),
                counts["denied"],
                counts["audited"],
                match &args.events {
                    Some(path) if path.as_os_str() == "-" => " and on stderr".to_owned(),
                    Some(path) => format!(" and in {}", path.display()),
                    None => String::new(),
                }
            );
        }
        Err(_) => eprintln!(
            "agent-guard: session {session}: the command ended with status {status}; the daemon has not reported the session's end yet (processes may remain; `agent-guard sessions` shows them)"
        ),
    }
    status
}

/// Follows `session` again on a restarted daemon; gives up after a minute.
fn resubscribe(socket: &Path, session: &str) -> Option<Connection> {
    let request = Request::Events {
        session: Some(session.to_owned()),
        follow: true,
    };
    for _ in 0..240 {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(mut feed) = Connection::send(socket, &request) {
            if feed.response().is_ok() {
                return Some(feed);
            }
        }
    }
    None
}

/// Waits for the command and every orphan of the session, passing SIGTERM and SIGHUP on
/// (a terminal's Ctrl-C already reaches the whole foreground group).
fn wait_forwarding_signals(command: Pid) -> i32 {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return wait_all(command);
    };
    runtime.block_on(async move {
        let mut waiter = tokio::task::spawn_blocking(move || wait_all(command));
        let mut term = tokio::signal::unix::signal(SignalKind::terminate()).ok();
        let mut hup = tokio::signal::unix::signal(SignalKind::hangup()).ok();
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt()).ok();
        loop {
            tokio::select! {
                status = &mut waiter => return status.unwrap_or(crate::session::EXIT_CANNOT_EXEC),
                Some(()) = async { term.as_mut()?.recv().await } => { let _ = kill(command, Signal::SIGTERM); }
                Some(()) = async { hup.as_mut()?.recv().await } => { let _ = kill(command, Signal::SIGHUP); }
                Some(()) = async { int.as_mut()?.recv().await } => {
                    // SAFETY: plain libc calls on fd 0.
                    let foreground = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
                    if !foreground {
                        let _ = kill(command, Signal::SIGINT);
                    }
                }
            }
        }
    })
}
