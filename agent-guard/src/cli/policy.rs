//! `agent-guard policy`: checking, showing and explaining policies without running anything.
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::EXIT_USAGE;
use crate::{
    network::{dns, local_addresses, Hostnames},
    policy::{
        explain, explain_network, net_compile::compile_network, Explanation, NetQuery, Op, Policy,
        Protocol, ResolvedPolicy, SessionContext, Target, SELF_PROTECTION_RULE,
    },
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: exits 0 when all are valid, otherwise prints every problem with
    /// its file, line and column.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a policy as a session started here would use it: `extends` applied, variables
    /// expanded and every path resolved to the device and inode the kernel decides on.
    Show {
        /// Policy file; without it, the built-in policy.
        file: Option<PathBuf>,
    },
    /// Print the decision a session started here would get for one operation, and the rule
    /// that takes it. It is computed from the same tables the kernel decides on.
    Explain {
        /// Policy file; without it, the built-in policy.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The operation, named as in events.
        #[arg(long, value_enum)]
        op: Op,
        /// The target (for rename and link: the existing name). For network operations:
        /// `ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6), a unix socket path or `@name`.
        path: PathBuf,
        /// The new name, for rename and link.
        path2: Option<PathBuf>,
        /// The protocol of a network operation.
        #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
        protocol: ProtocolArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn policy(command: PolicyCommand) -> i32 {
    match command {
        PolicyCommand::Check { files } => check(&files),
        PolicyCommand::Show { file } => show(file.as_deref()),
        PolicyCommand::Explain {
            policy,
            op,
            path,
            path2,
            protocol,
            format,
        } => explain_command(
            policy.as_deref(),
            op,
            &path,
            path2.as_deref(),
            protocol,
            format,
        ),
    }
}

/// Loads (or takes the built-in) policy and resolves it here.
fn load_and_resolve(file: Option<&Path>) -> Result<(Policy, ResolvedPolicy), String> {
    let policy = match file {
        Some(path) => Policy::load(path),
        None => Ok(Policy::builtin()),
    }
    .map_err(|e| e.to_string())?;
    let ctx =
        SessionContext::current().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let resolved = policy.resolve(&ctx).map_err(|e| e.to_string())?;
    Ok((policy, resolved))
}

fn show(file: Option<&Path>) -> i32 {
    let (policy, resolved) = match load_and_resolve(file) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
    };
    let dev = |d: u32| format!("{}:{}", d >> 20, d & 0xfffff);
    println!("policy: {}", policy.source);
    if policy.chain.len() > 1 {
        println!("extends: {}", policy.chain.join(" <- "));
    }
    println!("mode: {}", policy.mode.as_str());
    println!("rules (nearest to the target decides; at the same level deny > audit > allow):");
    for (index, rule) in policy.effective_rules().iter().enumerate() {
        println!(
            "  {}: {} {} ({})",
            rule.name,
            rule.action.as_str(),
            rule.access.as_str(),
            if rule.name == SELF_PROTECTION_RULE {
                "built in: agent-guard's own files, in every session".to_owned()
            } else {
                rule.location.to_string()
            }
        );
        let rule_index = index as u16;
        for object in resolved.objects.iter().filter(|o| o.rule == rule_index) {
            println!(
                "    {} -> {} (device {}, inode {})",
                object.text,
                object.path.display(),
                dev(object.dev),
                object.ino
            );
        }
        for entry in rule.paths.iter().filter(|p| p.optional) {
            let present = resolved
                .objects
                .iter()
                .map(|o| (o.rule, &o.text))
                .chain(resolved.patterns.iter().map(|p| (p.rule, &p.text)))
                .any(|(r, text)| r == rule_index && *text == entry.text);
            if !present {
                println!("    {}? -> absent here, skipped", entry.text);
            }
        }
        for pattern in resolved.patterns.iter().filter(|p| p.rule == rule_index) {
            println!(
                "    {} -> names `{}` below {} (device {}, inode {})",
                pattern.text,
                pattern.name,
                pattern.tree.path.display(),
                dev(pattern.tree.dev),
                pattern.tree.ino
            );
        }
    }
    println!("writable character devices:");
    for entry in &policy.writable_devices {
        println!("  {}", entry.text);
    }
    println!(
        "terminals writable: {}",
        if policy.terminals { "yes" } else { "no" }
    );
    0
}

fn check(files: &[PathBuf]) -> i32 {
    let ctx = SessionContext::current().ok();
    let mut failed = 0;
    for file in files {
        let policy = match Policy::load(file) {
            Ok(policy) => policy,
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
                continue;
            }
        };
        // Paths that do not exist here are reported too, each of them: `run` would refuse
        // the policy here.
        let mut problems: Vec<String> = ctx
            .as_ref()
            .map(|ctx| policy.problems(ctx))
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        // The address tables' limits, before any hostname adds its addresses.
        if let Some(Err(e)) = ctx
            .as_ref()
            .and_then(|ctx| policy.resolve(ctx).ok())
            .map(|resolved| compile_network(&resolved))
        {
            problems.push(format!(
                "{}: {e}\n  hint: split wide rules, or list fewer ports per address",
                file.display()
            ));
        }
        if problems.is_empty() {
            let paths = policy.entries().count();
            let patterns = policy
                .entries()
                .filter(|(_, p)| matches!(p.target, Target::Names { .. }))
                .count();
            println!(
                "{}: ok ({} mode, {} rules, {} paths of which {} name patterns)",
                file.display(),
                policy.mode.as_str(),
                policy.rules.len(),
                paths,
                patterns
            );
        } else {
            for problem in problems {
                eprintln!("{problem}");
            }
            failed += 1;
        }
    }
    if failed == 0 {
        0
    } else {
        EXIT_USAGE
    }
}

/// What a network target given on the command line names.
fn net_query(op: Op, target: &Path, protocol: ProtocolArg) -> Result<NetQuery, String> {
    let text = target.to_string_lossy();
    let protocol = match protocol {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Udp => Protocol::Udp,
    };
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        let (addr, port) = (socket.ip(), socket.port());
        return Ok(match op {
            Op::Bind | Op::Listen => NetQuery::Local {
                addr,
                port,
                protocol,
            },
            _ => NetQuery::Destination {
                addr,
                port,
                protocol,
            },
        });
    }
    if matches!(op, Op::Connect | Op::Send) {
        if let Some(name) = text.strip_prefix('@') {
            return Ok(NetQuery::Abstract(name.as_bytes().to_vec()));
        }
        if target.is_absolute() {
            return Ok(NetQuery::UnixPath(target.to_path_buf()));
        }
    }
    Err(format!(
        "`{text}` is not a target for --op {}: give ADDRESS:PORT (`192.0.2.1:443`, `[2001:db8::1]:443`){}",
        op.name(),
        if matches!(op, Op::Connect | Op::Send) {
            ", an absolute unix socket path or `@abstract-name`"
        } else {
            ""
        }
    ))
}

/// Fills in what `run` learns at session start: the host's addresses, the nameservers
/// and the hostnames' current addresses.
fn network_facts(policy: &mut ResolvedPolicy) {
    policy.network.local = local_addresses();
    if policy.needs_resolvers() {
        policy.network.resolvers = dns::system_nameservers().unwrap_or_default();
    }
    let names = policy.hostnames();
    if names.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut hostnames = Hostnames::new(names, policy.network.resolvers.clone());
    let (_, failures) = runtime.block_on(hostnames.refresh_due(&mut policy.network.hosts));
    for failure in failures {
        eprintln!(
            "agent-guard: cannot look up `{}` ({}); it admits no address here",
            failure.host, failure.error
        );
    }
}

fn explain_command(
    file: Option<&Path>,
    op: Op,
    path: &Path,
    path2: Option<&Path>,
    protocol: ProtocolArg,
    format: Format,
) -> i32 {
    let (_, mut resolved) = match load_and_resolve(file) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
    };
    let explained: Result<Explanation, String> = if op.is_network() {
        if path2.is_some() {
            eprintln!(
                "agent-guard: policy explain: `{}` takes one target",
                op.name()
            );
            return EXIT_USAGE;
        }
        net_query(op, path, protocol).and_then(|query| {
            network_facts(&mut resolved);
            explain_network(&resolved, op.name(), &query).map_err(|e| e.to_string())
        })
    } else {
        explain(&resolved, op, path, path2).map_err(|e| e.to_string())
    };
    let explanation = match explained {
        Ok(explanation) => explanation,
        Err(e) => {
            eprintln!("agent-guard: policy explain: {e}");
            return EXIT_USAGE;
        }
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string(&explanation).expect("an explanation serializes")
        ),
        Format::Text => {
            println!(
                "{} {} {}",
                explanation.decision,
                explanation.op,
                explanation.paths.join(" -> ")
            );
            match (&explanation.rule, &explanation.written_at) {
                (Some(rule), Some(at)) => println!("  rule: {rule} ({at})"),
                (Some(rule), None) => println!("  rule: {rule} (built in)"),
                (None, _) => println!(
                    "  rule: none (no rule covers it; {} allowed by default)",
                    if op.is_network() {
                        "it is"
                    } else {
                        "reads are"
                    }
                ),
            }
            if let Some(at) = &explanation.attached_at {
                println!("  attached at: {at}");
            }
            if let Some(errno) = explanation.errno {
                println!("  the operation fails with {errno} and is reported");
            } else if explanation.decision == "audit" {
                println!("  the operation is allowed and reported");
            }
        }
    }
    0
}
