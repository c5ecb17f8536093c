//! Who is on the other end of the control socket, from the kernel's SO_PEERCRED and
//! /proc, never from what the client says.
use std::path::Path;

/// A connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the peer holds group `gid`, as its primary or a supplementary group. The
    /// socket's mode already keeps others out; this is checked again per request.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || supplementary_groups(self.pid).contains(&gid)
    }
}

/// The `Groups:` of /proc/PID/status.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    status_field(pid, "Groups:")
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|rest| rest.trim().to_owned())
}

/// The real user id of `pid`.
pub fn uid_of(pid: u32) -> Option<u32> {
    status_field(pid, "Uid:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The id of group `name`, if the host has it.
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let me = std::process::id();
        assert_eq!(uid_of(me), Some(nix::unistd::getuid().as_raw()));
        assert!(alive(me));
        let peer = Peer {
            pid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        assert!(peer.in_group(nix::unistd::getgid().as_raw()));
    }
}
