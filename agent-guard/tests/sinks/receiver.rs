//! An HTTP receiver for the webhook tests: a listener thread that reads each POST and
//! records its body, answering as its current [`Mode`] says. It can be stopped (the port
//! then refuses connections) and started again on the same port.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record the body, answer 200.
    Accept,
    /// Answer 500 without recording.
    Fail,
    /// Record the body, then close without answering (the delivery happened, the sender
    /// cannot know): the next `n` requests.
    LoseAnswer(u32),
    /// Accept the connection and never read or answer.
    Hang,
}

#[derive(Default)]
pub struct Record {
    /// Bodies answered 200 or recorded in `LoseAnswer`, in arrival order.
    pub bodies: Vec<Vec<u8>>,
    /// Requests answered 500.
    pub refused: u32,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub mode: Arc<Mutex<Mode>>,
    pub record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        Self::serve(
            listener,
            Arc::new(Mutex::new(mode)),
            Arc::new(Mutex::new(Record::default())),
        )
    }

    /// A port nothing listens on (until [`Self::restart`] on it).
    pub fn down() -> Self {
        let mut receiver = Self::start(Mode::Accept);
        receiver.stop();
        receiver
    }

    fn serve(listener: TcpListener, mode: Arc<Mutex<Mode>>, record: Arc<Mutex<Record>>) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (mode, record, stop) = (mode.clone(), record.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(&listener, &mode, &record, &stop))
        };
        Self {
            addr,
            mode,
            record,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the listener: connections are refused from now on.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the receiver thread panicked");
        }
    }

    /// Listens again on the same port, keeping what was recorded.
    pub fn restart(&mut self) {
        self.stop();
        let listener = TcpListener::bind(self.addr).expect("binding the receiver's port again");
        *self = Self::serve(listener, self.mode.clone(), self.record.clone());
    }

    /// Every line received, in order, duplicates included.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        let record = self.record.lock().unwrap();
        record
            .bodies
            .iter()
            .flat_map(|body| body.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    mode: &Mutex<Mode>,
    record: &Mutex<Record>,
    stop: &AtomicBool,
) {
    // Connections of `Hang` stay open until the receiver stops.
    let mut hung = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let current = *mode.lock().unwrap();
                if current == Mode::Hang {
                    hung.push(stream);
                    continue;
                }
                if let Some(next) = handle(stream, current, record) {
                    *mode.lock().unwrap() = next;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Serves one request; returns the mode that follows, if it changes.
fn handle(mut stream: TcpStream, mode: Mode, record: &Mutex<Record>) -> Option<Mode> {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = read_request(&mut stream)?;
    let (answer, next) = match mode {
        Mode::Accept => (Some("200 OK"), None),
        Mode::Fail => (Some("500 Internal Server Error"), None),
        Mode::LoseAnswer(n) => (
            None,
            Some(if n > 1 {
                Mode::LoseAnswer(n - 1)
            } else {
                Mode::Accept
            }),
        ),
        Mode::Hang => unreachable!("hung connections are not served"),
    };
    let mut record = record.lock().unwrap();
    if mode == Mode::Fail {
        record.refused += 1;
    } else {
        record.bodies.push(body);
    }
    drop(record);
    if let Some(status) = answer {
        let response =
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(response.as_bytes());
    }
    next
}

/// The body of a POST with Content-Length; `None` if the request is not one.
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("post /events http/1.1\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/x-ndjson\r\n"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    while data.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    }
    Some(data[head_end..head_end + length].to_vec())
}
