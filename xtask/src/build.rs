//! Building the workspace's binaries and finding their paths.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds every binary of the workspace (the BPF object included, through build.rs).
pub fn build_all() -> anyhow::Result<()> {
    let status = cargo()
        .args(["build", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// Builds the binaries a benchmark runs, optimized.
pub fn build_release() -> anyhow::Result<()> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "agent-guard",
            "-p",
            "xtask",
            "--bin",
            "agent-guard",
            "--bin",
            "ag-bench",
            "--example",
            "event_pipeline",
        ])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

pub fn release_bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}

pub fn agent_guard_bin() -> PathBuf {
    workspace_root().join("target/debug/agent-guard")
}

/// The profile the kernel tiers build with (see `[profile.vm]` in Cargo.toml): optimized,
/// because the guests emulate every instruction, with debug assertions and overflow checks.
pub const VM_PROFILE: &str = "vm";

/// Builds `agent-guard` in the kernel tiers' profile and returns its path.
pub fn vm_agent_guard() -> anyhow::Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--profile",
            VM_PROFILE,
            "-p",
            "agent-guard",
            "--bin",
            "agent-guard",
        ])
        .status()
        .context("running cargo build --profile vm")?;
    if !status.success() {
        bail!("cargo build --profile {VM_PROFILE} failed");
    }
    Ok(workspace_root()
        .join("target")
        .join(VM_PROFILE)
        .join("agent-guard"))
}

/// Builds an integration-test target in `profile` without running it and returns its
/// executable.
pub fn test_executable(package: &str, test: &str, profile: &str) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "test",
            "--profile",
            profile,
            "-p",
            package,
            "--test",
            test,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the `{test}` test of {package} failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == test {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo did not report the executable of test `{test}`")
}
