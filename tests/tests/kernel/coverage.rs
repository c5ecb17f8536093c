//! The remaining ways to change a file outside the scopes, each through the hook that covers
//! it: writing through a descriptor the session never opened (`file_permission`), shared
//! writable mappings (`mmap_file`, `file_mprotect`), times (`inode_setattr`), unmounting and
//! pivot_root (`sb_umount`, `sb_pivotroot`), and the io_uring forms of writes, xattrs, links
//! and RENAME_EXCHANGE.
//!
//! The descriptors are opened by the test, outside any session, and handed to the session's
//! command as `run` hands a shell's redirections to it: the session's own opens are refused
//! by `file_open` first (see `destruction`), so only a descriptor it inherited reaches the
//! write itself.
use std::{
    fs::{self, File, OpenOptions},
    os::{fd::RawFd, unix::fs::MetadataExt as _},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    expect::{deny, Expect},
    fixture::{overwritten, Fixture, PRECIOUS, PROBE_WRITES},
    rule,
    script::{Outcome, Script},
    session::{Run, Session, WORKSPACE_POLICY},
};

/// The time the probe's `utimensat`, `utimes` and `futimens-fd` set (2001-09-09).
const PROBE_TIME: i64 = 1_000_000_000;

/// What the workspace's files hold before a probe writes them.
const OWN: &str = "own";

/// What `copy-into-fd` and `sendfile-into-fd` copy.
const REPLACEMENT: &str = "replacement";

/// One way of writing through a descriptor: a label, the probe operation and its arguments
/// before the descriptor number, and what a file holds after it, given what it held before.
struct Write {
    label: &'static str,
    probe: &'static [&'static str],
    after: fn(&str) -> Vec<u8>,
}

/// The system calls that write a file's data through a descriptor.
const SYSCALL_WRITES: &[Write] = &[
    Write {
        label: "write",
        probe: &["write-fd"],
        after: written,
    },
    Write {
        label: "pwrite",
        probe: &["pwrite-fd"],
        after: written,
    },
    Write {
        label: "fallocate",
        probe: &["fallocate-fd"],
        after: grown,
    },
    Write {
        label: "punch",
        probe: &["punch-hole-fd"],
        after: punched,
    },
    Write {
        label: "copy",
        probe: &["copy-into-fd", REPLACEMENT],
        after: replaced,
    },
    Write {
        label: "splice",
        probe: &["splice-into-fd"],
        after: written,
    },
    Write {
        label: "sendfile",
        probe: &["sendfile-into-fd", REPLACEMENT],
        after: replaced,
    },
];

/// The same through io_uring, which may run them in a kernel worker.
const URING_WRITES: &[Write] = &[
    Write {
        label: "uring-write",
        probe: &["uring-write-fd"],
        after: written,
    },
    Write {
        label: "uring-fallocate",
        probe: &["uring-fallocate-fd"],
        after: grown,
    },
    Write {
        label: "uring-splice",
        probe: &["uring-splice-fd"],
        after: written,
    },
];

fn written(before: &str) -> Vec<u8> {
    overwritten(before).into_bytes()
}

/// fallocate mode 0 of the first megabyte: the file grows, filled with zeros.
fn grown(before: &str) -> Vec<u8> {
    let mut bytes = before.as_bytes().to_vec();
    bytes.resize(1 << 20, 0);
    bytes
}

/// A hole punched over the whole file, its size kept.
fn punched(before: &str) -> Vec<u8> {
    vec![0; before.len()]
}

/// [`REPLACEMENT`] copied over the start.
fn replaced(before: &str) -> Vec<u8> {
    let mut bytes = REPLACEMENT.as_bytes().to_vec();
    bytes.extend_from_slice(
        before
            .as_bytes()
            .get(REPLACEMENT.len()..)
            .unwrap_or_default(),
    );
    bytes
}

/// Descriptor numbers: workspace files from 10, protected files (and the outsider's
/// bystanders, in its own process) from 30.
const INSIDE_FD: RawFd = 10;
const OUTSIDE_FD: RawFd = 30;

/// `root/rel` opened by the test, outside any session: for writing, and for reading too when
/// `read` (a shared writable mapping needs both).
fn open_for_writing(fx: &Fixture, rel: &str, read: bool) -> File {
    OpenOptions::new()
        .read(read)
        .write(true)
        .open(fx.path(rel))
        .unwrap_or_else(|e| panic!("open {rel} for writing, outside any session: {e}"))
}

/// The probe arguments of `write` through descriptor `fd`.
fn probe_args(write: &Write, fd: RawFd) -> Vec<String> {
    write
        .probe
        .iter()
        .map(|a| (*a).to_owned())
        .chain([fd.to_string()])
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs every write of `writes` in one session through inherited descriptors: on a workspace
/// file (allowed), on a protected file (refused), and from the test process on a bystander
/// (untouched by the guard). Checks results, contents byte for byte, and the events (`via`
/// adjusts each expected event).
fn writes_through_inherited_descriptors(name: &str, writes: &[Write], via: fn(Expect) -> Expect) {
    let fx = Fixture::new(name);
    fx.write(&format!("ws/{REPLACEMENT}"), REPLACEMENT);
    let mut files = Vec::new();
    for w in writes {
        fx.write(&format!("ws/{}", w.label), OWN);
        fx.protect(&[&format!("prod/{}", w.label)]);
        fx.protect(&[&format!("prod/bystander-{}", w.label)]);
        files.push((
            open_for_writing(&fx, &format!("ws/{}", w.label), false),
            open_for_writing(&fx, &format!("prod/{}", w.label), false),
        ));
    }
    let mut script = Script::new(&fx);
    for (i, w) in writes.iter().enumerate() {
        let inside = probe_args(w, INSIDE_FD + i as RawFd);
        let outside = probe_args(w, OUTSIDE_FD + i as RawFd);
        script = script
            .probe(&format!("{}-inside", w.label), &strs(&inside))
            .probe(&format!("{}-outside", w.label), &strs(&outside));
    }
    let mut run = Run::script(&fx, script.pause());
    for (i, (inside, outside)) in files.iter().enumerate() {
        run = run
            .inherit(inside, INSIDE_FD + i as RawFd)
            .inherit(outside, OUTSIDE_FD + i as RawFd);
    }
    let mut running = run.start();
    running.wait_for_pause();
    let bystanders: Vec<Outcome> = writes
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let file = open_for_writing(&fx, &format!("prod/bystander-{}", w.label), false);
            let fd = OUTSIDE_FD + i as RawFd;
            fx.outsider_inheriting(&[(&file, fd)], &strs(&probe_args(w, fd)))
        })
        .collect();
    let s = running.finish();

    assert_inside_ok_outside_refused(&s, writes.iter().map(|w| w.label));
    for (w, bystander) in writes.iter().zip(&bystanders) {
        assert_bytes(&fx, &format!("ws/{}", w.label), &(w.after)(OWN));
        fx.assert_intact(&format!("prod/{}", w.label));
        bystander.assert_ok();
        assert_bytes(
            &fx,
            &format!("prod/bystander-{}", w.label),
            &(w.after)(PRECIOUS),
        );
    }
    let expected: Vec<Expect> = writes
        .iter()
        .map(|w| {
            via(deny(
                "write",
                &[&fx.s(&format!("prod/{}", w.label))],
                rule::OUTSIDE,
                s.outcome(&format!("{}-outside", w.label)),
            ))
        })
        .collect();
    s.assert_decisions(&expected);
}

/// Each `NAME-inside` probe succeeded and each `NAME-outside` was refused with EPERM.
fn assert_inside_ok_outside_refused<'a>(s: &Session, names: impl Iterator<Item = &'a str>) {
    let labels: Vec<(String, &str)> = names
        .flat_map(|n| {
            [
                (format!("{n}-inside"), "ok"),
                (format!("{n}-outside"), "EPERM"),
            ]
        })
        .collect();
    let expected: Vec<(&str, &str)> = labels.iter().map(|(l, r)| (l.as_str(), *r)).collect();
    s.assert_results(&expected);
}

/// Panics unless `root/rel` holds exactly `bytes`.
fn assert_bytes(fx: &Fixture, rel: &str, bytes: &[u8]) {
    let actual = fs::read(fx.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
    assert!(
        actual == bytes,
        "content of {rel}: {} bytes starting {:?}, expected {} bytes starting {:?}",
        actual.len(),
        String::from_utf8_lossy(&actual[..actual.len().min(32)]),
        bytes.len(),
        String::from_utf8_lossy(&bytes[..bytes.len().min(32)])
    );
}

/// write, pwrite, fallocate (growing and punching a hole), copy_file_range, splice and
/// sendfile into a descriptor opened for writing before the session began.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn write_syscalls_through_inherited_descriptors() {
    writes_through_inherited_descriptors("inherited", SYSCALL_WRITES, |e| e);
}

/// IORING_OP_WRITE, IORING_OP_FALLOCATE and IORING_OP_SPLICE into inherited descriptors.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn io_uring_writes_through_inherited_descriptors() {
    writes_through_inherited_descriptors("uring-inherited", URING_WRITES, Expect::via_io_uring);
}

/// A descriptor of a device the policy does not list is no better than one of a file: writes
/// through an inherited one are refused (here /dev/kmsg), through a listed one (/dev/null)
/// allowed, as are writes to the pipes, sockets and nameless files a session makes itself.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn devices_and_nameless_files_through_inherited_descriptors() {
    let fx = Fixture::new("devices");
    let open_device = |path: &str| {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path} for writing: {e}"))
    };
    let (null, kmsg) = (open_device("/dev/null"), open_device("/dev/kmsg"));
    let script = Script::new(&fx)
        .probe("listed-device", &["write-fd", "10"])
        .probe("unlisted-device", &["write-fd", "11"])
        .probe("memfd", &["memfd"])
        .pause();
    let mut run = Run::script(&fx, script)
        .inherit(&null, 10)
        .inherit(&kmsg, 11)
        .start();
    run.wait_for_pause();
    let bystander = fx.outsider_inheriting(&[(&kmsg, 11)], &["write-fd", "11"]);
    let s = run.finish();

    s.assert_results(&[
        ("listed-device", "ok"),
        ("unlisted-device", "EPERM"),
        ("memfd", "ok"),
    ]);
    bystander.assert_ok();
    s.assert_decisions(&[deny(
        "write",
        &["/dev/kmsg"],
        rule::OUTSIDE,
        s.outcome("unlisted-device"),
    )]);
}

/// A shared writable mapping writes the file without another system call: mmap(2) shared
/// and writable, and mprotect(2) adding write to a shared mapping made read-only. On /tmp
/// (overlayfs in the VMs) the kernel maps the layer's file in place of the overlay's, which
/// mprotect then sees.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn shared_writable_mappings() {
    let fx = Fixture::new("mappings");
    let names = ["mmap", "mprotect"];
    for rel in ["ws/mmap", "ws/mprotect", "ws/opened"] {
        fx.write(rel, PRECIOUS);
    }
    fx.protect(&["prod/mmap", "prod/mprotect"]);
    fx.protect(&["prod/bystander-mmap", "prod/bystander-mprotect"]);
    let inside: Vec<File> = names
        .iter()
        .map(|n| open_for_writing(&fx, &format!("ws/{n}"), true))
        .collect();
    let outside: Vec<File> = names
        .iter()
        .map(|n| open_for_writing(&fx, &format!("prod/{n}"), true))
        .collect();
    let script = Script::new(&fx)
        .probe("opened-inside", &["mmap-write", "opened"])
        .probe("mmap-inside", &["mmap-write-fd", "10"])
        .probe("mprotect-inside", &["mprotect-write-fd", "11"])
        .probe("mmap-outside", &["mmap-write-fd", "30"])
        .probe("mprotect-outside", &["mprotect-write-fd", "31"])
        .pause();
    let mut run = Run::script(&fx, script)
        .inherit(&inside[0], 10)
        .inherit(&inside[1], 11)
        .inherit(&outside[0], 30)
        .inherit(&outside[1], 31)
        .start();
    run.wait_for_pause();
    let bystanders: Vec<Outcome> = names
        .iter()
        .zip([30, 31])
        .map(|(n, fd)| {
            let file = open_for_writing(&fx, &format!("prod/bystander-{n}"), true);
            let op = format!("{n}-write-fd");
            fx.outsider_inheriting(&[(&file, fd)], &[&op, &fd.to_string()])
        })
        .collect();
    let s = run.finish();

    s.assert_results(&[
        ("opened-inside", "ok"),
        ("mmap-inside", "ok"),
        ("mprotect-inside", "ok"),
        ("mmap-outside", "EPERM"),
        ("mprotect-outside", "EPERM"),
    ]);
    let after = overwritten(PRECIOUS);
    for rel in ["ws/opened", "ws/mmap", "ws/mprotect"] {
        fx.assert_content(rel, &after);
    }
    fx.assert_intact("prod/mmap");
    fx.assert_intact("prod/mprotect");
    for (n, bystander) in names.iter().zip(&bystanders) {
        bystander.assert_ok();
        fx.assert_content(&format!("prod/bystander-{n}"), &after);
    }
    s.assert_decisions(&[
        deny(
            "mmap-write",
            &[&fx.s("prod/mmap")],
            rule::OUTSIDE,
            s.outcome("mmap-outside"),
        ),
        deny(
            "mmap-write",
            &[&fx.s("prod/mprotect")],
            rule::OUTSIDE,
            s.outcome("mprotect-outside"),
        ),
    ]);
}

fn mtime(fx: &Fixture, rel: &str) -> i64 {
    fs::metadata(fx.path(rel))
        .unwrap_or_else(|e| panic!("stat {rel}: {e}"))
        .mtime()
}

/// Setting times: utimensat(2) and utimes(2) to a given time, utimensat(2) to now (what
/// `touch` does), and futimens(2) through an inherited descriptor.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn times() {
    let fx = Fixture::new("times");
    let ops: [(&str, &str); 4] = [
        ("utimensat", "utimensat"),
        ("utimes", "utimes"),
        ("touch", "touch"),
        ("futimens", "futimens-fd"),
    ];
    // An old time to start from, so that `touch` (to now) shows.
    const OLD: i64 = 1_500_000_000;
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(OLD as u64);
    for (name, _) in ops {
        for rel in [format!("ws/{name}"), format!("prod/{name}")] {
            fx.protect(&[&rel]);
            File::options()
                .write(true)
                .open(fx.path(&rel))
                .and_then(|f| f.set_modified(old))
                .unwrap_or_else(|e| panic!("set the time of {rel}: {e}"));
        }
    }
    fx.protect(&["prod/bystander-utimensat", "prod/bystander-futimens"]);
    let inherited_inside = open_for_writing(&fx, "ws/futimens", false);
    let inherited_outside = open_for_writing(&fx, "prod/futimens", false);
    let mut script = Script::new(&fx);
    for (name, op) in ops {
        let (inside, outside) = if op.ends_with("-fd") {
            ("10".to_owned(), "30".to_owned())
        } else {
            (name.to_owned(), fx.s(&format!("prod/{name}")))
        };
        script = script
            .probe(&format!("{name}-inside"), &[op, &inside])
            .probe(&format!("{name}-outside"), &[op, &outside]);
    }
    let mut run = Run::script(&fx, script.pause())
        .inherit(&inherited_inside, 10)
        .inherit(&inherited_outside, 30)
        .start();
    run.wait_for_pause();
    let bystander = fx.outsider(&["utimensat", &fx.s("prod/bystander-utimensat")]);
    let bystander_file = open_for_writing(&fx, "prod/bystander-futimens", false);
    let bystander_fd = fx.outsider_inheriting(&[(&bystander_file, 30)], &["futimens-fd", "30"]);
    let s = run.finish();

    assert_inside_ok_outside_refused(&s, ops.iter().map(|(name, _)| *name));
    for name in ["utimensat", "utimes", "futimens"] {
        assert_eq!(
            mtime(&fx, &format!("ws/{name}")),
            PROBE_TIME,
            "time of ws/{name}"
        );
    }
    assert!(mtime(&fx, "ws/touch") > OLD, "ws/touch was not touched");
    for (name, _) in ops {
        let rel = format!("prod/{name}");
        assert_eq!(mtime(&fx, &rel), OLD, "time of {rel}");
        fx.assert_intact(&rel);
    }
    bystander.assert_ok();
    bystander_fd.assert_ok();
    for rel in ["prod/bystander-utimensat", "prod/bystander-futimens"] {
        assert_eq!(mtime(&fx, rel), PROBE_TIME, "time of {rel}");
    }
    // inode_setattr has no mount: the paths are known up to their filesystem's root.
    let root = fx.root.file_name().unwrap().to_string_lossy().into_owned();
    let expected: Vec<Expect> = ops
        .iter()
        .map(|(name, _)| {
            let rel = format!("prod/{name}");
            deny(
                "utimes",
                &[&fx.s(&rel)],
                rule::OUTSIDE,
                s.outcome(&format!("{name}-outside")),
            )
            .truncated_path(&format!("/{root}/{rel}"))
        })
        .collect();
    s.assert_decisions(&expected);
}

/// A process holding a mount namespace of its own (private propagation), in which
/// `root/new` is bind-mounted on itself: pivot_root(new, new/old) succeeds there. Killed on
/// drop, which ends the namespace.
struct Namespace {
    holder: Child,
}

impl Namespace {
    fn new(fx: &Fixture, new: &str) -> Self {
        let ready = fx.path("namespace.ready");
        let new = fx.s(new);
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                r#"mount --bind "$1" "$1" && touch "$2" && exec sleep 600"#,
                "sh",
                &new,
                &ready.display().to_string(),
            ])
            .spawn()
            .unwrap_or_else(|e| panic!("start unshare: {e}"));
        let mut namespace = Self { holder };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Ok(Some(status)) = namespace.holder.try_wait() {
                panic!("the namespace holder ended ({status}) before it was ready");
            }
            assert!(Instant::now() < deadline, "the namespace was never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        namespace
    }

    /// nsenter's option that enters this namespace.
    fn enter(&self) -> String {
        format!("--mount=/proc/{}/ns/mnt", self.holder.id())
    }

    /// Device and inode of the namespace's root directory, as its holder sees it.
    fn root(&self) -> (u64, u64) {
        identity(Path::new(&format!("/proc/{}/root", self.holder.id())))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn identity(path: &Path) -> (u64, u64) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (meta.dev(), meta.ino())
}

/// A session changes no mounts: no umount, inside the workspace or out, and no pivot_root.
/// pivot_root is tried in a namespace prepared (outside the session) so that it would
/// succeed, and then succeeds there for the outsider.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn umount_and_pivot_root() {
    let fx = Fixture::new("umount");
    for (src, dst) in [
        ("ws/src", "ws/mnt"),
        ("prod/src", "prod/mnt"),
        ("prod/bystander-src", "prod/bystander-mnt"),
    ] {
        fx.mkdir(src);
        fx.mkdir(dst);
        fx.bind_mount(src, dst);
    }
    fx.mkdir("prod/new/old");
    let namespace = Namespace::new(&fx, "prod/new");
    let enter = namespace.enter();
    let (new, old) = (fx.s("prod/new"), fx.s("prod/new/old"));
    let script = Script::new(&fx)
        .probe("umount-inside", &["umount", "mnt"])
        .probe("umount-outside", &["umount", &fx.s("prod/mnt")])
        .probe_via(
            "pivot-root",
            &["nsenter", &enter],
            &["pivot-root", &new, &old],
        )
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let mounted = fx.mounts();
    // Had the session's pivot_root taken, the namespace would no longer hold the probe.
    let root_kept = namespace.root() == identity(Path::new("/"));
    let bystander_umount = fx.outsider(&["umount", &fx.s("prod/bystander-mnt")]);
    let bystander_pivot =
        root_kept.then(|| fx.outsider_via(&["nsenter", &enter], &["pivot-root", &new, &old]));
    let s = run.finish();

    s.assert_results(&[
        ("umount-inside", "EPERM"),
        ("umount-outside", "EPERM"),
        ("pivot-root", "EPERM"),
    ]);
    for rel in ["ws/mnt", "prod/mnt"] {
        assert!(
            mounted.contains(&fx.path(rel)),
            "{rel} was unmounted; mounts: {mounted:?}"
        );
    }
    assert!(
        root_kept,
        "the session's pivot_root changed the namespace's root"
    );
    bystander_umount.assert_ok();
    assert!(!fx.mounts().contains(&fx.path("prod/bystander-mnt")));
    bystander_pivot
        .expect("the outsider ran pivot_root")
        .assert_ok();
    assert_eq!(
        namespace.root(),
        identity(&fx.path("prod/new")),
        "the outsider's pivot_root did not take"
    );
    s.assert_decisions(&[
        deny(
            "umount",
            &[&fx.s("ws/mnt")],
            rule::NO_MOUNT,
            s.outcome("umount-inside"),
        ),
        deny(
            "umount",
            &[&fx.s("prod/mnt")],
            rule::NO_MOUNT,
            s.outcome("umount-outside"),
        ),
        deny(
            "pivot-root",
            &[&new, &old],
            rule::NO_MOUNT,
            s.outcome("pivot-root"),
        ),
    ]);
}

/// io_uring's extended-attribute, link, symlink and RENAME_EXCHANGE operations meet the
/// same hooks as the system calls. On /dev/shm: on overlayfs the kernel re-checks an xattr
/// change on the upper layer, where no scope is (see the README's limits).
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn io_uring_xattrs_links_and_exchange() {
    let fx = Fixture::new_in("uring-attrs", "/dev/shm");
    const XATTR: &str = "trusted.agent-guard-test";
    for rel in ["ws/xattr", "ws/fxattr", "ws/linked", "ws/decoy"] {
        fx.write(rel, OWN);
    }
    fx.write("ws/a", "a");
    fx.write("ws/b", "b");
    let victims = ["prod/xattr", "prod/fxattr", "prod/linked", "prod/exchanged"];
    fx.protect(&victims);
    fx.protect(&["prod/bystander"]);
    let script = Script::new(&fx)
        .probe("setxattr-inside", &["uring-setxattr", "xattr", XATTR, "x"])
        .probe(
            "fsetxattr-inside",
            &["uring-fsetxattr", "fxattr", XATTR, "x"],
        )
        .probe("link-inside", &["uring-link", "linked", "linked.2"])
        .probe("symlink-inside", &["uring-symlink", "a", "a.sym"])
        .probe("exchange-inside", &["uring-exchange", "a", "b"])
        .probe(
            "setxattr-outside",
            &["uring-setxattr", &fx.s("prod/xattr"), XATTR, "x"],
        )
        .probe(
            "fsetxattr-outside",
            &["uring-fsetxattr", &fx.s("prod/fxattr"), XATTR, "x"],
        )
        .probe(
            "link-outside",
            &["uring-link", &fx.s("prod/linked"), "stolen"],
        )
        .probe(
            "symlink-outside",
            &["uring-symlink", "a", &fx.s("prod/planted")],
        )
        .probe(
            "exchange-outside",
            &["uring-exchange", "decoy", &fx.s("prod/exchanged")],
        )
        .pause();
    let mut run = Run::script(&fx, script).start();
    run.wait_for_pause();
    let bystanders = [
        fx.outsider(&["uring-setxattr", &fx.s("prod/bystander"), XATTR, "x"]),
        fx.outsider(&["uring-link", &fx.s("prod/bystander"), &fx.s("prod/b.2")]),
        fx.outsider(&["uring-symlink", "a", &fx.s("prod/b.sym")]),
        fx.outsider(&["uring-exchange", &fx.s("prod/b.2"), &fx.s("prod/b.sym")]),
    ];
    let s = run.finish();

    s.assert_results(&[
        ("setxattr-inside", "ok"),
        ("fsetxattr-inside", "ok"),
        ("link-inside", "ok"),
        ("symlink-inside", "ok"),
        ("exchange-inside", "ok"),
        ("setxattr-outside", "EPERM"),
        ("fsetxattr-outside", "EPERM"),
        ("link-outside", "EPERM"),
        ("symlink-outside", "EPERM"),
        ("exchange-outside", "EPERM"),
    ]);
    assert!(fx.has_xattr("ws/xattr", XATTR) && fx.has_xattr("ws/fxattr", XATTR));
    fx.assert_content("ws/linked.2", OWN);
    assert_eq!(
        fs::read_link(fx.path("ws/a.sym")).ok().as_deref(),
        Some(Path::new("a"))
    );
    fx.assert_content("ws/a", "b");
    fx.assert_content("ws/b", "a");
    for victim in victims {
        fx.assert_intact(victim);
    }
    for rel in ["prod/xattr", "prod/fxattr"] {
        assert!(!fx.has_xattr(rel, XATTR), "{rel} got {XATTR}");
    }
    fx.assert_absent("ws/stolen");
    fx.assert_absent("prod/planted");
    fx.assert_content("ws/decoy", OWN);
    for bystander in &bystanders {
        bystander.assert_ok();
    }
    assert!(fx.has_xattr("prod/bystander", XATTR));

    let root = fx.root.file_name().unwrap().to_string_lossy().into_owned();
    let xattr = |rel: &str, label: &str| {
        deny("setxattr", &[&fx.s(rel)], rule::OUTSIDE, s.outcome(label))
            .truncated_path(&format!("/{root}/{rel}"))
            .via_io_uring()
    };
    s.assert_decisions(&[
        xattr("prod/xattr", "setxattr-outside"),
        xattr("prod/fxattr", "fsetxattr-outside"),
        deny(
            "link",
            &[&fx.s("prod/linked"), &fx.s("ws/stolen")],
            rule::OUTSIDE,
            s.outcome("link-outside"),
        )
        .via_io_uring(),
        deny(
            "symlink",
            &[&fx.s("prod/planted")],
            rule::OUTSIDE,
            s.outcome("symlink-outside"),
        )
        .via_io_uring(),
        deny(
            "rename",
            &[&fx.s("ws/decoy"), &fx.s("prod/exchanged")],
            rule::OUTSIDE,
            s.outcome("exchange-outside"),
        )
        .via_io_uring(),
    ]);
}

/// Audit mode lets the writes through and reports each open file once: two writes through
/// an inherited descriptor the policy refuses make one event, not two.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn audit_mode_reports_writes_once_per_file() {
    let fx = Fixture::new("audit-writes");
    fx.protect(&["prod/log"]);
    let log = open_for_writing(&fx, "prod/log", false);
    let policy = WORKSPACE_POLICY.replace(r#"mode = "enforce""#, r#"mode = "audit""#);
    let script = Script::new(&fx)
        .probe("first", &["write-fd", "30"])
        .probe("second", &["write-fd", "30"]);
    let s = Run::script(&fx, script)
        .policy(&policy)
        .inherit(&log, 30)
        .finish();

    s.assert_results(&[("first", "ok"), ("second", "ok")]);
    let mut twice = PROBE_WRITES.repeat(2);
    twice.push_str(&PRECIOUS[twice.len().min(PRECIOUS.len())..]);
    fx.assert_content("prod/log", &twice);
    s.assert_decisions(&[deny(
        "write",
        &[&fx.s("prod/log")],
        rule::OUTSIDE,
        s.outcome("first"),
    )
    .audited()]);
}
