//! `cargo xtask bench-daemon`: the daemon's start-to-enforcing time and idle memory,
//! measured inside the VM, with the VM's slowdown against this host measured in the same
//! run so that the figures can be read as host figures.
//!
//! - start to enforcing, fresh: from spawning `agent-guard daemon` with no pins until its
//!   control socket answers (the programs are loaded, attached, proven by the canary and
//!   pinned before the socket opens), and the daemon's own figure for the same span;
//! - start to enforcing, adopting: the same with the pins of a SIGKILLed daemon present
//!   (enforcement never paused; this is how long sessions have no daemon to talk to);
//! - idle RSS: VmRSS of the daemon three seconds after it answered, no session running;
//! - slowdown: the same syscall loop (create+write+unlink, `ag-bench`) and the same
//!   user-space hashing (`sha256sum` of 64 MiB) on the host and in the VM.
//!
//! Targets (issue #5): RSS at most 25 MB; start to enforcing at most 0.5 s.
use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Context as _};

use crate::{
    build::{build_release, release_bin, workspace_root},
    setup::{kernel_image, setup, Verbosity},
    vm,
};

/// The part of the benchmark that runs both on the host and in the guest: the slowdown
/// reference.
fn reference_script(bench: &str) -> String {
    format!(
        r#"R=$(mktemp -d)
head -c 67108864 /dev/zero > $R/zero
for r in 1 2 3; do
  s=$(date +%s%N); sha256sum $R/zero >/dev/null; e=$(date +%s%N)
  echo "RESULT hash $(( (e - s) ))"
  echo "RESULT syscalls $({bench} create-write-unlink $R 2000 | sed 's/.*ns_per_iter=\([0-9.]*\).*/\1/')"
done
rm -rf $R
"#
    )
}

pub fn bench_daemon(repetitions: u32) -> anyhow::Result<()> {
    setup(Verbosity::Quiet)?;
    build_release()?;
    let kernel = kernel_image("6.12").context("no 6.12 kernel; run `cargo xtask setup`")?;
    let ag = release_bin("agent-guard").display().to_string();
    let bench = release_bin("ag-bench").display().to_string();
    let reference = reference_script(&bench);

    let host = Command::new("bash")
        .args(["-c", &reference])
        .output()
        .context("running the host reference")?;
    if !host.status.success() {
        bail!(
            "the host reference failed: {}",
            String::from_utf8_lossy(&host.stderr)
        );
    }
    let host = parse(&String::from_utf8_lossy(&host.stdout));

    let script = format!(
        r#"set -eu
AG={ag}; D=/tmp/ag-bench-daemon
rm -rf $D; mkdir -p $D
cat > $D/config.toml <<CONFIG
socket = "/run/agent-guard/bench.sock"
pin_dir = "/sys/fs/bpf/ag-bench"
state_dir = "/run/agent-guard/bench"
events = "/run/agent-guard/bench/events.jsonl"
base_policy = "$D/none.toml"
policy_dir = "$D/policies"
CONFIG
export AGENT_GUARD_SOCKET=/run/agent-guard/bench.sock
now() {{ date +%s%N; }}
wait_ready() {{
  until $AG status --json >$D/status.json 2>/dev/null; do
    kill -0 $1 2>/dev/null || {{ echo "FAILED the daemon exited"; cat $D/log; exit 1; }}
    sleep 0.01
  done
}}
for r in $(seq {repetitions}); do
  rm -rf /sys/fs/bpf/ag-bench /run/agent-guard/bench
  s=$(now); $AG daemon --config $D/config.toml 2>>$D/log & P=$!
  wait_ready $P; e=$(now)
  echo "RESULT fresh-wall $(( e - s ))"
  echo "RESULT fresh-own $(sed 's/.*"started_in_ms":\([0-9]*\).*/\1/' $D/status.json)000000"
  echo "RESULT fresh-load $(sed 's/.*"load_ms":\([0-9]*\).*/\1/' $D/status.json)000000"
  echo "RESULT fresh-canary $(sed 's/.*"canary_ms":\([0-9]*\).*/\1/' $D/status.json)000000"
  sleep 3
  echo "RESULT rss-kb $(awk '/^VmRSS/ {{print $2}}' /proc/$P/status)"
  echo "RESULT hwm-kb $(awk '/^VmHWM/ {{print $2}}' /proc/$P/status)"
  echo "RESULT anon-kb $(awk '/^RssAnon/ {{print $2}}' /proc/$P/status)"
  echo "RESULT file-kb $(awk '/^RssFile/ {{print $2}}' /proc/$P/status)"
  kill -KILL $P; wait $P 2>/dev/null || true
  s=$(now); $AG daemon --config $D/config.toml 2>>$D/log & P=$!
  wait_ready $P; e=$(now)
  echo "RESULT adopt-wall $(( e - s ))"
  echo "RESULT adopt-own $(sed 's/.*"started_in_ms":\([0-9]*\).*/\1/' $D/status.json)000000"
  sleep 3
  echo "RESULT adopt-rss-kb $(awk '/^VmRSS/ {{print $2}}' /proc/$P/status)"
  kill -TERM $P; wait $P 2>/dev/null || true
done
{reference}"#
    );
    let script_path = workspace_root().join("target/xtask-bench-daemon.sh");
    std::fs::write(&script_path, &script)
        .with_context(|| format!("write {}", script_path.display()))?;
    let run = vm::run(
        &kernel,
        None,
        &format!("bash {}", script_path.display()),
        "bench-daemon",
        30 * 60,
    )?;
    if !run.success {
        bail!("the daemon benchmark failed in the VM");
    }
    let guest = parse(&run.output);
    let median = |samples: &BTreeMap<String, Vec<f64>>, key: &str| -> anyhow::Result<f64> {
        let mut v = samples
            .get(key)
            .cloned()
            .with_context(|| format!("no samples for {key}"))?;
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let hash = median(&guest, "hash")? / median(&host, "hash")?;
    let syscalls = median(&guest, "syscalls")? / median(&host, "syscalls")?;
    println!();
    println!(
        "kernel {}, {repetitions} repetitions, medians",
        kernel.display()
    );
    println!("VM slowdown against this host: {hash:.1}x (sha256 of 64 MiB), {syscalls:.1}x (create+write+unlink)");
    println!(
        "{:<52} {:>10} {:>18}",
        "measure", "in the VM", "/ syscall slowdown"
    );
    for (label, key) in [
        ("start to enforcing, fresh (spawn to socket)", "fresh-wall"),
        ("start to enforcing, fresh (daemon's own)", "fresh-own"),
        (
            "  of which loading and attaching the programs",
            "fresh-load",
        ),
        ("  of which the canary", "fresh-canary"),
        (
            "start to answering, adopting pins (spawn to socket)",
            "adopt-wall",
        ),
        (
            "start to answering, adopting pins (daemon's own)",
            "adopt-own",
        ),
    ] {
        let ms = median(&guest, key)? / 1e6;
        println!("{label:<52} {:>8.0}ms {:>16.0}ms", ms, ms / syscalls);
    }
    for (label, key) in [
        ("idle RSS, fresh start (target <= 25 MB)", "rss-kb"),
        ("  of which anonymous (the daemon's own memory)", "anon-kb"),
        (
            "  of which file-backed (binary, ring buffer map)",
            "file-kb",
        ),
        ("peak RSS, fresh start", "hwm-kb"),
        ("idle RSS, after adopting the pins", "adopt-rss-kb"),
    ] {
        let mb = median(&guest, key)? / 1024.0;
        println!("{label:<52} {mb:>8.1}MB {:>18}", "(not scaled)");
    }
    Ok(())
}

fn parse(output: &str) -> BTreeMap<String, Vec<f64>> {
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("RESULT ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        if let (Some(key), Some(Ok(value))) = (parts.next(), parts.next().map(str::parse::<f64>)) {
            samples.entry(key.to_owned()).or_default().push(value);
        }
    }
    samples
}
