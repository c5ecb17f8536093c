//! A minimal HTTP/1.1 client for the webhook: one POST per connection, `Connection: close`,
//! and only the status code read back. Every step is bounded by the POST's deadline and
//! gives up early when the sink is abandoned, so a receiver that accepts and never answers
//! cannot hold up a shutdown.
use std::{
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::url::HttpUrl;

/// How often a blocked read or write looks at the abandon flag.
const POLL: Duration = Duration::from_millis(100);
/// A response head longer than this is not one.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: connection failed")]
    Io {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: not an HTTP response")]
    Malformed { url: String },
    #[error("{url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("abandoned")]
    Abandoned,
}

/// POSTs `body` (JSON Lines) and returns once the receiver answered 2xx.
pub fn post(
    url: &HttpUrl,
    body: &[u8],
    timeout: Duration,
    abandon: &AtomicBool,
) -> Result<(), PostError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(url, timeout)?;
    let io_error = |source| PostError::Io {
        url: url.to_string(),
        source,
    };
    stream.set_nodelay(true).map_err(io_error)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agent-guard/{}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let clock = Clock {
        url,
        deadline,
        timeout,
        abandon,
    };
    clock.write_all(&mut stream, &request)?;
    let status = clock.read_status(&mut stream)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(PostError::Status {
            url: url.to_string(),
            status,
        })
    }
}

fn connect(url: &HttpUrl, timeout: Duration) -> Result<TcpStream, PostError> {
    let addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| PostError::Resolve {
            host: url.host.clone(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to nothing");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(PostError::Connect {
        url: url.to_string(),
        source: last,
    })
}

/// The bounds of one POST.
struct Clock<'a> {
    url: &'a HttpUrl,
    deadline: Instant,
    timeout: Duration,
    abandon: &'a AtomicBool,
}

impl Clock<'_> {
    /// The socket timeout for the next blocking step, or why there is none.
    fn next_wait(&self) -> Result<Duration, PostError> {
        if self.abandon.load(Ordering::Relaxed) {
            return Err(PostError::Abandoned);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PostError::Timeout {
                url: self.url.to_string(),
                timeout: self.timeout,
            });
        }
        Ok(left.min(POLL))
    }

    fn io(&self, source: io::Error) -> PostError {
        PostError::Io {
            url: self.url.to_string(),
            source,
        }
    }

    fn write_all(&self, stream: &mut TcpStream, mut buf: &[u8]) -> Result<(), PostError> {
        while !buf.is_empty() {
            stream
                .set_write_timeout(Some(self.next_wait()?))
                .map_err(|e| self.io(e))?;
            match stream.write(buf) {
                Ok(0) => return Err(self.io(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    /// Reads the response head and returns its status code.
    fn read_status(&self, stream: &mut TcpStream) -> Result<u16, PostError> {
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return Err(self.malformed());
            }
            stream
                .set_read_timeout(Some(self.next_wait()?))
                .map_err(|e| self.io(e))?;
            match stream.read(&mut chunk) {
                // A response without a complete head, or none at all.
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        parse_status(&head).ok_or_else(|| self.malformed())
    }

    fn malformed(&self) -> PostError {
        PostError::Malformed {
            url: self.url.to_string(),
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The code of a status line `HTTP/1.x NNN reason`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500\r\n"), Some(500));
        assert_eq!(parse_status(b"SSH-2.0-x\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
