//! agent-guard: a kernel-enforced sandbox for AI-agent process trees.
//!
//! The library holds everything; `main.rs` only dispatches the command line.
//!
//! - [`policy`]: the policy language, parsed and validated, then resolved at session start.
//! - [`kernel_btf`]: structure offsets of the running kernel, for the BPF programs.
//! - [`bpf`]: loading and attaching the BPF LSM programs and filling their maps.
//! - [`attach`]: putting a process tree or a cgroup that is already running into a session.
//! - [`selfcheck`]: proving that the kernel really enforces before anything runs.
//! - [`session`]: starting a command inside a session and waiting for all of it.
//! - [`events`]: decoding the decisions the kernel side reports.
//! - [`metrics`]: the daemon's Prometheus metrics and the server that answers scrapes.
//! - [`report`]: the sealed event lines and the files they are kept in.
//! - [`sinks`]: sending each line to stdout, a file, syslog or a webhook, never waiting.
//! - [`audit`]: the hash-chained audit log: sealing, resuming, verifying, reading back.
//! - [`network`]: the host's addresses and the policy's hostnames, looked up at run time.
//! - [`daemon`]: the service that pins the programs and starts sessions for its clients.
//! - [`client`]: talking to the daemon over its control socket.
//! - [`paths`]: where agent-guard keeps things on a host.
//! - [`cli`]: one module per subcommand.
pub mod attach;
pub mod audit;
pub mod bpf;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod events;
pub mod kernel_btf;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod policy;
pub mod report;
pub mod selfcheck;
pub mod session;
pub mod sinks;
