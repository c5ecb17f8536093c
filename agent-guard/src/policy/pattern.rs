//! The forms a path entry can take: an object (a file, or a directory and everything below
//! it) or a name pattern anywhere below a tree (`/srv/app/**/*.sqlite`).
use agent_guard_common::MAX_PATTERN_PART;

/// The separator between a pattern's tree and its name.
pub const TREE_SEPARATOR: &str = "/**/";

/// A name to match: exact (`.git`) or `prefix*suffix` (`*.sqlite`, `.env*`, `id_*.pub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGlob {
    pub prefix: String,
    pub suffix: String,
    pub star: bool,
}

impl std::fmt::Display for NameGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.star {
            write!(f, "{}*{}", self.prefix, self.suffix)
        } else {
            f.write_str(&self.prefix)
        }
    }
}

/// What a path entry names, before variables are expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The object at this path (and, for a directory, everything below it).
    Object(String),
    /// Every file or directory strictly below `tree` whose name matches.
    Names { tree: String, name: NameGlob },
}

/// Why an entry's form is wrong: a message and a hint.
pub struct FormError {
    pub message: String,
    pub hint: &'static str,
}

/// Splits an entry into its form. `text` has been checked to be absolute or to start with a
/// variable.
pub fn parse_target(text: &str) -> Result<Target, FormError> {
    let Some(at) = text.find(TREE_SEPARATOR) else {
        if text.contains("**") {
            return Err(FormError {
                message: format!("`{text}` uses `**` outside the form `TREE/**/NAME`"),
                hint: "write a name pattern as `/some/tree/**/*.sqlite`; `**` stands for any depth below the tree",
            });
        }
        if text.contains('*') || text.contains('?') || text.contains('[') {
            return Err(FormError {
                message: format!("`{text}` has a wildcard but no `/**/`"),
                hint: "patterns match names anywhere below a tree: write `/some/tree/**/NAME` (for example `${WORKSPACE}/**/.env*`)",
            });
        }
        return Ok(Target::Object(text.to_owned()));
    };
    let tree = &text[..at];
    let name = &text[at + TREE_SEPARATOR.len()..];
    // `/**/NAME`: anywhere on the machine.
    let tree = if tree.is_empty() { "/" } else { tree };
    if tree.contains('*') || tree.contains('?') || tree.contains('[') {
        return Err(FormError {
            message: format!("the tree of `{text}` has a wildcard"),
            hint: "only the last part (the name) may have a wildcard: `/some/tree/**/*.pem`",
        });
    }
    if name.is_empty() || name.contains('/') {
        return Err(FormError {
            message: format!("`{text}` must end with one name after `/**/`"),
            hint: "a pattern matches a single file or directory name, such as `*.sqlite` or `.git`",
        });
    }
    if name.contains('?') || name.contains('[') || name.contains('\\') {
        return Err(FormError {
            message: format!("`{name}` in `{text}` uses a wildcard other than `*`"),
            hint: "names support one `*` only: `*.pem`, `.env*`, `id_*.pub`",
        });
    }
    let glob = match name.split_once('*') {
        None => NameGlob {
            prefix: name.to_owned(),
            suffix: String::new(),
            star: false,
        },
        Some((prefix, suffix)) => {
            if suffix.contains('*') {
                return Err(FormError {
                    message: format!("`{name}` in `{text}` has more than one `*`"),
                    hint: "names support one `*` only: `*.pem`, `.env*`, `id_*.pub`",
                });
            }
            NameGlob {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
                star: true,
            }
        }
    };
    if glob.star && glob.prefix.is_empty() && glob.suffix.is_empty() {
        return Err(FormError {
            message: format!("`{text}` matches every name"),
            hint: "to cover everything below a tree, write the tree itself without `/**/*`",
        });
    }
    if glob.prefix.len() > MAX_PATTERN_PART || glob.suffix.len() > MAX_PATTERN_PART {
        return Err(FormError {
            message: format!(
                "`{name}` in `{text}` is too long: the text before and after `*` may be at most {MAX_PATTERN_PART} bytes each"
            ),
            hint: "shorten the pattern, or name the file by its full path instead",
        });
    }
    Ok(Target::Names {
        tree: tree.to_owned(),
        name: glob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> (String, String, String, bool) {
        match parse_target(text).unwrap_or_else(|e| panic!("{}", e.message)) {
            Target::Names { tree, name } => (tree, name.prefix, name.suffix, name.star),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse_target("/srv/db").ok(),
            Some(Target::Object("/srv/db".into()))
        );
        assert_eq!(
            names("${WORKSPACE}/**/*.sqlite"),
            ("${WORKSPACE}".into(), String::new(), ".sqlite".into(), true)
        );
        assert_eq!(
            names("~/**/.env*"),
            ("~".into(), ".env".into(), String::new(), true)
        );
        assert_eq!(names("/**/id_rsa").0, "/");
        assert_eq!(
            names("/srv/**/.git"),
            ("/srv".into(), ".git".into(), String::new(), false)
        );
    }

    #[test]
    fn wrong_forms_say_why() {
        for bad in [
            "/srv/*.db",
            "/srv/**",
            "/srv/**/a/b",
            "/srv/**/a*b*c",
            "/srv/**/?.db",
            "/s*/**/x",
            "/srv/**/*",
            "/srv/**/*0123456789012345678901234567890123456789",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} should be refused");
        }
    }
}
