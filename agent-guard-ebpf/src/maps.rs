//! Every map the programs share with user space. User space fills the configuration maps
//! before a session's first command runs and reads `EVENTS` and `STATS`.
use agent_guard_common::{
    AbstractKey, Event, NetKey, NetRules, NetVerdict, PatternSet, RuleEntry, ScopeKey,
    SessionConfig, EVENT_RING_BYTES, MAX_ABSTRACT_ENTRIES, MAX_ATTACHED_CGROUPS,
    MAX_ATTACHED_PROCESSES, MAX_AUDITED_FILES, MAX_DEVICE_ENTRIES, MAX_NET_ENTRIES,
    MAX_PENDING_ENROLMENTS, MAX_RULE_ENTRIES, MAX_SESSIONS, MAX_SESSION_TASKS, STAT_SLOTS,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Live tasks of all guarded sessions: `task_struct` address to session id. Filled by the
/// exec of a session's first command and by `task_alloc`, emptied by `task_free`.
#[map]
pub static TASKS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_SESSION_TASKS, 0);

/// Processes (by tgid) that join a session at their next exec. User space inserts the
/// command's pid here while the child waits before exec; `bprm_check_security` moves it into
/// `TASKS` and removes the entry, which tells user space that enrolment happened.
#[map]
pub static ENROLL: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PENDING_ENROLMENTS, 0);

/// Processes (by tgid) put into a session while already running (`agent-guard attach`).
/// Each of their threads joins `TASKS` at its first hooked operation, before that
/// operation is decided (`session::current_session`). The entry of a process leaves when
/// its group leader's `task_struct` is freed, so that a reused pid is not taken for it.
#[map]
pub static ATTACH_TGID: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ATTACHED_PROCESSES, 0);

/// Cgroups (v2 id: the inode number of the cgroup directory) put into a session: a task in
/// one joins at its first hooked operation or at exec, whoever forked it (a systemd unit's
/// later processes are forked by pid 1 and moved into the unit's cgroup).
#[map]
pub static ATTACH_CGROUP: HashMap<u64, u32> = HashMap::with_max_entries(MAX_ATTACHED_CGROUPS, 0);

/// Slot 0: non-zero while `ATTACH_TGID` or `ATTACH_CGROUP` may hold entries (user space
/// keeps it at their number of entries). While it is zero a task outside `TASKS` costs
/// this one array lookup and nothing more.
#[map]
pub static ATTACH_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Settings of each session. A session missing here is treated as enforcing.
#[map]
pub static SESSIONS: HashMap<u32, SessionConfig> = HashMap::with_max_entries(MAX_SESSIONS, 0);

/// Path rules: what each session's policy attaches to a file or directory, keyed by the
/// kernel's identity of the object. See `agent_guard_common::decision` for how the walk
/// combines them.
#[map]
pub static RULES: HashMap<ScopeKey, RuleEntry> = HashMap::with_max_entries(MAX_RULE_ENTRIES, 0);

/// Name patterns of each session; the first `SessionConfig::patterns` are in use.
#[map]
pub static PATTERNS: HashMap<u32, PatternSet> = HashMap::with_max_entries(MAX_SESSIONS, 0);

/// Character devices a session may open for writing: key `[session, rdev]`, where an rdev
/// whose minor is all ones (0xfffff) admits every minor of that major.
#[map]
pub static DEVICES: HashMap<[u32; 2], u32> = HashMap::with_max_entries(MAX_DEVICE_ENTRIES, 0);

/// Open files a session in audit mode was reported writing although enforce mode would have
/// refused it: `struct file` address to `[session, dentry address]`. Further writes through
/// the same file are not reported again. Only consulted in audit mode, so it never changes
/// a refusal; the dentry keeps a file that reuses a freed file's address from being taken
/// for it.
#[map]
pub static AUDITED_FILES: LruHashMap<u64, [u64; 2]> =
    LruHashMap::with_max_entries(MAX_AUDITED_FILES, 0);

/// Decisions on their way to user space.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Counters indexed by `STAT_*`, per CPU; user space sums them.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Scratch space where an event is assembled before it is copied into `EVENTS`: an event
/// is far larger than the 512-byte BPF stack.
#[map]
pub static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// State of the policy walk (see `scope::check`).
#[map]
pub static WALK: PerCpuArray<crate::scope::WalkState> = PerCpuArray::with_max_entries(1, 0);

/// The name of the dentry the walk is at, behind a zeroed window (see `scope::NameBuf`).
#[map]
pub static NAME: PerCpuArray<crate::scope::NameBuf> = PerCpuArray::with_max_entries(1, 0);

/// The verdict of a hook that decides on several objects (see `tally::Tally`).
#[map]
pub static TALLY: PerCpuArray<crate::tally::TallySlot> = PerCpuArray::with_max_entries(1, 0);

/// State of the path rendering loop (see `scope::render`).
#[map]
pub static RENDER: PerCpuArray<crate::scope::RenderState> = PerCpuArray::with_max_entries(1, 0);

/// Answers to `IDENTIFY_IOCTL`: requesting tgid to the `[s_dev, i_ino]` of the file it
/// asked about. Only processes outside every session are answered.
#[map]
pub static IDENTITY: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(64, 0);

/// Answers to membership questions: the daemon puts its tgid here with
/// [`agent_guard_common::MEMBERSHIP_ASKING`], then sends signal 0 to the process it asks
/// about; `task_kill` answers on the target's own task (see `guard::answer_membership`).
/// Only processes outside every session can write it (a session has no bpf(2)).
#[map]
pub static MEMBERSHIP: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);

/// Destinations of each session's connect and send rules: session and address prefix to the
/// ordered port rules that decide there (see `agent_guard_common::NetRules`). Loopback and
/// the host's own addresses are in it too, refused unless a rule names them; an address
/// with no entry gets the session's `egress` default.
#[map]
pub static NET_CONNECT: LpmTrie<NetKey, NetRules> = LpmTrie::with_max_entries(MAX_NET_ENTRIES, 0);

/// Addresses each session may bind and listen on beyond loopback, keyed like `NET_CONNECT`.
#[map]
pub static NET_LISTEN: LpmTrie<NetKey, NetRules> = LpmTrie::with_max_entries(MAX_NET_ENTRIES, 0);

/// Abstract unix socket names a session's policy names, with what it says about them. A
/// name missing here is refused.
#[map]
pub static ABSTRACT: HashMap<AbstractKey, NetVerdict> =
    HashMap::with_max_entries(MAX_ABSTRACT_ENTRIES, 0);

/// Where the key of an abstract name is assembled: larger than is comfortable on the stack,
/// and it must be zeroed past the name. The slot records its task (see `scope::Owned`).
#[map]
pub static ABSTRACT_SCRATCH: PerCpuArray<crate::network::AbstractSlot> =
    PerCpuArray::with_max_entries(1, 0);
