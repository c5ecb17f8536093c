//! Network fixtures of the kernel tier, each an RAII guard: a network namespace joined to
//! this one by a veth pair (the "remote" hosts), servers that record who reached them, a
//! dnsmasq serving a test zone, /etc/resolv.conf pointed at it, and a sysctl set for the
//! length of a test.
//!
//! Addresses come from the documentation ranges (198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32). 192.0.2.0/24 is left alone: the build machines' own interface sits in it,
//! and these tests also run natively on such a host.
use std::{
    fs::{self, File},
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::fixture::cpath;

/// The host's ends of the veth pair: addresses of this machine (so, for a session, local
/// destinations), in each range the remote ends use.
pub const HOST4: &str = "198.51.100.1";
pub const HOST4_B: &str = "203.0.113.1";
pub const HOST6: &str = "2001:db8:a9::1";

/// Runs `ip ARGS...`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    ip_with_input(args, "");
}

/// Runs `ip [-n NS] -batch -` on `lines` (each one `ip` command without `ip`): one process
/// for many commands, which matters where each process start costs most of a second (TCG).
fn ip_batch(ns: Option<&str>, lines: &[String]) {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    ip_with_input(&args, &lines.join("\n"));
}

fn ip_with_input(args: &[&str], input: &str) {
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("ip")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes())?;
        drop(stdin);
        child.wait_with_output()
    };
    let out = run()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e} (is iproute2 installed?)", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        if input.is_empty() {
            String::new()
        } else {
            format!("\ncommands:\n{input}")
        }
    );
}

/// Brings the loopback interface up (it is in the VMs; a fresh namespace would not be).
pub fn loopback_up() {
    ip(&["link", "set", "lo", "up"]);
}

/// A network namespace with the far end of a veth pair, holding `remote` addresses; the
/// near end, in this namespace, holds [`HOST4`], [`HOST4_B`] and [`HOST6`]. Dropping it
/// deletes the namespace, and with it both ends of the pair.
pub struct NetNs {
    pub name: String,
    host_if: String,
}

impl NetNs {
    /// `remote`: addresses with their prefix (`198.51.100.10/24`, `2001:db8:a9::10/64`),
    /// each in one of the host end's subnets so that no route is needed.
    pub fn new(remote: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 1_000_000);
        let ns = Self {
            name: format!("agk{id}"),
            host_if: format!("agkh{id}"),
        };
        let peer_if = format!("agkn{id}");
        loopback_up();
        ip(&["netns", "add", &ns.name]);
        // From here on, dropping `ns` cleans up whatever was made. IPv6 addresses are
        // `nodad`: usable at once, not after duplicate address detection.
        let host = &ns.host_if;
        ip_batch(
            None,
            &[
                format!(
                    "link add {host} type veth peer name {peer_if} netns {}",
                    ns.name
                ),
                format!("addr add {HOST4}/24 dev {host}"),
                format!("addr add {HOST4_B}/24 dev {host}"),
                format!("addr add {HOST6}/64 dev {host} nodad"),
                format!("link set {host} up"),
            ],
        );
        let mut inside = vec!["link set lo up".to_owned()];
        for cidr in remote {
            let dad = if cidr.contains(':') { " nodad" } else { "" };
            inside.push(format!("addr add {cidr} dev {peer_if}{dad}"));
        }
        inside.push(format!("link set {peer_if} up"));
        ip_batch(Some(&ns.name), &inside);
        for cidr in remote {
            let addr: IpAddr = cidr
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("not an address with a prefix: {cidr}"));
            ns.wait_reachable(addr);
        }
        ns
    }

    /// Runs `f` on a thread inside the namespace: the sockets it makes live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // SAFETY: setns(2) of this thread alone into a namespace file it opened.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Waits until a TCP connection from here reaches `addr` in the namespace (the veth
    /// pair is up and neighbours answer), through a listener made for that and dropped.
    fn wait_reachable(&self, addr: IpAddr) {
        let listener = self.enter(|| TcpListener::bind((addr, 0)));
        let listener = listener.unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.name));
        let target = listener.local_addr().expect("listener address");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "{target} in namespace {} is unreachable from here: {e}",
                        self.name
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["link", "del", &self.host_if]);
        quiet(&["netns", "del", &self.name]);
    }
}

/// A server on a socket made by the test: a thread records what each client sent
/// (a connection's bytes up to its end, or one datagram) until [`Server::finish`].
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

/// How long a connection's bytes may take to arrive once it is accepted.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Server {
    /// Serves `poll` (one non-blocking attempt: `Ok(Some(text))` when a client was served,
    /// `Ok(None)` when none was waiting) until stopped, then once more until none waits.
    fn spawn(
        what: String,
        mut poll: impl FnMut() -> std::io::Result<Option<String>> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let name = what.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                // Read the flag before polling: once set, an empty poll means every client
                // that came before `finish` was served.
                let last = stopping.load(Ordering::SeqCst);
                match poll() {
                    Ok(Some(text)) => seen.push(text),
                    Ok(None) if last => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => panic!("server {name}: {e}"),
                }
            }
            seen
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn tcp(listener: TcpListener) -> Self {
        let what = format!("tcp {}", listener.local_addr().expect("listener address"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        Self::spawn(what, move || match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Some(read_to_end(stream)))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        })
    }

    pub fn udp(socket: UdpSocket) -> Self {
        let what = format!("udp {}", socket.local_addr().expect("socket address"));
        socket.set_nonblocking(true).expect("non-blocking socket");
        Self::spawn(what, move || {
            let mut buf = [0u8; 2048];
            match socket.recv_from(&mut buf) {
                Ok((n, _)) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    pub fn unix_stream(listener: UnixListener, what: &str) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        Self::spawn(format!("unix stream {what}"), move || {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(READ_TIMEOUT))?;
                    Ok(Some(read_to_end(stream)))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    pub fn unix_dgram(socket: UnixDatagram, what: &str) -> Self {
        socket.set_nonblocking(true).expect("non-blocking socket");
        Self::spawn(format!("unix dgram {what}"), move || {
            let mut buf = [0u8; 2048];
            match socket.recv(&mut buf) {
                Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// A seqpacket listener (std has none): each accepted connection's first message.
    pub fn unix_seqpacket(path: &Path) -> Self {
        // SAFETY: socket(2) returns a new descriptor, which OwnedFd then owns.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        assert!(
            fd >= 0,
            "seqpacket socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just returned by socket(2).
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero bytes are a valid sockaddr_un.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = cpath(path);
        let bytes = bytes.as_bytes_with_nul();
        assert!(
            bytes.len() <= sun.sun_path.len(),
            "socket path too long: {}",
            path.display()
        );
        for (i, b) in bytes.iter().enumerate() {
            sun.sun_path[i] = *b as libc::c_char;
        }
        let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len();
        // SAFETY: a valid address of the given length; listen(2) on the bound socket.
        let rc = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                (&sun as *const libc::sockaddr_un).cast(),
                len as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        // SAFETY: listen(2) on a bound socket this process owns.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 16) };
        assert_eq!(
            rc,
            0,
            "listen {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self::spawn(format!("unix seqpacket {}", path.display()), move || {
            // SAFETY: accept4(2) on our listener; the new descriptor is owned below.
            let conn = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if conn < 0 {
                let e = std::io::Error::last_os_error();
                return if e.kind() == ErrorKind::WouldBlock {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
            // SAFETY: a descriptor just returned by accept4(2).
            let conn = unsafe { OwnedFd::from_raw_fd(conn) };
            let mut buf = [0u8; 2048];
            let timeout = libc::timeval {
                tv_sec: READ_TIMEOUT.as_secs() as libc::time_t,
                tv_usec: 0,
            };
            // SAFETY: SO_RCVTIMEO from a valid timeval; recv(2) into a valid buffer.
            let n = unsafe {
                libc::setsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
                libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
            };
            Ok(Some(
                String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned(),
            ))
        })
    }

    /// Stops serving once every client already waiting has been served, and returns what
    /// each client sent, in arrival order.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("finished once");
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_to_end(mut stream: impl std::io::Read) -> String {
    let mut bytes = Vec::new();
    // A client that vanished mid-way still counts as having reached the server.
    let _ = stream.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Binds a TCP listener at `addr` (made inside `ns` when given).
pub fn tcp_listener(ns: Option<&NetNs>, addr: SocketAddr) -> TcpListener {
    let bind = || TcpListener::bind(addr);
    let result = match ns {
        Some(ns) => ns.enter(bind),
        None => bind(),
    };
    result.unwrap_or_else(|e| panic!("bind a TCP listener at {addr}: {e}"))
}

pub fn udp_socket(ns: Option<&NetNs>, addr: SocketAddr) -> UdpSocket {
    let bind = || UdpSocket::bind(addr);
    let result = match ns {
        Some(ns) => ns.enter(bind),
        None => bind(),
    };
    result.unwrap_or_else(|e| panic!("bind a UDP socket at {addr}: {e}"))
}

/// Port candidates for [`PortServers::bind`] meaning "any port": twenty tries at one the
/// kernel picks.
pub const ANY_PORT: [u16; 20] = [0; 20];

/// A TCP and a UDP server on each of `ips` on one port number: the first port from
/// `candidates` (`0`: one the kernel picks) free for all of them.
pub struct PortServers {
    pub port: u16,
    pub tcp: Vec<(IpAddr, Server)>,
    pub udp: Vec<(IpAddr, Server)>,
}

impl PortServers {
    pub fn bind(ips: &[&str], candidates: impl IntoIterator<Item = u16>) -> Self {
        let ips: Vec<IpAddr> = ips
            .iter()
            .map(|ip| {
                ip.parse()
                    .unwrap_or_else(|_| panic!("not an IP address: {ip}"))
            })
            .collect();
        for candidate in candidates {
            // The first socket picks the port when the candidate is 0.
            let Ok(first) = TcpListener::bind((ips[0], candidate)) else {
                continue;
            };
            let port = first.local_addr().expect("listener address").port();
            let mut tcp = vec![first];
            let mut udp = Vec::new();
            let all = ips.iter().enumerate().all(|(i, ip)| {
                let t = if i == 0 {
                    true
                } else {
                    TcpListener::bind((*ip, port)).map(|l| tcp.push(l)).is_ok()
                };
                t && UdpSocket::bind((*ip, port)).map(|s| udp.push(s)).is_ok()
            });
            if all {
                return Self {
                    port,
                    tcp: ips
                        .iter()
                        .copied()
                        .zip(tcp.into_iter().map(Server::tcp))
                        .collect(),
                    udp: ips
                        .iter()
                        .copied()
                        .zip(udp.into_iter().map(Server::udp))
                        .collect(),
                };
            }
        }
        panic!("no port among the candidates is free for TCP and UDP on all of {ips:?}");
    }

    /// Stops every server; what each received, by `tcp ADDR` / `udp ADDR`.
    pub fn finish(self) -> Vec<(String, Vec<String>)> {
        let tcp = self.tcp.into_iter().map(|(ip, s)| {
            (
                format!("tcp {}", SocketAddr::new(ip, self.port)),
                s.finish(),
            )
        });
        let udp = self.udp.into_iter().map(|(ip, s)| {
            (
                format!("udp {}", SocketAddr::new(ip, self.port)),
                s.finish(),
            )
        });
        tcp.chain(udp).collect()
    }
}

/// A unix stream listener at `path`.
pub fn unix_stream(path: &Path) -> Server {
    let listener = UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("bind a unix stream socket at {}: {e}", path.display()));
    Server::unix_stream(listener, &path.display().to_string())
}

pub fn unix_dgram(path: &Path) -> Server {
    let socket = UnixDatagram::bind(path)
        .unwrap_or_else(|e| panic!("bind a unix datagram socket at {}: {e}", path.display()));
    Server::unix_dgram(socket, &path.display().to_string())
}

/// An abstract stream listener named `name` (without the `@`).
pub fn abstract_stream(name: &str) -> Server {
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
    let listener = UnixListener::bind_addr(&addr)
        .unwrap_or_else(|e| panic!("bind the abstract stream socket @{name}: {e}"));
    Server::unix_stream(listener, &format!("@{name}"))
}

pub fn abstract_dgram(name: &str) -> Server {
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("an abstract name");
    let socket = UnixDatagram::bind_addr(&addr)
        .unwrap_or_else(|e| panic!("bind the abstract datagram socket @{name}: {e}"));
    Server::unix_dgram(socket, &format!("@{name}"))
}

/// /etc/resolv.conf replaced, for this machine, by a file naming `nameserver`, through a
/// bind mount undone on drop (a missing /etc/resolv.conf is created, and removed again).
pub struct ResolvConf {
    target: PathBuf,
    created: bool,
}

impl ResolvConf {
    pub fn point_at(dir: &Path, nameserver: &str) -> Self {
        let source = dir.join("resolv.conf");
        fs::write(&source, format!("nameserver {nameserver}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", source.display()));
        // A symlink (to systemd-resolved's file, say) is mounted over where it points.
        let target = fs::canonicalize("/etc/resolv.conf")
            .unwrap_or_else(|_| PathBuf::from("/etc/resolv.conf"));
        let created = !target.exists();
        if created {
            fs::write(&target, "")
                .unwrap_or_else(|e| panic!("create {} to mount over: {e}", target.display()));
        }
        let guard = Self { target, created };
        let (src, dst) = (cpath(&source), cpath(&guard.target));
        // SAFETY: valid NUL-terminated paths, no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind mount {} over {}: {}",
            source.display(),
            guard.target.display(),
            std::io::Error::last_os_error()
        );
        guard
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(cpath(&self.target).as_ptr(), libc::MNT_DETACH) };
        if self.created {
            let _ = fs::remove_file(&self.target);
        }
    }
}

/// dnsmasq answering on 127.0.0.1:53 for the `.test` zone, from a hosts file the test
/// writes, with a TTL of [`Dnsmasq::TTL`] seconds; no upstream, no system files.
pub struct Dnsmasq {
    child: Child,
    hosts: PathBuf,
    log: PathBuf,
}

impl Dnsmasq {
    pub const TTL: u64 = 2;

    /// Starts it on `hosts` (lines of `ADDRESS NAME`) and waits until this process's own
    /// lookups (through /etc/resolv.conf, so [`ResolvConf`] first) answer `ready`'s name
    /// with its address.
    pub fn start(dir: &Path, hosts: &str, ready: (&str, &str)) -> Self {
        let hosts_path = dir.join("dnsmasq.hosts");
        let log = dir.join("dnsmasq.log");
        fs::write(&hosts_path, hosts).expect("write the dnsmasq hosts file");
        loopback_up();
        let child = Command::new("dnsmasq")
            .arg("--conf-file=/dev/null")
            .args(["--no-resolv", "--no-hosts", "--no-poll", "--local=/test/"])
            .arg(format!("--addn-hosts={}", hosts_path.display()))
            .arg(format!("--local-ttl={}", Self::TTL))
            .args([
                "--port=53",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
            ])
            // Stay root: the fixture directory is private to root.
            .args(["--user=root", "--keep-in-foreground", "--log-queries"])
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start dnsmasq: {e} (`cargo xtask setup` installs dnsmasq-base)")
            });
        let mut dns = Self {
            child,
            hosts: hosts_path,
            log,
        };
        dns.wait_for(ready.0, ready.1);
        dns
    }

    /// Rewrites the hosts file and has dnsmasq read it again (SIGHUP), then waits until
    /// lookups from here answer `ready`'s name with its address.
    pub fn set_hosts(&mut self, hosts: &str, ready: (&str, &str)) {
        fs::write(&self.hosts, hosts).expect("rewrite the dnsmasq hosts file");
        // SAFETY: kill(2) of our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP dnsmasq: {}", std::io::Error::last_os_error());
        self.wait_for(ready.0, ready.1);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, name: &str, address: &str) {
        let want: IpAddr = address.parse().expect("an IP address");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dnsmasq exited ({status}); its log:\n{}", self.log());
            }
            match std::net::ToSocketAddrs::to_socket_addrs(&(name, 0)) {
                Ok(found) => {
                    let found: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                    if found.contains(&want) {
                        return;
                    }
                    last = format!("{found:?}");
                }
                Err(e) => last = e.to_string(),
            }
            assert!(
                Instant::now() < deadline,
                "{name} never resolved to {address} through dnsmasq (last answer: {last}); \
                 /etc/resolv.conf:\n{}\ndnsmasq log:\n{}",
                fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, then reaping it.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A sysctl under /proc/sys set for the length of a test, restored on drop.
pub struct Sysctl {
    path: PathBuf,
    before: String,
}

impl Sysctl {
    pub fn set(name: &str, value: &str) -> Self {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        let before =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        fs::write(&path, value).unwrap_or_else(|e| panic!("set {name} = {value}: {e}"));
        Self { path, before }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.before.trim());
    }
}
