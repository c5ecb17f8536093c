//! `agent-guard policy explain`: the decision the kernel side would take for one operation,
//! computed from the compiled tables with the kernel side's own walk.
//!
//! The walk needs the chain of objects from the target up to `/` as the kernel meets them:
//! each directory's identity and name, and at a mount point first the mounted filesystem's
//! root (named `/`) and then the directory it covers. The chain is built from the path
//! given, so a bind mount of a subtree is judged where it is mounted here, while the kernel
//! judges the subtree's real location.
use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Component, Path, PathBuf},
};

use agent_guard_common::{
    is_loopback, ACCESS_CONNECT, ACCESS_MODIFY, ACCESS_READ, ACTION_ALLOW, ACTION_AUDIT,
    ACTION_DENY, RULE_ABSTRACT_UNIX, RULE_EGRESS_DEFAULT, RULE_LISTEN, RULE_MULTI_LINK,
    RULE_PATH_TOO_DEEP, RULE_POLICY_BASE,
};

use super::{
    any_minor,
    compile::{compile, Compiled, Decided, Level},
    kernel_dev,
    net_compile::{compile_network, NetLimitError, NetTables},
    network::Cidr,
    self_protection::SELF_PROTECTION_RULE,
    Mode, Protocol, ResolvedPolicy,
};

/// The operations `explain` knows, named as in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum Op {
    Unlink,
    Rmdir,
    Rename,
    Link,
    Truncate,
    OpenWrite,
    Create,
    Mkdir,
    Symlink,
    Chmod,
    Chown,
    Setxattr,
    Removexattr,
    Utimes,
    Read,
    /// connect(2) to `ADDRESS:PORT`, a unix socket path or `@abstract-name`.
    Connect,
    /// sendto(2) to `ADDRESS:PORT` (or a unix socket).
    Send,
    /// bind(2) to `ADDRESS:PORT`.
    Bind,
    /// listen(2) on a socket bound to `ADDRESS:PORT`.
    Listen,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unlink => "unlink",
            Self::Rmdir => "rmdir",
            Self::Rename => "rename",
            Self::Link => "link",
            Self::Truncate => "truncate",
            Self::OpenWrite => "open-write",
            Self::Create => "create",
            Self::Mkdir => "mkdir",
            Self::Symlink => "symlink",
            Self::Chmod => "chmod",
            Self::Chown => "chown",
            Self::Setxattr => "setxattr",
            Self::Removexattr => "removexattr",
            Self::Utimes => "utimes",
            Self::Read => "read",
            Self::Connect => "connect",
            Self::Send => "send",
            Self::Bind => "bind",
            Self::Listen => "listen",
        }
    }

    /// Whether the operation is decided by the network tables (see [`explain_network`]).
    pub fn is_network(self) -> bool {
        matches!(self, Self::Connect | Self::Send | Self::Bind | Self::Listen)
    }

    /// Whether the operation takes a second path.
    pub fn takes_two_paths(self) -> bool {
        matches!(self, Self::Rename | Self::Link)
    }
}

/// The outcome as events report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    pub op: &'static str,
    pub paths: Vec<String>,
    /// `allow`, `audit` (allowed and reported) or `deny`.
    pub decision: &'static str,
    /// The deciding rule: a policy rule's name or a built-in reason; absent when nothing
    /// spoke (a read no rule covers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Where the deciding policy rule is written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// The object on the way up that the rule is attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path}: {source}")]
    Path {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` takes two paths: --op {0} FROM TO")]
    TwoPaths(&'static str),
    #[error("`{0}` takes one path")]
    OnePath(&'static str),
    #[error("the policy's network rules do not fit the kernel tables")]
    Limit(#[source] NetLimitError),
    #[error("`{0}` is a network operation: explain it with `explain_network`")]
    NetworkOp(&'static str),
}

/// A chain with the path of each level, for reporting.
struct Chain {
    levels: Vec<Level>,
    paths: Vec<PathBuf>,
}

impl Chain {
    fn parent(&self) -> Chain {
        Chain {
            levels: self.levels.get(1..).unwrap_or_default().to_vec(),
            paths: self.paths.get(1..).unwrap_or_default().to_vec(),
        }
    }
}

/// Mount points and whether each shows a whole filesystem (its root is `/`).
fn mount_points() -> HashMap<PathBuf, bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) {
            // Later lines stack on top of earlier ones at the same point.
            out.insert(PathBuf::from(unescape(point)), *root == "/");
        }
    }
    out
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

/// The chain of `path`. With `follow`, the path is resolved as open(2) would; without, its
/// last component is the name itself (unlink removes a symlink, not its target), which may
/// not exist yet (creation). `whole` is false for hooks that get no mount: their walk ends
/// at the root of the target's filesystem.
fn chain(path: &Path, follow: bool, whole: bool) -> Result<Chain, ExplainError> {
    let err = |source| ExplainError::Path {
        path: path.display().to_string(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(err)?;
    let real = if follow {
        std::fs::canonicalize(&absolute).map_err(err)?
    } else {
        let leaf = absolute.file_name();
        let parent = absolute.parent().unwrap_or(Path::new("/"));
        let parent = std::fs::canonicalize(parent).map_err(err)?;
        match leaf {
            Some(leaf)
                if !matches!(
                    absolute.components().next_back(),
                    Some(Component::ParentDir)
                ) =>
            {
                parent.join(leaf)
            }
            _ => parent,
        }
    };
    let mounts = mount_points();
    let mut levels = Vec::new();
    let mut paths = Vec::new();
    let mut at = Some(real.as_path());
    let mut first = true;
    while let Some(p) = at {
        let meta = if first && !follow {
            std::fs::symlink_metadata(p)
        } else {
            std::fs::metadata(p)
        };
        let id = match meta {
            Ok(meta) => Some((kernel_dev(meta.dev()), meta.ino())),
            Err(e) if first && e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let name = p
            .file_name()
            .map_or(b"/".to_vec(), |n| n.as_encoded_bytes().to_vec());
        match mounts.get(p) {
            Some(true) if p != Path::new("/") => {
                // The mounted filesystem's root, then the directory it covers.
                levels.push(Level {
                    id,
                    name: b"/".to_vec(),
                });
                paths.push(p.to_path_buf());
                if !whole {
                    break;
                }
                levels.push(Level { id: None, name });
                paths.push(p.to_path_buf());
            }
            _ => {
                levels.push(Level { id, name });
                paths.push(p.to_path_buf());
            }
        }
        if p == Path::new("/") {
            break;
        }
        first = false;
        at = p.parent();
    }
    Ok(Chain { levels, paths })
}

/// What `compiled` says about `access` to the object at `path` (which exists), resolved as
/// open(2) would, and the path the deciding rule is attached at. The combination checks of
/// the mandatory base policy and self-protection use it.
pub(super) fn decide_at(
    compiled: &Compiled,
    access: u32,
    path: &Path,
) -> Result<(Decided, Option<PathBuf>), ExplainError> {
    let c = chain(path, true, true)?;
    let decided = compiled.decide(access, &c.levels, false);
    let at = decided
        .level
        .filter(|_| decided.rule >= RULE_POLICY_BASE)
        .and_then(|level| c.paths.get(level).cloned());
    Ok((decided, at))
}

/// The stronger of two answers; the first on a tie.
fn stronger(a: Decided, b: Decided) -> (Decided, bool) {
    if b.action > a.action {
        (b, true)
    } else {
        (a, false)
    }
}

/// Explains `op` on `path` (and `path2`) under `policy`.
pub fn explain(
    policy: &ResolvedPolicy,
    op: Op,
    path: &Path,
    path2: Option<&Path>,
) -> Result<Explanation, ExplainError> {
    match (op.takes_two_paths(), path2) {
        (true, None) => return Err(ExplainError::TwoPaths(op.name())),
        (false, Some(_)) => return Err(ExplainError::OnePath(op.name())),
        _ => {}
    }
    let compiled = compile(policy);
    let (decided, chain) = match op {
        Op::Connect | Op::Send | Op::Bind | Op::Listen => {
            return Err(ExplainError::NetworkOp(op.name()))
        }
        Op::Unlink | Op::Rmdir => {
            let c = chain(path, false, true)?;
            (compiled.decide(ACCESS_MODIFY, &c.levels, true), c)
        }
        Op::Create | Op::Mkdir | Op::Symlink => {
            let c = chain(path, false, true)?;
            (compiled.decide(ACCESS_MODIFY, &c.levels, false), c)
        }
        Op::Chmod | Op::Chown => {
            let c = chain(path, true, true)?;
            (compiled.decide(ACCESS_MODIFY, &c.levels, false), c)
        }
        Op::Setxattr | Op::Removexattr | Op::Utimes => {
            let c = chain(path, true, false)?;
            (compiled.decide(ACCESS_MODIFY, &c.levels, false), c)
        }
        Op::Read => {
            let c = chain(path, true, true)?;
            (compiled.decide(ACCESS_READ, &c.levels, false), c)
        }
        Op::Truncate | Op::OpenWrite => writable(&compiled, policy, path)?,
        Op::Rename => rename(&compiled, path, path2.unwrap_or(path))?,
        Op::Link => link(&compiled, path, path2.unwrap_or(path))?,
    };
    let mut paths = vec![path.display().to_string()];
    if let Some(p) = path2 {
        paths.push(p.display().to_string());
    }
    let denied = decided.action == ACTION_DENY;
    let decision = match decided.action {
        ACTION_ALLOW => "allow",
        ACTION_AUDIT => "audit",
        _ if policy.mode == Mode::Audit => "audit",
        _ => "deny",
    };
    let rule_index = decided.rule.checked_sub(RULE_POLICY_BASE);
    let rule = rule_label(policy, decided.action, decided.rule);
    let errno = (denied && policy.mode == Mode::Enforce).then_some(if op == Op::Read {
        "EACCES"
    } else {
        "EPERM"
    });
    Ok(Explanation {
        op: op.name(),
        paths,
        decision,
        rule,
        written_at: rule_index.and_then(|i| written_at(policy, i)),
        attached_at: rule_index
            .and(decided.level)
            .and_then(|level| chain.paths.get(level))
            .map(|p| p.display().to_string()),
        errno,
    })
}

/// Where policy rule `index` is written; nowhere for the built-in self-protection.
fn written_at(policy: &ResolvedPolicy, index: u32) -> Option<String> {
    policy
        .rules
        .get(index as usize)
        .filter(|r| r.name != SELF_PROTECTION_RULE)
        .map(|r| r.location.to_string())
}

/// The name of the rule that decided: a policy rule's or a built-in reason; none when
/// nothing spoke.
fn rule_label(policy: &ResolvedPolicy, action: u16, code: u32) -> Option<String> {
    if action == ACTION_ALLOW && code == 0 {
        return None;
    }
    Some(match code.checked_sub(RULE_POLICY_BASE) {
        Some(i) => policy
            .rules
            .get(i as usize)
            .map_or_else(|| "unknown-policy-rule".into(), |r| r.name.clone()),
        None => crate::events::rule_name(code)
            .unwrap_or("unknown")
            .to_owned(),
    })
}

/// A network operation to explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetQuery {
    /// connect or send to an IP destination (IPv4 addresses are decided as IPv4-mapped).
    Destination {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    /// bind or listen on a local address.
    Local {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    /// connect or send to a unix socket bound at a path.
    UnixPath(PathBuf),
    /// connect or send to an abstract unix socket.
    Abstract(Vec<u8>),
}

/// What the kernel side would decide for a network operation, from the same compiled
/// tables (`net_compile`) and the same first-match scan. `op` is the event's name.
pub fn explain_network(
    policy: &ResolvedPolicy,
    op: &'static str,
    query: &NetQuery,
) -> Result<Explanation, ExplainError> {
    let tables = compile_network(policy).map_err(ExplainError::Limit)?;
    let allowed = (ACTION_ALLOW, 0);
    let mut attached_at = None;
    let (action, code, target) = match query {
        NetQuery::Destination {
            addr,
            port,
            protocol,
        } => {
            let (bytes, _) = Cidr::host(*addr).v6_form();
            let found = NetTables::lookup(&tables.connect, bytes)
                .and_then(|rules| rules.decide(*port, protocol.number()));
            let (action, code) = match found {
                Some((action, code)) => (u16::from(action), code),
                None if policy.network.egress_allow => allowed,
                None => (ACTION_DENY, RULE_EGRESS_DEFAULT),
            };
            (action, code, socket_text(*addr, *port))
        }
        NetQuery::Local {
            addr,
            port,
            protocol,
        } => {
            let (bytes, _) = Cidr::host(*addr).v6_form();
            let (action, code) = if is_loopback(&bytes) {
                allowed
            } else {
                NetTables::lookup(&tables.listen, bytes)
                    .and_then(|rules| rules.decide(*port, protocol.number()))
                    .map_or((ACTION_DENY, RULE_LISTEN), |(a, c)| (u16::from(a), c))
            };
            (action, code, socket_text(*addr, *port))
        }
        NetQuery::UnixPath(path) => {
            let compiled = compile(policy);
            let c = chain(path, true, true)?;
            let decided = compiled.decide(ACCESS_CONNECT, &c.levels, false);
            attached_at = decided
                .level
                .filter(|_| decided.rule >= RULE_POLICY_BASE)
                .and_then(|level| c.paths.get(level))
                .map(|p| p.display().to_string());
            (decided.action, decided.rule, path.display().to_string())
        }
        NetQuery::Abstract(name) => {
            let (action, code) = tables
                .abstract_names
                .get(name)
                .map_or((ACTION_DENY, RULE_ABSTRACT_UNIX), |v| {
                    (v.action as u16, v.rule)
                });
            (action, code, format!("@{}", String::from_utf8_lossy(name)))
        }
    };
    let denied = action == ACTION_DENY;
    Ok(Explanation {
        op,
        paths: vec![target],
        decision: match action {
            ACTION_ALLOW => "allow",
            ACTION_AUDIT => "audit",
            _ if policy.mode == Mode::Audit => "audit",
            _ => "deny",
        },
        rule: rule_label(policy, action, code),
        written_at: code
            .checked_sub(RULE_POLICY_BASE)
            .and_then(|i| written_at(policy, i)),
        attached_at,
        errno: (denied && policy.mode == Mode::Enforce).then_some("EPERM"),
    })
}

/// `192.0.2.1:443` or `[2001:db8::1]:443`.
fn socket_text(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// Opening for writing and truncating: `check_writable` on the kernel side.
fn writable(
    compiled: &Compiled,
    policy: &ResolvedPolicy,
    path: &Path,
) -> Result<(Decided, Chain), ExplainError> {
    let c = chain(path, true, true)?;
    let meta = std::fs::metadata(path).map_err(|source| ExplainError::Path {
        path: path.display().to_string(),
        source,
    })?;
    let allowed = Decided {
        action: ACTION_ALLOW,
        rule: 0,
        level: None,
    };
    let kind = meta.file_type();
    let decided = if kind.is_file() {
        let d = compiled.decide(ACCESS_MODIFY, &c.levels, false);
        if d.action == ACTION_ALLOW && meta.nlink() > 1 {
            Decided {
                action: ACTION_DENY,
                rule: RULE_MULTI_LINK,
                level: None,
            }
        } else {
            d
        }
    } else if kind.is_char_device() {
        let rdev = kernel_dev(meta.rdev());
        let major = rdev >> 20;
        if policy.devices.contains(&rdev) || policy.devices.contains(&any_minor(major)) {
            allowed
        } else {
            compiled.decide(ACCESS_MODIFY, &c.levels, false)
        }
    } else if kind.is_block_device() || kind.is_dir() {
        compiled.decide(ACCESS_MODIFY, &c.levels, false)
    } else {
        allowed
    };
    Ok((decided, c))
}

/// `path_rename` on the kernel side.
fn rename(compiled: &Compiled, from: &Path, to: &Path) -> Result<(Decided, Chain), ExplainError> {
    let a = chain(from, false, true)?;
    let b = chain(to, false, true)?;
    let (mut verdict, second) = stronger(
        compiled.decide(ACCESS_MODIFY, &a.levels, true),
        compiled.decide(ACCESS_MODIFY, &b.levels, true),
    );
    let mut on_destination = second;
    if compiled.reads && verdict.action != ACTION_DENY {
        let read = compiled.decide(ACCESS_READ, &a.levels, false);
        if read.action == ACTION_DENY || read.action == ACTION_AUDIT {
            let (v, chosen) = stronger(verdict, read);
            verdict = v;
            on_destination &= !chosen;
        }
    }
    let is_dir = std::fs::symlink_metadata(from).is_ok_and(|m| m.is_dir());
    if !compiled.patterns.is_empty() && verdict.action != ACTION_DENY && is_dir {
        let trees = |c: &Chain| compiled.pattern_trees(&c.parent().levels);
        let leaving = match (trees(&a), trees(&b)) {
            (Some(src), Some(dst)) => {
                let left = src & !dst;
                compiled
                    .patterns
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| left & (1 << i) != 0 && p.verdict.action > ACTION_ALLOW)
                    .map(|(_, p)| Decided {
                        action: p.verdict.action,
                        rule: RULE_POLICY_BASE + p.verdict.rule as u32,
                        level: None,
                    })
                    .fold(None, |acc: Option<Decided>, d| {
                        Some(acc.map_or(d, |a| stronger(a, d).0))
                    })
            }
            _ => Some(Decided {
                action: ACTION_DENY,
                rule: RULE_PATH_TOO_DEEP,
                level: None,
            }),
        };
        if let Some(leaving) = leaving {
            verdict = stronger(verdict, leaving).0;
        }
    }
    Ok((verdict, if on_destination { b } else { a }))
}

/// `path_link` on the kernel side.
fn link(
    compiled: &Compiled,
    existing: &Path,
    new: &Path,
) -> Result<(Decided, Chain), ExplainError> {
    let a = chain(existing, false, true)?;
    let b = chain(new, false, true)?;
    let (mut verdict, second) = stronger(
        compiled.decide(ACCESS_MODIFY, &a.levels, false),
        compiled.decide(ACCESS_MODIFY, &b.levels, false),
    );
    if compiled.reads && verdict.action != ACTION_DENY {
        let read = compiled.decide(ACCESS_READ, &a.levels, false);
        if read.action == ACTION_DENY || read.action == ACTION_AUDIT {
            verdict = stronger(verdict, read).0;
        }
    }
    Ok((verdict, if second { b } else { a }))
}
