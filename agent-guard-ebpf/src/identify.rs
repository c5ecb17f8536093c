//! Telling user space the identity the hooks see for a file, so that the scope and
//! protected tables are keyed exactly as the kernel will look them up (`stat` disagrees on
//! overlayfs, where a regular file reports its layer's device).
use agent_guard_common::{IDENTIFY_IOCTL, IDENTIFY_XATTR};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_kernel_str},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    kernel::{file_path, inode_identity, path_parts},
    maps::IDENTITY,
    session::current_session,
};

/// `file_ioctl(struct file *file, unsigned int cmd, unsigned long arg)`: answers
/// `IDENTIFY_IOCTL` from user space outside the sessions with the (device, inode) the other
/// hooks see for this file, so that scopes and protected paths are keyed exactly as the
/// kernel will look them up. Every other ioctl passes untouched.
#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    let allow: i32 = ctx.arg(3);
    let cmd: u32 = ctx.arg(1);
    if cmd != IDENTIFY_IOCTL || current_session().is_some() {
        return allow;
    }
    let file = ctx.arg::<*const u8>(0) as u64;
    let Ok((_, dentry)) = path_parts(file_path(file)) else {
        return allow;
    };
    if let Ok(Some((dev, ino))) = inode_identity(dentry) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = IDENTITY.insert(&tgid, &[u64::from(dev), ino], 0);
    }
    allow
}

/// `inode_getxattr(struct dentry *dentry, const char *name)`: answers a lookup of
/// `IDENTIFY_XATTR` from user space outside the sessions like `file_ioctl` does, for files
/// that cannot be opened (unix sockets). Every other lookup passes untouched.
#[lsm(hook = "inode_getxattr")]
pub fn inode_getxattr(ctx: LsmContext) -> i32 {
    let allow: i32 = ctx.arg(2);
    let name = ctx.arg::<*const u8>(1);
    let mut asked = [0u8; IDENTIFY_XATTR.len()];
    // SAFETY: reads at most `asked.len()` bytes of kernel memory into the buffer; the
    // helper fails instead of faulting.
    let read = unsafe {
        bpf_probe_read_kernel_str(asked.as_mut_ptr().cast(), asked.len() as u32, name.cast())
    };
    if read != IDENTIFY_XATTR.len() as i64 || asked != *IDENTIFY_XATTR {
        return allow;
    }
    if current_session().is_some() {
        return allow;
    }
    let dentry = ctx.arg::<*const u8>(0) as u64;
    if let Ok(Some((dev, ino))) = inode_identity(dentry) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // Only the first answer: on overlayfs the lookup is repeated on the layer below,
        // whose identity is not the one the hooks see.
        let _ = IDENTITY.insert(&tgid, &[u64::from(dev), ino], BPF_NOEXIST);
    }
    allow
}

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;
