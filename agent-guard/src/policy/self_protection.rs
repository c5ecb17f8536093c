//! Self-protection: what no session may touch, whatever its policy says.
//!
//! Every session, started by `agent-guard run` or by the daemon, carries the built-in rule
//! [`SELF_PROTECTION_RULE`], ahead of every policy rule: it denies modifying the paths below
//! and connecting to unix sockets under the daemon's runtime directory. A path that does not
//! exist when the session starts is skipped, like an optional (`?`) entry.
//!
//! The nearest rule decides, so a session rule that allows (or audits) an object at or below
//! one of these paths, or a name pattern that could match below one, would lift the
//! refusal. [`Policy::resolve`](super::Policy::resolve) refuses such a policy, comparing the
//! real locations the kernel walks (see [`real_path`]), not the text as written.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{Access, Action, Location, PolicyPath, Rule, Target};

/// The name events and `policy explain` give the built-in rule.
pub const SELF_PROTECTION_RULE: &str = "self-protection";

/// What the built-in rule's entries report as their file.
pub const SELF_PROTECTION_SOURCE: &str = "<built-in self-protection>";

/// One self-protected path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfProtected {
    pub path: &'static str,
    /// [`Access::Modify`] or [`Access::Connect`] (unix sockets bound below the path).
    pub access: Access,
    /// Why it is here.
    pub why: &'static str,
}

/// The paths every session is denied, in one place.
pub const SELF_PROTECTED: &[SelfProtected] = &[
    SelfProtected {
        path: "/etc/agent-guard",
        access: Access::Modify,
        why: "the administrator's configuration and the mandatory base policy: a session that \
              rewrites them loosens every later session",
    },
    SelfProtected {
        path: "/run/agent-guard",
        access: Access::Modify,
        why: "the daemon's runtime directory (control socket, session state): replacing the \
              socket or the state hijacks the daemon",
    },
    SelfProtected {
        path: "/run/agent-guard",
        access: Access::Connect,
        why: "the daemon's control socket: a session must not ask the daemon to start, widen \
              or approve anything (the daemon is to refuse its sessions' peers as well)",
    },
    SelfProtected {
        path: "/var/lib/agent-guard",
        access: Access::Modify,
        why: "the daemon's persistent state",
    },
    SelfProtected {
        path: "/var/log/agent-guard",
        access: Access::Modify,
        why: "the event logs: a session must not erase or forge the record of what it did \
              (`run` itself writes them from outside the session)",
    },
    SelfProtected {
        path: "/sys/fs/bpf",
        access: Access::Modify,
        why: "pinned BPF programs, links and maps: unpinning one can detach the guard",
    },
    SelfProtected {
        path: "/sys/fs/cgroup",
        access: Access::Modify,
        why: "cgroup control files (cgroup.procs, cgroup.kill, cgroup.freeze, \
              cgroup.subtree_control...): moving a process out of its cgroup, or freezing and \
              killing others",
    },
];

/// The built-in rules for `list`: one `deny modify` and one `deny connect`, both named
/// [`SELF_PROTECTION_RULE`], every entry optional. Tests pass their own list.
pub fn rules_for(list: &[(String, Access)]) -> Vec<Rule> {
    let location = Location {
        file: SELF_PROTECTION_SOURCE.to_owned(),
        line: 1,
        column: 1,
    };
    [Access::Modify, Access::Connect]
        .into_iter()
        .map(|access| Rule {
            name: SELF_PROTECTION_RULE.to_owned(),
            action: Action::Deny,
            access,
            paths: list
                .iter()
                .filter(|(_, a)| *a == access)
                .map(|(path, _)| PolicyPath {
                    text: path.clone(),
                    target: Target::Object(path.clone()),
                    location: location.clone(),
                    optional: true,
                })
                .collect(),
            location: location.clone(),
            net: None,
        })
        .collect()
}

/// The built-in rules of every session.
pub fn rules() -> Vec<Rule> {
    let list: Vec<(String, Access)> = SELF_PROTECTED
        .iter()
        .map(|p| (p.path.to_owned(), p.access))
        .collect();
    rules_for(&list)
}

/// How many rules [`rules`] adds in front of a policy's own.
pub const SELF_PROTECTION_RULES: usize = 2;

/// One line of /proc/self/mountinfo: what it shows (the root of the mount within its
/// filesystem), where, and the filesystem's device.
#[derive(Debug, Clone)]
struct Mount {
    dev: String,
    root: PathBuf,
    point: PathBuf,
}

fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            Some(Mount {
                dev: (*f.get(2)?).to_owned(),
                root: PathBuf::from(unescape(f.get(3)?)),
                point: PathBuf::from(unescape(f.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the kernel's walk finds the object `path` names: symlinks resolved, and a path
/// reached through a bind mount of a subtree translated to where that subtree lies in a
/// mount of its whole filesystem (the kernel walks `d_parent` inside the filesystem, so a
/// bind mount gets the answer of the real location). Without such a mount, the canonical
/// path. `None` when the path cannot be resolved.
pub fn real_path(path: &Path) -> Option<PathBuf> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let mounts = mounts();
    // The mount that shows `canonical`: the longest mount point above it; later lines stack
    // on top of earlier ones at the same point.
    let shown = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| canonical.starts_with(&m.point))
        .max_by_key(|(i, m)| (m.point.components().count(), *i))
        .map(|(_, m)| m)?;
    if shown.root == Path::new("/") {
        return Some(canonical);
    }
    let rest = canonical.strip_prefix(&shown.point).ok()?;
    let inside = shown.root.join(rest);
    // A mount of the same filesystem that shows a directory above `inside`, the widest.
    let whole = mounts
        .iter()
        .filter(|m| m.dev == shown.dev && inside.starts_with(&m.root))
        .min_by_key(|m| m.root.components().count())?;
    let rest = inside.strip_prefix(&whole.root).ok()?;
    let translated = whole.point.join(rest);
    // The translation must name the same object, or it is no better than the canonical path.
    let same = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt as _;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    };
    Some(if same(&translated, &canonical) {
        translated
    } else {
        canonical
    })
}

/// The identities (device, inode) of `path` and each of its ancestors, by path.
fn identities(path: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    path.ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Where a path really is, and the identities (device, inode) on its way up.
type Place = (PathBuf, Vec<(u64, u64)>);

/// Answers "is A at or below B" on real locations, caching what it resolves.
#[derive(Default)]
pub struct Places {
    real: HashMap<PathBuf, Option<Place>>,
}

impl Places {
    fn get(&mut self, path: &Path) -> Option<&Place> {
        self.real
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let real = real_path(path)?;
                let mut ids = identities(&real);
                // The canonical path's ancestors too: a bind mount of the protected directory
                // itself shows its identity on the way up.
                if let Ok(canonical) = std::fs::canonicalize(path) {
                    ids.extend(identities(&canonical));
                }
                Some((real, ids))
            })
            .as_ref()
    }

    /// Whether the object `inner` names lies at or below the one `outer` names: by real
    /// path, or because `outer`'s identity is on `inner`'s way up. An unresolvable path is
    /// taken to be related (fail closed).
    pub fn at_or_below(&mut self, inner: &Path, outer: &Path) -> bool {
        let Some((outer_real, outer_ids)) = self.get(outer).cloned() else {
            return true;
        };
        let Some((inner_real, inner_ids)) = self.get(inner) else {
            return true;
        };
        inner_real.starts_with(&outer_real)
            || outer_ids
                .first()
                .is_some_and(|outer_id| inner_ids.contains(outer_id))
    }

    /// Whether one of the two lies at or below the other.
    pub fn related(&mut self, a: &Path, b: &Path) -> bool {
        self.at_or_below(a, b) || self.at_or_below(b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_each_path_once_per_access_and_says_why() {
        let mut seen = std::collections::BTreeSet::new();
        for p in SELF_PROTECTED {
            assert!(p.path.starts_with('/'), "{}", p.path);
            assert!(!p.why.is_empty());
            assert!(matches!(p.access, Access::Modify | Access::Connect));
            assert!(seen.insert((p.path, p.access.as_str())), "{} twice", p.path);
        }
        let rules = rules();
        assert_eq!(rules.len(), SELF_PROTECTION_RULES);
        assert!(rules.iter().all(|r| r.name == SELF_PROTECTION_RULE
            && r.action == Action::Deny
            && r.paths.iter().all(|p| p.optional)));
    }

    /// A session on its own (no base policy): `resolve` refuses what would lift the rule,
    /// wherever it is written, and accepts a scope that merely holds a protected path.
    #[test]
    fn resolve_refuses_every_entry_that_would_lift_self_protection() {
        use crate::policy::{Policy, ResolveError, SessionContext};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        for d in ["ws", "conf/sub", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::os::unix::fs::symlink(dir.path().join("conf"), dir.path().join("ws/conf-link"))
            .unwrap();
        let builtin = rules_for(&[
            (format!("{root}/conf"), Access::Modify),
            (format!("{root}/run"), Access::Connect),
            (format!("{root}/absent"), Access::Modify),
        ]);
        let ctx = SessionContext {
            workspace: dir.path().join("ws"),
            home: None,
        };
        let text = format!(
            "[filesystem]\nwritable = [\"{root}\", \"{root}/conf/sub\", \"${{WORKSPACE}}/conf-link\", \"{root}/**/*.toml\", \"{root}/ws/**/*.toml\"]\n[[rule]]\nname = \"watch\"\naction = \"audit\"\npaths = [\"{root}/conf\"]\n[[network.rule]]\nname = \"socks\"\naction = \"allow\"\nunix = [\"{root}/run\"]\n"
        );
        let policy = Policy::parse("p.toml", &text).unwrap();
        let problems = policy.resolve_with(&ctx, &builtin).unwrap_err().flatten();
        let at: Vec<(usize, String)> = problems
            .iter()
            .map(|p| {
                let ResolveError::Refused {
                    location,
                    message,
                    hint,
                } = p
                else {
                    panic!("expected a refusal, got {p}");
                };
                assert!(
                    hint.contains("self-protection") || hint.contains("pattern"),
                    "{hint}"
                );
                (location.line, message.clone())
            })
            .collect();
        // `{root}` itself and the pattern beside the protected tree are fine; the absent
        // protected path is skipped.
        assert_eq!(at.len(), 5, "{at:#?}");
        assert!(at[0].1.contains("conf/sub` would open"), "{}", at[0].1);
        assert!(at[1].1.contains("conf-link` would open"), "{}", at[1].1);
        assert!(at[2].1.contains("could match inside"), "{}", at[2].1);
        assert_eq!(at[3].0, 6, "the audit rule's entry");
        assert!(at[4].1.contains("connect to unix sockets"), "{}", at[4].1);
        assert!(at.iter().all(|(_, m)| m.contains("rule `self-protection`")));
        // The same policy without those entries resolves, with the built-in rules first.
        let fine = Policy::parse(
            "p.toml",
            &format!("[filesystem]\nwritable = [\"{root}\", \"{root}/ws/**/*.toml\"]\n"),
        )
        .unwrap();
        let resolved = fine.resolve_with(&ctx, &builtin).unwrap();
        assert_eq!(resolved.rules[0].name, SELF_PROTECTION_RULE);
        assert_eq!(resolved.rules[2].name, "writable");
    }

    #[test]
    fn symlinks_and_bind_mounts_do_not_hide_where_a_path_lies() {
        let dir = tempfile::tempdir().unwrap();
        let guarded = dir.path().join("guarded");
        std::fs::create_dir_all(guarded.join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(&guarded, dir.path().join("alias")).unwrap();
        let mut places = Places::default();
        assert!(places.at_or_below(&dir.path().join("alias/sub"), &guarded));
        assert!(places.at_or_below(&guarded, &guarded));
        assert!(places.at_or_below(&guarded, dir.path()));
        assert!(!places.at_or_below(dir.path(), &guarded));
        assert!(!places.related(&dir.path().join("elsewhere"), &guarded));
        assert!(places.related(dir.path(), &guarded));
        // Something that does not resolve counts as related.
        assert!(places.at_or_below(&dir.path().join("gone"), &guarded));
    }
}
