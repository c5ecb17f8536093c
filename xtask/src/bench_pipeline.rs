//! The event pipeline's throughput on the host, one core: `cargo xtask bench` runs the
//! `event_pipeline` example (agent-guard/examples/event_pipeline.rs) on a synthetic feed
//! of ring-buffer records and prints its rates and its ratios against writing the same
//! lines already rendered, measured in the same run.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::build::workspace_root;

/// Records fed through the pipeline; about a second of work at the target rate.
const EVENTS: u64 = 1_000_000;
/// The target for decode, enrich and write, in events per second on one core.
const TARGET: f64 = 1_000_000.0;

/// Runs the example `build_release` built.
pub fn bench_pipeline() -> anyhow::Result<()> {
    let root = workspace_root();
    let dir = root.join("target/xtask-pipeline");
    // One core: the pipeline is one thread in the daemon too; taskset keeps the kernel's
    // side of the writes from hiding on the other core's idle time.
    let out = Command::new("taskset")
        .args(["--cpu-list", "0"])
        .arg(root.join("target/release/examples/event_pipeline"))
        .arg(&dir)
        .arg(EVENTS.to_string())
        .output()
        .context("run the event_pipeline example under taskset")?;
    if !out.status.success() {
        bail!(
            "the event pipeline benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the benchmark's JSON result")?;
    let number = |key: &str| result[key].as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "event pipeline on the host, one core, {EVENTS} synthetic ring-buffer records ({:.0} bytes per line; ratios against writing the same lines already rendered, {:.0}/s)",
        number("bytes_per_event"),
        number("baseline_events_per_second")
    );
    println!("{:<48} {:>12} {:>7}", "stage", "events/s", "ratio");
    let unchained = number("unchained_events_per_second");
    println!(
        "{:<48} {:>12.0} {:>7.2}  target >= {TARGET:.0}: {}",
        "decode + enrich + write JSONL",
        unchained,
        number("unchained_ratio"),
        if unchained >= TARGET {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "{:<48} {:>12.0} {:>7.2}",
        "the same + audit chain (SHA-256 per line)",
        number("pipeline_events_per_second"),
        number("ratio")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
