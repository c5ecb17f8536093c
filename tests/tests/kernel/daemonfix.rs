//! A daemon of its own for each test: its configuration in the test's fixture, its socket
//! and state under /run/agent-guard (where the self-protection rule covers them), its pins
//! in a bpffs directory of its own, and clients that talk to it through
//! `$AGENT_GUARD_SOCKET`.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::fixture::{agent_guard_bin, Fixture};

/// How long a daemon may take to start in the emulated VM.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The group whose members may use the daemon.
pub const GROUP: &str = "agent-guard";
/// The unprivileged user the tests act as.
pub const NOBODY: u32 = 65534;

pub struct Daemon {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pins: PathBuf,
    pub state: PathBuf,
    pub events: PathBuf,
    pub policy_dir: PathBuf,
    pub base: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

/// Lets uid 65534 into the fixture and write its workspace.
pub fn open_to_nobody(fx: &Fixture) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&fx.ws, fs::Permissions::from_mode(0o777)).unwrap();
}

/// The id of group `agent-guard`, created when the host lacks it.
pub fn group_id() -> u32 {
    let find = || {
        fs::read_to_string("/etc/group").ok().and_then(|groups| {
            groups.lines().find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some(GROUP)).then(|| fields.nth(1)?.parse().ok())?
            })
        })
    };
    if let Some(gid) = find() {
        return gid;
    }
    let status = Command::new("groupadd")
        .args(["--system", GROUP])
        .status()
        .expect("run groupadd");
    assert!(status.success(), "groupadd {GROUP} failed");
    find().expect("the group exists after groupadd")
}

impl Daemon {
    /// Configures a daemon for `fx` without starting it.
    pub fn new(fx: &Fixture, name: &str) -> Self {
        let etc = fx.mkdir("etc");
        let policy_dir = fx.mkdir("etc/policies");
        let socket = PathBuf::from(format!("/run/agent-guard/t-{name}.sock"));
        let pins = PathBuf::from(format!("/sys/fs/bpf/ag-t-{name}"));
        let state = PathBuf::from(format!("/run/agent-guard/t-{name}"));
        // The record must lie where no session may modify it (the daemon insists).
        let events = state.join("events.jsonl");
        let base = etc.join("base.toml");
        let config = etc.join("config.toml");
        // Leftovers of an earlier, interrupted run of the same test.
        let _ = fs::remove_dir_all(&pins);
        let _ = fs::remove_dir_all(&state);
        fs::write(
            &config,
            format!(
                "socket = \"{}\"\npin_dir = \"{}\"\nstate_dir = \"{}\"\nevents = \"{}\"\njournal = \"{}/journal\"\nspool_dir = \"{}/spool\"\nbase_policy = \"base.toml\"\npolicy_dir = \"policies\"\n",
                socket.display(),
                pins.display(),
                state.display(),
                events.display(),
                state.display(),
                state.display()
            ),
        )
        .expect("write config.toml");
        group_id();
        Self {
            config,
            socket,
            pins,
            state,
            events,
            policy_dir,
            base,
            child: None,
            log: fx.path("daemon.log"),
            starts: 0,
        }
    }

    /// Adds `text` (keys, or `[[sink]]` tables) to the end of config.toml.
    pub fn configure(&self, text: &str) {
        let mut config = fs::read_to_string(&self.config).expect("read config.toml");
        config.push_str(text);
        fs::write(&self.config, config).expect("write config.toml");
    }

    /// Moves the control socket to `path`, outside /run/agent-guard where the kernel's
    /// self-protection rule keeps sessions from connecting.
    pub fn relocate_socket(&mut self, path: &Path) {
        let config = fs::read_to_string(&self.config).expect("read config.toml");
        let config = config.replace(
            &format!("socket = \"{}\"", self.socket.display()),
            &format!("socket = \"{}\"", path.display()),
        );
        fs::write(&self.config, config).expect("write config.toml");
        self.socket = path.to_owned();
    }

    /// Starts the daemon and waits until it answers `status`.
    pub fn start(&mut self) -> &mut Self {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the daemon's log");
        let child = Command::new(agent_guard_bin())
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start agent-guard daemon");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.client(&["status", "--json"]).status.success() {
                return self;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the daemon exited ({status}) while starting; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// SIGKILL: nothing of the daemon's own runs, not even its exit path.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the daemon runs");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().expect("reap the daemon")
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) of our own child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0);
    }

    /// `agent-guard ARGS` as root, against this daemon.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(agent_guard_bin())
            .args(args)
            .env("AGENT_GUARD_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .expect("run agent-guard")
    }

    /// `agent-guard ARGS` as uid 65534, in group `agent-guard` when `member`, started in
    /// `cwd`, against this daemon.
    pub fn client_as_nobody(&self, member: bool, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ]);
        if member {
            cmd.args(["--groups", &group_id().to_string()]);
        } else {
            cmd.arg("--clear-groups");
        }
        cmd.arg(agent_guard_bin())
            .args(args)
            .env("AGENT_GUARD_SOCKET", &self.socket)
            .current_dir(cwd)
            .stdin(Stdio::null());
        cmd
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.client(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The daemon's event log, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Sends raw bytes on the control socket and returns what came back.
    pub fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(&self.socket).expect("connect to the daemon");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a timeout");
        // The daemon may answer before it has read everything.
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        let _ = BufReader::new(stream).read_line(&mut reply);
        reply
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
        // Removing the pins detaches the programs, whatever was left running.
        let _ = fs::remove_dir_all(&self.pins);
        let _ = fs::remove_dir_all(&self.state);
        let _ = fs::remove_file(&self.socket);
    }
}
