//! Protecting the guard from its own sessions: a session may signal and trace only its own
//! processes, and may not use bpf(2) or load code into the kernel. Without this, an agent
//! running as root could kill `agent-guard run` (whose exit detaches the programs), write
//! its memory, steal its file descriptors with pidfd_getfd, detach the programs through
//! bpf(2), or load a module or kexec a kernel that no hook watches.
use agent_guard_common::{
    EPERM, LOAD_KEXEC_IMAGE, LOAD_KEXEC_INITRAMFS, LOAD_MODULE, LOAD_POLICY, MEMBERSHIP_IN,
    MEMBERSHIP_NONE, OP_BPF, OP_KERNEL_LOAD, OP_PTRACE, OP_SIGNAL, RULE_NO_BPF,
    RULE_NO_KERNEL_LOAD, RULE_OUTSIDE_SESSION,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    kernel::{file_path, off, path_parts, read_u32},
    maps::{MEMBERSHIP, TASKS},
    report::{decide, Finding, Location},
    session::{attached_process, current_session, enter},
};

/// `PTRACE_MODE_ATTACH`: the access would let the caller change the target (ptrace attach,
/// writing /proc/PID/mem, process_vm_writev, pidfd_getfd). Read-mode checks (reading
/// /proc/PID/environ, the exe link) stay allowed so that process listings keep working.
const PTRACE_MODE_ATTACH: u32 = 0x02;

/// Whether `task` belongs to `session`: it joined, or its process is attached to the
/// session and has not reached a hook yet.
#[inline(always)]
pub fn in_session(task: u64, session: u32) -> bool {
    // SAFETY: u32 value.
    if unsafe { TASKS.get(&task) }.is_some_and(|s| *s == session) {
        return true;
    }
    read_u32(task, off!(task_tgid))
        .is_ok_and(|tgid| attached_process(tgid).is_some_and(|s| s == session))
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

/// Answers the daemon's question "is the target in a session?" (see `MEMBERSHIP`), decided
/// on the target's `task_struct` rather than on a pid the daemon read somewhere.
#[inline(always)]
fn answer_membership(target: u64) {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: u64 value.
    if unsafe { MEMBERSHIP.get(&tgid) }.is_none() {
        return;
    }
    // SAFETY: u32 value.
    let session = match unsafe { TASKS.get(&target) } {
        Some(session) => Some(*session),
        None => read_u32(target, off!(task_tgid))
            .ok()
            .and_then(attached_process),
    };
    let answer = match session {
        Some(session) => MEMBERSHIP_IN | u64::from(session),
        None => MEMBERSHIP_NONE,
    };
    let _ = MEMBERSHIP.insert(&tgid, &answer, 0);
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct
/// cred *cred)`: signals from a session reach only its own processes. Signal 0 (an
/// existence probe) is allowed, and from the daemon it asks whether the target is guarded.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    if ctx.arg::<i32>(2) == 0 {
        answer_membership(ctx.arg::<*const u8>(0) as u64);
    }
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

/// Whether a session may hand the kernel an object of kind `id` (`kernel_read_file_id`,
/// `kernel_load_data_id`) to load. Firmware and certificates are loaded by the kernel on a
/// driver's or keyring's behalf, in whatever process triggered it, and run no code of the
/// caller's choosing; modules, kexec images and IMA policies change what the kernel runs or
/// enforces.
#[inline(always)]
fn load_refused(id: u32) -> bool {
    matches!(
        id,
        LOAD_MODULE | LOAD_KEXEC_IMAGE | LOAD_KEXEC_INITRAMFS | LOAD_POLICY
    )
}

/// `kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents)`: the
/// kernel reads a file to load it: finit_module(2), kexec_file_load(2), an IMA policy path.
/// Refused for modules, kexec images and policies; the event names the file. The kernel
/// asks once it knows the file's size (an empty file is refused before) and before it
/// reads a byte.
#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let id: u32 = ctx.arg(1);
    if !load_refused(id) {
        return allow;
    }
    let file = ctx.arg::<*const u8>(0) as u64;
    // Two calls rather than one with an optional target: the compiler leaves the payload
    // of a `None` undefined, and the verifier refuses reading it.
    match path_parts(file_path(file)) {
        Ok((mnt, dentry)) => {
            let finding = Finding {
                op: OP_KERNEL_LOAD,
                rule: RULE_NO_KERNEL_LOAD,
                errno: EPERM,
                target: Some(Location { mnt, dentry }),
                target2: None,
                target_pid: 0,
                detail: id,
                net: None,
            };
            decide(session, &finding, allow)
        }
        Err(_) => refuse(session, OP_KERNEL_LOAD, RULE_NO_KERNEL_LOAD, 0, id, allow),
    }
}

/// `kernel_load_data(enum kernel_load_data_id id, bool contents)`: the kernel is about to
/// load data from the caller's memory: init_module(2), kexec_load(2). Refused for the same
/// kinds as `kernel_read_file`. For init_module(2) the hook runs before the image is copied
/// or parsed.
#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let id: u32 = ctx.arg(0);
    if !load_refused(id) {
        return allow;
    }
    refuse(session, OP_KERNEL_LOAD, RULE_NO_KERNEL_LOAD, 0, id, allow)
}
