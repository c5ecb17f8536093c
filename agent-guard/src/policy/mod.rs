//! The policy language (TOML), documented for users in docs/policy.md.
//!
//! Parsing happens in two layers: [`raw`] is the file as written, with unknown keys rejected;
//! [`Policy`] is the validated form, with `extends` applied. [`Policy::resolve`] then
//! expands variables and turns each path into the kernel's identity of the object it names,
//! at session start, and [`compile`] turns that into the tables the kernel decides on (and
//! `policy explain` decides on too). Nothing here talks to the kernel: enforcement lives in
//! `crate::bpf` and only sees the compiled form.
//!
//! ```toml
//! version = 1
//! mode = "enforce"            # or "audit": allow, but report what enforce would refuse
//! extends = "base.toml"       # optional: start from another policy
//!
//! [filesystem]
//! writable = ["${WORKSPACE}", "/tmp"]               # rule "writable": allow modifying
//! protected = ["${WORKSPACE}/.git/hooks"]            # rule "protected": deny modifying
//! read_denied = ["~/.ssh", "${WORKSPACE}/**/.env*"]  # rule "read-denied": deny reading
//! writable_devices = ["/dev/null"]
//! terminals = true            # ttys and pseudo-terminals stay writable
//!
//! [[rule]]
//! name = "audit-etc"
//! action = "audit"            # deny | audit | allow
//! access = "modify"           # modify (default) | read
//! paths = ["/etc"]
//!
//! [network]
//! egress = "deny"             # or "allow": destinations no rule names
//!
//! [[network.rule]]
//! name = "git"
//! action = "allow"
//! access = "connect"          # connect (default) | listen
//! hosts = ["git.example.com"] # and/or addresses = ["192.0.2.0/24"]; or unix = [paths, "@abstract"]
//! ports = [443, "8000-8100"]
//! protocol = "tcp"
//! ```
pub mod combine;
pub mod compile;
mod error;
mod explain;
pub mod net_compile;
pub mod network;
mod pattern;
mod raw;
mod resolve;
pub mod self_protection;

use std::{
    cell::RefCell,
    ops::Range,
    path::{Path, PathBuf},
};

use agent_guard_common::{
    ACCESS_CONNECT, ACCESS_MODIFY, ACCESS_READ, ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY,
    MAX_NAME_PATTERNS, MAX_POLICY_PATHS, MAX_POLICY_RULES,
};

pub use combine::{combine, CombineError, BASE_POLICY_PATH, BASE_RULE_PREFIX};
pub use error::{Location, PolicyError};
pub use explain::{explain, explain_network, ExplainError, Explanation, NetQuery, Op};
pub use network::{Cidr, NetMatch, PortRange, Protocol};
pub use pattern::{NameGlob, Target};
pub use resolve::{
    any_minor, kernel_dev, ResolveError, ResolvedNetwork, ResolvedObject, ResolvedPattern,
    ResolvedPolicy, RuleSummary, SessionContext,
};
pub use self_protection::{SelfProtected, SELF_PROTECTED, SELF_PROTECTION_RULE};

/// The policy built into the binary, used when `--policy` is not given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
/// The name the built-in policy reports in errors and events.
pub const DEFAULT_POLICY_NAME: &str = "<built-in default policy>";
/// What `extends` names to start from the built-in policy.
pub const BUILTIN_EXTENDS: &str = "builtin:default";

/// The only policy format version so far.
pub const POLICY_VERSION: i64 = 1;

/// Deepest chain of `extends`.
pub const MAX_EXTENDS_DEPTH: usize = 8;

/// Names of the rules the `[filesystem]` lists stand for.
pub const WRITABLE_RULE: &str = "writable";
pub const PROTECTED_RULE: &str = "protected";
pub const READ_DENIED_RULE: &str = "read-denied";
/// Name of the rule generated for the nameservers of /etc/resolv.conf when some network
/// rule names hosts.
pub const DNS_RESOLVERS_RULE: &str = "dns-resolvers";

/// Names events use for decisions no policy rule took; rule names may not take them.
pub const BUILTIN_REASONS: &[&str] = &[
    "outside-writable-scope",
    "path-too-deep",
    "unresolved-location",
    "multi-link-file",
    "session-table-full",
    "scope-root",
    "no-mount",
    "target-outside-session",
    "no-bpf",
    "egress-default",
    "local-destination",
    "listen-not-allowed",
    "raw-socket",
    "abstract-unix-socket",
    "unchecked-protocol",
    "no-kernel-load",
];

/// Longest rule name.
pub const MAX_RULE_NAME: usize = 48;

/// What the session does with an operation the policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it (EPERM) and report it.
    Enforce,
    /// Allow it and report that enforce mode would have refused it.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// What a rule does with the operations it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Audit,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Audit => "audit",
            Self::Deny => "deny",
        }
    }

    /// The kernel side's `ACTION_*`.
    pub fn code(self) -> u16 {
        match self {
            Self::Allow => ACTION_ALLOW,
            Self::Audit => ACTION_AUDIT,
            Self::Deny => ACTION_DENY,
        }
    }
}

/// What a rule speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Creating, changing, removing or renaming.
    Modify,
    /// Opening for reading (or executing, or listing).
    Read,
    /// Connecting or sending to a destination: an address, or a unix socket.
    Connect,
    /// Binding and listening on a local address other than loopback.
    Listen,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modify => "modify",
            Self::Read => "read",
            Self::Connect => "connect",
            Self::Listen => "listen",
        }
    }

    /// The kernel side's `ACCESS_*` for path entries. Listen rules have no paths; their
    /// addresses go to the `NET_LISTEN` table instead.
    pub fn code(self) -> u32 {
        match self {
            Self::Modify => ACCESS_MODIFY,
            Self::Read => ACCESS_READ,
            Self::Connect | Self::Listen => ACCESS_CONNECT,
        }
    }
}

/// A path entry as written in the policy, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPath {
    /// The entry as written, without the trailing `?` of an optional one.
    pub text: String,
    pub target: Target,
    pub location: Location,
    /// Written with a trailing `?`: skipped when it does not exist at session start.
    pub optional: bool,
}

/// A named rule: an action for one kind of access to a set of paths.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub access: Access,
    pub paths: Vec<PolicyPath>,
    /// Where the rule was written (its first entry for the `[filesystem]` lists).
    pub location: Location,
    /// What a `[[network.rule]]` matches besides its unix socket paths (which are `paths`).
    pub net: Option<NetMatch>,
}

/// A validated policy, with `extends` applied and before variables are expanded.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File name (or [`DEFAULT_POLICY_NAME`]).
    pub source: String,
    /// The files merged into it, the furthest parent first, `source` last.
    pub chain: Vec<String>,
    pub mode: Mode,
    /// In the order that breaks ties: parents' rules first, then each file's `[filesystem]`
    /// lists, then its `[[rule]]` tables.
    pub rules: Vec<Rule>,
    /// Character devices the session may open for writing.
    pub writable_devices: Vec<PolicyPath>,
    /// Whether terminals and pseudo-terminals stay writable.
    pub terminals: bool,
    /// What happens to destinations no network rule names: [`Action::Allow`] or
    /// [`Action::Deny`].
    pub egress: Action,
}

/// One file's contribution, validated.
struct Layer {
    mode: Option<Mode>,
    egress: Option<Action>,
    terminals: Option<bool>,
    /// Whether the file has a `writable` key (even an empty one).
    names_writable: bool,
    rules: Vec<Rule>,
    devices: Vec<PolicyPath>,
    extends: Option<(String, Location)>,
}

impl Policy {
    /// The built-in default policy.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY).expect("the built-in policy is valid")
    }

    /// Reads and validates a policy file and the files it extends.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Validates policy `text`; `file` names it in errors, and a relative `extends` is
    /// found next to it.
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let mut chain = vec![file.to_owned()];
        let layer = parse_layer(file, text)?;
        let mut layers = vec![layer];
        while let Some((parent, at)) = layers.last().and_then(|l| l.extends.clone()) {
            if layers.len() > MAX_EXTENDS_DEPTH {
                return Err(PolicyError::Invalid {
                    location: at,
                    message: format!("`extends` is nested more than {MAX_EXTENDS_DEPTH} deep"),
                    hint: "flatten the chain: extend a policy that does not itself extend a long chain".into(),
                });
            }
            let (parent_file, parent_text) = if parent == BUILTIN_EXTENDS {
                (DEFAULT_POLICY_NAME.to_owned(), DEFAULT_POLICY.to_owned())
            } else {
                let base = Path::new(chain.last().map_or(".", String::as_str))
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_path_buf();
                let path: PathBuf = base.join(&parent);
                let name = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::Invalid {
                    location: at.clone(),
                    message: format!("cannot read `{name}`, which this policy extends: {e}"),
                    hint: format!("`extends` is relative to the extending file; use `{BUILTIN_EXTENDS}` for the built-in policy"),
                })?;
                (name, text)
            };
            if chain.iter().any(|seen| same_file(seen, &parent_file)) {
                chain.push(parent_file);
                return Err(PolicyError::Invalid {
                    location: at,
                    message: format!("`extends` loops: {}", chain.join(" -> ")),
                    hint: "remove one of the `extends` keys in the loop".into(),
                });
            }
            layers.push(parse_layer(&parent_file, &parent_text)?);
            chain.push(parent_file);
        }
        chain.reverse();
        layers.reverse();
        merge(file, chain, layers)
    }

    /// Every path entry of every rule, with its rule's index.
    pub fn entries(&self) -> impl Iterator<Item = (usize, &PolicyPath)> {
        self.rules
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| rule.paths.iter().map(move |p| (i, p)))
    }
}

/// Whether two policy file names are the same file.
fn same_file(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Validates one file.
fn parse_layer(file: &str, text: &str) -> Result<Layer, PolicyError> {
    let raw: raw::RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        PolicyError::invalid(
            file,
            text,
            span,
            e.message().trim(),
            hint_for_toml(e.message()),
        )
    })?;
    let invalid = |span: Range<usize>, message: String, hint: &str| {
        PolicyError::invalid(file, text, span, message, hint)
    };
    let at = |span: Range<usize>| Location::at(file, text, span.start);

    // Every problem is collected, so that one `policy check` lists them all.
    let errors = RefCell::new(Vec::new());
    let fail = |e: PolicyError| errors.borrow_mut().push(e);
    if let Some(version) = &raw.version {
        if *version.get_ref() != POLICY_VERSION {
            fail(invalid(
                version.span(),
                format!("unsupported policy version {}", version.get_ref()),
                "this agent-guard reads `version = 1`",
            ));
        }
    }
    let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None => None,
        Some(("enforce", _)) => Some(Mode::Enforce),
        Some(("audit", _)) => Some(Mode::Audit),
        Some((other, span)) => {
            fail(invalid(
                span,
                format!("unknown mode `{other}`"),
                "use `mode = \"enforce\"` to refuse operations or `mode = \"audit\"` to only report them",
            ));
            None
        }
    };
    let extends = match raw.extends {
        Some(e) if e.get_ref().is_empty() => {
            fail(invalid(
                e.span(),
                "`extends` is empty".into(),
                "name a policy file (relative to this one) or `builtin:default`",
            ));
            None
        }
        Some(e) => Some((e.get_ref().clone(), at(e.span()))),
        None => None,
    };
    let entry = |entry: toml::Spanned<String>,
                 key: &str,
                 patterns_allowed: bool|
     -> Result<PolicyPath, PolicyError> {
        let span = entry.span();
        let text_value = entry.into_inner();
        if text_value.is_empty() {
            return Err(invalid(
                span,
                format!("empty path in `{key}`"),
                "remove the entry or write an absolute path",
            ));
        }
        if !(text_value.starts_with('/')
            || text_value.starts_with("${")
            || text_value.starts_with('~'))
        {
            return Err(invalid(
                    span,
                    format!("`{text_value}` in `{key}` is not an absolute path"),
                    "write it from the root (`/srv/work`) or from a variable (`${WORKSPACE}/build`, `~/cache`)",
                ));
        }
        let (text_value, optional) = match text_value.strip_suffix('?') {
            Some(stripped) => (stripped.to_owned(), true),
            None => (text_value, false),
        };
        let target = pattern::parse_target(&text_value)
            .map_err(|e| invalid(span.clone(), e.message, e.hint))?;
        if !patterns_allowed && matches!(target, Target::Names { .. }) {
            return Err(invalid(
                span,
                format!("`{text_value}` in `{key}` is a name pattern"),
                "`writable_devices` lists device files by path, such as /dev/null",
            ));
        }
        Ok(PolicyPath {
            text: text_value,
            target,
            location: Location::at(file, text, span.start),
            optional,
        })
    };
    // The valid entries of a list; the others are reported.
    let paths = |list: Vec<toml::Spanned<String>>, key: &str, patterns_allowed: bool| {
        list.into_iter()
            .filter_map(|e| entry(e, key, patterns_allowed).map_err(&fail).ok())
            .collect::<Vec<_>>()
    };

    let mut rules = Vec::new();
    let mut names_writable = false;
    let mut devices = Vec::new();
    let mut terminals = None;
    if let Some(fs) = raw.filesystem {
        names_writable = fs.writable.is_some();
        for (list, name, action, access, key) in [
            (
                fs.writable,
                WRITABLE_RULE,
                Action::Allow,
                Access::Modify,
                "writable",
            ),
            (
                fs.protected,
                PROTECTED_RULE,
                Action::Deny,
                Access::Modify,
                "protected",
            ),
            (
                fs.read_denied,
                READ_DENIED_RULE,
                Action::Deny,
                Access::Read,
                "read_denied",
            ),
        ] {
            if let Some(list) = list {
                let location = at(list.span());
                let entries = paths(list.into_inner(), key, true);
                if !entries.is_empty() {
                    rules.push(Rule {
                        name: name.to_owned(),
                        action,
                        access,
                        paths: entries,
                        location,
                        net: None,
                    });
                }
            }
        }
        devices = paths(
            fs.writable_devices.unwrap_or_default(),
            "writable_devices",
            false,
        );
        terminals = fs.terminals.map(|t| *t.get_ref());
    }
    let named_rule = |table: toml::Spanned<raw::RawRule>| -> Result<Rule, PolicyError> {
        let span = table.span();
        let rule = table.into_inner();
        let name = rule_name(&rule.name, &invalid)?;
        let action = rule_action(&rule.action, &invalid)?;
        let access = match rule
            .access
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span()))
        {
            None | Some(("modify", _)) => Access::Modify,
            Some(("read", _)) => Access::Read,
            Some((other, span)) => {
                return Err(invalid(
                    span,
                    format!("unknown access `{other}`"),
                    "use `modify` (create, change, remove, rename) or `read`; network rules go in `[[network.rule]]`",
                ))
            }
        };
        let paths_span = rule.paths.span();
        let written = rule.paths.get_ref().len();
        let entries = paths(rule.paths.into_inner(), "paths", true);
        if written == 0 {
            return Err(invalid(
                paths_span,
                format!("rule `{name}` has no paths"),
                "list at least one path or pattern, or remove the rule",
            ));
        }
        Ok(Rule {
            name,
            action,
            access,
            paths: entries,
            location: at(span),
            net: None,
        })
    };
    for table in raw.rule {
        match named_rule(table) {
            Ok(rule) => rules.push(rule),
            Err(e) => fail(e),
        }
    }
    let mut egress = None;
    if let Some(network) = raw.network {
        egress = match network
            .egress
            .as_ref()
            .map(|e| (e.get_ref().as_str(), e.span()))
        {
            None => None,
            Some(("deny", _)) => Some(Action::Deny),
            Some(("allow", _)) => Some(Action::Allow),
            Some((other, span)) => {
                fail(invalid(
                    span,
                    format!("unknown egress default `{other}`"),
                    "use `egress = \"deny\"` (only what rules name) or `egress = \"allow\"` (all but what rules deny)",
                ));
                None
            }
        };
        for table in network.rule {
            let span = table.span();
            let raw_rule = table.into_inner();
            let name = rule_name(&raw_rule.name, &invalid);
            let action = rule_action(&raw_rule.action, &invalid);
            let matched = network_match(raw_rule, &invalid);
            let (name, action, NetRuleParts { access, net, unix }) = match (name, action, matched) {
                (Ok(name), Ok(action), Ok(matched)) => (name, action, matched),
                (name, action, matched) => {
                    name.err().into_iter().chain(action.err()).for_each(&fail);
                    matched.err().into_iter().flatten().for_each(&fail);
                    continue;
                }
            };
            rules.push(Rule {
                name,
                action,
                access,
                paths: paths(unix, "unix", true),
                location: at(span),
                net: Some(net),
            });
        }
    }
    let errors = errors.into_inner();
    if !errors.is_empty() {
        return Err(PolicyError::several(errors));
    }
    Ok(Layer {
        mode,
        egress,
        terminals,
        names_writable,
        rules,
        devices,
        extends,
    })
}

/// Builds a located error from a span, a message and a hint.
type Invalid<'a> = dyn Fn(Range<usize>, String, &str) -> PolicyError + 'a;

/// A rule's name, checked: the charset, the length, and not a reserved name.
fn rule_name(name: &toml::Spanned<String>, invalid: &Invalid) -> Result<String, PolicyError> {
    let text = name.get_ref();
    let name_ok = !text.is_empty()
        && text.len() <= MAX_RULE_NAME
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    if !name_ok {
        return Err(invalid(
            name.span(),
            format!("`{text}` is not a valid rule name"),
            "use lowercase letters, digits and `-`, up to 48 characters, such as `protect-db`",
        ));
    }
    if [
        WRITABLE_RULE,
        PROTECTED_RULE,
        READ_DENIED_RULE,
        DNS_RESOLVERS_RULE,
        SELF_PROTECTION_RULE,
    ]
    .contains(&text.as_str())
        || BUILTIN_REASONS.contains(&text.as_str())
    {
        return Err(invalid(
            name.span(),
            format!("the rule name `{text}` is reserved"),
            "`writable`, `protected` and `read-denied` name the [filesystem] lists, `dns-resolvers` the generated DNS rule, `self-protection` the built-in rule that guards agent-guard's own files, and the built-in reasons name themselves; pick another name",
        ));
    }
    Ok(text.clone())
}

fn rule_action(action: &toml::Spanned<String>, invalid: &Invalid) -> Result<Action, PolicyError> {
    match action.get_ref().as_str() {
        "deny" => Ok(Action::Deny),
        "audit" => Ok(Action::Audit),
        "allow" => Ok(Action::Allow),
        other => Err(invalid(
            action.span(),
            format!("unknown action `{other}`"),
            "use `deny` (refuse and report), `audit` (allow and report) or `allow`",
        )),
    }
}

/// A `[[network.rule]]` validated but for its unix socket paths.
struct NetRuleParts {
    access: Access,
    net: NetMatch,
    /// Unix socket paths, still to be validated as path entries.
    unix: Vec<toml::Spanned<String>>,
}

/// What a `[[network.rule]]` matches. Every problem is returned.
fn network_match(
    rule: raw::RawNetRule,
    invalid: &Invalid,
) -> Result<NetRuleParts, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut net = NetMatch::default();
    let access = match rule
        .access
        .as_ref()
        .map(|a| (a.get_ref().as_str(), a.span()))
    {
        None | Some(("connect", _)) => Access::Connect,
        Some(("listen", _)) => Access::Listen,
        Some((other, span)) => {
            errors.push(invalid(
                span,
                format!("unknown network access `{other}`"),
                "use `connect` (connect and send to the destinations) or `listen` (bind and listen on the addresses)",
            ));
            Access::Connect
        }
    };
    let name = rule.name.get_ref();
    let list = |list: Option<toml::Spanned<Vec<toml::Spanned<String>>>>| {
        list.map(|l| (l.span(), l.into_inner()))
    };
    let hosts = list(rule.hosts);
    let addresses = list(rule.addresses);
    let unix = list(rule.unix);
    if let Some((span, hosts)) = hosts {
        if access == Access::Listen {
            errors.push(invalid(
                span.clone(),
                format!("listen rule `{name}` names hosts"),
                "a listen rule names local `addresses`; hostnames are for connect rules",
            ));
        }
        if hosts.is_empty() {
            errors.push(invalid(
                span,
                "`hosts` is empty".into(),
                "list hostnames such as `git.example.com`, or remove the key",
            ));
        }
        for host in hosts {
            match network::parse_hostname(host.get_ref()) {
                Ok(h) => net.hosts.push(h),
                Err(message) => errors.push(invalid(
                    host.span(),
                    message,
                    "write a full hostname (`git.example.com`, `*.pkg.example.org`); addresses go in `addresses`",
                )),
            }
        }
    }
    if let Some((span, addresses)) = addresses {
        if addresses.is_empty() {
            errors.push(invalid(
                span,
                "`addresses` is empty".into(),
                "list addresses or blocks such as `192.0.2.0/24` or `::1`, or remove the key",
            ));
        }
        for address in addresses {
            match Cidr::parse(address.get_ref()) {
                Ok(c) => net.addresses.push(c),
                Err(message) => errors.push(invalid(
                    address.span(),
                    message,
                    "write an address (`192.0.2.7`, `2001:db8::1`) or a block (`10.0.0.0/8`, `2001:db8::/32`)",
                )),
            }
        }
    }
    if let Some(ports) = rule.ports {
        let span = ports.span();
        let ports = ports.into_inner();
        if ports.is_empty() {
            errors.push(invalid(
                span,
                "`ports` is empty".into(),
                "list ports (`443`) or ranges (`\"8000-8100\"`), or remove the key for every port",
            ));
        }
        for port in ports {
            let parsed = match port.get_ref() {
                toml::Value::Integer(n) => u16::try_from(*n)
                    .map(|p| PortRange { lo: p, hi: p })
                    .map_err(|_| format!("`{n}` is not a port number (0 to 65535)")),
                toml::Value::String(text) => PortRange::parse(text),
                other => Err(format!("`{other}` is not a port or a range")),
            };
            match parsed {
                Ok(range) => net.ports.push(range),
                Err(message) => errors.push(invalid(
                    port.span(),
                    message,
                    "write a port as a number (`443`) and a range as a string (`\"8000-8100\"`)",
                )),
            }
        }
    }
    if let Some(protocol) = &rule.protocol {
        match Protocol::parse(protocol.get_ref()) {
            Some(p) => net.protocol = Some(p),
            None => errors.push(invalid(
                protocol.span(),
                format!("unknown protocol `{}`", protocol.get_ref()),
                "use `tcp` or `udp`, or remove the key for both",
            )),
        }
    }
    let mut unix_paths = Vec::new();
    if let Some((span, unix)) = unix {
        if access == Access::Listen
            || net.hosts.len() + net.addresses.len() > 0
            || !net.ports.is_empty()
            || net.protocol.is_some()
        {
            errors.push(invalid(
                span.clone(),
                format!("rule `{name}` mixes unix sockets with IP destinations, ports, a protocol or listening"),
                "put unix sockets in a connect rule of their own",
            ));
        }
        if unix.is_empty() {
            errors.push(invalid(span, "`unix` is empty".into(), "list socket paths (`/run/docker.sock`) or abstract names (`@name`), or remove the key"));
        }
        for entry in unix {
            if entry.get_ref().starts_with('@') {
                match network::parse_abstract(entry.get_ref()) {
                    Ok(n) => net.abstract_names.push(n),
                    Err(message) => errors.push(invalid(
                        entry.span(),
                        message,
                        "write `@` and the name as the socket binds it, without its leading NUL",
                    )),
                }
            } else {
                unix_paths.push(entry);
            }
        }
    }
    if net.hosts.is_empty()
        && net.addresses.is_empty()
        && net.abstract_names.is_empty()
        && unix_paths.is_empty()
        && errors.is_empty()
    {
        errors.push(invalid(
            rule.name.span(),
            format!("network rule `{name}` names no destination"),
            "give it `hosts`, `addresses` or `unix`",
        ));
    }
    if errors.is_empty() {
        Ok(NetRuleParts {
            access,
            net,
            unix: unix_paths,
        })
    } else {
        Err(errors)
    }
}

/// Applies the layers in order (furthest parent first) and checks the limits.
fn merge(file: &str, chain: Vec<String>, layers: Vec<Layer>) -> Result<Policy, PolicyError> {
    let mut mode = Mode::Enforce;
    let mut egress = Action::Deny;
    let mut terminals = true;
    let mut names_writable = false;
    let mut rules: Vec<Rule> = Vec::new();
    let mut devices = Vec::new();
    for layer in layers {
        mode = layer.mode.unwrap_or(mode);
        egress = layer.egress.unwrap_or(egress);
        terminals = layer.terminals.unwrap_or(terminals);
        names_writable |= layer.names_writable;
        devices.extend(layer.devices);
        for rule in layer.rules {
            match rules.iter_mut().find(|r| r.name == rule.name) {
                // The [filesystem] lists of every file make up one rule each.
                Some(existing)
                    if [WRITABLE_RULE, PROTECTED_RULE, READ_DENIED_RULE]
                        .contains(&rule.name.as_str()) =>
                {
                    existing.paths.extend(rule.paths);
                }
                Some(existing) => {
                    return Err(PolicyError::Invalid {
                        location: rule.location,
                        message: format!(
                            "rule `{}` is already defined at {}",
                            rule.name, existing.location
                        ),
                        hint: "give each rule its own name; a policy that extends another cannot redefine its rules".into(),
                    })
                }
                None => rules.push(rule),
            }
        }
    }
    let allows_modifying = rules
        .iter()
        .any(|r| r.action == Action::Allow && r.access == Access::Modify);
    if !names_writable && !allows_modifying {
        // No scope given anywhere: the session may modify its workspace only.
        let location = Location {
            file: file.to_owned(),
            line: 1,
            column: 1,
        };
        rules.insert(
            0,
            Rule {
                name: WRITABLE_RULE.into(),
                action: Action::Allow,
                access: Access::Modify,
                paths: vec![PolicyPath {
                    text: "${WORKSPACE}".into(),
                    target: Target::Object("${WORKSPACE}".into()),
                    location: location.clone(),
                    optional: false,
                }],
                location,
                net: None,
            },
        );
    }
    let names_hosts = rules
        .iter()
        .any(|r| r.net.as_ref().is_some_and(|n| !n.hosts.is_empty()));
    if names_hosts || egress == Action::Allow {
        // Hostnames are looked up by agent-guard, but the session looks them up too; and
        // with egress open, a resolver on loopback (127.0.0.53) must stay reachable.
        let location = rules
            .iter()
            .find(|r| r.net.as_ref().is_some_and(|n| !n.hosts.is_empty()))
            .map(|r| r.location.clone())
            .unwrap_or_else(|| Location {
                file: file.to_owned(),
                line: 1,
                column: 1,
            });
        rules.push(Rule {
            name: DNS_RESOLVERS_RULE.into(),
            action: Action::Allow,
            access: Access::Connect,
            paths: Vec::new(),
            location,
            net: Some(NetMatch {
                ports: vec![PortRange {
                    lo: crate::network::dns::DNS_PORT,
                    hi: crate::network::dns::DNS_PORT,
                }],
                system_resolvers: true,
                ..NetMatch::default()
            }),
        });
    }
    let limit = |location: &Location, message: String, hint: &str| PolicyError::Invalid {
        location: location.clone(),
        message,
        hint: hint.into(),
    };
    // The built-in self-protection rules and paths take their share of the tables.
    let max_rules = MAX_POLICY_RULES - self_protection::SELF_PROTECTION_RULES;
    let max_paths = MAX_POLICY_PATHS - SELF_PROTECTED.len();
    if rules.len() > max_rules {
        return Err(limit(
            &rules[max_rules].location,
            format!("{} rules; at most {max_rules} are supported", rules.len()),
            "merge rules that share an action and access into one rule with more paths",
        ));
    }
    let mut paths = 0usize;
    let mut patterns = 0usize;
    for rule in &rules {
        for entry in &rule.paths {
            paths += 1;
            if paths > max_paths {
                return Err(limit(
                    &entry.location,
                    format!("more than {max_paths} paths; the kernel table holds at most {MAX_POLICY_PATHS} per session, {} of them for the built-in self-protection", SELF_PROTECTED.len()),
                    "list parent directories instead of many siblings, or use a name pattern",
                ));
            }
            if matches!(entry.target, Target::Names { .. }) {
                patterns += 1;
                if patterns > MAX_NAME_PATTERNS {
                    return Err(limit(
                        &entry.location,
                        format!("more than {MAX_NAME_PATTERNS} name patterns; the kernel matches at most {MAX_NAME_PATTERNS} per policy"),
                        "combine patterns (`.env*` covers `.env.local`), or name the files by path",
                    ));
                }
            }
        }
    }
    Ok(Policy {
        source: file.to_owned(),
        chain,
        mode,
        rules,
        writable_devices: devices,
        terminals,
        egress,
    })
}

/// A fix suggestion for the TOML layer's messages.
fn hint_for_toml(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; the keys are `version`, `mode`, `extends`, `[filesystem]` (`writable`, `protected`, `read_denied`, `writable_devices`, `terminals`), `[[rule]]` (`name`, `action`, `access`, `paths`), `[network]` (`egress`) and `[[network.rule]]` (`name`, `action`, `access`, `hosts`, `addresses`, `ports`, `protocol`, `unix`)"
    } else if message.contains("missing field") {
        "a `[[rule]]` needs `name`, `action` and `paths`; a `[[network.rule]]` needs `name` and `action`"
    } else if message.contains("invalid type") {
        "check the value's type: paths are quoted strings in a list, `terminals` is true or false"
    } else {
        "check the TOML syntax at this position (quotes, brackets, `key = value`)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_is_valid_and_scopes_the_workspace() {
        let policy = Policy::builtin();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.rules[0].name, WRITABLE_RULE);
        assert_eq!(policy.rules[0].paths[0].text, "${WORKSPACE}");
    }

    #[test]
    fn empty_policy_defaults_to_workspace_and_enforce() {
        let policy = Policy::parse("p.toml", "").unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].action, Action::Allow);
        assert_eq!(policy.rules[0].paths[0].text, "${WORKSPACE}");
        assert!(policy.terminals);
    }

    #[test]
    fn audit_mode_parses() {
        let policy = Policy::parse("p.toml", "mode = \"audit\"\n").unwrap();
        assert_eq!(policy.mode, Mode::Audit);
    }

    fn invalid_at(text: &str) -> (Location, String) {
        match Policy::parse("p.toml", text).unwrap_err() {
            PolicyError::Invalid {
                location,
                message,
                hint,
            } => {
                assert!(!hint.is_empty());
                (location, message)
            }
            other => panic!("expected a located error, got {other}"),
        }
    }

    #[test]
    fn unknown_key_is_located() {
        let (at, message) = invalid_at("mode = \"enforce\"\n[filesystem]\nwritabel = [\"/tmp\"]\n");
        assert_eq!((at.line, at.column), (3, 1));
        assert!(message.contains("unknown field `writabel`"), "{message}");
    }

    #[test]
    fn bad_mode_is_located() {
        let (at, message) = invalid_at("version = 1\nmode = \"permissive\"\n");
        assert_eq!((at.line, at.column), (2, 8));
        assert_eq!(message, "unknown mode `permissive`");
    }

    #[test]
    fn relative_path_is_located() {
        let (at, message) = invalid_at("[filesystem]\nwritable = [\"/tmp\", \"build\"]\n");
        assert_eq!((at.line, at.column), (2, 21));
        assert!(message.contains("not an absolute path"));
    }

    #[test]
    fn syntax_error_is_located() {
        let (at, _) = invalid_at("mode = \"enforce\n");
        assert_eq!(at.line, 1);
    }

    #[test]
    fn wrong_version_is_refused() {
        let (at, message) = invalid_at("version = 2\n");
        assert_eq!((at.line, at.column), (1, 11));
        assert_eq!(message, "unsupported policy version 2");
    }

    #[test]
    fn protected_paths_parse_and_are_checked_like_scopes() {
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nprotected = [\"${WORKSPACE}/.git/hooks\"]\n",
        )
        .unwrap();
        let protected = policy
            .rules
            .iter()
            .find(|r| r.name == PROTECTED_RULE)
            .unwrap();
        assert_eq!(protected.action, Action::Deny);
        assert_eq!(protected.paths[0].text, "${WORKSPACE}/.git/hooks");
        let (at, message) = invalid_at("[filesystem]\nprotected = [\"db.sqlite\"]\n");
        assert_eq!((at.line, at.column), (2, 14));
        assert!(
            message.contains("in `protected` is not an absolute path"),
            "{message}"
        );
    }

    #[test]
    fn too_many_patterns_is_an_error_not_a_truncation() {
        let list: Vec<String> = (0..=MAX_NAME_PATTERNS)
            .map(|i| format!("\"/s/**/*.x{i}\""))
            .collect();
        let (at, message) = invalid_at(&format!(
            "[filesystem]\nprotected = [{}]\n",
            list.join(", ")
        ));
        assert_eq!(at.line, 2);
        assert!(message.contains("more than 16 name patterns"), "{message}");
    }

    #[test]
    fn too_many_paths_is_an_error_not_a_truncation() {
        let list: Vec<String> = (0..=MAX_POLICY_PATHS)
            .map(|i| format!("\"/s{i}\""))
            .collect();
        let (_, message) = invalid_at(&format!(
            "[filesystem]\nprotected = [{}]\n",
            list.join(", ")
        ));
        assert!(
            message.contains("paths; the kernel table holds at most 16384"),
            "{message}"
        );
    }

    #[test]
    fn named_rules_parse_with_their_actions_and_access() {
        let policy = Policy::parse(
            "p.toml",
            "[filesystem]\nwritable = [\"/tmp\"]\n\n[[rule]]\nname = \"audit-etc\"\naction = \"audit\"\npaths = [\"/etc\"]\n\n[[rule]]\nname = \"no-keys\"\naction = \"deny\"\naccess = \"read\"\npaths = [\"~/**/id_*\"]\n",
        )
        .unwrap();
        let names: Vec<_> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["writable", "audit-etc", "no-keys"]);
        assert_eq!(policy.rules[1].action, Action::Audit);
        assert_eq!(policy.rules[1].access, Access::Modify);
        assert_eq!(policy.rules[1].location.line, 4);
        assert_eq!(policy.rules[2].access, Access::Read);
        assert!(matches!(
            policy.rules[2].paths[0].target,
            Target::Names { .. }
        ));
    }

    #[test]
    fn rule_errors_are_located() {
        let rule = |body: &str| format!("[[rule]]\n{body}\n");
        let (at, message) = invalid_at(&rule(
            "name = \"x\"\naction = \"block\"\npaths = [\"/etc\"]",
        ));
        assert_eq!((at.line, at.column), (3, 10));
        assert_eq!(message, "unknown action `block`");
        let (at, message) = invalid_at(&rule(
            "name = \"Bad Name\"\naction = \"deny\"\npaths = [\"/etc\"]",
        ));
        assert_eq!((at.line, at.column), (2, 8));
        assert!(message.contains("not a valid rule name"), "{message}");
        let (_, message) = invalid_at(&rule(
            "name = \"protected\"\naction = \"deny\"\npaths = [\"/etc\"]",
        ));
        assert!(message.contains("reserved"), "{message}");
        let (_, message) = invalid_at(&rule("name = \"x\"\naction = \"deny\"\npaths = []"));
        assert!(message.contains("has no paths"), "{message}");
        let (at, message) = invalid_at(&rule(
            "name = \"x\"\naction = \"deny\"\naccess = \"write\"\npaths = [\"/etc\"]",
        ));
        assert_eq!(at.line, 4);
        assert_eq!(message, "unknown access `write`");
        let (at, message) = invalid_at("[filesystem]\nread_denied = [\"/srv/*.key\"]\n");
        assert_eq!((at.line, at.column), (2, 16));
        assert!(message.contains("no `/**/`"), "{message}");
        let twice = format!(
            "{}{}",
            rule("name = \"x\"\naction = \"deny\"\npaths = [\"/etc\"]"),
            rule("name = \"x\"\naction = \"deny\"\npaths = [\"/srv\"]")
        );
        let (at, message) = invalid_at(&twice);
        assert_eq!(at.line, 5);
        assert!(
            message.contains("already defined at p.toml:1:1"),
            "{message}"
        );
    }

    #[test]
    fn extends_merges_parent_first_and_the_child_overrides_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            "mode = \"audit\"\n[filesystem]\nwritable = [\"/tmp\"]\nprotected = [\"/tmp/keep\"]\n",
        )
        .unwrap();
        let child = dir.path().join("child.toml");
        std::fs::write(
            &child,
            "extends = \"base.toml\"\nmode = \"enforce\"\n[filesystem]\nwritable = [\"/srv\"]\n[[rule]]\nname = \"audit-etc\"\naction = \"audit\"\npaths = [\"/etc\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&child).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.chain.len(), 2);
        let writable = &policy.rules[0];
        assert_eq!(writable.name, WRITABLE_RULE);
        let texts: Vec<_> = writable.paths.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["/tmp", "/srv"]);
        assert!(writable.paths[0].location.file.ends_with("base.toml"));
        assert_eq!(policy.rules[1].name, PROTECTED_RULE);
        assert_eq!(policy.rules[2].name, "audit-etc");

        let builtin = Policy::parse("p.toml", "extends = \"builtin:default\"\n").unwrap();
        assert_eq!(builtin.chain, [DEFAULT_POLICY_NAME, "p.toml"]);
    }

    #[test]
    fn extends_loops_and_missing_parents_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "extends = \"b.toml\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "\nextends = \"a.toml\"\n").unwrap();
        let err = Policy::load(&a).unwrap_err().to_string();
        assert!(err.contains("b.toml:2:11: `extends` loops"), "{err}");
        std::fs::write(&a, "extends = \"nope.toml\"\n").unwrap();
        let err = Policy::load(&a).unwrap_err().to_string();
        assert!(err.contains("a.toml:1:11: cannot read"), "{err}");
        // A parent's own error names the parent's file.
        std::fs::write(dir.path().join("b.toml"), "mode = \"loud\"\n").unwrap();
        std::fs::write(&a, "extends = \"b.toml\"\n").unwrap();
        let err = Policy::load(&a).unwrap_err().to_string();
        assert!(err.contains("b.toml:1:8: unknown mode"), "{err}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_order() {
        let text = "mode = \"loud\"\n[filesystem]\nwritable = [\"rel\", \"/ok\", \"/a/*.x\"]\n[[rule]]\nname = \"x\"\naction = \"block\"\npaths = [\"/etc\"]\n";
        let err = Policy::parse("p.toml", text).unwrap_err();
        let PolicyError::Several(errors) = &err else {
            panic!("expected several errors, got {err}");
        };
        let at: Vec<_> = errors
            .iter()
            .map(|e| {
                let l = e.location().unwrap();
                (l.line, l.column)
            })
            .collect();
        assert_eq!(at, [(1, 8), (3, 13), (3, 27), (6, 10)]);
        assert_eq!(err.location().unwrap().line, 1);
    }

    #[test]
    fn an_explicitly_empty_writable_list_means_nothing_is_writable() {
        let policy = Policy::parse("p.toml", "[filesystem]\nwritable = []\n").unwrap();
        assert!(policy.rules.is_empty());
    }

    #[test]
    fn error_display_names_file_line_column_and_hint() {
        let err = Policy::parse("policies/x.toml", "mode = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("policies/x.toml:1:8: "), "{text}");
        assert!(text.contains("hint: "), "{text}");
    }

    #[test]
    fn network_rules_parse_into_rules_with_their_match() {
        let text = r#"
[network]
egress = "allow"
[[network.rule]]
name = "git"
action = "allow"
hosts = ["Git.Example.com"]
addresses = ["192.0.2.0/24", "2001:db8::1"]
ports = [443, "8000-8100"]
protocol = "tcp"
[[network.rule]]
name = "no-docker"
action = "deny"
unix = ["/run/docker.sock?", "@agk-name"]
[[network.rule]]
name = "dev-server"
action = "allow"
access = "listen"
addresses = ["0.0.0.0"]
ports = [8080]
"#;
        let policy = Policy::parse("p.toml", text).unwrap();
        assert_eq!(policy.egress, Action::Allow);
        let names: Vec<_> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "writable",
                "git",
                "no-docker",
                "dev-server",
                DNS_RESOLVERS_RULE
            ]
        );
        let git = policy.rules[1].net.as_ref().unwrap();
        assert_eq!(git.hosts, ["git.example.com"]);
        assert_eq!(git.addresses.len(), 2);
        assert_eq!(
            git.ports,
            [
                PortRange { lo: 443, hi: 443 },
                PortRange { lo: 8000, hi: 8100 }
            ]
        );
        assert_eq!(git.protocol, Some(Protocol::Tcp));
        let docker = &policy.rules[2];
        assert_eq!(docker.access, Access::Connect);
        assert_eq!(docker.paths.len(), 1);
        assert!(docker.paths[0].optional);
        assert_eq!(
            docker.net.as_ref().unwrap().abstract_names,
            [b"agk-name".to_vec()]
        );
        assert_eq!(policy.rules[3].access, Access::Listen);
        let dns = policy.rules[4].net.as_ref().unwrap();
        assert!(dns.system_resolvers);
        // Without hosts and with egress closed there is no generated DNS rule.
        let closed = Policy::parse("p.toml", "[network]\negress = \"deny\"\n").unwrap();
        assert_eq!(closed.egress, Action::Deny);
        assert!(closed.rules.iter().all(|r| r.name != DNS_RESOLVERS_RULE));
        assert_eq!(Policy::parse("p.toml", "").unwrap().egress, Action::Deny);
    }

    #[test]
    fn network_rule_errors_are_located_and_all_reported() {
        let text = r#"[network]
egress = "open"
[[network.rule]]
name = "bad"
action = "allow"
addresses = ["192.0.2.1/24", "not-an-address"]
ports = [70000, "9-1"]
protocol = "sctp"
[[network.rule]]
name = "mixed"
action = "deny"
unix = ["/run/docker.sock"]
ports = [1]
[[network.rule]]
name = "listen-hosts"
action = "allow"
access = "listen"
hosts = ["git.example.com"]
[[network.rule]]
name = "nothing"
action = "deny"
"#;
        let err = Policy::parse("p.toml", text).unwrap_err();
        let PolicyError::Several(errors) = &err else {
            panic!("expected several errors, got {err}");
        };
        let at: Vec<(usize, usize)> = errors
            .iter()
            .map(|e| {
                let l = e.location().unwrap();
                (l.line, l.column)
            })
            .collect();
        assert_eq!(
            at,
            [
                (2, 10),
                (6, 14),
                (6, 30),
                (7, 10),
                (7, 17),
                (8, 12),
                (12, 8),
                (18, 9),
                (20, 8)
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("unknown egress default `open`"), "{text}");
        assert!(text.contains("bits set beyond its /24 prefix"), "{text}");
        assert!(text.contains("mixes unix sockets"), "{text}");
        assert!(text.contains("names no destination"), "{text}");
    }

    /// Every file shipped in policies/ parses.
    #[test]
    fn shipped_policies_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 3, "policies/ ships at least three files");
    }
}
