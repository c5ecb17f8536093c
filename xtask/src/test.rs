//! `cargo xtask test`: every tier, every time.
//!
//! 1. setup (idempotent);
//! 2. host tier: `cargo test` (default members) (unit tests and host integration tests; the kernel
//!    suite is compiled but `#[ignore]`d there);
//! 3. kernel tiers: the kernel suite inside VMs on Debian 6.1 and 6.12, and
//! 4. refusal tier: a kernel booted without BPF LSM, where `run` must refuse to start;
//!    the three VMs run side by side.
//!
//! A tier that did not run, or ran no test, fails the command. A guest still running when
//! the time left is up is stopped; its tier reports the tests that finished, names the one
//! that was running, and fails.
use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    build::{build_all, cargo, test_executable, vm_agent_guard, VM_PROFILE},
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

/// CI stops `.ci/run` after 90 minutes. The guests get what is left of 85 once the host
/// tier is done, so that a hung guest is stopped, and what it did finish reported, before
/// CI's own limit cuts the summary off.
const BUDGET: Duration = Duration::from_secs(85 * 60);
/// The least a kernel guest is given, however late it starts.
const MIN_GUEST_TIME: Duration = Duration::from_secs(20 * 60);

/// One test as libtest reported it from a guest.
#[derive(Debug, PartialEq)]
struct Outcome {
    name: String,
    passed: bool,
    /// From the previous test's result line (or the suite's `running N tests`) to this
    /// one's, as the host's clock saw the lines arrive.
    seconds: f64,
}

/// What a guest's test run printed, read line by line.
#[derive(Debug, Default)]
struct SuiteRun {
    outcomes: Vec<Outcome>,
    /// A test that was started and never reported (the guest stopped in it).
    unfinished: Option<String>,
}

/// Reads libtest's per-test lines (`test NAME ... ok`). With one test thread, libtest
/// prints `test NAME ... ` when a test starts and the result when it ends; output that a
/// test's child processes write to the console can land in between, so the result may
/// arrive on a line of its own.
fn parse_suite(lines: &[(f64, String)]) -> SuiteRun {
    let mut run = SuiteRun::default();
    let mut since = None;
    for (at, line) in lines {
        let line = line.trim_end();
        if line.starts_with("running ") && line.ends_with(" tests") {
            since = Some(*at);
            continue;
        }
        let (name, rest) = match line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ..."))
        {
            Some((name, rest)) if !name.contains(' ') => (Some(name), rest.trim()),
            _ => (None, line.trim()),
        };
        if let Some(name) = name {
            run.unfinished = Some(name.to_owned());
        }
        let passed = match rest {
            "ok" => true,
            "FAILED" => false,
            _ => continue,
        };
        let Some(name) = run.unfinished.take() else {
            continue;
        };
        let start = since.unwrap_or(*at);
        run.outcomes.push(Outcome {
            name,
            passed,
            seconds: at - start,
        });
        since = Some(*at);
    }
    run
}

struct Tier {
    name: String,
    counts: Option<Counts>,
    seconds: f64,
    /// Why the tier failed beyond its test counts, shown next to them.
    note: Option<String>,
    /// The slowest tests, slowest first.
    slowest: Vec<Outcome>,
}

impl Tier {
    /// A tier with nothing to add beyond its counts.
    fn plain(name: String, counts: Option<Counts>, seconds: f64) -> Self {
        Self {
            name,
            counts,
            seconds,
            note: None,
            slowest: Vec::new(),
        }
    }
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
    tiers.push(Tier::plain(
        "host (unit + integration)".into(),
        counts,
        t.elapsed().as_secs_f64(),
    ));

    // Kernel tiers and the refusal tier, side by side. Each VM's test run is one thread of
    // work (one test at a time, the kernel verifying one program at a time), so two VMs on
    // a 2-core host run at nearly full speed each: a loop timed in one guest took 13.7 s
    // alone and 14.0 and 16.2 s with two guests running.
    let agent_guard = vm_agent_guard()?;
    let suite = test_executable("agent-guard-tests", "kernel", VM_PROFILE)?;
    let guest_time = BUDGET.saturating_sub(started.elapsed()).max(MIN_GUEST_TIME);
    let kernel_runs: Vec<_> = ["6.1", "6.12"]
        .into_iter()
        .map(|series| {
            let (suite, agent_guard) = (suite.clone(), agent_guard.clone());
            std::thread::spawn(move || kernel_tier(series, &suite, &agent_guard, guest_time))
        })
        .collect();
    let refusal = std::thread::spawn(move || {
        let t = Instant::now();
        Tier::plain(
            format!("no BPF LSM ({NO_BPF_LSM})"),
            refusal_tier(&agent_guard),
            t.elapsed().as_secs_f64(),
        )
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
                    "{:<44} {:>7} {:>7} {:>8.0}  {}",
                    tier.name,
                    c.passed,
                    c.failed,
                    tier.seconds,
                    tier.note.as_deref().unwrap_or("")
                );
                passed += c.passed;
                failed += c.failed;
            }
            Some(c) => {
                println!(
                    "{:<44} {:>7} {:>7} {:>8.0}  RAN NO TEST {}",
                    tier.name,
                    c.passed,
                    c.failed,
                    tier.seconds,
                    tier.note.as_deref().unwrap_or("")
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
    for tier in tiers.iter().filter(|t| !t.slowest.is_empty()) {
        println!("slowest in {}:", tier.name);
        for o in &tier.slowest {
            println!("  {:>6.0}s  {}", o.seconds, o.name);
        }
    }
    println!("total time {:.0}s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    if failed > 0 || broken {
        bail!("test tiers failed");
    }
    Ok(())
}

/// The kernel suite in a VM booted from Debian's `series` kernel, stopped after
/// `guest_time`.
fn kernel_tier(series: &str, suite: &Path, agent_guard: &Path, guest_time: Duration) -> Tier {
    let t = Instant::now();
    let Some(kernel) = kernel_image(series) else {
        return Tier::plain(format!("kernel {series}: no image in /boot"), None, 0.0);
    };
    let name = kernel
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .replace("vmlinuz-", "kernel ");
    let script = format!(
        "set -o pipefail; cat /sys/kernel/security/lsm; echo; AGENT_GUARD_BIN={} {} --ignored --test-threads=1",
        agent_guard.display(),
        suite.display()
    );
    let run = match vm::run(
        &kernel,
        None,
        &script,
        series,
        guest_time.as_secs().try_into().unwrap_or(u32::MAX),
    ) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return Tier::plain(name, None, t.elapsed().as_secs_f64());
        }
    };
    let suite_run = parse_suite(&run.timed_lines);
    let mut note = None;
    // libtest's closing line is the authority; without it (the guest stopped or crashed)
    // the per-test lines say how far the suite got.
    let mut counts = parse_results(&run.output).unwrap_or_else(|| {
        let passed = suite_run.outcomes.iter().filter(|o| o.passed).count() as u64;
        Counts {
            passed,
            failed: suite_run.outcomes.len() as u64 - passed,
            ignored: 0,
        }
    });
    if !run.success {
        counts.failed = counts.failed.max(1);
        let during = suite_run
            .unfinished
            .as_deref()
            .map(|test| format!(" during {test}"))
            .unwrap_or_default();
        note = Some(if run.timed_out {
            format!("TIMED OUT after {}s{during}", guest_time.as_secs())
        } else {
            format!("guest failed{during}")
        });
    }
    let mut slowest = suite_run.outcomes;
    slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    slowest.truncate(8);
    Tier {
        name,
        counts: Some(counts),
        seconds: t.elapsed().as_secs_f64(),
        note,
        slowest,
    }
}

/// Boots 6.12 without BPF LSM and checks that `run` refuses, says why, and never starts the
/// command. Each check counts as one test.
fn refusal_tier(agent_guard: &Path) -> Option<Counts> {
    let kernel = kernel_image("6.12")?;
    let marker = "/tmp/agent-guard-refusal-marker";
    let script = format!(
        "rm -f {marker}; cd /tmp; {} run --events - -- touch {marker}; echo \"run-exit=$?\"; \
         test -e {marker} && echo command-ran || echo command-not-run",
        agent_guard.display()
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
    fn per_test_lines_give_outcomes_times_and_the_test_left_running() {
        let lines: Vec<(f64, String)> = [
            (1.0, "lockdown,capability,bpf"),
            (2.0, "running 4 tests"),
            (12.0, "test a::first ... ok"),
            // A child process wrote to the console while the test ran.
            (20.0, "test a::second ... agent-guard: session 7 ended"),
            (21.0, "ok"),
            (30.0, "test b::third ... FAILED"),
            (31.0, "test b::fourth ... "),
        ]
        .into_iter()
        .map(|(at, l)| (at, l.to_owned()))
        .collect();
        let run = parse_suite(&lines);
        assert_eq!(
            run.outcomes,
            vec![
                Outcome {
                    name: "a::first".into(),
                    passed: true,
                    seconds: 10.0
                },
                Outcome {
                    name: "a::second".into(),
                    passed: true,
                    seconds: 9.0
                },
                Outcome {
                    name: "b::third".into(),
                    passed: false,
                    seconds: 9.0
                },
            ]
        );
        assert_eq!(run.unfinished.as_deref(), Some("b::fourth"));
    }

    #[test]
    fn kernel_series_do_not_overlap() {
        // "6.1" must not pick a 6.12 image; the check is on the name pattern.
        assert!(!"vmlinuz-6.12.117+deb12-amd64".starts_with("vmlinuz-6.1."));
        assert!("vmlinuz-6.1.0-56-amd64".starts_with("vmlinuz-6.1."));
    }
}
