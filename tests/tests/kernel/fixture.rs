//! The binaries under test, the machine check, and the directory tree each test works in.
//!
//! A [`Fixture`] is a fresh directory under /tmp holding a workspace (`ws/`, the session's
//! writable scope and the cwd of `run`) next to a protected tree (`prod/`) on the same
//! filesystem, so that hard links and renames between them are possible and only the guard
//! stands in the way. Dropping it detaches any mount left under it and removes it.
use std::{
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{symlink, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// `ag-probe`, built with this test crate.
pub const PROBE: &str = env!("CARGO_BIN_EXE_ag-probe");

/// What protected files hold; a test checks it is still there, byte for byte.
pub const PRECIOUS: &str = "precious production data\n";

/// What `ag-probe open-write` and `create` write.
pub const PROBE_WRITES: &str = "written by ag-probe\n";

/// What a file holds after `ag-probe open-write` wrote over its start.
pub fn overwritten(before: &str) -> String {
    let mut after = PROBE_WRITES.to_owned();
    after.push_str(before.get(PROBE_WRITES.len()..).unwrap_or(""));
    after
}

/// The `agent-guard` binary: `$AGENT_GUARD_BIN`, or the workspace's debug build.
pub fn agent_guard_bin() -> PathBuf {
    std::env::var_os("AGENT_GUARD_BIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/agent-guard"
            ))
        },
        PathBuf::from,
    )
}

/// The probe's path as the kernel reports it in `exe`.
pub fn probe_exe() -> String {
    canonical(Path::new(PROBE))
}

pub fn canonical(path: &Path) -> String {
    fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
        .display()
        .to_string()
}

/// Panics unless this machine can run the kernel tier. A kernel test that quietly skipped
/// would read as a pass, so a missing prerequisite is a failure with the reason.
pub fn preflight() {
    static MACHINE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(why) = MACHINE.get_or_init(check_machine) {
        panic!("kernel tier cannot run here: {why}");
    }
}

fn check_machine() -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root; `agent-guard run` loads BPF programs (run `cargo xtask test`, which boots VMs)".into());
    }
    let lsm_list = "/sys/kernel/security/lsm";
    if !Path::new(lsm_list).exists() {
        // Mounted by agent-guard itself on first use; do the same to read it here.
        let _ = std::process::Command::new("mount")
            .args(["-t", "securityfs", "securityfs", "/sys/kernel/security"])
            .status();
    }
    let lsms = fs::read_to_string(lsm_list).map_err(|e| format!("cannot read {lsm_list}: {e}"))?;
    if !lsms.trim().split(',').any(|lsm| lsm == "bpf") {
        return Err(format!(
            "BPF LSM is not active (active LSMs: {}); boot with `bpf` in `lsm=`",
            lsms.trim()
        ));
    }
    for bin in [agent_guard_bin(), PathBuf::from(PROBE)] {
        let meta = fs::metadata(&bin).map_err(|e| {
            format!(
                "{}: {e} (build it with `cargo build`, or point AGENT_GUARD_BIN at it)",
                bin.display()
            )
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not an executable file", bin.display()));
        }
    }
    Ok(())
}

/// A throwaway tree: `root/ws` (the workspace) and `root/prod` (protected).
pub struct Fixture {
    pub root: PathBuf,
    pub ws: PathBuf,
    pub prod: PathBuf,
}

impl Fixture {
    pub fn new(name: &str) -> Self {
        Self::new_in(name, "/tmp")
    }

    /// A fixture under `base` (in the VMs /tmp is an overlayfs; /dev/shm is a plain tmpfs).
    pub fn new_in(name: &str, base: &str) -> Self {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix(&format!("agk-{name}-"))
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("create a fixture directory under {base}: {e}"))
            .keep();
        // Events report resolved paths; compare against the resolved form.
        let root = fs::canonicalize(&dir).expect("canonicalize the fixture directory");
        let fixture = Self {
            ws: root.join("ws"),
            prod: root.join("prod"),
            root,
        };
        fs::create_dir(&fixture.ws).expect("create ws/");
        fs::create_dir(&fixture.prod).expect("create prod/");
        fixture
    }

    /// `root/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `root/rel` as a string, for scripts, probe arguments and expected event paths.
    pub fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// Writes `content` to `root/rel`, creating parent directories.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent directories");
        }
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes [`PRECIOUS`] to each of `rels`.
    pub fn protect(&self, rels: &[&str]) {
        for rel in rels {
            self.write(rel, PRECIOUS);
        }
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        path
    }

    /// Makes `root/link` a symbolic link to `target` (written as given).
    pub fn symlink(&self, target: &Path, link: &str) {
        symlink(target, self.path(link)).expect("create a symlink");
    }

    /// Makes `root/new` a hard link of `root/existing`, as the test process (no session).
    pub fn hard_link(&self, existing: &str, new: &str) {
        fs::hard_link(self.path(existing), self.path(new)).expect("create a hard link");
    }

    /// Bind-mounts `root/src` at `root/dst`, as the test process (no session).
    pub fn bind_mount(&self, src: &str, dst: &str) {
        let (src, dst) = (cpath(&self.path(src)), cpath(&self.path(dst)));
        // SAFETY: valid NUL-terminated paths, no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind mount {src:?} at {dst:?}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Whether `root/rel` has the extended attribute `name`.
    pub fn has_xattr(&self, rel: &str, name: &str) -> bool {
        let path = cpath(&self.path(rel));
        let name = CString::new(name).expect("xattr names have no NUL bytes");
        // SAFETY: valid NUL-terminated strings; a zero-sized query only returns the length.
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// Panics unless `root/rel` holds exactly `content`.
    pub fn assert_content(&self, rel: &str, content: &str) {
        match self.read(rel) {
            Some(actual) => assert_eq!(actual, content, "content of {rel}"),
            None => panic!("{rel} is gone, expected it to hold {content:?}"),
        }
    }

    /// Panics unless the protected file `root/rel` is still there, unchanged.
    pub fn assert_intact(&self, rel: &str) {
        match self.read(rel) {
            Some(actual) if actual == PRECIOUS => {}
            Some(actual) => panic!("protected file {rel} was modified: now {actual:?}"),
            None => panic!("protected file {rel} was removed or moved away"),
        }
    }

    /// Panics if anything exists at `root/rel` (a dangling symlink counts).
    pub fn assert_absent(&self, rel: &str) {
        assert!(
            fs::symlink_metadata(self.path(rel)).is_err(),
            "{rel} should not exist"
        );
    }

    pub fn assert_exists(&self, rel: &str) {
        assert!(
            fs::symlink_metadata(self.path(rel)).is_ok(),
            "{rel} should exist"
        );
    }

    /// Mount points at or below the fixture root, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = table
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|field| PathBuf::from(unescape_mountinfo(field)))
            .filter(|mount| mount.starts_with(&self.root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        mounts
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Detach first: removing the tree through a bind mount would delete the other side.
        for mount in self.mounts() {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(cpath(&mount).as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL bytes")
}

/// Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|octal| u8::from_str_radix(octal, 8).ok())
            {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `done` every 50 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
