//! The network part of a policy: what a `[[network.rule]]` matches, validated.
//!
//! A network rule is a [`super::Rule`] like the filesystem ones (one name space, one index
//! space for events) whose [`NetMatch`] says which destinations it speaks for. Its unix
//! socket paths are ordinary path entries of access [`super::Access::Connect`], resolved and
//! walked like files; everything else here is compiled into the kernel's address tables by
//! [`super::net_compile`].
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_guard_common::{ABSTRACT_NAME_LEN, PROTO_TCP, PROTO_UDP};

/// Longest hostname (RFC 1035, without the trailing dot).
const MAX_HOSTNAME: usize = 253;

/// The transport protocol a rule is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The `IPPROTO_*` number the kernel side compares.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: Self = Self {
        lo: 0,
        hi: u16::MAX,
    };

    /// `"443"` or `"8000-8100"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |t: &str| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{t}` is not a port number (0 to 65535)"))
        };
        match text.split_once('-') {
            None => port(text).map(|p| Self { lo: p, hi: p }),
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("the range `{text}` runs backwards"));
                }
                Ok(Self { lo, hi })
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// An address block. IPv4 blocks are kept as written and turned into their IPv4-mapped
/// IPv6 form only when compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `192.0.2.0/24`, `2001:db8::/32`, or a single address. Bits set beyond the prefix
    /// are an error: `192.0.2.1/24` is more likely a typo than a block.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{addr_text}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length from 0 to {max}"))?,
        };
        let cidr = Self { addr, prefix };
        let (bytes, bits) = cidr.v6_form();
        if mask(bytes, bits) != bytes {
            return Err(format!("`{text}` has bits set beyond its /{prefix} prefix"));
        }
        Ok(cidr)
    }

    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The block in the kernel's address space: IPv6 bytes and a prefix of up to 128 bits,
    /// IPv4 as IPv4-mapped (`::ffff:0:0/96` plus the IPv4 prefix).
    pub fn v6_form(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + self.prefix),
            IpAddr::V6(v6) => (v6.octets(), self.prefix),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// `bytes` with every bit past the first `bits` cleared.
pub fn mask(mut bytes: [u8; 16], bits: u8) -> [u8; 16] {
    for (i, byte) in bytes.iter_mut().enumerate() {
        let start = i as u32 * 8;
        let keep = (u32::from(bits).saturating_sub(start)).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    bytes
}

/// How an address reads in events and `explain`: IPv4-mapped addresses as IPv4.
pub fn display_addr(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Validates a hostname of a `hosts` list and returns it in lowercase without a trailing
/// dot. A leading `*.` is allowed (it is looked up literally: see docs/policy.md).
pub fn parse_hostname(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.parse::<IpAddr>().is_ok() || name.parse::<Ipv4Addr>().is_ok() {
        return Err(format!("`{text}` is an address, not a hostname"));
    }
    if name.is_empty() || name.len() > MAX_HOSTNAME {
        return Err(format!(
            "`{text}` is not a hostname (1 to {MAX_HOSTNAME} characters)"
        ));
    }
    for (i, label) in name.split('.').enumerate() {
        let ok = (label == "*" && i == 0)
            || (!label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-'));
        if !ok {
            return Err(format!(
                "`{text}` is not a hostname: the label `{label}` is not letters, digits and `-` (1 to 63 of them), and `*` may only stand first"
            ));
        }
    }
    if !name.contains('.') {
        return Err(format!(
            "`{text}` is a single label; write the full name (`{text}.example.com`)"
        ));
    }
    Ok(name)
}

/// Validates an abstract unix socket name written `@name`, returning the name's bytes.
pub fn parse_abstract(text: &str) -> Result<Vec<u8>, String> {
    let name = text.strip_prefix('@').unwrap_or(text).as_bytes();
    if name.is_empty() || name.len() > ABSTRACT_NAME_LEN {
        return Err(format!(
            "`{text}` is not an abstract socket name (1 to {ABSTRACT_NAME_LEN} bytes after `@`)"
        ));
    }
    Ok(name.to_vec())
}

/// What a network rule matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetMatch {
    /// Hostnames, lowercase; their addresses are looked up when the session starts and
    /// again as their DNS TTLs run out.
    pub hosts: Vec<String>,
    pub addresses: Vec<Cidr>,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    /// `None`: TCP, UDP and every other protocol.
    pub protocol: Option<Protocol>,
    /// Abstract unix socket names (without the leading NUL).
    pub abstract_names: Vec<Vec<u8>>,
    /// The generated rule that admits the nameservers of /etc/resolv.conf.
    pub system_resolvers: bool,
}

impl NetMatch {
    /// The port ranges, every port when none is given.
    pub fn port_ranges(&self) -> Vec<PortRange> {
        if self.ports.is_empty() {
            vec![PortRange::ALL]
        } else {
            self.ports.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_map_ipv4_into_ipv6() {
        let c = Cidr::parse("192.0.2.0/24").unwrap();
        let (bytes, bits) = c.v6_form();
        assert_eq!(bits, 120);
        assert_eq!(&bytes[10..], &[0xff, 0xff, 192, 0, 2, 0]);
        assert_eq!(Cidr::parse("2001:db8::/32").unwrap().v6_form().1, 32);
        assert_eq!(Cidr::parse("::1").unwrap().prefix, 128);
        assert!(Cidr::parse("192.0.2.1/24").unwrap_err().contains("beyond"));
        assert!(Cidr::parse("192.0.2.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn masks_clear_bits_past_the_prefix() {
        let all = [0xffu8; 16];
        let m = mask(all, 12);
        assert_eq!(&m[..3], &[0xff, 0xf0, 0]);
        assert_eq!(mask(all, 0), [0; 16]);
        assert_eq!(mask(all, 128), all);
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(
            PortRange::parse("443").unwrap(),
            PortRange { lo: 443, hi: 443 }
        );
        assert_eq!(
            PortRange::parse("8000-8100").unwrap(),
            PortRange { lo: 8000, hi: 8100 }
        );
        assert!(PortRange::parse("9-1").is_err());
        assert!(PortRange::parse("70000").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            parse_hostname("Git.Example.COM.").unwrap(),
            "git.example.com"
        );
        assert_eq!(
            parse_hostname("*.pkg.example.org").unwrap(),
            "*.pkg.example.org"
        );
        assert!(parse_hostname("a.*.example.org").is_err());
        assert!(parse_hostname("192.0.2.1").is_err());
        assert!(parse_hostname("localhost").is_err());
        assert!(parse_hostname("bad_-.example.com").is_err());
    }

    #[test]
    fn mapped_addresses_display_as_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(display_addr(Cidr::host(v4).v6_form().0), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(display_addr(Cidr::host(v6).v6_form().0), v6);
    }
}
