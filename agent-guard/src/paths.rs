//! Where agent-guard keeps things on a host. The self-protection rule (see
//! `policy::self_protection`) keeps sessions from writing any of them.

/// Configuration: `config.toml`, the mandatory base policy and the named policies.
pub const CONFIG_DIR: &str = "/etc/agent-guard";
/// The daemon's configuration file.
pub const CONFIG_FILE: &str = "/etc/agent-guard/config.toml";
/// The daemon's runtime directory: its control socket and the records of running sessions.
/// A tmpfs, so it vanishes at reboot together with the pinned programs.
pub const RUN_DIR: &str = "/run/agent-guard";
/// The control socket.
pub const SOCKET: &str = "/run/agent-guard/agent-guard.sock";
/// Lasting state.
pub const STATE_DIR: &str = "/var/lib/agent-guard";
/// The webhook sinks' disk spools, one directory per sink: lasting, so a restarted daemon
/// sends what was not yet acknowledged.
pub const SPOOL_DIR: &str = "/var/lib/agent-guard/spool";
/// Event logs.
pub const LOG_DIR: &str = "/var/log/agent-guard";
/// Where the daemon pins its programs' links and maps (a bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/agent-guard";
/// The group whose members may start sessions through the daemon.
pub const GROUP: &str = "agent-guard";
/// Environment variable naming another control socket (tests, several daemons).
pub const SOCKET_ENV: &str = "AGENT_GUARD_SOCKET";

/// The control socket clients use: `$AGENT_GUARD_SOCKET` or [`SOCKET`].
pub fn socket() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map_or_else(|| SOCKET.into(), Into::into)
}
