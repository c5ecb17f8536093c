//! Destruction without unlink, beyond the operations of issue #2 item 4 (THREATS.md):
//! changing a protected file's mode, owner or extended attributes, punching holes in it,
//! writing it through a shared mapping or copy_file_range.
//!
//! Through a path, the last three need a descriptor open for writing, which the session
//! cannot get: the open is what is refused here. Through a descriptor inherited from outside
//! the session the write itself is refused; `coverage` proves that for every way of writing
//! (and `operations::ftruncate_including_inherited_descriptors` for ftruncate).
use std::{fs, os::unix::fs::MetadataExt as _};

use crate::{expect::deny, fixture::Fixture, rule, script::Script, session::Run};

const XATTR: &str = "trusted.agent-guard-test";

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn mode_owner_xattr_hole_punching_mmap_and_copy_outside_the_scope_are_refused() {
    let fx = Fixture::new_in("metadata", "/dev/shm");
    fx.write("ws/own", "own");
    fx.write("ws/replacement", "replacement");
    let victims = [
        "prod/mode",
        "prod/owner",
        "prod/xattr",
        "prod/punch",
        "prod/mmap",
        "prod/copy",
    ];
    fx.protect(&victims);
    fx.protect(&["prod/bystander"]);
    let script = Script::new(&fx)
        .probe("chmod-inside", &["chmod", "own", "600"])
        .probe("chown-inside", &["chown", "own", "65534", "65534"])
        .probe("xattr-inside", &["setxattr", "own", XATTR, "x"])
        .probe("chmod", &["chmod", &fx.s("prod/mode"), "000"])
        .probe("chown", &["chown", &fx.s("prod/owner"), "65534", "65534"])
        .probe("xattr", &["setxattr", &fx.s("prod/xattr"), XATTR, "x"])
        .probe("punch", &["punch-hole", &fx.s("prod/punch")])
        .probe("mmap", &["mmap-write", &fx.s("prod/mmap")])
        .probe("copy", &["copy-into", "replacement", &fx.s("prod/copy")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["chmod", &fx.s("prod/bystander"), "000"]);
    let s = run.finish();

    s.assert_results(&[
        ("chmod-inside", "ok"),
        ("chown-inside", "ok"),
        ("xattr-inside", "ok"),
        ("chmod", "EPERM"),
        ("chown", "EPERM"),
        ("xattr", "EPERM"),
        ("punch", "EPERM"),
        ("mmap", "EPERM"),
        ("copy", "EPERM"),
    ]);
    for victim in victims {
        fx.assert_intact(victim);
    }
    let meta = |rel: &str| fs::metadata(fx.path(rel)).unwrap();
    assert_eq!(meta("prod/mode").mode() & 0o777, 0o644, "mode of prod/mode");
    assert_eq!(meta("prod/owner").uid(), 0, "owner of prod/owner");
    assert!(!fx.has_xattr("prod/xattr", XATTR), "prod/xattr got {XATTR}");
    bystander.assert_ok();
    assert_eq!(meta("prod/bystander").mode() & 0o777, 0);

    let at = |rel: &str| fx.s(rel);
    s.assert_decisions(&[
        deny(
            "chmod",
            &[&at("prod/mode")],
            rule::OUTSIDE,
            s.outcome("chmod"),
        ),
        deny(
            "chown",
            &[&at("prod/owner")],
            rule::OUTSIDE,
            s.outcome("chown"),
        ),
        deny(
            "setxattr",
            &[&at("prod/xattr")],
            rule::OUTSIDE,
            s.outcome("xattr"),
        )
        // The xattr hooks carry no mount: the path is known up to /dev/shm's root only.
        .truncated_path(&format!(
            "/{}/prod/xattr",
            fx.root.file_name().unwrap().to_string_lossy()
        )),
        deny(
            "open-write",
            &[&at("prod/punch")],
            rule::OUTSIDE,
            s.outcome("punch"),
        ),
        deny(
            "open-write",
            &[&at("prod/mmap")],
            rule::OUTSIDE,
            s.outcome("mmap"),
        ),
        deny(
            "open-write",
            &[&at("prod/copy")],
            rule::OUTSIDE,
            s.outcome("copy"),
        ),
    ]);
}
