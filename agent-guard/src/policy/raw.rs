//! The policy file exactly as written: serde types that reject unknown keys and keep each
//! value's span, so that validation errors can point at it.
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub filesystem: Option<RawFilesystem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    pub writable: Option<Vec<Spanned<String>>>,
    pub protected: Option<Vec<Spanned<String>>>,
    pub writable_devices: Option<Vec<Spanned<String>>>,
    pub terminals: Option<Spanned<bool>>,
}
