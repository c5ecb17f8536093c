//! Talking to the daemon: one request per connection, over its control socket.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use crate::daemon::protocol::{Request, Response, MAX_MESSAGE};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon answers on {0}")]
    NoDaemon(PathBuf),
    #[error("permission denied on {0}\n  hint: the daemon serves root and the members of group `agent-guard`; an administrator adds you with `usermod -aG agent-guard USER`, then log in again")]
    Denied(PathBuf),
    #[error("talking to the daemon on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{path} is served by a process of uid {uid}, not by root: it is not agent-guard's daemon, and nothing it answers can be trusted\n  hint: the daemon runs as root; a socket someone else created in its place is a trap: remove it, and keep the socket under /run/agent-guard, which no session may modify")]
    NotTheDaemon { path: PathBuf, uid: u32 },
    #[error("the daemon's answer is not understood: {0}")]
    BadReply(String),
    #[error("the daemon refused: {error}{}", hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Refused { error: String, hint: Option<String> },
}

/// A connection with a request sent.
pub struct Connection {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Connection {
    /// Connects to the daemon at `path` and sends `request`.
    pub fn send(path: &Path, request: &Request) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoDaemon(path.to_owned())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Denied(path.to_owned()),
            _ => ClientError::Io(path.to_owned(), e),
        })?;
        // A socket at a path someone else could write may be anybody's: a fake daemon
        // would answer "guarded" and let the command run bare. The kernel says who
        // listens (its credentials when it called listen), before anything is sent.
        let listener =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_err(|e| ClientError::Io(path.to_owned(), e.into()))?;
        if listener.uid() != 0 {
            return Err(ClientError::NotTheDaemon {
                path: path.to_owned(),
                uid: listener.uid(),
            });
        }
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .map_err(|e| ClientError::Io(path.to_owned(), e))?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
        })
    }

    /// The next line from the daemon, or `None` once it closed the connection.
    pub fn line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_MESSAGE as u64 * 4)
            .read_line(&mut line)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches('\n').to_owned()))
    }

    /// The response to the request; a refusal is an error.
    pub fn response(&mut self) -> Result<Response, ClientError> {
        let line = self
            .line()?
            .ok_or_else(|| ClientError::BadReply("the daemon closed the connection".into()))?;
        let response: Response =
            serde_json::from_str(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
        if response.ok {
            Ok(response)
        } else {
            Err(ClientError::Refused {
                error: response.error.unwrap_or_default(),
                hint: response.hint,
            })
        }
    }
}

/// Sends `request` and returns the daemon's response.
pub fn request(path: &Path, request: &Request) -> Result<Response, ClientError> {
    Connection::send(path, request)?.response()
}
