//! Builds the BPF programs of `agent-guard-ebpf` and leaves the object in OUT_DIR, where
//! `src/bpf/loader.rs` embeds it. The binary never loads an object from `target/` at run
//! time, so it cannot pick up a stale one.
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("agent-guard has no parent directory")?
        .join("agent-guard-ebpf");
    // aya-build watches the BPF crate only; the shared types change its object too.
    let common_dir = manifest_dir
        .parent()
        .context("agent-guard has no parent directory")?
        .join("agent-guard-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .context("the workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-guard-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
