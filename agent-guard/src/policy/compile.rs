//! The compiled form of a resolved policy: the rule table and name patterns exactly as the
//! kernel maps hold them. `crate::bpf` writes these tables into the maps, and
//! `policy explain` runs the shared walk (`agent_guard_common::decision`) over them, so the
//! two decide from the same data by the same rules.
use std::collections::BTreeMap;

use agent_guard_common::{
    conclude, NamePattern, NameWindows, RuleEntry, RuleRef, Walk, ACCESS_READ, ACTION_NONE,
    MAX_NAME_PATTERNS, MAX_PATH_DEPTH,
};

use super::{Access, ResolvedPolicy};

/// The tables of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// `(dev, ino)` to what the policy attaches there.
    pub entries: BTreeMap<(u32, u64), RuleEntry>,
    /// Name patterns, indexed as the entries' `pattern_trees` bits.
    pub patterns: Vec<NamePattern>,
    /// Whether some rule speaks for reading.
    pub reads: bool,
}

/// One level of a walk: the identity of the object there (none for a name that does not
/// exist yet) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub id: Option<(u32, u64)>,
    pub name: Vec<u8>,
}

/// Puts `verdict` in `slot` unless what is there is at least as strong (ties keep the rule
/// listed first).
fn attach(slot: &mut RuleRef, verdict: RuleRef) {
    if slot.action == ACTION_NONE || verdict.action > slot.action {
        *slot = verdict;
    }
}

pub fn compile(policy: &ResolvedPolicy) -> Compiled {
    let mut compiled = Compiled::default();
    let verdict = |rule: u16| RuleRef {
        action: policy.rules[rule as usize].action.code(),
        rule,
    };
    let access_of = |rule: u16| policy.rules[rule as usize].access;
    for object in &policy.objects {
        let entry = compiled
            .entries
            .entry((object.dev, object.ino))
            .or_default();
        attach(
            &mut entry.access[access_of(object.rule).code() as usize],
            verdict(object.rule),
        );
    }
    for (index, pattern) in policy.patterns.iter().enumerate().take(MAX_NAME_PATTERNS) {
        let entry = compiled
            .entries
            .entry((pattern.tree.dev, pattern.tree.ino))
            .or_default();
        entry.pattern_trees |= 1 << index;
        compiled.patterns.push(NamePattern::new(
            pattern.name.prefix.as_bytes(),
            pattern.name.suffix.as_bytes(),
            pattern.name.star,
            access_of(pattern.rule).code(),
            verdict(pattern.rule),
        ));
    }
    compiled.reads = policy.rules.iter().any(|r| r.access == Access::Read);
    compiled
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// `ACTION_*`.
    pub action: u16,
    /// The rule code events carry.
    pub rule: u32,
    /// Level of the chain where the best rule is attached, if any rule spoke.
    pub level: Option<usize>,
}

/// The walk the kernel side runs, over a chain of levels from the object up to `/`.
struct Walked {
    walk: Walk,
    finished: bool,
}

impl Compiled {
    fn walk(&self, access: u32, chain: &[Level], full: bool) -> Walked {
        let mut walk = Walk::new(access);
        for (depth, level) in chain.iter().enumerate() {
            if depth as u32 >= MAX_PATH_DEPTH {
                return Walked {
                    walk,
                    finished: false,
                };
            }
            if let Some(entry) = level.id.and_then(|id| self.entries.get(&id)) {
                let confirmed = walk.entry(entry);
                for (i, pattern) in self.patterns.iter().enumerate() {
                    if confirmed & (1 << i) != 0 {
                        walk.confirm(i, pattern);
                    }
                }
            }
            if !self.patterns.is_empty() {
                let name = NameWindows::of(&level.name);
                for (i, pattern) in self.patterns.iter().enumerate() {
                    if pattern.matches(&name) {
                        walk.name_matched(i, pattern);
                    }
                }
            }
            if walk.settled() && !full {
                break;
            }
            walk.up();
        }
        Walked {
            walk,
            finished: true,
        }
    }

    /// What the policy says about `access` to the object whose chain is given: the action
    /// and the rule code, as `scope::check` on the kernel side computes them, and the level
    /// of the chain the deciding rule is attached at.
    pub fn decide(&self, access: u32, chain: &[Level], removal: bool) -> Decided {
        if access == ACCESS_READ && !self.reads {
            let (action, rule) = conclude(&Walk::new(access), true, false);
            return Decided {
                action,
                rule,
                level: None,
            };
        }
        let walked = self.walk(access, chain, false);
        let (action, rule) = conclude(&walked.walk, walked.finished, removal);
        let best = walked.walk.best;
        Decided {
            action,
            rule,
            level: (best.action != ACTION_NONE).then_some(best.level as usize),
        }
    }

    /// The pattern trees that hold the object whose chain is given (`None` when the chain
    /// is deeper than the kernel walks).
    pub fn pattern_trees(&self, chain: &[Level]) -> Option<u32> {
        let walked = self.walk(agent_guard_common::ACCESS_MODIFY, chain, true);
        walked.finished.then_some(walked.walk.trees)
    }
}
