//! Shell scripts that batch several probes into one guarded session, and the probe outcomes
//! they print.
//!
//! Every `run` costs seconds in the VM (program load, BTF, canary), so a test usually runs
//! one script: each probe line prints `LABEL RESULT pid=PID ppid=PPID`, and the test looks
//! the outcome up by label afterwards.
use std::{
    collections::HashMap,
    fs::File,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Command,
};

use crate::{
    fixture::{Fixture, PROBE},
    session::dup_into_place,
};

/// What one probe printed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub label: String,
    /// `ok` or an errno name.
    pub result: String,
    pub pid: u32,
    pub ppid: u32,
}

impl Outcome {
    /// Parses `RESULT pid=PID ppid=PPID`.
    pub fn parse(label: &str, text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let result = words.next()?.to_owned();
        let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
        let ppid = words.next()?.strip_prefix("ppid=")?.parse().ok()?;
        Some(Self {
            label: label.to_owned(),
            result,
            pid,
            ppid,
        })
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.result, "ok", "`{}` should have succeeded", self.label);
        self
    }

    /// The call failed with the errno named `result` (or succeeded, for `ok`).
    pub fn assert_result(&self, result: &str) -> &Self {
        assert_eq!(self.result, result, "`{}`", self.label);
        self
    }

    pub fn assert_eperm(&self) -> &Self {
        assert_eq!(
            self.result, "EPERM",
            "`{}` should have been refused with EPERM",
            self.label
        );
        self
    }
}

/// Probe outcomes by label, from a session's stdout.
pub fn outcomes(stdout: &str) -> HashMap<String, Outcome> {
    stdout
        .lines()
        .filter_map(|line| {
            let (label, rest) = line.split_once(' ')?;
            Some((label.to_owned(), Outcome::parse(label, rest)?))
        })
        .collect()
}

/// Quotes `s` for sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A sh script run as the session's command. `$P` is the probe.
pub struct Script {
    lines: Vec<String>,
    fifo: PathBuf,
}

impl Script {
    pub fn new(fx: &Fixture) -> Self {
        Self {
            // Exported, so that nested shells (nohup sh -c ...) find it too.
            lines: vec![format!("export P={}", quote(PROBE))],
            fifo: pause_fifo(fx),
        }
    }

    /// `ag-probe ARGS...`, its outcome recorded under `label`.
    pub fn probe(self, label: &str, args: &[&str]) -> Self {
        self.probe_via(label, &[], args)
    }

    /// `WRAPPER... ag-probe ARGS...` (unshare, setpriv, ...).
    pub fn probe_via(self, label: &str, wrapper: &[&str], args: &[&str]) -> Self {
        self.labelled(label, wrapper, "$P", args)
    }

    /// `WRAPPER... PROGRAM ARGS...` for a copy of the probe elsewhere.
    pub fn labelled(mut self, label: &str, wrapper: &[&str], program: &str, args: &[&str]) -> Self {
        assert!(!label.contains(char::is_whitespace), "labels are one word");
        let words: Vec<String> = wrapper.iter().map(|w| quote(w)).collect();
        let program = if program == "$P" {
            "\"$P\"".to_owned()
        } else {
            quote(program)
        };
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        self.lines.push(format!(
            "printf '%s ' {}; {} {} {}",
            quote(label),
            words.join(" "),
            program,
            args.join(" ")
        ));
        self
    }

    /// A raw shell line.
    pub fn sh(mut self, line: &str) -> Self {
        self.lines.push(line.to_owned());
        self
    }

    /// Blocks the session here until the test calls [`crate::session::Running::finish`], so
    /// the test can act as a bystander while the guard is loaded and the session alive.
    pub fn pause(mut self) -> Self {
        let fifo = quote(&self.fifo.display().to_string());
        self.lines.push(format!("cat {fifo} >/dev/null"));
        self
    }

    pub fn argv(&self) -> Vec<String> {
        vec!["sh".into(), "-c".into(), self.lines.join("\n")]
    }
}

/// The FIFO a paused script reads from; the test opening it for writing means "go on".
pub fn pause_fifo(fx: &Fixture) -> PathBuf {
    fx.root.join("pause.fifo")
}

impl Fixture {
    /// Runs the probe from the test process itself: a bystander in no session.
    pub fn outsider(&self, args: &[&str]) -> Outcome {
        self.outsider_via(&[], args)
    }

    /// `WRAPPER... ag-probe ARGS...` from the test process (e.g. setpriv to another user).
    pub fn outsider_via(&self, wrapper: &[&str], args: &[&str]) -> Outcome {
        self.outsider_with(wrapper, &[], args)
    }

    /// The probe from the test process, with `file` as descriptor `number` (as a session's
    /// command gets it from [`crate::session::Run::inherit`]).
    pub fn outsider_inheriting(&self, fds: &[(&File, RawFd)], args: &[&str]) -> Outcome {
        self.outsider_with(&[], fds, args)
    }

    fn outsider_with(&self, wrapper: &[&str], fds: &[(&File, RawFd)], args: &[&str]) -> Outcome {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.push(PROBE);
        argv.extend_from_slice(args);
        let fds: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).current_dir(&self.ws);
        // SAFETY: the closure only calls dup2, which is async-signal-safe.
        unsafe { cmd.pre_exec(move || dup_into_place(&fds)) };
        let out = cmd.output().unwrap_or_else(|e| panic!("run {argv:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let label = format!("outsider {}", args.join(" "));
        Outcome::parse(&label, &stdout).unwrap_or_else(|| {
            panic!(
                "{argv:?} printed no outcome; stdout: {stdout}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}
