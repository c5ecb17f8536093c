//! Proving enforcement before a command runs.
//!
//! Loading and attaching prove nothing: on a kernel whose active LSM list lacks `bpf`, the
//! programs attach and never run. So `run` checks the LSM list and then runs a canary: a
//! throwaway session whose only process tries to delete a file outside its scope. Only if
//! the kernel refuses that, leaves the file in place and reports it, does the real command
//! start.
use std::{
    ffi::OsString,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, RingBuf};
use nix::sys::wait::waitpid;

use crate::{
    bpf::{Guard, SessionMapError},
    events::Decision,
    policy::{
        kernel_dev, Access, Action, Location, Mode, ResolvedNetwork, ResolvedObject,
        ResolvedPolicy, RuleSummary, WRITABLE_RULE,
    },
    session::{shell_status, spawn_enrolled, SpawnError},
};

/// Where the kernel lists its active LSMs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// How to turn BPF LSM on, for error messages.
pub const LSM_HINT: &str =
    "add `bpf` to the kernel's `lsm=` boot parameter, keeping the LSMs already listed \
(for example `lsm=landlock,lockdown,yama,integrity,apparmor,bpf`): on Debian and Ubuntu put it in \
GRUB_CMDLINE_LINUX in /etc/default/grub, run `update-grub` and reboot. The kernel also needs \
CONFIG_BPF_LSM=y (Debian, Ubuntu, Fedora and Arch kernels have it)";

/// Exit status the canary process uses to say the kernel refused its unlink.
pub const CANARY_DENIED: i32 = 0;
/// Exit status the canary process uses to say its unlink succeeded (no enforcement).
pub const CANARY_NOT_ENFORCED: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("cannot read the active LSM list at {LSM_LIST}")]
    LsmList(#[source] io::Error),
    #[error("BPF LSM is not active on this kernel (active LSMs: {active})\n  hint: {LSM_HINT}")]
    BpfLsmInactive { active: String },
    #[error("setting up the canary in {dir}")]
    CanarySetup {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("asking the kernel side for the canary scope's identity")]
    CanaryIdentity(#[from] crate::bpf::IdentifyError),
    #[error("installing the canary session")]
    CanarySession(#[from] SessionMapError),
    #[error("starting the canary process")]
    CanarySpawn(#[from] SpawnError),
    #[error("the canary deleted a file outside its scope: the kernel is not enforcing agent-guard's programs\n  hint: {LSM_HINT}")]
    NotEnforced,
    #[error("the canary process ended unexpectedly (status {0})")]
    CanaryFailed(i32),
    #[error("the kernel refused the canary's unlink but reported no event for it")]
    NoCanaryEvent,
}

/// The active LSMs, in order. Mounts securityfs when it is not mounted yet.
pub fn active_lsms() -> Result<Vec<String>, SelfCheckError> {
    let read = || std::fs::read_to_string(LSM_LIST);
    let text = match read() {
        Ok(text) => text,
        Err(_) => {
            let _ = nix::mount::mount(
                Some("securityfs"),
                "/sys/kernel/security",
                Some("securityfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
            read().map_err(SelfCheckError::LsmList)?
        }
    };
    Ok(text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Fails unless `bpf` is in the active LSM list.
pub fn require_bpf_lsm() -> Result<(), SelfCheckError> {
    let active = active_lsms()?;
    if active.iter().any(|lsm| lsm == "bpf") {
        Ok(())
    } else {
        Err(SelfCheckError::BpfLsmInactive {
            active: active.join(","),
        })
    }
}

/// A temporary directory removed on drop.
struct CanaryDir(PathBuf);

impl Drop for CanaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the canary session `session`. Events of other sessions met in the ring buffer are
/// returned to be reported normally (there are none this early, but nothing is dropped).
pub fn run_canary(
    guard: &mut Guard,
    events: &mut RingBuf<MapData>,
    session: u32,
    agent_guard_exe: &Path,
) -> Result<Vec<Decision>, SelfCheckError> {
    let dir = std::env::temp_dir().join(format!("agent-guard-canary-{session:08x}"));
    let setup = |source| SelfCheckError::CanarySetup {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir(&dir).map_err(setup)?;
    let _cleanup = CanaryDir(dir.clone());
    let scope = dir.join("scope");
    let victim = dir.join("victim");
    std::fs::create_dir(&scope).map_err(setup)?;
    std::fs::write(&victim, b"agent-guard canary\n").map_err(setup)?;
    let meta = std::fs::metadata(&scope).map_err(setup)?;
    let mut policy = ResolvedPolicy {
        source: "<canary>".into(),
        mode: Mode::Enforce,
        rules: vec![RuleSummary {
            name: WRITABLE_RULE.into(),
            action: Action::Allow,
            access: Access::Modify,
            location: Location {
                file: "<canary>".into(),
                line: 1,
                column: 1,
            },
            net: None,
        }],
        objects: vec![ResolvedObject {
            rule: 0,
            text: scope.display().to_string(),
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
            path: scope.clone(),
        }],
        patterns: Vec::new(),
        devices: Vec::new(),
        network: ResolvedNetwork::default(),
    };
    guard.identify_policy(&mut policy)?;
    guard.add_session(session, &policy)?;
    let argv: Vec<OsString> = vec![
        agent_guard_exe.into(),
        "__canary".into(),
        victim.clone().into(),
    ];
    let result = spawn_enrolled(guard, session, &argv)
        .map_err(SelfCheckError::from)
        .and_then(|pid| {
            let status = waitpid(pid, None).ok().and_then(shell_status).unwrap_or(-1);
            match status {
                CANARY_DENIED if victim.exists() => Ok(()),
                CANARY_DENIED | CANARY_NOT_ENFORCED => Err(SelfCheckError::NotEnforced),
                other => Err(SelfCheckError::CanaryFailed(other)),
            }
        });
    guard.remove_session(session);
    result?;

    let mut saw_canary = false;
    let mut others = Vec::new();
    while let Some(item) = events.next() {
        if let Ok(decision) = Decision::decode(&item) {
            if decision.session == session {
                saw_canary |= decision.op == "unlink"
                    && decision
                        .paths
                        .first()
                        .is_some_and(|p| p.ends_with("/victim"));
            } else {
                others.push(decision);
            }
        }
    }
    if !saw_canary {
        return Err(SelfCheckError::NoCanaryEvent);
    }
    Ok(others)
}

/// The canary process itself (`agent-guard __canary PATH`): tries to delete `path` and
/// exits [`CANARY_DENIED`] when the kernel says EPERM.
pub fn canary_process(path: &Path) -> i32 {
    match std::fs::remove_file(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => CANARY_DENIED,
        Ok(()) => CANARY_NOT_ENFORCED,
        Err(e) => {
            eprintln!("agent-guard canary: unlink {}: {e}", path.display());
            4
        }
    }
}
