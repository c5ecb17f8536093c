//! Hostname resolution for the `hosts` of network rules.
//!
//! A rule such as `hosts = ["git.example.com"]` is enforced in the kernel on addresses, so the
//! names are resolved here at session start, and again whenever the shortest TTL of the answer
//! runs out ([`Resolution::refresh_after`]). This is a small stub resolver: it asks the
//! nameservers of `/etc/resolv.conf` ([`system_nameservers`]) over UDP port 53 (TCP when a
//! reply is truncated) for the A and AAAA records of one name, follows the CNAME chain inside
//! the answer and keeps each address with the TTL it may be trusted for. It does not cache,
//! search domains or read `/etc/hosts`: policy names are absolute, and a name the policy
//! author wrote must mean what the DNS says it means.
//!
//! What resolving a name cannot promise:
//! - **An address is not a name.** Addresses of CDNs, cloud load balancers and virtual hosts
//!   are shared by many sites, so allowing `git.example.com` allows every site that answers
//!   on the same addresses; denying it denies them all.
//! - **The agent may see other answers.** Round-robin and geo DNS hand out different address
//!   sets per query and per resolver; an address the agent got that this resolver did not see
//!   is not covered by the rule until a refresh happens to return it.
//! - **Wildcard names are resolved literally.** `*.pkg.example.org` is sent as the name it is
//!   (the label `*` is a legal label), which yields the zone's wildcard record if it has one.
//!   Subdomains that have records of their own (`a.pkg.example.org` with its own A record) are
//!   not found that way: the DNS cannot list the names under a domain.
//! - **The answer is as trustworthy as the path to the nameserver.** There is no DNSSEC
//!   validation; replies are only checked to come from the server asked, with the random
//!   query id and the question that was sent.
use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::{TcpStream, UdpSocket};

/// Where the system's nameservers are configured.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The port nameservers listen on, for UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// How long "no addresses" is believed when the reply carries no SOA record to say so.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// [`Resolution::refresh_after`] never asks again sooner than this: a TTL of 0 must not turn
/// into a query loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// [`Resolution::refresh_after`] never waits longer than this, so a changed record with a
/// day-long TTL is still picked up within the hour.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The longest CNAME chain followed inside one answer; a longer one (or a CNAME loop) is
/// reported as [`DnsError::Malformed`] instead of being cut short into a partial answer.
pub const MAX_CNAME_CHAIN: usize = 8;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_MASK: u16 = 0x000f;

/// RFC 1035 limits: a label is 1..=63 bytes, a name on the wire at most 255 bytes, which is
/// 253 characters of text without the trailing dot.
const MAX_LABEL_LEN: usize = 63;
const MAX_NAME_TEXT_LEN: usize = 253;
const MAX_NAME_WIRE_LEN: usize = 255;
/// Pointers must point backwards, which already rules out loops; this is the plain bound on
/// top of it.
const MAX_COMPRESSION_POINTERS: usize = 64;
/// The largest UDP payload; servers that ignore the 512-byte limit of a query without EDNS
/// must not have their replies cut by our buffer.
const MAX_UDP_REPLY: usize = 65_535;
/// getrandom never returns short for 2 bytes; retries are for EINTR only.
const GETRANDOM_ATTEMPTS: usize = 8;

/// The addresses a name resolved to, and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Every A and AAAA address of the name (or of a CNAME target reached from it), each with
    /// its TTL: the smallest TTL along the CNAME chain that led to it. Each address appears
    /// once.
    pub addresses: Vec<(IpAddr, Duration)>,
    /// When `addresses` is empty (NXDOMAIN, or a name without A and AAAA records): how long
    /// that answer holds, from the SOA record of the reply (RFC 2308: the smaller of its TTL
    /// and its MINIMUM field), else [`DEFAULT_NEGATIVE_TTL`]. `None` when there are addresses.
    pub negative_ttl: Option<Duration>,
}

impl Resolution {
    /// When to resolve the name again: the smallest TTL among the addresses (or the negative
    /// TTL when there are none), kept within [`MIN_REFRESH`]..=[`MAX_REFRESH`].
    pub fn refresh_after(&self) -> Duration {
        self.addresses
            .iter()
            .map(|&(_, ttl)| ttl)
            .min()
            .or(self.negative_ttl)
            .unwrap_or(DEFAULT_NEGATIVE_TTL)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }
}

/// A DNS response code (RFC 1035 §4.1.1, RFC 6895), shown with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rcode(pub u8);

impl Rcode {
    pub const NOERROR: Self = Self(0);
    pub const FORMERR: Self = Self(1);
    pub const SERVFAIL: Self = Self(2);
    pub const NXDOMAIN: Self = Self(3);
    pub const NOTIMP: Self = Self(4);
    pub const REFUSED: Self = Self(5);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NOERROR => "NOERROR",
            Self::FORMERR => "FORMERR",
            Self::SERVFAIL => "SERVFAIL",
            Self::NXDOMAIN => "NXDOMAIN",
            Self::NOTIMP => "NOTIMP",
            Self::REFUSED => "REFUSED",
            _ => return None,
        })
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (rcode {})", self.0),
            None => write!(f, "rcode {}", self.0),
        }
    }
}

/// Everything that can go wrong finding a name's addresses.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name cannot be sent as a DNS query; it is rejected before anything is sent.
    #[error("`{name}` is not a valid hostname: {reason}")]
    InvalidName { name: String, reason: String },
    /// `path` could not be read; an empty file is not this error.
    #[error("cannot read nameservers from {}", .path.display())]
    ReadResolvConf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no nameservers to ask")]
    NoServers,
    /// A socket operation failed (including an ICMP "port unreachable" reported on the UDP
    /// socket, and the random query id that could not be drawn).
    #[error("cannot exchange DNS messages with nameserver {server}")]
    Io {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// None of the `servers` asked gave a usable answer in time.
    #[error("no answer for `{name}` from {servers} nameserver(s) before the timeout")]
    Timeout { name: String, servers: usize },
    /// The server answered, but with an error code (SERVFAIL, REFUSED, ...), not an answer.
    #[error("nameserver {server} answered {rcode} for `{name}`")]
    ServerFailure {
        name: String,
        server: SocketAddr,
        rcode: Rcode,
    },
    /// A reply with our id and question that cannot be read (truncated records, compression
    /// pointer loops, a CNAME chain past [`MAX_CNAME_CHAIN`], ...).
    #[error("nameserver {server} sent a malformed reply: {reason}")]
    Malformed { server: SocketAddr, reason: String },
}

/// The nameservers listed in resolv.conf `text`, in order and without duplicates.
///
/// Lines other than `nameserver ADDRESS` are ignored, and so are comments (`#` or `;`) and
/// addresses that do not parse. An IPv6 `%scope` suffix is dropped: the address is still the
/// server's, but a link-local server cannot be queried without its interface. glibc and musl
/// consult only the first three; all are returned, since allowing a fourth server to be asked
/// is harmless.
pub fn nameservers_from(text: &str) -> Vec<IpAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(address) = words.next() else {
            continue;
        };
        let address = address.split('%').next().unwrap_or_default();
        if let Ok(ip) = address.parse::<IpAddr>() {
            if !servers.contains(&ip) {
                servers.push(ip);
            }
        }
    }
    servers
}

/// The nameservers of [`RESOLV_CONF`]. An empty list is not an error here: whether a policy
/// needs a nameserver is for the caller to decide ([`resolve`] says [`DnsError::NoServers`]).
pub fn system_nameservers() -> Result<Vec<IpAddr>, DnsError> {
    nameservers_in(Path::new(RESOLV_CONF))
}

fn nameservers_in(path: &Path) -> Result<Vec<IpAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
        path: path.to_owned(),
        source,
    })?;
    Ok(nameservers_from(&text))
}

/// Resolves `name` to its A and AAAA addresses by asking `servers` on port 53.
/// See [`resolve_at`].
pub async fn resolve(
    name: &str,
    servers: &[IpAddr],
    timeout: Duration,
) -> Result<Resolution, DnsError> {
    let servers: Vec<SocketAddr> = servers
        .iter()
        .map(|&ip| SocketAddr::new(ip, DNS_PORT))
        .collect();
    resolve_at(name, &servers, timeout).await
}

/// Resolves `name` to its A and AAAA addresses by asking `servers`, in order.
///
/// The A and AAAA queries go to a server together; each gets `timeout` for its UDP exchange,
/// and again for a TCP retry when the UDP reply was truncated. A query that times out, fails
/// or gets SERVFAIL/REFUSED (or any rcode but NOERROR and NXDOMAIN) moves on to the next
/// server. An NXDOMAIN or an answer without addresses is an answer: it is not asked again.
///
/// Either both queries are answered or the call fails: a half answer (A but no AAAA because
/// the AAAA query timed out) would look final and be kept until the next refresh. On failure
/// the error is the last one a server gave, or [`DnsError::Timeout`] when no server answered.
pub async fn resolve_at(
    name: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Resolution, DnsError> {
    let wire_name = encode_name(name)?;
    if servers.is_empty() {
        return Err(DnsError::NoServers);
    }
    let queries = [
        Query::new(name, &wire_name, TYPE_A),
        Query::new(name, &wire_name, TYPE_AAAA),
    ];
    let mut answers: [Option<Answer>; 2] = [None, None];
    let mut last_error = None;
    for &server in servers {
        let (a, aaaa) = tokio::join!(
            ask_unless_answered(&answers[0], &queries[0], server, timeout),
            ask_unless_answered(&answers[1], &queries[1], server, timeout),
        );
        for (slot, outcome) in answers.iter_mut().zip([a, aaaa]) {
            match outcome {
                None | Some(Err(Failure::TimedOut)) => {}
                Some(Ok(answer)) => *slot = Some(answer),
                Some(Err(Failure::Error(error))) => last_error = Some(error),
            }
        }
        if answers.iter().all(Option::is_some) {
            break;
        }
    }
    match answers {
        [Some(a), Some(aaaa)] => Ok(Resolution::from_answers(a, aaaa)),
        _ => Err(last_error.unwrap_or_else(|| DnsError::Timeout {
            name: name.to_owned(),
            servers: servers.len(),
        })),
    }
}

impl Resolution {
    fn from_answers(a: Answer, aaaa: Answer) -> Self {
        let mut addresses: Vec<(IpAddr, Duration)> = Vec::new();
        for (ip, ttl) in a.addresses.iter().chain(&aaaa.addresses) {
            let ttl = Duration::from_secs(u64::from(*ttl));
            match addresses.iter_mut().find(|(known, _)| known == ip) {
                // The same address twice (through two CNAME paths): the shorter TTL is the
                // one that may run out.
                Some((_, known_ttl)) => *known_ttl = (*known_ttl).min(ttl),
                None => addresses.push((*ip, ttl)),
            }
        }
        let negative_ttl = addresses
            .is_empty()
            .then(|| Duration::from_secs(u64::from(a.negative_ttl.min(aaaa.negative_ttl))));
        Self {
            addresses,
            negative_ttl,
        }
    }
}

/// Why one query to one server gave no answer. A timeout is kept apart so that it does not
/// hide a more telling error from another server.
enum Failure {
    TimedOut,
    Error(DnsError),
}

/// One server's answer to one query: addresses with TTLs in seconds, and (used only when
/// there are none) how long their absence holds, in seconds.
#[derive(Debug)]
struct Answer {
    addresses: Vec<(IpAddr, u32)>,
    negative_ttl: u32,
}

async fn ask_unless_answered(
    answered: &Option<Answer>,
    query: &Query<'_>,
    server: SocketAddr,
    timeout: Duration,
) -> Option<Result<Answer, Failure>> {
    if answered.is_some() {
        return None;
    }
    Some(ask(query, server, timeout).await)
}

async fn ask(query: &Query<'_>, server: SocketAddr, timeout: Duration) -> Result<Answer, Failure> {
    let mut reply = tokio::time::timeout(timeout, exchange_udp(query, server))
        .await
        .map_err(|_| Failure::TimedOut)?
        .map_err(Failure::Error)?;
    if header_flags(&reply) & FLAG_TC != 0 {
        // The answer did not fit a UDP datagram; whatever part of it arrived may end in the
        // middle of a record, so none of it is used.
        reply = tokio::time::timeout(timeout, exchange_tcp(query, server))
            .await
            .map_err(|_| Failure::TimedOut)?
            .map_err(Failure::Error)?;
    }
    interpret(query, &reply, server).map_err(Failure::Error)
}

/// One question: `name` (as the caller wrote it) with record type `qtype`, class IN.
struct Query<'a> {
    name: &'a str,
    /// The name in wire format, in the caller's case: some servers answer in the case asked.
    wire_name: &'a [u8],
    /// The same, lowercased, for comparing with names in replies.
    folded_name: Vec<u8>,
    qtype: u16,
}

impl<'a> Query<'a> {
    fn new(name: &'a str, wire_name: &'a [u8], qtype: u16) -> Self {
        Self {
            name,
            wire_name,
            folded_name: wire_name.to_ascii_lowercase(),
            qtype,
        }
    }

    /// The query message with `id`: one question, recursion desired, no EDNS (a reply that
    /// does not fit 512 bytes comes truncated and is fetched again over TCP).
    fn message(&self, id: u16) -> Vec<u8> {
        let mut message = Vec::with_capacity(HEADER_LEN + self.wire_name.len() + 4);
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&FLAG_RD.to_be_bytes());
        // QDCOUNT 1, ANCOUNT, NSCOUNT, ARCOUNT 0.
        message.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        message.extend_from_slice(self.wire_name);
        message.extend_from_slice(&self.qtype.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        message
    }

    /// Whether `reply` answers this query sent with `id`. Replies that belong to something
    /// else (another id, another question, not a response) are `Ok(false)`, to be ignored:
    /// they may be late answers to an earlier query or forgeries. A reply with our id whose
    /// question cannot be read is an error.
    fn is_answered_by(&self, reply: &[u8], id: u16) -> Result<bool, String> {
        let Some(header) = reply.get(..HEADER_LEN) else {
            return Ok(false);
        };
        let flags = header_flags(reply);
        if be16(header, 0) != Some(id) || flags & FLAG_QR == 0 || flags & OPCODE_MASK != 0 {
            return Ok(false);
        }
        if be16(header, 4) != Some(1) {
            return Err("the reply does not repeat the question".to_owned());
        }
        let (name, end) = read_name(reply, HEADER_LEN)?;
        let (Some(qtype), Some(qclass)) = (be16(reply, end), be16(reply, end + 2)) else {
            return Err("the question section ends early".to_owned());
        };
        Ok(name == self.folded_name && qtype == self.qtype && qclass == CLASS_IN)
    }
}

async fn exchange_udp(query: &Query<'_>, server: SocketAddr) -> Result<Vec<u8>, DnsError> {
    let io_error = |source| DnsError::Io { server, source };
    let id = random_id().map_err(io_error)?;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io_error)?;
    // Connected, so that the kernel drops datagrams from anyone else and reports an ICMP
    // "port unreachable" as an error instead of letting us wait for the timeout.
    socket.connect(server).await.map_err(io_error)?;
    socket.send(&query.message(id)).await.map_err(io_error)?;
    let mut buffer = vec![0; MAX_UDP_REPLY];
    loop {
        let (len, from) = socket.recv_from(&mut buffer).await.map_err(io_error)?;
        // The connected socket already filters by source; checked again so that the
        // guarantee does not rest on socket options alone.
        if from.ip() != server.ip() || from.port() != server.port() {
            continue;
        }
        let reply = &buffer[..len];
        if query
            .is_answered_by(reply, id)
            .map_err(|reason| DnsError::Malformed { server, reason })?
        {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}

/// The query over TCP (RFC 1035 §4.2.2: each message preceded by its 2-byte length). There is
/// one query per connection, so a reply that does not match it is a broken server, not a
/// stray datagram.
async fn exchange_tcp(query: &Query<'_>, server: SocketAddr) -> Result<Vec<u8>, DnsError> {
    let io_error = |source| DnsError::Io { server, source };
    let id = random_id().map_err(io_error)?;
    let message = query.message(id);
    let mut framed = Vec::with_capacity(message.len() + 2);
    // A query is at most 12 + 255 + 4 bytes: its length always fits.
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(&message);

    let stream = TcpStream::connect(server).await.map_err(io_error)?;
    write_all(&stream, &framed).await.map_err(io_error)?;
    let mut len = [0; 2];
    read_exact(&stream, &mut len).await.map_err(io_error)?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    read_exact(&stream, &mut reply).await.map_err(io_error)?;
    let malformed = |reason| DnsError::Malformed { server, reason };
    if query.is_answered_by(&reply, id).map_err(malformed)? {
        Ok(reply)
    } else {
        Err(malformed(
            "the TCP reply does not answer the query sent".to_owned(),
        ))
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

async fn read_exact(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        stream.readable().await?;
        match stream.try_read(&mut buffer[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the nameserver closed the connection before the whole reply",
                ))
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A random query id: with the kernel's random source port it is what stops an off-path
/// attacker from answering in the server's place.
fn random_id() -> io::Result<u16> {
    let mut bytes = [0_u8; 2];
    for _ in 0..GETRANDOM_ATTEMPTS {
        // SAFETY: `bytes` is a live, writable buffer of `bytes.len()` bytes for the whole
        // call, and getrandom(2) writes at most that many bytes into it.
        let read = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if read == 2 {
            return Ok(u16::from_ne_bytes(bytes));
        }
        if read < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        "getrandom kept being interrupted",
    ))
}

/// Reads the answer out of a reply that [`Query::is_answered_by`] accepted.
fn interpret(query: &Query<'_>, reply: &[u8], server: SocketAddr) -> Result<Answer, DnsError> {
    let malformed = |reason| DnsError::Malformed { server, reason };
    let rcode = Rcode((header_flags(reply) & RCODE_MASK) as u8);
    if rcode != Rcode::NOERROR && rcode != Rcode::NXDOMAIN {
        return Err(DnsError::ServerFailure {
            name: query.name.to_owned(),
            server,
            rcode,
        });
    }
    let count = |offset| be16(reply, offset).map_or(0, usize::from);
    let (answer_count, authority_count) = (count(6), count(8));
    // The question was read by `is_answered_by`; skip its name, type and class.
    let (_, mut offset) = read_name(reply, HEADER_LEN).map_err(malformed)?;
    offset += 4;
    let mut answers = Vec::with_capacity(answer_count.min(64));
    for _ in 0..answer_count {
        let (record, next) = read_record(reply, offset).map_err(malformed)?;
        answers.push(record);
        offset = next;
    }
    let addresses = follow_chain(&answers, &query.folded_name, query.qtype).map_err(malformed)?;
    if !addresses.is_empty() {
        return Ok(Answer {
            addresses,
            negative_ttl: 0,
        });
    }
    let mut negative_ttl = None;
    for _ in 0..authority_count {
        let (record, next) = read_record(reply, offset).map_err(malformed)?;
        if let (None, RecordData::Soa { minimum }) = (negative_ttl, &record.data) {
            // RFC 2308 §5: a negative answer is cached for the smaller of the SOA's own TTL
            // and its MINIMUM field.
            negative_ttl = Some(record.ttl.min(sane_ttl(*minimum)));
        }
        offset = next;
    }
    Ok(Answer {
        addresses,
        negative_ttl: negative_ttl.unwrap_or(DEFAULT_NEGATIVE_TTL.as_secs() as u32),
    })
}

/// The addresses of type `qtype` owned by `name` or by a CNAME target reached from it, each
/// with the smallest TTL on its way (a CNAME that expires takes its target's addresses with
/// it).
fn follow_chain(records: &[Record], name: &[u8], qtype: u16) -> Result<Vec<(IpAddr, u32)>, String> {
    let mut owner = name;
    let mut chain_ttl = u32::MAX;
    let mut addresses = Vec::new();
    for _ in 0..=MAX_CNAME_CHAIN {
        for record in records
            .iter()
            .filter(|r| r.owner == owner && r.rtype == qtype)
        {
            if let RecordData::Address(ip) = record.data {
                addresses.push((ip, record.ttl.min(chain_ttl)));
            }
        }
        let target = records.iter().find_map(|record| match &record.data {
            RecordData::Cname(target) if record.owner == owner => Some((target, record.ttl)),
            _ => None,
        });
        let Some((target, ttl)) = target else {
            return Ok(addresses);
        };
        owner = target.as_slice();
        chain_ttl = chain_ttl.min(ttl);
    }
    Err(format!(
        "the CNAME chain is longer than {MAX_CNAME_CHAIN} links (or loops)"
    ))
}

/// One resource record of class IN; records of other classes are read past and kept as
/// [`RecordData::Other`] so that they never match.
struct Record {
    /// Lowercased wire-format name.
    owner: Vec<u8>,
    rtype: u16,
    ttl: u32,
    data: RecordData,
}

enum RecordData {
    Address(IpAddr),
    /// Lowercased wire-format target name.
    Cname(Vec<u8>),
    Soa {
        minimum: u32,
    },
    Other,
}

fn read_record(message: &[u8], offset: usize) -> Result<(Record, usize), String> {
    let (owner, offset) = read_name(message, offset)?;
    let fixed = message
        .get(offset..offset + 10)
        .ok_or("a resource record ends early")?;
    let field = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
    let (rtype, class) = (field(0), field(2));
    let ttl = sane_ttl(u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]));
    let rdata_start = offset + 10;
    let rdata_end = rdata_start + usize::from(field(8));
    let rdata = message
        .get(rdata_start..rdata_end)
        .ok_or("a record's data runs past the end of the message")?;
    let data = match (class, rtype) {
        (CLASS_IN, TYPE_A) => {
            let octets: [u8; 4] = rdata
                .try_into()
                .map_err(|_| format!("an A record has {} bytes of data, not 4", rdata.len()))?;
            RecordData::Address(IpAddr::from(octets))
        }
        (CLASS_IN, TYPE_AAAA) => {
            let octets: [u8; 16] = rdata
                .try_into()
                .map_err(|_| format!("an AAAA record has {} bytes of data, not 16", rdata.len()))?;
            RecordData::Address(IpAddr::from(octets))
        }
        (CLASS_IN, TYPE_CNAME) => RecordData::Cname(read_name(message, rdata_start)?.0),
        (CLASS_IN, TYPE_SOA) => {
            let (_, after_mname) = read_name(message, rdata_start)?;
            let (_, after_rname) = read_name(message, after_mname)?;
            // SERIAL, REFRESH, RETRY, EXPIRE, then MINIMUM.
            let minimum = message
                .get(after_rname + 16..after_rname + 20)
                .filter(|_| after_rname + 20 <= rdata_end)
                .ok_or("an SOA record ends early")?;
            RecordData::Soa {
                minimum: u32::from_be_bytes([minimum[0], minimum[1], minimum[2], minimum[3]]),
            }
        }
        _ => RecordData::Other,
    };
    Ok((
        Record {
            owner,
            rtype,
            ttl,
            data,
        },
        rdata_end,
    ))
}

/// RFC 2181 §8: a TTL with the top bit set is to be taken as 0.
fn sane_ttl(ttl: u32) -> u32 {
    if ttl > i32::MAX as u32 {
        0
    } else {
        ttl
    }
}

/// The name at `start` of `message`, lowercased, in wire format without compression, and
/// the offset just past it in the original stream.
///
/// A compression pointer must point before the labels that contain it (RFC 1035 §4.1.4: "a
/// prior occurrence"), so every jump goes strictly backwards and no pointer chain can loop.
fn read_name(message: &[u8], start: usize) -> Result<(Vec<u8>, usize), String> {
    let mut name = Vec::new();
    let mut position = start;
    // Where the current run of labels began; a pointer must go before it.
    let mut run_start = start;
    let mut end = None;
    let mut pointers = 0;
    loop {
        let &len = message
            .get(position)
            .ok_or("a name runs past the end of the message")?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                name.push(0);
                return Ok((name, end.unwrap_or(position + 1)));
            }
            0x00 => {
                let label = message
                    .get(position + 1..position + 1 + usize::from(len))
                    .ok_or("a label runs past the end of the message")?;
                if name.len() + 1 + label.len() + 1 > MAX_NAME_WIRE_LEN {
                    return Err(format!("a name is longer than {MAX_NAME_WIRE_LEN} bytes"));
                }
                name.push(len);
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                position += 1 + usize::from(len);
            }
            0xc0 => {
                let &low = message
                    .get(position + 1)
                    .ok_or("a compression pointer runs past the end of the message")?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                pointers += 1;
                if target >= run_start || pointers > MAX_COMPRESSION_POINTERS {
                    return Err(format!(
                        "the compression pointer at offset {position} to offset {target} \
                         does not point to an earlier name (a pointer loop)"
                    ));
                }
                end.get_or_insert(position + 2);
                position = target;
                run_start = target;
            }
            _ => return Err(format!("unsupported label type {len:#04x} in a name")),
        }
    }
}

/// `name` in wire format, after checking that it is a hostname that can be queried: labels of
/// 1 to 63 bytes made of letters, digits, `-` and `_`, or the single label `*` (queried
/// literally), at most 253 characters, optionally with a trailing dot.
fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let text = name.strip_suffix('.').unwrap_or(name);
    if text.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if text.len() > MAX_NAME_TEXT_LEN {
        return Err(invalid(format!(
            "it is {} characters long; the limit is {MAX_NAME_TEXT_LEN}",
            text.len()
        )));
    }
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in text.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "it has an empty label (two dots in a row, or a leading dot)".to_owned(),
            ));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid(format!(
                "the label `{label}` is {} bytes long; the limit is {MAX_LABEL_LEN}",
                label.len()
            )));
        }
        if let Some(bad) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|_| label != "*")
        {
            let reason = if bad == '*' {
                format!("`*` must be a whole label (as in `*.example.org`), not part of `{label}`")
            } else if !bad.is_ascii() {
                format!("`{bad}` is not ASCII; write internationalized names in their `xn--` form")
            } else {
                format!("`{}` cannot appear in a hostname", bad.escape_default())
            };
            return Err(invalid(reason));
        }
        // `label.len()` is at most 63, checked above.
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    Ok(wire)
}

fn be16(bytes: &[u8], offset: usize) -> Option<u16> {
    let pair = bytes.get(offset..offset + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

fn header_flags(message: &[u8]) -> u16 {
    be16(message, 2).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use tokio::net::TcpListener;

    use super::*;

    /// Short, so that the timeout tests stay fast; loopback answers take microseconds.
    const TIMEOUT: Duration = Duration::from_millis(200);
    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// A compression pointer to the question's name, which starts right after the header.
    const TO_QUESTION: [u8; 2] = [0xc0, 0x0c];
    const FLAG_RA: u16 = 0x0080;

    /// A query as the test server received it.
    #[derive(Debug, Clone)]
    struct Seen {
        id: u16,
        flags: u16,
        /// The name as sent (case preserved), without a trailing dot.
        name: String,
        qtype: u16,
        /// The question section, to echo in replies.
        question: Vec<u8>,
    }

    fn parse_query(message: &[u8]) -> Seen {
        assert!(
            message.len() > HEADER_LEN,
            "a query is longer than a header"
        );
        assert_eq!(
            message[4..12],
            [0, 1, 0, 0, 0, 0, 0, 0],
            "a query has exactly one question"
        );
        let mut labels = Vec::new();
        let mut position = HEADER_LEN;
        while message[position] != 0 {
            let len = usize::from(message[position]);
            let label = &message[position + 1..position + 1 + len];
            labels.push(String::from_utf8(label.to_vec()).expect("query labels are ASCII"));
            position += 1 + len;
        }
        let qtype = u16::from_be_bytes([message[position + 1], message[position + 2]]);
        let qclass = u16::from_be_bytes([message[position + 3], message[position + 4]]);
        assert_eq!(qclass, CLASS_IN, "queries are for class IN");
        Seen {
            id: u16::from_be_bytes([message[0], message[1]]),
            flags: u16::from_be_bytes([message[2], message[3]]),
            name: labels.join("."),
            qtype,
            question: message[HEADER_LEN..position + 5].to_vec(),
        }
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for label in name.split('.').filter(|label| !label.is_empty()) {
            wire.push(u8::try_from(label.len()).expect("short test label"));
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }

    fn record(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut record = owner.to_vec();
        record.extend_from_slice(&rtype.to_be_bytes());
        record.extend_from_slice(&CLASS_IN.to_be_bytes());
        record.extend_from_slice(&ttl.to_be_bytes());
        let len = u16::try_from(rdata.len()).expect("short test rdata");
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(rdata);
        record
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Vec<u8> {
        let ip: Ipv4Addr = ip.parse().expect("test IPv4 address");
        record(&wire(owner), TYPE_A, ttl, &ip.octets())
    }

    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Vec<u8> {
        let ip: Ipv6Addr = ip.parse().expect("test IPv6 address");
        record(&wire(owner), TYPE_AAAA, ttl, &ip.octets())
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Vec<u8> {
        record(&wire(owner), TYPE_CNAME, ttl, &wire(target))
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Vec<u8> {
        let mut rdata = wire(&format!("ns1.{zone}"));
        rdata.extend(wire(&format!("hostmaster.{zone}")));
        // SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM.
        for field in [1, 7200, 900, 1_209_600, minimum] {
            rdata.extend_from_slice(&u32::to_be_bytes(field));
        }
        record(&wire(zone), TYPE_SOA, ttl, &rdata)
    }

    /// A reply message with the given header fields and the question section `question`.
    fn message(
        id: u16,
        flags: u16,
        question: &[u8],
        answers: &[Vec<u8>],
        authority: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(&flags.to_be_bytes());
        for count in [1, answers.len(), authority.len(), 0] {
            let count = u16::try_from(count).expect("few test records");
            message.extend_from_slice(&count.to_be_bytes());
        }
        message.extend_from_slice(question);
        for record in answers.iter().chain(authority) {
            message.extend_from_slice(record);
        }
        message
    }

    /// A regular reply to `query` with response code `rcode`.
    fn reply(query: &Seen, rcode: Rcode, answers: &[Vec<u8>], authority: &[Vec<u8>]) -> Vec<u8> {
        let flags = FLAG_QR | FLAG_RD | FLAG_RA | u16::from(rcode.0);
        message(query.id, flags, &query.question, answers, authority)
    }

    enum Out {
        /// Sent from the server's own socket.
        Reply(Vec<u8>),
        /// Sent from another port of the same address: a forgery.
        FromOtherPort(Vec<u8>),
    }

    /// A DNS server on a loopback port that answers with whatever its handler says and
    /// remembers what it was asked. It lives as long as the test's runtime.
    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        seen_tcp: Arc<Mutex<Vec<Seen>>>,
    }

    impl Server {
        async fn udp(ip: IpAddr, answer: impl Fn(&Seen) -> Vec<Out> + Send + 'static) -> Self {
            let socket = UdpSocket::bind((ip, 0))
                .await
                .unwrap_or_else(|error| panic!("cannot bind a test DNS server on {ip}: {error}"));
            Self::serve(socket, None, answer, |_| Vec::new())
        }

        /// UDP and TCP on the same port, as a real server has them.
        async fn udp_and_tcp(
            ip: IpAddr,
            udp_answer: impl Fn(&Seen) -> Vec<Out> + Send + 'static,
            tcp_answer: impl Fn(&Seen) -> Vec<u8> + Send + 'static,
        ) -> Self {
            // The UDP port the kernel picks may be taken for TCP; try a few.
            for _ in 0..20 {
                let socket = UdpSocket::bind((ip, 0))
                    .await
                    .expect("bind a UDP test server");
                let port = socket.local_addr().expect("UDP test server address").port();
                if let Ok(listener) = TcpListener::bind((ip, port)).await {
                    return Self::serve(socket, Some(listener), udp_answer, tcp_answer);
                }
            }
            panic!("found no port free for both UDP and TCP on {ip}");
        }

        fn serve(
            socket: UdpSocket,
            listener: Option<TcpListener>,
            udp_answer: impl Fn(&Seen) -> Vec<Out> + Send + 'static,
            tcp_answer: impl Fn(&Seen) -> Vec<u8> + Send + 'static,
        ) -> Self {
            let addr = socket.local_addr().expect("test server address");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let seen_tcp = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            tokio::spawn(async move {
                let other = UdpSocket::bind((addr.ip(), 0))
                    .await
                    .expect("bind a forger");
                let mut buffer = vec![0; 1024];
                while let Ok((len, client)) = socket.recv_from(&mut buffer).await {
                    let query = parse_query(&buffer[..len]);
                    log.lock().expect("query log").push(query.clone());
                    for out in udp_answer(&query) {
                        let sent = match out {
                            Out::Reply(bytes) => socket.send_to(&bytes, client).await,
                            Out::FromOtherPort(bytes) => other.send_to(&bytes, client).await,
                        };
                        sent.expect("test server sends its reply");
                    }
                }
            });
            if let Some(listener) = listener {
                let log = Arc::clone(&seen_tcp);
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let mut len = [0; 2];
                        read_exact(&stream, &mut len).await.expect("query length");
                        let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
                        read_exact(&stream, &mut query).await.expect("query");
                        let query = parse_query(&query);
                        log.lock().expect("TCP query log").push(query.clone());
                        let reply = tcp_answer(&query);
                        let len = u16::try_from(reply.len()).expect("short test reply");
                        let mut framed = len.to_be_bytes().to_vec();
                        framed.extend(reply);
                        write_all(&stream, &framed)
                            .await
                            .expect("send the TCP reply");
                    }
                });
            }
            Self {
                addr,
                seen,
                seen_tcp,
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().expect("query log").clone()
        }

        fn seen_tcp(&self) -> Vec<Seen> {
            self.seen_tcp.lock().expect("TCP query log").clone()
        }
    }

    /// A server that receives queries and never answers.
    fn silent_server() -> (std::net::UdpSocket, SocketAddr) {
        let socket = std::net::UdpSocket::bind((LOCALHOST, 0)).expect("bind a silent server");
        let addr = socket.local_addr().expect("silent server address");
        (socket, addr)
    }

    fn sorted(resolution: &Resolution) -> Vec<(IpAddr, Duration)> {
        let mut addresses = resolution.addresses.clone();
        addresses.sort();
        addresses
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[tokio::test]
    async fn a_and_aaaa_answers_carry_their_ttls() {
        let server = Server::udp(LOCALHOST, |query| {
            let answers = match query.qtype {
                TYPE_A => vec![
                    // Owner by compression pointer, and in another case than asked.
                    record(&TO_QUESTION, TYPE_A, 300, &[192, 0, 2, 1]),
                    a("example.test", 100, "192.0.2.2"),
                    // Not the name asked: must not count, nor its TTL.
                    a("other.test", 5, "198.51.100.9"),
                ],
                _ => vec![aaaa("EXAMPLE.test", 200, "2001:db8::1")],
            };
            vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
        })
        .await;

        let resolution = resolve_at("Example.TEST.", &[server.addr], TIMEOUT)
            .await
            .expect("example.test resolves");

        assert_eq!(
            sorted(&resolution),
            [
                (ip("192.0.2.1"), secs(300)),
                (ip("192.0.2.2"), secs(100)),
                (ip("2001:db8::1"), secs(200)),
            ]
        );
        assert_eq!(resolution.negative_ttl, None);
        assert_eq!(resolution.refresh_after(), secs(100));
        let mut seen = server.seen();
        seen.sort_by_key(|query| query.qtype);
        assert_eq!(seen.len(), 2, "one A and one AAAA query: {seen:?}");
        assert_eq!((seen[0].qtype, seen[1].qtype), (TYPE_A, TYPE_AAAA));
        for query in &seen {
            assert_eq!(query.name, "Example.TEST", "the name goes out as written");
            assert_eq!(query.flags, FLAG_RD, "a plain query with recursion desired");
        }
    }

    #[tokio::test]
    async fn cname_chain_gives_each_address_the_smallest_ttl_on_its_way() {
        let server = Server::udp(LOCALHOST, |query| {
            let chain = [
                cname("www.example.test", 600, "edge.cdn.test"),
                cname("EDGE.cdn.TEST", 60, "e1.cdn.test"),
            ];
            let (answers, authority) = match query.qtype {
                TYPE_A => {
                    let mut answers = chain.to_vec();
                    answers.push(a("e1.cdn.test", 300, "192.0.2.10"));
                    answers.push(a("unrelated.cdn.test", 1, "192.0.2.99"));
                    (answers, vec![])
                }
                _ => (chain.to_vec(), vec![soa("cdn.test", 3600, 300)]),
            };
            vec![Out::Reply(reply(
                query,
                Rcode::NOERROR,
                &answers,
                &authority,
            ))]
        })
        .await;

        let resolution = resolve_at("www.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("www.example.test resolves");

        assert_eq!(resolution.addresses, [(ip("192.0.2.10"), secs(60))]);
        assert_eq!(resolution.negative_ttl, None);
        assert_eq!(resolution.refresh_after(), secs(60));
    }

    #[tokio::test]
    async fn cname_chain_past_the_limit_or_looping_is_malformed() {
        let server = Server::udp(LOCALHOST, |query| {
            let answers: Vec<Vec<u8>> = if query.name == "long.test" {
                // long.test -> c1 -> ... -> c9: nine links, one more than followed.
                let mut names = vec!["long.test".to_owned()];
                names.extend((1..=MAX_CNAME_CHAIN + 1).map(|i| format!("c{i}.test")));
                let mut answers: Vec<_> = names
                    .windows(2)
                    .map(|pair| cname(&pair[0], 60, &pair[1]))
                    .collect();
                answers.push(a(&names[names.len() - 1], 60, "192.0.2.1"));
                answers
            } else {
                vec![
                    cname("loop.test", 60, "loop2.test"),
                    cname("loop2.test", 60, "loop.test"),
                ]
            };
            vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
        })
        .await;

        for name in ["long.test", "loop.test"] {
            match resolve_at(name, &[server.addr], TIMEOUT).await {
                Err(DnsError::Malformed {
                    server: from,
                    reason,
                }) => {
                    assert_eq!(from, server.addr);
                    assert!(reason.contains("CNAME chain"), "{name}: {reason}");
                }
                other => panic!("{name}: expected a malformed CNAME chain, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn exactly_max_cname_links_are_followed() {
        let server = Server::udp(LOCALHOST, |query| {
            let mut names = vec!["eight.test".to_owned()];
            names.extend((1..=MAX_CNAME_CHAIN).map(|i| format!("c{i}.test")));
            let mut answers: Vec<_> = names
                .windows(2)
                .map(|pair| cname(&pair[0], 60, &pair[1]))
                .collect();
            if query.qtype == TYPE_A {
                answers.push(a(&names[names.len() - 1], 30, "192.0.2.8"));
            }
            vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
        })
        .await;

        let resolution = resolve_at("eight.test", &[server.addr], TIMEOUT)
            .await
            .expect("a chain of MAX_CNAME_CHAIN links resolves");
        assert_eq!(resolution.addresses, [(ip("192.0.2.8"), secs(30))]);
    }

    #[tokio::test]
    async fn nxdomain_lasts_as_long_as_the_soa_minimum() {
        let server = Server::udp(LOCALHOST, |query| {
            let authority = [soa("example.test", 900, 120)];
            vec![Out::Reply(reply(query, Rcode::NXDOMAIN, &[], &authority))]
        })
        .await;

        let resolution = resolve_at("gone.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("NXDOMAIN is an answer, not an error");

        assert!(resolution.addresses.is_empty());
        assert_eq!(resolution.negative_ttl, Some(secs(120)));
        assert_eq!(resolution.refresh_after(), secs(120));
    }

    #[tokio::test]
    async fn negative_ttl_is_the_smaller_of_soa_ttl_and_minimum_over_both_queries() {
        let server = Server::udp(LOCALHOST, |query| {
            // A: min(900, 600) = 600; AAAA: min(90, 600) = 90.
            let soa_ttl = if query.qtype == TYPE_A { 900 } else { 90 };
            let authority = [soa("example.test", soa_ttl, 600)];
            vec![Out::Reply(reply(query, Rcode::NOERROR, &[], &authority))]
        })
        .await;

        let resolution = resolve_at("empty.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("a name without addresses is an answer");
        assert!(resolution.addresses.is_empty());
        assert_eq!(resolution.negative_ttl, Some(secs(90)));
    }

    #[tokio::test]
    async fn no_addresses_without_soa_lasts_the_default() {
        let server = Server::udp(LOCALHOST, |query| {
            vec![Out::Reply(reply(query, Rcode::NOERROR, &[], &[]))]
        })
        .await;

        let resolution = resolve_at("empty.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("NOERROR without answers is an answer");
        assert!(resolution.addresses.is_empty());
        assert_eq!(resolution.negative_ttl, Some(DEFAULT_NEGATIVE_TTL));
        assert_eq!(resolution.refresh_after(), DEFAULT_NEGATIVE_TTL);
    }

    #[tokio::test]
    async fn truncated_udp_reply_is_asked_again_over_tcp() {
        let server = Server::udp_and_tcp(
            LOCALHOST,
            |query| {
                // What arrived over UDP is cut short and must not be used.
                let partial = [a("big.example.test", 10, "203.0.113.99")];
                let flags = FLAG_QR | FLAG_RD | FLAG_RA | FLAG_TC;
                let cut = message(query.id, flags, &query.question, &partial, &[]);
                vec![Out::Reply(cut)]
            },
            |query| {
                let answers = if query.qtype == TYPE_A {
                    vec![a("big.example.test", 50, "192.0.2.20")]
                } else {
                    vec![aaaa("big.example.test", 70, "2001:db8::20")]
                };
                reply(query, Rcode::NOERROR, &answers, &[])
            },
        )
        .await;

        let resolution = resolve_at("big.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("the TCP answer is used");

        assert_eq!(
            sorted(&resolution),
            [(ip("192.0.2.20"), secs(50)), (ip("2001:db8::20"), secs(70))]
        );
        assert_eq!(server.seen().len(), 2, "A and AAAA over UDP first");
        assert_eq!(server.seen_tcp().len(), 2, "then both again over TCP");
    }

    fn good_answer(query: &Seen) -> Vec<Out> {
        let answers = if query.qtype == TYPE_A {
            vec![record(&TO_QUESTION, TYPE_A, 60, &[192, 0, 2, 30])]
        } else {
            vec![]
        };
        vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_skipped_after_the_timeout() {
        let (_silent, silent_addr) = silent_server();
        let good = Server::udp(LOCALHOST, good_answer).await;

        let start = Instant::now();
        let resolution = resolve_at("example.test", &[silent_addr, good.addr], TIMEOUT)
            .await
            .expect("the second server answers");
        let took = start.elapsed();

        assert_eq!(resolution.addresses, [(ip("192.0.2.30"), secs(60))]);
        assert!(took >= TIMEOUT, "waited for the first server: {took:?}");
        assert!(took < 5 * TIMEOUT, "A and AAAA wait together: {took:?}");
    }

    /// The address of a UDP port on loopback that nobody listens on (any more).
    fn closed_port() -> SocketAddr {
        let (socket, addr) = silent_server();
        drop(socket);
        addr
    }

    #[tokio::test]
    async fn a_closed_port_is_skipped_without_waiting() {
        let closed = closed_port();
        let good = Server::udp(LOCALHOST, good_answer).await;

        // Port unreachable comes back as an error on the connected socket.
        let error = resolve_at("example.test", &[closed], TIMEOUT)
            .await
            .expect_err("nobody answers");
        let DnsError::Io { server, source } = &error else {
            panic!("expected the refused connection, got {error:?}");
        };
        assert_eq!(*server, closed);
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused, "{source}");
        assert_eq!(
            error.to_string(),
            format!("cannot exchange DNS messages with nameserver {closed}")
        );

        let start = Instant::now();
        let resolution = resolve_at("example.test", &[closed, good.addr], TIMEOUT)
            .await
            .expect("the second server answers");
        let took = start.elapsed();
        assert_eq!(resolution.addresses, [(ip("192.0.2.30"), secs(60))]);
        assert!(took < TIMEOUT, "did not wait for the closed port: {took:?}");
    }

    #[tokio::test]
    async fn timeouts_on_every_server_are_an_error() {
        let (_first, first) = silent_server();
        let (_second, second) = silent_server();

        match resolve_at("example.test", &[first, second], TIMEOUT).await {
            Err(DnsError::Timeout { name, servers }) => {
                assert_eq!((name.as_str(), servers), ("example.test", 2));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn replies_with_another_id_source_or_question_are_ignored() {
        let server = Server::udp(LOCALHOST, |query| {
            let flags = FLAG_QR | FLAG_RD | FLAG_RA;
            let forged = |id: u16, question: &[u8], address: &str| {
                let rdata = match ip(address) {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                let answers = [record(&TO_QUESTION, query.qtype, 60, &rdata)];
                message(id, flags, question, &answers, &[])
            };
            let (bad, good) = if query.qtype == TYPE_A {
                (["203.0.113.1", "203.0.113.2", "203.0.113.3"], "192.0.2.40")
            } else {
                (
                    ["2001:db8:bad::1", "2001:db8:bad::2", "2001:db8:bad::3"],
                    "2001:db8::40",
                )
            };
            let mut other_question = wire("evil.test");
            other_question.extend_from_slice(&query.qtype.to_be_bytes());
            other_question.extend_from_slice(&CLASS_IN.to_be_bytes());
            vec![
                Out::Reply(forged(query.id.wrapping_add(1), &query.question, bad[0])),
                Out::FromOtherPort(forged(query.id, &query.question, bad[1])),
                Out::Reply(forged(query.id, &other_question, bad[2])),
                Out::Reply(forged(query.id, &query.question, good)),
            ]
        })
        .await;

        let resolution = resolve_at("example.test", &[server.addr], TIMEOUT)
            .await
            .expect("the genuine reply is found among the others");

        assert_eq!(
            sorted(&resolution),
            [(ip("192.0.2.40"), secs(60)), (ip("2001:db8::40"), secs(60))]
        );
    }

    #[tokio::test]
    async fn compression_pointer_loop_is_malformed() {
        let server = Server::udp(LOCALHOST, |query| {
            // The answer's owner name is a pointer to itself.
            let at = HEADER_LEN + query.question.len();
            let to_itself = u16::try_from(at).expect("small offset") | 0xc000;
            let looping = record(&to_itself.to_be_bytes(), query.qtype, 60, &[192, 0, 2, 1]);
            vec![Out::Reply(reply(query, Rcode::NOERROR, &[looping], &[]))]
        })
        .await;

        match resolve_at("example.test", &[server.addr], TIMEOUT).await {
            Err(DnsError::Malformed {
                server: from,
                reason,
            }) => {
                assert_eq!(from, server.addr);
                assert!(reason.contains("pointer loop"), "{reason}");
            }
            other => panic!("expected a malformed reply, got {other:?}"),
        }
    }

    #[test]
    fn compression_pointers_must_point_backwards() {
        // Two names pointing at each other: 12 -> 14 -> 12.
        let mut message = vec![0; HEADER_LEN];
        message.extend_from_slice(&[0xc0, 14, 0xc0, 12]);
        let error = read_name(&message, HEADER_LEN).expect_err("a forward pointer is refused");
        assert!(error.contains("pointer loop"), "{error}");
        let error = read_name(&message, 14).expect_err("the loop is refused from either end");
        assert!(error.contains("pointer loop"), "{error}");

        // A label, then a pointer back to an earlier name: fine, and the name ends after
        // the pointer.
        let mut message = vec![0; HEADER_LEN];
        message.extend(wire("Example.test"));
        let www = message.len();
        message.extend_from_slice(&[3, b'W', b'w', b'w', 0xc0, 12]);
        let (name, end) = read_name(&message, www).expect("a backward pointer is fine");
        assert_eq!(name, wire("www.example.test"));
        assert_eq!(end, message.len());
    }

    #[tokio::test]
    async fn server_failure_moves_on_and_the_last_failure_is_reported() {
        let servfail = Server::udp(LOCALHOST, |query| {
            vec![Out::Reply(reply(query, Rcode::SERVFAIL, &[], &[]))]
        })
        .await;
        let refused = Server::udp(LOCALHOST, |query| {
            vec![Out::Reply(reply(query, Rcode::REFUSED, &[], &[]))]
        })
        .await;
        let good = Server::udp(LOCALHOST, good_answer).await;

        let resolution = resolve_at("example.test", &[servfail.addr, good.addr], TIMEOUT)
            .await
            .expect("the second server answers");
        assert_eq!(resolution.addresses, [(ip("192.0.2.30"), secs(60))]);

        let error = resolve_at("example.test", &[servfail.addr, refused.addr], TIMEOUT)
            .await
            .expect_err("neither server answers");
        let DnsError::ServerFailure {
            name,
            server,
            rcode,
        } = &error
        else {
            panic!("expected a server failure, got {error:?}");
        };
        assert_eq!(
            (name.as_str(), *server, *rcode),
            ("example.test", refused.addr, Rcode::REFUSED)
        );
        assert_eq!(
            error.to_string(),
            format!(
                "nameserver {} answered REFUSED (rcode 5) for `example.test`",
                refused.addr
            )
        );
    }

    #[tokio::test]
    async fn wildcard_names_are_queried_literally() {
        let server = Server::udp(LOCALHOST, |query| {
            let answers = if query.name == "*.pkg.example.test" && query.qtype == TYPE_A {
                vec![a("*.pkg.example.test", 120, "192.0.2.50")]
            } else {
                vec![]
            };
            vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
        })
        .await;

        let resolution = resolve_at("*.pkg.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("the wildcard record resolves");

        assert_eq!(resolution.addresses, [(ip("192.0.2.50"), secs(120))]);
        assert!(server
            .seen()
            .iter()
            .all(|query| query.name == "*.pkg.example.test"));
    }

    #[tokio::test]
    async fn ipv6_loopback_server() {
        let server = Server::udp(IpAddr::V6(Ipv6Addr::LOCALHOST), |query| {
            let answers = if query.qtype == TYPE_AAAA {
                vec![aaaa("v6.example.test", 90, "2001:db8::60")]
            } else {
                vec![a("v6.example.test", 80, "192.0.2.60")]
            };
            vec![Out::Reply(reply(query, Rcode::NOERROR, &answers, &[]))]
        })
        .await;

        let resolution = resolve_at("v6.example.test", &[server.addr], TIMEOUT)
            .await
            .expect("a nameserver on ::1 answers");
        assert_eq!(
            sorted(&resolution),
            [(ip("192.0.2.60"), secs(80)), (ip("2001:db8::60"), secs(90))]
        );
    }

    #[tokio::test]
    async fn invalid_names_are_refused_before_asking() {
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        let cases = [
            ("", "empty"),
            (".", "empty"),
            ("a..example", "empty label"),
            (".example", "empty label"),
            ("example..", "empty label"),
            (long_label.as_str(), "limit is 63"),
            (long_name.as_str(), "limit is 253"),
            ("exa mple.test", "` ` cannot appear"),
            ("bücher.test", "xn--"),
            ("a*.example.test", "whole label"),
            ("example.test/", "`/` cannot appear"),
        ];
        for (name, expected) in cases {
            match resolve_at(name, &[], TIMEOUT).await {
                Err(DnsError::InvalidName { name: got, reason }) => {
                    assert_eq!(got, name);
                    assert!(reason.contains(expected), "{name:?}: {reason}");
                }
                other => panic!("{name:?}: expected an invalid name, got {other:?}"),
            }
        }
        // The longest valid name and label.
        let longest = &long_name[..253];
        assert!(encode_name(longest).is_ok());
        assert!(encode_name(&format!("{longest}.")).is_ok());
        assert!(encode_name(&"a".repeat(63)).is_ok());
        assert!(encode_name("_dmarc.xn--bcher-kva.test").is_ok());
    }

    #[tokio::test]
    async fn no_servers_is_an_error() {
        assert!(matches!(
            resolve_at("example.test", &[], TIMEOUT).await,
            Err(DnsError::NoServers)
        ));
        assert!(matches!(
            resolve("example.test", &[], TIMEOUT).await,
            Err(DnsError::NoServers)
        ));
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf_text() {
        let text = "\
# Generated by NetworkManager
search example.test
nameserver 192.0.2.53
; nameserver 192.0.2.99
#nameserver 192.0.2.98
nameserver\t2001:db8::53   # the IPv6 one
   nameserver fe80::1%eth0
nameserver 192.0.2.53
nameserver not-an-address
nameserver 300.1.2.3
nameserver
nameservers 192.0.2.97
options edns0 trust-ad
nameserver 198.51.100.53;comment
";
        assert_eq!(
            nameservers_from(text),
            [
                ip("192.0.2.53"),
                ip("2001:db8::53"),
                ip("fe80::1"),
                ip("198.51.100.53")
            ]
        );
        assert!(nameservers_from("").is_empty());
    }

    #[test]
    fn unreadable_resolv_conf_is_an_error() {
        let path = Path::new("/nonexistent/agent-guard/resolv.conf");
        let error = nameservers_in(path).expect_err("the file does not exist");
        assert!(
            matches!(&error, DnsError::ReadResolvConf { path: got, .. } if got == path),
            "{error:?}"
        );
        // The io error is the source, not part of the message.
        assert_eq!(
            error.to_string(),
            "cannot read nameservers from /nonexistent/agent-guard/resolv.conf"
        );
        let source = std::error::Error::source(&error).expect("the io error");
        assert!(source.to_string().contains("No such file"), "{source}");
    }

    #[test]
    fn refresh_after_is_the_smallest_ttl_clamped() {
        let with = |ttls: &[u64]| Resolution {
            addresses: ttls
                .iter()
                .map(|&ttl| (ip("192.0.2.1"), secs(ttl)))
                .collect(),
            negative_ttl: None,
        };
        assert_eq!(with(&[300, 20, 7200]).refresh_after(), secs(20));
        assert_eq!(with(&[0, 300]).refresh_after(), MIN_REFRESH);
        assert_eq!(with(&[86_400]).refresh_after(), MAX_REFRESH);
        let negative = |ttl| Resolution {
            addresses: vec![],
            negative_ttl: ttl,
        };
        assert_eq!(negative(Some(secs(45))).refresh_after(), secs(45));
        assert_eq!(negative(Some(secs(0))).refresh_after(), MIN_REFRESH);
        assert_eq!(negative(None).refresh_after(), DEFAULT_NEGATIVE_TTL);
    }

    #[test]
    fn ttls_with_the_top_bit_set_are_zero() {
        assert_eq!(sane_ttl(0x8000_0000), 0);
        assert_eq!(sane_ttl(0x7fff_ffff), 0x7fff_ffff);
    }

    #[test]
    fn query_message_layout() {
        let wire_name = encode_name("Example.test.").expect("a valid name");
        let query = Query::new("Example.test.", &wire_name, TYPE_AAAA);
        let message = query.message(0xbeef);
        let mut expected = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x07Example\x04test\x00");
        expected.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(message, expected);
    }
}
