//! The syslog sink against Debian's rsyslogd: one unix datagram sink and one TCP sink,
//! each read back from the file rsyslog writes for its input, across an rsyslog restart.
use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_guard::{report::Line, sinks::SinkSet};

use crate::{event, health_of, sinks, wait_for};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const PATIENCE: Duration = Duration::from_secs(60);

/// An rsyslogd of the test's own, killed when dropped.
struct Rsyslogd {
    child: Child,
}

/// The configuration, the sockets and the output files of the test's rsyslogd.
struct Setup {
    dir: PathBuf,
    port: u16,
}

impl Setup {
    fn new(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let setup = Self {
            dir: dir.to_owned(),
            port,
        };
        std::fs::create_dir_all(dir.join("work")).unwrap();
        // One ruleset per input, so each sink's messages land in a file of their own; the
        // protocol-23 template writes the RFC 5424 fields as rsyslog parsed them.
        let config = format!(
            r#"global(workDirectory="{dir}/work" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="from_unix") {{
  action(type="omfile" file="{dir}/unix.log" template="RSYSLOG_SyslogProtocol23Format")
}}
ruleset(name="from_tcp") {{
  action(type="omfile" file="{dir}/tcp.log" template="RSYSLOG_SyslogProtocol23Format")
  action(type="omfile" file="{dir}/tcp-raw.log" template="raw")
}}
input(type="imuxsock" socket="{dir}/log.sock" useSpecialParser="off" parseHostname="on" ruleset="from_unix")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="from_tcp")
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        setup
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("log.sock")
    }

    fn start(&self) -> Rsyslogd {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing: run `cargo xtask setup` (it installs rsyslog)"
        );
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting rsyslogd");
        let mut rsyslogd = Rsyslogd { child };
        let start = Instant::now();
        loop {
            if let Some(status) = rsyslogd.child.try_wait().unwrap() {
                panic!("rsyslogd exited at once ({status}); see its output above");
            }
            let listening = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if listening && self.socket().exists() {
                return rsyslogd;
            }
            assert!(start.elapsed() < PATIENCE, "rsyslogd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The messages rsyslog wrote to `file`, by sequence (the last copy of each).
    fn messages(&self, file: &str) -> BTreeMap<u64, Message> {
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .map(Message::parse)
            .map(|m| (m.sequence, m))
            .collect()
    }
}

impl Rsyslogd {
    /// Stops it the way a service manager does: SIGTERM, which flushes its queues.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One line of the protocol-23 template:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
#[derive(Debug)]
struct Message {
    pri: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    sd: String,
    sequence: u64,
    msg: String,
}

impl Message {
    fn parse(line: &str) -> Self {
        let mut fields = line.splitn(7, ' ');
        let mut next = || {
            fields
                .next()
                .unwrap_or_else(|| panic!("short line: {line}"))
        };
        let pri = next().strip_suffix('1').expect("version 1").to_owned();
        let _timestamp = next();
        let (hostname, app_name, procid, msgid) = (
            next().to_owned(),
            next().to_owned(),
            next().to_owned(),
            next().to_owned(),
        );
        let rest = next();
        let (sd, msg) = rest
            .split_once("] ")
            .unwrap_or_else(|| panic!("no structured data: {line}"));
        let sd = format!("{sd}]");
        let sequence = sd
            .strip_prefix("[agent_guard@32473 seq=\"")
            .and_then(|s| s.strip_suffix("\"]"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected structured data: {line}"));
        Self {
            pri,
            hostname,
            app_name,
            procid,
            msgid,
            sd,
            sequence,
            msg: msg.to_owned(),
        }
    }

    /// Everything the sink put in matches `line`.
    fn check(&self, line: &Line) {
        let alert = line.text.contains(r#""kind":"alert""#);
        let (pri, msgid) = if alert {
            ("<84>", "decision")
        } else {
            ("<85>", "session-start")
        };
        assert_eq!(self.pri, pri, "{self:?}");
        assert_eq!(self.msgid, msgid, "{self:?}");
        assert_eq!(self.app_name, "agent-guard", "{self:?}");
        assert_eq!(self.hostname, "build-1.example.com", "{self:?}");
        assert_eq!(self.procid, std::process::id().to_string(), "{self:?}");
        assert_eq!(
            self.sd,
            format!("[agent_guard@32473 seq=\"{}\"]", line.sequence)
        );
        assert_eq!(self.msg, &*line.text, "the JSON line changed on the way");
    }
}

fn has_all(setup: &Setup, file: &str, total: u64) -> bool {
    let got = setup.messages(file);
    (1..=total).all(|n| got.contains_key(&n))
}

#[test]
fn rsyslog_receives_every_event_over_unix_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(dir.path());
    let rsyslogd = setup.start();
    let configs = sinks(&format!(
        r#"
        [[sink]]
        type = "syslog"
        name = "local"
        address = "{}"
        [[sink]]
        type = "syslog"
        name = "remote"
        address = "tcp://127.0.0.1:{}"
        "#,
        setup.socket().display(),
        setup.port
    ));
    let set = SinkSet::start(&configs, dir.path()).unwrap();
    for n in 1..=100 {
        set.submit(&event(n));
    }
    for file in ["unix.log", "tcp.log"] {
        wait_for(file, PATIENCE, || has_all(&setup, file, 100));
    }

    // rsyslog restarts: both sinks find it again, and what was sent while it was away
    // waited in their queues.
    rsyslogd.stop();
    for n in 101..=150 {
        set.submit(&event(n));
    }
    wait_for("both sinks to notice", PATIENCE, || {
        set.health().iter().all(|h| h.last_error.is_some())
    });
    let rsyslogd = setup.start();
    for file in ["unix.log", "tcp.log"] {
        wait_for(file, PATIENCE, || has_all(&setup, file, 150));
    }

    for file in ["unix.log", "tcp.log"] {
        let got = setup.messages(file);
        assert_eq!(
            got.len(),
            150,
            "{file}: {:?}",
            got.keys().collect::<Vec<_>>()
        );
        for n in 1..=150 {
            got[&n].check(&event(n));
        }
    }
    // On TCP, what rsyslog received is the RFC 5424 message itself.
    let raw = std::fs::read_to_string(dir.path().join("tcp-raw.log")).unwrap();
    let first = raw.lines().next().unwrap();
    assert!(
        first.starts_with("<85>1 2026-11-30T12:00:00.000001Z build-1.example.com agent-guard "),
        "{first}"
    );
    for sink in ["local", "remote"] {
        let health = health_of(&set, sink);
        assert_eq!(
            (health.delivered, health.dropped, health.backlog),
            (150, 0, 0),
            "{health:?}"
        );
        assert_eq!(health.last_error, None, "{health:?}");
    }
    assert!(set.take_overflows().is_empty());
    set.shutdown(Duration::from_secs(5));
    rsyslogd.stop();
}
