//! The shipped policies (`policies/*.toml`) in real sessions: what each file's header
//! promises holds in the kernel.
//!
//! Each test runs the shipped file's text, byte for byte (`Run` writes it into the fixture,
//! so events name that copy). `~` in a policy is `$HOME` of `agent-guard run`, which
//! inherits this process's environment: the tests point it at a home inside the fixture
//! ([`FakeHome`]), so they depend neither on the VM's home nor on what it holds.
//!
//! Reads are probed with `ag-probe copy-into SECRET SINK`: it opens SECRET for reading
//! first, so a refused read answers EACCES and copies nothing, and an allowed one leaves
//! SECRET's bytes in SINK.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    expect::deny,
    fixture::{canonical, overwritten, Fixture, PRECIOUS, PROBE_WRITES},
    rule,
    script::Script,
    session::Run,
};

const CODING_AGENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/coding-agent.toml"
));
const CI_RUNNER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/ci-runner.toml"
));
const OPS_HOST: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/ops-host.toml"
));
const AUDIT_ONLY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/audit-only.toml"
));

/// Rules of the shipped policies, as events name them.
const READ_DENIED: &str = "read-denied";
const AUDIT_VAR_CACHE: &str = "audit-var-cache";
const AUDIT_SHADOW_READ: &str = "audit-shadow-read";

/// `op` of a refused or audited read.
const READ: &str = "read";

/// Points `$HOME`, and so `~` in the policies `run` loads, at a fixture's home until
/// dropped. Kernel tests run one at a time (`--test-threads=1`), so no other test sees it.
struct FakeHome(Option<OsString>);

impl FakeHome {
    fn set(home: &Path) -> Self {
        let previous = std::env::var_os("HOME");
        std::env::set_var("HOME", home);
        Self(previous)
    }
}

impl Drop for FakeHome {
    fn drop(&mut self) {
        match self.0.take() {
            Some(home) => std::env::set_var("HOME", home),
            None => std::env::remove_var("HOME"),
        }
    }
}

/// Files and directories a test places (or a failing guard would let a session place)
/// outside its fixture, in /etc and /var/cache; removed when dropped, whatever happened.
struct Placed(Vec<PathBuf>);

impl Drop for Placed {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path).or_else(|_| fs::remove_dir(path));
        }
    }
}

/// coding-agent.toml: the workspace, /tmp, /dev/shm and the caches are writable; the rest
/// of the machine is not; credentials and `.env*` files are unreadable, wherever they are;
/// the git hooks and `.env*` files cannot be changed. Reads elsewhere, and by processes
/// outside the session, are untouched.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn coding_agent_keeps_secrets_hooks_and_the_rest_of_the_machine() {
    // Not under /tmp or /dev/shm: the policy makes both writable.
    let fx = Fixture::new_in("coding-agent", "/var/tmp");
    let tmp = tempfile::tempdir_in("/tmp").expect("a directory under /tmp");
    let shm = tempfile::tempdir_in("/dev/shm").expect("a directory under /dev/shm");
    fx.mkdir("ws/.git/hooks");
    fx.write("ws/.git/config", "[core]\n");
    fx.write("ws/sink", "");
    fx.write("bystander-sink", "");
    fx.protect(&[
        "ws/.git/hooks/pre-push",
        "ws/.env",
        "ws/app/.env.local",
        "prod/db",
        "home/.bashrc",
        "home/.ssh/id_ed25519",
        "home/backup/.ssh/id_rsa",
        "home/.aws/credentials",
        "home/.config/gcloud/credentials.db",
        "home/.netrc",
    ]);
    fx.mkdir("home/.cache");
    fx.write("prod/readme", "public\n");
    let _home = FakeHome::set(&fx.path("home"));
    let home = |rel: &str| fx.s(&format!("home/{rel}"));
    let in_tmp = tmp.path().join("scratch").display().to_string();
    let in_shm = shm.path().join("sem.probe").display().to_string();
    let script = Script::new(&fx)
        .probe("edit", &["create", "src.rs"])
        .probe("git-config", &["open-write", ".git/config"])
        .probe("hook-plant", &["create", ".git/hooks/post-checkout"])
        .probe("hook-edit", &["open-write", ".git/hooks/pre-push"])
        .probe("env-edit", &["open-write", ".env"])
        .probe("env-read", &["copy-into", ".env", "sink"])
        .probe("nested-env-read", &["copy-into", "app/.env.local", "sink"])
        .probe("ssh-key", &["copy-into", &home(".ssh/id_ed25519"), "sink"])
        .probe(
            "ssh-copy",
            &["copy-into", &home("backup/.ssh/id_rsa"), "sink"],
        )
        .probe("aws", &["copy-into", &home(".aws/credentials"), "sink"])
        .probe(
            "gcloud",
            &["copy-into", &home(".config/gcloud/credentials.db"), "sink"],
        )
        .probe("netrc", &["copy-into", &home(".netrc"), "sink"])
        // Last into the sink: it must then hold these bytes and nothing a secret left.
        .probe("public-read", &["copy-into", &fx.s("prod/readme"), "sink"])
        .probe("cache", &["create", &home(".cache/entry")])
        .probe("bashrc", &["open-write", &home(".bashrc")])
        .probe("tmp", &["create", &in_tmp])
        .probe("shm", &["create", &in_shm])
        .probe("outside", &["unlink", &fx.s("prod/db")])
        .pause();
    let mut run = Run::script(&fx, script).policy(CODING_AGENT).start();
    run.wait_for_pause();
    let bystander = fx.outsider(&[
        "copy-into",
        &home(".ssh/id_ed25519"),
        &fx.s("bystander-sink"),
    ]);
    let s = run.finish();

    s.assert_results(&[
        ("edit", "ok"),
        ("git-config", "ok"),
        ("hook-plant", "EPERM"),
        ("hook-edit", "EPERM"),
        ("env-edit", "EPERM"),
        ("env-read", "EACCES"),
        ("nested-env-read", "EACCES"),
        ("ssh-key", "EACCES"),
        ("ssh-copy", "EACCES"),
        ("aws", "EACCES"),
        ("gcloud", "EACCES"),
        ("netrc", "EACCES"),
        ("public-read", "ok"),
        ("cache", "ok"),
        ("bashrc", "EPERM"),
        ("tmp", "ok"),
        ("shm", "ok"),
        ("outside", "EPERM"),
    ]);
    bystander.assert_ok();
    fx.assert_content("bystander-sink", PRECIOUS);
    fx.assert_content("ws/sink", "public\n");
    fx.assert_content("ws/src.rs", PROBE_WRITES);
    fx.assert_content("ws/.git/config", &overwritten("[core]\n"));
    fx.assert_content("home/.cache/entry", PROBE_WRITES);
    assert_eq!(
        fs::read_to_string(&in_tmp).ok().as_deref(),
        Some(PROBE_WRITES)
    );
    assert_eq!(
        fs::read_to_string(&in_shm).ok().as_deref(),
        Some(PROBE_WRITES)
    );
    fx.assert_absent("ws/.git/hooks/post-checkout");
    for rel in [
        "ws/.git/hooks/pre-push",
        "ws/.env",
        "home/.bashrc",
        "prod/db",
    ] {
        fx.assert_intact(rel);
    }
    let read =
        |path: &str, label: &str| deny(READ, &[path], READ_DENIED, s.outcome(label)).eacces();
    s.assert_decisions(&[
        deny(
            "create",
            &[&fx.s("ws/.git/hooks/post-checkout")],
            rule::PROTECTED,
            s.outcome("hook-plant"),
        ),
        deny(
            "open-write",
            &[&fx.s("ws/.git/hooks/pre-push")],
            rule::PROTECTED,
            s.outcome("hook-edit"),
        ),
        deny(
            "open-write",
            &[&fx.s("ws/.env")],
            rule::PROTECTED,
            s.outcome("env-edit"),
        ),
        read(&fx.s("ws/.env"), "env-read"),
        read(&fx.s("ws/app/.env.local"), "nested-env-read"),
        read(&home(".ssh/id_ed25519"), "ssh-key"),
        read(&home("backup/.ssh/id_rsa"), "ssh-copy"),
        read(&home(".aws/credentials"), "aws"),
        read(&home(".config/gcloud/credentials.db"), "gcloud"),
        read(&home(".netrc"), "netrc"),
        deny(
            "open-write",
            &[&home(".bashrc")],
            rule::OUTSIDE,
            s.outcome("bashrc"),
        ),
        deny(
            "unlink",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
    ]);
}

/// coding-agent.toml starts in a workspace that is not a git repository, with a home that
/// has none of the optional paths; a writable path that was skipped grants nothing.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn coding_agent_starts_without_its_optional_paths() {
    let fx = Fixture::new_in("coding-agent-bare", "/var/tmp");
    fx.mkdir("home");
    let _home = FakeHome::set(&fx.path("home"));
    let script = Script::new(&fx)
        .probe("edit", &["create", "src.rs"])
        .probe("make-cache", &["mkdir", &fx.s("home/.cache")]);
    let s = Run::script(&fx, script).policy(CODING_AGENT).finish();

    s.assert_results(&[("edit", "ok"), ("make-cache", "EPERM")]);
    fx.assert_content("ws/src.rs", PROBE_WRITES);
    fx.assert_absent("home/.cache");
    s.assert_decisions(&[deny(
        "mkdir",
        &[&fx.s("home/.cache")],
        rule::OUTSIDE,
        s.outcome("make-cache"),
    )]);
}

/// ci-runner.toml: the work directory is writable, and nothing else is, /tmp and /dev/shm
/// included.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn ci_runner_writes_its_work_directory_only() {
    let fx = Fixture::new("ci-runner");
    let shm = tempfile::tempdir_in("/dev/shm").expect("a directory under /dev/shm");
    fx.write("ws/target/old.o", "old");
    fx.protect(&["prod/db"]);
    let in_tmp = fx.s("scratch");
    let in_shm = format!("{}/sem.probe", canonical(shm.path()));
    let script = Script::new(&fx)
        .probe("build", &["create", "target/new.o"])
        .probe("clean", &["unlink", "target/old.o"])
        .probe("tmp", &["create", &in_tmp])
        .probe("shm", &["create", &in_shm])
        .probe("outside", &["unlink", &fx.s("prod/db")]);
    let s = Run::script(&fx, script).policy(CI_RUNNER).finish();

    s.assert_results(&[
        ("build", "ok"),
        ("clean", "ok"),
        ("tmp", "EPERM"),
        ("shm", "EPERM"),
        ("outside", "EPERM"),
    ]);
    fx.assert_content("ws/target/new.o", PROBE_WRITES);
    fx.assert_absent("ws/target/old.o");
    fx.assert_absent("scratch");
    assert!(!Path::new(&in_shm).exists(), "{in_shm} should not exist");
    fx.assert_intact("prod/db");
    s.assert_decisions(&[
        deny("create", &[&in_tmp], rule::OUTSIDE, s.outcome("tmp")),
        deny("create", &[&in_shm], rule::OUTSIDE, s.outcome("shm")),
        deny(
            "unlink",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
    ]);
}

/// ops-host.toml: /etc cannot be changed or added to (rule `protected`), nor anything else
/// outside the workspace and /tmp; changes under /var/cache and reads of /etc/shadow are
/// allowed and reported by the policy's audit rules.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn ops_host_leaves_etc_unchanged_and_audits_cache_and_shadow() {
    let fx = Fixture::new_in("ops-host", "/var/tmp");
    fx.protect(&["prod/app.log"]);
    // Unique names outside the fixture, removed at the end whatever happens.
    let name = fx
        .root
        .file_name()
        .expect("the fixture has a name")
        .to_string_lossy()
        .into_owned();
    let etc_conf = format!("/etc/{name}.conf");
    let etc_new = format!("/etc/{name}.new");
    let cache_dir = format!("/var/cache/{name}");
    let _placed = Placed(vec![
        PathBuf::from(&etc_conf),
        PathBuf::from(&etc_new),
        PathBuf::from(&cache_dir),
    ]);
    fs::write(&etc_conf, PRECIOUS).expect("write a file in /etc");
    let script = Script::new(&fx)
        .probe("notes", &["create", "notes"])
        .probe("etc-plant", &["create", &etc_new])
        .probe("etc-edit", &["open-write", &etc_conf])
        .probe("outside", &["unlink", &fx.s("prod/app.log")])
        .probe("cache", &["mkdir", &cache_dir])
        // The sink does not exist: ENOENT comes after the read was opened, and nothing is
        // copied anywhere.
        .probe("shadow", &["copy-into", "/etc/shadow", "no-such-sink"]);
    let s = Run::script(&fx, script).policy(OPS_HOST).finish();

    s.assert_results(&[
        ("notes", "ok"),
        ("etc-plant", "EPERM"),
        ("etc-edit", "EPERM"),
        ("outside", "EPERM"),
        ("cache", "ok"),
        ("shadow", "ENOENT"),
    ]);
    fx.assert_content("ws/notes", PROBE_WRITES);
    assert!(!Path::new(&etc_new).exists(), "{etc_new} was created");
    assert_eq!(
        fs::read_to_string(&etc_conf).ok().as_deref(),
        Some(PRECIOUS),
        "{etc_conf} was changed"
    );
    fx.assert_intact("prod/app.log");
    assert!(Path::new(&cache_dir).is_dir(), "{cache_dir} was not made");
    s.assert_decisions(&[
        deny(
            "create",
            &[&etc_new],
            rule::PROTECTED,
            s.outcome("etc-plant"),
        ),
        deny(
            "open-write",
            &[&etc_conf],
            rule::PROTECTED,
            s.outcome("etc-edit"),
        ),
        deny(
            "unlink",
            &[&fx.s("prod/app.log")],
            rule::OUTSIDE,
            s.outcome("outside"),
        ),
        deny("mkdir", &[&cache_dir], AUDIT_VAR_CACHE, s.outcome("cache")).audited(),
        deny(
            READ,
            &["/etc/shadow"],
            AUDIT_SHADOW_READ,
            s.outcome("shadow"),
        )
        .audited(),
    ]);
}

/// audit-only.toml: nothing is refused, so what the workspace-only policy would refuse
/// happens, and each such operation is reported as `audit`.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn audit_only_refuses_nothing_and_reports_what_it_would() {
    let fx = Fixture::new("audit-only");
    fx.protect(&["prod/db", "prod/config"]);
    let script = Script::new(&fx)
        .probe("notes", &["create", "notes"])
        .probe("delete", &["unlink", &fx.s("prod/db")])
        .probe("overwrite", &["open-write", &fx.s("prod/config")]);
    let s = Run::script(&fx, script).policy(AUDIT_ONLY).finish();

    s.assert_results(&[("notes", "ok"), ("delete", "ok"), ("overwrite", "ok")]);
    fx.assert_content("ws/notes", PROBE_WRITES);
    fx.assert_absent("prod/db");
    fx.assert_content("prod/config", &overwritten(PRECIOUS));
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&fx.s("prod/db")],
            rule::OUTSIDE,
            s.outcome("delete"),
        )
        .audited(),
        deny(
            "open-write",
            &[&fx.s("prod/config")],
            rule::OUTSIDE,
            s.outcome("overwrite"),
        )
        .audited(),
    ]);
}
