//! Where a dentry really lies: inside one of the session's writable scopes or not, and the
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
use agent_guard_common::{
    ScopeKey, EVENT_DATA_LEN, MAX_PATH_DEPTH, NAME_BUF_LEN, PATH_BUF_LEN, RULE_OUTSIDE_SCOPE,
    RULE_PATH_TOO_DEEP, RULE_PROTECTED, RULE_SCOPE_ROOT, RULE_UNRESOLVED,
};
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str};

use crate::{
    kernel::{inode_identity, mounted_on, off, read_u64, Unreadable},
    maps::{PROTECTED, RENDER, SCOPES, SCRATCH},
};

/// State of the scope walk, shared with its `bpf_loop` callback.
#[repr(C)]
struct WalkState {
    session: u32,
    /// 0 while walking, 1 when inside a scope, otherwise the rule that puts it outside.
    verdict: u32,
    dentry: u64,
    mnt: u64,
}

const WALKING: u32 = 0;
const INSIDE: u32 = u32::MAX;

/// `Ok(())` when `dentry` (seen through `mnt`) is inside a writable scope of `session`,
/// otherwise the rule that puts it outside. Unresolvable locations are outside: fail closed.
#[inline(always)]
pub fn check_inside(session: u32, mnt: u64, dentry: u64) -> Result<(), u32> {
    let mut state = WalkState {
        session,
        verdict: WALKING,
        dentry,
        mnt,
    };
    // SAFETY: the callback only touches `state` through the pointer it is given.
    let ran = unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            walk_step as *mut c_void,
            (&mut state as *mut WalkState).cast(),
            0,
        )
    };
    match state.verdict {
        INSIDE => Ok(()),
        WALKING if ran >= 0 => Err(RULE_PATH_TOO_DEEP),
        WALKING => Err(RULE_UNRESOLVED),
        rule => Err(rule),
    }
}

/// One level of the scope walk. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the WalkState that check_inside passed to bpf_loop.
    let state = unsafe { &mut *ctx.cast::<WalkState>() };
    match step(state) {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(Unreadable) => {
            state.verdict = RULE_UNRESOLVED;
            1
        }
    }
}

#[inline(always)]
fn step(state: &mut WalkState) -> Result<bool, Unreadable> {
    let d = state.dentry;
    if let Some((dev, ino)) = inode_identity(d)? {
        let key = ScopeKey {
            session: state.session,
            dev,
            ino,
        };
        // Nearest first: a protected path inside a scope is met before the scope root.
        if PROTECTED.get_ptr(&key).is_some() {
            state.verdict = RULE_PROTECTED;
            return Ok(true);
        }
        if SCOPES
            .get_ptr(&ScopeKey {
                session: state.session,
                dev,
                ino,
            })
            .is_some()
        {
            state.verdict = INSIDE;
            return Ok(true);
        }
    }
    let parent = read_u64(d, off!(dentry_d_parent))?;
    if parent != d {
        state.dentry = parent;
        return Ok(false);
    }
    // The root of this filesystem. Without a mount (the xattr hooks pass none) the walk
    // ends here: no scope on this filesystem holds the target.
    if state.mnt == 0 {
        state.verdict = RULE_OUTSIDE_SCOPE;
        return Ok(true);
    }
    // Step into the mount that shows it whole; a mount that shows only a subtree (a bind
    // mount) does not say where this root lives.
    let mnt_root = read_u64(state.mnt, off!(vfsmount_mnt_root))?;
    if mnt_root != d {
        state.verdict = RULE_OUTSIDE_SCOPE;
        return Ok(true);
    }
    match mounted_on(state.mnt)? {
        Some(up) => {
            state.dentry = up.mountpoint;
            state.mnt = up.parent_mnt;
            Ok(false)
        }
        None => {
            state.verdict = RULE_OUTSIDE_SCOPE;
            Ok(true)
        }
    }
}

/// `Err(RULE_SCOPE_ROOT)` when `dentry` is itself a scope root of `session` (removing or
/// moving it would remove the scope), `Err(RULE_PROTECTED)` when it is protected.
#[inline(always)]
pub fn check_not_scope_root(session: u32, dentry: u64) -> Result<(), u32> {
    match inode_identity(dentry) {
        Ok(Some((dev, ino))) => {
            let key = ScopeKey { session, dev, ino };
            if PROTECTED.get_ptr(&key).is_some() {
                Err(RULE_PROTECTED)
            } else if SCOPES.get_ptr(&key).is_some() {
                Err(RULE_SCOPE_ROOT)
            } else {
                Ok(())
            }
        }
        Ok(None) => Ok(()),
        Err(Unreadable) => Err(RULE_UNRESOLVED),
    }
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
