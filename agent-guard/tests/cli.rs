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
