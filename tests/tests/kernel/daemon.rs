//! The daemon (issue #5): sessions outlive its death, unprivileged group members start
//! sessions through it and nobody else does, sessions cannot reach it, a bad policy reload
//! changes nothing, and garbage on its socket leaves it serving.
use std::{fs, os::unix::fs::PermissionsExt as _, process::Stdio, time::Duration};

use crate::{
    daemonfix::{open_to_nobody, Daemon, NOBODY},
    fixture::{Fixture, PRECIOUS, PROBE},
};

/// How long a session may take in the emulated VM.
const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// The number in `path`, 0 while it does not exist yet.
fn progress(path: &std::path::Path) -> u32 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    crate::fixture::wait_until(what, SESSION_TIMEOUT, done);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn sessions_stay_guarded_while_the_daemon_is_killed_and_restarted() {
    let fx = Fixture::new("daemon-kill");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let stop = fx.path("stop");
    let counter = fx.path("ws/progress");
    // Each round: one operation the policy refuses, one it allows; `ag-probe` exits 1 for
    // EPERM and 0 for success.
    let script = format!(
        r#"i=0
while [ ! -e {stop} ]; do
  i=$((i+1))
  {probe} unlink {keep} >/dev/null; echo "deny $i $?"
  {probe} create {ws}/f$i >/dev/null; echo "allow $i $?"
  echo $i > {counter}
done"#,
        stop = stop.display(),
        probe = PROBE,
        keep = fx.s("prod/keep"),
        ws = fx.ws.display(),
        counter = counter.display(),
    );
    let mut daemon = Daemon::new(&fx, "kill");
    daemon.start();
    let loaded = daemon.status();
    assert_eq!(loaded["programs"]["origin"], "loaded");
    let session = daemon
        .client_as_nobody(true, &fx.ws, &["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the session through the daemon");

    wait_until("3 rounds with the daemon alive", || progress(&counter) >= 3);
    daemon.kill9();
    assert!(
        daemon.pins.join("links/task_alloc").exists(),
        "the links stay pinned after SIGKILL"
    );
    let killed_at = progress(&counter);
    wait_until("3 rounds without a daemon", || {
        progress(&counter) >= killed_at + 3
    });
    daemon.start();
    let restarted_at = progress(&counter);
    wait_until("3 rounds after the restart", || {
        progress(&counter) >= restarted_at + 3
    });
    fs::write(&stop, "").unwrap();
    let out = session.wait_with_output().expect("wait for the session");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");

    let mut rounds = 0;
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["deny", i, rc] => {
                assert_eq!(*rc, "1", "round {i}: the unlink was not refused with EPERM")
            }
            ["allow", i, rc] => {
                assert_eq!(*rc, "0", "round {i}: the allowed create failed");
                rounds += 1;
            }
            _ => panic!("unexpected output: {line}"),
        }
    }
    assert!(
        rounds >= 9,
        "only {rounds} rounds ran (progress {killed_at} at the kill, {restarted_at} at the restart, {} at the end):\n{stdout}\nstderr:\n{stderr}\ndaemon:\n{}",
        progress(&counter),
        daemon.log()
    );
    fx.assert_intact("prod/keep");

    let adopted = daemon.status();
    assert_eq!(adopted["programs"]["origin"], "adopted", "{adopted}");
    let adopted_sessions = adopted["adopted_sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(adopted_sessions.len(), 1, "{adopted}");
    let id = adopted_sessions[0].as_str().unwrap().to_owned();
    // The restarted daemon reports the session's decisions, including those the ring
    // buffer kept while no daemon read it, and then its end.
    let events = daemon.events();
    let denials = events
        .iter()
        .filter(|e| {
            e["agent_guard"]["session"]["id"] == id.as_str()
                && e["event"]["action"] == "unlink"
                && e["agent_guard"]["decision"] == "deny"
        })
        .count();
    assert!(
        denials >= 3,
        "the restarted daemon reported {denials} denials"
    );
    assert!(
        events
            .iter()
            .any(|e| e["agent_guard"]["session"]["id"] == id.as_str()
                && e["agent_guard"]["kind"] == "session-end"),
        "no session-end for {id}"
    );
    assert!(stderr.contains(&format!("session {id} ended")), "{stderr}");
    assert!(
        daemon.log().contains("1 sessions adopted"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
    assert!(
        !daemon.pins.exists(),
        "a daemon stopped with no session left removes its pins"
    );
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn group_members_start_sessions_without_privileges_and_others_are_refused() {
    let fx = Fixture::new("daemon-group");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let mut daemon = Daemon::new(&fx, "group");
    daemon.start();
    let socket = fs::metadata(&daemon.socket).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660);

    let member = daemon
        .client_as_nobody(
            true,
            &fx.ws,
            &[
                "run",
                "--events",
                "-",
                "--",
                "sh",
                "-c",
                &format!(
                    "{PROBE} create mine; {PROBE} unlink {}; id -u",
                    fx.s("prod/keep")
                ),
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&member.stdout);
    let stderr = String::from_utf8_lossy(&member.stderr);
    assert!(member.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ok "), "{stdout}");
    assert!(lines[1].starts_with("EPERM "), "{stdout}");
    assert_eq!(
        lines[2],
        NOBODY.to_string(),
        "the session runs as the member, unprivileged"
    );
    fx.assert_intact("prod/keep");
    assert!(fx.ws.join("mine").exists());
    // The member sees the decision on its own stderr, with its uid.
    let denial = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"]["action"] == "unlink")
        .unwrap_or_else(|| panic!("no unlink event on stderr:\n{stderr}"));
    assert_eq!(denial["agent_guard"]["decision"], "deny");
    assert_eq!(denial["user"]["id"], NOBODY.to_string());
    assert_eq!(denial["rule"]["name"], "outside-writable-scope");

    let outsider = daemon
        .client_as_nobody(false, &fx.ws, &["run", "--", PROBE, "create", "theirs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&outsider.stderr);
    assert_eq!(outsider.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        stderr.contains("agent-guard"),
        "the refusal names the group: {stderr}"
    );
    assert!(!fx.ws.join("theirs").exists(), "the command never ran");
    // Without a daemon to serve it, a non-root `run` is refused too, never unguarded.
    let standalone = daemon
        .client_as_nobody(
            true,
            &fx.ws,
            &["run", "--standalone", "--", PROBE, "create", "x"],
        )
        .output()
        .unwrap();
    assert_eq!(standalone.status.code(), Some(125));
    assert!(!fx.ws.join("x").exists());
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_session_cannot_reach_the_control_socket() {
    let fx = Fixture::new("daemon-inside");
    open_to_nobody(&fx);
    let mut daemon = Daemon::new(&fx, "inside");
    daemon.start();
    let socket = daemon.socket.display().to_string();
    let agent_guard = crate::fixture::agent_guard_bin().display().to_string();
    // From inside a session: a raw connect, then the client asking for a looser session
    // and for the daemon's sessions.
    let script = format!(
        "{PROBE} unix-connect {socket}; AGENT_GUARD_SOCKET={socket} {agent_guard} run --policy-name open -- true; echo run=$?; AGENT_GUARD_SOCKET={socket} {agent_guard} sessions; echo sessions=$?"
    );
    let out = daemon
        .client_as_nobody(true, &fx.ws, &["run", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("EPERM "),
        "connect from inside: {stdout}\n{stderr}"
    );
    assert!(lines.contains(&"run=125"), "{stdout}\n{stderr}");
    assert!(lines.contains(&"sessions=125"), "{stdout}\n{stderr}");
    let refusals = daemon
        .events()
        .into_iter()
        .filter(|e| {
            e["event"]["action"] == "connect"
                && e["agent_guard"]["socket"]["path"] == socket.as_str()
        })
        .map(|e| e["rule"]["name"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert!(refusals.len() >= 3, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r == "self-protection"),
        "{refusals:?}"
    );
    // The daemon itself is untouched and serves the outside.
    assert!(daemon.client(&["sessions"]).status.success());
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn the_daemon_refuses_sessions_wherever_its_socket_is() {
    let fx = Fixture::new("daemon-elsewhere");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let mut daemon = Daemon::new(&fx, "elsewhere");
    // Outside /run/agent-guard the kernel lets sessions connect; the daemon asks the kernel
    // whether the peer is guarded, and refuses.
    daemon.relocate_socket(&fx.path("alt.sock"));
    daemon.start();
    let socket = daemon.socket.display().to_string();
    let agent_guard = crate::fixture::agent_guard_bin().display().to_string();
    let looser = fx.write(
        "open.toml",
        "version = 1\n[filesystem]\nwritable = [\"/tmp\"]\n",
    );
    fs::set_permissions(&looser, fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "AGENT_GUARD_SOCKET={socket} {agent_guard} run --policy {looser} -- {PROBE} unlink {keep}; echo run=$?; AGENT_GUARD_SOCKET={socket} {agent_guard} sessions; echo sessions=$?",
        looser = looser.display(),
        keep = fx.s("prod/keep"),
    );
    let out = daemon
        .client_as_nobody(true, &fx.ws, &["run", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("run=2"), "{stdout}\n{stderr}");
    assert!(stdout.contains("sessions=2"), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("ok pid="),
        "the looser session never ran: {stdout}"
    );
    assert!(stderr.contains("inside guarded session"), "{stderr}");
    fx.assert_intact("prod/keep");
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_command_that_ends_before_its_client_confirms_the_start_keeps_its_session() {
    use std::io::Write as _;
    let fx = Fixture::new("daemon-confirm");
    fx.write("prod/keep", PRECIOUS);
    let mut daemon = Daemon::new(&fx, "confirm");
    daemon.start();
    // This test is the `run` client, speaking the protocol itself so that it can be as
    // slow to confirm as a client descheduled on a busy host: its child waits, is
    // enrolled, then execs a refused unlink and exits long before the confirmation.
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("read go; exec {PROBE} unlink {}", fx.s("prod/keep")),
        ])
        .current_dir(&fx.ws)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let request = serde_json::json!({
        "request": "run", "pid": pid, "cwd": fx.ws, "command": ["unlink"], "policy": null,
    });
    let reply: serde_json::Value =
        serde_json::from_str(&daemon.raw(format!("{request}\n").as_bytes())).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let id = reply["session"].as_str().unwrap().to_owned();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("EPERM "),
        "enrolled at its exec: {stdout}"
    );
    fx.assert_intact("prod/keep");
    // Several of the daemon's sweeps pass with the session's only process gone.
    std::thread::sleep(Duration::from_secs(3));
    let request = serde_json::json!({ "request": "started", "session": id, "pid": pid });
    let reply: serde_json::Value =
        serde_json::from_str(&daemon.raw(format!("{request}\n").as_bytes())).unwrap();
    assert_eq!(reply["ok"], true, "{reply}\n{}", daemon.log());
    // Confirmed, the session ends as any other, with its refusal on record.
    wait_until("the session to end", || {
        daemon.events().iter().any(|e| {
            e["agent_guard"]["session"]["id"] == id.as_str()
                && e["agent_guard"]["kind"] == "session-end"
        })
    });
    assert!(daemon.events().iter().any(|e| {
        e["agent_guard"]["session"]["id"] == id.as_str()
            && e["event"]["action"] == "unlink"
            && e["agent_guard"]["decision"] == "deny"
    }));
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_session_that_may_write_everything_cannot_touch_the_daemons_record() {
    let fx = Fixture::new("daemon-record");
    let mut daemon = Daemon::new(&fx, "record");
    daemon.start();
    let everything = fx.write(
        "everything.toml",
        "version = 1\n[filesystem]\nwritable = [\"/\"]\nwritable_devices = [\"/dev/null\"]\n",
    );
    let events = daemon.events.display().to_string();
    let journal = daemon.state.join("journal").display().to_string();
    let sessions = daemon.state.join("sessions").display().to_string();
    // On the log's own file system (/run), where the policy lets the session write.
    let elsewhere = format!("/run/ag-taken-{}", std::process::id());
    // As root, so that file permissions do not answer before the guard does.
    let script = format!(
        "{PROBE} open-write {events} forged; {PROBE} truncate {events}; {PROBE} rename {events} {elsewhere}; {PROBE} unlink {events}; {PROBE} unlink {journal}; for record in {sessions}/*.json; do {PROBE} unlink $record; {PROBE} open-write $record forged; done; {PROBE} create {sessions}/forged.json"
    );
    let out = daemon.client(&[
        "run",
        "--policy",
        &everything.display().to_string(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "one line per attempt: {stdout}\n{stderr}");
    assert!(
        lines.iter().all(|l| l.starts_with("EPERM ")),
        "every attempt refused: {stdout}"
    );
    let taken = fs::exists(&elsewhere).unwrap();
    let _ = fs::remove_file(&elsewhere);
    assert!(!taken, "the log was moved away");
    // The log is whole: its chain verifies, and it holds each refusal, by self-protection.
    let verify = daemon.client(&["audit", "verify", &events]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    wait_until("the refusals in the log", || {
        daemon
            .events()
            .iter()
            .filter(|e| {
                e["agent_guard"]["decision"] == "deny" && e["rule"]["name"] == "self-protection"
            })
            .count()
            >= 8
    });
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_bad_policy_reload_keeps_the_old_policies_in_force() {
    let fx = Fixture::new("daemon-reload");
    open_to_nobody(&fx);
    fx.write("prod/keep", PRECIOUS);
    let mut daemon = Daemon::new(&fx, "reload");
    fs::write(
        daemon.policy_dir.join("strict.toml"),
        "version = 1\nmode = \"enforce\"\n",
    )
    .unwrap();
    daemon.start();
    let run_strict = |daemon: &Daemon| {
        daemon
            .client_as_nobody(
                true,
                &fx.ws,
                &[
                    "run",
                    "--policy-name",
                    "strict",
                    "--",
                    PROBE,
                    "unlink",
                    &fx.s("prod/keep"),
                ],
            )
            .output()
            .unwrap()
    };
    let before = run_strict(&daemon);
    assert!(String::from_utf8_lossy(&before.stdout).starts_with("EPERM "));

    // An edit that breaks the file: the daemon notices the change itself, and SIGHUP too.
    fs::write(
        daemon.policy_dir.join("strict.toml"),
        "version = 1\nmode = \"sometimes\"\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the reload to be reported", || {
        !daemon.status()["reload"]["error"].is_null()
    });
    let status = daemon.client(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(1),
        "status says something is wrong: {text}"
    );
    assert!(
        text.contains("strict.toml:2:8"),
        "the error is located: {text}"
    );
    let after = run_strict(&daemon);
    assert!(
        String::from_utf8_lossy(&after.stdout).starts_with("EPERM "),
        "the old policy stays in force"
    );
    fx.assert_intact("prod/keep");
    let events = daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e["agent_guard"]["kind"] == "policy-reload"
                && e["event"]["outcome"] == "failure")
    );

    // Fixed: the next reload goes through.
    fs::write(daemon.policy_dir.join("strict.toml"), "version = 1\n").unwrap();
    wait_until("the fixed policy to be taken", || {
        daemon.status()["reload"]["error"].is_null()
    });
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn garbage_on_the_control_socket_gets_errors_and_the_daemon_keeps_serving() {
    let fx = Fixture::new("daemon-garbage");
    let mut daemon = Daemon::new(&fx, "garbage");
    daemon.start();
    let huge = vec![b'x'; 300 * 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary", b"\x00\x01\x02\xff\n".to_vec()),
        ("not json", b"hello daemon\n".to_vec()),
        ("unknown request", b"{\"request\":\"shutdown\"}\n".to_vec()),
        ("missing fields", b"{\"request\":\"run\"}\n".to_vec()),
        (
            "extra field",
            b"{\"request\":\"status\",\"as\":\"root\"}\n".to_vec(),
        ),
        ("oversized", huge),
    ];
    for (what, bytes) in cases {
        let reply = daemon.raw(&bytes);
        let reply: serde_json::Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{what}: the reply is not JSON ({e}): {reply:?}"));
        assert_eq!(reply["ok"], false, "{what}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {reply}"
        );
    }
    // A client that connects and says nothing, and one that hangs up mid-message.
    let silent = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let _ = daemon.raw(b"{\"request\":");
    assert!(
        daemon.client(&["status"]).status.success(),
        "{}",
        daemon.log()
    );
    drop(silent);
    // A `run` naming a process that is not the client's child is refused.
    let reply = daemon.raw(
        b"{\"request\":\"run\",\"pid\":1,\"cwd\":\"/\",\"command\":[\"x\"],\"policy\":null}\n",
    );
    assert!(
        reply.contains("is not a child of the requesting process"),
        "{reply}"
    );
    assert!(daemon.client(&["sessions"]).status.success());
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn the_base_policy_binds_every_session_through_the_daemon() {
    let fx = Fixture::new("daemon-base");
    open_to_nobody(&fx);
    fx.mkdir("ws/secrets");
    fs::set_permissions(fx.path("ws/secrets"), fs::Permissions::from_mode(0o777)).unwrap();
    fx.write("ws/secrets/token", PRECIOUS);
    fs::set_permissions(
        fx.path("ws/secrets/token"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let mut daemon = Daemon::new(&fx, "base");
    fs::write(
        &daemon.base,
        "version = 1\nextends = \"builtin:default\"\n[[rule]]\nname = \"no-secrets\"\naction = \"deny\"\npaths = [\"${WORKSPACE}/secrets\"]\n",
    )
    .unwrap();
    daemon.start();
    // The session's own policy is the default; the base still refuses the secrets.
    let out = daemon
        .client_as_nobody(
            true,
            &fx.ws,
            &[
                "run",
                "--events",
                "-",
                "--",
                PROBE,
                "unlink",
                "secrets/token",
            ],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("EPERM "), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("\"rule\":{\"name\":\"base:no-secrets\"}"),
        "{stderr}"
    );
    fx.assert_intact("ws/secrets/token");
    // A session policy that would open them up is refused, with the place to fix.
    let looser = fx.write(
        "looser.toml",
        "version = 1\n[[rule]]\nname = \"open\"\naction = \"allow\"\npaths = [\"${WORKSPACE}/secrets\"]\n",
    );
    fs::set_permissions(&looser, fs::Permissions::from_mode(0o644)).unwrap();
    let out = daemon
        .client_as_nobody(
            true,
            &fx.ws,
            &[
                "run",
                "--policy",
                looser.to_str().unwrap(),
                "--",
                PROBE,
                "unlink",
                "secrets/token",
            ],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("looser.toml:5:"),
        "the error is located: {stderr}"
    );
    assert!(out.stdout.is_empty(), "the command never ran");
    fx.assert_intact("ws/secrets/token");
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn attach_pid_guards_a_tree_that_is_already_running() {
    let fx = Fixture::new("daemon-attach");
    for name in ["before", "keep", "keep-child"] {
        fx.write(&format!("prod/{name}"), PRECIOUS);
    }
    let mut daemon = Daemon::new(&fx, "attach");
    daemon.start();
    let (ready, go, stop) = (fx.path("ready"), fx.path("go"), fx.path("stop"));
    // A tree started outside any session: a child that was forked before the attach keeps
    // trying, and the parent tries once before and once after. Their output goes to the
    // workspace: once attached, the tree may write nowhere else, through descriptors it
    // opened before the attach included.
    let script = format!(
        r#"( while [ ! -e {stop} ]; do [ -e {go} ] && {probe} unlink {keep_child}; sleep 0.05; done > {child_out} ) &
{probe} unlink {before} > {before_out}
touch {ready}
while [ ! -e {go} ]; do sleep 0.05; done
{probe} unlink {keep} > {after_out}
{probe} create {ws}/new > {create_out}
wait"#,
        stop = stop.display(),
        go = go.display(),
        ready = ready.display(),
        probe = PROBE,
        keep_child = fx.s("prod/keep-child"),
        keep = fx.s("prod/keep"),
        before = fx.s("prod/before"),
        ws = fx.ws.display(),
        child_out = fx.s("ws/child.out"),
        before_out = fx.s("ws/before.out"),
        after_out = fx.s("ws/after.out"),
        create_out = fx.s("ws/create.out"),
    );
    let mut tree = std::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(&fx.ws)
        .spawn()
        .expect("start the tree");
    wait_until("the tree to start", || ready.exists());
    assert!(
        !fx.path("prod/before").exists(),
        "unguarded, the tree could delete"
    );

    let attach = std::process::Command::new(crate::fixture::agent_guard_bin())
        .args(["attach", "--pid", &tree.id().to_string()])
        .env("AGENT_GUARD_SOCKET", &daemon.socket)
        .current_dir(&fx.ws)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&attach.stdout);
    assert!(
        attach.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&attach.stderr)
    );
    let id = said
        .split_whitespace()
        .nth(2)
        .expect("attach names the session")
        .to_owned();
    fs::write(&go, "").unwrap();
    wait_until("the tree's attempts after the attach", || {
        fx.path("ws/create.out").exists()
            && fs::read_to_string(fx.path("ws/child.out")).is_ok_and(|t| t.lines().count() >= 3)
    });
    fs::write(&stop, "").unwrap();
    assert!(tree.wait().unwrap().success());

    let read = |rel: &str| fs::read_to_string(fx.ws.join(rel)).unwrap_or_default();
    assert!(
        read("after.out").starts_with("EPERM "),
        "{}",
        read("after.out")
    );
    assert!(
        read("create.out").starts_with("ok "),
        "{}",
        read("create.out")
    );
    let child = read("child.out");
    assert!(
        child.lines().all(|l| l.starts_with("EPERM ")),
        "the child forked before the attach is guarded too:\n{child}"
    );
    fx.assert_intact("prod/keep");
    fx.assert_intact("prod/keep-child");
    wait_until("the attached session to end", || {
        daemon.events().iter().any(|e| {
            e["agent_guard"]["session"]["id"] == id.as_str()
                && e["agent_guard"]["kind"] == "session-end"
        })
    });
    let events = daemon.events();
    let denied: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| {
            e["agent_guard"]["session"]["id"] == id.as_str()
                && e["event"]["action"] == "unlink"
                && e["agent_guard"]["decision"] == "deny"
        })
        .collect();
    assert!(denied.len() >= 4, "{denied:?}");
    let start = events
        .iter()
        .find(|e| {
            e["agent_guard"]["session"]["id"] == id.as_str()
                && e["agent_guard"]["kind"] == "session-start"
        })
        .expect("a session-start record");
    assert_eq!(start["agent_guard"]["origin"], "attach");
    assert_eq!(start["process"]["pid"], tree.id());
}
