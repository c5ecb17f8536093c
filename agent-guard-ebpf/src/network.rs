//! Network hooks: a session reaches the destinations its policy names, listens where it
//! says, and makes no raw or packet sockets.
//!
//! IP destinations are decided on the socket address the kernel has already copied in
//! (`move_addr_to_kernel`), so the caller cannot change it after the check. Unix sockets are
//! decided on the peer the kernel found: a path socket by where its socket file lies (the
//! same walk as files, so symlinks, hard links and bind mounts all meet the real location),
//! an abstract one by its bound name.
//!
//! Each hook returns the verdict it was given when it has nothing to refuse.
use agent_guard_common::{
    is_loopback, mapped_v4, AbstractKey, NetKey, ACCESS_CONNECT, ACTION_ALLOW, ACTION_DENY,
    AF_INET, AF_INET6, AF_PACKET, AF_UNIX, EPERM, NET_SESSION_BITS, OP_BIND, OP_CONNECT, OP_LISTEN,
    OP_SEND, OP_SOCKET, PROTO_SCTP, RULE_ABSTRACT_UNIX, RULE_EGRESS_DEFAULT, RULE_LISTEN,
    RULE_RAW_SOCKET, RULE_UNCHECKED_PROTOCOL, RULE_UNRESOLVED, SOCK_RAW,
};
use aya_ebpf::{
    helpers::generated::bpf_probe_read_kernel,
    macros::lsm,
    maps::{lpm_trie::Key, LpmTrie},
    programs::LsmContext,
};

use crate::{
    kernel::{current_task, off, path_parts, read_u16, read_u32, read_u64, Unreadable},
    maps::{ABSTRACT, ABSTRACT_SCRATCH, NET_CONNECT, NET_LISTEN},
    report::{apply_finding, decide, Finding, Location, NetTarget},
    scope::{check, session_config, Checked, Owned},
    session::enter,
};

const AF_UNSPEC: u16 = 0;
/// Bits of `socket(2)`'s type argument that name the type (the rest are flags).
const SOCK_TYPE_MASK: i32 = 0xf;
/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH: u64 = 2;

const ALLOWED: Checked = Checked {
    action: ACTION_ALLOW,
    rule: 0,
};

/// An IP destination or local address, as decoded from a socket address.
struct Endpoint {
    family: u16,
    addr: [u8; 16],
    port: u16,
}

/// What a socket address names on a socket of `sock_family`: `Ok(None)` when it names no
/// destination (`AF_UNSPEC` disconnects, and on IPv6 sends means "the connected peer").
/// `v4_unspec` marks the calls where IPv4 takes `AF_UNSPEC` as `AF_INET` (bind of
/// `INADDR_ANY`, and UDP/ping sends). A family the IP stack does not take is unresolved:
/// refused, whatever the protocol would have done with it.
#[inline(always)]
fn endpoint(sock_family: u16, sa: u64, v4_unspec: bool) -> Result<Option<Endpoint>, Unreadable> {
    let family = read_u16(sa, 0)?;
    let as_v4 = family == AF_INET || (family == AF_UNSPEC && sock_family == AF_INET && v4_unspec);
    if as_v4 {
        let port = u16::from_be(read_u16(sa, 2)?);
        let octets = read_u32(sa, 4)?.to_ne_bytes();
        return Ok(Some(Endpoint {
            family: AF_INET,
            addr: mapped_v4(octets),
            port,
        }));
    }
    if family == AF_INET6 {
        let port = u16::from_be(read_u16(sa, 2)?);
        let hi = read_u64(sa, 8)?.to_ne_bytes();
        let lo = read_u64(sa, 16)?.to_ne_bytes();
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&hi);
        addr[8..].copy_from_slice(&lo);
        return Ok(Some(Endpoint {
            family: AF_INET6,
            addr,
            port,
        }));
    }
    if family == AF_UNSPEC {
        return Ok(None);
    }
    Err(Unreadable)
}

/// The socket's `sock`, its family and its protocol.
#[inline(always)]
fn sock_of(socket: u64) -> Result<(u64, u16, u16, u16), Unreadable> {
    let sk = read_u64(socket, off!(socket_sk))?;
    let family = read_u16(sk, off!(sock_skc_family))?;
    let protocol = read_u16(sk, off!(sock_sk_protocol))?;
    let ty = read_u16(socket, off!(socket_type))?;
    Ok((sk, family, protocol, ty))
}

/// What `table` says about `at` for `session`: the first port rule of the most specific
/// entry that matches, or `None`.
#[inline(always)]
fn lookup(
    table: &LpmTrie<NetKey, agent_guard_common::NetRules>,
    session: u32,
    at: &Endpoint,
    protocol: u16,
) -> Option<Checked> {
    let key = Key::new(NET_SESSION_BITS + 128, NetKey::new(session, at.addr));
    let rules = table.get(&key)?;
    rules
        .decide(at.port, protocol as u8)
        .map(|(action, rule)| Checked {
            action: action as u16,
            rule,
        })
}

fn net_finding(op: u32, rule: u32, family: u16, protocol: u16, ty: u16, at: &Endpoint) -> Finding {
    Finding {
        op,
        rule,
        errno: EPERM,
        target: None,
        target2: None,
        target_pid: 0,
        detail: 0,
        net: Some(NetTarget {
            family,
            protocol,
            socket_type: ty,
            port: at.port,
            addr: at.addr,
            abstract_name: 0,
            abstract_len: 0,
        }),
    }
}

/// A connect or send from `socket` to the socket address `sa`.
#[inline(always)]
fn destination(session: u32, op: u32, socket: u64, sa: u64, v4_unspec: bool, allow: i32) -> i32 {
    let Ok((_, family, protocol, ty)) = sock_of(socket) else {
        return unresolved(session, op, allow);
    };
    if family != AF_INET && family != AF_INET6 {
        // Unix sockets are decided on the peer (below); other families carry no IP.
        return allow;
    }
    let at = match endpoint(family, sa, v4_unspec) {
        Ok(Some(at)) => at,
        Ok(None) => return allow,
        Err(Unreadable) => return unresolved(session, op, allow),
    };
    let checked = match lookup(&NET_CONNECT, session, &at, protocol) {
        Some(checked) => checked,
        None if session_config(session).egress_allow != 0 => ALLOWED,
        None => Checked {
            action: ACTION_DENY,
            rule: RULE_EGRESS_DEFAULT,
        },
    };
    let finding = net_finding(op, checked.rule, at.family, protocol, ty, &at);
    apply_finding(session, checked, finding, allow)
}

#[inline(always)]
fn unresolved(session: u32, op: u32, allow: i32) -> i32 {
    let finding = Finding {
        op,
        rule: RULE_UNRESOLVED,
        errno: EPERM,
        target: None,
        target2: None,
        target_pid: 0,
        detail: 0,
        net: Some(NetTarget::default()),
    };
    decide(session, &finding, allow)
}

/// Binding or listening at `at`: loopback is free, anything else needs a listen rule.
#[inline(always)]
fn local_address(session: u32, op: u32, at: &Endpoint, protocol: u16, ty: u16, allow: i32) -> i32 {
    if is_loopback(&at.addr) {
        return allow;
    }
    let checked = lookup(&NET_LISTEN, session, at, protocol).unwrap_or(Checked {
        action: ACTION_DENY,
        rule: RULE_LISTEN,
    });
    let finding = net_finding(op, checked.rule, at.family, protocol, ty, at);
    apply_finding(session, checked, finding, allow)
}

/// `socket_create(int family, int type, int protocol, int kern)`: no raw IP sockets and no
/// packet sockets, which could forge or capture any traffic, and no SCTP sockets, which
/// connect through setsockopt where no hook here looks. Netlink sockets (also `SOCK_RAW`)
/// stay allowed: `ip` and the resolver's address checks need them.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 4) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let ty = ty & SOCK_TYPE_MASK;
    let ip = family == i32::from(AF_INET) || family == i32::from(AF_INET6);
    if kern != 0 {
        return allow;
    }
    let rule = if family == i32::from(AF_PACKET) || (ip && ty == i32::from(SOCK_RAW)) {
        RULE_RAW_SOCKET
    } else if ip && protocol == i32::from(PROTO_SCTP) {
        RULE_UNCHECKED_PROTOCOL
    } else {
        return allow;
    };
    let finding = net_finding(
        OP_SOCKET,
        rule,
        family as u16,
        protocol as u16,
        ty as u16,
        &Endpoint {
            family: family as u16,
            addr: [0; 16],
            port: 0,
        },
    );
    decide(session, &finding, allow)
}

/// `socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)`: TCP and
/// UDP connects, IPv4 and IPv6, to destinations the policy names (io_uring's CONNECT comes
/// through here too).
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let socket = ctx.arg::<*const u8>(0) as u64;
    let sa = ctx.arg::<*const u8>(1) as u64;
    destination(session, OP_CONNECT, socket, sa, false, allow)
}

/// `socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`: a send that names
/// its destination (unconnected UDP, ping, TCP Fast Open) is decided like a connect to it.
/// Sends without an address go to the peer already decided at connect.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let socket = ctx.arg::<*const u8>(0) as u64;
    let msg = ctx.arg::<*const u8>(1) as u64;
    let Ok(name) = read_u64(msg, off!(msghdr_msg_name)) else {
        return unresolved(session, OP_SEND, allow);
    };
    if name == 0 {
        return allow;
    }
    // IPv4 UDP and ping take an AF_UNSPEC address as AF_INET.
    destination(session, OP_SEND, socket, name, true, allow)
}

/// `socket_bind(struct socket *sock, struct sockaddr *address, int addrlen)`: binding to a
/// loopback address is free; any other address (the wildcard included) needs a listen rule.
#[lsm(hook = "socket_bind")]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let socket = ctx.arg::<*const u8>(0) as u64;
    let sa = ctx.arg::<*const u8>(1) as u64;
    let Ok((_, family, protocol, ty)) = sock_of(socket) else {
        return unresolved(session, OP_BIND, allow);
    };
    if family != AF_INET && family != AF_INET6 {
        return allow;
    }
    // IPv4 binds AF_UNSPEC as INADDR_ANY.
    match endpoint(family, sa, true) {
        Ok(Some(at)) => local_address(session, OP_BIND, &at, protocol, ty, allow),
        Ok(None) => allow,
        Err(Unreadable) => unresolved(session, OP_BIND, allow),
    }
}

/// `socket_listen(struct socket *sock, int backlog)`: listening on the address the socket
/// is bound to. A socket that was never bound would take the wildcard, and is decided so.
#[lsm(hook = "socket_listen")]
pub fn socket_listen(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let socket = ctx.arg::<*const u8>(0) as u64;
    match bound_address(socket) {
        Ok(Some((at, protocol, ty))) => local_address(session, OP_LISTEN, &at, protocol, ty, allow),
        Ok(None) => allow,
        Err(Unreadable) => unresolved(session, OP_LISTEN, allow),
    }
}

/// The local address of an IP socket; `None` for other families.
#[inline(always)]
fn bound_address(socket: u64) -> Result<Option<(Endpoint, u16, u16)>, Unreadable> {
    let (sk, family, protocol, ty) = sock_of(socket)?;
    let port = read_u16(sk, off!(sock_skc_num))?;
    let addr = if family == AF_INET {
        mapped_v4(read_u32(sk, off!(sock_skc_rcv_saddr))?.to_ne_bytes())
    } else if family == AF_INET6 {
        let hi = read_u64(sk, off!(sock_skc_v6_rcv_saddr))?.to_ne_bytes();
        let lo = read_u64(sk, off!(sock_skc_v6_rcv_saddr) + 8)?.to_ne_bytes();
        let mut addr = [0u8; 16];
        addr[..8].copy_from_slice(&hi);
        addr[8..].copy_from_slice(&lo);
        addr
    } else {
        return Ok(None);
    };
    Ok(Some((Endpoint { family, addr, port }, protocol, ty)))
}

/// `unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`: a
/// stream or seqpacket connect to the listening socket `other`.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 3) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let sock = ctx.arg::<*const u8>(0) as u64;
    let other = ctx.arg::<*const u8>(1) as u64;
    let ty = read_u16(sock, off!(sock_sk_type)).unwrap_or(0);
    unix_peer(session, OP_CONNECT, other, ty, allow)
}

/// `unix_may_send(struct socket *sock, struct socket *other)`: a datagram connect or send
/// to `other`. Called for every datagram, so that a socket connected before the session
/// began is decided too.
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let (session, allow) = match enter(&ctx, 2) {
        Ok(entered) => entered,
        Err(verdict) => return verdict,
    };
    let sock = ctx.arg::<*const u8>(0) as u64;
    let other = ctx.arg::<*const u8>(1) as u64;
    let ty = read_u16(sock, off!(socket_type)).unwrap_or(0);
    match read_u64(other, off!(socket_sk)) {
        Ok(peer) => unix_peer(session, OP_SEND, peer, ty, allow),
        Err(Unreadable) => unresolved(session, OP_SEND, allow),
    }
}

/// Decides a unix connect or send to the peer `sock` (a `struct sock`, the start of its
/// `struct unix_sock`).
#[inline(always)]
fn unix_peer(session: u32, op: u32, sock: u64, ty: u16, allow: i32) -> i32 {
    let Ok(address) = read_u64(sock, off!(unix_sock_addr)) else {
        return unresolved(session, op, allow);
    };
    if address == 0 {
        // An unnamed peer (a socketpair): nobody can reach it by name.
        return allow;
    }
    let Ok((mnt, dentry)) = path_parts(sock + off!(unix_sock_path)) else {
        return unresolved(session, op, allow);
    };
    let mut net = NetTarget {
        family: AF_UNIX,
        socket_type: ty,
        ..NetTarget::default()
    };
    if dentry != 0 {
        let checked = check(session, ACCESS_CONNECT, mnt, dentry, false);
        let finding = Finding {
            op,
            rule: checked.rule,
            errno: EPERM,
            target: Some(Location { mnt, dentry }),
            target2: None,
            target_pid: 0,
            detail: 0,
            net: Some(net),
        };
        return apply_finding(session, checked, finding, allow);
    }
    // Abstract: `sun_path` starts with a NUL; the name is the rest of the bound length.
    let Ok(len) = read_u32(address, off!(unix_address_len)) else {
        return unresolved(session, op, allow);
    };
    let name = address + off!(unix_address_name) + SUN_PATH + 1;
    let name_len = len.saturating_sub(SUN_PATH as u32 + 1);
    net.abstract_name = name;
    net.abstract_len = name_len;
    let checked = abstract_verdict(session, name, name_len);
    let finding = Finding {
        op,
        rule: checked.rule,
        errno: EPERM,
        target: None,
        target2: None,
        target_pid: 0,
        detail: 0,
        net: Some(net),
    };
    apply_finding(session, checked, finding, allow)
}

/// What the session's policy says about the abstract name of `len` bytes at `name`; a name
/// it does not list is refused.
#[inline(always)]
fn abstract_verdict(session: u32, name: u64, len: u32) -> Checked {
    let refused = Checked {
        action: ACTION_DENY,
        rule: RULE_ABSTRACT_UNIX,
    };
    let Some(slot) = ABSTRACT_SCRATCH.get_ptr_mut(0) else {
        return refused;
    };
    let task = current_task();
    // SAFETY: the per-CPU slot is this program run's once it is claimed (see
    // `scope::Owned`); the copy is at most 127 bytes into a 128-byte array, and the helper
    // reads kernel memory safely.
    unsafe {
        Owned::claim(&raw mut (*slot).owner, task);
        let key: &mut AbstractKey = &mut (*slot).key;
        key.name = [0; agent_guard_common::ABSTRACT_NAME_BUF];
        // Bounded right before the copy, where the verifier sees it: a check made before
        // the zeroing above is lost when the length is spilled around it.
        let len = bounded_name_len(len);
        if len == 0 {
            return refused;
        }
        key.session = session;
        key.len = len;
        if bpf_probe_read_kernel(key.name.as_mut_ptr().cast(), len, name as *const _) != 0 {
            return refused;
        }
        let checked = match ABSTRACT.get(key) {
            Some(verdict) => Checked {
                action: verdict.action as u16,
                rule: verdict.rule,
            },
            None => refused,
        };
        // Another task's program that took the slot meanwhile may have looked up its own
        // name: refuse.
        if Owned::still(&raw const (*slot).owner, task) {
            checked
        } else {
            refused
        }
    }
}

/// Where the key of an abstract name is assembled, with the task assembling it.
#[repr(C)]
pub struct AbstractSlot {
    owner: u64,
    key: AbstractKey,
}

/// `len` when it is a valid abstract name length (1 to 107), else 0, masked to 7 bits
/// in the register the copy takes. The volatile read keeps the compiler from dropping the
/// mask on a value it has bounded before: a check on another register does not bound this
/// one for the verifier.
#[inline(always)]
pub fn bounded_name_len(len: u32) -> u32 {
    if len as usize > agent_guard_common::ABSTRACT_NAME_LEN {
        return 0;
    }
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&len) & 0x7f }
}
