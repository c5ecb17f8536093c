//! Running commands inside a VM booted from one of Debian's kernels with virtme-ng.
//!
//! The guest shares the host's root filesystem (read-only, with writable overlays in guest
//! memory), so binaries built here run in place. Software emulation (TCG) is used because
//! KVM is unusable on these hosts; everything runs about 45 times slower than on the host.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{build::workspace_root, setup::vng};

/// Boot parameter that leaves BPF out of the active LSMs, like a default Ubuntu host.
pub const NO_BPF_LSM: &str = "lsm=landlock,lockdown,yama,apparmor";

pub struct VmRun {
    pub success: bool,
    /// Exited through `timeout`: the guest was still running when its time was up.
    pub timed_out: bool,
    pub output: String,
    /// The guest's stdout lines, each with the seconds since the boot started at which it
    /// arrived.
    pub timed_lines: Vec<(f64, String)>,
}

/// Boots `kernel` and runs `script` (bash) in the guest, streaming its output with `label`
/// in front of each line. The whole boot is bounded by `timeout_secs`.
pub fn run(
    kernel: &Path,
    append: Option<&str>,
    script: &str,
    label: &str,
    timeout_secs: u32,
) -> anyhow::Result<VmRun> {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=20", &timeout_secs.to_string()])
        .arg(vng())
        .arg("--run")
        .arg(kernel)
        // 4 GiB: the guest's /tmp, where every fixture lives, is an overlay in guest memory
        // sized at half of it, and the suite's daemons, rsyslogd and floods run beside it.
        .args(["--disable-kvm", "--memory", "4G", "--cpus", "2"]);
    if let Some(append) = append {
        cmd.args(["--append", append]);
    }
    cmd.args(["--exec", &format!("bash -c {}", shell_quote(script))])
        // vng runs its own helpers (virtme-run) from the venv.
        .env("PATH", path_with_venv())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting vng")?;
    let stderr = child.stderr.take().expect("piped");
    let err_label = label.to_owned();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{err_label}] {line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let started = std::time::Instant::now();
    let mut output = String::new();
    let mut timed_lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("[{label}] {line}");
        output.push_str(&line);
        output.push('\n');
        timed_lines.push((started.elapsed().as_secs_f64(), line));
    }
    let status = child.wait().context("waiting for vng")?;
    output.push_str(&err_thread.join().unwrap_or_default());
    // timeout(1) exits 124 when it stopped the command, 137 when it had to SIGKILL it.
    let timed_out = matches!(status.code(), Some(124 | 137));
    Ok(VmRun {
        success: status.success(),
        timed_out,
        output,
        timed_lines,
    })
}

fn path_with_venv() -> std::ffi::OsString {
    let mut dirs = vec![crate::setup::venv_dir().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
