//! The daemon's configuration (`/etc/agent-guard/config.toml`) and the policies it serves:
//! the mandatory base policy and the named policies sessions may pick.
//!
//! Everything is validated before any of it is used: a reload that finds one bad file
//! keeps the whole previous set in force.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    paths,
    policy::{Location, Policy, PolicyError},
    report::rotating_file::Rotation,
    sinks::{parse_sinks, SinkConfig, SinkKind},
};

use super::kept_paths::{self, Kept};

/// The audit log rotates at 100 MiB by default and keeps ten rotated files: about a GiB,
/// some millions of events.
const DEFAULT_EVENTS_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_EVENTS_KEEP: u32 = 10;

/// config.toml as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    group: Option<String>,
    pin_dir: Option<toml::Spanned<PathBuf>>,
    state_dir: Option<toml::Spanned<PathBuf>>,
    events: Option<toml::Spanned<PathBuf>>,
    events_max_bytes: Option<u64>,
    events_keep: Option<u32>,
    journal: Option<toml::Spanned<PathBuf>>,
    spool_dir: Option<toml::Spanned<PathBuf>>,
    metrics: Option<toml::Spanned<String>>,
    base_policy: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    /// `[[sink]]` tables, validated by [`parse_sinks`] so errors can name the sink.
    #[serde(default)]
    sink: Vec<toml::Spanned<toml::Table>>,
}

/// The daemon's settings, with defaults applied and relative paths made absolute against
/// the configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (it need not exist: then every default applies).
    pub file: PathBuf,
    pub socket: PathBuf,
    /// Group allowed to use the socket.
    pub group: String,
    pub pin_dir: PathBuf,
    /// Records of running sessions, read back by a restarted daemon.
    pub state_dir: PathBuf,
    /// The audit log: JSON lines, hash-chained, rotated by size.
    pub events: PathBuf,
    pub events_rotation: Rotation,
    /// Where the sequence numbers are reserved, so they never run backwards.
    pub journal: PathBuf,
    /// The webhook sinks' spools: what a receiver has not acknowledged yet.
    pub spool_dir: PathBuf,
    /// Where Prometheus may scrape `/metrics`; `None`: no listener.
    pub metrics: Option<SocketAddr>,
    /// The mandatory base policy; a missing file means there is none.
    pub base_policy: PathBuf,
    /// Named policies: `<name>.toml`, picked with `run --policy-name NAME`.
    pub policy_dir: PathBuf,
    /// Where events go besides the event log.
    pub sinks: Vec<SinkConfig>,
}

/// Who reads config.toml. The daemon insists on [`kept_paths`]; readers of its log take the
/// paths as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Daemon,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{location}: {message}\n  hint: {hint}")]
    Invalid {
        location: Location,
        message: String,
        hint: String,
    },
}

impl Config {
    /// Reads `file` for the daemon to serve with: as [`Config::load`], and the record and
    /// the pins must lie where no session may modify them (see [`kept_paths`]).
    pub fn load_for_daemon(file: &Path) -> Result<Self, ConfigError> {
        let text = Self::read(file)?;
        Self::parse_with(file, &text, Reader::Daemon)
    }

    /// Reads `file` to find what the daemon uses (its log, say); a missing file gives the
    /// defaults.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = Self::read(file)?;
        Self::parse(file, &text)
    }

    fn read(file: &Path) -> Result<String, ConfigError> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ConfigError::Read(file.to_owned(), e)),
        };
        Ok(text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, Reader::Other)
    }

    pub fn parse_for_daemon(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, Reader::Daemon)
    }

    fn parse_with(file: &Path, text: &str, reader: Reader) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            location: Location::at(
                &file.display().to_string(),
                text,
                e.span().map_or(0, |s| s.start),
            ),
            message: e.message().to_owned(),
            hint: "the keys are `socket`, `group`, `pin_dir`, `state_dir`, `events`, `events_max_bytes`, `events_keep`, `journal`, `spool_dir`, `metrics`, `base_policy`, `policy_dir` and `[[sink]]` tables; see dist/config.toml".into(),
        })?;
        let tables: Vec<toml::Table> = raw.sink.iter().map(|t| t.get_ref().clone()).collect();
        let sinks = parse_sinks(&tables).map_err(|e| ConfigError::Invalid {
            location: Location::at(
                &file.display().to_string(),
                text,
                raw.sink[e.index - 1].span().start,
            ),
            message: e.to_string(),
            hint: e.hint,
        })?;
        let located = |offset: usize, message: String, hint: String| ConfigError::Invalid {
            location: Location::at(&file.display().to_string(), text, offset),
            message,
            hint,
        };
        let metrics = match &raw.metrics {
            None => None,
            Some(addr) => Some(addr.get_ref().parse::<SocketAddr>().map_err(|_| {
                located(
                    addr.span().start,
                    format!("`metrics = {:?}` is not an address and port", addr.get_ref()),
                    "write an IP address and a port, like `metrics = \"127.0.0.1:9464\"`; leave the key out for no metrics listener".into(),
                )
            })?),
        };
        let dir = file.parent().unwrap_or(Path::new("/"));
        let at = |p: Option<PathBuf>, default: &str| match p {
            Some(p) if p.is_relative() => dir.join(p),
            Some(p) => p,
            None => PathBuf::from(default),
        };
        // A path of the record or of the pins, kept where no session may modify it.
        let kept = |key: &str, value: Option<toml::Spanned<PathBuf>>, default: &str, kept| {
            let offset = value.as_ref().map_or(0, |v| v.span().start);
            let path = at(value.map(toml::Spanned::into_inner), default);
            match kept_paths::misplaced(&format!("`{key}`"), &path, kept, default) {
                Some((message, hint)) if reader == Reader::Daemon => {
                    Err(located(offset, message, hint))
                }
                _ => Ok(path),
            }
        };
        for (index, sink) in sinks.iter().enumerate() {
            let SinkKind::File { path, .. } = &sink.kind else {
                continue;
            };
            let what = format!("[[sink]] #{} ({:?}): `path`", index + 1, sink.name);
            let example = format!("{}/{}.jsonl", paths::LOG_DIR, sink.name);
            match kept_paths::misplaced(&what, path, Kept::Record, &example) {
                Some((message, hint)) if reader == Reader::Daemon => {
                    return Err(located(raw.sink[index].span().start, message, hint));
                }
                _ => {}
            }
        }
        Ok(Self {
            file: file.to_owned(),
            socket: at(raw.socket, paths::SOCKET),
            group: raw.group.unwrap_or_else(|| paths::GROUP.into()),
            pin_dir: kept("pin_dir", raw.pin_dir, paths::PIN_DIR, Kept::Pins)?,
            state_dir: kept("state_dir", raw.state_dir, paths::RUN_DIR, Kept::Record)?,
            events: kept(
                "events",
                raw.events,
                &format!("{}/events.jsonl", paths::LOG_DIR),
                Kept::Record,
            )?,
            events_rotation: Rotation {
                max_bytes: raw.events_max_bytes.unwrap_or(DEFAULT_EVENTS_MAX_BYTES),
                keep: raw.events_keep.unwrap_or(DEFAULT_EVENTS_KEEP),
            },
            journal: kept(
                "journal",
                raw.journal,
                crate::audit::journal::DEFAULT_STATE_FILE,
                Kept::Record,
            )?,
            spool_dir: kept("spool_dir", raw.spool_dir, paths::SPOOL_DIR, Kept::Record)?,
            metrics,
            base_policy: at(raw.base_policy, &format!("{}/base.toml", paths::CONFIG_DIR)),
            policy_dir: at(raw.policy_dir, &format!("{}/policies", paths::CONFIG_DIR)),
            sinks,
        })
    }
}

/// The policies the daemon serves, all validated.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// The mandatory base policy, combined with every session's own.
    pub base: Option<Policy>,
    /// Named policies by name (file stem).
    pub named: BTreeMap<String, Policy>,
}

impl PolicySet {
    /// Reads and validates the base policy and every `*.toml` in the policy directory.
    /// Every problem is reported, not only the first.
    pub fn load(config: &Config) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let base = if config.base_policy.exists() {
            match Policy::load(&config.base_policy) {
                Ok(policy) => Some(policy),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        } else {
            None
        };
        let mut named = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&config.policy_dir) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            for file in files {
                let Some(name) = file.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                match Policy::load(&file) {
                    Ok(policy) => {
                        named.insert(name.to_owned(), policy);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { base, named })
        } else {
            Err(errors)
        }
    }

    /// What `status` shows of the set.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "base": self.base.as_ref().map(|b| b.source.clone()),
            "named": self.named.keys().collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let config = Config::parse(Path::new("/etc/agent-guard/config.toml"), "").unwrap();
        assert_eq!(config.socket, Path::new(paths::SOCKET));
        assert_eq!(config.base_policy, Path::new("/etc/agent-guard/base.toml"));
        let config = Config::parse(
            Path::new("/srv/ag/config.toml"),
            "base_policy = \"b.toml\"\nsocket = \"/tmp/s.sock\"\n",
        )
        .unwrap();
        assert_eq!(config.base_policy, Path::new("/srv/ag/b.toml"));
        assert_eq!(config.socket, Path::new("/tmp/s.sock"));
    }

    #[test]
    fn unknown_keys_are_located() {
        let err = Config::parse(Path::new("/c.toml"), "\nsokcet = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/c.toml:2:1: unknown field `sokcet`"),
            "{err}"
        );
        assert!(err.contains("hint:"), "{err}");
    }

    #[test]
    fn sinks_are_read_and_their_errors_located() {
        let text = "events = \"/var/log/agent-guard/x.jsonl\"\n\n[[sink]]\ntype = \"stdout\"\n\n[[sink]]\ntype = \"webhook\"\nname = \"siem\"\nurl = \"https://127.0.0.1/\"\n";
        let err = Config::parse(Path::new("/c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/c.toml:6:1: [[sink]] #2 (\"siem\"): `url`"),
            "{err}"
        );
        assert!(err.contains("hint: write it as"), "{err}");
        let text = text.replace("https", "http");
        let config = Config::parse(Path::new("/c.toml"), &text).unwrap();
        let names: Vec<_> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stdout", "siem"]);
    }

    #[test]
    fn the_record_and_the_pins_stay_where_sessions_cannot_reach() {
        let fine = "events = \"/var/log/agent-guard/ci/events.jsonl\"\njournal = \"/var/lib/agent-guard/j\"\nspool_dir = \"/var/lib/agent-guard/s\"\nstate_dir = \"/run/agent-guard/t\"\npin_dir = \"/sys/fs/bpf/ag\"\n\n[[sink]]\ntype = \"file\"\nname = \"copy\"\npath = \"/var/log/agent-guard/copy.jsonl\"\n";
        Config::parse_for_daemon(Path::new("/c.toml"), fine).unwrap();
        for (key, bad, line) in [
            ("events", "/srv/audit/events.jsonl", 1),
            ("events", "/var/log/agent-guard/../events.jsonl", 1),
            ("journal", "/tmp/journal", 2),
            ("spool_dir", "spool", 3),
            ("state_dir", "/home/agent/state", 4),
            ("pin_dir", "/run/agent-guard/pins", 5),
        ] {
            let text = fine
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key} =")) {
                        format!("{key} = \"{bad}\"")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let err = Config::parse_for_daemon(Path::new("/c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("/c.toml:{line}:")), "{key}: {err}");
            assert!(err.contains(&format!("`{key}` is `")), "{key}: {err}");
            assert!(err.contains("no session may modify"), "{key}: {err}");
            assert!(err.contains("hint: keep it under"), "{key}: {err}");
        }
        let text = fine.replace("/var/log/agent-guard/copy.jsonl", "/data/siem/copy.jsonl");
        let err = Config::parse_for_daemon(Path::new("/c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/c.toml:7:1: [[sink]] #1 (\"copy\"): `path` is `/data/siem/copy.jsonl`"
            ),
            "{err}"
        );
        assert!(err.contains("/var/log/agent-guard/copy.jsonl"), "{err}");
        // Readers of the log take the file as it is.
        Config::parse(Path::new("/c.toml"), &text).unwrap();
    }

    #[test]
    fn one_bad_policy_fails_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/good.toml"), "version = 1\n").unwrap();
        let config_file = dir.path().join("config.toml");
        let config = Config::parse(&config_file, "").unwrap();
        let config = Config {
            policy_dir: dir.path().join("policies"),
            base_policy: dir.path().join("base.toml"),
            ..config
        };
        let set = PolicySet::load(&config).unwrap();
        assert!(set.base.is_none());
        assert!(set.named.contains_key("good"));
        std::fs::write(dir.path().join("base.toml"), "mode = \"enforce\"\n").unwrap();
        std::fs::write(
            dir.path().join("policies/bad.toml"),
            "mode = \"sometimes\"\n",
        )
        .unwrap();
        let errors = PolicySet::load(&config).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("bad.toml:1:8"),
            "{}",
            errors[0]
        );
    }
}
