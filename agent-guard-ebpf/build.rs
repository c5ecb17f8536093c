//! Rebuild the BPF object when the linker changes: aya-build does not track it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
