//! io_uring performs filesystem operations without the matching system calls, often in a
//! kernel worker thread (`iou-wrk-*`). The LSM hooks sit below both paths, so the answers
//! must be the same as for the system calls.
use crate::{expect::deny, fixture::Fixture, rule, script::Script, session::Run};

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn io_uring_unlinkat_renameat_and_openat() {
    let fx = Fixture::new("uring");
    fx.write("ws/u", "u");
    fx.write("ws/r", "r");
    fx.write("ws/t", "t");
    fx.protect(&[
        "prod/u",
        "prod/r",
        "prod/t",
        "prod/bystander-u",
        "prod/bystander-r",
        "prod/bystander-t",
    ]);
    let script = Script::new(&fx)
        .probe("unlink-inside", &["uring-unlink", "u"])
        .probe("unlink-outside", &["uring-unlink", &fx.s("prod/u")])
        .probe("rename-inside", &["uring-rename", "r", "r.moved"])
        .probe(
            "rename-outside",
            &["uring-rename", &fx.s("prod/r"), "r.stolen"],
        )
        .probe("trunc-inside", &["uring-open-trunc", "t"])
        .probe("trunc-outside", &["uring-open-trunc", &fx.s("prod/t")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystanders = [
        fx.outsider(&["uring-unlink", &fx.s("prod/bystander-u")]),
        fx.outsider(&[
            "uring-rename",
            &fx.s("prod/bystander-r"),
            &fx.s("prod/bystander-r.moved"),
        ]),
        fx.outsider(&["uring-open-trunc", &fx.s("prod/bystander-t")]),
    ];
    let s = run.finish();

    s.outcome("unlink-inside").assert_ok();
    fx.assert_absent("ws/u");
    s.outcome("rename-inside").assert_ok();
    fx.assert_content("ws/r.moved", "r");
    s.outcome("trunc-inside").assert_ok();
    fx.assert_content("ws/t", "");
    for label in ["unlink-outside", "rename-outside", "trunc-outside"] {
        s.outcome(label).assert_eperm();
    }
    fx.assert_intact("prod/u");
    fx.assert_intact("prod/r");
    fx.assert_absent("ws/r.stolen");
    fx.assert_intact("prod/t");
    for bystander in &bystanders {
        bystander.assert_ok();
    }
    fx.assert_absent("prod/bystander-u");
    fx.assert_intact("prod/bystander-r.moved");
    fx.assert_content("prod/bystander-t", "");
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&fx.s("prod/u")],
            rule::OUTSIDE,
            s.outcome("unlink-outside"),
        )
        .via_io_uring(),
        deny(
            "rename",
            &[&fx.s("prod/r"), &fx.s("ws/r.stolen")],
            rule::OUTSIDE,
            s.outcome("rename-outside"),
        )
        .via_io_uring(),
        deny(
            "open-write",
            &[&fx.s("prod/t")],
            rule::OUTSIDE,
            s.outcome("trunc-outside"),
        )
        .via_io_uring(),
    ]);
}

/// Creation through io_uring (IORING_OP_OPENAT with O_CREAT, IORING_OP_MKDIRAT) meets the
/// same hooks as creat(2) and mkdir(2).
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn io_uring_creation() {
    let fx = Fixture::new("uring-create");
    let script = Script::new(&fx)
        .probe("create-inside", &["uring-create", "new-file"])
        .probe("mkdir-inside", &["uring-mkdir", "new-dir"])
        .probe("create-outside", &["uring-create", &fx.s("prod/planted")])
        .probe("mkdir-outside", &["uring-mkdir", &fx.s("prod/planted-dir")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["uring-mkdir", &fx.s("prod/bystander-dir")]);
    let s = run.finish();

    s.assert_results(&[
        ("create-inside", "ok"),
        ("mkdir-inside", "ok"),
        ("create-outside", "EPERM"),
        ("mkdir-outside", "EPERM"),
    ]);
    fx.assert_exists("ws/new-file");
    fx.assert_exists("ws/new-dir");
    fx.assert_absent("prod/planted");
    fx.assert_absent("prod/planted-dir");
    bystander.assert_ok();
    fx.assert_exists("prod/bystander-dir");
    s.assert_decisions(&[
        deny(
            "create",
            &[&fx.s("prod/planted")],
            rule::OUTSIDE,
            s.outcome("create-outside"),
        )
        .via_io_uring(),
        deny(
            "mkdir",
            &[&fx.s("prod/planted-dir")],
            rule::OUTSIDE,
            s.outcome("mkdir-outside"),
        )
        .via_io_uring(),
    ]);
}
