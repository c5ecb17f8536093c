//! Session membership: who is guarded.
//!
//! Membership is a property of the `task_struct`, copied to every task the member creates.
//! Nothing a process can do after that (setsid, double fork, re-parenting, changing
//! credentials, moving cgroups, new namespaces) removes it.
//!
//! A process tree that is already running joins through `ATTACH_TGID` and `ATTACH_CGROUP`
//! instead: each of its tasks is moved into `TASKS` by the first hook it reaches (its own
//! operation, a fork, an exec), before that operation is decided.
use agent_guard_common::{EAGAIN, ENOMEM, OP_EXEC, OP_FORK, RULE_SESSION_TABLE_FULL};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    kernel::{current_task, off, read_u32},
    maps::{ATTACH_ACTIVE, ATTACH_CGROUP, ATTACH_TGID, ENROLL, TASKS},
    report::{decide, Finding},
};

/// The start of every enforcing hook: `Ok((session, verdict))` when the current task is
/// guarded and no earlier program refused, otherwise `Err(verdict)` to return at once.
/// `verdict_arg` is the index of the verdict the hook was given (its argument count).
#[inline(always)]
pub fn enter(ctx: &LsmContext, verdict_arg: usize) -> Result<(u32, i32), i32> {
    let allow: i32 = ctx.arg(verdict_arg);
    if allow != 0 {
        return Err(allow);
    }
    match current_session() {
        Some(session) => Ok((session, allow)),
        None => Err(allow),
    }
}

/// The session of the current task, if it is guarded. A task of an attached process or
/// cgroup that is not in `TASKS` yet joins here.
#[inline(always)]
pub fn current_session() -> Option<u32> {
    let task = current_task();
    // SAFETY: u32 values; a racing delete can only make the task look unguarded, and a task
    // is deleted only when it is freed, so it is not running here.
    if let Some(session) = unsafe { TASKS.get(&task) } {
        return Some(*session);
    }
    attached_session(task)
}

/// Whether some process or cgroup is attached to a session; the one lookup an unguarded
/// task pays while none is.
#[inline(always)]
pub fn attach_active() -> bool {
    ATTACH_ACTIVE.get(0).is_some_and(|count| *count != 0)
}

/// The session the current task's process or cgroup is attached to, if any; the task joins
/// it in `TASKS`. When `TASKS` is full the task is still treated as the session's for this
/// operation, and is looked up again at the next.
#[inline(always)]
fn attached_session(task: u64) -> Option<u32> {
    if !attach_active() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY (both lookups): u32 values.
    let session = match unsafe { ATTACH_TGID.get(&tgid) } {
        Some(session) => *session,
        // SAFETY: the helper has no preconditions.
        None => *unsafe { ATTACH_CGROUP.get(&bpf_get_current_cgroup_id()) }?,
    };
    let _ = TASKS.insert(&task, &session, 0);
    Some(session)
}

/// The session `tgid` is attached to, if it is.
#[inline(always)]
pub fn attached_process(tgid: u32) -> Option<u32> {
    if !attach_active() {
        return None;
    }
    // SAFETY: u32 value.
    unsafe { ATTACH_TGID.get(&tgid) }.copied()
}

/// `task_alloc(struct task_struct *task, unsigned long clone_flags)`: a child of a session
/// member joins the session. When the table is full the fork fails (EAGAIN) rather than
/// leaving the child unguarded.
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let allow: i32 = ctx.arg(2);
    if allow != 0 {
        return allow;
    }
    let Some(session) = current_session() else {
        return allow;
    };
    let child = ctx.arg::<*const u8>(0) as u64;
    if TASKS.insert(&child, &session, 0).is_ok() {
        return allow;
    }
    let finding = Finding {
        op: OP_FORK,
        rule: RULE_SESSION_TABLE_FULL,
        errno: EAGAIN,
        target: None,
        target2: None,
        target_pid: 0,
        detail: 0,
        net: None,
    };
    decide(session, &finding, allow)
}

/// `task_free(struct task_struct *task)`: the task is gone; its address may be reused.
/// When it led an attached process, the process is gone and its pid may be reused: its
/// attachment goes too.
#[lsm(hook = "task_free")]
pub fn task_free(ctx: LsmContext) -> i32 {
    let task = ctx.arg::<*const u8>(0) as u64;
    let _ = TASKS.remove(&task);
    if attach_active() {
        if let (Ok(pid), Ok(tgid)) = (
            read_u32(task, off!(task_pid)),
            read_u32(task, off!(task_tgid)),
        ) {
            if pid == tgid {
                let _ = ATTACH_TGID.remove(&tgid);
            }
        }
    }
    0
}

/// `bprm_check_security(struct linux_binprm *bprm)`: a process user space marked in
/// `ENROLL` joins its session as it execs the session's command, before that command runs a
/// single instruction. So does a task of an attached process or cgroup that has not joined
/// yet (a process pid 1 forked and moved into an attached unit's cgroup).
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let allow: i32 = ctx.arg(1);
    if allow != 0 {
        return allow;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: u32 value.
    let Some(session) = (unsafe { ENROLL.get(&tgid) }).copied() else {
        let _ = current_session();
        return allow;
    };
    // A member of a session never moves to another: it would take whatever the other
    // policy allows. It stays where it is, and the entry stays, so whoever enrolled it
    // sees that it was not enrolled and kills it.
    if current_session().is_some_and(|existing| existing != session) {
        return allow;
    }
    if TASKS.insert(&current_task(), &session, 0).is_err() {
        let finding = Finding {
            op: OP_EXEC,
            rule: RULE_SESSION_TABLE_FULL,
            errno: ENOMEM,
            target: None,
            target2: None,
            target_pid: 0,
            detail: 0,
            net: None,
        };
        // Refuse the exec whatever the mode: the command must not run unguarded.
        let _ = decide(session, &finding, allow);
        return -ENOMEM;
    }
    let _ = ENROLL.remove(&tgid);
    allow
}
