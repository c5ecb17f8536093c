//! Loading the BPF LSM programs and filling their maps.
//!
//! [`Guard`] holds the attached programs' links and their maps. A standalone `run` keeps
//! them only in this process: dropping the guard detaches the programs, so it must outlive
//! every guarded process. The daemon pins both under [`crate::paths::PIN_DIR`] instead
//! ([`Guard::pin`]); pinned links stay attached after the daemon dies, and a restarted
//! daemon takes the same maps back with [`Guard::adopt`], so enforcement never pauses.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use agent_guard_common::{
    AbstractKey, NetKey, NetRules, NetVerdict, PatternSet, RuleEntry, ScopeKey, SessionConfig,
    MODE_AUDIT, MODE_ENFORCE, NET_SESSION_BITS, STAT_AUDITED, STAT_DENIED, STAT_LOST_EVENTS,
};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, Map, MapData, MapError, PerCpuArray, RingBuf,
    },
    pin::PinError,
    programs::{links::FdLink, links::LinkError, links::PinnedLink, Lsm, ProgramError},
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

/// A fingerprint of the BPF object (FNV-1a of its bytes). A daemon adopts pinned programs
/// only when they come from the same object: the maps' layouts are only known to match
/// then.
pub fn object_id() -> String {
    let hash = BPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

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
    #[error("taking the link of the `{hook}` LSM program")]
    Link {
        hook: &'static str,
        #[source]
        source: ProgramError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PinStateError {
    #[error("creating {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("pinning {0}")]
    Pin(PathBuf, #[source] PinError),
    #[error("opening the pinned map {0}")]
    Map(PathBuf, #[source] MapError),
    #[error("opening the pinned link {0}")]
    Link(PathBuf, #[source] LinkError),
    #[error("{0} holds no pinned agent-guard programs")]
    Nothing(PathBuf),
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

/// The attached programs and their maps.
pub struct Guard {
    /// Every map of the object by name, taken out of the loaded object so that a guard
    /// adopted from pins works the same way as a freshly loaded one.
    maps: BTreeMap<String, Map>,
    /// Links of the attached programs (a freshly loaded guard, until pinned). Dropping an
    /// unpinned link detaches its program.
    links: Vec<(&'static str, FdLink)>,
    /// Links adopted from, or pinned to, the pin directory.
    pinned: Vec<(&'static str, PinnedLink)>,
    /// The loaded object; it keeps the programs loaded while their links are unpinned.
    _object: Option<Ebpf>,
    /// Hooks attached, in order.
    pub attached: Vec<&'static str>,
}

/// Maps that belong to the object's sections rather than to the programs' shared state
/// (`.rodata`, `.bss`): the programs hold them, nobody else needs them.
fn shared_map(name: &str) -> bool {
    !name.starts_with('.')
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
        let mut links: Vec<(&'static str, FdLink)> = Vec::new();
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
            let link = program.attach().map_err(|source| LoadError::Attach {
                hook: hook.program,
                source,
            })?;
            let link = program.take_link(link).map_err(|source| LoadError::Link {
                hook: hook.program,
                source,
            })?;
            links.push((hook.program, FdLink::from(link)));
            attached.push(hook.program);
        }
        let names: Vec<String> = ebpf
            .maps()
            .map(|(name, _)| name.to_owned())
            .filter(|name| shared_map(name))
            .collect();
        let maps = names
            .into_iter()
            .filter_map(|name| Some((name.clone(), ebpf.take_map(&name)?)))
            .collect();
        Ok(Self {
            maps,
            links,
            pinned: Vec::new(),
            _object: Some(ebpf),
            attached,
        })
    }

    /// Pins every link and shared map under `dir` (`links/<hook>`, `maps/<MAP>`), so that
    /// the programs stay attached and their state survives this process.
    pub fn pin(&mut self, dir: &Path) -> Result<(), PinStateError> {
        for sub in ["links", "maps"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| PinStateError::Dir(path, e))?;
        }
        for (name, map) in &self.maps {
            let path = dir.join("maps").join(name);
            map.pin(&path).map_err(|e| PinStateError::Pin(path, e))?;
        }
        let links: Vec<(&'static str, FdLink)> = std::mem::take(&mut self.links);
        for (hook, link) in links {
            let path = dir.join("links").join(hook);
            let pinned = link.pin(&path).map_err(|e| PinStateError::Pin(path, e))?;
            self.pinned.push((hook, pinned));
        }
        Ok(())
    }

    /// Takes over the programs and maps a previous daemon pinned under `dir`. The programs
    /// never stopped: only the handles are new.
    pub fn adopt(dir: &Path) -> Result<Self, PinStateError> {
        let mut pinned = Vec::new();
        let mut attached = Vec::new();
        for hook in HOOKS {
            let path = dir.join("links").join(hook.program);
            if !path.exists() && !hook.required {
                continue;
            }
            let link = PinnedLink::from_pin(&path).map_err(|e| PinStateError::Link(path, e))?;
            pinned.push((hook.program, link));
            attached.push(hook.program);
        }
        let maps_dir = dir.join("maps");
        let entries =
            std::fs::read_dir(&maps_dir).map_err(|e| PinStateError::Dir(maps_dir.clone(), e))?;
        let mut maps = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| PinStateError::Dir(maps_dir.clone(), e))?;
            let path = entry.path();
            let data = MapData::from_pin(&path).map_err(|e| PinStateError::Map(path.clone(), e))?;
            let map = Map::from_map_data(data).map_err(|e| PinStateError::Map(path.clone(), e))?;
            maps.insert(entry.file_name().to_string_lossy().into_owned(), map);
        }
        if maps.is_empty() {
            return Err(PinStateError::Nothing(dir.to_owned()));
        }
        Ok(Self {
            maps,
            links: Vec::new(),
            pinned,
            _object: None,
            attached,
        })
    }

    /// Frees the loaded object (program instructions, BTF, relocation data) once every
    /// link is pinned: the kernel holds the programs through the pins from then on, and
    /// the maps stay open here. A long-running daemon has no use for the rest.
    pub fn release_object(&mut self) {
        if self.links.is_empty() {
            self._object = None;
        }
    }

    /// Removes the pins under `dir`: once this guard is dropped, the programs detach.
    pub fn unpin(dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoadError> {
        self.maps.get_mut(name).ok_or(LoadError::MissingMap(name))
    }

    pub(crate) fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, LoadError> {
        let map = self.map_mut(name)?;
        HashMap::try_from(map).map_err(|source| LoadError::Map { map: name, source })
    }

    pub(crate) fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<aya::maps::Array<&mut MapData, V>, LoadError> {
        let map = self.map_mut(name)?;
        aya::maps::Array::try_from(map).map_err(|source| LoadError::Map { map: name, source })
    }

    /// The (device, inode) the hooks see for `path`, asked of the kernel side itself. `stat`
    /// is not enough: on overlayfs a regular file reports its layer's device, not the
    /// overlay's, so a key built from it would never match.
    ///
    /// The question is an ioctl on the open file; a unix socket cannot be opened, so for
    /// one it is a lookup of the extended attribute `IDENTIFY_XATTR` instead.
    pub fn identify(&mut self, path: &Path) -> Result<(u32, u64), IdentifyError> {
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
        let map = self.map_mut(name)?;
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

    /// Removes every entry of `session` from the kernel maps, whatever policy put it there,
    /// once no process is left in it. A restarted daemon can thus clean up a session it
    /// only adopted.
    pub fn remove_session(&mut self, session: u32) {
        if let Ok(mut sessions) = self.hash_map::<u32, SessionConfig>("SESSIONS") {
            let _ = sessions.remove(&session);
        }
        if let Ok(mut rules) = self.hash_map::<ScopeKey, RuleEntry>("RULES") {
            let keys: Vec<ScopeKey> = rules
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.session == session)
                .collect();
            for key in keys {
                let _ = rules.remove(&key);
            }
        }
        if let Ok(mut patterns) = self.hash_map::<u32, PatternSet>("PATTERNS") {
            let _ = patterns.remove(&session);
        }
        if let Ok(mut devices) = self.hash_map::<[u32; 2], u32>("DEVICES") {
            let keys: Vec<[u32; 2]> = devices
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k[0] == session)
                .collect();
            for key in keys {
                let _ = devices.remove(&key);
            }
        }
        self.remove_network(session);
    }

    /// How many live tasks each session has, from the kernel's membership table.
    pub fn tasks_by_session(&mut self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        if let Ok(tasks) = self.hash_map::<u64, u32>("TASKS") {
            for (_, session) in tasks.iter().filter_map(Result::ok) {
                *counts.entry(session).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The session process `pid` is in, asked of the kernel side, which looks at the
    /// process's own task (see the `MEMBERSHIP` map): `Ok(None)` when it is in none. An
    /// error when it cannot be asked (the process is gone, or the map cannot be written);
    /// callers treat that as a refusal.
    pub fn session_of(&mut self, pid: u32) -> Result<Option<u32>, IdentifyError> {
        use agent_guard_common::{MEMBERSHIP_ASKING, MEMBERSHIP_IN, MEMBERSHIP_NONE};
        let me = std::process::id();
        let no_answer = || IdentifyError::NoAnswer {
            path: format!("process {pid}"),
        };
        let mut map: HashMap<_, u32, u64> = self.hash_map("MEMBERSHIP").map_err(|_| no_answer())?;
        map.insert(me, MEMBERSHIP_ASKING, 0)
            .map_err(|_| no_answer())?;
        let signalled = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None);
        let answer = map.get(&me, 0).map_err(|_| no_answer());
        let _ = map.remove(&me);
        signalled.map_err(|_| no_answer())?;
        match answer? {
            MEMBERSHIP_NONE => Ok(None),
            a if a & !0xffff_ffff == MEMBERSHIP_IN => Ok(Some(a as u32)),
            _ => Err(no_answer()),
        }
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
            .maps
            .remove("EVENTS")
            .ok_or(LoadError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<Stats, LoadError> {
        let map = self
            .maps
            .get("STATS")
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
