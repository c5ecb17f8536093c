//! What a session's policy says about a dentry, judged where the dentry really lies, and the
//! path the kernel would print for it.
//!
//! The decision walks `d_parent` inside the dentry's own filesystem. A bind mount therefore
//! gets the answer of the real location (a bind mount of `/etc` inside the workspace is still
//! `/etc`), and symlinks, `..`, relative paths and `/proc/self/root` never reach this code:
//! the kernel resolved them to the dentry already. Only at the root of a filesystem does the
//! walk step into the mount that shows that whole filesystem.
//!
//! Both walks run under `bpf_loop`: the verifier checks the loop body once instead of
//! following every iteration of every path, which keeps the programs well inside its limits
//! on kernels from 6.1 on.
//!
//! The walk's state lives in a per-CPU map slot, and a BPF LSM program can be preempted
//! (it runs with migration, not preemption, disabled): on a kernel with `preempt=full`,
//! another task's program on the same CPU can take the slot in the middle of a walk. Seen
//! in a 6.1 guest, an allowed rename in a workspace was refused with the rule of another
//! task's walk. So each walk records its task ([`Owned`]), a step never advances a walk
//! that is not its task's, and a walk whose slot changed hands is answered with a refusal.
use agent_guard_common::{
    conclude, NamePattern, NameWindows, ScopeKey, SessionConfig, Walk, ACCESS_MODIFY, ACTION_DENY,
    EVENT_DATA_LEN, MAX_NAME_PATTERNS, MAX_PATH_DEPTH, NAME_BUF_LEN, PATH_BUF_LEN, PATTERN_WINDOW,
    RULE_PATH_TOO_DEEP, RULE_UNRESOLVED,
};
use core::{
    ffi::c_void,
    sync::atomic::{compiler_fence, Ordering},
};

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str};

use crate::{
    kernel::{current_task, inode_identity, mounted_on, off, read_u64, Unreadable},
    maps::{NAME, PATTERNS, RENDER, RULES, SCRATCH, SESSIONS, WALK},
};

/// What the policy says about one access to one object: an action (`ACTION_ALLOW`,
/// `ACTION_AUDIT` or `ACTION_DENY`) and the rule code events carry.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Checked {
    pub action: u16,
    pub rule: u32,
}

impl Checked {
    const fn deny(rule: u32) -> Self {
        Self {
            action: ACTION_DENY,
            rule,
        }
    }
}

/// The session's settings; a session without any is enforcing, with no patterns and no
/// read rules.
#[inline(always)]
pub fn session_config(session: u32) -> SessionConfig {
    // SAFETY: plain data; a concurrent update can only swap it for the session's next one.
    match unsafe { SESSIONS.get(&session) } {
        Some(config) => *config,
        None => SessionConfig {
            mode: 0,
            patterns: 0,
            reads: 0,
            egress_allow: 0,
        },
    }
}

/// State of one policy walk, kept in the per-CPU `WALK` map so that the verifier checks its
/// `bpf_loop` callback once (see `RenderState`).
#[repr(C)]
pub struct WalkState {
    /// The task whose walk this is (see [`Owned`]).
    owner: u64,
    session: u32,
    status: u32,
    /// Name patterns of the session, from its `SessionConfig`.
    patterns: u32,
    /// Non-zero to walk all the way up even once the verdict is settled (to learn which
    /// pattern trees hold the object).
    full: u32,
    dentry: u64,
    mnt: u64,
    walk: Walk,
}

const WALKING: u32 = 0;
const FINISHED: u32 = 1;
const UNRESOLVED: u32 = 2;

/// A dentry's name behind a zeroed window: `bytes[WINDOW..]` holds the name, so the 32
/// bytes that end with its last byte start at `bytes[len]` even for a name shorter than
/// the window.
#[repr(C)]
pub struct NameBuf {
    bytes: [u8; PATTERN_WINDOW + NAME_BUF_LEN + PATTERN_WINDOW],
    /// The windows the patterns are matched against, kept here rather than on the stack.
    windows: NameWindows,
}

/// Walks from `dentry` (seen through `mnt`; 0 when the hook gives no mount, which ends the
/// walk at the root of the dentry's filesystem) towards `/`, and returns what `read` takes
/// from the final state. The answer is `refused` when the map slot is missing or another
/// task's program took the slot meanwhile (see [`Owned`]): checked after `read`, so that
/// nothing read from a foreign walk is ever answered.
#[inline(always)]
fn walk<R>(
    session: u32,
    access: u32,
    (mnt, dentry): (u64, u64),
    full: bool,
    refused: R,
    read: impl FnOnce(&WalkState) -> R,
) -> R {
    let Some(state) = WALK.get_ptr_mut(0) else {
        return refused;
    };
    let config = session_config(session);
    let task = current_task();
    // SAFETY: the per-CPU slot is this program run's once it is claimed.
    unsafe {
        Owned::claim(&raw mut (*state).owner, task);
        *state = WalkState {
            owner: task,
            session,
            status: WALKING,
            patterns: config.patterns,
            full: full as u32,
            dentry,
            mnt,
            walk: Walk::new(access),
        };
        // The callback finds its state in the map; it needs no context pointer.
        bpf_loop(
            MAX_PATH_DEPTH,
            walk_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let answer = read(&*state);
        if Owned::still(&raw const (*state).owner, task) {
            answer
        } else {
            refused
        }
    }
}

/// A per-CPU slot's owner: the address of the task whose program run is using it.
///
/// Claiming writes the owner before anything else; a reader takes what it needs and then
/// checks that the owner is still itself. Another task that took the slot in between has
/// written its own address first, so the check fails and the answer is a refusal. On a
/// single CPU only preemption interleaves two runs, so program order is the only order to
/// keep, and the compiler fences keep it.
pub struct Owned;

impl Owned {
    #[inline(always)]
    pub unsafe fn claim(owner: *mut u64, task: u64) {
        // SAFETY: the caller passes a pointer into its per-CPU slot.
        unsafe { core::ptr::write_volatile(owner, task) };
        compiler_fence(Ordering::SeqCst);
    }

    /// Whether the slot is still `task`'s; call after reading what it holds.
    #[inline(always)]
    pub unsafe fn still(owner: *const u64, task: u64) -> bool {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as in `claim`.
        unsafe { core::ptr::read_volatile(owner) == task }
    }
}

/// What the policy of `session` says about `access` to the object at `dentry`. `removal`
/// marks checks of an object that is about to lose its name (unlink, rmdir, either side of
/// a rename): removing the root of a writable scope is refused, since it would remove the
/// scope. Anything the walk cannot establish is denied: fail closed.
#[inline(always)]
pub fn check(session: u32, access: u32, mnt: u64, dentry: u64, removal: bool) -> Checked {
    let refused = Checked::deny(RULE_UNRESOLVED);
    walk(
        session,
        access,
        (mnt, dentry),
        false,
        refused,
        |state| match state.status {
            UNRESOLVED => refused,
            status => {
                let (action, rule) = conclude(&state.walk, status == FINISHED, removal);
                Checked { action, rule }
            }
        },
    )
}

/// The name-pattern trees that hold the object at `dentry` (bit `i` for pattern `i`), or
/// `Err(rule)` when its location cannot be established.
#[inline(always)]
pub fn pattern_trees(session: u32, mnt: u64, dentry: u64) -> Result<u32, u32> {
    let refused = Err(RULE_UNRESOLVED);
    walk(
        session,
        ACCESS_MODIFY,
        (mnt, dentry),
        true,
        refused,
        |state| match state.status {
            FINISHED => Ok(state.walk.trees),
            UNRESOLVED => refused,
            _ => Err(RULE_PATH_TOO_DEEP),
        },
    )
}

/// One level of the walk. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(state) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // A walk another task's program took over is not advanced; its owner's check refuses.
    // SAFETY: a pointer into the per-CPU slot.
    if !unsafe { Owned::still(&raw const (*state).owner, current_task()) } {
        return 1;
    }
    // SAFETY: the per-CPU slot belongs to this program run.
    let state = unsafe { &mut *state };
    match step(state) {
        Ok(()) if state.status == WALKING => 0,
        Ok(()) => 1,
        Err(Unreadable) => {
            state.status = UNRESOLVED;
            1
        }
    }
}

#[inline(always)]
fn step(state: &mut WalkState) -> Result<(), Unreadable> {
    let d = state.dentry;
    if let Some((dev, ino)) = inode_identity(d)? {
        let key = ScopeKey {
            session: state.session,
            dev,
            ino,
        };
        // SAFETY: plain data.
        if let Some(entry) = unsafe { RULES.get(&key) } {
            let confirmed = state.walk.entry(entry);
            if confirmed != 0 {
                confirm_patterns(state, confirmed);
            }
        }
    }
    if state.patterns != 0 {
        match_name(state, d)?;
    }
    if state.walk.settled() && state.full == 0 {
        state.status = FINISHED;
        return Ok(());
    }
    state.walk.up();
    let parent = read_u64(d, off!(dentry_d_parent))?;
    if parent != d {
        state.dentry = parent;
        return Ok(());
    }
    // The root of this filesystem. Without a mount (the xattr hooks pass none) the walk
    // ends here.
    if state.mnt == 0 {
        state.status = FINISHED;
        return Ok(());
    }
    // Step into the mount that shows it whole; a mount that shows only a subtree (a bind
    // mount) does not say where this root lives.
    let mnt_root = read_u64(state.mnt, off!(vfsmount_mnt_root))?;
    if mnt_root != d {
        state.status = FINISHED;
        return Ok(());
    }
    match mounted_on(state.mnt)? {
        Some(up) => {
            state.dentry = up.mountpoint;
            state.mnt = up.parent_mnt;
        }
        None => state.status = FINISHED,
    }
    Ok(())
}

/// Offers the verdicts of the patterns in `confirmed` (their tree is the current level).
#[inline(always)]
fn confirm_patterns(state: &mut WalkState, confirmed: u32) {
    let Some(set) = PATTERNS.get_ptr(&state.session) else {
        return;
    };
    for i in 0..MAX_NAME_PATTERNS {
        if confirmed & (1 << i) != 0 {
            // SAFETY: a map value, read in place (it is far larger than the BPF stack).
            let pattern = unsafe { &*set.cast::<NamePattern>().add(i) };
            state.walk.confirm(i, pattern);
        }
    }
}

/// Matches the current dentry's name against the session's patterns.
#[inline(always)]
fn match_name(state: &mut WalkState, dentry: u64) -> Result<(), Unreadable> {
    let buf = NAME.get_ptr_mut(0).ok_or(Unreadable)?;
    let name = read_u64(dentry, off!(dentry_d_name) + off!(qstr_name))?;
    // SAFETY: the per-CPU buffer belongs to this program run; the helper writes at most
    // NAME_BUF_LEN bytes from offset PATTERN_WINDOW, inside the buffer, and the window
    // reads below stay inside it (len < NAME_BUF_LEN).
    let windows = unsafe {
        let buf = &mut *buf;
        let bytes = buf.bytes.as_mut_ptr();
        let n = bpf_probe_read_kernel_str(
            bytes.add(PATTERN_WINDOW).cast(),
            NAME_BUF_LEN as u32,
            name as *const _,
        );
        if n <= 0 {
            return Err(Unreadable);
        }
        let len = (n as usize - 1) & (NAME_BUF_LEN - 1);
        let word = |at: usize| core::ptr::read_unaligned(bytes.add(at).cast::<u64>());
        let windows = &mut buf.windows;
        windows.len = len as u32;
        for w in 0..4 {
            windows.head[w] = word(PATTERN_WINDOW + w * 8);
            windows.tail[w] = word(len + w * 8);
        }
        &buf.windows
    };
    let Some(set) = PATTERNS.get_ptr(&state.session) else {
        return Err(Unreadable);
    };
    for i in 0..MAX_NAME_PATTERNS {
        if i as u32 >= state.patterns {
            break;
        }
        // SAFETY: a map value, read in place (it is far larger than the BPF stack).
        let pattern = unsafe { &*set.cast::<NamePattern>().add(i) };
        if pattern.matches(windows) {
            state.walk.name_matched(i, pattern);
        }
    }
    Ok(())
}

/// State of the path rendering, kept in the per-CPU `RENDER` map rather than on the stack:
/// values read back from a map are opaque to the verifier, so it checks the callback once
/// instead of following the growing length through every iteration (6.8+ verify callbacks
/// as loops).
#[repr(C)]
pub struct RenderState {
    /// Where in the scratch event's data this path starts.
    base: u32,
    /// 0 while rendering, 1 when complete, 2 when cut short.
    status: u32,
    used: u64,
    dentry: u64,
    mnt: u64,
}

const RENDERING: u32 = 0;
const COMPLETE: u32 = 1;
const CUT: u32 = 2;

/// Writes the path of `dentry` as seen through `mnt` into the scratch event's data at
/// `base`, components leaf first and each NUL-terminated (user space reverses them).
/// Returns the bytes used and whether the path was cut short by the buffer, the path length
/// bound or the depth bound.
#[inline(always)]
pub fn render(base: usize, mnt: u64, dentry: u64) -> (u16, bool) {
    let Some(state) = RENDER.get_ptr_mut(0) else {
        return (0, true);
    };
    // SAFETY: the per-CPU slot belongs to this program run.
    unsafe {
        *state = RenderState {
            base: base as u32,
            status: RENDERING,
            used: 0,
            dentry,
            mnt,
        };
        // The callback finds its state in the map; it needs no context pointer.
        bpf_loop(
            MAX_PATH_DEPTH,
            render_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        ((*state).used as u16, (*state).status != COMPLETE)
    }
}

/// One component of the rendering. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn render_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(state) = RENDER.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU slot belongs to this program run.
    let state = unsafe { &mut *state };
    match render_one(state) {
        Ok(()) if state.status == RENDERING => 0,
        Ok(()) => 1,
        Err(Unreadable) => {
            state.status = CUT;
            1
        }
    }
}

#[inline(always)]
fn render_one(state: &mut RenderState) -> Result<(), Unreadable> {
    let d = state.dentry;
    let parent = read_u64(d, off!(dentry_d_parent))?;
    if state.mnt == 0 && d == parent {
        // No mount given: the path is known up to its filesystem's root only.
        state.status = CUT;
        return Ok(());
    }
    let mnt_root = if state.mnt == 0 {
        0
    } else {
        read_u64(state.mnt, off!(vfsmount_mnt_root))?
    };
    if d == mnt_root || d == parent {
        match mounted_on(state.mnt)? {
            Some(up) => {
                state.dentry = up.mountpoint;
                state.mnt = up.parent_mnt;
            }
            None => state.status = COMPLETE,
        }
        return Ok(());
    }
    let name = read_u64(d, off!(dentry_d_name) + off!(qstr_name))?;
    let used = state.used as usize;
    let at = (state.base as usize + used) & (EVENT_DATA_LEN - 1);
    if used > PATH_BUF_LEN - NAME_BUF_LEN || at > EVENT_DATA_LEN - NAME_BUF_LEN {
        state.status = CUT;
        return Ok(());
    }
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        state.status = CUT;
        return Ok(());
    };
    // SAFETY: the per-CPU scratch event belongs to this program run.
    let event = unsafe { &mut *event };
    // SAFETY: `at + NAME_BUF_LEN <= EVENT_DATA_LEN`, so the helper writes inside the data;
    // it reads kernel memory safely and NUL-terminates what it wrote.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            event.data.as_mut_ptr().add(at).cast(),
            NAME_BUF_LEN as u32,
            name as *const _,
        )
    };
    if n <= 0 {
        state.status = CUT;
        return Ok(());
    }
    state.used = (used + n as usize) as u64;
    state.dentry = parent;
    Ok(())
}
