//! The control socket's protocol: one JSON object per line each way.
//!
//! A client sends one request and reads one response; `events` with `follow` keeps
//! sending records (one per line) until the client hangs up. Anything that is not a
//! well-formed request, or a line longer than [`MAX_MESSAGE`], gets an [`Response`] with
//! `ok: false` and an error that says what was wrong, and the connection is closed; the
//! daemon keeps serving everyone else.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Longest request line, policy text included.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// A policy as the client read it: the file's name (for locations in errors and events)
/// and its text. The daemon parses it; `extends` is read with the client's permissions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    pub name: String,
    pub text: String,
}

/// What a client asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Start a session whose first process is `pid`, the client's child, waiting before
    /// its exec. The daemon enrols it; the client then lets it exec and sends `started`.
    Run {
        pid: u32,
        /// `${WORKSPACE}` of the session.
        cwd: PathBuf,
        command: Vec<String>,
        /// A policy file's text, or `None` for the daemon's default policy.
        policy: Option<PolicyText>,
        /// A named policy from the daemon's policy directory instead of `policy`.
        #[serde(default)]
        policy_name: Option<String>,
    },
    /// The session's first process has exec'd (or failed to): did the kernel enrol it?
    Started { session: String, pid: u32 },
    /// Guard a running process tree or cgroup (root only).
    Attach {
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        cgroup: Option<PathBuf>,
        policy: Option<PolicyText>,
        #[serde(default)]
        policy_name: Option<String>,
        /// `${WORKSPACE}` of the session.
        cwd: PathBuf,
        /// What `sessions` shows as the root command.
        label: String,
    },
    /// The running sessions.
    Sessions,
    /// The daemon's health.
    Status,
    /// Recent events and, with `follow`, those that come.
    Events {
        #[serde(default)]
        session: Option<String>,
        #[serde(default)]
        follow: bool,
    },
    /// Re-read the policies (root only), as on SIGHUP; config.toml is read at start only.
    Reload,
}

/// The answer to a request. `ok: false` comes with `error` and usually a `hint`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The session a `run` or `attach` created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Further fields of the answer (`sessions`, `status`, `attach`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    pub fn error(error: impl Into<String>, hint: impl Into<String>) -> Self {
        let hint = hint.into();
        Self {
            ok: false,
            error: Some(error.into()),
            hint: (!hint.is_empty()).then_some(hint),
            ..Self::default()
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the connection closed before a complete message")]
    Closed,
    #[error("the message is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("the message is not valid UTF-8")]
    NotUtf8,
    #[error("the message is not a valid request: {0}")]
    Invalid(String),
    #[error("reading the message")]
    Io(#[from] std::io::Error),
}

/// Reads one line of at most [`MAX_MESSAGE`] bytes, without its newline.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<String, MessageError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(MessageError::Closed);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_MESSAGE + 1 {
            return Err(MessageError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            line.pop();
            return String::from_utf8(line).map_err(|_| MessageError::NotUtf8);
        }
    }
}

/// Reads and parses one request.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Request, MessageError> {
    parse_request(&read_line(reader).await?)
}

/// Parses one request. A key the request does not have is an error, not ignored: serde
/// ignores extra keys beside the tag of a variant without fields, so they are compared
/// with the keys the parsed request has (every field is written, `None` as null).
pub fn parse_request(line: &str) -> Result<Request, MessageError> {
    let invalid = |e: serde_json::Error| MessageError::Invalid(e.to_string());
    let value: serde_json::Value = serde_json::from_str(line).map_err(invalid)?;
    let request: Request = serde_json::from_value(value.clone()).map_err(invalid)?;
    let known = serde_json::to_value(&request).map_err(invalid)?;
    if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
        if let Some(extra) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(MessageError::Invalid(format!("unknown field `{extra}`")));
        }
    }
    Ok(request)
}

/// Writes one value as a line.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Request, MessageError> {
        let mut reader = tokio::io::BufReader::new(bytes);
        read_request(&mut reader).await
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn requests_round_trip() {
        let request = Request::Run {
            pid: 42,
            cwd: "/srv/ws".into(),
            command: vec!["claude".into()],
            policy: Some(PolicyText {
                name: "p.toml".into(),
                text: "version = 1\n".into(),
            }),
            policy_name: None,
        };
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        assert_eq!(block_on(parse(&line)).unwrap(), request);
        assert_eq!(
            block_on(parse(b"{\"request\":\"sessions\"}\n")).unwrap(),
            Request::Sessions
        );
    }

    #[test]
    fn garbage_and_oversized_messages_are_errors() {
        assert!(matches!(
            block_on(parse(b"\x00\x01garbage\n")),
            Err(MessageError::Invalid(_))
        ));
        assert!(matches!(
            block_on(parse(b"{\"request\":\"run\"}\n")),
            Err(MessageError::Invalid(_))
        ));
        assert!(matches!(
            block_on(parse(b"{\"request\":\"status\",\"x\":1}\n")),
            Err(MessageError::Invalid(_))
        ));
        assert!(matches!(
            block_on(parse(b"\xff\xfe\n")),
            Err(MessageError::NotUtf8)
        ));
        assert!(matches!(
            block_on(parse(b"{\"request\":")),
            Err(MessageError::Closed)
        ));
        let long = vec![b'a'; MAX_MESSAGE + 10];
        assert!(matches!(block_on(parse(&long)), Err(MessageError::TooLong)));
    }
}
