//! `cargo xtask test`: every tier, every time.
//!
//! 1. setup (idempotent);
//! 2. host tier: `cargo test` (default members) (unit tests and host integration tests; the kernel
//!    suite is compiled but `#[ignore]`d there);
//! 3. kernel tiers: the kernel suite inside VMs on Debian 6.1 and 6.12, and
//! 4. refusal tier: a kernel booted without BPF LSM, where `run` must refuse to start;
//!    the three VMs run side by side.
//!
//! A tier that did not run, or ran no test, fails the command.
use std::{process::Stdio, time::Instant};

use anyhow::bail;

use crate::{
    build::{agent_guard_bin, build_all, cargo, test_executable},
    setup::{kernel_image, setup, Verbosity},
    vm::{self, NO_BPF_LSM},
};

#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Sums libtest's `test result:` lines.
fn parse_results(output: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = false;
    for line in output.lines() {
        let Some(rest) = line.split("test result: ").nth(1) else {
            continue;
        };
        seen = true;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.ignored += n,
                _ => {}
            }
        }
    }
    seen.then_some(counts)
}

struct Tier {
    name: String,
    counts: Option<Counts>,
    seconds: f64,
}

pub fn test() -> anyhow::Result<()> {
    let started = Instant::now();
    setup(Verbosity::Report)?;
    build_all()?;
    let mut tiers = Vec::new();

    // Host tier.
    let t = Instant::now();
    let out = cargo().args(["test"]).stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    let mut counts = parse_results(&text);
    if !out.status.success() {
        counts = Some(counts.map_or(
            Counts {
                failed: 1,
                ..Default::default()
            },
            |c| Counts {
                failed: c.failed.max(1),
                ..c
            },
        ));
    }
    tiers.push(Tier {
        name: "host (unit + integration)".into(),
        counts,
        seconds: t.elapsed().as_secs_f64(),
    });

    // Kernel tiers and the refusal tier, side by side. Each VM's test run is one thread of
    // work (one test at a time, the kernel verifying one program at a time), so two VMs on
    // a 2-core host run at nearly full speed each: a loop timed in one guest took 13.7 s
    // alone and 14.0 and 16.2 s with two guests running.
    let suite = test_executable("agent-guard-tests", "kernel")?;
    let kernel_runs: Vec<_> = ["6.1", "6.12"]
        .into_iter()
        .map(|series| {
            let suite = suite.clone();
            std::thread::spawn(move || kernel_tier(series, &suite))
        })
        .collect();
    let refusal = std::thread::spawn(|| {
        let t = Instant::now();
        Tier {
            name: format!("no BPF LSM ({NO_BPF_LSM})"),
            counts: refusal_tier(),
            seconds: t.elapsed().as_secs_f64(),
        }
    });
    for run in kernel_runs {
        tiers.push(
            run.join()
                .map_err(|_| anyhow::anyhow!("a kernel tier panicked"))?,
        );
    }
    tiers.push(
        refusal
            .join()
            .map_err(|_| anyhow::anyhow!("the refusal tier panicked"))?,
    );

    println!();
    println!(
        "{:<44} {:>7} {:>7} {:>8}",
        "tier", "passed", "failed", "seconds"
    );
    let (mut passed, mut failed, mut broken) = (0, 0, false);
    for tier in &tiers {
        match tier.counts {
            Some(c) if c.passed > 0 => {
                println!(
                    "{:<44} {:>7} {:>7} {:>8.0}",
                    tier.name, c.passed, c.failed, tier.seconds
                );
                passed += c.passed;
                failed += c.failed;
            }
            Some(c) => {
                println!(
                    "{:<44} {:>7} {:>7} {:>8.0}  RAN NO TEST",
                    tier.name, c.passed, c.failed, tier.seconds
                );
                failed += c.failed.max(1);
                broken = true;
            }
            None => {
                println!(
                    "{:<44} {:>7} {:>7} {:>8.0}  DID NOT RUN",
                    tier.name, "-", "-", tier.seconds
                );
                failed += 1;
                broken = true;
            }
        }
    }
    println!("total time {:.0}s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed > 0 || broken {
        bail!("test tiers failed");
    }
    Ok(())
}

/// The kernel suite in a VM booted from Debian's `series` kernel.
fn kernel_tier(series: &str, suite: &std::path::Path) -> Tier {
    let t = Instant::now();
    let Some(kernel) = kernel_image(series) else {
        return Tier {
            name: format!("kernel {series}: no image in /boot"),
            counts: None,
            seconds: 0.0,
        };
    };
    let name = kernel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .replace("vmlinuz-", "kernel ");
    let script = format!(
        "set -o pipefail; cat /sys/kernel/security/lsm; echo; AGENT_GUARD_BIN={} {} --ignored --test-threads=1",
        agent_guard_bin().display(),
        suite.display()
    );
    // About 30 minutes per kernel on an idle machine (software emulation); the bound leaves
    // room for a busy one within CI's 90 minutes.
    let counts = match vm::run(&kernel, None, &script, series, 50 * 60) {
        Ok(run) => {
            let counts = parse_results(&run.output);
            if !run.success {
                counts
                    .map(|c| Counts {
                        failed: c.failed.max(1),
                        ..c
                    })
                    .or(Some(Counts {
                        failed: 1,
                        ..Default::default()
                    }))
            } else {
                counts
            }
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            None
        }
    };
    Tier {
        name,
        counts,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Boots 6.12 without BPF LSM and checks that `run` refuses, says why, and never starts the
/// command. Each check counts as one test.
fn refusal_tier() -> Option<Counts> {
    let kernel = kernel_image("6.12")?;
    let marker = "/tmp/agent-guard-refusal-marker";
    let script = format!(
        "rm -f {marker}; cd /tmp; {} run --events - -- touch {marker}; echo \"run-exit=$?\"; \
         test -e {marker} && echo command-ran || echo command-not-run",
        agent_guard_bin().display()
    );
    let run = vm::run(&kernel, Some(NO_BPF_LSM), &script, "no-bpf-lsm", 10 * 60).ok()?;
    let checks = [
        ("exit status 125", run.output.contains("run-exit=125")),
        (
            "names the missing BPF LSM",
            run.output.contains("BPF LSM is not active"),
        ),
        ("gives the lsm= fix", run.output.contains("lsm=")),
        (
            "command never started",
            run.output.contains("command-not-run"),
        ),
    ];
    let mut counts = Counts::default();
    for (name, ok) in checks {
        println!(
            "[no-bpf-lsm] check {name} ... {}",
            if ok { "ok" } else { "FAILED" }
        );
        if ok {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_result_lines() {
        let out = "test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured\n\
                   test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured\n";
        let c = parse_results(out).unwrap();
        assert_eq!((c.passed, c.failed, c.ignored), (4, 1, 2));
        assert!(parse_results("no tests here").is_none());
    }

    #[test]
    fn kernel_series_do_not_overlap() {
        // "6.1" must not pick a 6.12 image; the check is on the name pattern.
        assert!(!"vmlinuz-6.12.117+deb12-amd64".starts_with("vmlinuz-6.1."));
        assert!("vmlinuz-6.1.0-56-amd64".starts_with("vmlinuz-6.1."));
    }
}
