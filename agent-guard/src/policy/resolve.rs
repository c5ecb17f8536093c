//! Session-start resolution: variables are expanded once, and each path becomes the
//! identity the kernel uses for the object it names (device and inode), so the kernel side
//! never compares strings.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use super::{
    self_protection, Access, Action, Location, Mode, NameGlob, NetMatch, Policy, PolicyPath, Rule,
    Target,
};

/// What a session's variables expand to.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// `${WORKSPACE}`: the directory `run` was started in.
    pub workspace: PathBuf,
    /// `~`: the invoking user's home.
    pub home: Option<PathBuf>,
}

impl SessionContext {
    /// The context of the current process: its working directory and the invoking user's
    /// home. Under sudo that is the home of `$SUDO_USER` (sudo sets `$HOME` to root's), so
    /// `~/.ssh` means the keys of the person who ran the agent; otherwise it is `$HOME`.
    pub fn current() -> std::io::Result<Self> {
        Ok(Self {
            workspace: std::env::current_dir()?,
            home: sudo_user_home().or_else(|| std::env::var_os("HOME").map(PathBuf::from)),
        })
    }
}

/// The home directory of `$SUDO_USER`, when running as root through sudo.
fn sudo_user_home() -> Option<PathBuf> {
    let user = std::env::var("SUDO_USER").ok()?;
    if user.is_empty() || user == "root" || !nix::unistd::geteuid().is_root() {
        return None;
    }
    let entry = nix::unistd::User::from_name(&user).ok()??;
    Some(entry.dir)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{location}: `{text}` uses `{variable}`, which is not set\n  hint: set it in the environment of `agent-guard run`, or write the path out")]
    UnsetVariable {
        location: Location,
        text: String,
        variable: String,
    },
    #[error(
        "{location}: `{text}` has an unterminated `${{`\n  hint: write variables as `${{NAME}}`"
    )]
    BadVariable { location: Location, text: String },
    #[error("{location}: `{text}` expands to `{path}`, which cannot be used\n  hint: create it first, or remove it from the policy")]
    Missing {
        location: Location,
        text: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: `{path}` is not a character device\n  hint: `writable_devices` lists device files such as /dev/null")]
    NotADevice { location: Location, path: PathBuf },
    #[error("{location}: `{text}` expands to a path longer than the kernel side renders (4095 bytes)\n  hint: name a shorter path, such as a parent directory")]
    TooLong { location: Location, text: String },
    /// A rule the session may not have: it would lift the built-in self-protection, or a
    /// refusal of the mandatory base policy.
    #[error("{location}: {message}\n  hint: {hint}")]
    Refused {
        location: Location,
        message: String,
        hint: String,
    },
    /// More than one problem, in the order of the rules.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ResolveError>),
}

impl ResolveError {
    /// One problem as itself, several as [`ResolveError::Several`].
    pub fn several(mut problems: Vec<ResolveError>) -> Self {
        if problems.len() == 1 {
            problems.remove(0)
        } else {
            Self::Several(problems)
        }
    }

    /// Each problem on its own.
    pub fn flatten(self) -> Vec<ResolveError> {
        match self {
            Self::Several(problems) => problems.into_iter().flat_map(Self::flatten).collect(),
            other => vec![other],
        }
    }

    /// Where the (first) problem is.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::UnsetVariable { location, .. }
            | Self::BadVariable { location, .. }
            | Self::Missing { location, .. }
            | Self::NotADevice { location, .. }
            | Self::TooLong { location, .. }
            | Self::Refused { location, .. } => Some(location),
            Self::Several(problems) => problems.first().and_then(Self::location),
        }
    }
}

/// A rule as events and `policy explain` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    pub name: String,
    pub action: Action,
    pub access: Access,
    pub location: Location,
    /// What a network rule matches.
    pub net: Option<NetMatch>,
}

/// A path rule's object as the kernel will know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedObject {
    /// Index of the rule in [`ResolvedPolicy::rules`].
    pub rule: u16,
    /// The entry as written.
    pub text: String,
    pub path: PathBuf,
    /// `super_block::s_dev` in the kernel's encoding.
    pub dev: u32,
    pub ino: u64,
}

/// A name pattern with its tree resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPattern {
    pub rule: u16,
    pub text: String,
    /// The tree, resolved like an object.
    pub tree: ResolvedObject,
    pub name: NameGlob,
}

/// A policy with its variables expanded and its paths resolved.
#[derive(Debug, Clone)]
pub struct ResolvedPolicy {
    pub source: String,
    pub mode: Mode,
    pub rules: Vec<RuleSummary>,
    pub objects: Vec<ResolvedObject>,
    pub patterns: Vec<ResolvedPattern>,
    /// Character devices (kernel rdev; minor 0xfffff means any minor).
    pub devices: Vec<u32>,
    pub network: ResolvedNetwork,
}

/// What the network tables are compiled from, besides the rules: the facts of the host
/// and of DNS at session start (and, for hostnames, at each refresh).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedNetwork {
    /// `egress = "allow"`.
    pub egress_allow: bool,
    /// Addresses of this host's interfaces: refused like loopback unless a rule names them.
    pub local: Vec<IpAddr>,
    /// Nameservers of /etc/resolv.conf, for the `dns-resolvers` rule.
    pub resolvers: Vec<IpAddr>,
    /// The addresses each hostname of the policy resolved to, when it was last looked up.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl ResolvedPolicy {
    /// Every hostname the policy's rules name.
    pub fn hostnames(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .filter_map(|r| r.net.as_ref())
            .flat_map(|n| n.hosts.iter().cloned())
            .collect()
    }

    /// Whether some rule needs the nameservers.
    pub fn needs_resolvers(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.net.as_ref().is_some_and(|n| n.system_resolvers))
    }
}

impl ResolvedPolicy {
    /// Names of the rules, indexed like the rule codes events carry.
    pub fn rule_names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }
}

/// The kernel's internal `dev_t` encoding (major << 20 | minor) of a user-space `dev_t`.
pub fn kernel_dev(dev: u64) -> u32 {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    (major << 20) | (minor & 0xfffff)
}

/// Any minor of `major`, in the kernel encoding the DEVICES map uses.
pub fn any_minor(major: u32) -> u32 {
    (major << 20) | 0xfffff
}

/// Majors of terminals: virtual consoles (4), tty/console/ptmx (5), Unix98 pty slaves
/// (136-143).
const TERMINAL_MAJORS: [u32; 10] = [4, 5, 136, 137, 138, 139, 140, 141, 142, 143];

impl Policy {
    /// Expands variables and resolves every path, at session start. Every path must exist:
    /// a rule is attached to an object, not to a name that may appear later.
    ///
    /// The session's rules come after the built-in [`SELF_PROTECTION_RULE`] rules (which
    /// take the first rule indices), and a policy whose rules would lift them is refused.
    /// Every problem is reported ([`ResolveError::Several`]), not just the first.
    pub fn resolve(&self, ctx: &SessionContext) -> Result<ResolvedPolicy, ResolveError> {
        self.resolve_with(ctx, &self_protection::rules())
    }

    /// [`Policy::resolve`] with `builtin` as the self-protection rules (tests pass rules
    /// on their own directories).
    pub(crate) fn resolve_with(
        &self,
        ctx: &SessionContext,
        builtin: &[Rule],
    ) -> Result<ResolvedPolicy, ResolveError> {
        let rules: Vec<Rule> = builtin.iter().chain(&self.rules).cloned().collect();
        let resolved = self.resolve_rules(ctx, &rules)?;
        let ceiling = resolved.only_rules(builtin.len());
        let problems = super::combine::lifted(&ceiling, &resolved, &rules, builtin.len(), false);
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(ResolveError::several(problems))
        }
    }

    /// Resolves `rules` (the effective list, built-in rules included) with this policy's
    /// settings, collecting every problem.
    pub(crate) fn resolve_rules(
        &self,
        ctx: &SessionContext,
        rules: &[Rule],
    ) -> Result<ResolvedPolicy, ResolveError> {
        let mut problems = Vec::new();
        let mut objects = Vec::new();
        let mut patterns = Vec::new();
        let entries = rules
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| rule.paths.iter().map(move |p| (i, p)));
        for (index, entry) in entries {
            let rule = index as u16;
            match &entry.target {
                Target::Object(text) => match optional(expand_and_stat(text, entry, ctx), entry) {
                    Ok(Some((path, meta))) => objects.push(object(rule, &entry.text, path, &meta)),
                    Ok(None) => {}
                    Err(e) => problems.push(e),
                },
                Target::Names { tree, name } => {
                    match optional(expand_and_stat(tree, entry, ctx), entry) {
                        Ok(Some((path, meta))) => patterns.push(ResolvedPattern {
                            rule,
                            text: entry.text.clone(),
                            tree: object(rule, &entry.text, path, &meta),
                            name: name.clone(),
                        }),
                        Ok(None) => {}
                        Err(e) => problems.push(e),
                    }
                }
            }
        }
        let mut devices = Vec::new();
        for entry in &self.writable_devices {
            match optional(expand_and_stat(&entry.text, entry, ctx), entry) {
                Ok(Some((path, meta))) if !meta.file_type().is_char_device() => {
                    problems.push(ResolveError::NotADevice {
                        location: entry.location.clone(),
                        path,
                    })
                }
                Ok(Some((_, meta))) => devices.push(kernel_dev(meta.rdev())),
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(ResolveError::several(problems));
        }
        if self.terminals {
            devices.extend(TERMINAL_MAJORS.iter().map(|&major| any_minor(major)));
        }
        Ok(ResolvedPolicy {
            source: self.source.clone(),
            mode: self.mode,
            rules: rules
                .iter()
                .map(|r| RuleSummary {
                    name: r.name.clone(),
                    action: r.action,
                    access: r.access,
                    location: r.location.clone(),
                    net: r.net.clone(),
                })
                .collect(),
            objects,
            patterns,
            devices,
            network: ResolvedNetwork {
                egress_allow: self.egress == Action::Allow,
                ..ResolvedNetwork::default()
            },
        })
    }

    /// The rules of a session as it runs: the built-in self-protection rules, then the
    /// policy's own. Rule indices of [`ResolvedPolicy`] (and so of events) index this list.
    pub fn effective_rules(&self) -> Vec<Rule> {
        self_protection::rules()
            .into_iter()
            .chain(self.rules.iter().cloned())
            .collect()
    }

    /// Every problem a session started with `ctx` would meet, not just the first.
    pub fn problems(&self, ctx: &SessionContext) -> Vec<ResolveError> {
        match self.resolve(ctx) {
            Ok(_) => Vec::new(),
            Err(e) => e.flatten(),
        }
    }
}

impl ResolvedPolicy {
    /// The policy made of its first `count` rules only (their objects and patterns).
    pub(crate) fn only_rules(&self, count: usize) -> ResolvedPolicy {
        let keep = |rule: u16| (rule as usize) < count;
        ResolvedPolicy {
            source: self.source.clone(),
            mode: self.mode,
            rules: self.rules.iter().take(count).cloned().collect(),
            objects: self
                .objects
                .iter()
                .filter(|o| keep(o.rule))
                .cloned()
                .collect(),
            patterns: self
                .patterns
                .iter()
                .filter(|p| keep(p.rule))
                .cloned()
                .collect(),
            devices: Vec::new(),
            network: ResolvedNetwork::default(),
        }
    }
}

/// An optional entry (`path?`) whose object does not exist resolves to nothing.
fn optional<T>(
    resolved: Result<T, ResolveError>,
    entry: &PolicyPath,
) -> Result<Option<T>, ResolveError> {
    match resolved {
        Ok(value) => Ok(Some(value)),
        Err(ResolveError::Missing { source, .. })
            if entry.optional
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn object(rule: u16, text: &str, path: PathBuf, meta: &std::fs::Metadata) -> ResolvedObject {
    ResolvedObject {
        rule,
        text: text.to_owned(),
        dev: kernel_dev(meta.dev()),
        ino: meta.ino(),
        path,
    }
}

/// Expands `entry` and reads the metadata of what it names, which must exist.
pub(super) fn expand_and_stat(
    text: &str,
    entry: &PolicyPath,
    ctx: &SessionContext,
) -> Result<(PathBuf, std::fs::Metadata), ResolveError> {
    let path = expand(text, entry, ctx)?;
    if path.as_os_str().len() >= agent_guard_common::PATH_BUF_LEN {
        return Err(ResolveError::TooLong {
            location: entry.location.clone(),
            text: entry.text.clone(),
        });
    }
    match std::fs::metadata(&path) {
        Ok(meta) => Ok((path, meta)),
        Err(source) => Err(ResolveError::Missing {
            location: entry.location.clone(),
            text: entry.text.clone(),
            path,
            source,
        }),
    }
}

/// Expands `${WORKSPACE}`, `${NAME}` (environment) and a leading `~`.
fn expand(text: &str, entry: &PolicyPath, ctx: &SessionContext) -> Result<PathBuf, ResolveError> {
    let unset = |variable: &str| ResolveError::UnsetVariable {
        location: entry.location.clone(),
        text: entry.text.clone(),
        variable: variable.to_owned(),
    };
    let mut out = String::new();
    let mut rest = text;
    if let Some(after) = rest.strip_prefix('~') {
        if after.is_empty() || after.starts_with('/') {
            let home = ctx.home.as_ref().ok_or_else(|| unset("~ ($HOME)"))?;
            out.push_str(&home.to_string_lossy());
            rest = after;
        }
    }
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| ResolveError::BadVariable {
            location: entry.location.clone(),
            text: entry.text.clone(),
        })?;
        let name = &after[..end];
        let value = if name == "WORKSPACE" {
            ctx.workspace.to_string_lossy().into_owned()
        } else {
            std::env::var(name).map_err(|_| unset(&format!("${{{name}}}")))?
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Path::new(&out).to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> SessionContext {
        SessionContext {
            workspace: dir.to_path_buf(),
            home: Some(dir.join("home")),
        }
    }

    /// The objects of the policy's own rules, without the built-in self-protection.
    fn own_objects(resolved: &ResolvedPolicy) -> Vec<&ResolvedObject> {
        resolved
            .objects
            .iter()
            .filter(|o| o.rule as usize >= self_protection::SELF_PROTECTION_RULES)
            .collect()
    }

    #[test]
    fn workspace_and_home_expand_and_resolve_to_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("home/cache")).unwrap();
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nwritable = [\"${WORKSPACE}\", \"~/cache\"]\n",
        )
        .unwrap();
        let resolved = policy.resolve(&ctx(dir.path())).unwrap();
        let meta = std::fs::metadata(dir.path().join("home/cache")).unwrap();
        let own = own_objects(&resolved);
        assert_eq!(own[0].path, dir.path());
        assert_eq!(own[1].ino, meta.ino());
        assert_eq!(resolved.rules[own[1].rule as usize].name, "writable");
    }

    #[test]
    fn missing_scope_is_a_located_error() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nwritable = [\"${WORKSPACE}/nope\"]\n",
        )
        .unwrap();
        let err = policy.resolve(&ctx(dir.path())).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:2:13: `${WORKSPACE}/nope` expands to"),
            "{err}"
        );
        assert!(err.contains("hint: create it first"), "{err}");
    }

    #[test]
    fn unset_environment_variable_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nwritable = [\"${AG_SURELY_UNSET_VARIABLE}\"]\n",
        )
        .unwrap();
        let err = policy.resolve(&ctx(dir.path())).unwrap_err().to_string();
        assert!(err.contains("${AG_SURELY_UNSET_VARIABLE}"), "{err}");
    }

    #[test]
    fn devices_must_be_character_devices() {
        let dir = tempfile::tempdir().unwrap();
        let policy =
            Policy::parse("p.toml", "[filesystem]\nwritable_devices = [\"/tmp\"]\n").unwrap();
        assert!(matches!(
            policy.resolve(&ctx(dir.path())),
            Err(ResolveError::NotADevice { .. })
        ));
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nwritable_devices = [\"/dev/null\"]\nterminals = false\n",
        )
        .unwrap();
        assert_eq!(
            policy.resolve(&ctx(dir.path())).unwrap().devices,
            vec![(1 << 20) | 3]
        );
    }

    #[test]
    fn optional_paths_are_skipped_when_missing_and_kept_when_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("there")).unwrap();
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nprotected = [\"${WORKSPACE}/gone?\", \"${WORKSPACE}/there?\", \"${WORKSPACE}/gone/**/*.db?\"]\n",
        )
        .unwrap();
        assert!(policy.problems(&ctx(dir.path())).is_empty());
        let resolved = policy.resolve(&ctx(dir.path())).unwrap();
        let texts: Vec<_> = own_objects(&resolved)
            .iter()
            .map(|o| o.text.as_str())
            .collect();
        assert_eq!(texts, ["${WORKSPACE}", "${WORKSPACE}/there"]);
        assert!(resolved.patterns.is_empty());
        // A path through a file (a worktree's `.git` is a file) is missing too.
        std::fs::write(dir.path().join("file"), "").unwrap();
        let through_a_file = Policy::parse(
            "p.toml",
            "[filesystem]\nprotected = [\"${WORKSPACE}/file/hooks?\"]\n",
        )
        .unwrap();
        assert!(through_a_file.problems(&ctx(dir.path())).is_empty());
        // Without the `?`, a missing path is an error.
        let strict = Policy::parse(
            "p.toml",
            "[filesystem]\nprotected = [\"${WORKSPACE}/gone\"]\n",
        )
        .unwrap();
        assert_eq!(strict.problems(&ctx(dir.path())).len(), 1);
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }
}
