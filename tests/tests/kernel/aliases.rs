//! Path aliases: every other way of naming a protected file must get the answer of the real
//! file, because the kernel decides on the object it resolved, not on the string.
use crate::{expect::deny, fixture::Fixture, rule, script::Script, session::Run};

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn aliases_get_the_answer_of_the_real_location() {
    let fx = Fixture::new("aliases");
    fx.protect(&[
        "prod/via-symlink",
        "prod/via-proc-root",
        "prod/via-proc-cwd",
        "prod/via-dotdot",
        "prod/via-deep-dotdot",
        "prod/via-bind",
        "prod/via-bind-renamed",
        "prod/hard",
        "prod/bystander-symlink",
        "prod/bystander-bind",
    ]);
    fx.mkdir("ws/sub");
    fx.write("ws/inner/f", "inner");
    // Made by the test process before the session starts: the session finds them in place.
    fx.symlink(&fx.prod, "ws/prod-link");
    fx.mkdir("ws/prod-bind");
    fx.bind_mount("prod", "ws/prod-bind");
    fx.mkdir("inner-bind");
    fx.bind_mount("ws/inner", "inner-bind");
    fx.hard_link("prod/hard", "ws/hard");

    let proc_root = format!("/proc/self/root{}", fx.s("prod/via-proc-root"));
    let script = Script::new(&fx)
        .probe("symlink-unlink", &["unlink", "prod-link/via-symlink"])
        .probe("symlink-write", &["open-write", "prod-link/via-symlink"])
        .probe("proc-root", &["unlink", &proc_root])
        .probe(
            "proc-cwd",
            &["unlink", "/proc/self/cwd/../prod/via-proc-cwd"],
        )
        .probe("dotdot", &["unlink", "../prod/via-dotdot"])
        .probe("deep-dotdot", &["unlink", "sub/../../prod/via-deep-dotdot"])
        .probe("bind-unlink", &["unlink", "prod-bind/via-bind"])
        .probe("bind-write", &["open-write", "prod-bind/via-bind"])
        // Renames cannot cross mounts (EXDEV), so the rename stays inside the bind mount.
        .probe(
            "bind-rename",
            &["rename", "prod-bind/via-bind-renamed", "prod-bind/renamed"],
        )
        .probe("hard-write", &["open-write", "hard"])
        .probe("hard-truncate", &["truncate", "hard"])
        // Removing the workspace's own name leaves the protected name alone: allowed.
        .probe("hard-unlink", &["unlink", "hard"])
        // The reverse alias: a workspace directory shown outside it is still the workspace.
        .probe(
            "inside-via-outside-bind",
            &["unlink", &fx.s("inner-bind/f")],
        )
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystanders = [
        fx.outsider(&["unlink", "prod-link/bystander-symlink"]),
        fx.outsider(&["unlink", "prod-bind/bystander-bind"]),
    ];
    let s = run.finish();

    for label in [
        "symlink-unlink",
        "symlink-write",
        "proc-root",
        "proc-cwd",
        "dotdot",
        "deep-dotdot",
        "bind-unlink",
        "bind-write",
        "bind-rename",
        "hard-write",
        "hard-truncate",
    ] {
        s.outcome(label).assert_eperm();
    }
    for file in [
        "prod/via-symlink",
        "prod/via-proc-root",
        "prod/via-proc-cwd",
        "prod/via-dotdot",
        "prod/via-deep-dotdot",
        "prod/via-bind",
        "prod/via-bind-renamed",
        "prod/hard",
    ] {
        fx.assert_intact(file);
    }
    s.outcome("hard-unlink").assert_ok();
    fx.assert_absent("ws/hard");
    s.outcome("inside-via-outside-bind").assert_ok();
    fx.assert_absent("ws/inner/f");
    for bystander in &bystanders {
        bystander.assert_ok();
    }
    fx.assert_absent("prod/bystander-symlink");
    fx.assert_absent("prod/bystander-bind");

    // Symlinks, /proc/self/... and `..` are resolved before the hook: the event names the
    // real file. A bind mount is a real path of its own; the event names the path through
    // the mount (as /proc/self/mountinfo would), while the decision followed the real one.
    let prod = |name: &str| fx.s(&format!("prod/{name}"));
    let bind = |name: &str| fx.s(&format!("ws/prod-bind/{name}"));
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&prod("via-symlink")],
            rule::OUTSIDE,
            s.outcome("symlink-unlink"),
        ),
        deny(
            "open-write",
            &[&prod("via-symlink")],
            rule::OUTSIDE,
            s.outcome("symlink-write"),
        ),
        deny(
            "unlink",
            &[&prod("via-proc-root")],
            rule::OUTSIDE,
            s.outcome("proc-root"),
        ),
        deny(
            "unlink",
            &[&prod("via-proc-cwd")],
            rule::OUTSIDE,
            s.outcome("proc-cwd"),
        ),
        deny(
            "unlink",
            &[&prod("via-dotdot")],
            rule::OUTSIDE,
            s.outcome("dotdot"),
        ),
        deny(
            "unlink",
            &[&prod("via-deep-dotdot")],
            rule::OUTSIDE,
            s.outcome("deep-dotdot"),
        ),
        deny(
            "unlink",
            &[&bind("via-bind")],
            rule::OUTSIDE,
            s.outcome("bind-unlink"),
        ),
        deny(
            "open-write",
            &[&bind("via-bind")],
            rule::OUTSIDE,
            s.outcome("bind-write"),
        ),
        deny(
            "rename",
            &[&bind("via-bind-renamed"), &bind("renamed")],
            rule::OUTSIDE,
            s.outcome("bind-rename"),
        ),
        deny(
            "open-write",
            &[&fx.s("ws/hard")],
            rule::MULTI_LINK,
            s.outcome("hard-write"),
        ),
        deny(
            "truncate",
            &[&fx.s("ws/hard")],
            rule::MULTI_LINK,
            s.outcome("hard-truncate"),
        ),
    ]);
}

/// Where the kernel cannot place a file within its walk bound, it refuses: fail closed,
/// even inside the workspace.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn paths_deeper_than_the_walk_bound_are_refused() {
    let fx = Fixture::new("deep");
    let shallow = format!("ws/{}f", "d/".repeat(10));
    let deep = format!("ws/{}f", "d/".repeat(70));
    fx.write(&shallow, "shallow");
    fx.write(&deep, "deep");
    let script = Script::new(&fx)
        .probe("shallow", &["unlink", shallow.trim_start_matches("ws/")])
        .probe("deep", &["unlink", deep.trim_start_matches("ws/")]);
    let s = Run::script(&fx, script).finish();

    s.outcome("shallow").assert_ok();
    fx.assert_absent(&shallow);
    s.outcome("deep").assert_eperm();
    fx.assert_content(&deep, "deep");
    s.assert_decisions(&[
        deny("unlink", &[""], rule::TOO_DEEP, s.outcome("deep")).truncated_path("/d/d/d/f")
    ]);
}
