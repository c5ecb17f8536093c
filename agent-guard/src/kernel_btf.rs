//! Reads the running kernel's BTF to find the layout of the structures the BPF programs
//! walk (dentry, inode, mount, task...).
//!
//! The programs read kernel memory at offsets user space gives them (`KernelOffsets`), so
//! one object serves every kernel: 6.1 and 6.12 lay out `struct file` and `struct inode`
//! differently. Only the parts of the BTF format needed to find struct members are parsed.
use std::{collections::HashMap, path::Path};

use agent_guard_common::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no `struct {0}`")]
    NoStruct(String),
    #[error("kernel BTF has no member `{member}` in `struct {strukt}`")]
    NoMember { strukt: String, member: String },
    #[error("member `{member}` of `struct {strukt}` is a bitfield")]
    Bitfield { strukt: String, member: String },
}

struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset within the enclosing type.
    bit_offset: u32,
}

enum Type {
    Composite {
        name_off: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type_tag: look through to `target`.
    Alias {
        target: u32,
    },
    Func {
        name_off: u32,
    },
    Other,
}

/// The parsed type section of one BTF blob.
pub struct KernelBtf {
    strings: Vec<u8>,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_running_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Malformed("empty"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            // With kind_flag, the low 24 bits are the bit offset and the
                            // high 8 the bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    at += vlen * 12;
                    Type::Composite { name_off, members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        target: size_or_type,
                    }
                }
                KIND_FUNC => Type::Func { name_off },
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_ENUM | KIND_FUNC_PROTO => {
                    at += vlen * 8;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    at += vlen * 12;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FLOAT => Type::Other,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }

        let mut btf = Self {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name_off, .. } = ty {
                let name = btf.name(*name_off);
                if !name.is_empty() {
                    // The first definition wins; the kernel has one per name.
                    btf.structs_by_name
                        .entry(name.to_owned())
                        .or_insert(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Whether the kernel has a function of this name (e.g. `bpf_lsm_file_truncate`, which
    /// says whether the `file_truncate` hook exists).
    pub fn has_function(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| matches!(t, Type::Func { name_off } if self.name(*name_off) == name))
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `member` inside type `id`, looking into anonymous structs and unions.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize)
        else {
            return None;
        };
        for m in members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(m.bit_offset);
            }
            if name.is_empty() && depth < 8 {
                if let Some(inner) = self.find_member(m.type_id, member, depth + 1) {
                    return Some(m.bit_offset + inner);
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`.
    pub fn offset_of(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let bits = self
            .find_member(id, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.into(),
                member: member.into(),
            });
        }
        Ok(bits / 8)
    }

    /// Where a backing file (overlayfs maps one in place of the file a process opened) keeps
    /// the path the process used, relative to its `struct file`. Linux 6.8 and later put the
    /// real path in `f_path` and the user's in `backing_file::user_path`; older kernels keep
    /// the user's path in `f_path` (6.1's fake-path files, 6.6's backing files): 0.
    fn backing_file_user_path(&self) -> Result<u32, BtfError> {
        match self.offset_of("backing_file", "user_path") {
            Ok(user_path) => user_path
                .checked_sub(self.offset_of("backing_file", "file")?)
                .ok_or(BtfError::Malformed(
                    "backing_file::user_path precedes its file",
                )),
            Err(BtfError::NoStruct(_) | BtfError::NoMember { .. }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Every offset the BPF programs need.
    pub fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            dentry_d_parent: self.offset_of("dentry", "d_parent")?,
            dentry_d_name: self.offset_of("dentry", "d_name")?,
            dentry_d_inode: self.offset_of("dentry", "d_inode")?,
            dentry_d_sb: self.offset_of("dentry", "d_sb")?,
            qstr_name: self.offset_of("qstr", "name")?,
            inode_i_mode: self.offset_of("inode", "i_mode")?,
            inode_i_ino: self.offset_of("inode", "i_ino")?,
            inode_i_nlink: self.offset_of("inode", "i_nlink")?,
            inode_i_rdev: self.offset_of("inode", "i_rdev")?,
            super_block_s_dev: self.offset_of("super_block", "s_dev")?,
            file_f_path: self.offset_of("file", "f_path")?,
            file_f_mode: self.offset_of("file", "f_mode")?,
            path_mnt: self.offset_of("path", "mnt")?,
            path_dentry: self.offset_of("path", "dentry")?,
            vfsmount_mnt_root: self.offset_of("vfsmount", "mnt_root")?,
            mount_mnt: self.offset_of("mount", "mnt")?,
            mount_mnt_parent: self.offset_of("mount", "mnt_parent")?,
            mount_mnt_mountpoint: self.offset_of("mount", "mnt_mountpoint")?,
            task_real_parent: self.offset_of("task_struct", "real_parent")?,
            task_tgid: self.offset_of("task_struct", "tgid")?,
            task_pid: self.offset_of("task_struct", "pid")?,
            task_mm: self.offset_of("task_struct", "mm")?,
            mm_exe_file: self.offset_of("mm_struct", "exe_file")?,
            super_block_s_magic: self.offset_of("super_block", "s_magic")?,
            proc_inode_pid: self.offset_of("proc_inode", "pid")?,
            proc_inode_vfs_inode: self.offset_of("proc_inode", "vfs_inode")?,
            pid_tasks: self.offset_of("pid", "tasks")?,
            task_pid_links: self.offset_of("task_struct", "pid_links")?,
            task_cred: self.offset_of("task_struct", "cred")?,
            task_real_cred: self.offset_of("task_struct", "real_cred")?,
            iattr_ia_valid: self.offset_of("iattr", "ia_valid")?,
            // 6.3+ wrap vm_flags in an anonymous union; find_member looks inside.
            vma_vm_flags: self.offset_of("vm_area_struct", "vm_flags")?,
            vma_vm_file: self.offset_of("vm_area_struct", "vm_file")?,
            backing_file_user_path: self.backing_file_user_path()?,
            socket_sk: self.offset_of("socket", "sk")?,
            socket_type: self.offset_of("socket", "type")?,
            sock_sk_protocol: self.offset_of("sock", "sk_protocol")?,
            sock_sk_type: self.offset_of("sock", "sk_type")?,
            // `struct sock` starts with its `struct sock_common`.
            sock_skc_family: self.offset_of("sock_common", "skc_family")?,
            sock_skc_rcv_saddr: self.offset_of("sock_common", "skc_rcv_saddr")?,
            sock_skc_v6_rcv_saddr: self.offset_of("sock_common", "skc_v6_rcv_saddr")?,
            sock_skc_num: self.offset_of("sock_common", "skc_num")?,
            unix_sock_addr: self.offset_of("unix_sock", "addr")?,
            unix_sock_path: self.offset_of("unix_sock", "path")?,
            unix_address_len: self.offset_of("unix_address", "len")?,
            unix_address_name: self.offset_of("unix_address", "name")?,
            msghdr_msg_name: self.offset_of("msghdr", "msg_name")?,
            msghdr_msg_namelen: self.offset_of("msghdr", "msg_namelen")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host tier: the running kernel's BTF yields every offset, and the fields whose place
    /// has been stable for years are where they should be.
    #[test]
    fn running_kernel_offsets_resolve() {
        let btf =
            KernelBtf::from_running_kernel().expect("this host publishes /sys/kernel/btf/vmlinux");
        let offsets = btf.offsets().expect("all offsets resolve");
        assert_eq!(offsets.path_mnt, 0);
        assert_eq!(offsets.path_dentry, 8);
        assert_eq!(offsets.qstr_name, 8);
        assert!(offsets.dentry_d_parent > 0 && offsets.dentry_d_parent < 64);
        assert!(
            offsets.mount_mnt > 0,
            "struct mount embeds vfsmount after its hash list"
        );
        assert!(
            btf.has_function("bpf_lsm_path_unlink"),
            "the kernel lists its LSM hooks"
        );
        assert!(!btf.has_function("bpf_lsm_no_such_hook"));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(
            KernelBtf::parse(b"not btf at all"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(KernelBtf::parse(b""), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn unknown_struct_and_member_are_named() {
        let btf = KernelBtf::from_running_kernel().expect("kernel BTF");
        let err = btf.offset_of("dentry", "no_such_member").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF has no member `no_such_member` in `struct dentry`"
        );
        assert!(matches!(
            btf.offset_of("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
