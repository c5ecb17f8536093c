//! Measured loops for `cargo xtask bench`, run inside the VM, guarded or not.
//!
//! `ag-bench LOOP DIR ITERATIONS` prints `ns_per_iter=N` for one of:
//! - `create-write-unlink`: create DIR/f, write 4 KiB, close, unlink;
//! - `unlink`: unlink DIR/victim, which must exist; with a guard that denies it every call
//!   fails with EPERM and is reported; unguarded it is measured against a missing file
//!   (ENOENT), the closest operation that also leaves the directory unchanged.
//!
//! - `open-read`: open DIR/r (which must exist) for reading, read it, close.
//!
//! `ag-bench connect-close ADDR PORT ITERATIONS` prints `ns_per_iter=N` for a TCP connect
//! to ADDR:PORT followed by a close, the loop of the network ratio. `ag-bench serve-tcp ADDR
//! PORT` is its server: it accepts connections on ADDR:PORT and closes them, until killed.
//! The bench starts it outside every session, so that only the client is guarded.
//!
//! `ag-bench policy ROOT ENTRIES` writes the policies of the rule-count ratio: see
//! [`rules_policy`].
use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Instant,
};

const USAGE: &str = "usage: ag-bench create-write-unlink|unlink|open-read DIR ITERATIONS
       ag-bench connect-close ADDR PORT ITERATIONS
       ag-bench serve-tcp ADDR PORT
       ag-bench policy ROOT ENTRIES";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

/// `ADDR PORT` of the network subcommands.
fn socket_addr(addr: &str, port: &str) -> SocketAddr {
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("ADDR `{addr}` is an IP address: {e}"));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|e| panic!("PORT `{port}` is a port number: {e}"));
    SocketAddr::new(ip, port)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.len()) {
        (Some("serve-tcp"), 4) => serve_tcp(socket_addr(&args[2], &args[3])),
        (Some("connect-close"), 5) => {
            let iterations: u32 = args[4].parse().expect("ITERATIONS is a number");
            let started = Instant::now();
            connect_close(socket_addr(&args[2], &args[3]), iterations);
            print_ns_per_iter(started, iterations);
            return;
        }
        (Some("serve-tcp" | "connect-close"), _) => usage(),
        (_, 4) => {}
        _ => usage(),
    }
    if args[1] == "policy" {
        let entries: usize = args[3].parse().expect("ENTRIES is a number");
        let loop_dir = rules_policy(Path::new(&args[2]), entries)
            .unwrap_or_else(|e| panic!("write the policy under {}: {e}", args[2]));
        println!("{}", loop_dir.display());
        return;
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
        "open-read" => {
            let file = dir.join("r");
            let mut buf = [0u8; 4096];
            for _ in 0..iterations {
                let mut f = fs::File::open(&file).expect("open for reading");
                let _ = std::io::Read::read(&mut f, &mut buf).expect("read");
            }
        }
        other => {
            eprintln!("unknown loop {other}");
            std::process::exit(2);
        }
    }
    print_ns_per_iter(started, iterations);
}

fn print_ns_per_iter(started: Instant, iterations: u32) {
    let ns = started.elapsed().as_nanos() / u128::from(iterations.max(1));
    println!("ns_per_iter={ns}");
}

/// The client waits for the server to catch up once per this many connections.
///
/// The server's accept queue holds 128 connections (std's `listen` backlog). A client that
/// runs ahead of it by more (the server descheduled for a moment) has its next SYN dropped
/// and retried a second later, which would swamp the loop's time. Every `SYNC_EVERY`-th
/// connection is read to its end: the server closes connections in the order it accepts
/// them, so that end means every earlier one was accepted, and the queue never holds more
/// than `SYNC_EVERY`. The wait is the same guarded and unguarded.
const SYNC_EVERY: u32 = 64;

/// Connects to `server` and closes the connection, `iterations` times. Every connect must
/// succeed: in the guarded run the policy allows this destination, and a refusal is a
/// broken benchmark, not a fast one.
fn connect_close(server: SocketAddr, iterations: u32) {
    for i in 1..=iterations {
        let mut stream =
            TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {i} to {server}: {e}"));
        if i % SYNC_EVERY == 0 {
            let mut byte = [0u8; 1];
            let read = std::io::Read::read(&mut stream, &mut byte)
                .unwrap_or_else(|e| panic!("wait for {server} to close connection {i}: {e}"));
            assert_eq!(read, 0, "the server sends nothing");
        }
        drop(stream);
    }
}

/// Accepts connections on `addr` and closes each at once, forever.
fn serve_tcp(addr: SocketAddr) -> ! {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    serve(&listener)
}

fn serve(listener: &TcpListener) -> ! {
    loop {
        // A client that gave up before the accept (ECONNABORTED) or a transient shortage
        // must not stop the server the other runs depend on.
        if let Err(e) = listener.accept() {
            eprintln!("ag-bench serve-tcp: accept: {e}");
        }
    }
}

/// Path entries every generated policy has, whatever its size: the chain the loop runs
/// under (3) and two name patterns.
const FIXED_ENTRIES: usize = 5;

/// Writes `ROOT/policy.toml`, a policy of exactly `entries` path entries over directories
/// it creates under `ROOT`, and returns the directory the loop should run in.
///
/// Every policy, small or large, puts the loop's directory under the same chain of rules,
/// so the walk from the loop's file meets the same rules at the same depths:
/// `scope` (writable) / `vendor` (protected) / `build` (writable again, the exception) /
/// `a/b/c` (the loop). Two name patterns below `ROOT` make the walk compare names at every
/// level. The other entries are directories under `ROOT/fill`, in turn writable,
/// protected and read-denied: they fill the kernel's tables without lying on the loop's
/// path, so a ratio above 1 between a large and a small policy is the cost of the table
/// size alone.
fn rules_policy(root: &Path, entries: usize) -> std::io::Result<PathBuf> {
    assert!(
        entries >= FIXED_ENTRIES,
        "a rule-count policy has at least {FIXED_ENTRIES} entries"
    );
    fs::create_dir_all(root)?;
    let root = fs::canonicalize(root)?;
    let scope = root.join("scope");
    let vendor = scope.join("vendor");
    let build = vendor.join("build");
    let loop_dir = build.join("a/b/c");
    fs::create_dir_all(&loop_dir)?;
    let mut writable = vec![scope, build];
    let mut protected = vec![vendor, root.join("**/*.sqlite")];
    let mut read_denied = vec![root.join("**/.env*")];
    let fill = root.join("fill");
    for i in 0..entries - FIXED_ENTRIES {
        let dir = fill.join(format!("{i:05}"));
        fs::create_dir_all(&dir)?;
        [&mut writable, &mut protected, &mut read_denied][i % 3].push(dir);
    }
    let list = |key: &str, paths: &[PathBuf]| {
        let mut out = format!("{key} = [\n");
        for path in paths {
            let _ = writeln!(out, "  \"{}\",", path.display());
        }
        out.push_str("]\n");
        out
    };
    let text = format!(
        "# Written by `ag-bench policy` for `cargo xtask bench`: {entries} path entries.\n\
         version = 1\n\
         mode = \"enforce\"\n\n\
         [filesystem]\n\
         {}{}{}\
         writable_devices = [\"/dev/null\"]\n\
         terminals = true\n",
        list("writable", &writable),
        list("protected", &protected),
        list("read_denied", &read_denied),
    );
    fs::write(root.join("policy.toml"), text)?;
    Ok(loop_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_close_reaches_the_server_every_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(&listener));
        connect_close(server, 200);
    }

    #[test]
    fn rules_policy_has_exactly_the_entries_asked_for() {
        let root = std::env::temp_dir().join(format!("ag-bench-policy-{}", std::process::id()));
        for entries in [FIXED_ENTRIES, 10, 101] {
            let _ = fs::remove_dir_all(&root);
            let loop_dir = rules_policy(&root, entries).unwrap();
            let text = fs::read_to_string(root.join("policy.toml")).unwrap();
            let listed: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\","))
                .collect();
            assert_eq!(listed.len(), entries, "{text}");
            for path in listed.iter().filter(|p| !p.contains("/**/")) {
                assert!(Path::new(path).is_dir(), "{path} exists");
            }
            assert!(loop_dir.is_dir());
            assert!(loop_dir.starts_with(root.join("scope/vendor/build")));
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
