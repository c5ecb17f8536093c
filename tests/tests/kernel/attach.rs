//! Attaching a process tree that is already running (`Guard::attach_pids`), through the
//! library, as `agent-guard attach` does: the tree acts unguarded, is attached while it
//! waits, and from then on every process of it, those forked later included, is the
//! session's. A process of the tree that never reached a hook still counts as the
//! session's for signals, and the attachment leaves with the process.
use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::OpenOptionsExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use agent_guard::{
    bpf::Guard,
    events::{Decision, RuleId},
    policy::{Policy, SessionContext},
};

use crate::{
    fixture::{cpath, Fixture, PROBE},
    script::{outcomes, quote},
    session::WORKSPACE_POLICY,
};

const SESSION: u32 = 0x00a7_7ac4;

fn mkfifo(fx: &Fixture, rel: &str) -> String {
    let path = fx.path(rel);
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(cpath(&path).as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    path.display().to_string()
}

/// Lets a `read x < FIFO` go on.
fn release(fifo: &str) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .unwrap_or_else(|e| panic!("open {fifo}: {e}"));
    drop(file);
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    crate::fixture::wait_until(what, Duration::from_secs(120), done);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_running_tree_is_guarded_once_attached() {
    let fx = Fixture::new("attach");
    fx.protect(&["prod/before", "prod/after", "prod/forked-later"]);
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    let go = mkfifo(&fx, "ws/go.fifo");
    let go_child = mkfifo(&fx, "ws/go-child.fifo");
    let ready = fx.s("ws/ready");
    let p = quote(PROBE);
    // The root shell, a subshell and a sleeper all exist before the attach; the subshell's
    // probe is forked after it.
    let script = [
        format!(
            "printf '%s ' before; {p} unlink {}",
            quote(&fx.s("prod/before"))
        ),
        "sleep 600 & SLEEPER=$!".to_owned(),
        // Its own output file: its line and the root shell's would interleave.
        format!(
            "(read x < {}; printf '%s ' forked-later; {p} unlink {}) >{} &",
            quote(&go_child),
            quote(&fx.s("prod/forked-later")),
            quote(&fx.s("ws/out-child"))
        ),
        format!(": > {}", quote(&ready)),
        format!("read x < {}", quote(&go)),
        format!(
            "printf '%s ' after; {p} unlink {}",
            quote(&fx.s("prod/after"))
        ),
        format!("printf '%s ' term-sleeper; {p} kill $SLEEPER 15"),
        format!("printf '%s ' kill-bystander; {p} kill {} 9", bystander.id()),
        "wait".to_owned(),
    ]
    .join("\n");

    let policy = Policy::parse("attach.toml", WORKSPACE_POLICY).expect("parse the policy");
    let ctx = SessionContext {
        workspace: fx.ws.clone(),
        home: None,
    };
    let mut resolved = policy.resolve(&ctx).expect("resolve the policy");
    let mut guard = Guard::load().expect("load the guard");
    let mut events = guard.take_events().expect("the event ring");
    guard
        .identify_policy(&mut resolved)
        .expect("identify the policy's paths");
    guard
        .add_session(SESSION, &resolved)
        .expect("add the session");

    let out = File::create(fx.path("ws/out")).unwrap();
    let mut tree = Command::new("sh")
        .args(["-c", &script])
        .current_dir(&fx.ws)
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .unwrap();
    wait_until("the tree to be ready", || fx.path("ws/ready").exists());
    assert_eq!(guard.session_members(SESSION), 0, "nothing is attached yet");

    let attached = guard
        .attach_pids(SESSION, tree.id())
        .expect("attach the tree");
    // The root shell, the sleeper, the subshell: forked before the attach, all found.
    assert!(attached.contains(&tree.id()), "{attached:?}");
    assert_eq!(attached.len(), 3, "{attached:?}");
    assert!(guard.session_members(SESSION) >= 3);

    release(&go_child);
    release(&go);
    let status = tree.wait().unwrap();
    assert!(status.success(), "{status}");
    let stdout = fs::read_to_string(fx.path("ws/out")).unwrap()
        + &fs::read_to_string(fx.path("ws/out-child")).unwrap();
    let results = outcomes(&stdout);
    let result = |label: &str| {
        results
            .get(label)
            .unwrap_or_else(|| panic!("no outcome for {label}; stdout:\n{stdout}"))
    };
    assert_eq!(
        result("before").result,
        "ok",
        "before the attach: unguarded"
    );
    assert_eq!(result("after").result, "EPERM", "{stdout}");
    assert_eq!(result("forked-later").result, "EPERM", "{stdout}");
    // The sleeper never reached a hook, yet it is the session's own.
    assert_eq!(result("term-sleeper").result, "ok", "{stdout}");
    assert_eq!(result("kill-bystander").result, "EPERM", "{stdout}");
    assert!(
        matches!(bystander.try_wait(), Ok(None)),
        "the bystander died"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    fx.assert_absent("prod/before");
    fx.assert_intact("prod/after");
    fx.assert_intact("prod/forked-later");

    let mut decisions = Vec::new();
    while let Some(item) = events.next() {
        decisions.push(Decision::decode(&item).expect("decode an event"));
    }
    let find = |label: &str, op: &str| {
        let pid = result(label).pid;
        decisions
            .iter()
            .filter(|d| d.pid == pid && d.op == op)
            .collect::<Vec<_>>()
    };
    for label in ["after", "forked-later"] {
        let found = find(label, "unlink");
        assert_eq!(found.len(), 1, "{label}: {decisions:#?}");
        assert_eq!(found[0].session, SESSION);
        assert_eq!(found[0].decision, "deny");
        assert_eq!(found[0].rule, RuleId::Builtin("outside-writable-scope"));
        assert_eq!(found[0].paths, vec![fx.s(&format!("prod/{label}"))]);
    }
    let killed = find("kill-bystander", "signal");
    assert_eq!(killed.len(), 1, "{decisions:#?}");
    assert_eq!(killed[0].target_pid, bystander.id());
    assert_eq!(killed[0].rule, RuleId::Builtin("target-outside-session"));
    assert_eq!(
        decisions.len(),
        3,
        "no other decision was taken: {decisions:#?}"
    );

    // Every member has exited: the kernel forgets them (task_free runs after an RCU grace
    // period) and drops the attachment of each process as its leader is freed.
    wait_until("the session to empty", || {
        guard.session_members(SESSION) == 0
    });
    wait_until("the attachments to leave with their processes", || {
        guard.attached_processes(SESSION).is_empty()
    });
    guard.detach_all(SESSION).expect("detach");
    guard.remove_session(SESSION);
}
