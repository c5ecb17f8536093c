//! Outliving the guard by flooding it (THREATS.md): a session floods the ring buffer with
//! denials so that its own reports get lost. Every denial must still hold, and every event
//! that could not be delivered must be counted: decisions = events written + events lost,
//! in the events file and in the summary alike.
use crate::{fixture::Fixture, script::Script, session::Run};

/// Enough denials to outrun user space in the VM if it is slow; the counts must add up
/// whether or not anything is lost.
const FLOOD: u32 = 20_000;

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn a_flood_of_denials_is_enforced_and_counted_exactly() {
    let fx = Fixture::new("flood");
    fx.protect(&["prod/victim"]);
    let script = Script::new(&fx).probe(
        "flood",
        &["unlink-many", &fx.s("prod/victim"), &FLOOD.to_string()],
    );
    let s = Run::script(&fx, script).lossy().finish();

    // Every one of the calls was refused (the probe reports the first differing answer).
    s.assert_results(&[("flood", "EPERM")]);
    fx.assert_intact("prod/victim");
    let summary = s.summary();
    assert_eq!(
        summary.denied,
        u64::from(FLOOD),
        "every call is a counted denial"
    );
    for e in &s.log.decisions {
        assert_eq!(
            (e.op.as_str(), e.decision.as_str()),
            ("unlink", "deny"),
            "{}",
            e.line
        );
        assert_eq!(e.paths, vec![fx.s("prod/victim")], "{}", e.line);
    }
    eprintln!(
        "flood: {FLOOD} denials, {} decision events written, {} reported lost",
        s.log.decisions.len(),
        summary.lost
    );
}
