//! Loading the BPF LSM programs and filling their maps.
//!
//! [`Guard`] owns the loaded object. While it lives the programs stay attached; dropping it
//! detaches them, so whoever holds it must outlive every guarded process.
use std::collections::BTreeSet;

use agent_guard_common::{
    AbstractKey, NetKey, NetRules, NetVerdict, PatternSet, RuleEntry, ScopeKey, SessionConfig,
    MODE_AUDIT, MODE_ENFORCE, NET_SESSION_BITS, STAT_AUDITED, STAT_DENIED, STAT_LOST_EVENTS,
};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData, MapError, PerCpuArray, RingBuf,
    },
    programs::{Lsm, ProgramError},
    Btf, BtfError, Ebpf, EbpfError, EbpfLoader,
};

use crate::{
    kernel_btf::{self, KernelBtf},
    policy::{
        compile::compile,
        net_compile::{compile_network, NetLimitError, NetTables, Prefix},
        Mode, ResolvedPolicy,
    },
};

/// The address tables, by map name.
const NET_TABLES: [&str; 2] = ["NET_CONNECT", "NET_LISTEN"];

/// The BPF object built by build.rs from `agent-guard-ebpf`.
static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-guard-ebpf"));

/// Programs and the LSM hook each attaches to. `required == false` marks hooks that only
/// newer kernels have; the hooks that cover the same operations on older ones are listed
/// next to them.
struct Hook {
    program: &'static str,
    required: bool,
}

const HOOKS: &[Hook] = &[
    // Membership first, so no fork escapes between attachments.
    Hook {
        program: "task_alloc",
        required: true,
    },
    Hook {
        program: "task_free",
        required: true,
    },
    Hook {
        program: "bprm_check_security",
        required: true,
    },
    // Answers user space's identity requests (see `Guard::identify`).
    Hook {
        program: "file_ioctl",
        required: true,
    },
    Hook {
        program: "path_unlink",
        required: true,
    },
    Hook {
        program: "path_rmdir",
        required: true,
    },
    Hook {
        program: "path_rename",
        required: true,
    },
    Hook {
        program: "path_link",
        required: true,
    },
    Hook {
        program: "path_truncate",
        required: true,
    },
    // Linux 6.2+: ftruncate and O_TRUNC moved here from path_truncate.
    Hook {
        program: "file_truncate",
        required: false,
    },
    Hook {
        program: "file_open",
        required: true,
    },
    // Writing through descriptors already open, whoever opened them: write and its kin,
    // shared writable mappings.
    Hook {
        program: "file_permission",
        required: true,
    },
    Hook {
        program: "mmap_file",
        required: true,
    },
    Hook {
        program: "file_mprotect",
        required: true,
    },
    // The mount tree: no mount, unmount or pivot_root.
    Hook {
        program: "sb_mount",
        required: true,
    },
    Hook {
        program: "move_mount",
        required: true,
    },
    Hook {
        program: "sb_umount",
        required: true,
    },
    Hook {
        program: "sb_pivotroot",
        required: true,
    },
    // Creation: new files, fifos, sockets, directories, symlinks.
    Hook {
        program: "path_mknod",
        required: true,
    },
    Hook {
        program: "path_mkdir",
        required: true,
    },
    Hook {
        program: "path_symlink",
        required: true,
    },
    // Attribute changes: mode, owner, extended attributes, times.
    Hook {
        program: "path_chmod",
        required: true,
    },
    Hook {
        program: "path_chown",
        required: true,
    },
    Hook {
        program: "inode_setxattr",
        required: true,
    },
    Hook {
        program: "inode_removexattr",
        required: true,
    },
    Hook {
        program: "inode_setattr",
        required: true,
    },
    // Answers identity requests for files that cannot be opened (unix sockets).
    Hook {
        program: "inode_getxattr",
        required: true,
    },
    // The network: raw and packet sockets, IP destinations and local addresses, unix
    // peers.
    Hook {
        program: "socket_create",
        required: true,
    },
    Hook {
        program: "socket_connect",
        required: true,
    },
    Hook {
        program: "socket_sendmsg",
        required: true,
    },
    Hook {
        program: "socket_bind",
        required: true,
    },
    Hook {
        program: "socket_listen",
        required: true,
    },
    Hook {
        program: "unix_stream_connect",
        required: true,
    },
    Hook {
        program: "unix_may_send",
        required: true,
    },
    // Self-protection: no signals or ptrace outside the session, no bpf(2), no modules,
    // kexec images or IMA policies.
    Hook {
        program: "kernel_read_file",
        required: true,
    },
    Hook {
        program: "kernel_load_data",
        required: true,
    },
    Hook {
        program: "task_kill",
        required: true,
    },
    Hook {
        program: "ptrace_access_check",
        required: true,
    },
    Hook {
        program: "bpf",
        required: true,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the kernel's type information (BTF)")]
    KernelBtf(#[from] kernel_btf::BtfError),
    #[error("reading the kernel's BTF for aya")]
    AyaBtf(#[from] BtfError),
    #[error("loading the BPF object")]
    Object(#[from] EbpfError),
    #[error("the BPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("loading the `{hook}` LSM program")]
    Load {
        hook: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching the `{hook}` LSM program")]
    Attach {
        hook: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the BPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("opening map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error("cannot open {path} to learn its kernel identity")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel side did not answer the identity request for {path}")]
    NoAnswer { path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionMapError {
    #[error("opening the session maps")]
    Open(#[from] LoadError),
    #[error("compiling the session's network rules")]
    Network(#[from] NetLimitError),
    #[error("writing the `{map}` map for session {session:08x}")]
    Write {
        map: &'static str,
        session: u32,
        #[source]
        source: MapError,
    },
}

/// The error for a failed write of `map` for `session`.
fn write_failed(map: &'static str, session: u32) -> impl Fn(MapError) -> SessionMapError {
    move |source| SessionMapError::Write {
        map,
        session,
        source,
    }
}

/// Totals of the per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub denied: u64,
    pub audited: u64,
    pub lost: u64,
}

/// The loaded and attached programs.
pub struct Guard {
    ebpf: Ebpf,
    /// Hooks attached, in order.
    pub attached: Vec<&'static str>,
}

impl Guard {
    /// Loads the programs with the running kernel's structure offsets and attaches every
    /// hook. Any failure of a required hook is an error: there is no partial guard.
    pub fn load() -> Result<Self, LoadError> {
        let kernel = KernelBtf::from_running_kernel()?;
        let offsets = kernel.offsets()?;
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("AG_OFFSETS", &offsets, true)
            .load(BPF_OBJECT)?;
        let mut attached = Vec::new();
        for hook in HOOKS {
            if !hook.required && !kernel.has_function(&format!("bpf_lsm_{}", hook.program)) {
                continue;
            }
            let program: &mut Lsm = ebpf
                .program_mut(hook.program)
                .ok_or(LoadError::MissingProgram(hook.program))?
                .try_into()
                .map_err(|source| LoadError::Load {
                    hook: hook.program,
                    source,
                })?;
            program
                .load(hook.program, &btf)
                .map_err(|source| LoadError::Load {
                    hook: hook.program,
                    source,
                })?;
            program.attach().map_err(|source| LoadError::Attach {
                hook: hook.program,
                source,
            })?;
            attached.push(hook.program);
        }
        Ok(Self { ebpf, attached })
    }

    pub(crate) fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        HashMap::try_from(map).map_err(|source| LoadError::Map { map: name, source })
    }

    pub(crate) fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<aya::maps::Array<&mut MapData, V>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        aya::maps::Array::try_from(map).map_err(|source| LoadError::Map { map: name, source })
    }

    /// The (device, inode) the hooks see for `path`, asked of the kernel side itself. `stat`
    /// is not enough: on overlayfs a regular file reports its layer's device, not the
    /// overlay's, so a key built from it would never match.
    ///
    /// The question is an ioctl on the open file; a unix socket cannot be opened, so for
    /// one it is a lookup of the extended attribute `IDENTIFY_XATTR` instead.
    pub fn identify(&mut self, path: &std::path::Path) -> Result<(u32, u64), IdentifyError> {
        use std::os::{
            fd::AsRawFd as _,
            unix::{ffi::OsStrExt as _, fs::FileTypeExt as _, fs::OpenOptionsExt as _},
        };
        let open_error = |source| IdentifyError::Open {
            path: path.display().to_string(),
            source,
        };
        // A stale answer would be taken for this one (the kernel side keeps the first).
        if let Ok(mut answers) = self.hash_map::<u32, [u64; 2]>("IDENTITY") {
            let _ = answers.remove(&std::process::id());
        }
        let is_socket = std::fs::metadata(path)
            .map_err(open_error)?
            .file_type()
            .is_socket();
        if is_socket {
            let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| {
                open_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            // SAFETY: valid NUL-terminated strings; a zero-sized query only returns the
            // length (and here fails with ENODATA after the hook has answered).
            unsafe {
                libc::getxattr(
                    c_path.as_ptr(),
                    agent_guard_common::IDENTIFY_XATTR.as_ptr().cast(),
                    std::ptr::null_mut(),
                    0,
                )
            };
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                // Never block on a fifo, never take a terminal as controlling tty.
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(path)
                .map_err(open_error)?;
            // SAFETY: an ioctl on a valid fd; the request is unknown to every driver, so it
            // fails after the LSM hook has recorded the answer.
            unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    agent_guard_common::IDENTIFY_IOCTL as libc::c_ulong,
                    0,
                )
            };
        }
        let tgid = std::process::id();
        let no_answer = || IdentifyError::NoAnswer {
            path: path.display().to_string(),
        };
        let mut map: HashMap<_, u32, [u64; 2]> =
            self.hash_map("IDENTITY").map_err(|_| no_answer())?;
        let [dev, ino] = map.get(&tgid, 0).map_err(|_| no_answer())?;
        let _ = map.remove(&tgid);
        Ok((dev as u32, ino))
    }

    /// Replaces the identities `stat` gave the policy's paths with the kernel side's own.
    pub fn identify_policy(&mut self, policy: &mut ResolvedPolicy) -> Result<(), IdentifyError> {
        let trees = policy.patterns.iter_mut().map(|p| &mut p.tree);
        for object in policy.objects.iter_mut().chain(trees) {
            let (dev, ino) = self.identify(&object.path)?;
            object.dev = dev;
            object.ino = ino;
        }
        Ok(())
    }

    /// Installs a session's policy in the kernel maps. Call before any process joins it.
    pub fn add_session(
        &mut self,
        session: u32,
        policy: &ResolvedPolicy,
    ) -> Result<(), SessionMapError> {
        let write = |map: &'static str| write_failed(map, session);
        let mode = match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        let compiled = compile(policy);
        {
            let mut rules: HashMap<_, ScopeKey, RuleEntry> = self.hash_map("RULES")?;
            for (&(dev, ino), entry) in &compiled.entries {
                let key = ScopeKey { session, dev, ino };
                rules.insert(key, *entry, 0).map_err(write("RULES"))?;
            }
        }
        if !compiled.patterns.is_empty() {
            let mut set = PatternSet::default();
            set.patterns[..compiled.patterns.len()].copy_from_slice(&compiled.patterns);
            let mut patterns: HashMap<_, u32, PatternSet> = self.hash_map("PATTERNS")?;
            patterns
                .insert(session, set, 0)
                .map_err(write("PATTERNS"))?;
        }
        {
            let mut devices: HashMap<_, [u32; 2], u32> = self.hash_map("DEVICES")?;
            let unique: BTreeSet<u32> = policy.devices.iter().copied().collect();
            for rdev in unique {
                devices
                    .insert([session, rdev], 0, 0)
                    .map_err(write("DEVICES"))?;
            }
        }
        let network = compile_network(policy)?;
        self.update_network(session, &NetTables::default(), &network)?;
        let mut sessions: HashMap<_, u32, SessionConfig> = self.hash_map("SESSIONS")?;
        sessions
            .insert(
                session,
                SessionConfig {
                    mode,
                    patterns: compiled.patterns.len() as u32,
                    reads: compiled.reads as u32,
                    egress_allow: policy.network.egress_allow as u32,
                },
                0,
            )
            .map_err(write("SESSIONS"))?;
        Ok(())
    }

    fn lpm_trie(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, NetKey, NetRules>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(|source| LoadError::Map { map: name, source })
    }

    /// Replaces a session's network tables `old` with `new` (both compiled from its
    /// policy, before and after its hostnames were looked up again). Entries of `new` go in
    /// first and only then do those `new` lacks leave, so an address in both is never
    /// missing in between.
    pub fn update_network(
        &mut self,
        session: u32,
        old: &NetTables,
        new: &NetTables,
    ) -> Result<(), SessionMapError> {
        let write = |map: &'static str| write_failed(map, session);
        let key = |&(addr, bits): &Prefix| {
            Key::new(
                NET_SESSION_BITS + u32::from(bits),
                NetKey::new(session, addr),
            )
        };
        for (name, before, after) in [
            (NET_TABLES[0], &old.connect, &new.connect),
            (NET_TABLES[1], &old.listen, &new.listen),
        ] {
            let mut table = self.lpm_trie(name)?;
            for (prefix, rules) in after {
                if before.get(prefix) != Some(rules) {
                    table.insert(&key(prefix), rules, 0).map_err(write(name))?;
                }
            }
            for prefix in before.keys().filter(|p| !after.contains_key(p)) {
                let _ = table.remove(&key(prefix));
            }
        }
        let mut names: HashMap<_, AbstractKey, NetVerdict> = self.hash_map("ABSTRACT")?;
        let abstract_key = |name: &[u8]| AbstractKey::new(session, name);
        for (name, verdict) in &new.abstract_names {
            if let Some(k) = abstract_key(name) {
                names.insert(k, *verdict, 0).map_err(write("ABSTRACT"))?;
            }
        }
        for name in old.abstract_names.keys() {
            if !new.abstract_names.contains_key(name) {
                if let Some(k) = abstract_key(name) {
                    let _ = names.remove(&k);
                }
            }
        }
        Ok(())
    }

    /// Removes every network entry of `session`, whatever policy put it there.
    fn remove_network(&mut self, session: u32) {
        let mine = NetKey::new(session, [0; 16]).session;
        for name in NET_TABLES {
            let Ok(mut table) = self.lpm_trie(name) else {
                continue;
            };
            let keys: Vec<Key<NetKey>> = table
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().session == mine)
                .collect();
            for k in keys {
                let _ = table.remove(&k);
            }
        }
        if let Ok(mut names) = self.hash_map::<AbstractKey, NetVerdict>("ABSTRACT") {
            let keys: Vec<AbstractKey> = names
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.session == session)
                .collect();
            for k in keys {
                let _ = names.remove(&k);
            }
        }
    }

    /// Removes a session's policy from the kernel maps once no process is left in it.
    pub fn remove_session(&mut self, session: u32, policy: &ResolvedPolicy) {
        if let Ok(mut sessions) = self.hash_map::<u32, SessionConfig>("SESSIONS") {
            let _ = sessions.remove(&session);
        }
        let compiled = compile(policy);
        if let Ok(mut rules) = self.hash_map::<ScopeKey, RuleEntry>("RULES") {
            for &(dev, ino) in compiled.entries.keys() {
                let _ = rules.remove(&ScopeKey { session, dev, ino });
            }
        }
        if let Ok(mut patterns) = self.hash_map::<u32, PatternSet>("PATTERNS") {
            let _ = patterns.remove(&session);
        }
        if let Ok(mut devices) = self.hash_map::<[u32; 2], u32>("DEVICES") {
            for rdev in &policy.devices {
                let _ = devices.remove(&[session, *rdev]);
            }
        }
        self.remove_network(session);
    }

    /// Marks process `pid` to join `session` at its next exec.
    pub fn enroll(&mut self, pid: u32, session: u32) -> Result<(), SessionMapError> {
        let mut enroll: HashMap<_, u32, u32> = self.hash_map("ENROLL")?;
        enroll
            .insert(pid, session, 0)
            .map_err(|source| SessionMapError::Write {
                map: "ENROLL",
                session,
                source,
            })
    }

    /// Whether `pid` is still waiting to join a session (its exec has not happened).
    pub fn enrolment_pending(&mut self, pid: u32) -> bool {
        match self.hash_map::<u32, u32>("ENROLL") {
            Ok(enroll) => enroll.get(&pid, 0).is_ok(),
            Err(_) => true,
        }
    }

    /// Drops a pending enrolment (the process never reached exec).
    pub fn cancel_enrolment(&mut self, pid: u32) {
        if let Ok(mut enroll) = self.hash_map::<u32, u32>("ENROLL") {
            let _ = enroll.remove(&pid);
        }
    }

    /// The event ring buffer. It can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(LoadError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<Stats, LoadError> {
        let map = self
            .ebpf
            .map("STATS")
            .ok_or(LoadError::MissingMap("STATS"))?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| LoadError::Map {
                map: "STATS",
                source,
            })?;
        let sum = |slot: u32| -> Result<u64, LoadError> {
            let values = stats.get(&slot, 0).map_err(|source| LoadError::Map {
                map: "STATS",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(Stats {
            denied: sum(STAT_DENIED)?,
            audited: sum(STAT_AUDITED)?,
            lost: sum(STAT_LOST_EVENTS)?,
        })
    }
}
