//! `cargo xtask bench`: the guard's overhead, measured inside the VM as wall-time ratios
//! against no guard in the same boot (the VM runs about 45x slower than the host, so only
//! ratios mean anything).
//!
//! - (a) create+write+unlink inside the writable scope, guarded / unguarded;
//! - (b) a denied unlink (EPERM plus its event), guarded / the same unlink failing with
//!   ENOENT unguarded;
//! - (c) the loop of (a) run by a process outside any session while a session is active /
//!   unguarded.
//!
//! Guarded and unguarded runs alternate, and the median of the repetitions is reported.
use std::collections::BTreeMap;

use anyhow::{bail, Context as _};

use crate::{
    build::{build_release, release_bin},
    setup::{kernel_image, setup, Verbosity},
    vm,
};

pub fn bench(iterations: u32, repetitions: u32) -> anyhow::Result<()> {
    setup(Verbosity::Quiet)?;
    build_release()?;
    let kernel = kernel_image("6.12").context("no 6.12 kernel; run `cargo xtask setup`")?;
    let script = format!(
        r#"set -eu
AG={ag}; BENCH={bench}; N={iterations}; B=/tmp/ag-bench
rm -rf $B; mkdir -p $B/ws $B/outside $B/missing $B/outsider
echo protected > $B/outside/victim
for r in $(seq {repetitions}); do
  echo "RESULT a-base $($BENCH create-write-unlink $B/ws $N)"
  echo "RESULT a-guard $(cd $B/ws && $AG run --events $B/a.jsonl -- $BENCH create-write-unlink $B/ws $N 2>/dev/null)"
  echo "RESULT b-base $($BENCH unlink $B/missing $N)"
  echo "RESULT b-guard $(cd $B/ws && $AG run --events $B/b.jsonl -- $BENCH unlink $B/outside $N 2>$B/b.summary)"
  echo "SUMMARY $(cat $B/b.summary)"
  (cd $B/ws && exec $AG run --events $B/c.jsonl -- sh -c 'touch ready; exec sleep 100000') 2>/dev/null &
  RUN=$!
  while [ ! -e $B/ws/ready ]; do sleep 0.2; done
  echo "RESULT c-guard $($BENCH create-write-unlink $B/outsider $N)"
  kill -TERM $RUN; wait $RUN || true; rm -f $B/ws/ready
done
"#,
        ag = release_bin("agent-guard").display(),
        bench = release_bin("ag-bench").display(),
    );
    let run = vm::run(&kernel, None, &script, "bench", 30 * 60)?;
    if !run.success {
        bail!("the benchmark failed in the VM");
    }
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in run.output.lines() {
        let Some(rest) = line.strip_prefix("RESULT ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(ns) = value
            .strip_prefix("ns_per_iter=")
            .and_then(|v| v.parse::<f64>().ok())
        {
            samples.entry(key.to_owned()).or_default().push(ns);
        }
    }
    let median = |key: &str| -> anyhow::Result<f64> {
        let mut v = samples
            .get(key)
            .cloned()
            .with_context(|| format!("no samples for {key}"))?;
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let (a_base, a_guard) = (median("a-base")?, median("a-guard")?);
    let (b_base, b_guard) = (median("b-base")?, median("b-guard")?);
    let c_guard = median("c-guard")?;
    println!();
    println!("kernel {}, {iterations} iterations x {repetitions} repetitions, medians (ns per iteration, in the VM)", kernel.display());
    println!(
        "{:<48} {:>10} {:>10} {:>7}",
        "loop", "unguarded", "guarded", "ratio"
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(a) create+write+unlink in scope",
        a_base,
        a_guard,
        a_guard / a_base
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(b) denied unlink (vs ENOENT unguarded)",
        b_base,
        b_guard,
        b_guard / b_base
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(c) loop (a) by an outsider, session active",
        a_base,
        c_guard,
        c_guard / a_base
    );
    Ok(())
}
