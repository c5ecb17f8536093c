//! `cargo xtask bench`: the guard's overhead, measured inside the VM as wall-time ratios
//! against no guard in the same boot (the VM runs about 45x slower than the host, so only
//! ratios mean anything).
//!
//! - (a) create+write+unlink inside the writable scope, guarded / unguarded;
//! - (b) a denied unlink (EPERM plus its event), guarded / the same unlink failing with
//!   ENOENT unguarded;
//! - (c) the loop of (a) run by a process outside any session while a session is active /
//!   unguarded;
//! - (d) the loop of (a) in a session whose policy has 10,000 path entries / the same in a
//!   session whose policy has 10 (`ag-bench policy` writes both, with the loop under the
//!   same chain of rules): what a decision costs as the policy grows. Target: at most 1.10;
//! - (e) open+read+close of a file no rule covers, in a session whose policy has read rules
//!   (ten read-denied name patterns anchored at `/`, as `policies/coding-agent.toml` has, and
//!   a read-denied directory) / the same in a session of the built-in policy, which has no
//!   read rule and so never looks at reads: what guarding secrets costs every other read.
//! - (f) TCP connect+close to a server on loopback that the session's policy allows
//!   (`egress = "deny"`, one rule for `127.0.0.1` on the server's port), guarded /
//!   unguarded: what deciding a connection costs. The server (`ag-bench serve-tcp`) runs
//!   outside every session, started once before the loops. Target: at most 1.05.
//!
//! Guarded and unguarded runs alternate, and the median of the repetitions is reported.
use std::collections::BTreeMap;

use anyhow::{bail, Context as _};

use crate::{
    build::{build_release, release_bin, workspace_root},
    setup::{kernel_image, setup, Verbosity},
    vm,
};

/// Path entries of the two policies loop (d) compares.
const RULES_SMALL: usize = 10;
const RULES_LARGE: usize = 10_000;

/// The loopback port of loop (f)'s server: below the ephemeral range (32768-60999), so no
/// connection of the other loops can hold it.
const NET_PORT: u16 = 20_480;

pub fn bench(iterations: u32, repetitions: u32) -> anyhow::Result<()> {
    setup(Verbosity::Quiet)?;
    build_release()?;
    crate::bench_pipeline::bench_pipeline()?;
    let kernel = kernel_image("6.12").context("no 6.12 kernel; run `cargo xtask setup`")?;
    let script = format!(
        r#"set -eu
AG={ag}; BENCH={bench}; N={iterations}; B=/tmp/ag-bench
rm -rf $B; mkdir -p $B/ws $B/outside $B/missing $B/outsider
echo protected > $B/outside/victim
mkdir -p $B/ws/secret && echo readable > $B/ws/r
cat > $B/reads.toml <<POLICY
version = 1
[filesystem]
writable = ["\${{WORKSPACE}}"]
read_denied = ["/**/.ssh", "/**/.gnupg", "/**/.aws", "/**/.azure", "/**/.kube", "/**/.netrc",
               "/**/.git-credentials", "/**/.pgpass", "/**/.env*", "/**/*.pem", "$B/ws/secret"]
POLICY
# (f): the server runs outside every session; the guarded client's policy allows it alone.
cat > $B/net.toml <<POLICY
version = 1
[filesystem]
writable = ["\${{WORKSPACE}}"]
[network]
egress = "deny"
[[network.rule]]
name = "bench-server"
action = "allow"
addresses = ["127.0.0.1"]
ports = [{port}]
protocol = "tcp"
POLICY
$BENCH serve-tcp 127.0.0.1 {port} 2>$B/serve.err &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for i in $(seq 100); do
  $BENCH connect-close 127.0.0.1 {port} 1 >/dev/null 2>&1 && break
  sleep 0.2
done
net() {{
  if out=$(cd $B/ws && $AG run --policy $B/net.toml --events $B/f.jsonl -- $BENCH connect-close 127.0.0.1 {port} $N 2>$B/f.err); then
    echo "RESULT f-guard $out"
  else
    echo "FAILED f-guard $(tail -n 3 $B/f.err | tr '\n' ' ')"
  fi
}}
# (d): loop (a) under policies of {small} and {large} path entries.
rules() {{
  if out=$(cd "$2" && $AG run --policy "$3" --events $B/$1.jsonl -- $BENCH create-write-unlink "$2" $N 2>$B/$1.err); then
    echo "RESULT $1 $out"
  else
    echo "FAILED $1 $(tail -n 3 $B/$1.err | tr '\n' ' ')"
  fi
}}
SMALL=$($BENCH policy $B/rules-small {small}); LARGE=$($BENCH policy $B/rules-large {large})
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
  rules d-small "$SMALL" $B/rules-small/policy.toml
  rules d-large "$LARGE" $B/rules-large/policy.toml
  echo "RESULT e-none $(cd $B/ws && $AG run --events $B/e1.jsonl -- $BENCH open-read $B/ws $N 2>/dev/null)"
  echo "RESULT e-reads $(cd $B/ws && $AG run --policy $B/reads.toml --events $B/e2.jsonl -- $BENCH open-read $B/ws $N 2>/dev/null)"
  echo "RESULT f-base $($BENCH connect-close 127.0.0.1 {port} $N)"
  net
done
kill $SERVE; wait $SERVE || true
"#,
        ag = release_bin("agent-guard").display(),
        bench = release_bin("ag-bench").display(),
        small = RULES_SMALL,
        large = RULES_LARGE,
        port = NET_PORT,
    );
    // The guest reads the script from the shared filesystem: passed inline it would travel
    // on the kernel command line, whose 2 KiB limit cuts it short and leaves the guest idle.
    let script_path = workspace_root().join("target/xtask-bench.sh");
    std::fs::write(&script_path, &script)
        .with_context(|| format!("write {}", script_path.display()))?;
    let run = vm::run(
        &kernel,
        None,
        &format!("bash {}", script_path.display()),
        "bench",
        30 * 60,
    )?;
    if !run.success {
        bail!("the benchmark failed in the VM");
    }
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for line in run.output.lines() {
        if let Some((key, why)) = line
            .strip_prefix("FAILED ")
            .and_then(|rest| rest.split_once(' '))
        {
            failures.insert(key.to_owned(), why.trim().to_owned());
            continue;
        }
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
    // End to end: every denial of loop (b) is an event decoded, enriched, chained and
    // written by `run`'s pipeline. With none lost, the pipeline kept up with the loop.
    let (mut written, mut lost) = (0u64, 0u64);
    for line in run.output.lines().filter(|l| l.contains("SUMMARY ")) {
        let count = |after: &str| -> u64 {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        lost += count(", lost ");
        written += count("; ");
    }
    println!(
        "{:<48} {:>10} {:>10.0} {:>7}",
        "(b) end to end: events/s written by `run`",
        "",
        1e9 / b_guard,
        if lost == 0 {
            format!("{written} events, none lost")
        } else {
            format!("{lost} LOST")
        }
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(c) loop (a) by an outsider, session active",
        a_base,
        c_guard,
        c_guard / a_base
    );
    let failed = || {
        failures
            .iter()
            .map(|(key, why)| format!("{key}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // (d) needs an agent-guard that takes RULES_LARGE entries; one that refuses says why.
    let (d_small, d_large) = match (median("d-small"), median("d-large")) {
        (Ok(small), Ok(large)) => (small, large),
        _ => bail!("no samples for (d), the rule-count ratio: {}", failed()),
    };
    println!(
        "{:<48} {:>10} {:>10} {:>7}",
        "path entries in the policy", RULES_SMALL, RULES_LARGE, "ratio"
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(d) loop (a), large policy / small (<= 1.10)",
        d_small,
        d_large,
        d_large / d_small
    );
    let (e_none, e_reads) = (median("e-none")?, median("e-reads")?);
    println!(
        "{:<48} {:>10} {:>10} {:>7}",
        "read rules in the policy", "none", "11", "ratio"
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(e) open+read of an uncovered file",
        e_none,
        e_reads,
        e_reads / e_none
    );
    // (f) needs an agent-guard that takes `[network]`; one that refuses says why.
    let (f_base, f_guard) = match (median("f-base"), median("f-guard")) {
        (Ok(base), Ok(guard)) => (base, guard),
        _ => bail!("no samples for (f), the network ratio: {}", failed()),
    };
    println!(
        "{:<48} {:>10} {:>10} {:>7}",
        "network", "unguarded", "guarded", "ratio"
    );
    println!(
        "{:<48} {:>10.0} {:>10.0} {:>7.3}",
        "(f) TCP connect+close, allowed loopback (<= 1.05)",
        f_base,
        f_guard,
        f_guard / f_base
    );
    Ok(())
}
