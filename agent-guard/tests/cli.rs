//! Host integration tests of the `agent-guard` binary: bad input is refused with a located
//! error, and `run` never starts a command unguarded, whatever this host's kernel offers.
use std::process::Command;

fn agent_guard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agent-guard"))
}

fn policies_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn policy_check_accepts_every_shipped_policy() {
    let files: Vec<_> = std::fs::read_dir(policies_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 3);
    let out = agent_guard()
        .arg("policy")
        .arg("check")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn policy_check_locates_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad_mode = dir.path().join("bad-mode.toml");
    std::fs::write(&bad_mode, "version = 1\nmode = \"yolo\"\n").unwrap();
    let bad_key = dir.path().join("bad-key.toml");
    std::fs::write(&bad_key, "[filesystem]\nwriteable = [\"/tmp\"]\n").unwrap();
    let out = agent_guard()
        .args(["policy", "check"])
        .arg(&bad_mode)
        .arg(&bad_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:8: unknown mode `yolo`", bad_mode.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:2:1: ", bad_key.display())),
        "{stderr}"
    );
    assert_eq!(stderr.matches("hint: ").count(), 2, "{stderr}");
}

#[test]
fn run_with_a_bad_policy_never_starts_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[filesystem]\nwritable = [\"relative/dir\"]\n").unwrap();
    let marker = dir.path().join("ran");
    let out = agent_guard()
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--")
        .arg("touch")
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:13: ", policy.display())),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command ran despite the bad policy");
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let out = agent_guard().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<CMD>"));
}

/// On a host whose kernel cannot enforce (this one refuses BPF LSM programs), `run` must
/// refuse and say why; on a host that enforces, the command runs guarded. Either way the
/// command never runs unguarded.
#[test]
fn run_never_starts_a_command_unguarded() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = agent_guard()
        .current_dir(dir.path())
        .args(["run", "--events", "-", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(125) => {
            assert!(!marker.exists(), "refused, yet the command ran: {stderr}");
            assert!(
                stderr.contains("refusing to start the command unguarded")
                    || stderr.contains("needs root"),
                "{stderr}"
            );
            assert!(stderr.contains("hint:"), "no fix hint: {stderr}");
        }
        Some(0) => {
            assert!(marker.exists());
            assert!(
                stderr.contains("agent-guard: session "),
                "guarded run without a summary: {stderr}"
            );
        }
        other => panic!("unexpected exit {other:?}: {stderr}"),
    }
}

#[test]
fn policy_show_expands_variables_and_resolves_inodes() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let out = agent_guard()
        .current_dir(dir.path())
        .args(["policy", "show"])
        .arg(policies_dir().join("workstation.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ino = std::fs::metadata(dir.path()).unwrap().ino();
    let workspace = std::fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().to_path_buf());
    assert!(
        stdout.contains(&format!("${{WORKSPACE}} -> {}", dir.path().display()))
            || stdout.contains(&format!("${{WORKSPACE}} -> {}", workspace.display())),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("inode {ino})")), "{stdout}");
    assert!(stdout.contains("mode: enforce"), "{stdout}");
}

/// `policy explain` on this host's files: the nearest rule decides, deny beats allow at the
/// same level, reads are refused only where a rule says so, and a missing parent is an error.
#[test]
fn policy_explain_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    for sub in ["ws/.git/hooks", "ws/data", "home/.ssh", "outside"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for file in [
        "ws/main.rs",
        "ws/data/app.sqlite",
        "ws/.env",
        "home/.ssh/id_rsa",
        "outside/x",
    ] {
        std::fs::write(root.join(file), "x").unwrap();
    }
    let policy = root.join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[filesystem]\nwritable = [\"${{WORKSPACE}}\"]\nprotected = [\"${{WORKSPACE}}/.git/hooks\", \"${{WORKSPACE}}/**/*.sqlite\"]\nread_denied = [\"{home}/.ssh\", \"${{WORKSPACE}}/**/.env*\"]\n\n[[rule]]\nname = \"audit-outside\"\naction = \"audit\"\npaths = [\"{root}/outside\"]\n",
            home = root.join("home").display(),
            root = root.display()
        ),
    )
    .unwrap();
    let explain = |op: &str, paths: &[&str]| -> serde_json::Value {
        let out = agent_guard()
            .current_dir(root.join("ws"))
            .args(["policy", "explain", "--format", "json", "--policy"])
            .arg(&policy)
            .args(["--op", op])
            .args(paths.iter().map(|p| root.join(p)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let said = |v: &serde_json::Value| {
        (
            v["decision"].as_str().unwrap().to_owned(),
            v["rule"].as_str().map(str::to_owned),
        )
    };
    let case = |op: &str, paths: &[&str], decision: &str, rule: Option<&str>| {
        let v = explain(op, paths);
        assert_eq!(
            said(&v),
            (decision.to_owned(), rule.map(str::to_owned)),
            "{op} {paths:?}: {v}"
        );
        v
    };
    case("unlink", &["ws/main.rs"], "allow", Some("writable"));
    let hook = case(
        "create",
        &["ws/.git/hooks/pre-push"],
        "deny",
        Some("protected"),
    );
    assert_eq!(hook["errno"], "EPERM");
    assert!(hook["written_at"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}:3:", policy.display())));
    case(
        "open-write",
        &["ws/data/app.sqlite"],
        "deny",
        Some("protected"),
    );
    case("read", &["ws/data/app.sqlite"], "allow", None);
    let key = case("read", &["home/.ssh/id_rsa"], "deny", Some("read-denied"));
    assert_eq!(key["errno"], "EACCES");
    assert_eq!(
        key["attached_at"].as_str().unwrap(),
        root.join("home/.ssh").display().to_string()
    );
    case("read", &["ws/.env"], "deny", Some("read-denied"));
    case(
        "rename",
        &["ws/.env", "ws/env"],
        "deny",
        Some("read-denied"),
    );
    case("unlink", &["outside/x"], "audit", Some("audit-outside"));
    case(
        "unlink",
        &["home/.ssh/id_rsa"],
        "deny",
        Some("outside-writable-scope"),
    );
    case("rmdir", &["ws"], "deny", Some("scope-root"));

    let out = agent_guard()
        .current_dir(root.join("ws"))
        .args(["policy", "explain", "--policy"])
        .arg(&policy)
        .args(["--op", "rename"])
        .arg(root.join("ws/main.rs"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("takes two paths"));
}

/// `policy explain` of network operations: the most specific block that speaks for the port
/// decides, loopback needs a rule that names it, listening needs a listen rule, abstract
/// sockets need a name, and a target that is no address is a usage error.
#[test]
fn policy_explain_decides_network_operations() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("net.toml");
    std::fs::write(
        &policy,
        r#"[network]
egress = "deny"
[[network.rule]]
name = "lan"
action = "deny"
addresses = ["10.0.0.0/8"]
[[network.rule]]
name = "build-host"
action = "allow"
addresses = ["10.1.2.3"]
ports = [443]
protocol = "tcp"
[[network.rule]]
name = "db"
action = "audit"
addresses = ["127.0.0.1"]
ports = [5432]
[[network.rule]]
name = "dev-server"
action = "allow"
access = "listen"
addresses = ["0.0.0.0"]
ports = [8080]
[[network.rule]]
name = "x11"
action = "allow"
unix = ["@/tmp/.X11-unix/X0"]
"#,
    )
    .unwrap();
    let explain = |args: &[&str]| {
        agent_guard()
            .current_dir(dir.path())
            .args(["policy", "explain", "--format", "json", "--policy"])
            .arg(&policy)
            .args(args)
            .output()
            .unwrap()
    };
    let said = |args: &[&str]| {
        let out = explain(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["decision"].as_str().unwrap().to_owned(),
            v["rule"].as_str().unwrap_or("").to_owned(),
        )
    };
    let is = |d: &str, r: &str| (d.to_owned(), r.to_owned());
    let cases: &[(&[&str], (String, String))] = &[
        (
            &["--op", "connect", "10.1.2.3:443"],
            is("allow", "build-host"),
        ),
        (
            &["--op", "connect", "--protocol", "udp", "10.1.2.3:443"],
            is("deny", "lan"),
        ),
        (&["--op", "connect", "10.9.9.9:443"], is("deny", "lan")),
        (
            &["--op", "send", "[::ffff:10.1.2.3]:443"],
            is("allow", "build-host"),
        ),
        (
            &["--op", "connect", "192.0.2.1:443"],
            is("deny", "egress-default"),
        ),
        (&["--op", "connect", "127.0.0.1:5432"], is("audit", "db")),
        (
            &["--op", "connect", "127.0.0.1:5433"],
            is("deny", "local-destination"),
        ),
        (
            &["--op", "connect", "[::]:5432"],
            is("deny", "local-destination"),
        ),
        (&["--op", "bind", "127.0.0.1:9"], is("allow", "")),
        (
            &["--op", "listen", "0.0.0.0:8080"],
            is("allow", "dev-server"),
        ),
        (
            &["--op", "listen", "0.0.0.0:8081"],
            is("deny", "listen-not-allowed"),
        ),
        (
            &["--op", "connect", "@/tmp/.X11-unix/X0"],
            is("allow", "x11"),
        ),
        (
            &["--op", "connect", "@other"],
            is("deny", "abstract-unix-socket"),
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(&said(args), expected, "{args:?}");
    }
    let out = explain(&["--op", "connect", "not-an-address"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ADDRESS:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Self-protection on this host's own /sys/fs/bpf: `policy check` refuses a policy that
/// would open it, pointing at the entry, and `policy explain` names the built-in rule.
#[test]
fn self_protection_is_checked_and_explained() {
    assert!(
        std::path::Path::new("/sys/fs/bpf").is_dir(),
        "this test needs /sys/fs/bpf (sysfs is mounted on every Linux host)"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[filesystem]\nwritable = [\"${WORKSPACE}\", \"/sys/fs/bpf\"]\n",
    )
    .unwrap();
    let out = agent_guard()
        .current_dir(dir.path())
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:29: ", policy.display())),
        "{stderr}"
    );
    assert!(stderr.contains("rule `self-protection`"), "{stderr}");
    let out = agent_guard()
        .current_dir(dir.path())
        .args(["policy", "explain", "--format", "json", "--op", "create"])
        .arg("/sys/fs/bpf/pinned")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["rule"], "self-protection");
    assert_eq!(json["attached_at"], "/sys/fs/bpf");
    assert!(json.get("written_at").is_none(), "built in: {json}");
}

/// A process of another user listening on a unix socket: what a session could leave at a
/// socket path it may write, hoping to be taken for the daemon.
struct Stranger {
    pid: libc::pid_t,
    uid: u32,
}

impl Stranger {
    /// Forks a listener on `path`, as uid 65534 when the tests run as root, as the tests'
    /// own (unprivileged) user otherwise. It never accepts: `connect` succeeds on the
    /// backlog, which is all a client needs to be fooled.
    fn listen(path: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        let root = nix::unistd::geteuid().is_root();
        let uid = if root {
            65534
        } else {
            nix::unistd::geteuid().as_raw()
        };
        // Everything the child needs is made before the fork: it only makes system calls.
        // SAFETY: a zeroed sockaddr_un is a valid empty address.
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < address.sun_path.len(), "socket path too long");
        for (to, from) in address.sun_path.iter_mut().zip(bytes) {
            *to = *from as libc::c_char;
        }
        let mut ready = [0; 2];
        // SAFETY: pipe(2) into a two-element array.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: the child calls only async-signal-safe functions and ends in _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: plain system calls on values made before the fork.
            unsafe {
                if root && (libc::setgid(65534) != 0 || libc::setuid(65534) != 0) {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if fd < 0
                    || libc::bind(fd, std::ptr::addr_of!(address).cast(), len) != 0
                    || libc::listen(fd, 16) != 0
                {
                    libc::_exit(3);
                }
                libc::write(ready[1], b"r".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        // SAFETY: our copy of the write end; then a one-byte read from the read end.
        let mut byte = 0u8;
        let n = unsafe {
            libc::close(ready[1]);
            let n = libc::read(ready[0], std::ptr::addr_of_mut!(byte).cast(), 1);
            libc::close(ready[0]);
            n
        };
        let stranger = Self { pid, uid };
        assert_eq!(n, 1, "the stranger could not listen on {}", path.display());
        stranger
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A socket where the daemon's should be, served by anyone but root, is not the daemon: a
/// fake could answer "guarded" and let the command run bare. `run` refuses without starting
/// the command, and the control commands refuse to believe it.
#[test]
fn a_control_socket_served_by_anyone_but_root_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // The stranger (uid 65534 when the tests run as root) must be able to bind there.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("agent-guard.sock");
    let stranger = Stranger::listen(&socket);
    let marker = dir.path().join("ran");
    let expected = format!(
        "is served by a process of uid {}, not by root",
        stranger.uid
    );
    let out = agent_guard()
        .env("AGENT_GUARD_SOCKET", &socket)
        .current_dir(dir.path())
        .args(["run", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!marker.exists(), "the command ran: {stderr}");
    for command in [&["status"][..], &["sessions"]] {
        let out = agent_guard()
            .env("AGENT_GUARD_SOCKET", &socket)
            .args(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{command:?}: {stderr}");
        assert!(stderr.contains(&expected), "{command:?}: {stderr}");
    }
}

/// The daemon's record moved where a session might write is refused before anything
/// loads, with the key's line and the fix.
#[test]
fn the_daemon_refuses_to_keep_its_record_where_sessions_could_edit_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "# an audit log in the open\nevents = \"/srv/shared/events.jsonl\"\n",
    )
    .unwrap();
    let out = agent_guard()
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:10: `events` is `/srv/shared/events.jsonl`, outside the directories no session may modify",
            config.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: keep it under /var/log/agent-guard"),
        "{stderr}"
    );
}
