//! `cargo xtask setup`: installs what the build and the tests need, idempotently.
//!
//! Each requirement has a cheap check; only missing ones are installed. Where installing is
//! impossible (no apt, not root), the command fails and lists what to install by hand.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

/// Debian packages: LLVM 22 for bpf-linker, qemu and busybox for the VMs, and the two test
/// kernels (`linux-image-amd64` is the newest 6.1).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "linux-image-amd64",
    "linux-image-6.12-amd64",
];

/// Where virtme-ng lives: outside the checkout, so fresh clones share it.
pub fn venv_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/agent-guard/vng-venv")
}

pub fn vng() -> PathBuf {
    venv_dir().join("bin/vng")
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Report,
    Quiet,
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect()
}

/// The newest kernel image in /boot whose version starts with `series` followed by a dot
/// (so "6.1" does not match 6.12).
pub fn kernel_image(series: &str) -> Option<PathBuf> {
    let prefix = format!("vmlinuz-{series}.");
    let mut images: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    images.sort();
    images.pop()
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Checks everything and installs what is missing. Returns the number of items installed.
pub fn setup(verbosity: Verbosity) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut installed = 0;
    let mut manual: Vec<String> = Vec::new();
    let can_apt = is_root() && Path::new("/usr/bin/apt-get").exists();

    let packages = missing_packages();
    if !packages.is_empty() {
        if can_apt {
            eprintln!("setup: installing {}", packages.join(" "));
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            )?;
            run(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(&packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                "apt-get install",
            )?;
            installed += packages.len();
        } else {
            manual.push(format!(
                "Debian packages (as root): apt-get install {}",
                packages.join(" ")
            ));
        }
    }

    let has_nightly_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    if !has_nightly_src {
        if succeeds(Command::new("rustup").arg("--version")) {
            eprintln!("setup: installing the nightly toolchain's rust-src");
            run(
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
                "rustup toolchain install nightly",
            )?;
            installed += 1;
        } else {
            manual
                .push("rustup, then: rustup toolchain install nightly --component rust-src".into());
        }
    }

    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        if Path::new("/usr/lib/llvm-22/bin/llvm-config").exists()
            && succeeds(Command::new("cargo").arg("--version"))
        {
            eprintln!("setup: building bpf-linker against LLVM 22 (about a minute)");
            run(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                    .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
                "cargo install bpf-linker",
            )?;
            installed += 1;
        } else {
            manual.push("bpf-linker: LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22".into());
        }
    }

    if !succeeds(Command::new(vng()).arg("--version"))
        && !succeeds(Command::new("python3").args(["-m", "venv", "--help"]))
    {
        manual.push(format!(
            "virtme-ng: python3 -m venv {0} && {0}/bin/pip install virtme-ng",
            venv_dir().display()
        ));
    } else if !succeeds(Command::new(vng()).arg("--version")) {
        let venv = venv_dir();
        eprintln!("setup: installing virtme-ng into {}", venv.display());
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)?;
        }
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        run(
            Command::new(venv.join("bin/pip")).args(["install", "-q", "virtme-ng"]),
            "pip install virtme-ng",
        )?;
        installed += 1;
    }

    for series in ["6.1", "6.12"] {
        if kernel_image(series).is_none() && manual.is_empty() {
            manual.push(format!("a Debian {series} kernel image in /boot (linux-image-amd64 / linux-image-6.12-amd64)"));
        }
    }

    if !manual.is_empty() {
        eprintln!("setup: cannot install everything on this machine; install by hand:");
        for item in &manual {
            eprintln!("  - {item}");
        }
        bail!("{} requirement(s) missing", manual.len());
    }
    if verbosity == Verbosity::Report || installed > 0 {
        eprintln!(
            "setup: toolchain, qemu, virtme-ng and kernels present ({installed} installed) in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(installed)
}
