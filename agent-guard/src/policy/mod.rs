//! The policy language (TOML).
//!
//! Parsing happens in two layers: [`raw`] is the file as written, with unknown keys rejected;
//! [`Policy`] is the validated form. [`Policy::resolve`] then expands variables and turns
//! each path into the kernel's identity of the object it names, at session start. Nothing
//! here talks to the kernel: enforcement lives in `crate::bpf` and only sees the resolved
//! form.
//!
//! ```toml
//! version = 1
//! mode = "enforce"            # or "audit": allow, but report what enforce would refuse
//!
//! [filesystem]
//! writable = ["${WORKSPACE}", "/tmp"]
//! protected = ["${WORKSPACE}/.git/hooks"]   # undestroyable even inside a scope
//! writable_devices = ["/dev/null"]
//! terminals = true            # ttys and pseudo-terminals stay writable
//! ```
mod error;
mod raw;
mod resolve;

use std::{ops::Range, path::Path};

pub use error::{Location, PolicyError};
pub use resolve::{ResolveError, ResolvedPolicy, ResolvedScope, SessionContext};

/// The policy built into the binary, used when `--policy` is not given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
/// The name the built-in policy reports in errors and events.
pub const DEFAULT_POLICY_NAME: &str = "<built-in default policy>";

/// The only policy format version so far.
pub const POLICY_VERSION: i64 = 1;

/// Most writable scopes one policy may list; the kernel table is shared by all sessions.
pub const MAX_WRITABLE: usize = 64;

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

/// A path as written in the policy, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPath {
    pub text: String,
    /// Index of the entry in its list, used as the rule number in events.
    pub index: usize,
    pub location: Location,
}

/// A validated policy, before variables are expanded.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File name (or [`DEFAULT_POLICY_NAME`]).
    pub source: String,
    pub mode: Mode,
    /// Directories (or files) the session may modify; everything else is protected.
    pub writable: Vec<PolicyPath>,
    /// Files and directories that stay undestroyable even inside a writable scope.
    /// Protection wins over writability.
    pub protected: Vec<PolicyPath>,
    /// Character devices the session may open for writing.
    pub writable_devices: Vec<PolicyPath>,
    /// Whether terminals and pseudo-terminals stay writable.
    pub terminals: bool,
}

impl Policy {
    /// The built-in default policy.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY).expect("the built-in policy is valid")
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Validates policy `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
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

        if let Some(version) = &raw.version {
            if *version.get_ref() != POLICY_VERSION {
                return Err(invalid(
                    version.span(),
                    format!("unsupported policy version {}", version.get_ref()),
                    "this agent-guard reads `version = 1`",
                ));
            }
        }
        let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("enforce", _)) => Mode::Enforce,
            Some(("audit", _)) => Mode::Audit,
            Some((other, span)) => {
                return Err(invalid(
                    span,
                    format!("unknown mode `{other}`"),
                    "use `mode = \"enforce\"` to refuse operations or `mode = \"audit\"` to only report them",
                ))
            }
        };
        let fs = raw.filesystem;
        let paths = |list: Option<Vec<toml::Spanned<String>>>,
                     key: &str|
         -> Result<Vec<PolicyPath>, PolicyError> {
            let list = list.unwrap_or_default();
            let mut out = Vec::with_capacity(list.len());
            for (index, entry) in list.into_iter().enumerate() {
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
                out.push(PolicyPath {
                    text: text_value,
                    index,
                    location: Location::at(file, text, span.start),
                });
            }
            Ok(out)
        };
        let (writable, protected, devices, terminals) = match fs {
            Some(fs) => {
                for (key, list) in [("writable", &fs.writable), ("protected", &fs.protected)] {
                    if let Some(list) = list {
                        if list.len() > MAX_WRITABLE {
                            return Err(invalid(
                                list[MAX_WRITABLE].span(),
                                format!(
                                    "{} {key} paths; at most {MAX_WRITABLE} are supported",
                                    list.len()
                                ),
                                "list parent directories instead of many siblings",
                            ));
                        }
                    }
                }
                (
                    paths(fs.writable, "writable")?,
                    paths(fs.protected, "protected")?,
                    paths(fs.writable_devices, "writable_devices")?,
                    fs.terminals.is_none_or(|t| *t.get_ref()),
                )
            }
            None => (Vec::new(), Vec::new(), Vec::new(), true),
        };
        let writable = if writable.is_empty() {
            // No scope given: the session may modify its workspace only.
            vec![PolicyPath {
                text: "${WORKSPACE}".into(),
                index: 0,
                location: Location::at(file, text, 0),
            }]
        } else {
            writable
        };
        Ok(Self {
            source: file.to_owned(),
            mode,
            writable,
            protected,
            writable_devices: devices,
            terminals,
        })
    }
}

/// A fix suggestion for the TOML layer's messages.
fn hint_for_toml(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; the keys are `version`, `mode` and `[filesystem]` with `writable`, `protected`, `writable_devices` and `terminals`"
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
        assert_eq!(policy.writable[0].text, "${WORKSPACE}");
    }

    #[test]
    fn empty_policy_defaults_to_workspace_and_enforce() {
        let policy = Policy::parse("p.toml", "").unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.writable.len(), 1);
        assert_eq!(policy.writable[0].text, "${WORKSPACE}");
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
        assert_eq!(policy.protected[0].text, "${WORKSPACE}/.git/hooks");
        let (at, message) = invalid_at("[filesystem]\nprotected = [\"db.sqlite\"]\n");
        assert_eq!((at.line, at.column), (2, 14));
        assert!(
            message.contains("in `protected` is not an absolute path"),
            "{message}"
        );
    }

    #[test]
    fn too_many_scopes_is_an_error_not_a_truncation() {
        let list: Vec<String> = (0..=MAX_WRITABLE).map(|i| format!("\"/s{i}\"")).collect();
        let (_, message) = invalid_at(&format!("[filesystem]\nwritable = [{}]\n", list.join(", ")));
        assert!(message.contains("at most 64"), "{message}");
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
        assert!(seen >= 2, "policies/ ships at least two files");
    }
}
