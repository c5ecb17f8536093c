//! Session membership: who is guarded.
//!
//! Membership is a property of the `task_struct`, copied to every task the member creates.
//! Nothing a process can do after that (setsid, double fork, re-parenting, changing
//! credentials, moving cgroups, new namespaces) removes it.
use agent_guard_common::{EAGAIN, ENOMEM, OP_EXEC, OP_FORK, RULE_SESSION_TABLE_FULL};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

use crate::{
    kernel::current_task,
    maps::{ENROLL, TASKS},
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

/// The session of the current task, if it is guarded.
#[inline(always)]
pub fn current_session() -> Option<u32> {
    // SAFETY: u32 values; a racing delete can only make the task look unguarded, and a task
    // is deleted only when it is freed, so it is not running here.
    unsafe { TASKS.get(&current_task()) }.copied()
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
#[lsm(hook = "task_free")]
pub fn task_free(ctx: LsmContext) -> i32 {
    let task = ctx.arg::<*const u8>(0) as u64;
    let _ = TASKS.remove(&task);
    0
}

/// `bprm_check_security(struct linux_binprm *bprm)`: a process user space marked in
/// `ENROLL` joins its session as it execs the session's command, before that command runs a
/// single instruction.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let allow: i32 = ctx.arg(1);
    if allow != 0 {
        return allow;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: u32 value.
    let Some(session) = (unsafe { ENROLL.get(&tgid) }).copied() else {
        return allow;
    };
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
