//! `agent-guard policy`: checking, showing and explaining policies without running anything.
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use super::EXIT_USAGE;
use crate::policy::{explain, Op, Policy, ResolvedPolicy, SessionContext, Target};

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
        /// The target (for rename and link: the existing name).
        path: PathBuf,
        /// The new name, for rename and link.
        path2: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
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
            format,
        } => explain_command(policy.as_deref(), op, &path, path2.as_deref(), format),
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
    for (index, rule) in policy.rules.iter().enumerate() {
        println!(
            "  {}: {} {} ({})",
            rule.name,
            rule.action.as_str(),
            rule.access.as_str(),
            rule.location
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
        let problems = ctx
            .as_ref()
            .map(|ctx| policy.problems(ctx))
            .unwrap_or_default();
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

fn explain_command(
    file: Option<&Path>,
    op: Op,
    path: &Path,
    path2: Option<&Path>,
    format: Format,
) -> i32 {
    let (_, resolved) = match load_and_resolve(file) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return EXIT_USAGE;
        }
    };
    let explanation = match explain(&resolved, op, path, path2) {
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
                (None, _) => println!("  rule: none (no rule covers it; reads are allowed)"),
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
