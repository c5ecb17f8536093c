//! Leaving the tree: processes that detach from the command, change namespaces or change
//! credentials are still the session's, and `run` waits for the last of them.
use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
};

use crate::{
    expect::deny,
    fixture::{Fixture, PROBE},
    rule,
    script::{Outcome, Script},
    session::Run,
};

/// nobody:nogroup on Debian.
const NOBODY: u32 = 65_534;
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn detached_namespaced_and_setuid_processes_stay_guarded() {
    let fx = Fixture::new("escape");
    fx.protect(&[
        "prod/daemon-victim",
        "prod/nohup-victim",
        "prod/userns-victim",
        "prod/ns-victim",
        "prod/setuid-victim",
    ]);
    // A directory anyone may write, so that for nobody only the guard stands in the way.
    fx.mkdir("shared");
    fs::set_permissions(fx.path("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    fx.protect(&["shared/nobody-victim", "shared/bystander"]);
    // A setuid-root copy of the probe: run by nobody, it acts with euid 0.
    let setuid_probe = fx.path("setuid-probe");
    fs::copy(PROBE, &setuid_probe).unwrap();
    fs::set_permissions(&setuid_probe, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_setuid_honoured(&fx);
    let setuid_probe = setuid_probe.display().to_string();

    let daemon_out = fx.s("ws/daemon.out");
    let nohup_line = format!(
        "nohup sh -c 'sleep 2; exec \"$P\" unlink {}' >nohup.out 2>&1 &",
        fx.s("prod/nohup-victim")
    );
    let script = Script::new(&fx)
        .probe_via(
            "userns",
            // No uid map: writing /proc/self/uid_map is a separate question
            // (lifecycle::own_proc_files_stay_writable).
            &["unshare", "--user"],
            &["unlink", &fx.s("prod/userns-victim")],
        )
        // `--propagation unchanged`: making mounts private is itself a mount(2), refused.
        .probe_via(
            "namespaces",
            &[
                "unshare",
                "--mount",
                "--propagation",
                "unchanged",
                "--pid",
                "--fork",
                "--net",
                "--ipc",
                "--uts",
            ],
            &["unlink", &fx.s("prod/ns-victim")],
        )
        .probe_via(
            "nobody",
            &AS_NOBODY,
            &["unlink", &fx.s("shared/nobody-victim")],
        )
        .labelled(
            "setuid",
            &AS_NOBODY,
            &setuid_probe,
            &["unlink", &fx.s("prod/setuid-victim")],
        )
        .pause()
        // Both act seconds after the command has exited.
        .probe(
            "daemon",
            &[
                "daemon",
                &daemon_out,
                "3000",
                "unlink",
                &fx.s("prod/daemon-victim"),
            ],
        )
        .sh(&nohup_line)
        .sh("exit 0");
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    // The same unlink by nobody outside the session works: the refusal above is the guard's.
    let bystander = fx.outsider_via(&AS_NOBODY, &["unlink", &fx.s("shared/bystander")]);
    let s = run.finish();

    assert_eq!(s.code(), 0, "the command's own exit status");
    // `run` returned only after the detached processes acted: their results are there.
    let daemon = result_file(&fx, "ws/daemon.out", "daemon");
    let nohup = result_file(&fx, "ws/nohup.out", "nohup");
    s.outcome("daemon").assert_ok();
    for outcome in [&daemon, &nohup] {
        outcome.assert_eperm();
        assert_eq!(
            outcome.ppid, s.run_pid,
            "{} was re-parented to `run`, the session's subreaper",
            outcome.label
        );
    }
    for label in ["userns", "namespaces", "nobody", "setuid"] {
        s.outcome(label).assert_eperm();
    }
    for victim in [
        "prod/daemon-victim",
        "prod/nohup-victim",
        "prod/userns-victim",
        "prod/ns-victim",
        "prod/setuid-victim",
        "shared/nobody-victim",
    ] {
        fx.assert_intact(victim);
    }
    bystander.assert_ok();
    fx.assert_absent("shared/bystander");

    s.assert_decisions(&[
        deny(
            "unlink",
            &[&fx.s("prod/daemon-victim")],
            rule::OUTSIDE,
            &daemon,
        ),
        deny(
            "unlink",
            &[&fx.s("prod/nohup-victim")],
            rule::OUTSIDE,
            &nohup,
        ),
        deny(
            "unlink",
            &[&fx.s("prod/userns-victim")],
            rule::OUTSIDE,
            s.outcome("userns"),
        ),
        // In its own pid namespace the probe sees itself as pid 1; events carry host pids.
        deny(
            "unlink",
            &[&fx.s("prod/ns-victim")],
            rule::OUTSIDE,
            s.outcome("namespaces"),
        )
        .any_pid(),
        deny(
            "unlink",
            &[&fx.s("shared/nobody-victim")],
            rule::OUTSIDE,
            s.outcome("nobody"),
        )
        .ids(NOBODY, NOBODY),
        // uid is the real uid: still nobody, although the process acts as root.
        deny(
            "unlink",
            &[&fx.s("prod/setuid-victim")],
            rule::OUTSIDE,
            s.outcome("setuid"),
        )
        .ids(NOBODY, NOBODY)
        .program(&setuid_probe),
    ]);
}

/// A result line a detached probe wrote to `rel`.
fn result_file(fx: &Fixture, rel: &str, label: &str) -> Outcome {
    let text = fx
        .read(rel)
        .unwrap_or_else(|| panic!("{rel} is missing: `run` returned before the {label} acted"));
    text.lines()
        .rev()
        .find_map(|line| Outcome::parse(label, line))
        .unwrap_or_else(|| panic!("{rel} holds no result: {text:?}"))
}

/// The setuid test needs a filesystem without `nosuid` under the fixture.
fn assert_setuid_honoured(fx: &Fixture) {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = crate::fixture::cpath(&fx.root);
    // SAFETY: statvfs into a valid buffer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert!(
        st.f_flag & libc::ST_NOSUID == 0,
        "{} is mounted nosuid; the setuid case cannot run here",
        fx.root.display()
    );
    let meta = fs::metadata(fx.path("setuid-probe")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o4000), (0, 0o4000));
}
