//! Attacking the guard (THREATS.md): from inside a session, signals and ptrace reach only
//! the session's own processes (never `agent-guard run` or a bystander), bpf(2) is refused,
//! and so is handing the kernel a module or a kexec image, even as root. Each refusal is
//! checked for its errno (ours, not the one the kernel gives the same call from outside)
//! and its event (operation, rule, target process, signal or ptrace mode or bpf command or
//! kernel object).
use std::process::{Child, Command};

use crate::{
    expect::deny,
    fixture::Fixture,
    script::{quote, Script},
    session::{Run, WORKSPACE_POLICY},
};

const OUTSIDE_SESSION: &str = "target-outside-session";
const NO_BPF: &str = "no-bpf";
const NO_KERNEL_LOAD: &str = "no-kernel-load";

/// `PTRACE_MODE_ATTACH_REALCREDS`: how ptrace attach, process_vm_writev and pidfd_getfd
/// ask for access.
const ATTACH_REALCREDS: u32 = 0x12;
/// `BPF_MAP_CREATE` and `BPF_PROG_GET_NEXT_ID`.
const BPF_MAP_CREATE: u32 = 0;
const BPF_PROG_GET_NEXT_ID: u32 = 11;

/// A process in no session that the session aims at; killed when the test ends.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("start a bystander"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn assert_alive(&mut self) {
        assert!(
            matches!(self.0.try_wait(), Ok(None)),
            "the bystander died: the session reached it"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A probe line aimed at `agent-guard run` itself: the parent of the session's shell.
fn at_run(label: &str, op: &str, extra: &[&str]) -> String {
    let extra: Vec<String> = extra.iter().map(|a| quote(a)).collect();
    format!(
        "printf '%s ' {label}; \"$P\" {op} \"$PPID\" {}",
        extra.join(" ")
    )
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn signals_and_traces_reach_only_the_session() {
    let fx = Fixture::new("selfprotect-signals");
    let mut bystander = Bystander::start();
    let b = bystander.pid();
    let script = Script::new(&fx)
        .probe("kill-bystander", &["kill", &b, "9"])
        .probe("term-bystander", &["kill", &b, "15"])
        .probe("probe-bystander", &["kill", &b, "0"])
        .sh(&at_run("kill-run", "kill", &["9"]))
        .sh(&at_run("term-run", "kill", &["15"]))
        .sh(&at_run("probe-run", "kill", &["0"]))
        .sh("sleep 300 &")
        .sh("printf '%s ' term-own; \"$P\" kill $! 15")
        .sh("wait")
        .probe("attach-bystander", &["ptrace-attach", &b])
        .probe("seize-bystander", &["ptrace-seize", &b])
        .sh(&at_run("attach-run", "ptrace-attach", &[]))
        .probe("vm-write-bystander", &["vm-write", &b])
        .probe("getfd-bystander", &["pidfd-getfd", &b, "0"])
        .sh(&at_run("getfd-run", "pidfd-getfd", &["0"]))
        .probe("attach-own-child", &["ptrace-child"])
        .probe("bpf-next-id", &["bpf", "prog-get-next-id"])
        .probe("bpf-map-create", &["bpf", "map-create"])
        .sh("exit 0");
    let s = Run::script(&fx, script).finish();
    assert_eq!(s.code(), 0, "stderr:\n{}", s.stderr);

    s.assert_results(&[
        ("kill-bystander", "EPERM"),
        ("term-bystander", "EPERM"),
        ("probe-bystander", "ok"),
        ("kill-run", "EPERM"),
        ("term-run", "EPERM"),
        ("probe-run", "ok"),
        ("term-own", "ok"),
        ("attach-bystander", "EPERM"),
        ("seize-bystander", "EPERM"),
        ("attach-run", "EPERM"),
        ("vm-write-bystander", "EPERM"),
        ("getfd-bystander", "EPERM"),
        ("getfd-run", "EPERM"),
        ("attach-own-child", "ok"),
        ("bpf-next-id", "EPERM"),
        ("bpf-map-create", "EPERM"),
    ]);
    bystander.assert_alive();
    // The same calls from outside any session get the kernel's own answers.
    fx.outsider(&["vm-write", &b]).assert_result("EFAULT");
    fx.outsider(&["pidfd-getfd", &b, "0"]).assert_ok();
    fx.outsider(&["bpf", "map-create"]).assert_result("EINVAL");
    bystander.assert_alive();

    let bystander_pid = bystander.0.id();
    let signal = |label: &str, target: u32, sig: u32| {
        deny("signal", &[], OUTSIDE_SESSION, s.outcome(label))
            .target(target)
            .field("signal", sig)
    };
    let ptrace = |label: &str, target: u32| {
        deny("ptrace", &[], OUTSIDE_SESSION, s.outcome(label))
            .target(target)
            .field("ptrace_mode", ATTACH_REALCREDS)
    };
    let bpf = |label: &str, command: u32| {
        deny("bpf", &[], NO_BPF, s.outcome(label)).field("bpf_command", command)
    };
    s.assert_decisions(&[
        signal("kill-bystander", bystander_pid, 9),
        signal("term-bystander", bystander_pid, 15),
        signal("kill-run", s.run_pid, 9),
        signal("term-run", s.run_pid, 15),
        ptrace("attach-bystander", bystander_pid),
        ptrace("seize-bystander", bystander_pid),
        ptrace("attach-run", s.run_pid),
        ptrace("vm-write-bystander", bystander_pid),
        ptrace("getfd-bystander", bystander_pid),
        ptrace("getfd-run", s.run_pid),
        bpf("bpf-next-id", BPF_PROG_GET_NEXT_ID),
        bpf("bpf-map-create", BPF_MAP_CREATE),
    ]);
}

/// The files the module and kexec probes hand the kernel: 64 zero bytes, neither a module
/// nor a kernel. The guard refuses them before they are read; otherwise the kernel reads
/// them and refuses what it finds (an empty file would be refused before the guard's
/// hook, which runs once the size is known).
fn bogus_images(fx: &Fixture) -> (String, String) {
    let zeros = "\0".repeat(64);
    fx.write("ws/bogus.ko", &zeros);
    fx.write("ws/bogus.kernel", &zeros);
    (fx.s("ws/bogus.ko"), fx.s("ws/bogus.kernel"))
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn no_module_or_kexec_image_from_a_session_even_as_root() {
    let fx = Fixture::new("selfprotect-kernel");
    let (module, kernel) = bogus_images(&fx);
    let script = Script::new(&fx)
        .probe("init-module", &["init-module"])
        .probe("finit-module", &["finit-module", &module])
        .probe("kexec-load", &["kexec-load"])
        .probe("kexec-file-load", &["kexec-file-load", &kernel])
        .sh("exit 0");
    let s = Run::script(&fx, script).finish();
    assert_eq!(s.code(), 0, "stderr:\n{}", s.stderr);
    s.assert_results(&[
        ("init-module", "EPERM"),
        ("finit-module", "EPERM"),
        ("kexec-load", "EPERM"),
        ("kexec-file-load", "EPERM"),
    ]);
    // Outside a session the kernel gets as far as looking at the images: the EPERMs above
    // are the guard's.
    fx.outsider(&["init-module"]).assert_result("ENOEXEC");
    fx.outsider(&["finit-module", &module])
        .assert_result("ENOEXEC");
    fx.outsider(&["kexec-load"]).assert_result("EINVAL");
    fx.outsider(&["kexec-file-load", &kernel])
        .assert_result("ENOEXEC");

    let load = |label: &str, paths: &[&str], object: &str| {
        deny("kernel-load", paths, NO_KERNEL_LOAD, s.outcome(label)).field("kernel_object", object)
    };
    s.assert_decisions(&[
        load("init-module", &[], "kernel-module"),
        load("finit-module", &[&module], "kernel-module"),
        load("kexec-load", &[], "kexec-image"),
        load("kexec-file-load", &[&kernel], "kexec-image"),
    ]);
}

#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn audit_mode_reports_module_loading_and_lets_the_kernel_answer() {
    let fx = Fixture::new("selfprotect-audit");
    let (module, _) = bogus_images(&fx);
    let script = Script::new(&fx)
        .probe("init-module", &["init-module"])
        .probe("finit-module", &["finit-module", &module])
        .sh("exit 0");
    let policy = WORKSPACE_POLICY.replace("mode = \"enforce\"", "mode = \"audit\"");
    let s = Run::script(&fx, script).policy(&policy).finish();
    assert_eq!(s.code(), 0, "stderr:\n{}", s.stderr);
    s.assert_results(&[("init-module", "ENOEXEC"), ("finit-module", "ENOEXEC")]);
    let load = |label: &str, paths: &[&str]| {
        deny("kernel-load", paths, NO_KERNEL_LOAD, s.outcome(label))
            .field("kernel_object", "kernel-module")
            .audited()
    };
    s.assert_decisions(&[load("init-module", &[]), load("finit-module", &[&module])]);
}
