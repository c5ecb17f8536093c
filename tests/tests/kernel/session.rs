//! Running `agent-guard run` the way a user does, and checking what it reports.
//!
//! Every finished [`Session`] is checked for internal consistency before a test sees it:
//! the summary line is there and matches the exit status, the policy and mode; its counts
//! match the event lines; every event belongs to this session, names this policy and has a
//! valid RFC 3339 time within the run; nothing was lost.
use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{
            fs::OpenOptionsExt as _,
            process::{CommandExt as _, ExitStatusExt as _},
        },
    },
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    events::{parse_rfc3339, EventLog, Summary},
    expect::{check_decisions, Expect},
    fixture::{agent_guard_bin, cpath, Fixture},
    script::{outcomes, pause_fifo, Outcome, Script},
};

/// The policy most tests use: the workspace is the only writable scope. It is the shipped
/// default, written to a file so that events name a policy path.
pub const WORKSPACE_POLICY: &str = r#"version = 1
mode = "enforce"

[filesystem]
writable = ["${WORKSPACE}"]
writable_devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
terminals = true
"#;

/// How `run` reports the built-in policy.
pub const BUILTIN_POLICY: &str = "<built-in default policy>";

/// The longest a session may take in the VM (TCG is ~45x slower than the host).
const SESSION_TIMEOUT: Duration = Duration::from_secs(300);

/// A `run` about to start.
pub struct Run<'f> {
    fx: &'f Fixture,
    argv: Vec<String>,
    /// Policy text; `None` runs with the built-in policy (no `--policy`).
    policy: Option<String>,
    /// Descriptors the command inherits: (open file, number in the child).
    fds: Vec<(RawFd, RawFd)>,
    /// A terminal to make `run`'s controlling terminal (it becomes a session leader).
    tty: Option<RawFd>,
    /// Whether the run may lose events (a flood): then the counts must still add up.
    lossy: bool,
}

impl<'f> Run<'f> {
    pub fn new(fx: &'f Fixture, argv: &[&str]) -> Self {
        Self {
            fx,
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            policy: Some(WORKSPACE_POLICY.to_owned()),
            fds: Vec::new(),
            tty: None,
            lossy: false,
        }
    }

    pub fn script(fx: &'f Fixture, script: Script) -> Self {
        let mut run = Self::new(fx, &[]);
        run.argv = script.argv();
        run
    }

    pub fn policy(mut self, text: &str) -> Self {
        self.policy = Some(text.to_owned());
        self
    }

    pub fn builtin_policy(mut self) -> Self {
        self.policy = None;
        self
    }

    /// The command gets `file` as descriptor `number`, opened by the test (outside any
    /// session) before `run` started.
    pub fn inherit(mut self, file: &'f File, number: RawFd) -> Self {
        self.fds.push((file.as_raw_fd(), number));
        self
    }

    pub fn controlling_terminal(mut self, tty: &'f File) -> Self {
        self.tty = Some(tty.as_raw_fd());
        self
    }

    pub fn policy_path(&self) -> PathBuf {
        self.fx.path("policy.toml")
    }

    pub fn events_path(&self) -> PathBuf {
        self.fx.path("events.jsonl")
    }

    pub fn start(self) -> Running {
        let fifo = pause_fifo(self.fx);
        if !fifo.exists() {
            // SAFETY: a valid NUL-terminated path.
            let rc = unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o600) };
            assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        }
        let mut cmd = Command::new(agent_guard_bin());
        // These sessions load their own programs, whether or not a daemon runs.
        cmd.args(["run", "--standalone"]);
        let (policy_label, mode) = match &self.policy {
            Some(text) => {
                fs::write(self.policy_path(), text).expect("write the policy");
                cmd.arg("--policy").arg(self.policy_path());
                // The policies these tests write state their mode on a line of its own.
                let audit = text.lines().any(|l| l.replace(' ', "") == "mode=\"audit\"");
                (
                    self.policy_path().display().to_string(),
                    if audit { "audit" } else { "enforce" },
                )
            }
            None => (BUILTIN_POLICY.to_owned(), "enforce"),
        };
        let _ = fs::remove_file(self.events_path());
        cmd.arg("--events")
            .arg(self.events_path())
            .arg("--")
            .args(&self.argv)
            .current_dir(&self.fx.ws)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fds = self.fds.clone();
        let tty = self.tty;
        // SAFETY: the closure only calls async-signal-safe functions (dup2, setsid, ioctl).
        unsafe {
            cmd.pre_exec(move || {
                dup_into_place(&fds)?;
                if let Some(tty) = tty {
                    if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = SystemTime::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", agent_guard_bin().display()));
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
            started,
            fifo,
            resume: None,
            policy_label,
            mode,
            lossy: self.lossy,
            events_path: self.events_path(),
        }
    }

    pub fn finish(self) -> Session {
        self.start().finish()
    }

    /// A flood: events may be lost, but every loss must be counted, in the events file and
    /// in the summary, so that decisions = events written + events lost.
    pub fn lossy(mut self) -> Self {
        self.lossy = true;
        self
    }
}

/// Where [`dup_into_place`] parks descriptors on their way to their numbers.
const PARKING: RawFd = 512;

/// In a child between fork and exec: makes each `(open, number)` descriptor `open` available
/// as `number`, without FD_CLOEXEC so that it survives exec. Every descriptor is first
/// parked above the numbers in use: dup2 straight to its number could overwrite one that is
/// still to be moved. Only calls dup3 and dup2, so it is async-signal-safe.
pub fn dup_into_place(fds: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    for (i, &(from, _)) in fds.iter().enumerate() {
        // SAFETY: dup3 of a descriptor this process holds; the parked copy closes at exec.
        check(unsafe { libc::dup3(from, PARKING + i as RawFd, libc::O_CLOEXEC) })?;
    }
    for (i, &(_, to)) in fds.iter().enumerate() {
        // SAFETY: as above; dup2 leaves `to` without FD_CLOEXEC.
        check(unsafe { libc::dup2(PARKING + i as RawFd, to) })?;
    }
    Ok(())
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A `run` in progress.
pub struct Running {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    started: SystemTime,
    fifo: PathBuf,
    /// The writing end of the pause FIFO while the session is held at its pause point;
    /// closing it lets the session go on.
    resume: Option<File>,
    policy_label: String,
    mode: &'static str,
    lossy: bool,
    events_path: PathBuf,
}

impl Running {
    /// Waits until the session's script sits at its [`Script::pause`] point. Until
    /// [`Running::finish`], the guard is loaded and the session alive: what the test does
    /// meanwhile is what a bystander on the same machine does.
    pub fn wait_for_pause(&mut self) {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        loop {
            // Non-blocking open for writing succeeds only once a reader has the FIFO open.
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo)
            {
                Ok(file) => {
                    self.resume = Some(file);
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                Err(e) => panic!("open {}: {e}", self.fifo.display()),
            }
            self.assert_alive("before reaching its pause point");
            assert!(
                Instant::now() < deadline,
                "the session never reached its pause point"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `path` exists (a marker the command writes).
    pub fn wait_for_file(&mut self, path: &std::path::Path) {
        let deadline = Instant::now() + SESSION_TIMEOUT;
        while !path.exists() {
            self.assert_alive(&format!("before creating {}", path.display()));
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) of our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
            panic!(
                "agent-guard run ended ({status}) {when}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
    }

    /// Waits for `run` to end (it waits for every process of the session) and checks the
    /// session's reports.
    pub fn finish(mut self) -> Session {
        self.resume = None;
        let deadline = Instant::now() + SESSION_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for run") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "agent-guard run did not end within {SESSION_TIMEOUT:?}; stderr:\n{}",
                    self.stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ended = SystemTime::now();
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        let session = Session {
            run_pid: self.child.id(),
            status,
            outcomes: outcomes(&stdout),
            summary: Summary::find(&stderr),
            log: EventLog::parse(&fs::read_to_string(&self.events_path).unwrap_or_default()),
            stdout,
            stderr,
            started: self.started,
            ended,
            policy_label: self.policy_label,
            mode: self.mode,
            lossy: self.lossy,
            events_path: self.events_path,
        };
        session.check_reports();
        session
    }
}

/// A finished `run`.
pub struct Session {
    pub run_pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub summary: Option<Summary>,
    pub log: EventLog,
    outcomes: HashMap<String, Outcome>,
    started: SystemTime,
    ended: SystemTime,
    policy_label: String,
    mode: &'static str,
    lossy: bool,
    events_path: PathBuf,
}

impl Session {
    /// `run`'s exit code; panics if it was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "agent-guard run was killed by signal {:?}; stderr:\n{}",
                self.status.signal(),
                self.stderr
            )
        })
    }

    /// What the probe labelled `label` printed.
    pub fn outcome(&self, label: &str) -> &Outcome {
        self.outcomes.get(label).unwrap_or_else(|| {
            panic!(
                "no outcome for `{label}`; stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Checks the result (`ok`, `EPERM`, ...) of every labelled probe at once and reports
    /// every mismatch together, with the session's output and events.
    pub fn assert_results(&self, expected: &[(&str, &str)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(label, want)| {
                let got = self
                    .outcomes
                    .get(label)
                    .map_or("no outcome", |o| o.result.as_str());
                (got != want).then(|| format!("  {label}: expected {want}, got {got}"))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "unexpected results:\n{}\nstdout:\n{}\nstderr:\n{}\nevents:\n{}",
            wrong.join("\n"),
            self.stdout,
            self.stderr,
            self.log
                .decisions
                .iter()
                .map(|e| e.line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    pub fn summary(&self) -> &Summary {
        self.summary.as_ref().unwrap_or_else(|| {
            panic!(
                "agent-guard run printed no summary line (exit {}); stderr:\n{}",
                self.status, self.stderr
            )
        })
    }

    /// Exactly these decisions were reported, each with all its fields right.
    pub fn assert_decisions(&self, expected: &[Expect]) {
        check_decisions(&self.log.decisions, expected);
    }

    fn check_reports(&self) {
        // Every `Run` is meant to start a session (a bad policy is tested without `Run`):
        // no summary means the guard refused to start or crashed, and stderr says why.
        let summary = self.summary();
        let code = self
            .status
            .code()
            .or_else(|| self.status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        let ctx = || format!("summary: {summary:?}\nstderr:\n{}", self.stderr);
        assert_eq!(
            summary.status,
            code,
            "summary status vs exit status; {}",
            ctx()
        );
        assert_eq!(summary.mode, self.mode, "summary mode; {}", ctx());
        assert_eq!(
            summary.policy,
            self.policy_label,
            "summary policy; {}",
            ctx()
        );
        assert_eq!(
            summary.destination,
            self.events_path.display().to_string(),
            "summary destination; {}",
            ctx()
        );
        assert!(
            summary.session.len() == 8 && summary.session.bytes().all(|b| b.is_ascii_hexdigit()),
            "session id is 8 hex digits; {}",
            ctx()
        );
        if self.lossy {
            assert_eq!(
                summary.lost,
                self.log.lost,
                "lost in the summary vs lost-events lines; {}",
                ctx()
            );
        } else {
            assert_eq!(
                (summary.lost, self.log.lost),
                (0, 0),
                "events were lost, so this run proves nothing about reporting; {}",
                ctx()
            );
        }
        let count = |decision: &str| {
            self.log
                .decisions
                .iter()
                .filter(|e| e.decision == decision)
                .count() as u64
        };
        assert_eq!(
            summary.denied,
            count("deny") + if self.lossy { summary.lost } else { 0 },
            "denied count vs events (and lost events); {}",
            ctx()
        );
        assert_eq!(
            summary.audited,
            count("audit"),
            "audited count vs events; {}",
            ctx()
        );
        assert_eq!(
            summary.written,
            self.log.lines as u64,
            "events written vs lines in {}; {}",
            self.events_path.display(),
            ctx()
        );
        let earliest = self.started - Duration::from_secs(2);
        let latest = self.ended + Duration::from_secs(2);
        for e in &self.log.decisions {
            assert_eq!(
                e.session, summary.session,
                "event of another session: {}",
                e.line
            );
            assert_eq!(e.policy, self.policy_label, "event policy: {}", e.line);
            let time = parse_rfc3339(&e.time)
                .unwrap_or_else(|| panic!("time is not RFC 3339: {}", e.line));
            assert!(
                earliest <= time && time <= latest,
                "event time is outside the run ({:?} .. {:?}): {}",
                self.started,
                self.ended,
                e.line
            );
            match e.decision.as_str() {
                "deny" => assert!(e.errno > 0 && e.errno_name.is_some(), "{}", e.line),
                "audit" => assert!(e.errno == 0 && e.errno_name.is_none(), "{}", e.line),
                other => panic!("unknown decision {other:?}: {}", e.line),
            }
        }
    }
}
