//! A running session's network: its hostnames looked up at start and again as their TTLs
//! run out, and the kernel tables compiled from them. Shared by `run` and the daemon.
use std::{collections::BTreeMap, net::IpAddr};

use super::{dns, local_addresses, Hostnames, LookupFailure};
use crate::{
    bpf::Guard,
    policy::{
        net_compile::{compile_network, NetTables},
        ResolvedPolicy,
    },
};

/// Reads the host's addresses and nameservers into the policy and looks its hostnames up
/// once, before the session starts. A hostname that cannot be looked up stays refused (it
/// has no address yet) and is tried again while the session runs. Problems are returned
/// as warnings, one line each.
pub async fn prepare(policy: &mut ResolvedPolicy) -> (Hostnames, Vec<String>) {
    let mut warnings = Vec::new();
    policy.network.local = local_addresses();
    if policy.needs_resolvers() {
        match dns::system_nameservers() {
            Ok(servers) if !servers.is_empty() => policy.network.resolvers = servers,
            Ok(_) => warnings.push(format!(
                "{} names no nameserver; hostname rules admit nothing",
                dns::RESOLV_CONF
            )),
            Err(e) => warnings.push(format!(
                "cannot read the nameservers ({e}); hostname rules admit nothing"
            )),
        }
    }
    let mut hostnames = Hostnames::new(policy.hostnames(), policy.network.resolvers.clone());
    let (_, failures) = hostnames.refresh_due(&mut policy.network.hosts).await;
    warnings.extend(failures.iter().map(lookup_warning));
    (hostnames, warnings)
}

/// How a failed lookup is reported.
pub fn lookup_warning(failure: &LookupFailure) -> String {
    format!(
        "cannot look up `{}` ({}); addresses it had stay admitted, and it is tried again shortly",
        failure.host, failure.error
    )
}

/// A session's network tables and what they are compiled from.
pub struct LiveNetwork {
    pub session: u32,
    pub policy: ResolvedPolicy,
    pub hostnames: Hostnames,
    /// What is installed in the kernel now.
    pub tables: NetTables,
    /// Every hostname each address was found for during the session, for events.
    pub seen: BTreeMap<IpAddr, Vec<String>>,
}

impl LiveNetwork {
    /// The network of a session whose tables `add_session` just installed from `policy`.
    pub fn new(session: u32, policy: ResolvedPolicy, hostnames: Hostnames) -> Self {
        let tables = compile_network(&policy).unwrap_or_default();
        let seen = tables.hostnames.clone();
        Self {
            session,
            policy,
            hostnames,
            tables,
            seen,
        }
    }

    /// Looks up the hostnames that are due and, when their addresses changed, swaps the
    /// kernel tables to the new ones. Returns the problems met, one line each.
    pub async fn refresh(&mut self, guard: &mut Guard) -> Vec<String> {
        let mut hosts = self.policy.network.hosts.clone();
        let (changed, failures) = self.hostnames.refresh_due(&mut hosts).await;
        let mut warnings: Vec<String> = failures.iter().map(lookup_warning).collect();
        if changed {
            warnings.extend(self.install_hosts(guard, hosts));
        }
        warnings
    }

    /// Swaps the kernel tables to those compiled with the hostnames' new addresses
    /// `hosts`. When the new tables cannot be built or written, the old ones stay in
    /// force and the problem is returned.
    pub fn install_hosts(
        &mut self,
        guard: &mut Guard,
        hosts: BTreeMap<String, Vec<IpAddr>>,
    ) -> Option<String> {
        let mut next = self.policy.clone();
        next.network.hosts = hosts;
        let tables = match compile_network(&next) {
            Ok(tables) => tables,
            Err(e) => {
                return Some(format!(
                    "the hostnames' new addresses do not fit ({e}); the old ones stay in force"
                ))
            }
        };
        if let Err(e) = guard.update_network(self.session, &self.tables, &tables) {
            return Some(format!("cannot install the hostnames' new addresses: {e}"));
        }
        for (addr, names) in &tables.hostnames {
            let known = self.seen.entry(*addr).or_default();
            for name in names {
                if !known.contains(name) {
                    known.push(name.clone());
                }
            }
        }
        self.tables = tables;
        self.policy = next;
        None
    }

    /// Hostnames of each rule, by the index events carry.
    pub fn rule_hosts(&self) -> Vec<Vec<String>> {
        self.policy
            .rules
            .iter()
            .map(|r| r.net.as_ref().map(|n| n.hosts.clone()).unwrap_or_default())
            .collect()
    }
}
