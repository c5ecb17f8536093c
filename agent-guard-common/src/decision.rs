//! How a policy decides, written once for both sides.
//!
//! The kernel side walks from an object towards `/`, one level per dentry, and feeds what it
//! meets at each level into a [`Walk`]. `agent-guard policy explain` feeds the same walk
//! from user space with the same tables, so the two cannot disagree on precedence.
//!
//! Precedence: the rule attached nearest the object decides; at the same level, deny beats
//! audit beats allow. A path rule is attached at the object its path names ([`RuleEntry`]
//! in the `RULES` table); a name pattern ([`NamePattern`]) is attached at the nearest
//! component whose name matches, provided the walk then passes the pattern's tree.
use core::mem::size_of;

/// What a check is about.
pub const ACCESS_MODIFY: u32 = 0;
pub const ACCESS_READ: u32 = 1;
/// Connecting or sending to a unix socket bound at a path: the walk starts at the socket
/// file.
pub const ACCESS_CONNECT: u32 = 2;
pub const ACCESS_KINDS: usize = 3;

/// Actions, ordered by strength: at the same level the stronger one wins.
pub const ACTION_NONE: u16 = 0;
pub const ACTION_ALLOW: u16 = 1;
pub const ACTION_AUDIT: u16 = 2;
pub const ACTION_DENY: u16 = 3;

/// Name patterns one session may hold; the walk tracks them in a `u32` mask.
pub const MAX_NAME_PATTERNS: usize = 16;
/// Bytes of a pattern's text before, and after, its `*`.
pub const PATTERN_WINDOW: usize = 32;
/// Longest pattern part that fits a window (the window also serves names shorter than it).
pub const MAX_PATTERN_PART: usize = PATTERN_WINDOW - 1;

/// One rule's say on one access kind: an action and the rule's index in the session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub action: u16,
    pub rule: u16,
}

/// What the policy attaches to one object (one `(session, dev, ino)` key of `RULES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// Indexed by `ACCESS_*`.
    pub access: [RuleRef; ACCESS_KINDS],
    /// Bit `i`: this object is the tree of the session's name pattern `i`.
    pub pattern_trees: u32,
}
const _: () = assert!(size_of::<RuleEntry>() == 16);

/// A name pattern: an exact name, or `prefix*suffix` with either part possibly empty. The
/// parts are stored as masked little-endian words so that a match is eight word compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamePattern {
    /// The prefix, from the name's first byte.
    pub head: [u64; 4],
    pub head_mask: [u64; 4],
    /// The suffix, right-aligned to the end of a 32-byte window that ends with the name.
    pub tail: [u64; 4],
    pub tail_mask: [u64; 4],
    /// Shortest matching name: prefix plus suffix.
    pub min_len: u32,
    /// Exact length for a pattern without `*`, else 0.
    pub exact_len: u32,
    /// `ACCESS_*` the pattern's rule speaks for.
    pub access: u32,
    pub verdict: RuleRef,
}
const _: () = assert!(size_of::<NamePattern>() == 144);

/// All name patterns of one session, in one map value: the walk looks them up once per
/// level, whatever their number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternSet {
    pub patterns: [NamePattern; MAX_NAME_PATTERNS],
}
const _: () = assert!(size_of::<PatternSet>() == 144 * MAX_NAME_PATTERNS);

impl Default for PatternSet {
    fn default() -> Self {
        Self {
            patterns: [NamePattern::default(); MAX_NAME_PATTERNS],
        }
    }
}

/// A name as the pattern matcher reads it: its length and two 32-byte windows, the first
/// from its start and the second ending with its last byte (zero-filled where the name is
/// shorter than the window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameWindows {
    pub len: u32,
    pub head: [u64; 4],
    pub tail: [u64; 4],
}

impl NameWindows {
    /// The windows of `name` (user space; the kernel side builds them from its buffer).
    pub fn of(name: &[u8]) -> Self {
        let mut head = [0u8; PATTERN_WINDOW];
        let mut tail = [0u8; PATTERN_WINDOW];
        let n = name.len().min(PATTERN_WINDOW);
        head[..n].copy_from_slice(&name[..n]);
        tail[PATTERN_WINDOW - n..].copy_from_slice(&name[name.len() - n..]);
        Self {
            len: name.len() as u32,
            head: words(&head),
            tail: words(&tail),
        }
    }
}

/// Little-endian words of a 32-byte window.
pub fn words(bytes: &[u8; PATTERN_WINDOW]) -> [u64; 4] {
    let mut out = [0u64; 4];
    let mut i = 0;
    while i < 4 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        out[i] = u64::from_le_bytes(w);
        i += 1;
    }
    out
}

impl NamePattern {
    /// Builds the pattern for `prefix*suffix` (`star == true`) or the exact name `prefix`.
    /// The caller has checked that each part is at most [`MAX_PATTERN_PART`] bytes.
    pub fn new(prefix: &[u8], suffix: &[u8], star: bool, access: u32, verdict: RuleRef) -> Self {
        let mut head = [0u8; PATTERN_WINDOW];
        let mut head_mask = [0u8; PATTERN_WINDOW];
        head[..prefix.len()].copy_from_slice(prefix);
        head_mask[..prefix.len()].fill(0xff);
        let mut tail = [0u8; PATTERN_WINDOW];
        let mut tail_mask = [0u8; PATTERN_WINDOW];
        tail[PATTERN_WINDOW - suffix.len()..].copy_from_slice(suffix);
        tail_mask[PATTERN_WINDOW - suffix.len()..].fill(0xff);
        Self {
            head: words(&head),
            head_mask: words(&head_mask),
            tail: words(&tail),
            tail_mask: words(&tail_mask),
            min_len: (prefix.len() + suffix.len()) as u32,
            exact_len: if star { 0 } else { prefix.len() as u32 },
            access,
            verdict,
        }
    }

    #[inline(always)]
    pub fn matches(&self, name: &NameWindows) -> bool {
        if name.len < self.min_len || (self.exact_len != 0 && name.len != self.exact_len) {
            return false;
        }
        let mut i = 0;
        while i < 4 {
            if name.head[i] & self.head_mask[i] != self.head[i]
                || name.tail[i] & self.tail_mask[i] != self.tail[i]
            {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The best verdict found so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub action: u16,
    pub rule: u16,
    /// Level it is attached at: 0 is the object itself.
    pub level: u32,
    /// Whether a name pattern (rather than a path rule) decided.
    pub by_pattern: u32,
}

/// The fold of one walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub access: u32,
    pub level: u32,
    pub best: Verdict,
    /// Patterns whose name matched below; they decide once the walk passes their tree.
    pub pending: u32,
    /// Trees of patterns the walk has passed (any access), for rename checks.
    pub trees: u32,
    pub pending_level: [u8; MAX_NAME_PATTERNS],
}

impl Walk {
    pub fn new(access: u32) -> Self {
        Self {
            access,
            ..Self::default()
        }
    }

    #[inline(always)]
    fn offer(&mut self, level: u32, verdict: RuleRef, by_pattern: bool) {
        if verdict.action == ACTION_NONE {
            return;
        }
        let best = &self.best;
        if best.action == ACTION_NONE
            || level < best.level
            || (level == best.level && verdict.action > best.action)
        {
            self.best = Verdict {
                action: verdict.action,
                rule: verdict.rule,
                level,
                by_pattern: by_pattern as u32,
            };
        }
    }

    /// The path rule attached at the current level. Returns the patterns whose tree is here
    /// and whose name matched below: the caller offers each with [`Walk::confirm`].
    #[inline(always)]
    pub fn entry(&mut self, entry: &RuleEntry) -> u32 {
        // A match rather than an index: the verifier cannot bound `access % 3`.
        let verdict = match self.access {
            ACCESS_READ => entry.access[ACCESS_READ as usize],
            ACCESS_CONNECT => entry.access[ACCESS_CONNECT as usize],
            _ => entry.access[ACCESS_MODIFY as usize],
        };
        self.offer(self.level, verdict, false);
        self.trees |= entry.pattern_trees;
        let confirmed = self.pending & entry.pattern_trees;
        self.pending &= !confirmed;
        confirmed
    }

    /// Pattern `index`, confirmed by [`Walk::entry`], decides at the level its name matched.
    #[inline(always)]
    pub fn confirm(&mut self, index: usize, pattern: &NamePattern) {
        let level = self.pending_level[index % MAX_NAME_PATTERNS] as u32;
        self.offer(level, pattern.verdict, true);
    }

    /// The current level's name matches pattern `index`. Only the nearest match counts, and
    /// only when it could still beat the verdict found so far.
    #[inline(always)]
    pub fn name_matched(&mut self, index: usize, pattern: &NamePattern) {
        let bit = 1u32 << (index % MAX_NAME_PATTERNS);
        if pattern.access != self.access || self.pending & bit != 0 {
            return;
        }
        if self.best.action != ACTION_NONE && self.best.level < self.level {
            return;
        }
        self.pending |= bit;
        self.pending_level[index % MAX_NAME_PATTERNS] = self.level as u8;
    }

    /// Whether nothing further up can change the verdict.
    #[inline(always)]
    pub fn settled(&self) -> bool {
        self.best.action != ACTION_NONE && self.pending == 0
    }

    /// The walk moves to the parent.
    #[inline(always)]
    pub fn up(&mut self) {
        self.level += 1;
    }
}

/// How a finished walk answers a check: the action, and the rule code events carry
/// (`RULE_POLICY_BASE + index` for a policy rule, a built-in reason otherwise).
///
/// `finished` is false when the walk ran out of levels; `removal` marks checks of an object
/// about to lose its name, for which the root of a writable path rule itself is refused.
/// Without a rule, modifying is refused; reading and connecting to a unix socket are allowed.
#[inline(always)]
pub fn conclude(walk: &Walk, finished: bool, removal: bool) -> (u16, u32) {
    let best = walk.best;
    if !finished {
        return (ACTION_DENY, crate::RULE_PATH_TOO_DEEP);
    }
    if best.action == ACTION_NONE {
        return if walk.access == ACCESS_MODIFY {
            (ACTION_DENY, crate::RULE_OUTSIDE_SCOPE)
        } else {
            (ACTION_ALLOW, 0)
        };
    }
    if removal && best.level == 0 && best.by_pattern == 0 && best.action == ACTION_ALLOW {
        return (ACTION_DENY, crate::RULE_SCOPE_ROOT);
    }
    (best.action, crate::RULE_POLICY_BASE + best.rule as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(action: u16, rule: u16) -> RuleRef {
        RuleRef { action, rule }
    }

    #[test]
    fn patterns_match_names() {
        let star = |p: &str, s: &str| {
            NamePattern::new(p.as_bytes(), s.as_bytes(), true, ACCESS_READ, verdict(3, 0))
        };
        let m = |pat: &NamePattern, name: &str| pat.matches(&NameWindows::of(name.as_bytes()));
        let env = star(".env", "");
        assert!(m(&env, ".env"));
        assert!(m(&env, ".env.local"));
        assert!(!m(&env, "x.env"));
        assert!(!m(&env, ".en"));
        let sqlite = star("", ".sqlite");
        assert!(m(&sqlite, "db.sqlite"));
        assert!(m(&sqlite, ".sqlite"));
        assert!(!m(&sqlite, "db.sqlite3"));
        let long = "a-very-long-database-file-name-beyond-the-window.sqlite";
        assert!(m(&sqlite, long));
        let both = star("id_", ".pub");
        assert!(m(&both, "id_rsa.pub"));
        assert!(!m(&both, "id_.pu"));
        assert!(!m(&both, "id_rsa"));
        let exact = NamePattern::new(b".git", b"", false, ACCESS_MODIFY, verdict(3, 0));
        assert!(m(&exact, ".git"));
        assert!(!m(&exact, ".github"));
        assert!(!m(&exact, "x.git"));
        let overlap = star("ab", "ba");
        assert!(!m(&overlap, "aba"), "prefix and suffix may not share bytes");
        assert!(m(&overlap, "abba"));
    }

    #[test]
    fn nearest_wins_then_strongest() {
        let mut walk = Walk::new(ACCESS_MODIFY);
        let allow = RuleEntry {
            access: [
                verdict(ACTION_ALLOW, 0),
                RuleRef::default(),
                RuleRef::default(),
            ],
            ..RuleEntry::default()
        };
        let deny = RuleEntry {
            access: [
                verdict(ACTION_DENY, 1),
                RuleRef::default(),
                RuleRef::default(),
            ],
            ..RuleEntry::default()
        };
        walk.up();
        walk.entry(&deny);
        walk.up();
        walk.entry(&allow);
        assert_eq!(walk.best.rule, 1);
        let mut walk = Walk::new(ACCESS_MODIFY);
        walk.entry(&allow);
        walk.offer(0, verdict(ACTION_AUDIT, 2), false);
        assert_eq!((walk.best.action, walk.best.rule), (ACTION_AUDIT, 2));
    }

    #[test]
    fn a_pattern_decides_at_its_name_once_its_tree_is_passed() {
        let pattern = NamePattern::new(b"", b".sqlite", true, ACCESS_MODIFY, verdict(3, 7));
        let tree = RuleEntry {
            access: [
                verdict(ACTION_ALLOW, 0),
                RuleRef::default(),
                RuleRef::default(),
            ],
            pattern_trees: 1,
        };
        let mut walk = Walk::new(ACCESS_MODIFY);
        walk.name_matched(0, &pattern);
        assert!(!walk.settled());
        walk.up();
        walk.up();
        let confirmed = walk.entry(&tree);
        assert_eq!(confirmed, 1);
        walk.confirm(0, &pattern);
        assert!(walk.settled());
        assert_eq!(
            (walk.best.action, walk.best.rule, walk.best.level),
            (3, 7, 0)
        );
        // Without the tree on the way up, the pattern never decides.
        let mut walk = Walk::new(ACCESS_MODIFY);
        walk.name_matched(0, &pattern);
        walk.up();
        walk.entry(&RuleEntry {
            access: [
                verdict(ACTION_ALLOW, 0),
                RuleRef::default(),
                RuleRef::default(),
            ],
            ..RuleEntry::default()
        });
        assert_eq!(walk.best.action, ACTION_ALLOW);
        assert!(!walk.settled());
    }
}
