//! How a policy decides on network destinations, written once for both sides.
//!
//! Destinations are IP addresses in IPv6 form: an IPv4 address is its IPv4-mapped form
//! (`::ffff:a.b.c.d`), so `connect` to `127.0.0.1` on an `AF_INET` socket and to
//! `::ffff:127.0.0.1` on an `AF_INET6` socket meet the same entries.
//!
//! The kernel side looks the address up in a longest-prefix-match table (`NET_CONNECT` or
//! `NET_LISTEN`), keyed by session and address prefix. The entry found carries an ordered
//! list of port rules: user space put there the port rules of that prefix *and of every
//! shorter prefix that contains it*, most specific prefix first and, at the same prefix,
//! deny before audit before allow. The first port rule that matches the port and protocol
//! decides ([`NetRules::decide`]), so one lookup answers "the most specific address rule
//! that speaks for this port decides". `policy explain` runs the same function on the same
//! compiled lists.
use core::mem::size_of;

/// Port rules one address entry can hold, its own and those inherited from shorter
/// prefixes. A policy that would need more for some address is refused by `policy check`.
pub const MAX_NET_PORT_RULES: usize = 16;
/// Address entries across all sessions (each of `NET_CONNECT` and `NET_LISTEN`).
pub const MAX_NET_ENTRIES: u32 = 16_384;
/// Address entries one policy may use, hostnames' addresses included.
pub const MAX_POLICY_NET_ENTRIES: usize = 4096;
/// Abstract unix socket names across all sessions.
pub const MAX_ABSTRACT_ENTRIES: u32 = 4096;
/// Longest abstract unix socket name (`sun_path` without its leading NUL).
pub const ABSTRACT_NAME_LEN: usize = 107;
/// Bytes an abstract name takes in [`AbstractKey`]: a power of two, so that the kernel side
/// can bound a copy's length with a mask the verifier understands.
pub const ABSTRACT_NAME_BUF: usize = 128;

/// Bits of the session id at the front of every `NET_*` key; the address's prefix length
/// is added to it.
pub const NET_SESSION_BITS: u32 = 32;

/// Protocol numbers port rules match (`IPPROTO_*`); 0 in a rule matches any.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP: `sctp_connectx` and its kin connect through setsockopt(2), which no connect or
/// send hook sees, so sessions get no SCTP sockets.
pub const PROTO_SCTP: u8 = 132;

/// Address families (`AF_*`) events carry.
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_NETLINK: u16 = 16;
pub const AF_PACKET: u16 = 17;

/// Socket types (`SOCK_*`).
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_RAW: u16 = 3;
pub const SOCK_SEQPACKET: u16 = 5;

/// Data of a `NET_*` key; the LPM key's prefix length is [`NET_SESSION_BITS`] plus the
/// address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetKey {
    /// The session id, big-endian, so that its bits come first in the trie's order.
    pub session: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetKey>() == 20);

impl NetKey {
    pub fn new(session: u32, addr: [u8; 16]) -> Self {
        Self {
            session: session.to_be_bytes(),
            addr,
        }
    }
}

/// One port rule of an address entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPortRule {
    /// Inclusive port range, host byte order; `0..=65535` for every port.
    pub port_lo: u16,
    pub port_hi: u16,
    /// `PROTO_*`; [`PROTO_ANY`] matches every protocol.
    pub protocol: u8,
    /// `ACTION_*` (allow, audit, deny).
    pub action: u8,
    pub _pad: u16,
    /// The rule code events carry: `RULE_POLICY_BASE + index` or a built-in reason.
    pub rule: u32,
}
const _: () = assert!(size_of::<NetPortRule>() == 12);

impl NetPortRule {
    #[inline(always)]
    pub fn matches(&self, port: u16, protocol: u8) -> bool {
        port >= self.port_lo
            && port <= self.port_hi
            && (self.protocol == PROTO_ANY || self.protocol == protocol)
    }
}

/// The value of a `NET_*` entry: its port rules in the order they are tried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRules {
    pub count: u32,
    pub _pad: u32,
    pub rules: [NetPortRule; MAX_NET_PORT_RULES],
}
const _: () = assert!(size_of::<NetRules>() == 8 + 12 * MAX_NET_PORT_RULES);

impl Default for NetRules {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            rules: [NetPortRule::default(); MAX_NET_PORT_RULES],
        }
    }
}

impl NetRules {
    /// The first port rule that matches, as `(action, rule code)`; `None` when none does,
    /// and the session's default decides.
    #[inline(always)]
    pub fn decide(&self, port: u16, protocol: u8) -> Option<(u8, u32)> {
        let mut i = 0;
        while i < MAX_NET_PORT_RULES {
            if i as u32 >= self.count {
                break;
            }
            let rule = &self.rules[i];
            if rule.matches(port, protocol) {
                return Some((rule.action, rule.rule));
            }
            i += 1;
        }
        None
    }
}

/// Key of the `ABSTRACT` table: an abstract unix socket name a session's policy names.
/// Bytes past `len` are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbstractKey {
    pub session: u32,
    pub len: u32,
    pub name: [u8; ABSTRACT_NAME_BUF],
}
const _: () = assert!(size_of::<AbstractKey>() == 136);

impl AbstractKey {
    /// The key for `name` (without the leading NUL), or `None` when it is too long.
    pub fn new(session: u32, name: &[u8]) -> Option<Self> {
        if name.len() > ABSTRACT_NAME_LEN {
            return None;
        }
        let mut key = Self {
            session,
            len: name.len() as u32,
            name: [0; ABSTRACT_NAME_BUF],
        };
        key.name[..name.len()].copy_from_slice(name);
        Some(key)
    }
}

/// What the policy says about one abstract name: `(action, rule code)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetVerdict {
    pub action: u32,
    pub rule: u32,
}
const _: () = assert!(size_of::<NetVerdict>() == 8);

/// Whether an address (IPv6 form) is loopback: `127.0.0.0/8` mapped, or `::1`. Binding to
/// such an address is allowed without a rule; connecting to it is not.
#[inline(always)]
pub fn is_loopback(addr: &[u8; 16]) -> bool {
    let mapped = addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if mapped {
        return addr[12] == 127;
    }
    addr[..15].iter().all(|&b| b == 0) && addr[15] == 1
}

/// The IPv4-mapped IPv6 form of an IPv4 address (network byte order).
#[inline(always)]
pub fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(lo: u16, hi: u16, protocol: u8, action: u8, code: u32) -> NetPortRule {
        NetPortRule {
            port_lo: lo,
            port_hi: hi,
            protocol,
            action,
            _pad: 0,
            rule: code,
        }
    }

    #[test]
    fn the_first_matching_port_rule_decides() {
        let mut rules = NetRules::default();
        rules.rules[0] = rule(443, 443, PROTO_TCP, 1, 0x100);
        rules.rules[1] = rule(0, 65535, PROTO_ANY, 3, 0x101);
        rules.count = 2;
        assert_eq!(rules.decide(443, PROTO_TCP), Some((1, 0x100)));
        assert_eq!(rules.decide(443, PROTO_UDP), Some((3, 0x101)));
        assert_eq!(rules.decide(80, PROTO_TCP), Some((3, 0x101)));
        rules.count = 1;
        assert_eq!(rules.decide(80, PROTO_TCP), None);
    }

    #[test]
    fn loopback_in_both_forms() {
        assert!(is_loopback(&mapped_v4([127, 0, 0, 1])));
        assert!(is_loopback(&mapped_v4([127, 9, 8, 7])));
        assert!(!is_loopback(&mapped_v4([10, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(is_loopback(&v6));
        v6[15] = 0;
        assert!(!is_loopback(&v6), ":: is not loopback");
    }
}
