//! Real receivers for the daemon's sinks: an HTTP server on loopback that a test stops
//! and starts again, a listener that accepts and never answers, and Debian's rsyslogd.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The `event.sequence` of a JSON line.
pub fn sequence_of(line: &str) -> u64 {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    value["event"]["sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no event.sequence: {line}"))
}

/// A webhook receiver: every POSTed line, in arrival order. While stopped, its port
/// refuses connections.
pub struct Webhook {
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub posts: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Self {
        let mut hook = Self {
            port: free_port(),
            lines: Arc::default(),
            posts: Arc::default(),
            stop: Arc::default(),
            thread: None,
        };
        hook.resume();
        hook
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        assert!(self.thread.is_none(), "the receiver is running");
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("bind the webhook receiver");
        listener.set_nonblocking(true).expect("non-blocking accept");
        self.stop.store(false, Ordering::SeqCst);
        let (stop, lines, posts) = (self.stop.clone(), self.lines.clone(), self.posts.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(body) = read_post(stream) {
                            *posts.lock().unwrap() += 1;
                            lines
                                .lock()
                                .unwrap()
                                .extend(body.lines().filter(|l| !l.is_empty()).map(str::to_owned));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }

    /// Closes the port: the daemon's next POST is refused.
    pub fn pause(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the receiver thread");
        }
    }

    /// Every line received, by sequence number, with each copy.
    pub fn by_sequence(&self) -> BTreeMap<u64, Vec<String>> {
        let mut map: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for line in self.lines.lock().unwrap().iter() {
            map.entry(sequence_of(line)).or_default().push(line.clone());
        }
        map
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.pause();
    }
}

/// Reads one HTTP request and answers 200 when it was a whole POST; returns its body.
fn read_post(stream: TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let ok = request_line.starts_with("POST ");
    let answer: &[u8] = if ok {
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    };
    (&stream).write_all(answer).ok()?;
    ok.then(|| String::from_utf8_lossy(&body).into_owned())
}

/// A receiver that accepts connections and never reads or answers: a hung SIEM.
pub struct Blackhole {
    pub port: u16,
    _listener: TcpListener,
}

impl Blackhole {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the blackhole");
        Self {
            port: listener.local_addr().expect("its address").port(),
            _listener: listener,
        }
    }
}

/// Debian's rsyslogd with a configuration of the test's own: a unix socket and a TCP port
/// on loopback, everything received written to one file in RFC 5424 form.
pub struct Rsyslog {
    pub socket: PathBuf,
    pub port: u16,
    pub output: PathBuf,
    child: Child,
}

impl Rsyslog {
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("syslog.sock");
        let output = dir.join("syslog.out");
        let work = dir.join("rsyslog-work");
        fs::create_dir_all(&work).expect("rsyslog's work directory");
        let port = free_port();
        let config = dir.join("rsyslog.conf");
        fs::write(
            &config,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" CreatePath="on" useSpecialParser="off" parseHostname="on")
module(load="imtcp" MaxSessions="16")
input(type="imtcp" address="127.0.0.1" port="{port}")
action(type="omfile" file="{output}" template="RSYSLOG_SyslogProtocol23Format")
"#,
                work = work.display(),
                socket = socket.display(),
                output = output.display(),
            ),
        )
        .expect("write rsyslog.conf");
        let child = Command::new("/usr/sbin/rsyslogd")
            .args(["-n", "-f"])
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/rsyslogd (`cargo xtask setup` installs it)");
        let rsyslog = Self {
            socket,
            port,
            output,
            child,
        };
        crate::fixture::wait_until("rsyslogd to listen", Duration::from_secs(60), || {
            rsyslog.socket.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        rsyslog
    }

    /// The JSON message of every line rsyslogd wrote, with the line's RFC 5424 header.
    pub fn messages(&self) -> Vec<(String, String)> {
        fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let start = line.find("{\"@timestamp\"")?;
                Some((line[..start].to_owned(), line[start..].to_owned()))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
