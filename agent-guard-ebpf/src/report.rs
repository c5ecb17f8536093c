//! Decisions: the verdict for a session's mode, and the event that reports it.
use core::mem::size_of;

use agent_guard_common::{
    EventHeader, DECISION_AUDIT, DECISION_DENY, EPERM, EVENT_DATA_LEN, EVENT_DECISION,
    FLAG_ABSTRACT_NAME, FLAG_NETWORK, FLAG_PATH_TRUNCATED, MODE_AUDIT, PATH_EXE, PATH_TARGET,
    PATH_TARGET2, STAT_AUDITED, STAT_DENIED, STAT_LOST_EVENTS,
};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_probe_read_kernel,
};

use agent_guard_common::{ACTION_ALLOW, ACTION_AUDIT};

use crate::{
    kernel::{current_task, file_path, off, path_parts, read_u32, read_u64},
    maps::{EVENTS, SCRATCH, STATS},
    network::bounded_name_len,
    scope::{render, session_config, Checked},
};

/// A location to print in an event: a dentry and the mount it was reached through.
#[derive(Clone, Copy)]
pub struct Location {
    pub mnt: u64,
    pub dentry: u64,
}

/// What a hook found: the operation, the rule that refuses it, and where.
pub struct Finding {
    pub op: u32,
    pub rule: u32,
    pub errno: i32,
    pub target: Option<Location>,
    pub target2: Option<Location>,
    /// Process the operation was aimed at (tgid), and its detail (signal, mode, command).
    pub target_pid: u32,
    pub detail: u32,
    /// The socket and destination of a network operation.
    pub net: Option<NetTarget>,
}

/// What a network event reports besides the process: the socket and the address.
#[derive(Clone, Copy, Default)]
pub struct NetTarget {
    pub family: u16,
    pub protocol: u16,
    pub socket_type: u16,
    pub port: u16,
    /// IPv6 form; IPv4 addresses IPv4-mapped.
    pub addr: [u8; 16],
    /// Kernel address and length of an abstract unix socket name (without its leading
    /// NUL); 0 when there is none.
    pub abstract_name: u64,
    pub abstract_len: u32,
}

/// Reports `finding` and returns the hook's verdict: `-errno` in enforce mode, `allow` (the
/// verdict the hook was given) in audit mode.
#[inline(always)]
pub fn decide(session: u32, finding: &Finding, allow: i32) -> i32 {
    settle(session, finding, allow, false)
}

/// Like [`decide`], but `audit_rule` marks a finding whose rule only audits: it is reported
/// and allowed whatever the session's mode.
#[inline(always)]
fn settle(session: u32, finding: &Finding, allow: i32, audit_rule: bool) -> i32 {
    // A session without settings is enforcing: fail closed.
    let audit = audit_rule || session_config(session).mode == MODE_AUDIT;
    let (decision, verdict, stat) = if audit {
        (DECISION_AUDIT, allow, STAT_AUDITED)
    } else {
        (DECISION_DENY, -finding.errno, STAT_DENIED)
    };
    bump(stat);
    emit(
        session,
        finding,
        decision,
        if audit { 0 } else { finding.errno as u32 },
    );
    verdict
}

/// Whether `session` runs in audit mode. A session without settings is enforcing: fail
/// closed.
#[inline(always)]
pub fn audit_mode(session: u32) -> bool {
    session_config(session).mode == MODE_AUDIT
}

/// Convenience for the common case: `op` refused with EPERM by `rule` at `target`.
#[inline(always)]
pub fn deny_at(session: u32, op: u32, rule: u32, target: Location, allow: i32) -> i32 {
    decide(session, &Finding::at(op, rule, EPERM, target), allow)
}

/// Carries out what the policy said about `op` at `target`: nothing for allow, a report
/// for audit, a refusal with `errno` (and a report) for deny.
#[inline(always)]
pub fn apply(
    session: u32,
    op: u32,
    checked: Checked,
    errno: i32,
    target: Location,
    allow: i32,
) -> i32 {
    apply_finding(
        session,
        checked,
        Finding::at(op, checked.rule, errno, target),
        allow,
    )
}

/// [`apply`] for a finding the caller built (two paths, a detail).
#[inline(always)]
pub fn apply_finding(session: u32, checked: Checked, finding: Finding, allow: i32) -> i32 {
    match checked.action {
        ACTION_ALLOW => allow,
        ACTION_AUDIT => settle(session, &finding, allow, true),
        _ => settle(session, &finding, allow, false),
    }
}

impl Finding {
    /// `op` at `target`, decided by `rule`.
    #[inline(always)]
    pub fn at(op: u32, rule: u32, errno: i32, target: Location) -> Self {
        Self {
            op,
            rule,
            errno,
            target: Some(target),
            target2: None,
            target_pid: 0,
            detail: 0,
            net: None,
        }
    }
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn emit(session: u32, finding: &Finding, decision: u32, errno: u32) {
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        bump(STAT_LOST_EVENTS);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let task = current_task();
    {
        // SAFETY: the per-CPU scratch event belongs to this program run; this borrow ends
        // before `render` writes the path slots through its own pointer.
        let h = unsafe { &mut (*event).header };
        h.kind = EVENT_DECISION;
        h.op = finding.op;
        h.session = session;
        h.decision = decision;
        h.rule = finding.rule;
        h.errno = errno;
        h.pid = (pid_tgid >> 32) as u32;
        h.tid = pid_tgid as u32;
        h.ppid = read_u64(task, off!(task_real_parent))
            .and_then(|parent| read_u32(parent, off!(task_tgid)))
            .unwrap_or(0);
        h.uid = uid_gid as u32;
        h.gid = (uid_gid >> 32) as u32;
        // SAFETY: the helper has no preconditions.
        h.ktime_ns = unsafe { bpf_ktime_get_ns() };
        h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        h.target_pid = finding.target_pid;
        h.detail = finding.detail;
        let net = finding.net.unwrap_or_default();
        h.family = net.family;
        h.protocol = net.protocol;
        h.socket_type = net.socket_type;
        h.port = net.port;
        h.addr = net.addr;
        h._pad = 0;
    }
    // Paths follow one another in the data; each starts where the previous one ended.
    let mut lens = [0u16; 3];
    let mut flags = 0u32;
    let mut used = 0usize;
    if let Some(net) = finding.net {
        flags |= FLAG_NETWORK;
        let len = bounded_name_len(net.abstract_len) as usize;
        if len != 0 {
            // SAFETY: nothing is in the data yet, so the name (at most 107 bytes) lands at
            // its start; the helper reads kernel memory safely.
            let copied = unsafe {
                bpf_probe_read_kernel(
                    (*event).data.as_mut_ptr().cast(),
                    len as u32,
                    net.abstract_name as *const _,
                )
            };
            if copied == 0 {
                lens[PATH_TARGET] = len as u16;
                used += len;
                flags |= FLAG_ABSTRACT_NAME;
            }
        }
    }
    let mut add = |slot: usize, at: Location| {
        let (len, cut) = render(used, at.mnt, at.dentry);
        lens[slot] = len;
        used += len as usize;
        if cut {
            flags |= FLAG_PATH_TRUNCATED << slot;
        }
    };
    if let Some(at) = finding.target {
        add(PATH_TARGET, at);
    }
    if let Some(at) = finding.target2 {
        add(PATH_TARGET2, at);
    }
    // The executable, from the task's mm: still right after the process has exited.
    let exe = read_u64(task, off!(task_mm)).and_then(|mm| {
        if mm == 0 {
            Ok(0)
        } else {
            read_u64(mm, off!(mm_exe_file))
        }
    });
    if let Ok(file) = exe {
        if file != 0 {
            if let Ok((mnt, dentry)) = path_parts(file_path(file)) {
                add(PATH_EXE, Location { mnt, dentry });
            }
        }
    }
    // SAFETY: as above; the paths are complete. Only the header and the used part of the
    // data are copied into the ring buffer.
    let record = unsafe {
        (*event).header.path_len = lens;
        (*event).header.flags = flags;
        let len = size_of::<EventHeader>() + (used & (EVENT_DATA_LEN - 1));
        core::slice::from_raw_parts(event as *const u8, len)
    };
    if EVENTS.output::<[u8]>(record, 0).is_err() {
        // The decision above stands; only its report is lost, and that is counted.
        bump(STAT_LOST_EVENTS);
    }
}
