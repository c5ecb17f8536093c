//! Racing the guard's per-CPU state (THREATS.md, attacking the guard): a BPF LSM program
//! runs with migration disabled but can be preempted, and the programs keep each walk's
//! state in per-CPU map slots. On a kernel with full preemption, a second task of the
//! session on the same CPU can take the slot in the middle of a walk: the first task would
//! then be answered with the second one's verdict (a refused unlink let through) or the
//! other way round. Both tasks here hammer one CPU; no refusal may fail, and no allowed
//! operation may be refused with the rule of somebody else's walk (a walk that lost its
//! slot is refused as unresolved: fail closed).
use std::fs;

use crate::{fixture::Fixture, script::Script, session::Run};

/// Rounds for each task: enough for many preemptions inside a program at the guests' pace.
const ROUNDS: u32 = 20_000;
const PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

/// Switches the kernel to full preemption for the test and back afterwards.
struct FullPreemption {
    before: String,
}

impl FullPreemption {
    fn enable() -> Self {
        if fs::metadata(PREEMPT).is_err() {
            let _ = std::process::Command::new("mount")
                .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
                .status();
        }
        let modes = fs::read_to_string(PREEMPT).unwrap_or_else(|e| {
            panic!(
                "{PREEMPT}: {e}: the test needs a kernel with PREEMPT_DYNAMIC (Debian's have it)"
            )
        });
        // The mode in force is in parentheses: "none (voluntary) full".
        let before = modes
            .split_whitespace()
            .find_map(|m| m.strip_prefix('(')?.strip_suffix(')'))
            .expect("a mode in force")
            .to_owned();
        fs::write(PREEMPT, "full").expect("switch to full preemption");
        assert!(fs::read_to_string(PREEMPT).unwrap().contains("(full)"));
        Self { before }
    }
}

impl Drop for FullPreemption {
    fn drop(&mut self) {
        let _ = fs::write(PREEMPT, &self.before);
    }
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_preempted_walk_is_never_answered_with_another_tasks_verdict() {
    let fx = Fixture::new("preemption");
    fx.protect(&["prod/victim"]);
    fx.write("ws/a", "a");
    let _full = FullPreemption::enable();
    let rounds = ROUNDS.to_string();
    // Both on CPU 0: the walker's allowed renames and the refused unlinks preempt each
    // other in the middle of their programs.
    let script = Script::new(&fx)
        .sh(&format!(
            "taskset -c 0 \"$P\" rename-many a b {rounds} > walker.out &"
        ))
        .probe_via(
            "victim",
            &["taskset", "-c", "0"],
            &["unlink-many", &fx.s("prod/victim"), &rounds],
        )
        .sh("wait; printf 'walker '; cat walker.out");
    let s = Run::script(&fx, script).lossy().finish();

    // Every unlink was refused (a different answer anywhere would show), and the file is
    // there.
    s.outcome("victim").assert_eperm();
    fx.assert_intact("prod/victim");
    // The workspace renames were allowed, except those refused because their walk lost its
    // slot; none was refused with a rule taken from the other task's walk.
    let foreign: Vec<&str> = s
        .log
        .decisions
        .iter()
        .filter(|e| e.paths.iter().any(|p| p.starts_with(&fx.s("ws"))))
        .filter(|e| e.rule != "unresolved-location")
        .map(|e| e.line.as_str())
        .collect();
    assert!(
        foreign.is_empty(),
        "allowed renames refused with another walk's rule:\n{}",
        foreign.join("\n")
    );
    let lost_slot = s
        .log
        .decisions
        .iter()
        .filter(|e| e.rule == "unresolved-location")
        .count();
    eprintln!(
        "preemption: {ROUNDS} refused unlinks and {ROUNDS} rename rounds on one CPU; walker {}, {lost_slot} walks refused for losing their slot",
        s.outcome("walker").result
    );
}
