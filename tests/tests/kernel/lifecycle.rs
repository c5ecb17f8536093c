//! The session as a whole: exit status, signals, audit mode, what must keep working, and a
//! bad policy.
use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _},
    process::Command,
};

use crate::{
    expect::deny,
    fixture::{agent_guard_bin, overwritten, Fixture, PRECIOUS},
    rule,
    script::Script,
    session::{Run, WORKSPACE_POLICY},
};

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn exit_status_passes_through_and_the_summary_counts_denials() {
    let fx = Fixture::new("exit7");
    fx.protect(&["prod/a", "prod/b"]);
    let script = Script::new(&fx)
        .probe("a", &["unlink", &fx.s("prod/a")])
        .probe("b", &["open-write", &fx.s("prod/b")])
        .sh("exit 7");
    let s = Run::script(&fx, script).finish();

    assert_eq!(s.code(), 7);
    let summary = s.summary();
    assert_eq!(
        (
            summary.status,
            summary.denied,
            summary.audited,
            summary.lost,
            summary.written
        ),
        (7, 2, 0, 0, 2),
        "{summary:?}"
    );
    s.assert_decisions(&[
        deny("unlink", &[&fx.s("prod/a")], rule::OUTSIDE, s.outcome("a")),
        deny(
            "open-write",
            &[&fx.s("prod/b")],
            rule::OUTSIDE,
            s.outcome("b"),
        ),
    ]);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn death_by_signal_is_reported_as_128_plus_n() {
    let fx = Fixture::new("killed");
    let s = Run::new(&fx, &["sh", "-c", "kill -TERM $$"]).finish();
    assert_eq!(s.code(), 128 + libc::SIGTERM);
    assert_eq!(s.summary().status, 143);
    s.assert_decisions(&[]);
}

/// SIGTERM and SIGINT sent to `run` reach the command, whose own exit status comes back.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn sigterm_and_sigint_to_run_reach_the_command() {
    for (signal, name, code) in [(libc::SIGTERM, "TERM", 42), (libc::SIGINT, "INT", 43)] {
        let fx = Fixture::new(&format!("sig{name}"));
        let script = format!("trap 'exit {code}' {name}; : >started; while :; do sleep 0.1; done");
        let mut run = Run::new(&fx, &["sh", "-c", &script]).start();
        run.wait_for_file(&fx.path("ws/started"));
        run.signal(signal);
        let s = run.finish();
        assert_eq!(
            s.code(),
            code,
            "SIG{name} to run should reach the command's trap; stderr:\n{}",
            s.stderr
        );
    }
}

/// Audit mode allows everything and reports what enforce mode would have refused.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn audit_mode_allows_and_reports() {
    let fx = Fixture::new("audit");
    fx.protect(&["prod/db", "prod/config"]);
    fx.write("ws/scratch", "tmp");
    let policy = WORKSPACE_POLICY.replace(r#"mode = "enforce""#, r#"mode = "audit""#);
    let script = Script::new(&fx)
        .probe("unlink", &["unlink", &fx.s("prod/db")])
        .probe("write", &["open-write", &fx.s("prod/config")])
        .probe("inside", &["unlink", "scratch"]);
    let s = Run::script(&fx, script).policy(&policy).finish();

    for label in ["unlink", "write", "inside"] {
        s.outcome(label).assert_ok();
    }
    fx.assert_absent("prod/db");
    fx.assert_content("prod/config", &overwritten(PRECIOUS));
    let summary = s.summary();
    assert_eq!(
        (summary.mode.as_str(), summary.denied, summary.audited),
        ("audit", 0, 2)
    );
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("unlink"),
        )
        .audited(),
        deny(
            "open-write",
            &[&fx.s("prod/config")],
            rule::OUTSIDE,
            s.outcome("write"),
        )
        .audited(),
    ]);
}

/// What a guard must never break: output sinks, terminals, pipes (anonymous and named,
/// wherever they live), memfds. A character device the policy does not list is refused.
/// Runs with the built-in policy, as a first-time user would.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn devices_pipes_and_terminals_stay_writable() {
    let fx = Fixture::new("devices");
    let (_master, slave, slave_path) = open_pty();
    let fifo = fx.path("prod/fifo");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(crate::fixture::cpath(&fifo).as_ptr(), 0o600) },
        0
    );
    let fifo = fifo.display().to_string();
    let script = Script::new(&fx)
        .probe("devnull", &["open-write", "/dev/null"])
        .sh(r#"echo hidden 2>/dev/null >/dev/null; echo "redirect-status $?""#)
        .probe("pty", &["open-write", &slave_path])
        .probe("tty", &["open-write", "/dev/tty"])
        // The probe writes into a pipe it reopens through /proc (fd 3); its result line
        // goes to the real stdout (fd 4).
        .sh(r#"exec 4>&1; printf 'pipe '; "$P" open-write /proc/self/fd/3 3>&1 >&4 | cat >/dev/null"#)
        .sh(&format!(
            r#"cat '{fifo}' >/dev/null & printf 'fifo '; "$P" open-write '{fifo}'; wait"#
        ))
        .probe("memfd", &["memfd"])
        .probe("kmsg", &["open-write", "/dev/kmsg"]);
    let s = Run::script(&fx, script)
        .builtin_policy()
        .controlling_terminal(&slave)
        .finish();

    assert!(
        s.stdout.contains("redirect-status 0"),
        "`cmd 2>/dev/null >/dev/null` must work; stdout:\n{}\nstderr:\n{}",
        s.stdout,
        s.stderr
    );
    for label in ["devnull", "pty", "tty", "pipe", "fifo", "memfd"] {
        s.outcome(label).assert_ok();
    }
    s.outcome("kmsg").assert_eperm();
    s.assert_decisions(&[deny(
        "open-write",
        &["/dev/kmsg"],
        rule::OUTSIDE,
        s.outcome("kmsg"),
    )]);
}

/// A pseudo-terminal pair (master, slave, slave path).
fn open_pty() -> (File, File, String) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: out-pointers to two ints; no name, termios or window size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors we now own.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .expect("name of the pty slave")
        .display()
        .to_string();
    (master, slave, path)
}

/// A bad policy stops `run` before anything is loaded or started, and says where and how
/// to fix it.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn bad_policy_is_refused_before_the_command_starts() {
    let fx = Fixture::new("badpolicy");
    let head = "version = 1\nmode = \"enforce\"\n\n[filesystem]\n";
    let relative = r#"writable = ["${WORKSPACE}", "build"]"#;
    let cases = [
        (
            "unknown key",
            format!("{head}writabel = [\"/tmp\"]\n"),
            5,
            1,
        ),
        (
            "relative path",
            format!("{head}{relative}\n"),
            5,
            relative.find("\"build\"").unwrap() + 1,
        ),
        (
            "bad mode",
            "version = 1\nmode = \"permissive\"\n".to_owned(),
            2,
            8,
        ),
    ];
    let policy = fx.path("bad.toml");
    let marker = fx.path("ws/command-ran");
    for (what, text, line, column) in cases {
        std::fs::write(&policy, &text).unwrap();
        let out = Command::new(agent_guard_bin())
            .arg("run")
            .arg("--policy")
            .arg(&policy)
            .arg("--events")
            .arg(fx.path("events.jsonl"))
            .args(["--", "touch"])
            .arg(&marker)
            .current_dir(&fx.ws)
            .output()
            .expect("run agent-guard");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit status; stderr:\n{stderr}"
        );
        let location = format!("{}:{line}:{column}: ", policy.display());
        assert!(
            stderr.contains(&location),
            "{what}: expected `{location}` in:\n{stderr}"
        );
        assert!(
            stderr.contains("hint: "),
            "{what}: expected a hint in:\n{stderr}"
        );
        assert!(!marker.exists(), "{what}: the command ran");
        assert!(
            !stderr.contains("agent-guard: session "),
            "{what}: a session was started:\n{stderr}"
        );
    }
}

/// A process's own /proc files are part of normal work (THREATS.md lists `/proc/self/...`
/// among what must keep working): naming itself, adjusting its OOM score, mapping ids in a
/// new user namespace (`unshare -r`, as sandboxes and rootless containers do).
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn own_proc_files_stay_writable() {
    let fx = Fixture::new("procself");
    let script = Script::new(&fx)
        .probe("comm", &["open-write", "/proc/self/comm", "renamed"])
        .probe(
            "oom-score",
            &["open-write", "/proc/self/oom_score_adj", "100"],
        )
        .sh(r#"unshare --user --map-root-user true; echo "map-root-user-status $?""#)
        // Not the session's own: init's files and the kernel's knobs stay protected.
        .probe("init-comm", &["open-write", "/proc/1/comm", "pwned"])
        .probe(
            "sysctl",
            &["open-write", "/proc/sys/kernel/hostname", "pwned"],
        );
    let s = Run::script(&fx, script).finish();

    let refused: Vec<&str> = s.log.decisions.iter().map(|e| e.line.as_str()).collect();
    s.assert_results(&[
        ("comm", "ok"),
        ("oom-score", "ok"),
        ("init-comm", "EPERM"),
        ("sysctl", "EPERM"),
    ]);
    assert!(
        s.stdout.contains("map-root-user-status 0"),
        "`unshare --user --map-root-user` failed; stderr:\n{}\nevents:\n{}",
        s.stderr,
        refused.join("\n")
    );
    s.assert_decisions(&[
        deny(
            "open-write",
            &["/proc/1/comm"],
            rule::OUTSIDE,
            s.outcome("init-comm"),
        ),
        deny(
            "open-write",
            &["/proc/sys/kernel/hostname"],
            rule::OUTSIDE,
            s.outcome("sysctl"),
        ),
    ]);
}
