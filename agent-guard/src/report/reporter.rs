//! From a decoded kernel event to a sealed line: enrichment (time, host, session,
//! ancestry, rule and hostnames) and the journal's sequence number and chain link.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{
    ancestry::Ancestry,
    ecs::{self, Ancestor, Report, SessionFacts, Stamp},
    Line,
};
use crate::{
    audit::journal::{Journal, JournalError},
    events::{deciding_hostname, rfc3339_into, Clock, Decision},
};

/// What the reporter needs to know of a decision's session.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    pub policy: &'a str,
    pub mode: &'a str,
    /// The session's first process, where ancestry ends.
    pub root_pid: u32,
    pub rule_names: &'a [String],
    /// The hostnames of each rule, by the index events carry.
    pub rule_hosts: &'a [Vec<String>],
    /// Every hostname each address was found for.
    pub hostnames: &'a BTreeMap<IpAddr, Vec<String>>,
}

pub struct Reporter {
    journal: Journal,
    clock: Clock,
    host: String,
    ancestry: Ancestry,
    /// Reused for every decision: the ancestors of the process, parent and root below.
    line_of_ancestors: Vec<Ancestor>,
    ancestry_of: Option<(u32, u32, u32)>,
    /// Lines written (or, for lines that could not be written, sealed).
    pub sealed: u64,
}

impl Reporter {
    pub fn new(journal: Journal, clock: Clock) -> Self {
        Self {
            journal,
            clock,
            host: ecs::host_name(),
            ancestry: Ancestry::default(),
            line_of_ancestors: Vec::new(),
            ancestry_of: None,
            sealed: 0,
        }
    }

    /// Seals decision `d` of a session. A line that could not be written to the journal's
    /// output is still returned inside the error, for the other consumers.
    pub fn decision(
        &mut self,
        d: &Decision,
        session: &SessionView<'_>,
    ) -> Result<Line, JournalError> {
        let learnt = self.ancestry.learn(d.pid, d.ppid, &d.comm);
        // A process acting again, with nothing learnt meanwhile, has the same ancestors:
        // a flood from one process walks its tree once.
        let key = (d.pid, d.ppid, session.root_pid);
        if learnt || self.ancestry_of != Some(key) {
            if d.pid == session.root_pid {
                self.line_of_ancestors.clear();
            } else {
                self.ancestry
                    .of(d.ppid, session.root_pid, &mut self.line_of_ancestors);
            }
            self.ancestry_of = Some(key);
        }
        let mut time = [0u8; 27];
        rfc3339_into(self.clock.unix_ns(d.ktime_ns), &mut time);
        let timestamp = std::str::from_utf8(&time).unwrap_or("1970-01-01T00:00:00.000000Z");
        let facts = SessionFacts {
            policy: session.policy,
            mode: session.mode,
            rule_names: session.rule_names,
            hostname: deciding_hostname(d, session.rule_hosts, session.hostnames),
            ancestry: &self.line_of_ancestors,
        };
        let host = &self.host;
        let result = self.journal.append(|sequence, out| {
            let stamp = Stamp {
                timestamp,
                sequence,
                host,
            };
            ecs::write_decision(out, stamp, d, facts).map_err(std::io::Error::other)
        });
        self.count(result)
    }

    /// Seals a report about the reporting (session start and end, lost events, reloads,
    /// sink overflows), stamped now.
    pub fn report<F: Serialize>(&mut self, report: &Report<'_, F>) -> Result<Line, JournalError> {
        let timestamp = self.clock.now();
        let host = &self.host;
        let result = self.journal.append(|sequence, out| {
            let stamp = Stamp {
                timestamp: &timestamp,
                sequence,
                host,
            };
            ecs::write_report(out, stamp, report).map_err(std::io::Error::other)
        });
        self.count(result)
    }

    fn count(&mut self, result: Result<Line, JournalError>) -> Result<Line, JournalError> {
        if matches!(&result, Ok(_) | Err(JournalError::Write { .. })) {
            self.sealed += 1;
        }
        result
    }

    /// Writes the lines sealed since the last flush; hand lines on only after it.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.journal.flush()
    }

    /// Forgets the process tree, as when every session has ended.
    pub fn forget_processes(&mut self) {
        self.ancestry.clear();
        self.ancestry_of = None;
    }

    /// The last sequence number and chain hash.
    pub fn head(&self) -> (u64, String) {
        self.journal.head()
    }

    pub fn write_errors(&self) -> u64 {
        self.journal.write_errors()
    }
}
