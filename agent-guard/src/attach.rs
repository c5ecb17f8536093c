//! Attaching: putting processes that are already running into a session.
//!
//! A session started by `run` enrols its command at exec and every descendant at fork. A
//! process tree that is already running cannot be enrolled that way, so its processes (by
//! tgid) and cgroups (by cgroup v2 id) go into the `ATTACH_TGID` and `ATTACH_CGROUP` maps
//! instead. The kernel side moves each of their tasks into the session at the first hook it
//! reaches, before the operation is decided, and every task they fork from then on joins at
//! fork as usual. A process whose own tasks have already joined another session stays in
//! that one.
//!
//! What attaching cannot reach: a process that left the tree (double fork, re-parenting to
//! init) between the start of the tree and the enumeration here is not found under the
//! root. Attach the cgroup of a service to cover everything started in it.
use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::MapError;

use crate::{
    bpf::{Guard, LoadError},
    session::parent_of,
};

/// `statfs::f_type` of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Enumerations of the tree after which new processes still appearing is an error: every
/// enumeration attaches all it found, and an attached process's forks join by themselves,
/// so only forks that raced with the previous enumeration can appear in the next.
const MAX_ROUNDS: usize = 64;

/// Deepest cgroup hierarchy below an attached cgroup; a deeper one is refused rather than
/// attached in part.
const MAX_CGROUP_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("opening the attach maps")]
    Open(#[from] LoadError),
    #[error("process {pid} does not exist")]
    NoProcess { pid: u32 },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a directory of the cgroup v2 hierarchy")]
    NotCgroup { path: PathBuf },
    #[error("{path} lies more than {MAX_CGROUP_DEPTH} cgroups below the one to attach")]
    CgroupTooDeep { path: PathBuf },
    #[error("the processes to attach include agent-guard itself (pid {pid})")]
    IncludesGuard { pid: u32 },
    #[error("new processes kept appearing under {root} after {MAX_ROUNDS} enumerations")]
    NoFixpoint { root: u32 },
    #[error("writing the `{map}` map for session {session:08x}")]
    Write {
        map: &'static str,
        session: u32,
        #[source]
        source: MapError,
    },
}

impl Guard {
    /// Attaches the process `root` and every process below it to `session`, which must
    /// have been added with [`Guard::add_session`]. The tree is enumerated again after each
    /// round of attachments until a round finds no new process, so a fork that raced with
    /// the enumeration is attached too. Returns the tgids attached, in order.
    ///
    /// On an error some processes may already be attached; [`Guard::detach_all`] undoes it.
    pub fn attach_pids(&mut self, session: u32, root: u32) -> Result<Vec<u32>, AttachError> {
        if !Path::new(&format!("/proc/{root}")).exists() {
            return Err(AttachError::NoProcess { pid: root });
        }
        self.switch_on()?;
        self.attach_until_settled(session, root, || descendants(root))
    }

    /// Attaches the cgroup v2 directory `path` and every cgroup below it to `session`: a
    /// task in one of them joins at its first hooked operation or exec, whoever started it.
    /// The processes already in them are attached by tgid too (until a round of reading
    /// `cgroup.procs` finds no new one), so that each is in the session even before it
    /// reaches a hook. Returns the tgids attached.
    pub fn attach_cgroup(&mut self, session: u32, path: &Path) -> Result<Vec<u32>, AttachError> {
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| AttachError::Read { path, source }
        };
        let root = fs::canonicalize(path).map_err(read_error(path))?;
        if !is_cgroup2(&root) {
            return Err(AttachError::NotCgroup { path: root });
        }
        let mut cgroups = Vec::new();
        collect_cgroups(&root, 0, &mut cgroups)?;
        self.switch_on()?;
        {
            let mut map = self.hash_map::<u64, u32>("ATTACH_CGROUP")?;
            for dir in &cgroups {
                let id = fs::metadata(dir).map_err(read_error(dir))?.ino();
                map.insert(id, session, 0)
                    .map_err(|source| AttachError::Write {
                        map: "ATTACH_CGROUP",
                        session,
                        source,
                    })?;
            }
        }
        self.attach_until_settled(session, 0, || cgroup_procs(&cgroups))
    }

    /// Attaches what `find` lists, again and again, until a round lists no process that
    /// is not in the session yet. A process forked by an attached one joined at its fork:
    /// only those that raced with the previous round are left, so a tree that keeps forking
    /// still comes to an end. `root` names the tree in the error when it does not.
    fn attach_until_settled(
        &mut self,
        session: u32,
        root: u32,
        mut find: impl FnMut() -> Result<BTreeSet<u32>, AttachError>,
    ) -> Result<Vec<u32>, AttachError> {
        let mut attached = Vec::new();
        let mut known = BTreeSet::new();
        for _ in 0..MAX_ROUNDS {
            let found = find()?;
            let new: Vec<u32> = found
                .difference(&known)
                .copied()
                .filter(|&pid| !matches!(self.session_of(pid), Ok(Some(s)) if s == session))
                .collect();
            if new.is_empty() {
                self.refresh_switch()?;
                return Ok(attached);
            }
            self.attach_tgids(session, &new)?;
            known.extend(&new);
            attached.extend(new);
        }
        Err(AttachError::NoFixpoint { root })
    }

    /// Removes every process and cgroup attachment of `session`. Tasks that have already
    /// joined stay in the session until they exit, as members always do.
    pub fn detach_all(&mut self, session: u32) -> Result<(), AttachError> {
        {
            let mut map = self.hash_map::<u32, u32>("ATTACH_TGID")?;
            let mine: Vec<u32> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|&(_, s)| s == session)
                .map(|(tgid, _)| tgid)
                .collect();
            for tgid in mine {
                let _ = map.remove(&tgid);
            }
        }
        {
            let mut map = self.hash_map::<u64, u32>("ATTACH_CGROUP")?;
            let mine: Vec<u64> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|&(_, s)| s == session)
                .map(|(id, _)| id)
                .collect();
            for id in mine {
                let _ = map.remove(&id);
            }
        }
        self.refresh_switch()
    }

    /// How many members `session` has: its tasks in the kernel's table, plus the attached
    /// processes that still exist (a process may be counted once as attached and once per
    /// thread that joined). Zero once every member has exited; a daemon polls this to know
    /// when an attached session is over. Processes of an attached cgroup count once they
    /// have joined or were attached by tgid.
    pub fn session_members(&mut self, session: u32) -> usize {
        let tasks = self.hash_map::<u64, u32>("TASKS").map_or(0, |map| {
            map.iter()
                .filter_map(Result::ok)
                .filter(|&(_, s)| s == session)
                .count()
        });
        let attached = self.hash_map::<u32, u32>("ATTACH_TGID").map_or(0, |map| {
            map.iter()
                .filter_map(Result::ok)
                .filter(|&(tgid, s)| s == session && Path::new(&format!("/proc/{tgid}")).exists())
                .count()
        });
        tasks + attached
    }

    /// The processes attached to `session` by tgid, as the kernel's table holds them: the
    /// kernel side removes each as its group leader is freed.
    pub fn attached_processes(&mut self, session: u32) -> Vec<u32> {
        self.hash_map::<u32, u32>("ATTACH_TGID")
            .map_or(Vec::new(), |map| {
                map.iter()
                    .filter_map(Result::ok)
                    .filter(|&(_, s)| s == session)
                    .map(|(tgid, _)| tgid)
                    .collect()
            })
    }

    fn attach_tgids(&mut self, session: u32, tgids: &[u32]) -> Result<(), AttachError> {
        let own = std::process::id();
        if tgids.contains(&own) {
            return Err(AttachError::IncludesGuard { pid: own });
        }
        let mut map = self.hash_map::<u32, u32>("ATTACH_TGID")?;
        for &tgid in tgids {
            map.insert(tgid, session, 0)
                .map_err(|source| AttachError::Write {
                    map: "ATTACH_TGID",
                    session,
                    source,
                })?;
        }
        Ok(())
    }

    /// Turns the kernel side's attach lookups on before entries go in.
    fn switch_on(&mut self) -> Result<(), AttachError> {
        let mut active = self.array::<u32>("ATTACH_ACTIVE")?;
        let count = active.get(&0, 0).unwrap_or(0);
        if count == 0 {
            active.set(0, 1, 0).map_err(|source| AttachError::Write {
                map: "ATTACH_ACTIVE",
                session: 0,
                source,
            })?;
        }
        Ok(())
    }

    /// Sets the switch to the number of attach entries left (0 turns the lookups off).
    fn refresh_switch(&mut self) -> Result<(), AttachError> {
        let tgids = self.hash_map::<u32, u32>("ATTACH_TGID")?.keys().count();
        let cgroups = self.hash_map::<u64, u32>("ATTACH_CGROUP")?.keys().count();
        let count = u32::try_from(tgids + cgroups).unwrap_or(u32::MAX);
        self.array::<u32>("ATTACH_ACTIVE")?
            .set(0, count, 0)
            .map_err(|source| AttachError::Write {
                map: "ATTACH_ACTIVE",
                session: 0,
                source,
            })
    }
}

/// `root` and every process below it, from the parent pids in /proc.
fn descendants(root: u32) -> Result<BTreeSet<u32>, AttachError> {
    let proc_dir = Path::new("/proc");
    let entries = fs::read_dir(proc_dir).map_err(|source| AttachError::Read {
        path: proc_dir.to_owned(),
        source,
    })?;
    let mut parents = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that exited since the listing has no children to find.
        if let Some(ppid) = parent_of(pid) {
            parents.push((pid, ppid));
        }
    }
    let mut tree = BTreeSet::from([root]);
    // Each pass adds the children of what is already in; a pass that adds nothing ends it.
    loop {
        let before = tree.len();
        for &(pid, ppid) in &parents {
            if tree.contains(&ppid) {
                tree.insert(pid);
            }
        }
        if tree.len() == before {
            return Ok(tree);
        }
    }
}

/// The processes of `cgroups`, from their `cgroup.procs`.
fn cgroup_procs(cgroups: &[PathBuf]) -> Result<BTreeSet<u32>, AttachError> {
    let mut found = BTreeSet::new();
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        match fs::read_to_string(&procs) {
            Ok(text) => found.extend(text.lines().filter_map(|l| l.parse::<u32>().ok())),
            // A cgroup removed since the walk has no processes left.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AttachError::Read {
                    path: procs,
                    source,
                })
            }
        }
    }
    Ok(found)
}

fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed statfs for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == CGROUP2_SUPER_MAGIC && path.join("cgroup.procs").exists()
}

/// `dir` and the cgroups below it, to [`MAX_CGROUP_DEPTH`] levels.
fn collect_cgroups(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), AttachError> {
    if depth > MAX_CGROUP_DEPTH {
        return Err(AttachError::CgroupTooDeep {
            path: dir.to_owned(),
        });
    }
    out.push(dir.to_owned());
    let entries = fs::read_dir(dir).map_err(|source| AttachError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroups(&entry.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_of_this_process_holds_it_and_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let tree = descendants(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&std::process::id()));
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(!tree.contains(&1));
    }

    #[test]
    fn parent_pids_are_read_past_odd_command_names() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
