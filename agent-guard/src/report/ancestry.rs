//! Who started the acting process: its ancestors up to the session's first process.
//!
//! Each event tells a process's parent, so most of the tree is learnt from the events
//! themselves; a parent not seen acting yet is read once from /proc. A process that is
//! gone and was never seen ends the line: ancestry is what is still known, never guessed.
use std::collections::HashMap;

use super::ecs::Ancestor;

/// Beyond this many ancestors the line is cut: a deeper tree is rare and each step may
/// cost a /proc read.
const MAX_DEPTH: usize = 16;
/// The table is cleared when it grows past this; pids are reused, and a table of a
/// long-gone tree would only mislead.
const MAX_KNOWN: usize = 8192;

#[derive(Debug, Clone)]
struct Known {
    parent: u32,
    name: String,
}

#[derive(Debug, Default)]
pub struct Ancestry {
    known: HashMap<u32, Known>,
}

impl Ancestry {
    /// Records what an event said of process `pid`; true when that was news.
    pub fn learn(&mut self, pid: u32, parent: u32, name: &str) -> bool {
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        match self.known.get_mut(&pid) {
            // An exec changes the name: keep the newest.
            Some(k) if k.parent == parent && k.name == name => false,
            Some(k) => {
                k.parent = parent;
                name.clone_into(&mut k.name);
                true
            }
            None => {
                self.known.insert(
                    pid,
                    Known {
                        parent,
                        name: name.to_owned(),
                    },
                );
                true
            }
        }
    }

    /// The ancestors of a process whose parent is `parent`, nearest first, ending with the
    /// session's first process `root` (or earlier, where nothing more is known).
    pub fn of(&mut self, parent: u32, root: u32, into: &mut Vec<Ancestor>) {
        into.clear();
        let mut pid = parent;
        while pid > 1 && into.len() < MAX_DEPTH {
            let Some(known) = self.lookup(pid) else { break };
            into.push(Ancestor {
                pid,
                name: known.name.clone(),
            });
            if pid == root {
                break;
            }
            pid = known.parent;
        }
    }

    /// Forgets everything, as when the sessions it knew have ended.
    pub fn clear(&mut self) {
        self.known.clear();
    }

    fn lookup(&mut self, pid: u32) -> Option<Known> {
        if let Some(k) = self.known.get(&pid) {
            return Some(k.clone());
        }
        let (name, parent) = read_proc_stat(pid)?;
        self.learn(pid, parent, &name);
        Some(Known { parent, name })
    }
}

/// The name and parent in /proc/PID/stat (`pid (comm) state ppid ...`; the name may hold
/// spaces and parentheses, so it ends at the last `)`).
fn read_proc_stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((name, parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learnt_parents_make_the_line_up_to_the_root() {
        let mut a = Ancestry::default();
        a.learn(30, 20, "python3");
        a.learn(20, 10, "bash");
        a.learn(10, 5, "agent");
        let mut line = Vec::new();
        a.of(30, 10, &mut line);
        let pids: Vec<u32> = line.iter().map(|x| x.pid).collect();
        assert_eq!(pids, [30, 20, 10]);
        assert_eq!(line[1].name, "bash");
    }

    #[test]
    fn unknown_parents_are_read_from_proc() {
        let mut a = Ancestry::default();
        let me = std::process::id();
        let mut line = Vec::new();
        a.of(me, 0, &mut line);
        assert_eq!(line[0].pid, me);
        let (name, _) = read_proc_stat(me).unwrap();
        assert_eq!(line[0].name, name);
    }

    #[test]
    fn a_gone_unknown_process_ends_the_line() {
        let mut a = Ancestry::default();
        a.learn(40, 4_000_000, "sh"); // above the kernel's pid limit: never a process
        let mut line = Vec::new();
        a.of(40, 1, &mut line);
        assert_eq!(line.len(), 1);
    }
}
