//! Protected paths: inside the writable workspace, a database file and `.git/hooks` stay
//! undestroyable, whatever route the session takes (delete, overwrite, rename over or
//! away, plant a new hook), while the rest of the workspace stays writable.
use crate::{
    expect::deny,
    fixture::{Fixture, PROBE_WRITES},
    rule,
    script::Script,
    session::{Run, WORKSPACE_POLICY},
};

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn protected_paths_stay_undestroyable_inside_the_scope() {
    let fx = Fixture::new("protected");
    fx.mkdir("ws/.git");
    fx.mkdir("ws/.git/hooks");
    fx.protect(&["ws/db.sqlite", "ws/.git/hooks/pre-commit"]);
    fx.write("ws/notes", "notes");
    fx.write("ws/.git/config", "config");
    let policy = WORKSPACE_POLICY.replace(
        r#"writable = ["${WORKSPACE}"]"#,
        "writable = [\"${WORKSPACE}\"]\nprotected = [\"${WORKSPACE}/db.sqlite\", \"${WORKSPACE}/.git/hooks\"]",
    );
    let script = Script::new(&fx)
        .probe("notes", &["open-write", "notes"])
        .probe("git-config", &["open-write", ".git/config"])
        .probe("db-unlink", &["unlink", "db.sqlite"])
        .probe("db-write", &["open-write", "db.sqlite"])
        .probe("db-replace", &["rename", "notes", "db.sqlite"])
        .probe("hook-write", &["open-write", ".git/hooks/pre-commit"])
        .probe("hook-plant", &["create", ".git/hooks/post-checkout"])
        .probe("hooks-away", &["rename", ".git/hooks", ".git/hooks.old"]);
    let s = Run::script(&fx, script).policy(&policy).finish();

    s.assert_results(&[
        ("notes", "ok"),
        ("git-config", "ok"),
        ("db-unlink", "EPERM"),
        ("db-write", "EPERM"),
        ("db-replace", "EPERM"),
        ("hook-write", "EPERM"),
        ("hook-plant", "EPERM"),
        ("hooks-away", "EPERM"),
    ]);
    fx.assert_content("ws/notes", PROBE_WRITES);
    fx.assert_intact("ws/db.sqlite");
    fx.assert_intact("ws/.git/hooks/pre-commit");
    fx.assert_absent("ws/.git/hooks/post-checkout");
    fx.assert_absent("ws/.git/hooks.old");
    let at = |rel: &str| fx.s(rel);
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&at("ws/db.sqlite")],
            rule::PROTECTED,
            s.outcome("db-unlink"),
        ),
        deny(
            "open-write",
            &[&at("ws/db.sqlite")],
            rule::PROTECTED,
            s.outcome("db-write"),
        ),
        deny(
            "rename",
            &[&at("ws/notes"), &at("ws/db.sqlite")],
            rule::PROTECTED,
            s.outcome("db-replace"),
        ),
        deny(
            "open-write",
            &[&at("ws/.git/hooks/pre-commit")],
            rule::PROTECTED,
            s.outcome("hook-write"),
        ),
        deny(
            "create",
            &[&at("ws/.git/hooks/post-checkout")],
            rule::PROTECTED,
            s.outcome("hook-plant"),
        ),
        deny(
            "rename",
            &[&at("ws/.git/hooks"), &at("ws/.git/hooks.old")],
            rule::PROTECTED,
            s.outcome("hooks-away"),
        ),
    ]);
}
