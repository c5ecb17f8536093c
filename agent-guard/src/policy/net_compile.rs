//! The compiled network tables of a session, exactly as the kernel maps hold them:
//! `NET_CONNECT`, `NET_LISTEN` and `ABSTRACT`. `crate::bpf` writes them, and `policy explain`
//! answers from them with the same [`NetRules::decide`] the kernel side runs.
//!
//! Each address entry carries its own port rules followed by those of every shorter prefix
//! that contains it, most specific first and, at the same prefix, the policy's rules before
//! the built-in refusal of local destinations, deny before audit before allow. So the
//! kernel's single longest-prefix lookup followed by a first-match scan is "the most
//! specific address rule that speaks for this port and protocol decides".
use std::{collections::BTreeMap, net::IpAddr};

use agent_guard_common::{
    NetPortRule, NetRules, NetVerdict, ACTION_DENY, MAX_NET_PORT_RULES, MAX_POLICY_NET_ENTRIES,
    PROTO_ANY, RULE_LOCAL_DESTINATION, RULE_POLICY_BASE,
};

use super::{
    network::{mask, Cidr, PortRange},
    Access, ResolvedPolicy,
};

/// An address block in the kernel's form: IPv6 bytes (IPv4 mapped) and a prefix length.
pub type Prefix = ([u8; 16], u8);

/// One port rule before it is placed in its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    block: Prefix,
    ports: PortRange,
    protocol: u8,
    action: u8,
    rule: u32,
    /// A built-in refusal: it yields to the policy's rules at the same prefix.
    builtin: bool,
}

impl Candidate {
    /// The order in which the kernel tries port rules (see the module docs).
    fn order(&self) -> (std::cmp::Reverse<u8>, bool, std::cmp::Reverse<u8>, u32) {
        (
            std::cmp::Reverse(self.block.1),
            self.builtin,
            std::cmp::Reverse(self.action),
            self.rule,
        )
    }

    fn contains(&self, block: &Prefix) -> bool {
        self.block.1 <= block.1 && mask(block.0, self.block.1) == self.block.0
    }
}

/// The network tables of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTables {
    pub connect: BTreeMap<Prefix, NetRules>,
    pub listen: BTreeMap<Prefix, NetRules>,
    /// Abstract unix socket names and what the policy says about them.
    pub abstract_names: BTreeMap<Vec<u8>, NetVerdict>,
    /// Which hostnames gave each address, for events.
    pub hostnames: BTreeMap<IpAddr, Vec<String>>,
}

/// A policy the kernel tables cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetLimitError {
    #[error("{entries} address entries; the kernel table holds at most {MAX_POLICY_NET_ENTRIES} per session")]
    TooManyEntries { entries: usize },
    #[error("{block} falls under {rules} port rules (its own and those of wider blocks); at most {MAX_NET_PORT_RULES} fit")]
    TooManyPortRules { block: String, rules: usize },
}

/// The blocks that stand for "this host": loopback, the unspecified addresses (a connect
/// to them reaches local services) and the host's own addresses.
fn local_blocks(local: &[IpAddr]) -> Vec<Prefix> {
    let fixed = ["127.0.0.0/8", "::1", "0.0.0.0", "::"];
    fixed
        .iter()
        .filter_map(|text| Cidr::parse(text).ok())
        .chain(local.iter().map(|&a| Cidr::host(a)))
        .map(|c| c.v6_form())
        .collect()
}

pub fn compile_network(policy: &ResolvedPolicy) -> Result<NetTables, NetLimitError> {
    let net = &policy.network;
    let mut tables = NetTables::default();
    let mut connect = Vec::new();
    let mut listen = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let Some(matched) = &rule.net else { continue };
        let code = RULE_POLICY_BASE + index as u32;
        let action = rule.action.code() as u8;
        let mut blocks: Vec<Prefix> = matched.addresses.iter().map(Cidr::v6_form).collect();
        for host in &matched.hosts {
            for &addr in net.hosts.get(host).into_iter().flatten() {
                blocks.push(Cidr::host(addr).v6_form());
                let names = tables.hostnames.entry(addr).or_default();
                if !names.contains(host) {
                    names.push(host.clone());
                }
            }
        }
        if matched.system_resolvers {
            blocks.extend(net.resolvers.iter().map(|&a| Cidr::host(a).v6_form()));
        }
        let target = if rule.access == Access::Listen {
            &mut listen
        } else {
            &mut connect
        };
        for block in blocks {
            for ports in matched.port_ranges() {
                target.push(Candidate {
                    block,
                    ports,
                    protocol: matched.protocol.map_or(PROTO_ANY, |p| p.number()),
                    action,
                    rule: code,
                    builtin: false,
                });
            }
        }
        for name in &matched.abstract_names {
            let verdict = NetVerdict {
                action: u32::from(action),
                rule: code,
            };
            tables
                .abstract_names
                .entry(name.clone())
                .and_modify(|v| {
                    if verdict.action > v.action {
                        *v = verdict;
                    }
                })
                .or_insert(verdict);
        }
    }
    for block in local_blocks(&net.local) {
        connect.push(Candidate {
            block,
            ports: PortRange::ALL,
            protocol: PROTO_ANY,
            action: ACTION_DENY as u8,
            rule: RULE_LOCAL_DESTINATION,
            builtin: true,
        });
    }
    tables.connect = place(connect)?;
    tables.listen = place(listen)?;
    Ok(tables)
}

/// Gives every block the port rules of all blocks that contain it, in the kernel's order.
fn place(mut candidates: Vec<Candidate>) -> Result<BTreeMap<Prefix, NetRules>, NetLimitError> {
    candidates.sort_by_key(Candidate::order);
    candidates.dedup();
    let mut blocks: Vec<Prefix> = candidates.iter().map(|c| c.block).collect();
    blocks.sort();
    blocks.dedup();
    if blocks.len() > MAX_POLICY_NET_ENTRIES {
        return Err(NetLimitError::TooManyEntries {
            entries: blocks.len(),
        });
    }
    let mut out = BTreeMap::new();
    for block in blocks {
        let rules: Vec<NetPortRule> = candidates
            .iter()
            .filter(|c| c.contains(&block))
            .map(|c| NetPortRule {
                port_lo: c.ports.lo,
                port_hi: c.ports.hi,
                protocol: c.protocol,
                action: c.action,
                _pad: 0,
                rule: c.rule,
            })
            .collect();
        if rules.len() > MAX_NET_PORT_RULES {
            return Err(NetLimitError::TooManyPortRules {
                block: Cidr {
                    addr: super::network::display_addr(block.0),
                    prefix: if super::network::display_addr(block.0).is_ipv4() {
                        block.1.saturating_sub(96)
                    } else {
                        block.1
                    },
                }
                .to_string(),
                rules: rules.len(),
            });
        }
        let mut value = NetRules {
            count: rules.len() as u32,
            ..NetRules::default()
        };
        value.rules[..rules.len()].copy_from_slice(&rules);
        out.insert(block, value);
    }
    Ok(out)
}

impl NetTables {
    /// What the kernel's longest-prefix lookup finds for `addr` (IPv6 form) in `table`.
    pub fn lookup(table: &BTreeMap<Prefix, NetRules>, addr: [u8; 16]) -> Option<&NetRules> {
        table
            .iter()
            .filter(|((block, bits), _)| mask(addr, *bits) == *block)
            .max_by_key(|((_, bits), _)| *bits)
            .map(|(_, rules)| rules)
    }
}

#[cfg(test)]
mod tests {
    use agent_guard_common::{ACTION_ALLOW, PROTO_TCP, PROTO_UDP, RULE_POLICY_BASE};

    use super::*;
    use crate::policy::{Policy, SessionContext};

    fn resolved(text: &str) -> ResolvedPolicy {
        let ctx = SessionContext {
            workspace: std::env::temp_dir(),
            home: None,
        };
        Policy::parse("p.toml", text)
            .unwrap()
            .resolve(&ctx)
            .unwrap()
    }

    fn tables(text: &str, local: &[&str]) -> (ResolvedPolicy, NetTables) {
        let mut resolved = resolved(text);
        resolved.network.local = local.iter().map(|a| a.parse().unwrap()).collect();
        let t = compile_network(&resolved).unwrap();
        (resolved, t)
    }

    fn decide(t: &NetTables, addr: &str, port: u16, proto: u8) -> Option<(u8, u32)> {
        let addr: IpAddr = addr.parse().unwrap();
        NetTables::lookup(&t.connect, Cidr::host(addr).v6_form().0)?.decide(port, proto)
    }

    fn rule_code(p: &ResolvedPolicy, name: &str) -> u32 {
        RULE_POLICY_BASE + p.rules.iter().position(|r| r.name == name).unwrap() as u32
    }

    const POLICY: &str = r#"
[network]
egress = "allow"
[[network.rule]]
name = "lan"
action = "deny"
addresses = ["10.0.0.0/8"]
[[network.rule]]
name = "build-host"
action = "allow"
addresses = ["10.1.2.3"]
ports = [443, "8000-8100"]
protocol = "tcp"
[[network.rule]]
name = "db"
action = "allow"
addresses = ["127.0.0.1"]
ports = [5432]
[[network.rule]]
name = "everything-tls"
action = "allow"
addresses = ["0.0.0.0/0", "::/0"]
ports = [443]
"#;

    #[test]
    fn the_most_specific_block_that_speaks_for_the_port_decides() {
        let (p, t) = tables(POLICY, &["198.51.100.9"]);
        let (build, lan, db) = (
            rule_code(&p, "build-host"),
            rule_code(&p, "lan"),
            rule_code(&p, "db"),
        );
        assert_eq!(decide(&t, "10.1.2.3", 443, PROTO_TCP), Some((1, build)));
        assert_eq!(decide(&t, "10.1.2.3", 8050, PROTO_TCP), Some((1, build)));
        // UDP, or another port, falls through to the /8 deny.
        assert_eq!(decide(&t, "10.1.2.3", 443, PROTO_UDP), Some((3, lan)));
        assert_eq!(decide(&t, "10.1.2.3", 22, PROTO_TCP), Some((3, lan)));
        assert_eq!(decide(&t, "10.9.9.9", 443, PROTO_TCP), Some((3, lan)));
        // The same answer through the IPv4-mapped form.
        assert_eq!(
            decide(&t, "::ffff:10.1.2.3", 443, PROTO_TCP),
            Some((1, build))
        );
        // Elsewhere only the wide rule speaks, for 443; the rest is the egress default.
        assert_eq!(
            decide(&t, "192.0.2.1", 443, PROTO_TCP),
            Some((1, rule_code(&p, "everything-tls")))
        );
        assert_eq!(decide(&t, "192.0.2.1", 80, PROTO_TCP), None);
        // Loopback and the host's own addresses are not opened by a wide rule...
        assert_eq!(
            decide(&t, "127.0.0.1", 443, PROTO_TCP),
            Some((3, RULE_LOCAL_DESTINATION))
        );
        assert_eq!(
            decide(&t, "198.51.100.9", 443, PROTO_TCP),
            Some((3, RULE_LOCAL_DESTINATION))
        );
        assert_eq!(
            decide(&t, "::", 443, PROTO_TCP),
            Some((3, RULE_LOCAL_DESTINATION))
        );
        // ...only by a rule that names them.
        assert_eq!(decide(&t, "127.0.0.1", 5432, PROTO_TCP), Some((1, db)));
        assert_eq!(
            decide(&t, "::ffff:127.0.0.1", 5432, PROTO_UDP),
            Some((1, db))
        );
        assert_eq!(
            decide(&t, "127.0.0.1", 5433, PROTO_TCP),
            Some((3, RULE_LOCAL_DESTINATION))
        );
        assert_eq!(
            decide(&t, "::1", 5432, PROTO_TCP),
            Some((3, RULE_LOCAL_DESTINATION))
        );
    }

    #[test]
    fn at_the_same_block_deny_beats_allow_and_policy_rules_beat_the_builtin() {
        let text = r#"
[[network.rule]]
name = "open"
action = "allow"
addresses = ["192.0.2.5", "198.51.100.9"]
[[network.rule]]
name = "shut"
action = "deny"
addresses = ["192.0.2.5"]
"#;
        let (p, t) = tables(text, &["198.51.100.9"]);
        assert_eq!(
            decide(&t, "192.0.2.5", 1, PROTO_TCP),
            Some((3, rule_code(&p, "shut")))
        );
        assert_eq!(
            decide(&t, "198.51.100.9", 1, PROTO_TCP),
            Some((ACTION_ALLOW as u8, rule_code(&p, "open")))
        );
    }

    #[test]
    fn hostnames_and_resolvers_become_host_entries() {
        let text = r#"
[[network.rule]]
name = "git"
action = "allow"
hosts = ["git.example.com"]
ports = [443]
"#;
        let mut p = resolved(text);
        assert!(p.needs_resolvers());
        p.network.resolvers = vec!["127.0.0.53".parse().unwrap()];
        p.network.hosts.insert(
            "git.example.com".into(),
            vec![
                "192.0.2.80".parse().unwrap(),
                "2001:db8::80".parse().unwrap(),
            ],
        );
        let t = compile_network(&p).unwrap();
        let git = rule_code(&p, "git");
        assert_eq!(decide(&t, "192.0.2.80", 443, PROTO_TCP), Some((1, git)));
        assert_eq!(decide(&t, "2001:db8::80", 443, PROTO_TCP), Some((1, git)));
        assert_eq!(decide(&t, "192.0.2.81", 443, PROTO_TCP), None);
        assert_eq!(
            decide(&t, "127.0.0.53", 53, PROTO_UDP),
            Some((1, rule_code(&p, "dns-resolvers")))
        );
        assert_eq!(
            t.hostnames[&"192.0.2.80".parse::<IpAddr>().unwrap()],
            vec!["git.example.com".to_owned()]
        );
    }

    #[test]
    fn too_many_port_rules_for_one_block_is_an_error() {
        let ports: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        let text = format!(
            "[[network.rule]]\nname = \"many\"\naction = \"allow\"\naddresses = [\"192.0.2.0/24\"]\nports = [{}]\n",
            ports.join(", ")
        );
        let err = compile_network(&resolved(&text)).unwrap_err();
        assert!(err.to_string().contains("192.0.2.0/24"), "{err}");
    }
}
