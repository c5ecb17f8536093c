//! Policy errors that say where the problem is (file:line:column) and how to fix it.
use std::{fmt, ops::Range};

/// A place in a policy source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The 1-based line and column of byte `offset` in `text`.
    pub fn at(file: &str, text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            file: file.to_owned(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Everything that can be wrong with a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}\n  hint: {hint}")]
    Invalid {
        location: Location,
        message: String,
        hint: String,
    },
    /// More than one problem in one file, in the order they appear.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<PolicyError>),
}

impl PolicyError {
    pub fn invalid(
        file: &str,
        text: &str,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            location: Location::at(file, text, span.start),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// One error as itself, several as [`PolicyError::Several`].
    pub fn several(mut errors: Vec<PolicyError>) -> Self {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            Self::Several(errors)
        }
    }

    /// Where the (first) problem is, when it is inside the policy text.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Invalid { location, .. } => Some(location),
            Self::Several(errors) => errors.first().and_then(Self::location),
            Self::Read { .. } => None,
        }
    }
}
