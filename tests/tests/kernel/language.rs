//! The policy language in the kernel: name patterns, read-denied secrets, named rules with
//! their actions and precedence, `extends` and audit mode, and `policy explain` giving the
//! kernel's own answer.
use std::process::Command;

use crate::{
    expect::{deny, Expect},
    fixture::{agent_guard_bin, Fixture, PRECIOUS},
    script::Script,
    session::Run,
};

/// The devices every test policy lets the session write.
const DEVICES: &str =
    r#"writable_devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]"#;

/// The tree the language tests share: a workspace with secrets and databases in it, a
/// home with keys, and a scratch directory outside the workspace.
fn language_fixture(name: &str) -> Fixture {
    let fx = Fixture::new(name);
    fx.mkdir("ws/sub");
    fx.mkdir("home");
    fx.mkdir("home/.ssh");
    fx.mkdir("prod/scratch");
    fx.protect(&[
        "home/.ssh/id_rsa",
        "home/.ssh/known_hosts",
        "ws/.env",
        "ws/sub/.env.local",
        "ws/sub/app.sqlite",
        "prod/readable",
    ]);
    fx.write("ws/notes", "notes\n");
    fx
}

fn language_policy(fx: &Fixture) -> String {
    format!(
        r#"version = 1
mode = "enforce"

[filesystem]
writable = ["${{WORKSPACE}}"]
protected = ["${{WORKSPACE}}/**/*.sqlite"]
read_denied = ["{home}/.ssh", "${{WORKSPACE}}/**/.env*"]
{DEVICES}

[[rule]]
name = "audit-notes"
action = "audit"
paths = ["${{WORKSPACE}}/notes"]

[[rule]]
name = "scratch"
action = "allow"
paths = ["{scratch}"]

[[rule]]
name = "known-hosts-readable"
action = "allow"
access = "read"
paths = ["{home}/.ssh/known_hosts"]
"#,
        home = fx.s("home"),
        scratch = fx.s("prod/scratch"),
    )
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn patterns_secrets_and_rule_actions_decide_in_the_kernel() {
    let fx = language_fixture("language");
    let script = Script::new(&fx)
        .probe("read-key", &["read", &fx.s("home/.ssh/id_rsa")])
        .probe("list-keys", &["read", &fx.s("home/.ssh")])
        .probe(
            "read-known-hosts",
            &["read", &fx.s("home/.ssh/known_hosts")],
        )
        .probe("read-env", &["read", ".env"])
        .probe("read-env-local", &["read", "sub/.env.local"])
        .probe("read-notes", &["read", "notes"])
        .probe("read-outside", &["read", &fx.s("prod/readable")])
        .probe("db-unlink", &["unlink", "sub/app.sqlite"])
        .probe("db-create", &["create", "sub/new.sqlite"])
        .probe("notes-write", &["open-write", "notes"])
        .probe("env-rename", &["rename", ".env", "env-copy"])
        .probe("env-link", &["link", ".env", "env-link"])
        .probe("sub-away", &["rename", "sub", &fx.s("prod/scratch/sub")])
        .probe("scratch-create", &["create", &fx.s("prod/scratch/new")])
        .pause()
        .probe("after", &["create", "after"]);
    let mut running = Run::script(&fx, script)
        .policy(&language_policy(&fx))
        .start();
    running.wait_for_pause();
    // A bystander reads the secrets and moves the databases while the session runs.
    fx.outsider(&["read", &fx.s("home/.ssh/id_rsa")])
        .assert_ok();
    fx.outsider(&["read", &fx.s("ws/.env")]).assert_ok();
    fx.outsider(&["link", &fx.s("ws/.env"), &fx.s("ws/env-outsider")])
        .assert_ok();
    let s = running.finish();

    s.assert_results(&[
        ("read-key", "EACCES"),
        ("list-keys", "EACCES"),
        ("read-known-hosts", "ok"),
        ("read-env", "EACCES"),
        ("read-env-local", "EACCES"),
        ("read-notes", "ok"),
        ("read-outside", "ok"),
        ("db-unlink", "EPERM"),
        ("db-create", "EPERM"),
        ("notes-write", "ok"),
        ("env-rename", "EPERM"),
        ("env-link", "EPERM"),
        ("sub-away", "EPERM"),
        ("scratch-create", "ok"),
        ("after", "ok"),
    ]);
    fx.assert_intact("ws/sub/app.sqlite");
    fx.assert_absent("ws/sub/new.sqlite");
    fx.assert_intact("ws/.env");
    fx.assert_absent("ws/env-copy");
    fx.assert_absent("ws/env-link");
    fx.assert_intact("ws/sub/.env.local");
    fx.assert_absent("prod/scratch/sub");
    fx.assert_exists("prod/scratch/new");
    fx.assert_content("ws/notes", &crate::fixture::overwritten("notes\n"));
    let at = |rel: &str| fx.s(rel);
    let read = |rel: &str, label: &str| -> Expect {
        deny("read", &[&at(rel)], "read-denied", s.outcome(label)).eacces()
    };
    s.assert_decisions(&[
        read("home/.ssh/id_rsa", "read-key"),
        read("home/.ssh", "list-keys"),
        read("ws/.env", "read-env"),
        read("ws/sub/.env.local", "read-env-local"),
        deny(
            "unlink",
            &[&at("ws/sub/app.sqlite")],
            "protected",
            s.outcome("db-unlink"),
        ),
        deny(
            "create",
            &[&at("ws/sub/new.sqlite")],
            "protected",
            s.outcome("db-create"),
        ),
        deny(
            "open-write",
            &[&at("ws/notes")],
            "audit-notes",
            s.outcome("notes-write"),
        )
        .audited(),
        deny(
            "rename",
            &[&at("ws/.env"), &at("ws/env-copy")],
            "read-denied",
            s.outcome("env-rename"),
        ),
        deny(
            "link",
            &[&at("ws/.env"), &at("ws/env-link")],
            "read-denied",
            s.outcome("env-link"),
        ),
        // The directory holds a database and a secret: moving it out of the patterns'
        // tree would take them out of the patterns' reach.
        deny(
            "rename",
            &[&at("ws/sub"), &at("prod/scratch/sub")],
            "protected",
            s.outcome("sub-away"),
        ),
    ]);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn an_extended_policy_in_audit_mode_reports_the_parents_rules_and_allows() {
    let fx = language_fixture("extends");
    let parent = fx.write(
        "parent.toml",
        &format!(
            "version = 1\n[filesystem]\nwritable = [\"${{WORKSPACE}}\"]\nprotected = [\"${{WORKSPACE}}/**/*.sqlite\"]\nread_denied = [\"{}/.ssh\"]\n{DEVICES}\n",
            fx.s("home")
        ),
    );
    let child = format!(
        "version = 1\nextends = \"{}\"\nmode = \"audit\"\n",
        parent.display()
    );
    let script = Script::new(&fx)
        .probe("db-unlink", &["unlink", "sub/app.sqlite"])
        .probe("read-key", &["read", &fx.s("home/.ssh/id_rsa")])
        .probe("outside", &["unlink", &fx.s("prod/readable")]);
    let s = Run::script(&fx, script).policy(&child).finish();
    s.assert_results(&[("db-unlink", "ok"), ("read-key", "ok"), ("outside", "ok")]);
    fx.assert_absent("ws/sub/app.sqlite");
    fx.assert_absent("prod/readable");
    let at = |rel: &str| fx.s(rel);
    s.assert_decisions(&[
        deny(
            "unlink",
            &[&at("ws/sub/app.sqlite")],
            "protected",
            s.outcome("db-unlink"),
        )
        .audited(),
        deny(
            "read",
            &[&at("home/.ssh/id_rsa")],
            "read-denied",
            s.outcome("read-key"),
        )
        .audited(),
        deny(
            "unlink",
            &[&at("prod/readable")],
            crate::rule::OUTSIDE,
            s.outcome("outside"),
        )
        .audited(),
    ]);
}

/// One row of the explain-versus-kernel table: the operation as `policy explain` names it
/// and the probe that performs it.
struct Case {
    op: &'static str,
    paths: Vec<String>,
    probe: Vec<String>,
}

/// What `agent-guard policy explain --format json` answered.
#[derive(Debug)]
struct Explained {
    decision: String,
    rule: Option<String>,
    errno: Option<String>,
}

impl Explained {
    fn parse(json: &[u8]) -> Self {
        let value: serde_json::Value = serde_json::from_slice(json).expect("explain prints JSON");
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            decision: field("decision").expect("explain names a decision"),
            rule: field("rule"),
            errno: field("errno"),
        }
    }
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn policy_explain_agrees_with_the_kernel_on_every_case() {
    // On tmpfs (a mount of its own under /dev), so that the walk crosses mounts and xattrs
    // work; the fixture is otherwise the language tests' one.
    let fx = Fixture::new_in("explain", "/dev/shm");
    fx.mkdir("ws/sub");
    fx.mkdir("ws/.git");
    fx.mkdir("ws/.git/hooks");
    fx.mkdir("ws/.git/hooks/scratch");
    fx.mkdir("home");
    fx.mkdir("home/.ssh");
    fx.mkdir("prod/scratch");
    fx.mkdir("ws/empty");
    for rel in [
        "home/.ssh/id_rsa",
        "home/.ssh/known_hosts",
        "ws/.env",
        "ws/.env.2",
        "ws/sub/.env.local",
        "ws/sub/app.sqlite",
        "ws/sub/app2.sqlite",
        "ws/.git/hooks/pre-commit",
        "ws/notes",
        "ws/notes2",
        "ws/plain",
        "ws/plain2",
        "ws/plain3",
        "ws/plain4",
        "prod/a",
        "prod/b",
        "prod/c",
        "prod/d",
    ] {
        fx.write(rel, PRECIOUS);
    }
    let policy = format!(
        "{}\n[[rule]]\nname = \"hooks-guard\"\naction = \"deny\"\npaths = [\"${{WORKSPACE}}/.git/hooks\"]\n\n[[rule]]\nname = \"hooks-scratch\"\naction = \"allow\"\npaths = [\"${{WORKSPACE}}/.git/hooks/scratch\"]\n",
        language_policy(&fx)
    );
    let policy_file = fx.write("explain-policy.toml", &policy);
    let ws = |rel: &str| fx.s(&format!("ws/{rel}"));
    let at = |rel: &str| fx.s(rel);
    let one = |op: &'static str, probe: &str, path: String| Case {
        op,
        paths: vec![path.clone()],
        probe: vec![probe.to_owned(), path],
    };
    let two = |op: &'static str, probe: &str, a: String, b: String| Case {
        op,
        paths: vec![a.clone(), b.clone()],
        probe: vec![probe.to_owned(), a, b],
    };
    let cases = vec![
        one("unlink", "unlink", ws("plain")),
        one("unlink", "unlink", at("prod/a")),
        one("unlink", "unlink", ws("sub/app.sqlite")),
        one("unlink", "unlink", ws(".git/hooks/pre-commit")),
        one("unlink", "unlink", ws("notes")),
        one("rmdir", "rmdir", ws("empty")),
        one("rmdir", "rmdir", at("ws")),
        one("open-write", "open-write", ws("plain2")),
        one("open-write", "open-write", at("prod/b")),
        one("open-write", "open-write", ws("notes2")),
        one("truncate", "truncate", ws("sub/app2.sqlite")),
        one("create", "create", ws("new-file")),
        one("create", "create", ws("sub/other.sqlite")),
        one("create", "create", ws(".git/hooks/post-checkout")),
        one("create", "create", ws(".git/hooks/scratch/allowed")),
        one("create", "create", at("prod/new")),
        one("create", "create", at("prod/scratch/new")),
        one("mkdir", "mkdir", ws("newdir")),
        one("mkdir", "mkdir", at("prod/newdir")),
        one("read", "read", at("home/.ssh/id_rsa")),
        one("read", "read", at("home/.ssh/known_hosts")),
        one("read", "read", at("home/.ssh")),
        one("read", "read", ws(".env")),
        one("read", "read", ws("sub/.env.local")),
        one("read", "read", ws("plain3")),
        one("read", "read", at("prod/c")),
        two("rename", "rename", ws(".env.2"), ws("env-renamed")),
        two("rename", "rename", ws("plain4"), at("prod/scratch/moved")),
        two("rename", "rename", ws("sub"), at("prod/scratch/sub")),
        two("rename", "rename", at("prod/d"), ws("from-prod")),
        two("link", "link", ws(".env"), ws("env-link")),
        Case {
            op: "chmod",
            paths: vec![ws("plain3")],
            probe: vec!["chmod".into(), ws("plain3"), "600".into()],
        },
        Case {
            op: "chmod",
            paths: vec![at("prod/c")],
            probe: vec!["chmod".into(), at("prod/c"), "600".into()],
        },
        Case {
            op: "setxattr",
            paths: vec![at("prod/c")],
            probe: vec![
                "setxattr".into(),
                at("prod/c"),
                "trusted.agent-guard".into(),
                "x".into(),
            ],
        },
        Case {
            op: "setxattr",
            paths: vec![ws("plain3")],
            probe: vec![
                "setxattr".into(),
                ws("plain3"),
                "trusted.agent-guard".into(),
                "x".into(),
            ],
        },
    ];

    // Explain first, from the workspace (where `run` will start), before anything changes.
    let explained: Vec<Explained> = cases
        .iter()
        .map(|case| {
            let out = Command::new(agent_guard_bin())
                .current_dir(&fx.ws)
                .args(["policy", "explain", "--format", "json", "--policy"])
                .arg(&policy_file)
                .args(["--op", case.op])
                .args(&case.paths)
                .output()
                .expect("run agent-guard policy explain");
            assert!(
                out.status.success(),
                "explain {} {:?}: {}",
                case.op,
                case.paths,
                String::from_utf8_lossy(&out.stderr)
            );
            Explained::parse(&out.stdout)
        })
        .collect();

    let mut script = Script::new(&fx);
    for (i, case) in cases.iter().enumerate() {
        let args: Vec<&str> = case.probe.iter().map(String::as_str).collect();
        script = script.probe(&format!("case{i}"), &args);
    }
    let s = Run::script(&fx, script).policy(&policy).finish();

    let mut disagreements = Vec::new();
    for (i, (case, said)) in cases.iter().zip(&explained).enumerate() {
        let outcome = s.outcome(&format!("case{i}"));
        let event = s.log.decisions.iter().find(|e| e.pid == outcome.pid);
        let kernel = match (outcome.result.as_str(), event) {
            ("ok", None) => ("allow".to_owned(), None, None),
            (result, Some(e)) => (
                e.decision.clone(),
                Some(e.rule.clone()),
                (result != "ok").then(|| result.to_owned()),
            ),
            (result, None) => (format!("refused {result} without an event"), None, None),
        };
        // An allowed operation is not reported: the kernel names no rule for it, whatever
        // rule explain names as allowing it.
        let explain = if said.decision == "allow" {
            ("allow".to_owned(), None, None)
        } else {
            (said.decision.clone(), said.rule.clone(), said.errno.clone())
        };
        if kernel != explain {
            disagreements.push(format!(
                "{} {:?}: explain said {:?}, the kernel did {:?}",
                case.op, case.paths, explain, kernel
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "policy explain and the kernel disagree:\n{}",
        disagreements.join("\n")
    );
    // The table must exercise every kind of answer, or agreeing proves little.
    for (decision, rule) in [
        ("allow", Some("writable")),
        ("allow", Some("scratch")),
        ("allow", Some("hooks-scratch")),
        ("allow", Some("known-hosts-readable")),
        ("allow", None),
        ("deny", Some(crate::rule::OUTSIDE)),
        ("deny", Some("protected")),
        ("deny", Some("read-denied")),
        ("deny", Some("hooks-guard")),
        ("deny", Some(crate::rule::SCOPE_ROOT)),
        ("audit", Some("audit-notes")),
    ] {
        assert!(
            explained
                .iter()
                .any(|e| e.decision == decision && e.rule.as_deref() == rule),
            "no case answered {decision} {rule:?}"
        );
    }
}
