//! One test per destructive operation of issue #2, each proving the four things: allowed
//! inside the workspace, EPERM outside with the target unchanged, reported with the right
//! fields, and untouched for a bystander outside the session.
use std::fs::{self, OpenOptions};

use crate::{
    expect::deny,
    fixture::{overwritten, Fixture, PRECIOUS, PROBE_WRITES},
    rule,
    script::Script,
    session::{Run, WORKSPACE_POLICY},
};

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn unlink() {
    let fx = Fixture::new("unlink");
    fx.write("ws/scratch", "tmp");
    fx.protect(&["prod/db.sqlite", "prod/bystander"]);
    let script = Script::new(&fx)
        .probe("inside", &["unlink", "scratch"])
        .probe("outside", &["unlink", &fx.s("prod/db.sqlite")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["unlink", &fx.s("prod/bystander")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_absent("ws/scratch");
    s.outcome("outside").assert_eperm();
    fx.assert_intact("prod/db.sqlite");
    bystander.assert_ok();
    fx.assert_absent("prod/bystander");
    s.assert_decisions(&[deny(
        "unlink",
        &[&fx.s("prod/db.sqlite")],
        rule::OUTSIDE,
        s.outcome("outside"),
    )]);
    assert_eq!(s.code(), 0);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn rmdir_and_scope_roots() {
    let fx = Fixture::new("rmdir");
    for dir in ["ws/empty", "ws/cache", "prod/empty", "prod/bystander"] {
        fx.mkdir(dir);
    }
    // A second scope nested in the first: its parent is writable, but the scope itself must
    // not be removable, or the session could delete what the policy protects by name.
    let policy = WORKSPACE_POLICY.replace(
        r#"writable = ["${WORKSPACE}"]"#,
        r#"writable = ["${WORKSPACE}", "${WORKSPACE}/cache"]"#,
    );
    let script = Script::new(&fx)
        .probe("inside", &["rmdir", "empty"])
        .probe("outside", &["rmdir", &fx.s("prod/empty")])
        .probe("scope-root", &["rmdir", "cache"])
        .pause();
    let mut run = Run::script(&fx, script).policy(&policy).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["rmdir", &fx.s("prod/bystander")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_absent("ws/empty");
    s.outcome("outside").assert_eperm();
    fx.assert_exists("prod/empty");
    s.outcome("scope-root").assert_eperm();
    fx.assert_exists("ws/cache");
    bystander.assert_ok();
    fx.assert_absent("prod/bystander");
    s.assert_decisions(&[
        deny(
            "rmdir",
            &[&fx.s("prod/empty")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
        deny(
            "rmdir",
            &[&fx.s("ws/cache")],
            rule::SCOPE_ROOT,
            s.outcome("scope-root"),
        ),
    ]);
}

/// Renames destroy without unlinking: moving a protected file away (even into the
/// workspace), renaming over one, or moving the protected tree itself.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn rename() {
    let fx = Fixture::new("rename");
    fx.write("ws/draft", "draft");
    fx.write("ws/evil", "replacement");
    fx.protect(&["prod/db", "prod/config", "prod/bystander"]);
    let script = Script::new(&fx)
        .probe("inside", &["rename", "draft", "final"])
        .probe("steal", &["rename", &fx.s("prod/db"), "db"])
        .probe("over", &["rename", "evil", &fx.s("prod/config")])
        .probe("tree-away", &["rename", &fx.s("prod"), &fx.s("prod.old")])
        .probe("tree-in", &["rename", &fx.s("prod"), "prod"])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["rename", &fx.s("prod/bystander"), &fx.s("prod/moved")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/final", "draft");
    fx.assert_absent("ws/draft");
    for label in ["steal", "over", "tree-away", "tree-in"] {
        s.outcome(label).assert_eperm();
    }
    fx.assert_intact("prod/db");
    fx.assert_absent("ws/db");
    fx.assert_intact("prod/config");
    fx.assert_content("ws/evil", "replacement");
    fx.assert_absent("prod.old");
    fx.assert_absent("ws/prod");
    bystander.assert_ok();
    fx.assert_intact("prod/moved");
    s.assert_decisions(&[
        deny(
            "rename",
            &[&fx.s("prod/db"), &fx.s("ws/db")],
            rule::OUTSIDE,
            s.outcome("steal"),
        ),
        deny(
            "rename",
            &[&fx.s("ws/evil"), &fx.s("prod/config")],
            rule::OUTSIDE,
            s.outcome("over"),
        ),
        deny(
            "rename",
            &[&fx.s("prod"), &fx.s("prod.old")],
            rule::OUTSIDE,
            s.outcome("tree-away"),
        ),
        deny(
            "rename",
            &[&fx.s("prod"), &fx.s("ws/prod")],
            rule::OUTSIDE,
            s.outcome("tree-in"),
        ),
    ]);
}

/// RENAME_EXCHANGE swaps two names atomically: a protected file swapped with a workspace
/// file would be replaced without ever being unlinked or overwritten.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn rename_exchange() {
    let fx = Fixture::new("exchange");
    fx.write("ws/a", "a");
    fx.write("ws/b", "b");
    fx.write("ws/decoy", "decoy");
    fx.protect(&["prod/db"]);
    fx.write("prod/x", "x");
    fx.write("prod/y", "y");
    let script = Script::new(&fx)
        .probe("inside", &["exchange", "a", "b"])
        .probe("outside", &["exchange", "decoy", &fx.s("prod/db")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["exchange", &fx.s("prod/x"), &fx.s("prod/y")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/a", "b");
    fx.assert_content("ws/b", "a");
    s.outcome("outside").assert_eperm();
    fx.assert_intact("prod/db");
    fx.assert_content("ws/decoy", "decoy");
    bystander.assert_ok();
    fx.assert_content("prod/x", "y");
    s.assert_decisions(&[deny(
        "rename",
        &[&fx.s("ws/decoy"), &fx.s("prod/db")],
        rule::OUTSIDE,
        s.outcome("outside"),
    )]);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn truncate() {
    let fx = Fixture::new("truncate");
    fx.write("ws/log", "log lines");
    fx.protect(&["prod/db", "prod/bystander"]);
    let script = Script::new(&fx)
        .probe("inside", &["truncate", "log"])
        .probe("outside", &["truncate", &fx.s("prod/db")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["truncate", &fx.s("prod/bystander")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/log", "");
    s.outcome("outside").assert_eperm();
    fx.assert_intact("prod/db");
    bystander.assert_ok();
    fx.assert_content("prod/bystander", "");
    s.assert_decisions(&[deny(
        "truncate",
        &[&fx.s("prod/db")],
        rule::OUTSIDE,
        s.outcome("outside"),
    )]);
}

/// ftruncate(2) needs a descriptor open for writing: the session cannot open one outside
/// its scope, but it may have inherited one from whoever started it.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn ftruncate_including_inherited_descriptors() {
    let fx = Fixture::new("ftruncate");
    fx.write("ws/log", "log lines");
    fx.protect(&["prod/db", "prod/inherited", "prod/bystander"]);
    let inherited = OpenOptions::new()
        .write(true)
        .open(fx.path("prod/inherited"))
        .expect("open prod/inherited for writing, outside any session");
    let script = Script::new(&fx)
        .probe("inside", &["ftruncate", "log"])
        .probe("outside", &["ftruncate", &fx.s("prod/db")])
        .probe("inherited", &["ftruncate-fd", "9"])
        .pause();
    let mut run = Run::script(&fx, script).inherit(&inherited, 9).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["ftruncate", &fx.s("prod/bystander")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/log", "");
    // The open for writing is what the kernel refuses here, before ftruncate is reached.
    s.outcome("outside").assert_eperm();
    fx.assert_intact("prod/db");
    s.outcome("inherited").assert_eperm();
    fx.assert_intact("prod/inherited");
    bystander.assert_ok();
    fx.assert_content("prod/bystander", "");
    s.assert_decisions(&[
        deny(
            "open-write",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
        deny(
            "truncate",
            &[&fx.s("prod/inherited")],
            rule::OUTSIDE,
            s.outcome("inherited"),
        ),
    ]);
}

/// O_TRUNC truncates even with O_RDONLY on Linux, so both access modes are tried. With
/// O_WRONLY the open itself is refused; with O_RDONLY the open is harmless and the
/// truncation is what the kernel refuses.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn open_with_o_trunc() {
    let fx = Fixture::new("otrunc");
    fx.write("ws/w", "w");
    fx.write("ws/r", "r");
    fx.protect(&["prod/db", "prod/bystander-w", "prod/bystander-r"]);
    let script = Script::new(&fx)
        .probe("inside-wronly", &["open-trunc", "w", "wronly"])
        .probe("inside-rdonly", &["open-trunc", "r", "rdonly"])
        .probe(
            "outside-wronly",
            &["open-trunc", &fx.s("prod/db"), "wronly"],
        )
        .probe(
            "outside-rdonly",
            &["open-trunc", &fx.s("prod/db"), "rdonly"],
        )
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander_w = fx.outsider(&["open-trunc", &fx.s("prod/bystander-w"), "wronly"]);
    let bystander_r = fx.outsider(&["open-trunc", &fx.s("prod/bystander-r"), "rdonly"]);
    let s = run.finish();

    s.outcome("inside-wronly").assert_ok();
    fx.assert_content("ws/w", "");
    s.outcome("inside-rdonly").assert_ok();
    fx.assert_content("ws/r", "");
    s.outcome("outside-wronly").assert_eperm();
    s.outcome("outside-rdonly").assert_eperm();
    fx.assert_intact("prod/db");
    bystander_w.assert_ok();
    bystander_r.assert_ok();
    fx.assert_content("prod/bystander-w", "");
    fx.assert_content("prod/bystander-r", "");
    s.assert_decisions(&[
        deny(
            "open-write",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("outside-wronly"),
        ),
        deny(
            "truncate",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("outside-rdonly"),
        ),
    ]);
}

/// Opening an existing file for writing outside the scope is refused; so is writing a
/// workspace file that has a second name (it may be a protected file's other name). New
/// files may still be created anywhere: issue #2 leaves creation to later policy rules.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn open_existing_file_for_writing() {
    let fx = Fixture::new("openwrite");
    fx.write("ws/notes", "notes");
    fx.write("ws/pair-a", "pair");
    fx.hard_link("ws/pair-a", "ws/pair-b");
    fx.protect(&["prod/config", "prod/bystander"]);
    let script = Script::new(&fx)
        .probe("inside", &["open-write", "notes"])
        .probe("outside", &["open-write", &fx.s("prod/config")])
        .probe("multi-link", &["open-write", "pair-a"])
        .probe("create-outside", &["create", &fx.s("prod/new-file")])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["open-write", &fx.s("prod/bystander")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/notes", PROBE_WRITES);
    s.outcome("outside").assert_eperm();
    fx.assert_intact("prod/config");
    s.outcome("multi-link").assert_eperm();
    fx.assert_content("ws/pair-a", "pair");
    s.outcome("create-outside").assert_eperm();
    fx.assert_absent("prod/new-file");
    bystander.assert_ok();
    fx.assert_content("prod/bystander", &overwritten(PRECIOUS));
    s.assert_decisions(&[
        deny(
            "open-write",
            &[&fx.s("prod/config")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
        deny(
            "open-write",
            &[&fx.s("ws/pair-a")],
            rule::MULTI_LINK,
            s.outcome("multi-link"),
        ),
        deny(
            "create",
            &[&fx.s("prod/new-file")],
            rule::OUTSIDE,
            s.outcome("create-outside"),
        ),
    ]);
}

/// Planting is as harmful as destroying (a new file in /etc/cron.d): outside the scope the
/// session creates no file, fifo, directory, symlink or hard link.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn creation() {
    let fx = Fixture::new("create");
    fx.write("ws/file", "file");
    fx.write("prod/existing", "existing");
    let script = Script::new(&fx)
        .probe("file-inside", &["create", "new-file"])
        .probe("dir-inside", &["mkdir", "new-dir"])
        .probe("fifo-inside", &["mkfifo", "new-fifo"])
        .probe("symlink-inside", &["symlink", "file", "new-link"])
        .probe("file", &["create", &fx.s("prod/planted")])
        .probe("dir", &["mkdir", &fx.s("prod/planted-dir")])
        .probe("fifo", &["mkfifo", &fx.s("prod/planted-fifo")])
        .probe(
            "symlink",
            &["symlink", "/etc/passwd", &fx.s("prod/planted-link")],
        )
        .probe(
            "link-out",
            &["link", "file", &fx.s("prod/planted-hardlink")],
        )
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["mkdir", &fx.s("prod/bystander-dir")]);
    let s = run.finish();

    s.assert_results(&[
        ("file-inside", "ok"),
        ("dir-inside", "ok"),
        ("fifo-inside", "ok"),
        ("symlink-inside", "ok"),
        ("file", "EPERM"),
        ("dir", "EPERM"),
        ("fifo", "EPERM"),
        ("symlink", "EPERM"),
        ("link-out", "EPERM"),
    ]);
    for planted in [
        "planted",
        "planted-dir",
        "planted-fifo",
        "planted-link",
        "planted-hardlink",
    ] {
        fx.assert_absent(&format!("prod/{planted}"));
    }
    for made in ["new-file", "new-dir", "new-fifo", "new-link"] {
        fx.assert_exists(&format!("ws/{made}"));
    }
    bystander.assert_ok();
    fx.assert_exists("prod/bystander-dir");
    s.assert_decisions(&[
        deny(
            "create",
            &[&fx.s("prod/planted")],
            rule::OUTSIDE,
            s.outcome("file"),
        ),
        deny(
            "mkdir",
            &[&fx.s("prod/planted-dir")],
            rule::OUTSIDE,
            s.outcome("dir"),
        ),
        deny(
            "create",
            &[&fx.s("prod/planted-fifo")],
            rule::OUTSIDE,
            s.outcome("fifo"),
        ),
        deny(
            "symlink",
            &[&fx.s("prod/planted-link")],
            rule::OUTSIDE,
            s.outcome("symlink"),
        ),
        deny(
            "link",
            &[&fx.s("ws/file"), &fx.s("prod/planted-hardlink")],
            rule::OUTSIDE,
            s.outcome("link-out"),
        ),
    ]);
}

/// A hard link made inside the workspace to a protected file would give the session a
/// second, writable-looking name for it.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn link() {
    let fx = Fixture::new("link");
    fx.write("ws/file", "file");
    fx.protect(&["prod/db"]);
    let script = Script::new(&fx)
        .probe("inside", &["link", "file", "file.2"])
        .probe("outside", &["link", &fx.s("prod/db"), "db.alias"])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["link", &fx.s("prod/db"), &fx.s("prod/db.backup")]);
    let s = run.finish();

    s.outcome("inside").assert_ok();
    fx.assert_content("ws/file.2", "file");
    s.outcome("outside").assert_eperm();
    fx.assert_absent("ws/db.alias");
    fx.assert_intact("prod/db");
    bystander.assert_ok();
    fx.assert_intact("prod/db.backup");
    s.assert_decisions(&[deny(
        "link",
        &[&fx.s("prod/db"), &fx.s("ws/db.alias")],
        rule::OUTSIDE,
        s.outcome("outside"),
    )]);
}

/// A session mounts nothing, not even inside its workspace: a mount can hide a protected
/// tree ("mount over it") or show one inside the scope. Both mount APIs are tried.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn mount() {
    let fx = Fixture::new("mount");
    fx.mkdir("ws/src");
    fx.mkdir("ws/dst");
    fx.mkdir("bystander-mnt");
    fx.protect(&["prod/db"]);
    let script = Script::new(&fx)
        .probe("bind", &["mount-bind", "src", "dst"])
        .probe("tmpfs-over-prod", &["mount-tmpfs", &fx.s("prod")])
        .probe("move-mount", &["move-mount", "src", "dst"])
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["mount-tmpfs", &fx.s("bystander-mnt")]);
    let mounts_during = fx.mounts();
    let s = run.finish();

    for label in ["bind", "tmpfs-over-prod", "move-mount"] {
        s.outcome(label).assert_eperm();
    }
    bystander.assert_ok();
    assert_eq!(
        mounts_during,
        vec![fx.path("bystander-mnt")],
        "only the bystander's mount exists"
    );
    fx.assert_intact("prod/db");
    s.assert_decisions(&[
        deny(
            "mount",
            &[&fx.s("ws/dst")],
            rule::NO_MOUNT,
            s.outcome("bind"),
        ),
        deny(
            "mount",
            &[&fx.s("prod")],
            rule::NO_MOUNT,
            s.outcome("tmpfs-over-prod"),
        ),
        deny(
            "mount",
            &[&fx.s("ws/dst")],
            rule::NO_MOUNT,
            s.outcome("move-mount"),
        ),
    ]);
    assert!(fs::read_dir(fx.path("ws/dst")).unwrap().next().is_none());
}
