//! The combination, rule by rule: a looser session is refused where it is written, a
//! stricter one is accepted, and base denials win in `explain`. Self-protection is tested
//! on directories of a tempdir standing in for /etc/agent-guard and /run/agent-guard.
use std::path::PathBuf;

use super::*;
use crate::policy::{
    explain, explain_network, self_protection::rules_for, NetQuery, Op, Protocol,
    DNS_RESOLVERS_RULE,
};

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "ws", "ws/sub", "ws/.git", "home", "etc-ag", "run-ag", "srv", "srv/prod",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("etc-ag/base.toml"), "").unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn ctx(&self) -> SessionContext {
        SessionContext {
            workspace: self.path("ws"),
            home: Some(self.path("home")),
        }
    }

    /// Self-protection of this world: `etc-ag` (modify) and `run-ag` (modify, connect).
    fn builtin(&self) -> Vec<Rule> {
        rules_for(&[
            (self.s("etc-ag"), Access::Modify),
            (self.s("run-ag"), Access::Modify),
            (self.s("run-ag"), Access::Connect),
        ])
    }

    /// A policy file of this world; `{R}` stands for the world's root.
    fn policy(&self, name: &str, text: &str) -> Policy {
        let text = text.replace("{R}", &self.dir.path().display().to_string());
        Policy::parse(name, &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn combine(&self, base: &Policy, session: &Policy) -> Result<ResolvedPolicy, CombineError> {
        combine_with(base, session, &self.ctx(), &self.builtin())
    }
}

/// The problems of a refused combination as (file, line, message).
fn refused(result: Result<ResolvedPolicy, CombineError>) -> Vec<(String, usize, String)> {
    let err = match result {
        Ok(_) => panic!("the combination was accepted"),
        Err(e) => e,
    };
    err.problems()
        .iter()
        .map(|p| {
            let text = p.to_string();
            assert!(text.contains("hint: "), "{text}");
            let at = p.location().expect("located");
            (at.file.clone(), at.line, text)
        })
        .collect()
}

const BASE: &str = r#"
[filesystem]
writable = ["${WORKSPACE}", "{R}/srv"]
protected = ["{R}/srv/prod", "${WORKSPACE}/.git"]
"#;

#[test]
fn base_rules_come_first_after_self_protection_and_are_named_base() {
    let w = World::new();
    let base = w.policy("base.toml", BASE);
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/sub\"]\n[[rule]]\nname = \"no-notes\"\naction = \"deny\"\npaths = [\"${WORKSPACE}/sub\"]\n",
    );
    let combined = w.combine(&base, &session).unwrap();
    let names = combined.rule_names();
    assert_eq!(
        names,
        [
            SELF_PROTECTION_RULE,
            SELF_PROTECTION_RULE,
            "base:writable",
            "base:protected",
            "writable",
            "no-notes"
        ]
    );
    assert_eq!(
        names.iter().filter(|n| *n == SELF_PROTECTION_RULE).count(),
        2,
        "one deny-modify and one deny-connect entry, once"
    );
    assert_eq!(combined.source, "s.toml");
}

#[test]
fn mode_egress_and_terminals_take_the_stricter_side() {
    let w = World::new();
    let combos = [
        ("audit", "audit", Mode::Audit),
        ("audit", "enforce", Mode::Enforce),
        ("enforce", "audit", Mode::Enforce),
    ];
    for (b, s, want) in combos {
        let base = w.policy(
            "b.toml",
            &format!("mode = \"{b}\"\n[network]\negress = \"allow\"\n"),
        );
        let session = w.policy("s.toml", &format!("mode = \"{s}\"\n"));
        let combined = w.combine(&base, &session).unwrap();
        assert_eq!(combined.mode, want, "{b} + {s}");
        assert!(!combined.network.egress_allow, "the session closed egress");
    }
    let open = w.policy("b.toml", "[network]\negress = \"allow\"\n");
    let combined = w.combine(&open, &open).unwrap();
    assert!(combined.network.egress_allow);
    let closed = w.policy("b.toml", "");
    let combined = w.combine(&closed, &open).unwrap();
    assert!(!combined.network.egress_allow, "the base closed egress");

    let no_tty = w.policy("b.toml", "[filesystem]\nterminals = false\n");
    let tty = w.policy("s.toml", "[filesystem]\nterminals = true\n");
    assert!(w.combine(&no_tty, &tty).unwrap().devices.is_empty());
    assert!(w.combine(&tty, &no_tty).unwrap().devices.is_empty());
    assert!(!w.combine(&tty, &tty).unwrap().devices.is_empty());
}

#[test]
fn a_session_may_not_open_what_the_base_denies() {
    let w = World::new();
    let base = w.policy("base.toml", BASE);
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}\", \"{R}/srv/prod\", \"${WORKSPACE}/.git\"]\n[[rule]]\nname = \"watch\"\naction = \"audit\"\npaths = [\"{R}/srv/prod\"]\n",
    );
    let problems = refused(w.combine(&base, &session));
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for (file, _, text) in &problems {
        assert_eq!(file, "s.toml");
        assert!(
            text.contains("the base policy's rule `protected`"),
            "{text}"
        );
    }
    assert_eq!(problems[0].1, 2);
    assert_eq!(problems[2].1, 6, "the audit rule's entry");
    // Deny rules of the session are always fine, and so is a scope next to the denial.
    let stricter = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/sub\", \"{R}/srv\"]\nprotected = [\"{R}/srv\"]\n",
    );
    w.combine(&base, &stricter).unwrap();
}

#[test]
fn a_session_may_modify_only_inside_the_base_scopes() {
    let w = World::new();
    // The base names no scope: its default is the workspace, the session's own.
    let base = w.policy("base.toml", "");
    let inside = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/sub\"]\n",
    );
    w.combine(&base, &inside).unwrap();
    let default_session = w.policy("s.toml", "");
    w.combine(&base, &default_session).unwrap();
    let outside = w.policy(
        "s.toml",
        "\n[filesystem]\nwritable = [\"${WORKSPACE}\", \"{R}/home\"]\n",
    );
    let problems = refused(w.combine(&base, &outside));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].1, 3);
    assert!(
        problems[0].2.contains(&format!(
            "the base policy does not let sessions modify {}",
            w.s("home")
        )),
        "{}",
        problems[0].2
    );
    // Through a symlink it is still outside.
    std::os::unix::fs::symlink(w.path("home"), w.path("ws/home-link")).unwrap();
    let aliased = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/home-link\"]\n",
    );
    let problems = refused(w.combine(&base, &aliased));
    assert!(
        problems[0].2.contains("does not let sessions modify"),
        "{problems:#?}"
    );
}

#[test]
fn a_session_pattern_that_could_match_inside_a_base_denial_is_refused() {
    let w = World::new();
    let base = w.policy("base.toml", BASE);
    // Its tree holds the denied {R}/srv/prod: `*.db` would decide inside it.
    let above = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}\", \"{R}/srv/**/*.db\"]\n",
    );
    let problems = refused(w.combine(&base, &above));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].2.contains("could match inside"),
        "{}",
        problems[0].2
    );
    let below = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"{R}/srv/prod/**/*.db\"]\n",
    );
    refused(w.combine(&base, &below));
    // A base deny pattern whose tree holds the session's pattern tree reaches it too.
    let base_pattern = w.policy(
        "base.toml",
        "[filesystem]\nwritable = [\"{R}/srv\"]\nprotected = [\"{R}/**/*.key\"]\n",
    );
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"{R}/srv/**/*.log\"]\n",
    );
    refused(w.combine(&base_pattern, &session));
    // A pattern beside the denial is fine.
    let beside = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/sub/**/*.db\"]\n",
    );
    w.combine(&base, &beside).unwrap();
}

#[test]
fn a_session_allow_may_not_silence_a_base_audit() {
    let w = World::new();
    let base = w.policy(
        "base.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}\"]\n[[rule]]\nname = \"watch-srv\"\naction = \"audit\"\npaths = [\"{R}/srv\"]\n",
    );
    let allow = w.policy("s.toml", "[filesystem]\nwritable = [\"{R}/srv/prod\"]\n");
    let problems = refused(w.combine(&base, &allow));
    assert!(problems[0].2.contains("`watch-srv`"), "{}", problems[0].2);
    let audit = w.policy(
        "s.toml",
        "[[rule]]\nname = \"prod\"\naction = \"audit\"\npaths = [\"{R}/srv/prod\"]\n",
    );
    w.combine(&base, &audit).unwrap();
}

#[test]
fn base_denials_win_in_explain() {
    let w = World::new();
    let base = w.policy("base.toml", BASE);
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"${WORKSPACE}/sub\", \"{R}/srv\"]\n",
    );
    let combined = w.combine(&base, &session).unwrap();
    let e = explain(&combined, Op::Create, &w.path("srv/prod/x"), None).unwrap();
    assert_eq!(
        (e.decision, e.rule.as_deref()),
        ("deny", Some("base:protected"))
    );
    assert!(e.written_at.unwrap().starts_with("base.toml:"));
    let e = explain(&combined, Op::Create, &w.path("srv/x"), None).unwrap();
    assert_eq!(e.decision, "allow");
    let e = explain(&combined, Op::Mkdir, &w.path("ws/.git/hooks"), None).unwrap();
    assert_eq!(
        (e.decision, e.rule.as_deref()),
        ("deny", Some("base:protected"))
    );
    let e = explain(&combined, Op::Create, &w.path("etc-ag/x"), None).unwrap();
    assert_eq!(
        (e.decision, e.rule.as_deref(), e.written_at),
        ("deny", Some(SELF_PROTECTION_RULE), None)
    );
    let e = explain_network(
        &combined,
        "connect",
        &NetQuery::UnixPath(w.path("run-ag/control.sock")),
    );
    // The socket does not exist: the chain cannot be built, which is an error, not a pass.
    assert!(e.is_err());
}

#[test]
fn the_session_may_not_lift_self_protection_and_neither_may_the_base() {
    let w = World::new();
    let base = w.policy("base.toml", "[filesystem]\nwritable = [\"{R}\"]\n");
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"{R}/etc-ag\", \"{R}/**/*.toml\"]\n[[network.rule]]\nname = \"daemon\"\naction = \"allow\"\nunix = [\"{R}/run-ag\"]\n",
    );
    let problems = refused(w.combine(&base, &session));
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems
        .iter()
        .all(|(f, _, t)| f == "s.toml" && t.contains("rule `self-protection`")));
    assert!(
        problems[0].2.contains("no session may modify"),
        "{}",
        problems[0].2
    );
    assert!(
        problems[2].2.contains("connect to unix sockets"),
        "{}",
        problems[2].2
    );
    // The base is held to the same rule, and its problems are located in its own file.
    let bad_base = w.policy("base.toml", "[filesystem]\nwritable = [\"{R}/etc-ag\"]\n");
    match w.combine(&bad_base, &w.policy("s.toml", "")) {
        Err(CombineError::Base { base, problems }) => {
            assert_eq!(base, "base.toml");
            assert_eq!(problems[0].location().unwrap().file, "base.toml");
        }
        other => panic!("expected the base's error, got {other:?}"),
    }
    // Writing the whole tree stays possible: the nearer self-protection decides inside it.
    let combined = w
        .combine(
            &base,
            &w.policy("s.toml", "[filesystem]\nwritable = [\"{R}\"]\n"),
        )
        .unwrap();
    let e = explain(&combined, Op::Unlink, &w.path("etc-ag/base.toml"), None).unwrap();
    assert_eq!(
        (e.decision, e.rule.as_deref()),
        ("deny", Some(SELF_PROTECTION_RULE))
    );
    assert_eq!(e.attached_at, Some(w.s("etc-ag")));
}

#[test]
fn every_problem_of_the_session_is_reported() {
    let w = World::new();
    let base = w.policy("base.toml", BASE);
    let session = w.policy(
        "s.toml",
        "[filesystem]\nwritable = [\"{R}/home\", \"{R}/nope\", \"{R}/srv/prod\"]\nwritable_devices = [\"/dev/null\"]\n",
    );
    let problems = refused(w.combine(&base, &session));
    let texts: Vec<&str> = problems.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(problems.len(), 2, "{texts:#?}");
    assert!(texts[0].contains("nope"), "missing paths first: {texts:#?}");
    assert!(texts[1].contains("device /dev/null"), "{texts:#?}");
    // Once the path exists, the other two show up.
    std::fs::create_dir(w.path("nope")).unwrap();
    let problems = refused(w.combine(&base, &session));
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn writable_devices_must_be_some_of_the_base() {
    let w = World::new();
    let base = w.policy(
        "base.toml",
        "[filesystem]\nwritable_devices = [\"/dev/null\", \"/dev/zero\"]\n",
    );
    let fewer = w.policy(
        "s.toml",
        "[filesystem]\nwritable_devices = [\"/dev/null\"]\n",
    );
    w.combine(&base, &fewer).unwrap();
    let more = w.policy(
        "s.toml",
        "[filesystem]\nwritable_devices = [\"/dev/null\", \"/dev/full\"]\n",
    );
    let problems = refused(w.combine(&base, &more));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].1, 2);
    assert!(problems[0].2.contains("/dev/full"));
}

const NET_BASE: &str = r#"
[network]
egress = "deny"
[[network.rule]]
name = "git"
action = "allow"
hosts = ["git.example.com"]
ports = [443]
protocol = "tcp"
[[network.rule]]
name = "lan"
action = "allow"
addresses = ["10.0.0.0/8"]
ports = ["1-1024"]
[[network.rule]]
name = "prod-db"
action = "deny"
addresses = ["10.1.0.0/16"]
[[network.rule]]
name = "db"
action = "allow"
addresses = ["127.0.0.1"]
ports = [5432]
"#;

fn net_session(w: &World, rule: &str) -> Policy {
    w.policy(
        "s.toml",
        &format!("[network]\negress = \"deny\"\n[[network.rule]]\nname = \"mine\"\naction = \"allow\"\n{rule}\n"),
    )
}

#[test]
fn network_allows_must_lie_inside_base_allows_and_outside_base_denials() {
    let w = World::new();
    let base = w.policy("base.toml", NET_BASE);
    let ok = [
        "hosts = [\"git.example.com\"]\nports = [443]\nprotocol = \"tcp\"",
        "addresses = [\"10.2.0.0/16\"]\nports = [22, 80]",
        "addresses = [\"10.2.3.4\"]\nports = [\"100-200\"]\nprotocol = \"udp\"",
        "addresses = [\"127.0.0.1\"]\nports = [5432]",
    ];
    for rule in ok {
        w.combine(&base, &net_session(&w, rule))
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
    let refused_rules = [
        // Hosts the base does not name, or on other ports.
        (
            "hosts = [\"api.example.com\"]\nports = [443]",
            "no base policy rule allows",
        ),
        (
            "hosts = [\"git.example.com\"]\nports = [22]",
            "no base policy rule allows",
        ),
        (
            "hosts = [\"git.example.com\"]\nports = [443]",
            "no base policy rule allows",
        ),
        // Egress is closed: outside every base allow, or wider ports.
        ("addresses = [\"192.0.2.0/24\"]", "its egress is closed"),
        (
            "addresses = [\"10.2.0.0/16\"]\nports = [8080]",
            "its egress is closed",
        ),
        // Inside the base's deny block: the more specific session block would decide.
        ("addresses = [\"10.1.2.3\"]\nports = [22]", "`prod-db`"),
        // Loopback on another port.
        (
            "addresses = [\"127.0.0.1\"]\nports = [6379]",
            "this host's own addresses",
        ),
        ("unix = [\"@some-daemon\"]", "abstract socket"),
    ];
    for (rule, want) in refused_rules {
        let problems = refused(w.combine(&base, &net_session(&w, rule)));
        assert_eq!(problems[0].0, "s.toml");
        assert_eq!(problems[0].1, 3, "located at the session's rule: {rule}");
        assert!(problems[0].2.contains(want), "{rule}: {}", problems[0].2);
    }
}

#[test]
fn with_base_egress_open_only_denials_and_local_addresses_bind_addresses() {
    let w = World::new();
    let base = w.policy(
        "base.toml",
        "[network]\negress = \"allow\"\n[[network.rule]]\nname = \"meta\"\naction = \"deny\"\naddresses = [\"169.254.0.0/16\"]\n",
    );
    let session = |rule: &str| {
        w.policy(
            "s.toml",
            &format!("[network]\negress = \"allow\"\n[[network.rule]]\nname = \"mine\"\naction = \"allow\"\n{rule}\n"),
        )
    };
    w.combine(&base, &session("addresses = [\"192.0.2.0/24\"]"))
        .unwrap();
    // Wider than the denial: the denial stays more specific and still decides inside.
    w.combine(
        &base,
        &session("addresses = [\"0.0.0.0/0\"]\nports = [443]"),
    )
    .unwrap();
    let problems = refused(w.combine(&base, &session("addresses = [\"169.254.169.254\"]")));
    assert!(problems[0].2.contains("`meta`"), "{}", problems[0].2);
    let problems = refused(w.combine(&base, &session("addresses = [\"127.0.0.1\"]")));
    assert!(problems[0].2.contains("loopback"), "{}", problems[0].2);
    // The combined tables: the base's denial decides.
    let combined = w
        .combine(
            &base,
            &session("addresses = [\"0.0.0.0/0\"]\nports = [443]"),
        )
        .unwrap();
    let e = explain_network(
        &combined,
        "connect",
        &NetQuery::Destination {
            addr: "169.254.169.254".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        },
    )
    .unwrap();
    assert_eq!((e.decision, e.rule.as_deref()), ("deny", Some("base:meta")));
    assert!(combined
        .rule_names()
        .iter()
        .any(|n| n == &format!("base:{DNS_RESOLVERS_RULE}")));
}

#[test]
fn listen_rules_must_lie_inside_base_listen_rules() {
    let w = World::new();
    let base = w.policy(
        "base.toml",
        "[[network.rule]]\nname = \"dev\"\naction = \"allow\"\naccess = \"listen\"\naddresses = [\"0.0.0.0\"]\nports = [\"8000-8999\"]\n",
    );
    let listen = |ports: &str| {
        w.policy(
            "s.toml",
            &format!("[[network.rule]]\nname = \"srv\"\naction = \"allow\"\naccess = \"listen\"\naddresses = [\"0.0.0.0\"]\nports = [{ports}]\n"),
        )
    };
    w.combine(&base, &listen("8080")).unwrap();
    let problems = refused(w.combine(&base, &listen("22")));
    assert!(problems[0].2.contains("listen on"), "{}", problems[0].2);
}

#[test]
fn unix_socket_allows_under_a_base_denial_are_refused() {
    let w = World::new();
    std::os::unix::net::UnixListener::bind(w.path("srv/docker.sock")).unwrap();
    let base = w.policy(
        "base.toml",
        "[[network.rule]]\nname = \"no-docker\"\naction = \"deny\"\nunix = [\"{R}/srv\"]\n",
    );
    let session = w.policy(
        "s.toml",
        "[[network.rule]]\nname = \"docker\"\naction = \"allow\"\nunix = [\"{R}/srv/docker.sock\"]\n",
    );
    let problems = refused(w.combine(&base, &session));
    assert!(problems[0].2.contains("`no-docker`"), "{}", problems[0].2);
    let combined = w.combine(&base, &w.policy("s.toml", "")).unwrap();
    let e = explain_network(
        &combined,
        "connect",
        &NetQuery::UnixPath(w.path("srv/docker.sock")),
    )
    .unwrap();
    assert_eq!(
        (e.decision, e.rule.as_deref()),
        ("deny", Some("base:no-docker"))
    );
}

#[test]
fn combine_with_the_real_self_protection_accepts_the_shipped_default() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext {
        workspace: dir.path().to_path_buf(),
        home: None,
    };
    let builtin = Policy::builtin();
    let combined = combine(&builtin, &builtin, &ctx).unwrap();
    assert_eq!(combined.rules[0].name, SELF_PROTECTION_RULE);
}
