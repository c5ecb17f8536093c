//! What a test expects to be reported: each expected decision matches exactly one event,
//! carries every field right, and no event is left over.
use crate::{events::Event, script::Outcome};

/// How an expected event's paths are compared.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// The path was cut short (`path_truncated`); only its leaf end is known.
    EndsWith(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::EndsWith(suffix) => path.ends_with(suffix.as_str()),
        }
    }
}

/// Who is expected to have acted.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An `ag-probe` run whose pid and ppid it printed itself.
    Probe { pid: u32, ppid: u32 },
    /// A process whose pid the test cannot know from outside (pid namespaces).
    AnyPid,
}

/// One decision a test expects, with every field it must carry.
#[derive(Debug, Clone)]
pub struct Expect {
    pub op: String,
    pub paths: Vec<PathMatch>,
    pub rule: String,
    pub decision: String,
    pub actor: Actor,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: String,
    /// io_uring may run the operation in a kernel worker thread of the process
    /// (`iou-wrk-TID`): pid is the process, tid and comm are the worker's.
    pub io_worker_allowed: bool,
    pub truncated: bool,
    /// The errno a denial carries.
    pub errno: (i32, &'static str),
    /// The process the operation was aimed at (signal, ptrace); `None`: no such field.
    pub target_pid: Option<u32>,
    /// Further fields the event must carry with these values (`signal`, `kernel_object`).
    pub fields: Vec<(&'static str, serde_json::Value)>,
}

/// A denial of `op` on `paths` by `rule`, done by the probe run that printed `by`.
pub fn deny(op: &str, paths: &[&str], rule: &str, by: &Outcome) -> Expect {
    Expect {
        op: op.to_owned(),
        paths: paths
            .iter()
            .map(|p| PathMatch::Exact((*p).to_owned()))
            .collect(),
        rule: rule.to_owned(),
        decision: "deny".to_owned(),
        actor: Actor::Probe {
            pid: by.pid,
            ppid: by.ppid,
        },
        uid: 0,
        gid: 0,
        comm: "ag-probe".to_owned(),
        exe: crate::fixture::probe_exe(),
        io_worker_allowed: false,
        truncated: false,
        errno: (libc::EPERM, "EPERM"),
        target_pid: None,
        fields: Vec::new(),
    }
}

impl Expect {
    /// Audit mode: the same finding, allowed.
    /// A refused read: EACCES rather than EPERM.
    pub fn eacces(mut self) -> Self {
        self.errno = (libc::EACCES, "EACCES");
        self
    }

    pub fn audited(mut self) -> Self {
        self.decision = "audit".to_owned();
        self
    }

    pub fn ids(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn any_pid(mut self) -> Self {
        self.actor = Actor::AnyPid;
        self
    }

    /// A copy of the probe under another name (the setuid copy).
    pub fn program(mut self, exe: &str) -> Self {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        self.comm = name.chars().take(15).collect();
        self.exe = exe.to_owned();
        self
    }

    pub fn via_io_uring(mut self) -> Self {
        self.io_worker_allowed = true;
        self
    }

    /// The path was too deep to render whole: compare the tail `suffix` of the first path.
    pub fn truncated_path(mut self, suffix: &str) -> Self {
        self.paths[0] = PathMatch::EndsWith(suffix.to_owned());
        self.truncated = true;
        self
    }

    /// Aimed at process `pid`.
    pub fn target(mut self, pid: u32) -> Self {
        self.target_pid = Some(pid);
        self
    }

    /// The event also carries `name` with `value`.
    pub fn field(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    fn describe(&self) -> String {
        format!(
            "{} {} of {:?} ({}; target {:?}, {:?})",
            self.decision, self.op, self.paths, self.rule, self.target_pid, self.fields
        )
    }

    fn identifies(&self, e: &Event) -> bool {
        e.op == self.op
            && e.target_pid == self.target_pid
            && self
                .fields
                .iter()
                .all(|(name, value)| e.object.get(*name) == Some(value))
            && e.paths.len() == self.paths.len()
            && self.paths.iter().zip(&e.paths).all(|(m, p)| m.matches(p))
            && match self.actor {
                Actor::Probe { pid, .. } => e.pid == pid,
                Actor::AnyPid => true,
            }
    }

    /// Panics unless `e` carries every field this expectation names.
    fn check(&self, e: &Event) {
        let ctx = || format!("event for {}:\n  {}", self.describe(), e.line);
        assert_eq!(e.decision, self.decision, "decision; {}", ctx());
        assert_eq!(e.rule, self.rule, "rule; {}", ctx());
        if self.decision == "deny" {
            assert_eq!(
                (e.errno, e.errno_name.as_deref()),
                (self.errno.0 as u32, Some(self.errno.1)),
                "errno; {}",
                ctx()
            );
        }
        assert_eq!((e.uid, e.gid), (self.uid, self.gid), "uid, gid; {}", ctx());
        match self.actor {
            Actor::Probe { ppid, .. } => assert_eq!(e.ppid, ppid, "ppid; {}", ctx()),
            Actor::AnyPid => assert!(e.ppid > 0, "ppid; {}", ctx()),
        }
        let io_worker = self.io_worker_allowed && e.comm.starts_with("iou-wrk");
        if !io_worker {
            assert_eq!(e.comm, self.comm, "comm; {}", ctx());
            assert_eq!(e.tid, e.pid, "tid of a single-threaded process; {}", ctx());
        }
        assert_eq!(e.exe.as_deref(), Some(self.exe.as_str()), "exe; {}", ctx());
        assert_eq!(
            e.path_truncated,
            self.truncated,
            "path_truncated; {}",
            ctx()
        );
        for path in &e.paths {
            // A path cut short is marked with a leading "…" in place of its missing top.
            let absolute = path.starts_with('/') || (self.truncated && path.starts_with("…/"));
            assert!(absolute, "paths are absolute, or marked as cut; {}", ctx());
            if !self.truncated {
                assert!(
                    !path.split('/').any(|c| c == ".." || c == "."),
                    "paths are resolved; {}",
                    ctx()
                );
            }
        }
    }
}

/// Checks `events` against `expected`: each expectation matches exactly one event, which
/// carries all the expected fields, and no event is left over (an extra event is either an
/// over-eager denial or a bystander that was reported).
pub fn check_decisions(events: &[Event], expected: &[Expect]) {
    let all = || {
        events
            .iter()
            .map(|e| format!("  {}", e.line))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut used = vec![false; events.len()];
    for want in expected {
        let found: Vec<usize> = (0..events.len())
            .filter(|&i| want.identifies(&events[i]))
            .collect();
        match found.as_slice() {
            [i] => {
                want.check(&events[*i]);
                used[*i] = true;
            }
            [] => panic!(
                "no event for {} by {:?}; events:\n{}",
                want.describe(),
                want.actor,
                all()
            ),
            _ => panic!(
                "{} events for {}; events:\n{}",
                found.len(),
                want.describe(),
                all()
            ),
        }
    }
    let extra: Vec<&str> = events
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(e, _)| e.line.as_str())
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected events:\n  {}",
        extra.join("\n  ")
    );
}
