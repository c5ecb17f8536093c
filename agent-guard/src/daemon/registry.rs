//! The daemon's sessions: what it knows of each, kept on disk too so that a restarted
//! daemon can adopt the sessions the pinned programs kept guarding.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{events::session_label, network::live::LiveNetwork};

/// What a session is, as written to `<state_dir>/sessions/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub session: u32,
    /// `run` or `attach`.
    pub origin: String,
    /// Who asked for it.
    pub uid: u32,
    /// The first process (`run`) or the root of the attached tree.
    pub root_pid: u32,
    pub command: String,
    pub cwd: PathBuf,
    pub policy: String,
    pub mode: String,
    /// Seconds since the epoch.
    pub started: u64,
    /// Names of the rules by the index events carry, and the hostnames of each.
    pub rule_names: Vec<String>,
    pub rule_hosts: Vec<Vec<String>>,
    /// The attached cgroup, if any.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// Counts of a session's decisions.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub denied: u64,
    pub audited: u64,
    pub allowed: u64,
}

impl Counts {
    pub fn add(&mut self, decision: &str) {
        match decision {
            "deny" => self.denied += 1,
            "audit" => self.audited += 1,
            _ => self.allowed += 1,
        }
    }
}

/// A session the daemon guards.
pub struct Session {
    pub record: SessionRecord,
    pub counts: Counts,
    /// The first process of a `run` until its exec enrolled it.
    pub pending: Option<u32>,
    /// The `run` client until it has confirmed its command's start. A command quick
    /// enough to exit before that must not take the session with it: the client would be
    /// told there is no such session, and kill what it had started.
    pub unconfirmed_client: Option<u32>,
    /// Hostname refreshes; `None` for a session adopted from a previous daemon, whose
    /// installed tables stay as they were.
    pub network: Option<LiveNetwork>,
    /// Hostnames seen at each address, for events of an adopted session.
    pub seen: BTreeMap<IpAddr, Vec<String>>,
}

impl Session {
    pub fn hostnames(&self) -> &BTreeMap<IpAddr, Vec<String>> {
        self.network.as_ref().map_or(&self.seen, |n| &n.seen)
    }

    /// What `sessions` shows.
    pub fn describe(&self, members: usize) -> serde_json::Value {
        serde_json::json!({
            "session": session_label(self.record.session),
            "origin": self.record.origin,
            "uid": self.record.uid,
            "pid": self.record.root_pid,
            "command": self.record.command,
            "policy": self.record.policy,
            "mode": self.record.mode,
            "age_seconds": now().saturating_sub(self.record.started),
            "processes": members,
            "denied": self.counts.denied,
            "audited": self.counts.audited,
            "allowed": self.counts.allowed,
        })
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The records on disk.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("sessions"),
        }
    }

    fn file(&self, session: u32) -> PathBuf {
        self.dir.join(format!("{}.json", session_label(session)))
    }

    /// Writes a record atomically (write, then rename).
    pub fn save(&self, record: &SessionRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = self.file(record.session);
        let tmp = file.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
        std::fs::rename(tmp, file)
    }

    pub fn remove(&self, session: u32) {
        let _ = std::fs::remove_file(self.file(session));
    }

    /// Every readable record; unreadable files are returned by name to be reported.
    pub fn load_all(&self) -> (Vec<SessionRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (records, bad);
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(record) => records.push(record),
                None => bad.push(path.display().to_string()),
            }
        }
        records.sort_by_key(|r: &SessionRecord| r.started);
        (records, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let record = SessionRecord {
            session: 0x1234,
            origin: "run".into(),
            uid: 1000,
            root_pid: 42,
            command: "claude".into(),
            cwd: "/srv/ws".into(),
            policy: "p.toml".into(),
            mode: "enforce".into(),
            started: 1,
            rule_names: vec!["writable".into()],
            rule_hosts: vec![vec![]],
            cgroup: None,
        };
        store.save(&record).unwrap();
        std::fs::write(dir.path().join("sessions/junk.json"), "{").unwrap();
        let (records, bad) = store.load_all();
        assert_eq!(records, vec![record]);
        assert_eq!(bad.len(), 1);
        store.remove(0x1234);
        assert!(store.load_all().0.is_empty());
    }
}
