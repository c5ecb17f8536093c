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
//! ```
pub mod compile;
mod error;
mod explain;
mod pattern;
mod raw;
mod resolve;

use std::{
    cell::RefCell,
    ops::Range,
    path::{Path, PathBuf},
};

use agent_guard_common::{
    ACCESS_MODIFY, ACCESS_READ, ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, MAX_NAME_PATTERNS,
    MAX_POLICY_PATHS, MAX_POLICY_RULES,
};

pub use error::{Location, PolicyError};
pub use explain::{explain, ExplainError, Explanation, Op};
pub use pattern::{NameGlob, Target};
pub use resolve::{
    any_minor, kernel_dev, ResolveError, ResolvedObject, ResolvedPattern, ResolvedPolicy,
    RuleSummary, SessionContext,
};

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
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modify => "modify",
            Self::Read => "read",
        }
    }

    /// The kernel side's `ACCESS_*`.
    pub fn code(self) -> u32 {
        match self {
            Self::Modify => ACCESS_MODIFY,
            Self::Read => ACCESS_READ,
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
}

/// One file's contribution, validated.
struct Layer {
    mode: Option<Mode>,
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
        let name = rule.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= MAX_RULE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !name_ok {
            return Err(invalid(
                rule.name.span(),
                format!("`{name}` is not a valid rule name"),
                "use lowercase letters, digits and `-`, up to 48 characters, such as `protect-db`",
            ));
        }
        if [WRITABLE_RULE, PROTECTED_RULE, READ_DENIED_RULE].contains(&name.as_str())
            || BUILTIN_REASONS.contains(&name.as_str())
        {
            return Err(invalid(
                rule.name.span(),
                format!("the rule name `{name}` is reserved"),
                "`writable`, `protected` and `read-denied` name the [filesystem] lists, and the built-in reasons name themselves; pick another name",
            ));
        }
        let action = match rule.action.get_ref().as_str() {
            "deny" => Action::Deny,
            "audit" => Action::Audit,
            "allow" => Action::Allow,
            other => {
                return Err(invalid(
                    rule.action.span(),
                    format!("unknown action `{other}`"),
                    "use `deny` (refuse and report), `audit` (allow and report) or `allow`",
                ))
            }
        };
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
                    "use `modify` (create, change, remove, rename) or `read`",
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
            name: name.clone(),
            action,
            access,
            paths: entries,
            location: at(span),
        })
    };
    for table in raw.rule {
        match named_rule(table) {
            Ok(rule) => rules.push(rule),
            Err(e) => fail(e),
        }
    }
    let errors = errors.into_inner();
    if !errors.is_empty() {
        return Err(PolicyError::several(errors));
    }
    Ok(Layer {
        mode,
        terminals,
        names_writable,
        rules,
        devices,
        extends,
    })
}

/// Applies the layers in order (furthest parent first) and checks the limits.
fn merge(file: &str, chain: Vec<String>, layers: Vec<Layer>) -> Result<Policy, PolicyError> {
    let mut mode = Mode::Enforce;
    let mut terminals = true;
    let mut names_writable = false;
    let mut rules: Vec<Rule> = Vec::new();
    let mut devices = Vec::new();
    for layer in layers {
        mode = layer.mode.unwrap_or(mode);
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
            },
        );
    }
    let limit = |location: &Location, message: String, hint: &str| PolicyError::Invalid {
        location: location.clone(),
        message,
        hint: hint.into(),
    };
    if rules.len() > MAX_POLICY_RULES {
        return Err(limit(
            &rules[MAX_POLICY_RULES].location,
            format!(
                "{} rules; at most {MAX_POLICY_RULES} are supported",
                rules.len()
            ),
            "merge rules that share an action and access into one rule with more paths",
        ));
    }
    let mut paths = 0usize;
    let mut patterns = 0usize;
    for rule in &rules {
        for entry in &rule.paths {
            paths += 1;
            if paths > MAX_POLICY_PATHS {
                return Err(limit(
                    &entry.location,
                    format!("more than {MAX_POLICY_PATHS} paths; the kernel table holds at most {MAX_POLICY_PATHS} per policy"),
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
    })
}

/// A fix suggestion for the TOML layer's messages.
fn hint_for_toml(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; the keys are `version`, `mode`, `extends`, `[filesystem]` (`writable`, `protected`, `read_denied`, `writable_devices`, `terminals`) and `[[rule]]` (`name`, `action`, `access`, `paths`)"
    } else if message.contains("missing field") {
        "a `[[rule]]` needs `name`, `action` and `paths`"
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
        assert!(message.contains("more than 16384 paths"), "{message}");
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
