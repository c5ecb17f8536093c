//! Self-protection: from inside a session whose policy makes all of `/` writable, the
//! session still cannot write agent-guard's configuration, runtime, state and log
//! directories, unpin BPF objects, write cgroup control files or connect to a unix socket
//! under /run/agent-guard. Each refusal is EPERM and reported with the rule
//! `self-protection`; the test process, outside the session, can still do each. A policy
//! that tries to open one of these paths is refused before the command starts.
use std::{
    ffi::CString,
    fs,
    io::Read as _,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    fixture::{agent_guard_bin, Fixture, PRECIOUS},
    script::Script,
    session::{Run, Session},
};

const SELF_PROTECTION: &str = "self-protection";

/// As broad as the language goes: every file is in the writable scope.
const EVERYTHING_WRITABLE: &str = r#"version = 1
mode = "enforce"

[filesystem]
writable = ["/"]
writable_devices = ["/dev/null"]
terminals = true
"#;

/// The directories the test creates when they are missing, removed again on drop (only
/// those it created, deepest first).
struct Made(Vec<PathBuf>);

impl Made {
    fn dirs(paths: &[&str]) -> Self {
        let mut made = Vec::new();
        for path in paths {
            let path = Path::new(path);
            let mut missing: Vec<&Path> = path.ancestors().take_while(|p| !p.exists()).collect();
            missing.reverse();
            for dir in missing {
                fs::create_dir(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                made.push(dir.to_path_buf());
            }
        }
        Self(made)
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A file the test creates, removed on drop.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn plant(path: &str) -> Planted {
    fs::write(path, PRECIOUS).unwrap_or_else(|e| panic!("write {path}: {e}"));
    Planted(PathBuf::from(path))
}

fn is_mount_of(point: &str, fstype: &str) -> bool {
    fs::read_to_string("/proc/self/mounts")
        .expect("read /proc/self/mounts")
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&point) && f.get(2) == Some(&fstype)
        })
}

/// A filesystem mounted by the test where the VM has none, unmounted on drop.
struct Mounted(Option<&'static str>);

impl Mounted {
    fn ensure(point: &'static str, fstype: &str) -> Self {
        if is_mount_of(point, fstype) {
            return Self(None);
        }
        let status = Command::new("mount")
            .args(["-t", fstype, fstype, point])
            .status()
            .unwrap_or_else(|e| panic!("run mount: {e}"));
        assert!(
            status.success(),
            "mount -t {fstype} {point} failed: {status}"
        );
        Self(Some(point))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(point) = self.0 {
            let _ = Command::new("umount").arg(point).status();
        }
    }
}

/// A BPF array map pinned at `path` by the test process, with bpf(2) itself (the test needs
/// no bpftool). Unpinned on drop if still there.
struct Pinned(PathBuf);

impl Pinned {
    fn array_map(path: &str) -> Self {
        let _ = fs::remove_file(path);
        // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
        let mut attr = [0u8; 128];
        for (i, v) in [2u32 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1].iter().enumerate() {
            attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        // SAFETY: bpf(2) reads `attr`, a buffer of the size given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0, /* BPF_MAP_CREATE */
                attr.as_ptr(),
                attr.len(),
            )
        };
        assert!(
            fd >= 0,
            "bpf(BPF_MAP_CREATE): {}",
            std::io::Error::last_os_error()
        );
        let cpath = CString::new(path).expect("a path without NUL");
        // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32).
        let mut attr = [0u8; 128];
        attr[..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
        attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
        // SAFETY: as above; `cpath` outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                6, /* BPF_OBJ_PIN */
                attr.as_ptr(),
                attr.len(),
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: the map's descriptor, ours to close; the pin keeps the map.
        unsafe { libc::close(fd as i32) };
        assert_eq!(rc, 0, "bpf(BPF_OBJ_PIN, {path}): {err}");
        Self(PathBuf::from(path))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The single event of the probe labelled `label`: a denial of `op` by `self-protection`,
/// EPERM, on `path` (or, for a unix connect, on the socket `path`).
fn assert_refused_by_self_protection(s: &Session, label: &str, op: &str, path: &str) {
    let by = s.outcome(label);
    let events: Vec<_> = s
        .log
        .decisions
        .iter()
        .filter(|e| e.pid == by.pid && e.op == op)
        .collect();
    let all = || {
        s.log
            .decisions
            .iter()
            .map(|e| e.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        events.len(),
        1,
        "`{label}`: one `{op}` event expected; events:\n{}",
        all()
    );
    let e = events[0];
    assert_eq!(e.rule, SELF_PROTECTION, "`{label}`: {}", e.line);
    assert_eq!(e.decision, "deny", "`{label}`: {}", e.line);
    assert_eq!(e.errno, libc::EPERM as u32, "`{label}`: {}", e.line);
    assert_eq!(
        e.errno_name.as_deref(),
        Some("EPERM"),
        "`{label}`: {}",
        e.line
    );
    assert_eq!(e.comm, "ag-probe", "`{label}`: {}", e.line);
    if op == "connect" {
        assert_eq!(e.family.as_deref(), Some("unix"), "`{label}`: {}", e.line);
        assert_eq!(
            e.socket_path.as_deref(),
            Some(path),
            "`{label}`: {}",
            e.line
        );
    } else {
        assert_eq!(
            e.paths.first().map(String::as_str),
            Some(path),
            "`{label}`: {}",
            e.line
        );
    }
}

const DIRS: [(&str, &str); 4] = [
    ("etc", "/etc/agent-guard"),
    ("run", "/run/agent-guard"),
    ("lib", "/var/lib/agent-guard"),
    ("log", "/var/log/agent-guard"),
];

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_session_that_may_write_everything_cannot_touch_agent_guards_own_files() {
    let fx = Fixture::new("selfprotect");
    // Everything the session will try exists when it starts, so the rule attaches to it.
    let _made = Made::dirs(&DIRS.map(|(_, d)| d));
    let victims: Vec<Planted> = DIRS
        .iter()
        .map(|(_, d)| plant(&format!("{d}/victim")))
        .collect();
    let _bpffs = Mounted::ensure("/sys/fs/bpf", "bpf");
    let pin = Pinned::array_map("/sys/fs/bpf/agtest");
    let _cgroup2 = if is_mount_of("/sys/fs/cgroup", "cgroup2") {
        Mounted(None)
    } else {
        Mounted::ensure("/sys/fs/cgroup", "cgroup2")
    };
    let child_cgroup = format!("/sys/fs/cgroup/agtest-{}", std::process::id());
    let _child = Made::dirs(&[&child_cgroup]);
    let socket_path = "/run/agent-guard/agtest.sock";
    let _ = fs::remove_file(socket_path);
    let listener =
        UnixListener::bind(socket_path).unwrap_or_else(|e| panic!("bind {socket_path}: {e}"));
    let _socket = Planted(PathBuf::from(socket_path));

    let mut script = Script::new(&fx);
    for (name, dir) in DIRS {
        script = script
            .probe(
                &format!("{name}-create"),
                &["create", &format!("{dir}/planted")],
            )
            .probe(
                &format!("{name}-write"),
                &["open-write", &format!("{dir}/victim")],
            )
            .probe(
                &format!("{name}-unlink"),
                &["unlink", &format!("{dir}/victim")],
            );
    }
    let procs = format!("{child_cgroup}/cgroup.procs");
    let kill = format!("{child_cgroup}/cgroup.kill");
    let script = script
        .probe("bpf-unpin", &["unlink", "/sys/fs/bpf/agtest"])
        .probe(
            "cgroup-root-procs",
            &["open-write", "/sys/fs/cgroup/cgroup.procs"],
        )
        .probe("cgroup-child-procs", &["open-write", &procs])
        .probe("cgroup-child-kill", &["open-write", &kill])
        .probe(
            "cgroup-mkdir",
            &["mkdir", &format!("{child_cgroup}/nested")],
        )
        .probe("control-socket", &["unix-connect", socket_path, "TEXT"])
        // Elsewhere the session writes freely.
        .probe("elsewhere", &["create", &fx.s("prod/anything")])
        .pause();
    let mut running = Run::script(&fx, script).policy(EVERYTHING_WRITABLE).start();
    running.wait_for_pause();

    // A bystander, outside the session, while the guard is loaded.
    for (_, dir) in DIRS {
        let planted = format!("{dir}/outsider");
        fs::write(&planted, "outside\n")
            .unwrap_or_else(|e| panic!("outsider write {planted}: {e}"));
        fs::remove_file(&planted).unwrap_or_else(|e| panic!("outsider unlink {planted}: {e}"));
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .unwrap_or_else(|e| panic!("outsider open {procs} for writing: {e}"));
    // The child cgroup is empty: killing it kills nothing.
    fs::write(&kill, "1").unwrap_or_else(|e| panic!("outsider write {kill}: {e}"));
    let outsider = UnixStream::connect(socket_path)
        .unwrap_or_else(|e| panic!("outsider connect {socket_path}: {e}"));
    let (mut served, _) = listener.accept().expect("accept the outsider");
    drop(outsider.shutdown(std::net::Shutdown::Write));
    let mut nothing = Vec::new();
    served
        .read_to_end(&mut nothing)
        .expect("read from the outsider");
    fs::remove_file(&pin.0).expect("the outsider unpins the map");

    let s = running.finish();
    let mut expected: Vec<(String, &str)> = Vec::new();
    for (name, _) in DIRS {
        for what in ["create", "write", "unlink"] {
            expected.push((format!("{name}-{what}"), "EPERM"));
        }
    }
    for label in [
        "bpf-unpin",
        "cgroup-root-procs",
        "cgroup-child-procs",
        "cgroup-child-kill",
        "cgroup-mkdir",
        "control-socket",
    ] {
        expected.push((label.to_owned(), "EPERM"));
    }
    expected.push(("elsewhere".to_owned(), "ok"));
    let expected: Vec<(&str, &str)> = expected.iter().map(|(l, r)| (l.as_str(), *r)).collect();
    s.assert_results(&expected);

    for (name, dir) in DIRS {
        assert_refused_by_self_protection(
            &s,
            &format!("{name}-create"),
            "create",
            &format!("{dir}/planted"),
        );
        assert_refused_by_self_protection(
            &s,
            &format!("{name}-write"),
            "open-write",
            &format!("{dir}/victim"),
        );
        assert_refused_by_self_protection(
            &s,
            &format!("{name}-unlink"),
            "unlink",
            &format!("{dir}/victim"),
        );
        assert!(
            !Path::new(&format!("{dir}/planted")).exists(),
            "{dir}/planted was created"
        );
    }
    for victim in &victims {
        assert_eq!(
            fs::read_to_string(&victim.0).ok().as_deref(),
            Some(PRECIOUS),
            "{} changed",
            victim.0.display()
        );
    }
    assert_refused_by_self_protection(&s, "bpf-unpin", "unlink", "/sys/fs/bpf/agtest");
    assert_refused_by_self_protection(
        &s,
        "cgroup-root-procs",
        "open-write",
        "/sys/fs/cgroup/cgroup.procs",
    );
    assert_refused_by_self_protection(&s, "cgroup-child-procs", "open-write", &procs);
    assert_refused_by_self_protection(&s, "cgroup-child-kill", "open-write", &kill);
    assert_refused_by_self_protection(
        &s,
        "cgroup-mkdir",
        "mkdir",
        &format!("{child_cgroup}/nested"),
    );
    assert_refused_by_self_protection(&s, "control-socket", "connect", socket_path);
    assert!(
        !Path::new(&format!("{child_cgroup}/nested")).exists(),
        "the session created a cgroup"
    );
    drop(listener);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_policy_that_would_open_a_self_protected_path_never_starts() {
    let fx = Fixture::new("selfprotect-refused");
    let _made = Made::dirs(&["/etc/agent-guard"]);
    let policy = fx.path("policy.toml");
    fs::write(
        &policy,
        "version = 1\n[filesystem]\nwritable = [\"${WORKSPACE}\", \"/etc/agent-guard\"]\n",
    )
    .expect("write the policy");
    let marker = fx.path("ws/ran");
    let out = Command::new(agent_guard_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--events")
        .arg(fx.path("events.jsonl"))
        .arg("--")
        .arg("touch")
        .arg(&marker)
        .current_dir(&fx.ws)
        .output()
        .expect("start agent-guard run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:29: ", policy.display())),
        "the error points at the entry: {stderr}"
    );
    assert!(stderr.contains("rule `self-protection`"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    assert!(
        !marker.exists(),
        "the command ran despite the refused policy"
    );
    assert!(
        !fx.path("events.jsonl").exists()
            || fs::read_to_string(fx.path("events.jsonl"))
                .unwrap()
                .is_empty(),
        "no session was started"
    );
}
