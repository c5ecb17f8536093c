//! The `[[sink]]` tables of the daemon's config.toml: a raw serde layer that refuses unknown
//! keys, then validation into [`SinkConfig`], with errors that name the sink and say how
//! to fix it.
use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{syslog::Facility, webhook::url::HttpUrl};
use crate::report::rotating_file::Rotation;

/// Lines a sink may hold in memory before it drops them (per sink). Lines are shared, so
/// this costs a pointer each beyond the events that are still queued somewhere.
pub const DEFAULT_QUEUE_MAX: usize = 10_000;

/// One `[[sink]]` table as written; `type` picks the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawSink {
    Stdout {
        name: Option<String>,
        queue_max: Option<usize>,
    },
    File {
        name: Option<String>,
        queue_max: Option<usize>,
        path: PathBuf,
        #[serde(default = "default_file_max_bytes")]
        max_bytes: u64,
        #[serde(default = "default_keep")]
        keep: u32,
    },
    Syslog {
        name: Option<String>,
        queue_max: Option<usize>,
        address: String,
        #[serde(default)]
        facility: Facility,
    },
    Webhook {
        name: Option<String>,
        queue_max: Option<usize>,
        url: String,
        #[serde(default = "default_batch_max")]
        batch_max: usize,
        #[serde(default = "default_batch_wait_ms")]
        batch_wait_ms: u64,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_spool_max_bytes")]
        spool_max_bytes: u64,
    },
}

fn default_file_max_bytes() -> u64 {
    100 << 20
}
fn default_keep() -> u32 {
    5
}
fn default_batch_max() -> usize {
    500
}
fn default_batch_wait_ms() -> u64 {
    200
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_spool_max_bytes() -> u64 {
    64 << 20
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique among the sinks; also the name of the webhook's spool directory.
    pub name: String,
    /// Lines held in memory before this sink drops them.
    pub queue_max: usize,
    pub kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Stdout,
    File {
        path: PathBuf,
        rotation: Rotation,
    },
    Syslog {
        address: SyslogAddress,
        facility: Facility,
    },
    Webhook(WebhookConfig),
}

impl SinkKind {
    /// The `type` it was configured with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File { .. } => "file",
            Self::Syslog { .. } => "syslog",
            Self::Webhook(_) => "webhook",
        }
    }
}

/// Where a syslog sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// A local datagram socket such as `/dev/log`.
    Unix(PathBuf),
    /// `host:port` of a TCP listener (octet-counting framing).
    Tcp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: HttpUrl,
    /// Events per POST at most.
    pub batch_max: usize,
    /// How long a batch may wait to fill once it holds one event.
    pub batch_wait: Duration,
    /// Bound of one POST, from connecting to reading the status line.
    pub timeout: Duration,
    /// The spool's bound: past it the oldest segment is dropped.
    pub spool_max_bytes: u64,
}

/// What is wrong with one `[[sink]]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[sink]] #{index}{}: {message}", describe_name(.name))]
pub struct SinkConfigError {
    /// 1-based position among the `[[sink]]` tables.
    pub index: usize,
    /// Its name, as written or defaulted, when it has one.
    pub name: Option<String>,
    pub message: String,
    pub hint: String,
}

fn describe_name(name: &Option<String>) -> String {
    name.as_ref()
        .map(|n| format!(" (\"{n}\")"))
        .unwrap_or_default()
}

const TYPES_HINT: &str = "`type` is one of \"stdout\", \"file\", \"syslog\", \"webhook\"; \
see dist/config.toml for the keys each takes";

/// Validates the `[[sink]]` tables, in order. The first problem is reported.
pub fn parse_sinks(tables: &[toml::Table]) -> Result<Vec<SinkConfig>, SinkConfigError> {
    let mut raw = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let written_name = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let sink = RawSink::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            SinkConfigError {
                index: i + 1,
                name: written_name.clone(),
                message: e.message().trim_end().to_owned(),
                hint: TYPES_HINT.into(),
            }
        })?;
        raw.push(sink);
    }
    let names = names(&raw);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sinks = Vec::with_capacity(raw.len());
    for (i, (sink, name)) in raw.into_iter().zip(&names).enumerate() {
        let fail = |message: String, hint: &str| SinkConfigError {
            index: i + 1,
            name: Some(name.clone()),
            message,
            hint: hint.into(),
        };
        check_name(name).map_err(|m| {
            fail(
                m,
                "use letters, digits, `.`, `_` and `-` (it names the sink's spool directory)",
            )
        })?;
        if let Some(first) = seen.insert(name, i + 1) {
            return Err(fail(
                format!("the name is already taken by [[sink]] #{first}"),
                "give each sink its own `name = \"...\"`",
            ));
        }
        sinks.push(validate(sink, name.clone()).map_err(|(m, h)| fail(m, h))?);
    }
    Ok(sinks)
}

/// Each sink's name: as written, or its type, followed by its position when more than one
/// sink of that type is unnamed.
fn names(raw: &[RawSink]) -> Vec<String> {
    let unnamed_of = |t: &str| {
        raw.iter()
            .filter(|s| s.name().is_none() && s.type_name() == t)
            .count()
    };
    raw.iter()
        .enumerate()
        .map(|(i, s)| match s.name() {
            Some(name) => name.to_owned(),
            None if unnamed_of(s.type_name()) > 1 => format!("{}-{}", s.type_name(), i + 1),
            None => s.type_name().to_owned(),
        })
        .collect()
}

fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(fine) {
        return Err(format!("the name {name:?} cannot name a directory"));
    }
    Ok(())
}

impl RawSink {
    fn name(&self) -> Option<&str> {
        match self {
            Self::Stdout { name, .. }
            | Self::File { name, .. }
            | Self::Syslog { name, .. }
            | Self::Webhook { name, .. } => name.as_deref(),
        }
    }

    fn queue_max(&self) -> Option<usize> {
        match self {
            Self::Stdout { queue_max, .. }
            | Self::File { queue_max, .. }
            | Self::Syslog { queue_max, .. }
            | Self::Webhook { queue_max, .. } => *queue_max,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Stdout { .. } => "stdout",
            Self::File { .. } => "file",
            Self::Syslog { .. } => "syslog",
            Self::Webhook { .. } => "webhook",
        }
    }
}

type Invalid = (String, &'static str);

fn validate(raw: RawSink, name: String) -> Result<SinkConfig, Invalid> {
    let queue_max = raw.queue_max().unwrap_or(DEFAULT_QUEUE_MAX);
    if queue_max == 0 {
        return Err((
            "`queue_max` is 0".into(),
            "leave it out (10000) or give a positive number",
        ));
    }
    let kind = match raw {
        RawSink::Stdout { .. } => SinkKind::Stdout,
        RawSink::File {
            path,
            max_bytes,
            keep,
            ..
        } => {
            if path.as_os_str().is_empty() || path.is_relative() {
                return Err((
                    format!("`path` {path:?} is not an absolute file name"),
                    "write the file's absolute path, e.g. \"/var/log/agent-guard/extra.jsonl\"",
                ));
            }
            SinkKind::File {
                path,
                rotation: Rotation { max_bytes, keep },
            }
        }
        RawSink::Syslog {
            address, facility, ..
        } => SinkKind::Syslog {
            address: syslog_address(&address)?,
            facility,
        },
        RawSink::Webhook {
            url,
            batch_max,
            batch_wait_ms,
            timeout_ms,
            spool_max_bytes,
            ..
        } => {
            let url = HttpUrl::parse(&url).map_err(|e| {
                (
                    format!("`url` {url:?}: {e}"),
                    "write it as \"http://HOST[:PORT]/PATH\" with an IP address or a name that \
                     resolves (no TLS: put a local relay in front of an https receiver)",
                )
            })?;
            if batch_max == 0 {
                return Err((
                    "`batch_max` is 0".into(),
                    "give the number of events per POST, at least 1 (default 500)",
                ));
            }
            if timeout_ms == 0 {
                return Err((
                    "`timeout_ms` is 0".into(),
                    "give how long one POST may take, in milliseconds (default 5000)",
                ));
            }
            if spool_max_bytes < 4096 {
                return Err((
                    format!("`spool_max_bytes` {spool_max_bytes} is below 4096"),
                    "give the spool's bound in bytes, at least 4096 (default 67108864)",
                ));
            }
            SinkKind::Webhook(WebhookConfig {
                url,
                batch_max,
                batch_wait: Duration::from_millis(batch_wait_ms),
                timeout: Duration::from_millis(timeout_ms),
                spool_max_bytes,
            })
        }
    };
    Ok(SinkConfig {
        name,
        queue_max,
        kind,
    })
}

fn syslog_address(address: &str) -> Result<SyslogAddress, Invalid> {
    const HINT: &str =
        "write a unix datagram socket's absolute path (\"/dev/log\") or \"tcp://HOST:PORT\"";
    if let Some(rest) = address.strip_prefix("tcp://") {
        let port_ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok || rest.contains('/') {
            return Err((format!("`address` {address:?} has no HOST:PORT"), HINT));
        }
        return Ok(SyslogAddress::Tcp(rest.to_owned()));
    }
    if address.starts_with('/') {
        return Ok(SyslogAddress::Unix(PathBuf::from(address)));
    }
    Err((
        format!("`address` {address:?} is neither a path nor tcp://"),
        HINT,
    ))
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<SinkConfig>, SinkConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            sink: Vec<toml::Table>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        parse_sinks(&doc.sink)
    }

    fn error(text: &str) -> SinkConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn every_type_with_its_defaults() {
        let sinks = parse(
            r#"
            [[sink]]
            type = "stdout"
            [[sink]]
            type = "file"
            path = "/var/log/agent-guard/extra.jsonl"
            [[sink]]
            type = "syslog"
            address = "/dev/log"
            [[sink]]
            type = "syslog"
            address = "tcp://127.0.0.1:514"
            facility = "local3"
            [[sink]]
            type = "webhook"
            name = "siem"
            url = "http://127.0.0.1:8080/events"
            "#,
        )
        .unwrap();
        let names: Vec<_> = sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stdout", "file", "syslog-3", "syslog-4", "siem"]);
        assert_eq!(
            sinks[1].kind,
            SinkKind::File {
                path: "/var/log/agent-guard/extra.jsonl".into(),
                rotation: Rotation {
                    max_bytes: 104_857_600,
                    keep: 5
                }
            }
        );
        assert_eq!(
            sinks[3].kind,
            SinkKind::Syslog {
                address: SyslogAddress::Tcp("127.0.0.1:514".into()),
                facility: Facility::Local3,
            }
        );
        let SinkKind::Webhook(hook) = &sinks[4].kind else {
            panic!("{:?}", sinks[4])
        };
        assert_eq!(hook.batch_max, 500);
        assert_eq!(hook.batch_wait, Duration::from_millis(200));
        assert_eq!(hook.timeout, Duration::from_secs(5));
        assert_eq!(hook.spool_max_bytes, 64 << 20);
        assert_eq!(hook.url.path, "/events");
        assert!(sinks.iter().all(|s| s.queue_max == DEFAULT_QUEUE_MAX));
    }

    #[test]
    fn unknown_keys_name_the_sink() {
        let err = error(
            "[[sink]]\ntype = \"stdout\"\n[[sink]]\ntype = \"file\"\nname = \"extra\"\npath = \"/x\"\nmax_byte = 3\n",
        );
        assert_eq!((err.index, err.name.as_deref()), (2, Some("extra")));
        assert!(err.message.contains("unknown field `max_byte`"), "{err}");
        assert!(
            err.to_string().starts_with("[[sink]] #2 (\"extra\"): "),
            "{err}"
        );
    }

    #[test]
    fn unknown_type() {
        let err = error("[[sink]]\ntype = \"kafka\"\n");
        assert_eq!(err.index, 1);
        assert!(err.message.contains("unknown variant `kafka`"), "{err}");
        assert!(err.hint.contains("\"webhook\""), "{}", err.hint);
    }

    #[test]
    fn bad_urls() {
        for (url, why) in [
            ("https://127.0.0.1/x", "https"),
            ("ftp://127.0.0.1/x", "http://"),
            ("http:///x", "no host"),
            ("http://127.0.0.1:http/x", "port"),
            ("http://user@127.0.0.1/x", "user"),
            ("http://[::1/x", "bracket"),
        ] {
            let err = error(&format!("[[sink]]\ntype = \"webhook\"\nurl = \"{url}\"\n"));
            assert_eq!(err.name.as_deref(), Some("webhook"));
            assert!(err.message.contains(why), "{url}: {err}");
            assert!(err.hint.contains("http://HOST"), "{}", err.hint);
        }
    }

    #[test]
    fn zero_batch_and_small_spool() {
        let err =
            error("[[sink]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1/\"\nbatch_max = 0\n");
        assert!(err.message.contains("`batch_max` is 0"), "{err}");
        let err = error(
            "[[sink]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1/\"\nspool_max_bytes = 10\n",
        );
        assert!(err.message.contains("spool_max_bytes"), "{err}");
    }

    #[test]
    fn duplicate_names_name_both() {
        let err = error(
            "[[sink]]\ntype = \"stdout\"\n[[sink]]\ntype = \"file\"\nname = \"stdout\"\npath = \"/x\"\n",
        );
        assert_eq!((err.index, err.name.as_deref()), (2, Some("stdout")));
        assert!(err.message.contains("taken by [[sink]] #1"), "{err}");
        assert!(err.hint.contains("name"), "{}", err.hint);
    }

    #[test]
    fn names_that_cannot_be_directories() {
        let err = error("[[sink]]\ntype = \"stdout\"\nname = \"../up\"\n");
        assert!(err.message.contains("cannot name a directory"), "{err}");
    }

    #[test]
    fn syslog_addresses() {
        let err = error("[[sink]]\ntype = \"syslog\"\naddress = \"udp://127.0.0.1:514\"\n");
        assert!(err.message.contains("neither a path nor tcp://"), "{err}");
        let err = error("[[sink]]\ntype = \"syslog\"\naddress = \"tcp://127.0.0.1\"\n");
        assert!(err.message.contains("no HOST:PORT"), "{err}");
        let err =
            error("[[sink]]\ntype = \"syslog\"\naddress = \"/dev/log\"\nfacility = \"kern2\"\n");
        assert!(err.message.contains("unknown variant `kern2`"), "{err}");
    }

    #[test]
    fn relative_file_path() {
        let err = error("[[sink]]\ntype = \"file\"\npath = \"extra.jsonl\"\n");
        assert!(err.message.contains("not an absolute"), "{err}");
    }
}
