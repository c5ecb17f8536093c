//! The policy file exactly as written: serde types that reject unknown keys and keep each
//! value's span, so that validation errors can point at it.
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub extends: Option<Spanned<String>>,
    pub filesystem: Option<RawFilesystem>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    pub network: Option<RawNetwork>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    pub writable: Option<Spanned<Vec<Spanned<String>>>>,
    pub protected: Option<Spanned<Vec<Spanned<String>>>>,
    pub read_denied: Option<Spanned<Vec<Spanned<String>>>>,
    pub writable_devices: Option<Vec<Spanned<String>>>,
    pub terminals: Option<Spanned<bool>>,
}

/// One `[[rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub action: Spanned<String>,
    pub access: Option<Spanned<String>>,
    pub paths: Spanned<Vec<Spanned<String>>>,
}

/// The `[network]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub egress: Option<Spanned<String>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawNetRule>>,
}

/// One `[[network.rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetRule {
    pub name: Spanned<String>,
    pub action: Spanned<String>,
    pub access: Option<Spanned<String>>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    /// Numbers or `"LOW-HIGH"` strings.
    pub ports: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub protocol: Option<Spanned<String>>,
    pub unix: Option<Spanned<Vec<Spanned<String>>>>,
}
