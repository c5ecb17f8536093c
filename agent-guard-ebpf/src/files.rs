//! Filesystem hooks: destructive operations outside the session's writable scopes fail with
//! EPERM and are reported.
//!
//! Each hook returns the verdict it was given when it has nothing to refuse, so it composes
//! with the other LSMs, and never overrides an earlier refusal.
use agent_guard_common::{
    EPERM, OP_CHMOD, OP_CHOWN, OP_CREATE, OP_LINK, OP_MKDIR, OP_MOUNT, OP_OPEN_WRITE,
    OP_REMOVEXATTR, OP_RENAME, OP_RMDIR, OP_SETXATTR, OP_SYMLINK, OP_TRUNCATE, OP_UNLINK,
    RULE_MOUNT, RULE_MULTI_LINK, RULE_UNRESOLVED,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    guard::in_session,
    kernel::{
        file_path, off, path_parts, proc_inode_task, read_u16, read_u32, read_u64, Unreadable,
    },
    maps::DEVICES,
    report::{decide, deny_at, Finding, Location},
    scope::{check_inside, check_not_scope_root},
    session::enter,
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
        return deny_at(
            session,
            OP_OPEN_WRITE,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry: 0 },
            allow,
        );
    };
    if f_mode & FMODE_WRITE == 0 || f_mode & (FMODE_CREATED | FMODE_BACKING | FMODE_NOACCOUNT) != 0
    {
        return allow;
    }
    let Ok((mnt, dentry)) = path_parts(file_path(file)) else {
        return deny_at(
            session,
            OP_OPEN_WRITE,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry: 0 },
            allow,
        );
    };
    match check_writable(session, mnt, dentry) {
        Ok(()) => allow,
        Err(rule) => deny_at(
            session,
            OP_OPEN_WRITE,
            rule,
            Location { mnt, dentry },
            allow,
        ),
    }
}

#[inline(always)]
fn truncate(session: u32, path: u64, allow: i32) -> i32 {
    let Ok((mnt, dentry)) = path_parts(path) else {
        return deny_at(
            session,
            OP_TRUNCATE,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry: 0 },
            allow,
        );
    };
    match check_writable(session, mnt, dentry) {
        Ok(()) => allow,
        Err(rule) => deny_at(session, OP_TRUNCATE, rule, Location { mnt, dentry }, allow),
    }
}

/// `path_truncate(const struct path *path)`: truncate(2); on kernels before 6.2 also
/// ftruncate(2) and O_TRUNC.
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 1) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    truncate(session, ctx.arg::<*const u8>(0) as u64, allow)
}

/// `file_truncate(struct file *file)` (Linux 6.2 and later): ftruncate(2) and O_TRUNC,
/// including through a descriptor opened for writing before the session began.
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 1) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    truncate(session, file_path(ctx.arg::<*const u8>(0) as u64), allow)
}

/// Refuses a mount onto the `struct path` at `target` (a pointer from the hook's arguments).
#[inline(always)]
fn refuse_mount(session: u32, target: u64, allow: i32) -> i32 {
    let at = path_parts(target).map(|(mnt, dentry)| Location { mnt, dentry });
    let finding = Finding {
        op: OP_MOUNT,
        rule: RULE_MOUNT,
        errno: EPERM,
        target: at.ok(),
        target2: None,
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
        Ok((session, allow)) => refuse_mount(session, ctx.arg::<*const u8>(1) as u64, allow),
        Err(verdict) => verdict,
    }
}

/// `move_mount(const struct path *from_path, const struct path *to_path)`: the new mount
/// API's way to attach a mount; refused like `mount(2)`.
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    match enter(&ctx, 2) {
        Ok((session, allow)) => refuse_mount(session, ctx.arg::<*const u8>(1) as u64, allow),
        Err(verdict) => verdict,
    }
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
        Err(Unreadable) => deny_at(
            session,
            op,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry: 0 },
            allow,
        ),
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
