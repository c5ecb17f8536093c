//! What the network policy needs from the host at run time: the host's own addresses, the
//! nameservers, and the addresses of the policy's hostnames, looked up again as their DNS
//! TTLs run out ([`Hostnames`]).
pub mod dns;
pub mod live;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use tokio::time::Instant;

/// How long one lookup may wait for one server.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// When a lookup failed, the next try comes this soon; the addresses found before stay
/// admitted meanwhile.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The addresses of this host's interfaces, which reach its local services like loopback
/// does.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A failed lookup, reported without stopping anything.
#[derive(Debug)]
pub struct LookupFailure {
    pub host: String,
    pub error: dns::DnsError,
}

/// The policy's hostnames and when each is due to be looked up again.
pub struct Hostnames {
    servers: Vec<IpAddr>,
    due: BTreeMap<String, Instant>,
}

impl Hostnames {
    /// Every name is due at once.
    pub fn new(names: BTreeSet<String>, servers: Vec<IpAddr>) -> Self {
        let now = Instant::now();
        Self {
            servers,
            due: names.into_iter().map(|n| (n, now)).collect(),
        }
    }

    /// When the next lookup is due; `None` without hostnames.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Looks up every name that is due and records its addresses in `hosts`. Returns
    /// whether any name's addresses changed, and the lookups that failed (their names keep
    /// the addresses they had, and are tried again soon).
    pub async fn refresh_due(
        &mut self,
        hosts: &mut BTreeMap<String, Vec<IpAddr>>,
    ) -> (bool, Vec<LookupFailure>) {
        let now = Instant::now();
        let due: Vec<String> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        // All at once: a name whose servers do not answer must not hold up the others.
        let mut lookups = tokio::task::JoinSet::new();
        for host in due {
            // Tried again soon unless its lookup below says otherwise.
            self.due.insert(host.clone(), now + RETRY_AFTER_FAILURE);
            let servers = self.servers.clone();
            lookups.spawn(async move {
                let result = dns::resolve(&host, &servers, LOOKUP_TIMEOUT).await;
                (host, result)
            });
        }
        let mut changed = false;
        let mut failures = Vec::new();
        while let Some(joined) = lookups.join_next().await {
            let Ok((host, result)) = joined else {
                continue;
            };
            let next = match result {
                Ok(resolution) => {
                    let mut addresses: Vec<IpAddr> =
                        resolution.addresses.iter().map(|(a, _)| *a).collect();
                    addresses.sort();
                    addresses.dedup();
                    if hosts.get(&host) != Some(&addresses) {
                        changed = true;
                        hosts.insert(host.clone(), addresses);
                    }
                    resolution.refresh_after()
                }
                Err(error) => {
                    failures.push(LookupFailure {
                        host: host.clone(),
                        error,
                    });
                    RETRY_AFTER_FAILURE
                }
            };
            self.due.insert(host, Instant::now() + next);
        }
        (changed, failures)
    }
}
