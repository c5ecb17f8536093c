//! Telling user space the identity the hooks see for a file, so that the scope and
//! protected tables are keyed exactly as the kernel will look them up (`stat` disagrees on
//! overlayfs, where a regular file reports its layer's device).
use agent_guard_common::IDENTIFY_IOCTL;
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

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
