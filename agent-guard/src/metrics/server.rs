//! A minimal HTTP/1.1 server for scrapes: `GET /metrics` and nothing else.
//!
//! Each connection gets a thread, up to [`MAX_CONNECTIONS`] at once; a request head is read
//! under one deadline and a size bound, so a client that connects and stays silent (or
//! trickles bytes) holds one slot for at most [`HEAD_TIMEOUT`] and never the scrapes behind
//! it. One request per connection: every answer closes it.
use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{Metrics, CONTENT_TYPE};

/// The most bytes a request head (request line and header fields) may take.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time; the next ones are told to come back later.
pub const MAX_CONNECTIONS: usize = 8;

/// The running server. Dropping it stops the server too.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the accepting thread. A scrape already
    /// being answered finishes on its own thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on a socket this handle keeps open. On Linux it makes the
        // accept(2) blocked in the server thread return, which then sees `stop`.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = thread.join();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Listens on `addr` and answers scrapes of `metrics` on a thread of its own. The address
/// is bound before this returns, so a bad or busy address is an error here, naming it.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = thread::Builder::new()
        .name("agent-guard-metrics".into())
        .spawn({
            let listener = Arc::clone(&listener);
            let stop = Arc::clone(&stop);
            move || accept_loop(&listener, &stop, &metrics)
        })?;
    Ok(ServerHandle {
        addr: local,
        listener,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, metrics: &Arc<Metrics>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of fds or memory: wait rather than spin, then try again.
                eprintln!("agent-guard daemon: metrics: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            reject_busy(stream);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let metrics = Arc::clone(metrics);
        let spawned = thread::Builder::new()
            .name("agent-guard-metrics-conn".into())
            .spawn(move || {
                let _slot = slot;
                handle(stream, &metrics);
            });
        if let Err(e) = spawned {
            eprintln!("agent-guard daemon: metrics: cannot start a thread for a scrape: {e}");
        }
    }
}

/// One of the [`MAX_CONNECTIONS`] slots, given back when the connection's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reject_busy(mut stream: TcpStream) {
    // Answered from the accepting thread, so without waiting on anything: the answer fits
    // an empty socket buffer, and a request already there is read so that closing does not
    // reset the connection (one arriving later may still; the client then retries anyway).
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _ = stream.write_all(&response(503, "Service Unavailable", &[], b"busy\n"));
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 1024];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(1..)) {
            break;
        }
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let answer = match read_head(&mut stream) {
        Ok(head) => answer(&head, metrics),
        Err(HeadError::TooLarge) => response(
            431,
            "Request Header Fields Too Large",
            &[],
            b"request head too large\n",
        ),
        // Silent, slow or gone: nobody to answer.
        Err(HeadError::Unfinished) => return,
    };
    if stream.write_all(&answer).is_err() {
        return;
    }
    // Closing a socket with unread bytes in it sends a reset, which can make the client lose
    // the answer; say we are done and read what is left for a moment first.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    let mut left = 64 * 1024;
    while let Ok(n @ 1..) = stream.read(&mut sink) {
        left -= n.min(left);
        if left == 0 {
            break;
        }
    }
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    /// The client went quiet, went away or the read failed before the head was complete.
    Unfinished,
}

/// Reads up to the blank line that ends the request head, within [`HEAD_TIMEOUT`] in all.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Unfinished);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Unfinished)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Unfinished),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Unfinished),
        };
        // Search only where the new bytes can complete the terminator.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head[from..]) {
            head.truncate(from + end);
            if head.len() > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (after its blank line), accepting bare LF as RFC 9112 allows.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if bytes[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn answer(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return response(400, "Bad Request", &[], b"bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return response(505, "HTTP Version Not Supported", &[], b"HTTP/1.x only\n");
    }
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    if path != "/metrics" {
        return response(
            404,
            "Not Found",
            &[],
            b"not found; metrics are at /metrics\n",
        );
    }
    match method {
        "GET" => response(
            200,
            "OK",
            &[("Content-Type", CONTENT_TYPE)],
            metrics.render().as_bytes(),
        ),
        "HEAD" => {
            let body = metrics.render();
            let mut r = response(
                200,
                "OK",
                &[("Content-Type", CONTENT_TYPE)],
                body.as_bytes(),
            );
            r.truncate(r.len() - body.len());
            r
        }
        _ => response(
            405,
            "Method Not Allowed",
            &[("Allow", "GET, HEAD")],
            b"method not allowed\n",
        ),
    }
}

fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers.iter().any(|(name, _)| *name == "Content-Type") {
        r.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    r.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}
