//! Filesystem hooks: destructive operations outside the session's writable scopes fail with
//! EPERM and are reported.
//!
//! Each hook returns the verdict it was given when it has nothing to refuse, so it composes
//! with the other LSMs, and never overrides an earlier refusal.
use agent_guard_common::{
    NamePattern, ACCESS_MODIFY, ACCESS_READ, ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, EACCES,
    EPERM, MAX_NAME_PATTERNS, OP_CHMOD, OP_CHOWN, OP_CREATE, OP_LINK, OP_MKDIR, OP_MOUNT,
    OP_OPEN_WRITE, OP_READ, OP_REMOVEXATTR, OP_RENAME, OP_RMDIR, OP_SETXATTR, OP_SYMLINK,
    OP_TRUNCATE, OP_UNLINK, RULE_MOUNT, RULE_MULTI_LINK, RULE_POLICY_BASE, RULE_UNRESOLVED,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    guard::in_session,
    kernel::{
        file_path, off, path_parts, proc_inode_task, read_u16, read_u32, read_u64, Unreadable,
    },
    maps::{DEVICES, PATTERNS},
    report::{apply, apply_finding, decide, deny_at, Finding, Location},
    scope::{check, pattern_trees, session_config, Checked},
    session::enter,
};

/// `FMODE_READ` and `FMODE_WRITE` in `file::f_mode`.
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
/// `FMODE_EXEC`: the file is opened to be executed.
const FMODE_EXEC: u32 = 0x20;
/// `RENAME_EXCHANGE` in `path_rename`'s flags.
const RENAME_EXCHANGE: u32 = 1 << 1;
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
const S_IFDIR: u16 = 0o040000;
const S_IFCHR: u16 = 0o020000;
const S_IFBLK: u16 = 0o060000;
/// Minor number that stands for "every minor" in the DEVICES map.
const ANY_MINOR: u32 = 0xfffff;

const ALLOWED: Checked = Checked {
    action: ACTION_ALLOW,
    rule: 0,
};

/// The stronger of two answers (deny over audit over allow); the first on a tie.
#[inline(always)]
fn stronger(a: Checked, b: Checked) -> Checked {
    if b.action > a.action {
        b
    } else {
        a
    }
}

/// Removal of `victim` from the directory `dir`: decided on the victim itself, so that a
/// protected file, a name pattern and the root of a writable scope all count.
#[inline(always)]
fn removal(session: u32, op: u32, dir: u64, victim: u64, allow: i32) -> i32 {
    let Ok((mnt, _)) = path_parts(dir) else {
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
    apply(
        session,
        op,
        check(session, ACCESS_MODIFY, mnt, victim, true),
        EPERM,
        at,
        allow,
    )
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
        Err((checked, finding)) => apply_finding(session, checked, finding, allow),
    }
}

#[inline(always)]
fn try_path_rename(ctx: &LsmContext, session: u32) -> Result<(), (Checked, Finding)> {
    let old_dir = ctx.arg::<*const u8>(0) as u64;
    let old_dentry = ctx.arg::<*const u8>(1) as u64;
    let new_dir = ctx.arg::<*const u8>(2) as u64;
    let new_dentry = ctx.arg::<*const u8>(3) as u64;
    let flags: u32 = ctx.arg(4);
    let finding = |checked: Checked, old_mnt: u64, new_mnt: u64| {
        (
            checked,
            Finding {
                op: OP_RENAME,
                rule: checked.rule,
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
            },
        )
    };
    let (Ok((old_mnt, old_parent)), Ok((new_mnt, new_parent))) =
        (path_parts(old_dir), path_parts(new_dir))
    else {
        return Err(finding(
            Checked {
                action: ACTION_DENY,
                rule: RULE_UNRESOLVED,
            },
            0,
            0,
        ));
    };
    let exchange = flags & RENAME_EXCHANGE != 0;
    // Both names change: the source leaves, the destination is created or replaced.
    let mut verdict = stronger(
        check(session, ACCESS_MODIFY, old_mnt, old_dentry, true),
        check(session, ACCESS_MODIFY, new_mnt, new_dentry, true),
    );
    let config = session_config(session);
    // A read-denied object keeps its protection only under its name: it may not get a new
    // one (for an exchange, both objects get one).
    if config.reads != 0 && verdict.action != ACTION_DENY {
        verdict = stronger(verdict, read_guard(session, old_mnt, old_dentry));
        if exchange {
            verdict = stronger(verdict, read_guard(session, new_mnt, new_dentry));
        }
    }
    // A directory moved out of a name pattern's tree would take the files the pattern
    // guards inside it along, out of the pattern's reach.
    if config.patterns != 0 && verdict.action != ACTION_DENY {
        if is_directory(old_dentry) {
            verdict = stronger(
                verdict,
                leaving_trees(session, (old_mnt, old_parent), (new_mnt, new_parent)),
            );
        }
        if exchange && is_directory(new_dentry) {
            verdict = stronger(
                verdict,
                leaving_trees(session, (new_mnt, new_parent), (old_mnt, old_parent)),
            );
        }
    }
    if verdict.action == ACTION_ALLOW {
        Ok(())
    } else {
        Err(finding(verdict, old_mnt, new_mnt))
    }
}

/// A read check used to keep a read-denied object's name: its deny or audit applies to
/// the renaming or linking operation, anything else allows.
#[inline(always)]
fn read_guard(session: u32, mnt: u64, dentry: u64) -> Checked {
    let read = check(session, ACCESS_READ, mnt, dentry, false);
    if read.action == ACTION_DENY || read.action == ACTION_AUDIT {
        read
    } else {
        ALLOWED
    }
}

/// Whether `dentry` is a directory (an unreadable one counts as one: fail closed).
#[inline(always)]
fn is_directory(dentry: u64) -> bool {
    let mode = read_u64(dentry, off!(dentry_d_inode)).and_then(|inode| {
        if inode == 0 {
            Ok(0)
        } else {
            read_u16(inode, off!(inode_i_mode))
        }
    });
    match mode {
        Ok(mode) => mode & S_IFMT == S_IFDIR,
        Err(Unreadable) => true,
    }
}

/// The verdict on moving a directory from `from` to `to` (each a mount and a parent
/// dentry): a deny or audit name pattern whose tree holds `from` but not `to` applies.
#[inline(always)]
fn leaving_trees(session: u32, from: (u64, u64), to: (u64, u64)) -> Checked {
    let (src, dst) = match (
        pattern_trees(session, from.0, from.1),
        pattern_trees(session, to.0, to.1),
    ) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(rule), _) | (_, Err(rule)) => {
            return Checked {
                action: ACTION_DENY,
                rule,
            }
        }
    };
    let left = src & !dst;
    let mut verdict = ALLOWED;
    if left == 0 {
        return verdict;
    }
    let Some(set) = PATTERNS.get_ptr(&session) else {
        // Trees were found, so the patterns exist: their absence is an inconsistency.
        return Checked {
            action: ACTION_DENY,
            rule: RULE_UNRESOLVED,
        };
    };
    for i in 0..MAX_NAME_PATTERNS {
        // SAFETY: a map value, read in place (it is far larger than the BPF stack).
        let pattern = unsafe { &*set.cast::<NamePattern>().add(i) };
        if left & (1 << i) != 0 && pattern.verdict.action > ACTION_ALLOW {
            verdict = stronger(
                verdict,
                Checked {
                    action: pattern.verdict.action,
                    rule: RULE_POLICY_BASE + pattern.verdict.rule as u32,
                },
            );
        }
    }
    verdict
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
    // The existing file must be modifiable (else it becomes writable through the scope),
    // the new name must be creatable (else the link plants a file outside), and a
    // read-denied file may not get a name its rule does not cover.
    let mut verdict = stronger(
        check(session, ACCESS_MODIFY, mnt, old_dentry, false),
        check(session, ACCESS_MODIFY, mnt, new_dentry, false),
    );
    if verdict.action != ACTION_DENY && session_config(session).reads != 0 {
        verdict = stronger(verdict, read_guard(session, mnt, old_dentry));
    }
    let mut finding = Finding::at(
        OP_LINK,
        verdict.rule,
        EPERM,
        Location {
            mnt,
            dentry: old_dentry,
        },
    );
    finding.target2 = Some(Location {
        mnt,
        dentry: new_dentry,
    });
    apply_finding(session, verdict, finding, allow)
}

/// Whether writing to the object at `(mnt, dentry)` is allowed: regular files and block
/// devices inside a scope, character devices the policy lists, and anything that is not a
/// file on a filesystem (pipes, sockets). A regular file with several names is refused
/// because one of its other names may lie outside the scope; a file with no name left
/// (memfd, O_TMPFILE, unlinked) destroys nothing anyone can reach by path.
#[inline(always)]
fn check_writable(session: u32, mnt: u64, dentry: u64) -> Checked {
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
        return Checked {
            action: ACTION_DENY,
            rule: RULE_UNRESOLVED,
        };
    };
    match mode & S_IFMT {
        S_IFREG => {
            if nlink == 0 {
                return ALLOWED;
            }
            // A session's own processes' /proc files (comm, oom_score_adj, uid_map for
            // `unshare -r`, attr/...) stay writable; other processes' and the kernel's
            // knobs (/proc/sys, /proc/sysrq-trigger) do not.
            if let Ok(Some(task)) = proc_inode_task(dentry) {
                if in_session(task, session) {
                    return ALLOWED;
                }
            }
            let checked = check(session, ACCESS_MODIFY, mnt, dentry, false);
            if checked.action == ACTION_ALLOW && nlink > 1 {
                return Checked {
                    action: ACTION_DENY,
                    rule: RULE_MULTI_LINK,
                };
            }
            checked
        }
        S_IFBLK => check(session, ACCESS_MODIFY, mnt, dentry, false),
        S_IFCHR => {
            let any_minor = (rdev & !ANY_MINOR) | ANY_MINOR;
            if DEVICES.get_ptr(&[session, rdev]).is_some()
                || DEVICES.get_ptr(&[session, any_minor]).is_some()
            {
                return ALLOWED;
            }
            check(session, ACCESS_MODIFY, mnt, dentry, false)
        }
        _ => ALLOWED,
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
    if f_mode & (FMODE_CREATED | FMODE_BACKING | FMODE_NOACCOUNT) != 0 {
        return allow;
    }
    let writing = f_mode & FMODE_WRITE != 0;
    // Reads are looked at only when some rule speaks for them: reading elsewhere costs one
    // lookup of the session's settings.
    let reading = f_mode & (FMODE_READ | FMODE_EXEC) != 0 && session_config(session).reads != 0;
    if !writing && !reading {
        return allow;
    }
    let Ok((mnt, dentry)) = path_parts(file_path(file)) else {
        return deny_at(
            session,
            if writing { OP_OPEN_WRITE } else { OP_READ },
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry: 0 },
            allow,
        );
    };
    let at = Location { mnt, dentry };
    if writing {
        let verdict = apply(
            session,
            OP_OPEN_WRITE,
            check_writable(session, mnt, dentry),
            EPERM,
            at,
            allow,
        );
        if verdict != allow {
            return verdict;
        }
    }
    if reading {
        return apply(
            session,
            OP_READ,
            check(session, ACCESS_READ, mnt, dentry, false),
            EACCES,
            at,
            allow,
        );
    }
    allow
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
    apply(
        session,
        OP_TRUNCATE,
        check_writable(session, mnt, dentry),
        EPERM,
        Location { mnt, dentry },
        allow,
    )
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

/// Applies the policy's answer on modifying `dentry`: an attribute change (mode, owner,
/// xattr; any file type counts, `chmod 000` on a directory destroys access as surely as on
/// a file) or the creation of a new name.
#[inline(always)]
fn modification(session: u32, op: u32, mnt: u64, dentry: u64, allow: i32) -> i32 {
    apply(
        session,
        op,
        check(session, ACCESS_MODIFY, mnt, dentry, false),
        EPERM,
        Location { mnt, dentry },
        allow,
    )
}

/// [`modification`] of the object at the `struct path` pointer `path`.
#[inline(always)]
fn attribute_change_at(session: u32, op: u32, path: u64, allow: i32) -> i32 {
    match path_parts(path) {
        Ok((mnt, dentry)) => modification(session, op, mnt, dentry, allow),
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
    modification(
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
    modification(
        session,
        OP_REMOVEXATTR,
        0,
        ctx.arg::<*const u8>(1) as u64,
        allow,
    )
}

/// Creation of `dentry` in the directory at the `struct path` pointer `dir`, decided on the
/// new (still negative) dentry, so that its directory's rules and its own name count. A new
/// file in /etc/cron.d is as harmful as a deleted one.
#[inline(always)]
fn creation(session: u32, op: u32, dir: u64, dentry: u64, allow: i32) -> i32 {
    let Ok((mnt, _)) = path_parts(dir) else {
        return deny_at(
            session,
            op,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry },
            allow,
        );
    };
    modification(session, op, mnt, dentry, allow)
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
