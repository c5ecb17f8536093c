//! `cargo xtask demo`: the README's main job. A rogue agent works in its workspace and then
//! goes for a production tree; agent-guard stops it in the kernel and reports each attempt.
//!
//! The host kernel is used when it enforces BPF LSM (checked by running a guarded `true`,
//! whose self-check includes a canary denial); otherwise the demo boots the 6.12 VM.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::{
    build::{agent_guard_bin, build_all, workspace_root},
    setup::{kernel_image, setup, Verbosity},
    vm,
};

pub fn demo() -> anyhow::Result<()> {
    setup(Verbosity::Quiet)?;
    build_all()?;
    let script = workspace_root().join("xtask/demo/demo.sh");
    let agent_guard = agent_guard_bin();

    let host_enforces = Command::new(&agent_guard)
        .args(["run", "--events", "/dev/null", "--", "true"])
        .current_dir("/tmp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if host_enforces {
        println!("demo: this host's kernel enforces BPF LSM; running here.");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&agent_guard)
            .status()
            .context("running the demo")?;
        if !status.success() {
            bail!("the demo failed");
        }
        return Ok(());
    }
    let kernel =
        kernel_image("6.12").context("no 6.12 kernel image in /boot; run `cargo xtask setup`")?;
    println!(
        "demo: this host's kernel does not enforce BPF LSM programs; booting {} under qemu (about 30 s)...",
        kernel.display()
    );
    let run = vm::run(
        &kernel,
        None,
        &format!("bash {} {}", script.display(), agent_guard.display()),
        "vm",
        15 * 60,
    )?;
    if !run.success {
        bail!("the demo failed in the VM");
    }
    Ok(())
}
