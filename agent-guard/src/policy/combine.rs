//! The mandatory base policy: the administrator's policy (in /etc/agent-guard/), combined
//! with a session's own so that the result is never looser than the base. docs/policy.md,
//! "Mandatory base policy", is the user's description; in short:
//!
//! - the result enforces if either enforces, and closes egress if either closes it;
//! - every base rule is in force, named `base:NAME`; the session's rules come after;
//! - a session `allow` or `audit` rule may not sit where the base decides more strongly
//!   (deny over audit over allow), since the rule nearest the object decides: an object at
//!   or below a base denial, or a name pattern that could match there, is refused. A
//!   session that opens something to modification must open it inside what the base lets
//!   sessions modify;
//! - network rules are checked block by block: a session allow never sits inside a base
//!   denial (the most specific block decides), and with the base's egress closed (and for
//!   this host's own addresses in any case) it lies inside a base allow with the same or
//!   wider ports and protocol. Hostnames cannot be compared as addresses before they are
//!   looked up, so a session names only hosts the base allows;
//! - terminals stay writable only if both say so; the session's writable devices are some
//!   of the base's;
//! - the built-in self-protection rules come first, once.
//!
//! [`lifted`] is the check shared with [`Policy::resolve`], which runs it against the
//! self-protection rules alone.
use std::{collections::BTreeSet, os::unix::fs::MetadataExt as _, path::Path};

use agent_guard_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, MAX_NAME_PATTERNS, MAX_POLICY_PATHS, MAX_POLICY_RULES,
    RULE_PATH_TOO_DEEP, RULE_POLICY_BASE,
};

use super::{
    compile::compile,
    explain::decide_at,
    kernel_dev,
    network::{Cidr, NetMatch, PortRange},
    resolve::expand_and_stat,
    self_protection::{self, real_path, Places, SELF_PROTECTION_RULE},
    Access, Action, Location, Mode, Policy, ResolveError, ResolvedPolicy, Rule, SessionContext,
    Target, DNS_RESOLVERS_RULE,
};

/// What base rules are renamed to in the combined policy: `base:NAME`.
pub const BASE_RULE_PREFIX: &str = "base:";

/// Where the administrator's mandatory base policy is read from.
pub const BASE_POLICY_PATH: &str = "/etc/agent-guard/base.toml";

/// Why a session cannot start under the base policy. Every problem is listed, each located
/// in the file that has to change.
#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    /// The base policy itself does not resolve here: the administrator's file is at fault.
    #[error("the mandatory base policy {base} cannot be used here:\n{}", join(.problems))]
    Base {
        base: String,
        problems: Vec<ResolveError>,
    },
    /// The session's policy does not resolve, or would loosen the base.
    #[error("{}", join(.problems))]
    Session { problems: Vec<ResolveError> },
}

impl CombineError {
    /// Every problem, in order.
    pub fn problems(&self) -> &[ResolveError] {
        match self {
            Self::Base { problems, .. } | Self::Session { problems } => problems,
        }
    }
}

fn join(problems: &[ResolveError]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The session's policy combined with the mandatory base policy, resolved for `ctx`.
pub fn combine(
    base: &Policy,
    session: &Policy,
    ctx: &SessionContext,
) -> Result<ResolvedPolicy, CombineError> {
    combine_with(base, session, ctx, &self_protection::rules())
}

/// [`combine`] with `builtin` as the self-protection rules.
pub(crate) fn combine_with(
    base: &Policy,
    session: &Policy,
    ctx: &SessionContext,
    builtin: &[Rule],
) -> Result<ResolvedPolicy, CombineError> {
    let ceiling = base
        .resolve_with(ctx, builtin)
        .map_err(|e| CombineError::Base {
            base: base.source.clone(),
            problems: e.flatten(),
        })?;
    let combined = Policy {
        source: session.source.clone(),
        chain: base.chain.iter().chain(&session.chain).cloned().collect(),
        mode: if base.mode == Mode::Enforce || session.mode == Mode::Enforce {
            Mode::Enforce
        } else {
            Mode::Audit
        },
        rules: base
            .rules
            .iter()
            .map(|r| Rule {
                name: format!("{BASE_RULE_PREFIX}{}", r.name),
                ..r.clone()
            })
            // The session's generated DNS rule goes: its hostnames must be the base's, whose
            // own `base:dns-resolvers` admits the nameservers; without hostnames it only
            // served an open egress, which the base may have closed.
            .chain(
                session
                    .rules
                    .iter()
                    .filter(|r| r.name != DNS_RESOLVERS_RULE)
                    .cloned(),
            )
            .collect(),
        writable_devices: session.writable_devices.clone(),
        terminals: base.terminals && session.terminals,
        egress: if base.egress == Action::Deny || session.egress == Action::Deny {
            Action::Deny
        } else {
            Action::Allow
        },
    };
    let rules: Vec<Rule> = builtin.iter().chain(&combined.rules).cloned().collect();
    let first = builtin.len() + base.rules.len();
    // `combined.rules` lost the session's DNS rule, if any: `first` still indexes its rules.
    let mut problems = limits(&rules, first);
    let resolved = match combined.resolve_rules(ctx, &rules) {
        Ok(resolved) => Some(resolved),
        Err(e) => {
            problems.extend(e.flatten());
            None
        }
    };
    if let Some(resolved) = &resolved {
        problems.extend(lifted(&ceiling, resolved, &rules, first, true));
    }
    problems.extend(network_problems(base, session));
    problems.extend(device_problems(&ceiling, session, ctx));
    match resolved {
        Some(resolved) if problems.is_empty() => Ok(resolved),
        _ => Err(CombineError::Session { problems }),
    }
}

/// The kernel tables' limits, for the combined list.
fn limits(rules: &[Rule], first: usize) -> Vec<ResolveError> {
    let session_rule = rules.get(first).or(rules.last());
    let at = |location: &Location, message: String| {
        ResolveError::Refused {
        location: location.clone(),
        message,
        hint: "the base policy's rules count too: merge rules that share an action and access, or list parent directories".into(),
    }
    };
    let mut problems = Vec::new();
    if rules.len() > MAX_POLICY_RULES {
        if let Some(rule) = session_rule {
            problems.push(at(
                &rule.location,
                format!(
                    "with the base policy's, {} rules; at most {MAX_POLICY_RULES} are supported",
                    rules.len()
                ),
            ));
        }
    }
    let entries: Vec<_> = rules.iter().flat_map(|r| &r.paths).collect();
    if let Some(entry) = entries.get(MAX_POLICY_PATHS) {
        problems.push(at(
            &entry.location,
            format!("with the base policy's, more than {MAX_POLICY_PATHS} paths"),
        ));
    }
    let patterns: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e.target, Target::Names { .. }))
        .collect();
    if let Some(entry) = patterns.get(MAX_NAME_PATTERNS) {
        problems.push(at(
            &entry.location,
            format!("with the base policy's, more than {MAX_NAME_PATTERNS} name patterns"),
        ));
    }
    problems
}

/// How a refused access reads in messages.
fn verb(access: Access) -> &'static str {
    match access {
        Access::Modify => "modify",
        Access::Read => "read",
        Access::Connect => "connect to unix sockets at",
        Access::Listen => "listen on",
    }
}

/// Every session rule of `resolved` (rules from index `first` on; `rules` is the effective
/// list `resolved` was made from, for locations) that would override a stronger rule of
/// `ceiling`: an `allow` or `audit` entry where the ceiling's nearest rule decides more
/// strongly, or a name pattern that could match there. With `require_scope`, a session
/// `allow` or `audit` on modification must also lie where the ceiling allows modifying.
pub(crate) fn lifted(
    ceiling: &ResolvedPolicy,
    resolved: &ResolvedPolicy,
    rules: &[Rule],
    first: usize,
    require_scope: bool,
) -> Vec<ResolveError> {
    let compiled = compile(ceiling);
    let mut places = Places::default();
    let mut problems = Vec::new();
    let location_of = |rule: u16, text: &str| {
        rules
            .get(rule as usize)
            .and_then(|r| r.paths.iter().find(|p| p.text == text))
            .map(|p| p.location.clone())
            .unwrap_or_else(|| resolved.rules[rule as usize].location.clone())
    };
    let stronger = |rule: u16, than: Action| {
        let r = &ceiling.rules[rule as usize];
        r.action > than
    };
    // The objects first, then the patterns, each in the order of the rules.
    let session_objects = resolved
        .objects
        .iter()
        .filter(|o| o.rule as usize >= first)
        .map(|o| (o.rule, &o.text, &o.path, false));
    let session_patterns = resolved
        .patterns
        .iter()
        .filter(|p| p.rule as usize >= first)
        .map(|p| (p.rule, &p.text, &p.tree.path, true));
    for (rule, text, path, is_pattern) in session_objects.chain(session_patterns) {
        let summary = &resolved.rules[rule as usize];
        if summary.action == Action::Deny || summary.access == Access::Listen {
            continue;
        }
        let access = summary.access;
        let location = location_of(rule, text);
        let refuse = |message: String, hint: String| ResolveError::Refused {
            location: location.clone(),
            message,
            hint,
        };
        // A pattern can match anywhere below its tree: every stronger ceiling entry there
        // (or whose tree holds it) is within reach.
        let mut reached = None;
        if is_pattern {
            let below = ceiling
                .objects
                .iter()
                .filter(|d| stronger(d.rule, summary.action))
                .filter(|d| ceiling.rules[d.rule as usize].access == access)
                .find(|d| places.at_or_below(&d.path, path))
                .map(|d| (d.rule, d.path.clone()));
            let trees = || {
                ceiling
                    .patterns
                    .iter()
                    .filter(|q| stronger(q.rule, summary.action))
                    .filter(|q| ceiling.rules[q.rule as usize].access == access)
                    .map(|q| (q.rule, q.tree.path.clone()))
                    .collect::<Vec<_>>()
            };
            reached = below.or_else(|| {
                trees()
                    .into_iter()
                    .find(|(_, tree)| places.related(tree, path))
            });
        }
        if let Some((by, at)) = reached {
            problems.push(lifts(ceiling, by, &at, text, access, true, &refuse));
            continue;
        }
        let real = real_path(path).unwrap_or_else(|| path.clone());
        let (decided, at) = match decide_at(&compiled, access.code(), &real) {
            Ok(decided) => decided,
            Err(e) => {
                problems.push(refuse(
                    format!("`{text}` cannot be checked against the rules it may not lift: {e}"),
                    "name a path that exists and can be resolved".into(),
                ));
                continue;
            }
        };
        let by_rule = decided.rule.checked_sub(RULE_POLICY_BASE);
        match by_rule {
            Some(by) if decided.action > summary.action.code() => {
                let at = at.unwrap_or_else(|| real.clone());
                problems.push(lifts(
                    ceiling, by as u16, &at, text, access, is_pattern, &refuse,
                ));
            }
            _ if decided.action == ACTION_DENY && decided.rule == RULE_PATH_TOO_DEEP => {
                problems.push(refuse(
                    format!("`{text}` lies deeper than the kernel side walks"),
                    "name a shorter path".into(),
                ));
            }
            None if require_scope
                && access == Access::Modify
                && decided.action != ACTION_ALLOW
                && decided.action != ACTION_AUDIT =>
            {
                problems.push(refuse(
                    format!(
                        "the base policy does not let sessions modify {} (`{text}`)",
                        real.display()
                    ),
                    "a session's writable scopes must lie inside the base policy's (its `writable` list and allow rules; `${WORKSPACE}` when it names none): remove this entry or narrow it".into(),
                ));
            }
            _ => {}
        }
    }
    // In the order they are written.
    problems.sort_by_key(|p| p.location().map(|l| (l.file.clone(), l.line, l.column)));
    problems
}

/// The message for a session entry `text` that would lift ceiling rule `by`, attached at
/// `at`.
fn lifts(
    ceiling: &ResolvedPolicy,
    by: u16,
    at: &Path,
    text: &str,
    access: Access,
    is_pattern: bool,
    refuse: &dyn Fn(String, String) -> ResolveError,
) -> ResolveError {
    let rule = &ceiling.rules[by as usize];
    let reach = if is_pattern {
        "could match inside"
    } else {
        "would open"
    };
    if rule.name == SELF_PROTECTION_RULE {
        refuse(
            format!(
                "`{text}` {reach} {}, which agent-guard protects in every session: no session may {} it (rule `{SELF_PROTECTION_RULE}`)",
                at.display(),
                verb(access)
            ),
            if is_pattern {
                format!("a name pattern decides where its name matches, so its tree may neither hold {} nor lie inside it: give the pattern another tree", at.display())
            } else {
                format!("the built-in rule `{SELF_PROTECTION_RULE}` cannot be lifted: remove the entry, or name a path outside {}", at.display())
            },
        )
    } else {
        refuse(
            format!(
                "`{text}` {reach} {}, where the base policy's rule `{}` ({}) decides `{}` on {}",
                at.display(),
                rule.name,
                rule.location,
                rule.action.as_str(),
                access.as_str()
            ),
            "a session may only be stricter than the mandatory base policy: remove the entry, or narrow it to where the base allows it".into(),
        )
    }
}

/// The session's network rules that would loosen the base's.
fn network_problems(base: &Policy, session: &Policy) -> Vec<ResolveError> {
    let mut problems = Vec::new();
    let local: Vec<Cidr> = ["127.0.0.0/8", "::1", "0.0.0.0", "::"]
        .iter()
        .filter_map(|t| Cidr::parse(t).ok())
        .chain(
            crate::network::local_addresses()
                .into_iter()
                .map(Cidr::host),
        )
        .collect();
    let base_net = |access: Access| {
        base.rules
            .iter()
            .filter(move |r| r.access == access)
            .filter_map(|r| r.net.as_ref().map(|n| (r, n)))
    };
    for rule in session
        .rules
        .iter()
        .filter(|r| r.name != DNS_RESOLVERS_RULE)
    {
        let Some(net) = &rule.net else { continue };
        if rule.action == Action::Deny {
            continue;
        }
        let refuse = |message: String, hint: &str| ResolveError::Refused {
            location: rule.location.clone(),
            message,
            hint: hint.into(),
        };
        // Base rules at least as permissive as this one that speak for all of `ports` and
        // `protocol`.
        let covers = |b: &NetMatch, b_action: Action| {
            b_action <= rule.action
                && net
                    .port_ranges()
                    .iter()
                    .all(|p| b.port_ranges().iter().any(|q| q.lo <= p.lo && p.hi <= q.hi))
                && (b.protocol.is_none() || b.protocol == net.protocol)
        };
        let closed = rule.access == Access::Listen || base.egress == Action::Deny;
        for block in &net.addresses {
            // The most specific block decides: a session block strictly inside a stronger
            // base block that speaks for some of the same ports takes over there.
            let inside = base_net(rule.access).find(|(b, n)| {
                b.action > rule.action
                    && n.addresses
                        .iter()
                        .any(|a| contains(a, block) && a.prefix_bits() < block.prefix_bits())
                    && ports_meet(&n.port_ranges(), &net.port_ranges())
                    && (n.protocol.is_none()
                        || net.protocol.is_none()
                        || n.protocol == net.protocol)
            });
            if let Some((b, _)) = inside {
                problems.push(refuse(
                    format!(
                        "rule `{}` allows {block}, inside what the base policy's rule `{}` ({}) decides `{}`",
                        rule.name, b.name, b.location, b.action.as_str()
                    ),
                    "a session may only be stricter than the mandatory base policy: remove the address or pick one the base allows",
                ));
                continue;
            }
            let is_local =
                rule.access == Access::Connect && local.iter().any(|l| contains(l, block));
            if !(closed || is_local) {
                continue;
            }
            let covered = base_net(rule.access).any(|(b, n)| {
                covers(n, b.action) && n.addresses.iter().any(|a| contains(a, block))
            });
            if !covered {
                problems.push(refuse(
                    format!(
                        "rule `{}` allows {block}{}, which the base policy does not let sessions {}",
                        rule.name,
                        ports_text(net),
                        if rule.access == Access::Listen { "listen on" } else if is_local { "reach (this host's own addresses and loopback are refused unless a rule names them)" } else { "reach (its egress is closed)" }
                    ),
                    "a session's network allow rules must lie inside the base policy's allow rules, with the same or fewer ports and the same protocol",
                ));
            }
        }
        for host in &net.hosts {
            let named = base_net(Access::Connect)
                .any(|(b, n)| covers(n, b.action) && n.hosts.contains(host));
            if !named {
                problems.push(refuse(
                    format!(
                        "rule `{}` allows the host {host}{}, which no base policy rule allows",
                        rule.name,
                        ports_text(net)
                    ),
                    "hostnames are looked up only when the session starts, so a session may name only hosts that a base allow rule names, with the same or fewer ports",
                ));
            }
        }
        for name in &net.abstract_names {
            let base_action = base_net(Access::Connect)
                .filter(|(_, n)| n.abstract_names.contains(name))
                .map(|(b, _)| b.action)
                .max();
            if base_action.is_none_or(|a| a > rule.action) {
                problems.push(refuse(
                    format!(
                        "rule `{}` allows the abstract socket @{}, which the base policy does not allow",
                        rule.name,
                        String::from_utf8_lossy(name)
                    ),
                    "abstract unix sockets are refused unless a rule allows them: the base policy must allow this name",
                ));
            }
        }
    }
    problems
}

/// Whether block `outer` contains block `inner` (IPv4 compared in its mapped form).
fn contains(outer: &Cidr, inner: &Cidr) -> bool {
    let (o, ob) = outer.v6_form();
    let (i, ib) = inner.v6_form();
    ob <= ib && super::network::mask(i, ob) == o
}

trait PrefixBits {
    fn prefix_bits(&self) -> u8;
}

impl PrefixBits for Cidr {
    fn prefix_bits(&self) -> u8 {
        self.v6_form().1
    }
}

fn ports_meet(a: &[PortRange], b: &[PortRange]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.lo <= y.hi && y.lo <= x.hi))
}

fn ports_text(net: &NetMatch) -> String {
    let ports: Vec<String> = net.ports.iter().map(ToString::to_string).collect();
    let mut out = String::new();
    if !ports.is_empty() {
        out.push_str(&format!(" (ports {})", ports.join(", ")));
    }
    if let Some(p) = net.protocol {
        out.push_str(&format!(" over {}", p.as_str()));
    }
    out
}

/// Writable devices of the session that the base does not let sessions write.
fn device_problems(
    ceiling: &ResolvedPolicy,
    session: &Policy,
    ctx: &SessionContext,
) -> Vec<ResolveError> {
    let allowed: BTreeSet<u32> = ceiling.devices.iter().copied().collect();
    let mut problems = Vec::new();
    for entry in &session.writable_devices {
        let Ok((path, meta)) = expand_and_stat(&entry.text, entry, ctx) else {
            // Missing devices are reported by the resolution itself.
            continue;
        };
        let rdev = kernel_dev(meta.rdev());
        if !allowed.contains(&rdev) && !allowed.contains(&super::any_minor(rdev >> 20)) {
            problems.push(ResolveError::Refused {
                location: entry.location.clone(),
                message: format!(
                    "the base policy does not let sessions write the device {}",
                    path.display()
                ),
                hint: "a session's `writable_devices` must be some of the base policy's".into(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests;
