//! The mandatory base policy in /etc/agent-guard/base.toml: `run` combines every session's
//! policy with it. The base's denials decide inside the session (reported as `base:NAME`),
//! and a session policy that would loosen the base never starts.
use std::{fs, path::PathBuf, process::Command};

use crate::{
    expect::deny,
    fixture::{agent_guard_bin, Fixture},
    script::Script,
    session::{Run, WORKSPACE_POLICY},
};

const BASE_PATH: &str = "/etc/agent-guard/base.toml";

/// /etc/agent-guard/base.toml for the duration of a test; removed (with the directory, if
/// the test made it) on drop.
struct Base {
    made_dir: bool,
}

impl Base {
    fn install(text: &str) -> Self {
        let dir = PathBuf::from("/etc/agent-guard");
        let made_dir = !dir.exists();
        if made_dir {
            fs::create_dir(&dir).expect("create /etc/agent-guard");
        }
        assert!(
            !PathBuf::from(BASE_PATH).exists(),
            "{BASE_PATH} already exists; this test will not replace an administrator's base policy"
        );
        fs::write(BASE_PATH, text).expect("write the base policy");
        Self { made_dir }
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = fs::remove_file(BASE_PATH);
        if self.made_dir {
            let _ = fs::remove_dir("/etc/agent-guard");
        }
    }
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn the_base_policy_decides_inside_every_session_and_refuses_looser_ones() {
    let fx = Fixture::new("base-policy");
    fx.write("ws/keep.db", "kept\n");
    let _base = Base::install(
        "version = 1\n[filesystem]\nwritable = [\"${WORKSPACE}\"]\nprotected = [\"${WORKSPACE}/keep.db\"]\nwritable_devices = [\"/dev/null\", \"/dev/zero\", \"/dev/full\", \"/dev/random\", \"/dev/urandom\"]\n",
    );
    let script = Script::new(&fx)
        .probe("notes", &["create", "notes"])
        .probe("keep-unlink", &["unlink", "keep.db"]);
    let s = Run::script(&fx, script).policy(WORKSPACE_POLICY).finish();
    s.assert_results(&[("notes", "ok"), ("keep-unlink", "EPERM")]);
    fx.assert_content("ws/keep.db", "kept\n");
    s.assert_decisions(&[deny(
        "unlink",
        &[&fx.s("ws/keep.db")],
        "base:protected",
        s.outcome("keep-unlink"),
    )]);

    // A session that would open what the base protects is refused, pointing at its entry.
    let policy = fx.path("looser.toml");
    fs::write(
        &policy,
        "version = 1\n[filesystem]\nwritable = [\"${WORKSPACE}\", \"${WORKSPACE}/keep.db\"]\n",
    )
    .expect("write the session policy");
    let marker = fx.path("ws/ran");
    let out = Command::new(agent_guard_bin())
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--events")
        .arg(fx.path("looser.jsonl"))
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
        "{stderr}"
    );
    assert!(
        stderr.contains("the base policy's rule `protected`"),
        "{stderr}"
    );
    assert!(
        !marker.exists(),
        "the command ran despite the refused policy"
    );
}
