//! Filesystem hooks: destructive operations outside the session's writable scopes fail with
//! EPERM and are reported.
//!
//! Each hook returns the verdict it was given when it has nothing to refuse, so it composes
//! with the other LSMs, and never overrides an earlier refusal.
use agent_guard_common::{
    EPERM, OP_CHMOD, OP_CHOWN, OP_CREATE, OP_LINK, OP_MKDIR, OP_MMAP, OP_MOUNT, OP_OPEN_WRITE,
    OP_PIVOT_ROOT, OP_REMOVEXATTR, OP_RENAME, OP_RMDIR, OP_SETXATTR, OP_SYMLINK, OP_TRUNCATE,
    OP_UMOUNT, OP_UNLINK, OP_UTIMES, OP_WRITE, RULE_MOUNT, RULE_MULTI_LINK, RULE_UNRESOLVED,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    guard::in_session,
    kernel::{
        arg_from_end, creds_overridden, file_path, off, path_parts, proc_inode_task, read_u16,
        read_u32, read_u64, Unreadable,
    },
    maps::{AUDITED_FILES, DEVICES},
    report::{audit_mode, decide, deny_at, Finding, Location},
    scope::{check_inside, check_not_scope_root},
    session::{current_session, enter},
};

/// `FMODE_WRITE` in `file::f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `FMODE_CREATED`: this open created the file.
const FMODE_CREATED: u32 = 1 << 20;
/// `FMODE_BACKING` (Linux 6.6+): the file is the backing file of a stacking filesystem
/// such as overlayfs, opened by the kernel on behalf of an open already decided.
const FMODE_BACKING: u32 = 1 << 24;
/// `FMODE_NOACCOUNT`: set on Linux 6.1's `open_with_fake_path` files (overlayfs's backing
/// files before FMODE_BACKING existed) and on other kernel-internal opens. Bit 24 is unused
/// on 6.1, so testing both bits is right on both generations.
const FMODE_NOACCOUNT: u32 = 1 << 29;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const S_IFCHR: u16 = 0o020000;
const S_IFBLK: u16 = 0o060000;
/// Minor number that stands for "every minor" in the DEVICES map.
const ANY_MINOR: u32 = 0xfffff;
/// `MAY_WRITE` in `file_permission`'s mask.
const MAY_WRITE: i32 = 0x2;
/// `PROT_WRITE` and `MAP_SHARED` (which `MAP_SHARED_VALIDATE` includes) of mmap(2).
const PROT_WRITE: u64 = 0x2;
const MAP_SHARED: u64 = 0x1;
/// `VM_SHARED` in `vm_area_struct::vm_flags`: a shared mapping of a file open for writing.
const VM_SHARED: u64 = 0x8;
/// `ATTR_*` bits of `iattr::ia_valid`.
const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
const ATTR_TOUCH: u32 = 1 << 17;

/// Removal of `victim` from the directory `dir`: the directory must be inside a scope and
/// the victim must not be a scope root.
#[inline(always)]
fn removal(session: u32, op: u32, dir: u64, victim: u64, allow: i32) -> i32 {
    let Ok((mnt, dir_dentry)) = path_parts(dir) else {
        return deny_at(
            session,
            op,
            RULE_UNRESOLVED,
            Location {
                mnt: 0,
                dentry: victim,
            },
            allow,
        );
    };
    let at = Location {
        mnt,
        dentry: victim,
    };
    if let Err(rule) = check_inside(session, mnt, dir_dentry) {
        return deny_at(session, op, rule, at, allow);
    }
    if let Err(rule) = check_not_scope_root(session, victim) {
        return deny_at(session, op, rule, at, allow);
    }
    allow
}

/// `path_unlink(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    removal(
        session,
        OP_UNLINK,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    removal(
        session,
        OP_RMDIR,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`: the source leaves
/// `old_dir` and the destination (new or replaced, or the other side of RENAME_EXCHANGE)
/// lands in `new_dir`; both directories must be inside a scope and neither dentry may be a
/// scope root. One check covers plain renames and exchanges alike.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 5) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    match try_path_rename(&ctx, session) {
        Ok(()) => allow,
        Err(finding) => decide(session, &finding, allow),
    }
}

#[inline(always)]
fn try_path_rename(ctx: &LsmContext, session: u32) -> Result<(), Finding> {
    let old_dir = ctx.arg::<*const u8>(0) as u64;
    let old_dentry = ctx.arg::<*const u8>(1) as u64;
    let new_dir = ctx.arg::<*const u8>(2) as u64;
    let new_dentry = ctx.arg::<*const u8>(3) as u64;
    let finding = |rule: u32, old_mnt: u64, new_mnt: u64| Finding {
        op: OP_RENAME,
        rule,
        errno: EPERM,
        target: Some(Location {
            mnt: old_mnt,
            dentry: old_dentry,
        }),
        target2: Some(Location {
            mnt: new_mnt,
            dentry: new_dentry,
        }),
        target_pid: 0,
        detail: 0,
    };
    let (Ok((old_mnt, old_parent)), Ok((new_mnt, new_parent))) =
        (path_parts(old_dir), path_parts(new_dir))
    else {
        return Err(finding(RULE_UNRESOLVED, 0, 0));
    };
    check_inside(session, old_mnt, old_parent)
        .and_then(|()| check_inside(session, new_mnt, new_parent))
        .and_then(|()| check_not_scope_root(session, old_dentry))
        .and_then(|()| check_not_scope_root(session, new_dentry))
        .map_err(|rule| finding(rule, old_mnt, new_mnt))
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry
/// *new_dentry)`: a new name for a file outside the scopes would make it writable through
/// the scope, and a new name outside plants a file there. Links are same-mount only, so
/// `new_dir`'s mount is the source's too.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let old_dentry = ctx.arg::<*const u8>(0) as u64;
    let new_dir = ctx.arg::<*const u8>(1) as u64;
    let new_dentry = ctx.arg::<*const u8>(2) as u64;
    let Ok((mnt, _)) = path_parts(new_dir) else {
        return deny_at(
            session,
            OP_LINK,
            RULE_UNRESOLVED,
            Location {
                mnt: 0,
                dentry: old_dentry,
            },
            allow,
        );
    };
    let new_dir_dentry = match path_parts(new_dir) {
        Ok((_, dentry)) => dentry,
        Err(Unreadable) => 0,
    };
    // The existing file must be inside (else it becomes writable through the scope), and
    // so must the new name (else the link plants a file outside).
    match check_inside(session, mnt, old_dentry)
        .and_then(|()| check_inside(session, mnt, new_dir_dentry))
    {
        Ok(()) => allow,
        Err(rule) => decide(
            session,
            &Finding {
                op: OP_LINK,
                rule,
                errno: EPERM,
                target: Some(Location {
                    mnt,
                    dentry: old_dentry,
                }),
                target2: Some(Location {
                    mnt,
                    dentry: new_dentry,
                }),
                target_pid: 0,
                detail: 0,
            },
            allow,
        ),
    }
}

/// Whether writing to the object at `(mnt, dentry)` is allowed: regular files and block
/// devices inside a scope, character devices the policy lists, and anything that is not a
/// file on a filesystem (pipes, sockets). A regular file with several names is refused
/// because one of its other names may lie outside the scope; a file with no name left
/// (memfd, O_TMPFILE, unlinked) destroys nothing anyone can reach by path.
#[inline(always)]
fn check_writable(session: u32, mnt: u64, dentry: u64) -> Result<(), u32> {
    let inspect = || -> Result<(u16, u32, u32), Unreadable> {
        let inode = read_u64(dentry, off!(dentry_d_inode))?;
        if inode == 0 {
            return Ok((0, 0, 0));
        }
        Ok((
            read_u16(inode, off!(inode_i_mode))?,
            read_u32(inode, off!(inode_i_nlink))?,
            read_u32(inode, off!(inode_i_rdev))?,
        ))
    };
    let Ok((mode, nlink, rdev)) = inspect() else {
        return Err(RULE_UNRESOLVED);
    };
    match mode & S_IFMT {
        S_IFREG => {
            if nlink == 0 {
                return Ok(());
            }
            // A session's own processes' /proc files (comm, oom_score_adj, uid_map for
            // `unshare -r`, attr/...) stay writable; other processes' and the kernel's
            // knobs (/proc/sys, /proc/sysrq-trigger) do not.
            if let Ok(Some(task)) = proc_inode_task(dentry) {
                if in_session(task, session) {
                    return Ok(());
                }
            }
            check_inside(session, mnt, dentry)?;
            if nlink > 1 {
                return Err(RULE_MULTI_LINK);
            }
            Ok(())
        }
        S_IFBLK => check_inside(session, mnt, dentry),
        S_IFCHR => {
            let any_minor = (rdev & !ANY_MINOR) | ANY_MINOR;
            if DEVICES.get_ptr(&[session, rdev]).is_some()
                || DEVICES.get_ptr(&[session, any_minor]).is_some()
            {
                return Ok(());
            }
            check_inside(session, mnt, dentry)
        }
        _ => Ok(()),
    }
}

/// `file_open(struct file *file)`: opening an existing file for writing outside the scopes.
/// Files this very open created are left to the creation rules of the policy. Backing files
/// of overlayfs are skipped: the kernel opens them after the user-visible overlay file, whose
/// own `file_open` already took the decision on the path the process used (in a container,
/// the backing path is an internal upper directory that no scope names).
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 1) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let file = ctx.arg::<*const u8>(0) as u64;
    let Ok(f_mode) = read_u32(file, off!(file_f_mode)) else {
        return unresolved(session, OP_OPEN_WRITE, allow);
    };
    if f_mode & FMODE_WRITE == 0 || f_mode & (FMODE_CREATED | FMODE_BACKING | FMODE_NOACCOUNT) != 0
    {
        return allow;
    }
    write_file(session, OP_OPEN_WRITE, file, allow)
}

/// [`check_writable`] on the object at the `struct path` pointer `path`: the one decision
/// behind opening for writing, truncating, writing through a descriptor and mapping shared
/// and writable. On refusal, the rule and where.
#[inline(always)]
fn writable_at(session: u32, path: u64) -> Result<(), (u32, Location)> {
    let Ok((mnt, dentry)) = path_parts(path) else {
        return Err((RULE_UNRESOLVED, Location { mnt: 0, dentry: 0 }));
    };
    check_writable(session, mnt, dentry).map_err(|rule| (rule, Location { mnt, dentry }))
}

/// [`writable_at`] for `op`, refused and reported.
#[inline(always)]
fn write_at(session: u32, op: u32, path: u64, allow: i32) -> i32 {
    match writable_at(session, path) {
        Ok(()) => allow,
        Err((rule, at)) => deny_at(session, op, rule, at, allow),
    }
}

/// [`write_at`] for opening `file` or writing through it. In audit mode nothing stops the
/// writes after an open the policy refuses, so each open file is reported once, by its open
/// or by its first write, not at every write after that.
#[inline(always)]
fn write_file(session: u32, op: u32, file: u64, allow: i32) -> i32 {
    let Err((rule, at)) = writable_at(session, file_path(file)) else {
        return allow;
    };
    if audit_mode(session) {
        let seen = [u64::from(session), at.dentry];
        // SAFETY: plain data; a racing update can only cost one more report.
        if unsafe { AUDITED_FILES.get(&file) } == Some(&seen) {
            return allow;
        }
        let _ = AUDITED_FILES.insert(&file, &seen, 0);
    }
    deny_at(session, op, rule, at, allow)
}

/// `path_truncate(const struct path *path)`: truncate(2); on kernels before 6.2 also
/// ftruncate(2) and O_TRUNC.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 1) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    write_at(session, OP_TRUNCATE, ctx.arg::<*const u8>(0) as u64, allow)
}

/// `file_truncate(struct file *file)` (Linux 6.2 and later): ftruncate(2) and O_TRUNC,
/// including through a descriptor opened for writing before the session began.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 1) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    write_at(
        session,
        OP_TRUNCATE,
        file_path(ctx.arg::<*const u8>(0) as u64),
        allow,
    )
}

/// `op` refused because its target could not be read from the kernel's objects: fail
/// closed.
#[inline(always)]
fn unresolved(session: u32, op: u32, allow: i32) -> i32 {
    deny_at(
        session,
        op,
        RULE_UNRESOLVED,
        Location { mnt: 0, dentry: 0 },
        allow,
    )
}

/// The decision for a write `op` whose target the hook found: a `struct path` pointer to
/// decide with [`write_at`], or `None` when there is nothing to decide.
#[inline(always)]
fn write_to(session: u32, op: u32, target: Result<Option<u64>, Unreadable>, allow: i32) -> i32 {
    match target {
        Ok(Some(path)) => write_at(session, op, path, allow),
        Ok(None) => allow,
        Err(Unreadable) => unresolved(session, op, allow),
    }
}

/// `file_permission(struct file *file, int mask)`: the kernel asks before every read and
/// write of a file's data: write(2) and its vector, positional and asynchronous forms,
/// fallocate, copy_file_range, splice and sendfile into the file, clone and dedupe ranges,
/// and their io_uring versions. `file_open` decided the descriptors a session opened itself;
/// this decides the others as well: descriptors inherited from whoever started the session
/// or passed over a socket, whose opening no session hook saw.
///
/// Every read and write of every process passes here, so reads leave at the first test and
/// processes outside the sessions at the second. Backing files of overlayfs are skipped as
/// in `file_open`: the kernel writes them for the overlay file the process holds, whose own
/// write was decided first.
#[lsm(hook = "file_permission")]
pub fn file_permission(ctx: LsmContext) -> i32 {
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 {
        return ctx.arg(2);
    }
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let file = ctx.arg::<*const u8>(0) as u64;
    match read_u32(file, off!(file_f_mode)) {
        Ok(f_mode) if f_mode & (FMODE_BACKING | FMODE_NOACCOUNT) != 0 => allow,
        Ok(_) => write_file(session, OP_WRITE, file, allow),
        Err(Unreadable) => unresolved(session, OP_WRITE, allow),
    }
}

/// The `struct path` through which the process reached `file`. For a backing file (what
/// overlayfs puts into a mapping of one of its files) Linux 6.8 and later keep the real path
/// of the lower file in `f_path` and the process's path in `struct backing_file`; the
/// decision must be the one the overlay file would get.
#[inline(always)]
fn user_path(file: u64) -> Result<u64, Unreadable> {
    let f_mode = read_u32(file, off!(file_f_mode))?;
    let user_path = off!(backing_file_user_path);
    if f_mode & FMODE_BACKING != 0 && user_path != 0 {
        return Ok(file + user_path);
    }
    Ok(file_path(file))
}

/// `mmap_file(struct file *file, unsigned long reqprot, unsigned long prot, unsigned long
/// flags)`: a shared writable mapping writes the file as surely as write(2) does, without
/// another hook. Private and read-only mappings (every executable and library) and
/// anonymous ones leave at the first test. A descriptor not open for writing cannot be
/// mapped shared and writable at all; the kernel refuses that itself.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let file = ctx.arg::<*const u8>(0) as u64;
    let prot: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    if file == 0 || prot & PROT_WRITE == 0 || flags & MAP_SHARED == 0 {
        return ctx.arg(4);
    }
    let (session, allow) = match enter(&ctx, 4) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let target = || -> Result<Option<u64>, Unreadable> {
        if read_u32(file, off!(file_f_mode))? & FMODE_WRITE == 0 {
            return Ok(None);
        }
        user_path(file).map(Some)
    };
    write_to(session, OP_MMAP, target(), allow)
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)`:
/// adding write to a shared mapping made read-only first is the other way to a writable
/// mapping. `VM_SHARED` is only set on shared mappings of descriptors open for writing.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let prot: u64 = ctx.arg(2);
    if prot & PROT_WRITE == 0 {
        return ctx.arg(3);
    }
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let vma = ctx.arg::<*const u8>(0) as u64;
    let target = || -> Result<Option<u64>, Unreadable> {
        if read_u64(vma, off!(vma_vm_flags))? & VM_SHARED == 0 {
            return Ok(None);
        }
        match read_u64(vma, off!(vma_vm_file))? {
            0 => Ok(None),
            file => user_path(file).map(Some),
        }
    };
    write_to(session, OP_MMAP, target(), allow)
}

/// The location of the `struct path` at `path`, for an event. An unreadable one is all
/// zeros, which renders as an empty path marked cut short: an `Option` would leave LLVM an
/// undefined payload to spill, which the verifier refuses once two meet in one event.
#[inline(always)]
fn location(path: u64) -> Location {
    let (mnt, dentry) = path_parts(path).unwrap_or((0, 0));
    Location { mnt, dentry }
}

/// Refuses `op`, a change to the mount tree, at `target` (and `target2`). Sessions change no
/// mounts, so the refusal needs no lookup that could fail: only the event's paths can be
/// missing.
#[inline(always)]
fn refuse_mount(
    session: u32,
    op: u32,
    target: Location,
    target2: Option<Location>,
    allow: i32,
) -> i32 {
    let finding = Finding {
        op,
        rule: RULE_MOUNT,
        errno: EPERM,
        target: Some(target),
        target2,
        target_pid: 0,
        detail: 0,
    };
    decide(session, &finding, allow)
}

/// `sb_mount(dev_name, path, type, flags, data)`: a session mounts nothing. A mount could
/// place a filesystem that lies outside the scopes under a scope.
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    match enter(&ctx, 5) {
        Ok((session, allow)) => refuse_mount(
            session,
            OP_MOUNT,
            location(ctx.arg::<*const u8>(1) as u64),
            None,
            allow,
        ),
        Err(verdict) => verdict,
    }
}

/// `move_mount(const struct path *from_path, const struct path *to_path)`: the new mount
/// API's way to attach a mount; refused like `mount(2)`.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    match enter(&ctx, 2) {
        Ok((session, allow)) => refuse_mount(
            session,
            OP_MOUNT,
            location(ctx.arg::<*const u8>(1) as u64),
            None,
            allow,
        ),
        Err(verdict) => verdict,
    }
}

/// `sb_umount(struct vfsmount *mnt, int flags)`: a session unmounts nothing. Taking a mount
/// away can uncover what it hid, or pull a filesystem from under the processes using it.
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let mnt = ctx.arg::<*const u8>(0) as u64;
    // The mount's root dentry: its event path is where the mount is attached.
    let dentry = read_u64(mnt, off!(vfsmount_mnt_root)).unwrap_or(0);
    refuse_mount(session, OP_UMOUNT, Location { mnt, dentry }, None, allow)
}

/// `sb_pivotroot(const struct path *old_path, const struct path *new_path)`: pivot_root(2)
/// swaps the root of a mount namespace, which no session does. The event names the new
/// root first and the place of the old one second, in the system call's order.
#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    refuse_mount(
        session,
        OP_PIVOT_ROOT,
        location(ctx.arg::<*const u8>(1) as u64),
        Some(location(ctx.arg::<*const u8>(0) as u64)),
        allow,
    )
}

/// Refuses an attribute change (mode, owner, xattr) of `dentry` outside the scopes. Any file
/// type counts: `chmod 000` on a directory destroys access as surely as on a file.
#[inline(always)]
fn attribute_change(session: u32, op: u32, mnt: u64, dentry: u64, allow: i32) -> i32 {
    match check_inside(session, mnt, dentry) {
        Ok(()) => allow,
        Err(rule) => deny_at(session, op, rule, Location { mnt, dentry }, allow),
    }
}

/// [`attribute_change`] of the object at the `struct path` pointer `path`.
#[inline(always)]
fn attribute_change_at(session: u32, op: u32, path: u64, allow: i32) -> i32 {
    match path_parts(path) {
        Ok((mnt, dentry)) => attribute_change(session, op, mnt, dentry, allow),
        Err(Unreadable) => unresolved(session, op, allow),
    }
}

/// `path_chmod(const struct path *path, umode_t mode)`: chmod, fchmod, fchmodat.
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    attribute_change_at(session, OP_CHMOD, ctx.arg::<*const u8>(0) as u64, allow)
}

/// `path_chown(const struct path *path, kuid_t uid, kgid_t gid)`: chown and friends.
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    attribute_change_at(session, OP_CHOWN, ctx.arg::<*const u8>(0) as u64, allow)
}

/// `inode_setxattr(idmap, struct dentry *dentry, name, value, size, flags)`. The hook has
/// no mount, so the walk cannot step out of the dentry's filesystem: a target whose scope
/// lies on another filesystem is refused as outside (fail closed), and its event path is
/// known up to that filesystem's root only.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 6) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    attribute_change(
        session,
        OP_SETXATTR,
        0,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `inode_removexattr(idmap, struct dentry *dentry, const char *name)`; see
/// `inode_setxattr` for the missing mount.
#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    attribute_change(
        session,
        OP_REMOVEXATTR,
        0,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `inode_setattr([struct mnt_idmap *idmap,] struct dentry *dentry, struct iattr *attr)`:
/// setting a file's times (utime, utimes, utimensat, futimens, `touch`), like any attribute
/// change. Mode, owner and size changes pass here too, but `path_chmod`, `path_chown` and
/// the truncate hooks decide those with the mount, so they are left to them. The hook has
/// no mount: see `inode_setxattr`.
///
/// 6.12 passes a `mnt_idmap` first and 6.1 does not, so the dentry is found counting from
/// the last argument. The verdict slot moves with it and is not read, as in the `bpf` hook: a
/// BPF LSM program only runs while the verdict is still 0, since a non-zero one ends the
/// chain of programs.
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    const ALLOW: i32 = 0;
    let Some(session) = current_session() else {
        return ALLOW;
    };
    let unresolved = |dentry: u64| {
        deny_at(
            session,
            OP_UTIMES,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry },
            ALLOW,
        )
    };
    let (Some(dentry), Some(attr)) = (arg_from_end(&ctx, 2), arg_from_end(&ctx, 1)) else {
        return unresolved(0);
    };
    let Ok(valid) = read_u32(attr, off!(iattr_ia_valid)) else {
        return unresolved(dentry);
    };
    if valid & (ATTR_ATIME | ATTR_MTIME | ATTR_TOUCH) == 0
        || valid & (ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE) != 0
    {
        return ALLOW;
    }
    // Overlayfs repeats a change it was asked for on its upper layer (and sets the times of
    // each file it copies up) with its own credentials. The change on the overlay's file was
    // decided here first; the upper layer's filesystem holds no scope, so deciding the
    // repetition would refuse every change inside the scope. (No io_uring operation sets
    // times, so a request under another personality cannot come this way.)
    match creds_overridden() {
        Ok(true) => ALLOW,
        Ok(false) => attribute_change(session, OP_UTIMES, 0, dentry, ALLOW),
        Err(Unreadable) => unresolved(dentry),
    }
}

/// Creation of `dentry` in the directory at the `struct path` pointer `dir`: the directory
/// must be inside a scope. A new file in /etc/cron.d is as harmful as a deleted one.
#[inline(always)]
fn creation(session: u32, op: u32, dir: u64, dentry: u64, allow: i32) -> i32 {
    let Ok((mnt, dir_dentry)) = path_parts(dir) else {
        return deny_at(
            session,
            op,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry },
            allow,
        );
    };
    match check_inside(session, mnt, dir_dentry) {
        Ok(()) => allow,
        Err(rule) => deny_at(session, op, rule, Location { mnt, dentry }, allow),
    }
}

/// `path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int
/// dev)`: open(O_CREAT) of a new file, mknod, mkfifo, and binding a unix socket.
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 4) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    creation(
        session,
        OP_CREATE,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    creation(
        session,
        OP_MKDIR,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// `path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)`.
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    creation(
        session,
        OP_SYMLINK,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}
