//! Protecting the guard from its own sessions: a session may signal and trace only its own
//! processes, and may not use bpf(2). Without this, an agent running as root could kill
//! `agent-guard run` (whose exit detaches the programs), write its memory, steal its file
//! descriptors with pidfd_getfd, or detach the programs through bpf(2).
use agent_guard_common::{EPERM, OP_BPF, OP_PTRACE, OP_SIGNAL, RULE_NO_BPF, RULE_OUTSIDE_SESSION};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    kernel::{off, read_u32},
    maps::TASKS,
    report::{decide, Finding},
    session::{current_session, enter},
};

/// `PTRACE_MODE_ATTACH`: the access would let the caller change the target (ptrace attach,
/// writing /proc/PID/mem, process_vm_writev, pidfd_getfd). Read-mode checks (reading
/// /proc/PID/environ, the exe link) stay allowed so that process listings keep working.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Whether `task` belongs to `session`.
#[inline(always)]
pub fn in_session(task: u64, session: u32) -> bool {
    // SAFETY: u32 value.
    unsafe { TASKS.get(&task) }.is_some_and(|s| *s == session)
}

#[inline(always)]
fn refuse(session: u32, op: u32, rule: u32, task: u64, detail: u32, allow: i32) -> i32 {
    let target_pid = if task == 0 {
        0
    } else {
        read_u32(task, off!(task_tgid)).unwrap_or(0)
    };
    let finding = Finding {
        op,
        rule,
        errno: EPERM,
        target: None,
        target2: None,
        target_pid,
        detail,
        net: None,
    };
    decide(session, &finding, allow)
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct
/// cred *cred)`: signals from a session reach only its own processes. Signal 0 (an
/// existence probe) is allowed.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 4) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let target = ctx.arg::<*const u8>(0) as u64;
    let sig: i32 = ctx.arg(2);
    if sig == 0 || in_session(target, session) {
        return allow;
    }
    refuse(
        session,
        OP_SIGNAL,
        RULE_OUTSIDE_SESSION,
        target,
        sig as u32,
        allow,
    )
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`: attach-mode access
/// reaches only the session's own processes.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let target = ctx.arg::<*const u8>(0) as u64;
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 || in_session(target, session) {
        return allow;
    }
    refuse(
        session,
        OP_PTRACE,
        RULE_OUTSIDE_SESSION,
        target,
        mode,
        allow,
    )
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size, ...)`: no bpf(2) at all from a
/// session. The hook's argument count differs between kernels (6.9 added a token, later
/// kernels a flag), so the verdict slot is not read: the default verdict is 0 and no other
/// agent-guard program shares this hook.
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let Some(session) = current_session() else {
        return 0;
    };
    let cmd: i32 = ctx.arg(0);
    refuse(session, OP_BPF, RULE_NO_BPF, 0, cmd as u32, 0)
}
