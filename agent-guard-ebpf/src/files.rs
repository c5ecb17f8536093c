//! Filesystem hooks: destructive operations outside the session's writable scopes fail with
//! EPERM and are reported.
//!
//! Each hook returns the verdict it was given when it has nothing to refuse, so it composes
//! with the other LSMs, and never overrides an earlier refusal.
use agent_guard_common::{
    NamePattern, ACCESS_MODIFY, ACCESS_READ, ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, EACCES,
    EPERM, MAX_NAME_PATTERNS, OP_CHMOD, OP_CHOWN, OP_CREATE, OP_LINK, OP_MKDIR, OP_MMAP, OP_MOUNT,
    OP_OPEN_WRITE, OP_PIVOT_ROOT, OP_READ, OP_REMOVEXATTR, OP_RENAME, OP_RMDIR, OP_SETXATTR,
    OP_SYMLINK, OP_TRUNCATE, OP_UMOUNT, OP_UNLINK, OP_UTIMES, OP_WRITE, RULE_MOUNT,
    RULE_MULTI_LINK, RULE_POLICY_BASE, RULE_UNRESOLVED,
};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    guard::in_session,
    kernel::{
        arg_from_end, creds_overridden, file_path, is_pidfd, off, path_parts, proc_inode_task,
        read_u16, read_u32, read_u64, Unreadable,
    },
    maps::{AUDITED_FILES, DEVICES, PATTERNS},
    report::{apply, apply_finding, audit_mode, decide, deny_at, Finding, Location},
    scope::{check, pattern_trees, session_config, Checked},
    session::{current_session, enter},
    tally::{Tally, UNTALLIED},
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

const ALLOWED: Checked = Checked {
    action: ACTION_ALLOW,
    rule: 0,
};

/// A name appearing in, or leaving, the directory at the `struct path` pointer `dir`,
/// decided on the dentry itself, so that its directory's rules, its own name (a pattern),
/// a protected file and the root of a writable scope all count. `removal` marks a name
/// leaving (unlink, rmdir): the root of a writable scope may not. A new file in /etc/cron.d
/// is as harmful as a deleted one.
#[inline(always)]
fn name_change(session: u32, op: u32, dir: u64, dentry: u64, removal: bool, allow: i32) -> i32 {
    let Ok((mnt, _)) = path_parts(dir) else {
        return deny_at(
            session,
            op,
            RULE_UNRESOLVED,
            Location { mnt: 0, dentry },
            allow,
        );
    };
    apply(
        session,
        op,
        check(session, ACCESS_MODIFY, mnt, dentry, removal),
        EPERM,
        Location { mnt, dentry },
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
    name_change(
        session,
        OP_UNLINK,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        true,
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
    name_change(
        session,
        OP_RMDIR,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        true,
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
                net: None,
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
    let Some(tally) = Tally::start() else {
        return Err(finding(UNTALLIED, old_mnt, new_mnt));
    };
    // Both names change: the source leaves, the destination is created or replaced.
    tally.add(check(session, ACCESS_MODIFY, old_mnt, old_dentry, true));
    tally.add(check(session, ACCESS_MODIFY, new_mnt, new_dentry, true));
    let config = session_config(session);
    // A read-denied object keeps its protection only under its name: it may not get a new
    // one (for an exchange, both objects get one).
    if config.reads != 0 && !tally.denied() {
        tally.add(read_guard(session, old_mnt, old_dentry));
        if exchange {
            tally.add(read_guard(session, new_mnt, new_dentry));
        }
    }
    // A directory moved out of a name pattern's tree would take the files the pattern
    // guards inside it along, out of the pattern's reach.
    if config.patterns != 0 && !tally.denied() {
        if is_directory(old_dentry) {
            leaving_trees(
                &tally,
                session,
                (old_mnt, old_parent),
                (new_mnt, new_parent),
            );
        }
        if exchange && is_directory(new_dentry) {
            leaving_trees(
                &tally,
                session,
                (new_mnt, new_parent),
                (old_mnt, old_parent),
            );
        }
    }
    let verdict = tally.get();
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

/// Adds the verdict on moving a directory from `from` to `to` (each a mount and a parent
/// dentry) to `tally`: a deny or audit name pattern whose tree holds `from` but not `to`
/// applies.
#[inline(always)]
fn leaving_trees(tally: &Tally, session: u32, from: (u64, u64), to: (u64, u64)) {
    let (src, dst) = match (
        pattern_trees(session, from.0, from.1),
        pattern_trees(session, to.0, to.1),
    ) {
        (Ok(src), Ok(dst)) => (src, dst),
        (Err(rule), _) | (_, Err(rule)) => return tally.deny(rule),
    };
    let left = src & !dst;
    if left == 0 {
        return;
    }
    let Some(set) = PATTERNS.get_ptr(&session) else {
        // Trees were found, so the patterns exist: their absence is an inconsistency.
        return tally.deny(RULE_UNRESOLVED);
    };
    for i in 0..MAX_NAME_PATTERNS {
        // SAFETY: a map value, read in place (it is far larger than the BPF stack).
        let pattern = unsafe { &*set.cast::<NamePattern>().add(i) };
        if left & (1 << i) != 0 && pattern.verdict.action > ACTION_ALLOW {
            tally.add(Checked {
                action: pattern.verdict.action,
                rule: RULE_POLICY_BASE + pattern.verdict.rule as u32,
            });
        }
    }
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
    let verdict = match Tally::start() {
        Some(tally) => {
            tally.add(check(session, ACCESS_MODIFY, mnt, old_dentry, false));
            tally.add(check(session, ACCESS_MODIFY, mnt, new_dentry, false));
            if !tally.denied() && session_config(session).reads != 0 {
                tally.add(read_guard(session, mnt, old_dentry));
            }
            tally.get()
        }
        None => UNTALLIED,
    };
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
/// file on a filesystem (pipes, sockets, pidfds). A regular file with several names is refused
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
    let regular = mode & S_IFMT == S_IFREG;
    match mode & S_IFMT {
        S_IFREG => {
            if nlink == 0 || is_pidfd(dentry).unwrap_or(false) {
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
        }
        S_IFBLK => {}
        S_IFCHR => {
            let any_minor = (rdev & !ANY_MINOR) | ANY_MINOR;
            if DEVICES.get_ptr(&[session, rdev]).is_some()
                || DEVICES.get_ptr(&[session, any_minor]).is_some()
            {
                return ALLOWED;
            }
        }
        _ => return ALLOWED,
    }
    // One walk for every kind: inlined once, the verifier checks its callback once per
    // hook instead of once per kind.
    let checked = check(session, ACCESS_MODIFY, mnt, dentry, false);
    if regular && checked.action == ACTION_ALLOW && nlink > 1 {
        return Checked {
            action: ACTION_DENY,
            rule: RULE_MULTI_LINK,
        };
    }
    checked
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
    if writing {
        let verdict = write_file(session, OP_OPEN_WRITE, file, allow);
        if verdict != allow {
            return verdict;
        }
    }
    if reading {
        let Ok((mnt, dentry)) = path_parts(file_path(file)) else {
            return unresolved(session, OP_READ, allow);
        };
        return apply(
            session,
            OP_READ,
            check(session, ACCESS_READ, mnt, dentry, false),
            EACCES,
            Location { mnt, dentry },
            allow,
        );
    }
    allow
}

/// [`check_writable`] on the object at the `struct path` pointer `path`: the one decision
/// behind opening for writing, truncating, writing through a descriptor and mapping shared
/// and writable, with where it was taken.
#[inline(always)]
fn writable_at(session: u32, path: u64) -> (Checked, Location) {
    let Ok((mnt, dentry)) = path_parts(path) else {
        return (
            Checked {
                action: ACTION_DENY,
                rule: RULE_UNRESOLVED,
            },
            Location { mnt: 0, dentry: 0 },
        );
    };
    (
        check_writable(session, mnt, dentry),
        Location { mnt, dentry },
    )
}

/// [`writable_at`] for `op`, carried out.
#[inline(always)]
fn write_at(session: u32, op: u32, path: u64, allow: i32) -> i32 {
    let (checked, at) = writable_at(session, path);
    apply(session, op, checked, EPERM, at, allow)
}

/// [`write_at`] for opening `file` or writing through it. In audit mode nothing stops the
/// writes after an open the policy refuses, so each open file is reported once, by its open
/// or by its first write, not at every write after that.
#[inline(always)]
fn write_file(session: u32, op: u32, file: u64, allow: i32) -> i32 {
    let (checked, at) = writable_at(session, file_path(file));
    if checked.action == ACTION_ALLOW {
        return allow;
    }
    if checked.action == ACTION_AUDIT || audit_mode(session) {
        let seen = [u64::from(session), at.dentry];
        // SAFETY: plain data; a racing update can only cost one more report.
        if unsafe { AUDITED_FILES.get(&file) } == Some(&seen) {
            return allow;
        }
        let _ = AUDITED_FILES.insert(&file, &seen, 0);
    }
    apply(session, op, checked, EPERM, at, allow)
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
        net: None,
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
        Ok(false) => modification(session, OP_UTIMES, 0, dentry, ALLOW),
        Err(Unreadable) => unresolved(dentry),
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
    name_change(
        session,
        OP_CREATE,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        false,
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
    name_change(
        session,
        OP_MKDIR,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        false,
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
    name_change(
        session,
        OP_SYMLINK,
        ctx.arg::<*const u8>(0) as u64,
        ctx.arg::<*const u8>(1) as u64,
        false,
        allow,
    )
}
