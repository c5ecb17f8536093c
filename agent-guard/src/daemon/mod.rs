//! `agent-guard daemon`: one set of pinned BPF programs guarding every session on the host.
//!
//! Start-up, in order: the configuration and every policy are validated; the programs are
//! adopted from their pins when a previous daemon left them (nothing is reloaded, so
//! enforcement never pauses), or loaded, proven by the canary and pinned; the session
//! records of the previous daemon are read back; and only then does the control socket
//! open. Killing the daemon detaches nothing: the pinned links keep the programs attached
//! and the pinned maps keep every session's policy and membership.
pub mod config;
mod handlers;
mod kept_paths;
pub mod peer;
pub mod protocol;
mod registry;
mod server;

use std::{
    collections::{BTreeMap, VecDeque},
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use aya::maps::{MapData, RingBuf};

use crate::{
    audit::journal::{Journal, JournalSettings},
    bpf::{object_id, Guard},
    events::Clock,
    metrics::{Metrics, RingFill, ServerHandle},
    policy::PolicyError,
    report::reporter::Reporter,
    selfcheck::{require_bpf_lsm, run_canary},
    sinks::SinkSet,
};
use config::{Config, PolicySet};
use registry::{Session, Store};

/// Exit status for bad configuration or policies.
const EXIT_USAGE: i32 = 2;
/// Exit status when the daemon cannot guard.
const EXIT_UNAVAILABLE: i32 = 125;
/// Events kept for `events` without `--follow`.
const RECENT_EVENTS: usize = 1000;

/// One event line on its way to followers: the session it belongs to (0 for the daemon's
/// own reports), the uid that owns that session, and the JSON text.
#[derive(Debug, Clone)]
pub struct EventLine {
    pub session: u32,
    pub uid: Option<u32>,
    pub json: Arc<str>,
}

/// Everything the daemon holds. One thread owns it; handlers borrow it between awaits.
pub struct Daemon {
    pub config: Config,
    pub policies: PolicySet,
    /// The last reload's problems; `None` when it succeeded.
    pub reload_error: Option<String>,
    pub reloaded_at: u64,
    pub guard: Guard,
    pub sessions: BTreeMap<u32, Session>,
    pub store: Store,
    /// Enriches, numbers, chains and writes every event to the audit log.
    pub reporter: Reporter,
    /// What Prometheus scrapes, and the listener when `metrics` is configured.
    pub metrics: Arc<Metrics>,
    pub metrics_server: Option<ServerHandle>,
    /// Syslog, webhooks, stdout and further files: each on threads of its own, never
    /// waited for. `None` once shut down.
    pub sinks: Option<SinkSet>,
    /// Sealed lines waiting for the audit log's next flush before they go anywhere else.
    pub unreleased: Vec<(u32, Option<u32>, crate::report::Line)>,
    /// The audit log failed a write: said once in the log, counted in `status`.
    pub audit_log_failing: bool,
    pub recent: VecDeque<EventLine>,
    pub followers: tokio::sync::broadcast::Sender<EventLine>,
    /// Lost events already reported.
    pub lost_reported: u64,
    /// How the programs were obtained, for `status`.
    pub origin: Origin,
    pub group_gid: Option<u32>,
    pub started: Instant,
}

/// Where the daemon's programs came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Origin {
    /// `loaded` or `adopted`.
    pub programs: &'static str,
    pub hooks: usize,
    /// Sessions adopted from the previous daemon.
    pub adopted_sessions: Vec<String>,
    /// Milliseconds from start to serving, with enforcement proven.
    pub start_ms: u128,
    /// Of which: loading and attaching the programs, and the canary (0 when adopted).
    pub load_ms: u128,
    pub canary_ms: u128,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<PolicyError>),
    #[error("the daemon loads BPF LSM programs and needs root\n  hint: start it as root (the systemd unit in dist/ does)")]
    NotRoot,
    #[error("{0}")]
    Unavailable(String),
}

impl StartError {
    fn exit_status(&self) -> i32 {
        match self {
            Self::Config(_) | Self::Policies(_) => EXIT_USAGE,
            _ => EXIT_UNAVAILABLE,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns the exit status.
pub fn main(config_file: &Path) -> i32 {
    let started = Instant::now();
    // Large buffers (the kernel's BTF, read twice while loading) are mapped apart from the
    // heap, so that freeing them gives the memory back instead of leaving a heap the size
    // of the largest one for the daemon's whole life.
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    let daemon = match start(config_file, started) {
        Ok(daemon) => daemon,
        Err(e) => {
            eprintln!("agent-guard daemon: {e}");
            return e.exit_status();
        }
    };
    server::serve(daemon)
}

fn unavailable(context: &str, e: &dyn std::error::Error) -> StartError {
    let mut text = format!("{context}: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    StartError::Unavailable(text)
}

fn start(config_file: &Path, started: Instant) -> Result<(Daemon, RingBuf<MapData>), StartError> {
    let config = Config::load_for_daemon(config_file)?;
    let policies = PolicySet::load(&config).map_err(StartError::Policies)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(StartError::NotRoot);
    }
    require_bpf_lsm().map_err(|e| unavailable("refusing to start", &e))?;
    let (mut guard, ring, programs, timing) = acquire(&config)?;
    // Loading parsed the kernel's BTF twice and held the whole object: tens of megabytes
    // the daemon never needs again. Give them back before it settles down to serve.
    guard.release_object();
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let journal = Journal::open(JournalSettings {
        path: config.events.clone(),
        rotation: config.events_rotation,
        state_file: config.journal.clone(),
    })
    .map_err(|e| {
        unavailable(
            &format!(
                "cannot open the audit log {} (or its sequence reservation {})",
                config.events.display(),
                config.journal.display()
            ),
            &e,
        )
    })?;
    let metrics = Arc::new(Metrics::new());
    match RingFill::new(ring.as_fd(), agent_guard_common::EVENT_RING_BYTES) {
        Ok(fill) => {
            metrics.watch_ring(fill);
        }
        Err(e) => eprintln!("agent-guard daemon: the ring buffer's fill will not be measured: {e}"),
    }
    let metrics_server = match config.metrics {
        Some(addr) => Some(
            crate::metrics::serve(addr, metrics.clone())
                .map_err(|e| unavailable(&format!("cannot serve metrics on {addr}"), &e))?,
        ),
        None => None,
    };
    let sinks = SinkSet::start(&config.sinks, &config.spool_dir)
        .map_err(|e| unavailable("cannot start the sinks", &e))?;
    let group_gid = peer::group_id(&config.group);
    let store = Store::new(&config.state_dir);
    let (followers, _) = tokio::sync::broadcast::channel(4096);
    let hooks = guard.attached.len();
    let mut daemon = Daemon {
        config,
        policies,
        reload_error: None,
        reloaded_at: registry::now(),
        guard,
        sessions: BTreeMap::new(),
        store,
        reporter: Reporter::new(journal, Clock::sample()),
        metrics,
        metrics_server,
        sinks: Some(sinks),
        unreleased: Vec::new(),
        audit_log_failing: false,
        recent: VecDeque::new(),
        followers,
        lost_reported: 0,
        origin: Origin {
            programs,
            hooks,
            adopted_sessions: Vec::new(),
            start_ms: 0,
            load_ms: timing.load_ms,
            canary_ms: timing.canary_ms,
        },
        group_gid,
        started,
    };
    daemon.lost_reported = daemon.guard.stats().map(|s| s.lost).unwrap_or(0);
    daemon.adopt_sessions();
    Ok((daemon, ring))
}

/// The file that says which build of the BPF object the pins hold.
fn object_id_file(config: &Config) -> PathBuf {
    config.state_dir.join("pinned-object")
}

/// How long the parts of a fresh start took.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    load_ms: u128,
    canary_ms: u128,
}

/// Adopts the pinned programs, or loads, pins and checks new ones.
fn acquire(config: &Config) -> Result<(Guard, RingBuf<MapData>, &'static str, Timing), StartError> {
    let pins = &config.pin_dir;
    let id_file = object_id_file(config);
    let ring_error =
        |e: crate::bpf::LoadError| unavailable("cannot open the event ring buffer", &e);
    if pins.join("links").exists() {
        let pinned_id = std::fs::read_to_string(&id_file).unwrap_or_default();
        let pinned_id = pinned_id.trim();
        if pinned_id != object_id() {
            return Err(StartError::Unavailable(format!(
                "the programs pinned in {} come from another build of agent-guard (object {}, this one is {}); they keep guarding their sessions\n  hint: let those sessions end, stop the daemon, remove {} and start it again",
                pins.display(),
                if pinned_id.is_empty() { "unknown" } else { pinned_id },
                object_id(),
                pins.display()
            )));
        }
        let mut guard =
            Guard::adopt(pins).map_err(|e| unavailable("cannot adopt the pinned programs", &e))?;
        let ring = guard.take_events().map_err(ring_error)?;
        return Ok((guard, ring, "adopted", Timing::default()));
    }
    let loading = Instant::now();
    let mut guard =
        Guard::load().map_err(|e| unavailable("cannot load the BPF LSM programs", &e))?;
    let mut timing = Timing {
        load_ms: loading.elapsed().as_millis(),
        canary_ms: 0,
    };
    ensure_bpffs(pins)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| unavailable(&format!("cannot create {}", config.state_dir.display()), &e))?;
    guard.pin(pins).map_err(|e| {
        let _ = Guard::unpin(pins);
        unavailable(
            &format!("cannot pin the programs in {}", pins.display()),
            &e,
        )
    })?;
    let checked = (|| {
        let mut ring = guard.take_events().map_err(ring_error)?;
        // The canary proves enforcement before the socket opens.
        let exe = std::env::current_exe()
            .map_err(|e| unavailable("cannot find agent-guard's own executable", &e))?;
        let canary = crate::session::random_session_id() | 0x8000_0000;
        let checking = Instant::now();
        run_canary(&mut guard, &mut ring, canary, &exe)
            .map_err(|e| unavailable("self-check failed", &e))?;
        timing.canary_ms = checking.elapsed().as_millis();
        std::fs::write(&id_file, object_id())
            .map_err(|e| unavailable(&format!("cannot write {}", id_file.display()), &e))?;
        Ok(ring)
    })();
    match checked {
        Ok(ring) => Ok((guard, ring, "loaded", timing)),
        Err(e) => {
            let _ = Guard::unpin(pins);
            Err(e)
        }
    }
}

/// Mounts a BPF filesystem on the pin directory's parent unless one is there (systemd
/// mounts /sys/fs/bpf at boot; minimal systems and VMs may not).
fn ensure_bpffs(pins: &Path) -> Result<(), StartError> {
    /// `BPF_FS_MAGIC` of linux/magic.h.
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = pins.parent().unwrap_or(Path::new("/"));
    let is_bpffs =
        nix::sys::statfs::statfs(parent).is_ok_and(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpffs {
        return Ok(());
    }
    std::fs::create_dir_all(parent)
        .map_err(|e| unavailable(&format!("cannot create {}", parent.display()), &e))?;
    nix::mount::mount(
        Some("bpf"),
        parent,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| {
        unavailable(
            &format!("cannot mount a BPF filesystem on {}", parent.display()),
            &e,
        )
    })
}

/// Creates the control socket's directory and binds it: root-owned, group `group`, mode
/// 0660. A socket left by a dead daemon is replaced; a live one is an error.
pub fn bind_socket(
    path: &Path,
    group_gid: Option<u32>,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another daemon answers on {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    // Created with no permissions for anyone but root, then opened to the group: no
    // moment exists in which others could connect.
    // SAFETY: umask only changes this process's creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    if let Some(gid) = group_gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}
