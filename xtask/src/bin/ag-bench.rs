//! Measured loops for `cargo xtask bench`, run inside the VM, guarded or not.
//!
//! `ag-bench LOOP DIR ITERATIONS` prints `ns_per_iter=N` for one of:
//! - `create-write-unlink`: create DIR/f, write 4 KiB, close, unlink;
//! - `unlink`: unlink DIR/victim, which must exist; with a guard that denies it every call
//!   fails with EPERM and is reported; unguarded it is measured against a missing file
//!   (ENOENT), the closest operation that also leaves the directory unchanged.
use std::{fs, io::Write as _, path::Path, time::Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: ag-bench create-write-unlink|unlink DIR ITERATIONS");
        std::process::exit(2);
    }
    let dir = Path::new(&args[2]);
    let iterations: u32 = args[3].parse().expect("ITERATIONS is a number");
    let block = [0x5au8; 4096];
    let started = Instant::now();
    match args[1].as_str() {
        "create-write-unlink" => {
            let file = dir.join("f");
            for _ in 0..iterations {
                let mut f = fs::File::create(&file).expect("create in the scope");
                f.write_all(&block).expect("write");
                drop(f);
                fs::remove_file(&file).expect("unlink in the scope");
            }
        }
        "unlink" => {
            let victim = dir.join("victim");
            for _ in 0..iterations {
                // Success would destroy the fixture: the guarded run must deny every call.
                assert!(
                    fs::remove_file(&victim).is_err(),
                    "unlink of {} succeeded",
                    victim.display()
                );
            }
        }
        other => {
            eprintln!("unknown loop {other}");
            std::process::exit(2);
        }
    }
    let ns = started.elapsed().as_nanos() / u128::from(iterations.max(1));
    println!("ns_per_iter={ns}");
}
