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

/// Debian packages: qemu and busybox for the VMs, the two test kernels
/// (`linux-image-amd64` is the newest 6.1), and for the network tests `ip` (network
/// namespaces, veth pairs) and dnsmasq (`dnsmasq-base`: the binary without a system
/// service), which the VMs run from the host's root filesystem. rsyslog is the real
/// receiver of the syslog sink's host test, which runs its own rsyslogd with a config of
/// its own. bpf-linker needs no LLVM package: it links against the nightly toolchain's own
/// (see [`rustc_llvm`]).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "linux-image-amd64",
    "linux-image-6.12-amd64",
    "iproute2",
    "dnsmasq-base",
    "rsyslog",
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

/// bpf-linker versions whose `llvm-NN` features cover the nightly LLVMs seen here (21 to
/// 23).
const BPF_LINKER_VERSION: &str = "~0.13";

/// The LLVM inside the nightly toolchain, which compiles the BPF crate to bitcode.
/// bpf-linker must read that bitcode with the same LLVM: a Debian LLVM of another version
/// fails with "Invalid record" once nightly moves on, so bpf-linker is linked against the
/// toolchain's own `libLLVM` and rebuilt whenever the toolchain changes.
pub struct RustcLlvm {
    /// `lib/libLLVM.so.*` of the nightly sysroot.
    library: PathBuf,
    major: u32,
    /// `rustc -vV` of the nightly: what bpf-linker was last built for.
    identity: String,
}

impl RustcLlvm {
    /// A prefix with `lib/libLLVM.so` (what bpf-linker's build links with `-lLLVM`) and
    /// the library under its own soname (what the binary's rpath finds at run time).
    fn link_prefix(&self) -> anyhow::Result<()> {
        let lib = llvm_prefix().join("lib");
        std::fs::create_dir_all(&lib)?;
        let soname = self
            .library
            .file_name()
            .context("the LLVM library has no file name")?;
        for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
            let link = lib.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&self.library, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(())
    }
}

fn llvm_prefix() -> PathBuf {
    venv_dir().with_file_name("rustc-llvm")
}

fn llvm_stamp() -> PathBuf {
    llvm_prefix().join("bpf-linker-built-for")
}

pub fn rustc_llvm() -> anyhow::Result<RustcLlvm> {
    let identity = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("no nightly toolchain (rustup toolchain install nightly --component rust-src)")?;
    let major = identity
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .context("`rustc -vV` of the nightly names no LLVM version")?;
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("cannot find the nightly sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let library = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    Ok(RustcLlvm {
        library,
        major,
        identity,
    })
}

/// Whether the installed bpf-linker runs and was built for this nightly's LLVM.
fn bpf_linker_matches(llvm: &RustcLlvm) -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
        && std::fs::read_to_string(llvm_stamp()).is_ok_and(|built| built == llvm.identity)
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

    match rustc_llvm() {
        Ok(llvm) if bpf_linker_matches(&llvm) => {}
        Ok(llvm) if succeeds(Command::new("cargo").arg("--version")) => {
            eprintln!(
                "setup: building bpf-linker against the nightly toolchain's LLVM {} (about a minute)",
                llvm.major
            );
            llvm.link_prefix()?;
            run(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        BPF_LINKER_VERSION,
                        "--force",
                        "--no-default-features",
                        "--features",
                        &format!("llvm-{}", llvm.major),
                    ])
                    .env("LLVM_PREFIX", llvm_prefix()),
                "cargo install bpf-linker",
            )?;
            std::fs::write(llvm_stamp(), &llvm.identity)?;
            installed += 1;
        }
        Ok(llvm) => manual.push(format!(
            "bpf-linker: LLVM_PREFIX={} cargo install bpf-linker --no-default-features --features llvm-{}",
            llvm_prefix().display(),
            llvm.major
        )),
        Err(e) => manual.push(format!("bpf-linker: {e:#}")),
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
