//! Network scope (issue #4) against real servers: TCP and UDP connects over IPv4, IPv6 and
//! IPv4-mapped IPv6; UDP datagrams without connect; bind and listen; unix sockets by path
//! (and through aliases of the path) and abstract name; raw, packet and SCTP sockets; hostname
//! rules resolved through a real dnsmasq, TTL change included; `egress = "allow"`; audit
//! mode.
//!
//! Every destination has a server made by the test (on loopback, on this host's end of a
//! veth pair, or in a network namespace at the other end), and each client sends its own
//! label once connected: an allowed probe must have reached its server, a refused one must
//! not have, and the servers' lists of labels show both. While each enforcing session is
//! paused, the test process, in no session, repeats the refused operations: they must
//! succeed and reach their servers too.
//!
//! Each probe's expected event is derived from its arguments (op, family, protocol,
//! address, port, socket path), and where its connection or datagram lands from its
//! destination, so that a table row says only the label, the arguments, the result and the
//! rule.
//!
//! A session costs about 40 s in the VMs (debug build, TCG) and a probe about 0.8 s, so each
//! test is one session of many probes.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
};

use crate::{
    events::Event,
    fixture::{probe_exe, Fixture},
    netfix::{
        abstract_dgram, abstract_stream, tcp_listener, udp_socket, unix_dgram, unix_stream,
        Dnsmasq, NetNs, PortServers, ResolvConf, Server, Sysctl, ANY_PORT, HOST4, HOST6,
    },
    rule,
    script::{Outcome, Script},
    session::{Run, Session, WORKSPACE_POLICY},
};

// Destinations in the namespace of the IP tests. The host's end of the pair holds
// 198.51.100.1, 203.0.113.1 and 2001:db8:a9::1 (`netfix::HOST*`).
const SRV: &str = "198.51.100.10";
const SRV6: &str = "2001:db8:a9::10";
const BLOCKED: &str = "198.51.100.66";
const BLOCKED6: &str = "2001:db8:a9::66";
const TCP_ONLY: &str = "198.51.100.20";
const AUDITED: &str = "203.0.113.10";
/// Every address of the namespace, where the `remote` servers answer.
const REMOTE: [&str; 6] = [SRV, SRV6, BLOCKED, BLOCKED6, TCP_ONLY, AUDITED];
/// Remote servers listen on both ports, TCP and UDP: one inside the `mirrors` rule's range,
/// one outside it.
const IN_RANGE: u16 = 8080;
const OUT_OF_RANGE: u16 = 9090;

/// A policy: the workspace as the only writable scope, in `mode`, with `network` appended.
fn policy(mode: &str, network: &str) -> String {
    let base = WORKSPACE_POLICY.replace("mode = \"enforce\"", &format!("mode = \"{mode}\""));
    assert!(
        base.contains(&format!("mode = \"{mode}\"")),
        "WORKSPACE_POLICY states its mode"
    );
    format!("{base}\n{network}")
}

// ---------------------------------------------------------------------------------------
// Probes and the events derived from them
// ---------------------------------------------------------------------------------------

/// What a probe must report.
#[derive(Debug, Clone)]
struct Ev {
    decision: &'static str,
    rule: String,
    hostname: Option<String>,
    /// Accepted `socket_path` values when they are not the probe's own target.
    socket_paths: Option<Vec<String>>,
}

/// One probe of a session's script. In `args` (words separated by spaces), `TEXT` stands for
/// what the client sends once connected: the label, so that the server can say who it saw.
#[derive(Debug, Clone)]
struct P {
    label: String,
    args: Vec<String>,
    /// Where `TEXT` was in `args`.
    text_at: Option<usize>,
    /// Accepted results (`ok`, `EPERM`, `bind:EPERM`, ...).
    results: Vec<&'static str>,
    event: Option<Ev>,
}

fn probe(label: &str, args: &str, result: &'static str, event: Option<Ev>) -> P {
    assert!(
        !label.starts_with("poll"),
        "labels starting with poll are reserved"
    );
    let words: Vec<&str> = args.split_whitespace().collect();
    P {
        label: label.to_owned(),
        args: with_text(args, label),
        text_at: words.iter().position(|w| *w == "TEXT"),
        results: vec![result],
        event,
    }
}

/// `args` split into words, `TEXT` replaced by `text`.
fn with_text(args: &str, text: &str) -> Vec<String> {
    args.split_whitespace()
        .map(|w| {
            if w == "TEXT" {
                text.to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect()
}

/// Succeeds, reports nothing.
fn ok(label: &str, args: &str) -> P {
    probe(label, args, "ok", None)
}

/// Refused with EPERM and reported as denied by `rule`.
fn denied(label: &str, args: &str, rule: &str) -> P {
    let ev = Ev {
        decision: "deny",
        rule: rule.to_owned(),
        hostname: None,
        socket_paths: None,
    };
    probe(label, args, "EPERM", Some(ev))
}

/// Succeeds and is reported as audited by `rule`.
fn audited(label: &str, args: &str, rule: &str) -> P {
    let ev = Ev {
        decision: "audit",
        rule: rule.to_owned(),
        hostname: None,
        socket_paths: None,
    };
    probe(label, args, "ok", Some(ev))
}

impl P {
    fn results(mut self, results: &[&'static str]) -> Self {
        self.results = results.to_vec();
        self
    }

    fn hostname(mut self, hostname: &str) -> Self {
        self.event.as_mut().expect("a reported probe").hostname = Some(hostname.to_owned());
        self
    }

    fn socket_paths(mut self, paths: &[String]) -> Self {
        self.event.as_mut().expect("a reported probe").socket_paths = Some(paths.to_vec());
        self
    }

    /// The same probe from the test process, a bystander: it must succeed, whatever the
    /// session's answer; its server sees `outsider-LABEL`.
    fn outsider(&self, fx: &Fixture) -> Outcome {
        let text = format!("outsider-{}", self.label);
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        if let Some(at) = self.text_at {
            args[at] = &text;
        }
        fx.outsider(&args)
    }
}

fn script(fx: &Fixture, probes: &[P]) -> Script {
    add(Script::new(fx), probes)
}

fn add(mut script: Script, probes: &[P]) -> Script {
    for p in probes {
        let args: Vec<&str> = p.args.iter().map(String::as_str).collect();
        script = script.probe(&p.label, &args);
    }
    script
}

/// How many events one expectation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    One,
    /// A library call that may retry (getaddrinfo's resolver).
    AtLeastOne,
    /// A polling probe: refused or not, depending on when it ran.
    AtMostOne,
}

/// A network event a test expects, with every field it must carry; an absent field must be
/// absent from the event.
#[derive(Debug, Clone)]
struct Net {
    label: String,
    /// Accepted `op` values (one, except where the contract leaves it open).
    ops: Vec<&'static str>,
    decision: &'static str,
    rule: String,
    pid: u32,
    ppid: u32,
    family: &'static str,
    protocol: Option<String>,
    socket_type: Option<&'static str>,
    address: Option<String>,
    port: Option<u16>,
    /// Accepted `socket_path` values; empty: absent.
    socket_paths: Vec<String>,
    hostname: Option<String>,
    io_uring: bool,
    count: Count,
    /// Identified by its address too: one process makes several such decisions.
    by_address: bool,
}

impl Net {
    fn new(label: &str, by: &Outcome, ev: &Ev) -> Self {
        Self {
            label: label.to_owned(),
            ops: Vec::new(),
            decision: ev.decision,
            rule: ev.rule.clone(),
            pid: by.pid,
            ppid: by.ppid,
            family: "",
            protocol: None,
            socket_type: None,
            address: None,
            port: None,
            socket_paths: Vec::new(),
            hostname: ev.hostname.clone(),
            io_uring: false,
            count: Count::One,
            by_address: false,
        }
    }

    /// An inet or inet6 decision on `addr` (the family is the probe's: AF_INET for an IPv4
    /// literal, AF_INET6 for any IPv6 one) and `port`.
    fn ip(mut self, ops: &[&'static str], proto: &str, addr: &str, port: &str) -> Self {
        let ip: IpAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("`{}`: not an IP address: {addr}", self.label));
        self.ops = ops.to_vec();
        self.family = if ip.is_ipv4() { "inet" } else { "inet6" };
        self.protocol = Some(proto.to_owned());
        self.address = Some(ip.to_string());
        self.port = Some(port.parse().expect("a port number"));
        self
    }

    fn unix(mut self, ops: &[&'static str], socket_type: &'static str, target: &str) -> Self {
        self.ops = ops.to_vec();
        self.family = "unix";
        self.socket_type = Some(socket_type);
        self.socket_paths = vec![target.to_owned()];
        self
    }

    /// The expected event of probe `p`, which printed `by`.
    fn derive(p: &P, by: &Outcome, ev: &Ev) -> Self {
        let n = Self::new(&p.label, by, ev);
        let a: Vec<&str> = p.args.iter().map(String::as_str).collect();
        let failed_at = |step: &str| by.result.starts_with(&format!("{step}:"));
        let mut n = match a.as_slice() {
            ["connect" | "uring-connect", proto, addr, port, ..] => {
                n.ip(&["connect"], proto, addr, port)
            }
            ["sendto" | "sendmsg" | "uring-sendmsg", proto, addr, port, _] => {
                n.ip(&["send"], proto, addr, port)
            }
            ["connected-sendto", proto, addr, port, ..] if failed_at("connect") => {
                n.ip(&["connect"], proto, addr, port)
            }
            ["connected-sendto", proto, _, _, to, to_port, _] => {
                n.ip(&["send"], proto, to, to_port)
            }
            ["bind", proto, addr, port] => n.ip(&["bind"], proto, addr, port),
            ["listen", addr, port] if failed_at("bind") => n.ip(&["bind"], "tcp", addr, port),
            ["listen", addr, port] => n.ip(&["listen"], "tcp", addr, port),
            // Not bound: the address it would take.
            ["listen-unbound"] | ["listen-unbound", "4"] => {
                n.ip(&["listen"], "tcp", "0.0.0.0", "0")
            }
            ["listen-unbound", "6"] => n.ip(&["listen"], "tcp", "::", "0"),
            ["unix-connect", target, ..] => n.unix(&["connect"], "stream", target),
            ["unix-seqpacket-connect", target, ..] => n.unix(&["connect"], "seqpacket", target),
            ["unix-sendto", target, _] => n.unix(&["send"], "dgram", target),
            // The contract names `send` for a datagram socket's sends, connected or not;
            // a refusal at connect(2) itself may be reported as either.
            ["unix-dgram-connect", target, _] => n.unix(&["connect", "send"], "dgram", target),
            ["socket" | "uring-socket", kind] => {
                let (family, socket_type, protocol) = match *kind {
                    "raw4" => ("inet", "raw", Some("icmp")),
                    "raw6" => ("inet6", "raw", Some("icmpv6")),
                    "sctp4" => ("inet", "stream", Some("sctp")),
                    "sctp6" => ("inet6", "seqpacket", Some("sctp")),
                    "packet" => ("packet", "raw", None),
                    "packet-dgram" => ("packet", "dgram", None),
                    other => panic!("`{}`: no expected event for socket {other}", p.label),
                };
                Self {
                    ops: vec!["socket"],
                    family,
                    socket_type: Some(socket_type),
                    protocol: protocol.map(str::to_owned),
                    ..n
                }
            }
            other => panic!("`{}`: no expected event known for {other:?}", p.label),
        };
        n.io_uring = a[0].starts_with("uring-");
        if let Some(paths) = &ev.socket_paths {
            n.socket_paths = paths.clone();
        }
        n
    }

    fn describe(&self) -> String {
        format!(
            "`{}` ({} {} by {}, pid {})",
            self.label,
            self.decision,
            self.ops.join("|"),
            self.rule,
            self.pid
        )
    }

    /// Every field of `e` that differs from this expectation.
    fn mismatches(&self, e: &Event) -> Vec<String> {
        let mut wrong = Vec::new();
        let mut field = |name: &str, got: Option<&str>, want: Option<&str>| {
            if got != want {
                wrong.push(format!("{name}: expected {want:?}, got {got:?}"));
            }
        };
        field("decision", Some(&e.decision), Some(self.decision));
        field("rule", Some(&e.rule), Some(&self.rule));
        field("family", e.family.as_deref(), Some(self.family));
        field("protocol", e.protocol.as_deref(), self.protocol.as_deref());
        field("socket_type", e.socket_type.as_deref(), self.socket_type);
        field("address", e.address.as_deref(), self.address.as_deref());
        field("hostname", e.hostname.as_deref(), self.hostname.as_deref());
        let port = |p: Option<u16>| p.map(|p| p.to_string());
        field("port", port(e.port).as_deref(), port(self.port).as_deref());
        let exe = probe_exe();
        field("exe", e.exe.as_deref(), Some(&exe));
        let worker = self.io_uring && e.comm.starts_with("iou-wrk");
        if !worker {
            field("comm", Some(&e.comm), Some("ag-probe"));
            if e.tid != e.pid {
                wrong.push(format!(
                    "tid {} of a single-threaded process {}",
                    e.tid, e.pid
                ));
            }
        }
        match (&e.socket_path, self.socket_paths.as_slice()) {
            (None, []) => {}
            (Some(got), accepted) if accepted.contains(got) => {}
            (got, accepted) => wrong.push(format!(
                "socket_path: expected one of {accepted:?}, got {got:?}"
            )),
        }
        if self.decision == "deny" && (e.errno, e.errno_name.as_deref()) != (1, Some("EPERM")) {
            wrong.push(format!(
                "errno: expected 1 EPERM, got {} {:?}",
                e.errno, e.errno_name
            ));
        }
        if (e.uid, e.gid, e.ppid) != (0, 0, self.ppid) {
            wrong.push(format!(
                "uid, gid, ppid: expected (0, 0, {}), got ({}, {}, {})",
                self.ppid, e.uid, e.gid, e.ppid
            ));
        }
        if !e.paths.is_empty() {
            wrong.push(format!(
                "paths: expected [] for a network event, got {:?}",
                e.paths
            ));
        }
        wrong
    }
}

/// Checks every probe's result (all mismatches at once), then its event: each expectation
/// matches its events with every field right, and no event is left over.
fn assert_probes(s: &Session, probes: &[P], extra: Vec<Net>) {
    let wrong: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let got = s
                .outcome_opt(&p.label)
                .map_or("no outcome".to_owned(), |o| o.result.clone());
            (!p.results.contains(&got.as_str())).then(|| {
                format!(
                    "  {} ({}): expected {}, got {got}",
                    p.label,
                    p.args.join(" "),
                    p.results.join(" or ")
                )
            })
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "unexpected results:\n{}\nstdout:\n{}\nstderr:\n{}\nevents:\n{}",
        wrong.join("\n"),
        s.stdout,
        s.stderr,
        event_lines(&s.log.decisions)
    );
    let mut expected: Vec<Net> = probes
        .iter()
        .filter_map(|p| Some(Net::derive(p, s.outcome(&p.label), p.event.as_ref()?)))
        .collect();
    expected.extend(extra);
    assert_events(&s.log.decisions, &expected);
}

fn event_lines(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| format!("  {}", e.line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_events(events: &[Event], expected: &[Net]) {
    let mut used = vec![false; events.len()];
    let mut problems = Vec::new();
    for want in expected {
        let found: Vec<usize> = (0..events.len())
            .filter(|&i| {
                let e = &events[i];
                e.pid == want.pid
                    && want.ops.contains(&e.op.as_str())
                    && (!want.by_address || e.address == want.address)
            })
            .collect();
        let count_ok = match want.count {
            Count::One => found.len() == 1,
            Count::AtLeastOne => !found.is_empty(),
            Count::AtMostOne => found.len() <= 1,
        };
        if !count_ok {
            problems.push(format!(
                "{}: expected {:?} event(s), found {}",
                want.describe(),
                want.count,
                found.len()
            ));
        }
        for i in found {
            used[i] = true;
            let wrong = want.mismatches(&events[i]);
            if !wrong.is_empty() {
                problems.push(format!(
                    "{}: {}\n    {}",
                    want.describe(),
                    wrong.join("; "),
                    events[i].line
                ));
            }
        }
    }
    for (e, used) in events.iter().zip(&used) {
        if !used {
            problems.push(format!("unexpected event: {}", e.line));
        }
    }
    assert!(
        problems.is_empty(),
        "network events:\n  {}\nall events:\n{}",
        problems.join("\n  "),
        event_lines(events)
    );
}

/// Session lookups that may miss (a probe that printed nothing).
trait OutcomeOpt {
    fn outcome_opt(&self, label: &str) -> Option<Outcome>;
    /// The `key=value` word a probe printed after its pid fields.
    fn detail(&self, label: &str, key: &str) -> Option<String>;
    /// Every outcome of probes printed as `label` (a loop runs them many times).
    fn all(&self, label: &str) -> Vec<Outcome>;
}

impl OutcomeOpt for Session {
    fn outcome_opt(&self, label: &str) -> Option<Outcome> {
        self.all(label).pop()
    }

    fn detail(&self, label: &str, key: &str) -> Option<String> {
        let prefix = format!("{label} ");
        let line = self.stdout.lines().rev().find(|l| l.starts_with(&prefix))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_owned))
    }

    fn all(&self, label: &str) -> Vec<Outcome> {
        let prefix = format!("{label} ");
        self.stdout
            .lines()
            .filter_map(|l| Outcome::parse(label, l.strip_prefix(&prefix)?))
            .collect()
    }
}

/// Loads a kernel module (the VMs share the host's /lib/modules).
fn load_module(name: &str) {
    let out = std::process::Command::new("modprobe")
        .arg(name)
        .output()
        .unwrap_or_else(|e| panic!("run modprobe {name}: {e}"));
    assert!(
        out.status.success(),
        "modprobe {name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// What each server received, by server name.
type Deliveries = BTreeMap<String, Vec<String>>;

/// `[(server, labels)]` as [`Deliveries`].
fn deliveries(entries: &[(String, &[&str])]) -> Deliveries {
    let mut map = Deliveries::new();
    for (server, labels) in entries {
        map.entry(server.clone())
            .or_default()
            .extend(labels.iter().map(|l| (*l).to_owned()));
    }
    map
}

/// Panics unless every server received exactly what `expected` lists for it (nothing when
/// it is not listed), with every mismatch in one message.
fn assert_servers(got: Deliveries, expected: Deliveries) {
    for server in expected.keys() {
        assert!(
            got.contains_key(server),
            "no server {server}; servers: {:?}",
            got.keys()
        );
    }
    let mut wrong = Vec::new();
    for (server, mut received) in got {
        let mut want = expected.get(&server).cloned().unwrap_or_default();
        received.sort();
        want.sort();
        if received != want {
            wrong.push(format!("  {server}: expected {want:?}, got {received:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "what the servers received (each client sends its label, an outsider \
         outsider-LABEL; a refused client must not get through, an allowed one must):\n{}",
        wrong.join("\n")
    );
}

/// Runs each refused probe of `probes` again from the test process, which must succeed.
/// Returns them, for [`World::deliveries`].
fn outsiders<'p>(fx: &Fixture, probes: &'p [P]) -> Vec<&'p P> {
    let refused: Vec<&P> = probes.iter().filter(|p| p.results != ["ok"]).collect();
    let wrong: Vec<String> = refused
        .iter()
        .map(|p| (p, p.outsider(fx)))
        .filter(|(_, o)| o.result != "ok")
        .map(|(p, o)| format!("  {} ({}): {}", p.label, p.args.join(" "), o.result))
        .collect();
    assert!(
        wrong.is_empty(),
        "the test process, in no session, was refused while a session ran:\n{}",
        wrong.join("\n")
    );
    refused
}

// ---------------------------------------------------------------------------------------
// The IP world: loopback servers, servers on this host's veth addresses, remote servers
// ---------------------------------------------------------------------------------------

/// Servers for the connect and send tests.
struct World {
    _ns: NetNs,
    /// On 127.0.0.1, ::1 and 127.0.0.2, TCP and UDP: the port the `loopback-service` rule
    /// names (for 127.0.0.1 and ::1 only).
    named: PortServers,
    /// On 127.0.0.1 and ::1: a port no rule names.
    unnamed: PortServers,
    /// On this host's own veth addresses, on a port inside the `mirrors` range.
    host: PortServers,
    /// In the namespace, on every address: TCP and UDP on [`IN_RANGE`] and [`OUT_OF_RANGE`].
    remote: Vec<(String, Server)>,
}

impl World {
    fn new() -> Self {
        let ns = NetNs::new(&[
            &format!("{SRV}/24"),
            &format!("{BLOCKED}/24"),
            &format!("{TCP_ONLY}/24"),
            &format!("{AUDITED}/24"),
            &format!("{SRV6}/64"),
            &format!("{BLOCKED6}/64"),
        ]);
        let mut remote = Vec::new();
        for port in [IN_RANGE, OUT_OF_RANGE] {
            // [::] takes IPv4 too (bindv6only is 0 in a new namespace).
            let any: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
            remote.push((
                format!("remote tcp {port}"),
                Server::tcp(tcp_listener(Some(&ns), any)),
            ));
            remote.push((
                format!("remote udp {port}"),
                Server::udp(udp_socket(Some(&ns), any)),
            ));
        }
        Self {
            named: PortServers::bind(&["127.0.0.1", "::1", "127.0.0.2"], ANY_PORT),
            unnamed: PortServers::bind(&["127.0.0.1", "::1"], ANY_PORT),
            host: PortServers::bind(&[HOST4, HOST6], 8000..=8100),
            remote,
            _ns: ns,
        }
    }

    /// The `[network]` section the IP tests share.
    fn network(&self, egress: &str) -> String {
        format!(
            r#"[network]
egress = "{egress}"

[[network.rule]]
name = "loopback-service"
action = "allow"
addresses = ["127.0.0.1", "::1"]
ports = [{named}]

[[network.rule]]
name = "mirrors"
action = "allow"
addresses = ["198.51.100.0/24", "2001:db8:a9::/64"]
ports = ["8000-8100"]

[[network.rule]]
name = "blocked-host"
action = "deny"
addresses = ["{BLOCKED}", "{BLOCKED6}"]

[[network.rule]]
name = "tcp-only-host"
action = "allow"
addresses = ["{TCP_ONLY}"]
ports = [{OUT_OF_RANGE}]
protocol = "tcp"

[[network.rule]]
name = "audited-net"
action = "audit"
addresses = ["203.0.113.0/24"]
"#,
            named = self.named.port
        )
    }

    /// Ports as strings, for probe arguments: (named, unnamed, host).
    fn ports(&self) -> (String, String, String) {
        (
            self.named.port.to_string(),
            self.unnamed.port.to_string(),
            self.host.port.to_string(),
        )
    }

    /// The server that a connection or datagram to `addr` `port` reaches.
    fn server_for(proto: &str, addr: &str, port: &str) -> String {
        let ip: IpAddr = addr.parse().expect("an IP address");
        let ip = match ip.to_canonical() {
            // The kernel takes the unspecified address as "this host", on loopback.
            IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let remote = REMOTE.iter().any(|r| r.parse::<IpAddr>().ok() == Some(ip));
        if remote {
            format!("remote {proto} {port}")
        } else {
            at(proto, &ip.to_string(), port)
        }
    }

    /// Where the probes that succeeded, and the outsiders, must have landed.
    fn deliveries(probes: &[P], outsiders: &[&P]) -> Deliveries {
        let mut map = Deliveries::new();
        let landed = probes.iter().filter(|p| p.results == ["ok"]);
        for (p, text) in landed.map(|p| (p, p.label.clone())).chain(
            outsiders
                .iter()
                .map(|p| (*p, format!("outsider-{}", p.label))),
        ) {
            if let Some((proto, addr, port)) = destination(p) {
                map.entry(Self::server_for(proto, addr, port))
                    .or_default()
                    .push(text);
            }
        }
        map
    }

    /// Stops every server: what each received, by name (`tcp 127.0.0.1:PORT`,
    /// `remote udp 8080`, ...).
    fn finish(self) -> Deliveries {
        let mut got = Deliveries::new();
        for servers in [self.named, self.unnamed, self.host] {
            got.extend(servers.finish());
        }
        for (name, server) in self.remote {
            got.insert(name, server.finish());
        }
        got
    }
}

/// Where a probe that sends its label sends it: (protocol, address, port).
fn destination(p: &P) -> Option<(&str, &str, &str)> {
    p.text_at?;
    let a: Vec<&str> = p.args.iter().map(String::as_str).collect();
    let sends = [
        "connect",
        "uring-connect",
        "sendto",
        "sendmsg",
        "uring-sendmsg",
    ];
    match a.as_slice() {
        [op, proto, addr, port, _] if sends.contains(op) => Some((proto, addr, port)),
        ["connected-sendto", proto, _, _, to, to_port, _] => Some((proto, to, to_port)),
        _ => None,
    }
}

/// `tcp 127.0.0.1:PORT` and the like, as [`PortServers::finish`] names its servers.
fn at(proto: &str, ip: &str, port: &str) -> String {
    let ip: IpAddr = ip.parse().expect("an IP address");
    format!(
        "{proto} {}",
        SocketAddr::new(ip, port.parse().expect("a port"))
    )
}

/// Connects and datagrams, TCP and UDP, IPv4, IPv6 and IPv4-mapped IPv6. Loopback only on
/// the named port of the named address (`::ffff:127.0.0.1` gets 127.0.0.1's answer), never
/// on another loopback address or this host's own addresses, even inside an allowed CIDR.
/// Remote destinations by CIDR and port range; a deny rule more specific than the allow; a
/// protocol-restricted rule; an audit rule that reports and allows. UDP without connect:
/// sendto(2), sendmsg(2) and IORING_OP_SENDMSG with an address are decided per datagram, and
/// so is a sendto(2) that overrides the peer of a connected socket. IORING_OP_CONNECT like
/// connect(2). No rule has `hosts`, so the resolver of /etc/resolv.conf, on loopback, is a
/// refused local destination: the session cannot resolve. Meanwhile the test process
/// reaches every refused destination, and resolves.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn connect_and_send_over_ipv4_ipv6_and_mapped_addresses() {
    let fx = Fixture::new("net-connect");
    let world = World::new();
    let (_resolv, _dns) = resolver(&fx);
    let (p, q, h) = world.ports();
    let (local, egress, blocked) = (
        rule::LOCAL_DESTINATION,
        rule::EGRESS_DEFAULT,
        "blocked-host",
    );
    let (i, o) = (IN_RANGE, OUT_OF_RANGE);
    let mut probes = Vec::new();
    for proto in ["tcp", "udp"] {
        let c = |addr: &str, port: &str| format!("connect {proto} {addr} {port} TEXT");
        probes.extend([
            ok(&format!("{proto}4"), &c("127.0.0.1", &p)),
            denied(
                &format!("{proto}4-unnamed-port"),
                &c("127.0.0.1", &q),
                local,
            ),
            ok(&format!("{proto}6"), &c("::1", &p)),
            denied(&format!("{proto}6-unnamed-port"), &c("::1", &q), local),
            ok(&format!("{proto}-mapped"), &c("::ffff:127.0.0.1", &p)),
            denied(
                &format!("{proto}-mapped-unnamed-port"),
                &c("::ffff:127.0.0.1", &q),
                local,
            ),
            denied(
                &format!("{proto}-other-loopback"),
                &c("127.0.0.2", &p),
                local,
            ),
            denied(&format!("{proto}-host-address"), &c(HOST4, &h), local),
            denied(&format!("{proto}6-host-address"), &c(HOST6, &h), local),
            ok(&format!("{proto}-remote"), &c(SRV, &i.to_string())),
            denied(
                &format!("{proto}-remote-port"),
                &c(SRV, &o.to_string()),
                egress,
            ),
            denied(
                &format!("{proto}-remote-blocked"),
                &c(BLOCKED, &i.to_string()),
                blocked,
            ),
            ok(&format!("{proto}6-remote"), &c(SRV6, &i.to_string())),
            denied(
                &format!("{proto}6-remote-port"),
                &c(SRV6, &o.to_string()),
                egress,
            ),
            denied(
                &format!("{proto}6-remote-blocked"),
                &c(BLOCKED6, &i.to_string()),
                blocked,
            ),
            ok(
                &format!("{proto}-mapped-remote"),
                &c(&format!("::ffff:{SRV}"), &i.to_string()),
            ),
            denied(
                &format!("{proto}-mapped-remote-blocked"),
                &c(&format!("::ffff:{BLOCKED}"), &i.to_string()),
                blocked,
            ),
        ]);
    }
    probes.extend([
        ok("tcp-only-host", &format!("connect tcp {TCP_ONLY} {o} TEXT")),
        denied(
            "udp-tcp-only-host",
            &format!("connect udp {TCP_ONLY} {o} TEXT"),
            egress,
        ),
        audited(
            "tcp-audited",
            &format!("connect tcp {AUDITED} {i} TEXT"),
            "audited-net",
        ),
        audited(
            "udp-audited",
            &format!("connect udp {AUDITED} {o} TEXT"),
            "audited-net",
        ),
        ok(
            "uring-tcp-remote",
            &format!("uring-connect tcp {SRV} {i} TEXT"),
        ),
        denied(
            "uring-tcp-remote-blocked",
            &format!("uring-connect tcp {BLOCKED} {i} TEXT"),
            blocked,
        ),
        denied(
            "uring-udp-unnamed-port",
            &format!("uring-connect udp 127.0.0.1 {q} TEXT"),
            local,
        ),
        // Datagrams that name their destination.
        ok("sendto4", &format!("sendto udp 127.0.0.1 {p} TEXT")),
        denied(
            "sendto4-unnamed-port",
            &format!("sendto udp 127.0.0.1 {q} TEXT"),
            local,
        ),
        ok("sendto6", &format!("sendto udp ::1 {p} TEXT")),
        denied(
            "sendto6-unnamed-port",
            &format!("sendto udp ::1 {q} TEXT"),
            local,
        ),
        ok(
            "sendto-mapped",
            &format!("sendto udp ::ffff:127.0.0.1 {p} TEXT"),
        ),
        denied(
            "sendto-mapped-unnamed-port",
            &format!("sendto udp ::ffff:127.0.0.1 {q} TEXT"),
            local,
        ),
        denied(
            "sendto-host-address",
            &format!("sendto udp {HOST4} {h} TEXT"),
            local,
        ),
        ok("sendto-remote", &format!("sendto udp {SRV} {i} TEXT")),
        denied(
            "sendto-remote-port",
            &format!("sendto udp {SRV} {o} TEXT"),
            egress,
        ),
        denied(
            "sendto-remote-blocked",
            &format!("sendto udp {BLOCKED} {i} TEXT"),
            blocked,
        ),
        ok("sendto6-remote", &format!("sendto udp {SRV6} {i} TEXT")),
        denied(
            "sendto6-remote-blocked",
            &format!("sendto udp {BLOCKED6} {i} TEXT"),
            blocked,
        ),
        ok("sendmsg-remote", &format!("sendmsg udp {SRV} {i} TEXT")),
        denied(
            "sendmsg-remote-blocked",
            &format!("sendmsg udp {BLOCKED} {i} TEXT"),
            blocked,
        ),
        ok(
            "uring-sendmsg-remote",
            &format!("uring-sendmsg udp {SRV} {i} TEXT"),
        ),
        denied(
            "uring-sendmsg-blocked",
            &format!("uring-sendmsg udp {BLOCKED} {i} TEXT"),
            blocked,
        ),
        denied(
            "connected-sendto-blocked",
            &format!("connected-sendto udp {SRV} {i} {BLOCKED} {i} TEXT"),
            blocked,
        ),
        ok(
            "connected-sendto-loopback",
            &format!("connected-sendto udp {SRV} {i} 127.0.0.1 {p} TEXT"),
        ),
        audited(
            "sendto-audited",
            &format!("sendto udp {AUDITED} {o} TEXT"),
            "audited-net",
        ),
    ]);
    // No rule has `hosts`: the resolver on loopback is not reachable (THREATS.md: DNS to a
    // resolver that is not allowed).
    probes.extend(dns_refused());
    let mut run = Run::script(&fx, script(&fx, &probes).pause())
        .policy(&policy("enforce", &world.network("deny")))
        .start();
    run.wait_for_pause();
    let outside = outsiders(&fx, &probes);
    fx.outsider(&["resolve", GIT]).assert_ok();
    let s = run.finish();

    assert_probes(&s, &probes, vec![lookup_refused(&s)]);
    assert_servers(world.finish(), World::deliveries(&probes, &outside));
}

/// A port free for TCP and UDP on every address at this moment.
fn free_port() -> u16 {
    for _ in 0..20 {
        // [::] takes IPv4 too: free there is free on 0.0.0.0.
        let tcp =
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("bind a TCP listener on [::]:0");
        let port = tcp.local_addr().expect("listener address").port();
        if UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// bind(2) to loopback addresses is allowed; to 0.0.0.0, ::, ::ffff:0.0.0.0 or an address
/// of this host it is refused, as is listen(2) on a socket never bound; an
/// `access = "listen"` rule allows 0.0.0.0 on its port, and only there. The test process
/// may listen anywhere meanwhile.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn bind_and_listen() {
    let fx = Fixture::new("net-listen");
    let _ns = NetNs::new(&[]);
    let (l, other) = (free_port(), free_port());
    let network = format!(
        r#"[network]
egress = "deny"

[[network.rule]]
name = "public-listener"
action = "allow"
access = "listen"
addresses = ["0.0.0.0"]
ports = [{l}]
"#
    );
    let refused = rule::LISTEN_NOT_ALLOWED;
    let probes = [
        ok("bind-loopback4", "bind tcp 127.0.0.1 0"),
        ok("bind-loopback6", "bind tcp ::1 0"),
        ok("bind-loopback-mapped", "bind tcp ::ffff:127.0.0.1 0"),
        ok("bind-loopback-other", "bind tcp 127.0.0.5 0"),
        ok("bind-udp-loopback", "bind udp 127.0.0.1 0"),
        ok("listen-loopback4", "listen 127.0.0.1 0"),
        ok("listen-loopback6", "listen ::1 0"),
        denied("bind-any4", "bind tcp 0.0.0.0 0", refused),
        denied("bind-any6", "bind tcp :: 0", refused),
        denied("bind-any-mapped", "bind tcp ::ffff:0.0.0.0 0", refused),
        denied("bind-udp-any4", "bind udp 0.0.0.0 0", refused),
        denied("bind-udp-any6", "bind udp :: 0", refused),
        denied("bind-host-address", &format!("bind tcp {HOST4} 0"), refused),
        denied(
            "bind-host-address6",
            &format!("bind udp {HOST6} 0"),
            refused,
        ),
        denied(
            "listen-any4-other-port",
            &format!("listen 0.0.0.0 {other}"),
            refused,
        )
        .results(&["bind:EPERM"]),
        denied("listen-unbound4", "listen-unbound 4", refused),
        denied("listen-unbound6", "listen-unbound 6", refused),
        ok("listen-rule", &format!("listen 0.0.0.0 {l}")),
        ok("bind-udp-rule", &format!("bind udp 0.0.0.0 {l}")),
        // The rule names 0.0.0.0, not ::, though [::] would take IPv4 connections too.
        denied("listen-rule-v6", &format!("listen :: {l}"), refused).results(&["bind:EPERM"]),
    ];
    let mut run = Run::script(&fx, script(&fx, &probes).pause())
        .policy(&policy("enforce", &network))
        .start();
    run.wait_for_pause();
    outsiders(&fx, &probes);
    let s = run.finish();

    assert_probes(&s, &probes, Vec::new());
}

/// Unix sockets under `root/run`, each with a server: streams and datagrams by path,
/// abstract streams and datagrams by name (without the `@`).
struct UnixWorld {
    run: PathBuf,
    servers: Vec<(String, Server)>,
}

impl UnixWorld {
    fn new(fx: &Fixture, streams: &[&str], dgrams: &[&str]) -> Self {
        let run = fx.mkdir("run");
        let mut servers = Vec::new();
        for name in streams {
            let path = run.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
            }
            servers.push((name.to_string(), unix_stream(&path)));
        }
        for name in dgrams {
            servers.push((name.to_string(), unix_dgram(&run.join(name))));
        }
        Self { run, servers }
    }

    fn abstract_stream(mut self, name: &str) -> Self {
        self.servers
            .push((format!("@{name}"), abstract_stream(name)));
        self
    }

    fn abstract_dgram(mut self, name: &str) -> Self {
        self.servers
            .push((format!("@{name}"), abstract_dgram(name)));
        self
    }

    fn seqpacket(mut self, name: &str) -> Self {
        let server = Server::unix_seqpacket(&self.run.join(name));
        self.servers.push((name.to_owned(), server));
        self
    }

    fn path(&self, name: &str) -> String {
        self.run.join(name).display().to_string()
    }

    fn finish(self) -> Deliveries {
        self.servers
            .into_iter()
            .map(|(name, s)| (name, s.finish()))
            .collect()
    }
}

/// An abstract name private to this test process.
fn abstract_name(what: &str) -> String {
    format!("agk-{}-{what}", std::process::id())
}

/// Unix sockets. A docker-like stream socket denied by a rule, through its path and through
/// a symlink, a hard link, a bind mount and /proc/self/root; a permitted one allowed; a
/// seqpacket one denied; datagrams to a denied path refused, sent or connected;
/// /dev/log-style datagrams to an allowed path delivered; abstract sockets refused unless
/// named, and a named one allowed; socketpair untouched. Rules are walked like filesystem
/// rules: a rule on a directory covers the sockets below it, a rule on a socket inside it is
/// nearer and wins, a name pattern covers every matching socket below its tree. Meanwhile
/// the test process reaches the refused ones.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn unix_sockets_by_path_alias_and_abstract_name() {
    let fx = Fixture::new("net-unix");
    let (free, named, blocked, free_dgram) = (
        abstract_name("free"),
        abstract_name("named"),
        abstract_name("blocked"),
        abstract_name("free-dgram"),
    );
    let world = UnixWorld::new(
        &fx,
        &[
            "docker.sock",
            "allowed.sock",
            "locked/private.sock",
            "locked/public.sock",
            "locked/deeper/inner.sock",
            "svc/app.ctl",
            "svc/app.sock",
        ],
        &["dgram-denied.sock", "log.sock"],
    )
    .seqpacket("seqpacket.sock")
    .abstract_stream(&free)
    .abstract_stream(&named)
    .abstract_stream(&blocked)
    .abstract_dgram(&free_dgram);
    let docker = world.path("docker.sock");
    fx.symlink(&world.run.join("docker.sock"), "ws/docker-symlink.sock");
    fx.hard_link("run/docker.sock", "ws/docker-hardlink.sock");
    fx.mkdir("ws/mnt");
    fx.bind_mount("run", "ws/mnt");
    let network = format!(
        r#"[network]
egress = "deny"

[[network.rule]]
name = "no-docker"
action = "deny"
unix = ["{docker}", "{dgram}", "{seqpacket}", "{absent}?", "@{blocked}"]

[[network.rule]]
name = "named-abstract"
action = "allow"
unix = ["@{named}"]

[[network.rule]]
name = "locked-dir"
action = "deny"
unix = ["{locked}"]

[[network.rule]]
name = "public-socket"
action = "allow"
unix = ["{locked}/public.sock"]

[[network.rule]]
name = "control-sockets"
action = "deny"
unix = ["{run}/**/*.ctl"]
"#,
        dgram = world.path("dgram-denied.sock"),
        seqpacket = world.path("seqpacket.sock"),
        absent = world.path("absent/containerd.sock"),
        locked = world.path("locked"),
        run = world.run.display(),
    );
    let (ws, abstract_rule) = (fx.s("ws"), rule::ABSTRACT_UNIX);
    let only_docker = std::slice::from_ref(&docker);
    let c = |name: &str| format!("unix-connect {} TEXT", world.path(name));
    let probes = [
        denied("docker", &c("docker.sock"), "no-docker"),
        denied(
            "docker-symlink",
            &format!("unix-connect {ws}/docker-symlink.sock TEXT"),
            "no-docker",
        )
        .socket_paths(only_docker),
        // A hard link is the same file under another name: either name is the file's.
        denied(
            "docker-hardlink",
            &format!("unix-connect {ws}/docker-hardlink.sock TEXT"),
            "no-docker",
        )
        .socket_paths(&[docker.clone(), format!("{ws}/docker-hardlink.sock")]),
        denied(
            "docker-bind-mount",
            &format!("unix-connect {ws}/mnt/docker.sock TEXT"),
            "no-docker",
        )
        .socket_paths(&[docker.clone(), format!("{ws}/mnt/docker.sock")]),
        denied(
            "docker-proc-root",
            &format!("unix-connect /proc/self/root{docker} TEXT"),
            "no-docker",
        )
        .socket_paths(only_docker),
        ok("allowed", &c("allowed.sock")),
        denied(
            "seqpacket",
            &format!(
                "unix-seqpacket-connect {} TEXT",
                world.path("seqpacket.sock")
            ),
            "no-docker",
        ),
        denied(
            "dgram-denied",
            &format!("unix-sendto {} TEXT", world.path("dgram-denied.sock")),
            "no-docker",
        ),
        denied(
            "dgram-connect-denied",
            &format!(
                "unix-dgram-connect {} TEXT",
                world.path("dgram-denied.sock")
            ),
            "no-docker",
        )
        .results(&["connect:EPERM", "EPERM"]),
        ok(
            "log",
            &format!("unix-sendto {} TEXT", world.path("log.sock")),
        ),
        ok(
            "log-connected",
            &format!("unix-dgram-connect {} TEXT", world.path("log.sock")),
        ),
        denied(
            "abstract-unnamed",
            &format!("unix-connect @{free} TEXT"),
            abstract_rule,
        ),
        ok("abstract-named", &format!("unix-connect @{named} TEXT")),
        denied(
            "abstract-denied-by-rule",
            &format!("unix-connect @{blocked} TEXT"),
            "no-docker",
        ),
        denied(
            "abstract-dgram",
            &format!("unix-sendto @{free_dgram} TEXT"),
            abstract_rule,
        ),
        ok("socketpair", "socketpair"),
        denied("locked-private", &c("locked/private.sock"), "locked-dir"),
        ok("locked-public", &c("locked/public.sock")),
        denied(
            "locked-deeper",
            &c("locked/deeper/inner.sock"),
            "locked-dir",
        ),
        denied("control", &c("svc/app.ctl"), "control-sockets"),
        ok("app", &c("svc/app.sock")),
    ];
    let mut run = Run::script(&fx, script(&fx, &probes).pause())
        .policy(&policy("enforce", &network))
        .start();
    run.wait_for_pause();
    outsiders(&fx, &probes);
    let s = run.finish();

    assert_probes(&s, &probes, Vec::new());
    let o = |label: &str| format!("outsider-{label}");
    let (docker_o, symlink_o, hard_o, bind_o, proc_o) = (
        o("docker"),
        o("docker-symlink"),
        o("docker-hardlink"),
        o("docker-bind-mount"),
        o("docker-proc-root"),
    );
    let (dgram_o, dgram_connect_o) = (o("dgram-denied"), o("dgram-connect-denied"));
    let (seq_o, free_o, blocked_o, free_dgram_o) = (
        o("seqpacket"),
        o("abstract-unnamed"),
        o("abstract-denied-by-rule"),
        o("abstract-dgram"),
    );
    let (private_o, deeper_o, control_o) = (o("locked-private"), o("locked-deeper"), o("control"));
    assert_servers(
        world.finish(),
        deliveries(&[
            (
                "docker.sock".into(),
                &[&docker_o, &symlink_o, &hard_o, &bind_o, &proc_o],
            ),
            ("allowed.sock".into(), &["allowed"]),
            ("seqpacket.sock".into(), &[&seq_o]),
            ("dgram-denied.sock".into(), &[&dgram_o, &dgram_connect_o]),
            ("log.sock".into(), &["log", "log-connected"]),
            (format!("@{free}"), &[&free_o]),
            (format!("@{named}"), &["abstract-named"]),
            (format!("@{blocked}"), &[&blocked_o]),
            (format!("@{free_dgram}"), &[&free_dgram_o]),
            ("locked/private.sock".into(), &[&private_o]),
            ("locked/public.sock".into(), &["locked-public"]),
            ("locked/deeper/inner.sock".into(), &[&deeper_o]),
            ("svc/app.ctl".into(), &[&control_o]),
            ("svc/app.sock".into(), &["app"]),
        ]),
    );
}

// ---------------------------------------------------------------------------------------
// Hostname rules against dnsmasq
// ---------------------------------------------------------------------------------------

const GIT: &str = "git.example.test";
const BLOCKED_NAME: &str = "blocked.example.test";
const GIT_V1: &str = "203.0.113.10";
const GIT_V2: &str = "203.0.113.11";
const GIT6_V1: &str = "2001:db8:a9::10";
const GIT6_V2: &str = "2001:db8:a9::11";
const UNLISTED: &str = "203.0.113.12";
const BLOCKED_BY_NAME: &str = "198.51.100.77";

fn zone(git4: &str, git6: &str) -> String {
    format!("{git4} {GIT}\n{git6} {GIT}\n{BLOCKED_BY_NAME} {BLOCKED_NAME}\n")
}

/// The resolver world: a namespace holding both generations of the name's addresses, web
/// servers there, /etc/resolv.conf naming 127.0.0.1 and dnsmasq answering on it.
struct DnsWorld {
    dns: Dnsmasq,
    _resolv: ResolvConf,
    _ns: NetNs,
    servers: Vec<(String, Server)>,
}

impl DnsWorld {
    fn new(fx: &Fixture) -> Self {
        let ns = NetNs::new(&[
            &format!("{GIT_V1}/24"),
            &format!("{GIT_V2}/24"),
            &format!("{UNLISTED}/24"),
            &format!("{BLOCKED_BY_NAME}/24"),
            &format!("{GIT6_V1}/64"),
            &format!("{GIT6_V2}/64"),
        ]);
        let any = |port: u16| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let servers = vec![
            (
                "remote tcp 80".to_owned(),
                Server::tcp(tcp_listener(Some(&ns), any(80))),
            ),
            (
                "remote tcp 8080".to_owned(),
                Server::tcp(tcp_listener(Some(&ns), any(8080))),
            ),
            (
                "remote udp 80".to_owned(),
                Server::udp(udp_socket(Some(&ns), any(80))),
            ),
        ];
        let (resolv, dns) = resolver(fx);
        Self {
            dns,
            _resolv: resolv,
            _ns: ns,
            servers,
        }
    }

    /// What each server received, leaving out the polling probes' connections.
    fn finish(self) -> Deliveries {
        self.servers
            .into_iter()
            .map(|(name, s)| {
                let got = s.finish().into_iter().filter(|t| t != "poll").collect();
                (name, got)
            })
            .collect()
    }
}

/// /etc/resolv.conf naming 127.0.0.1, and dnsmasq there serving the first zone.
fn resolver(fx: &Fixture) -> (ResolvConf, Dnsmasq) {
    let resolv = ResolvConf::point_at(&fx.root, "127.0.0.1");
    let dns = Dnsmasq::start(&fx.root, &zone(GIT_V1, GIT6_V1), (GIT, GIT_V1));
    (resolv, dns)
}

/// Lookups and DNS connects of a session whose policy has no hostname rule: the resolver of
/// /etc/resolv.conf (127.0.0.1) is then a local destination like any other, refused.
fn dns_refused() -> Vec<P> {
    let local = rule::LOCAL_DESTINATION;
    vec![
        probe("resolve", &format!("resolve {GIT}"), "EAI_AGAIN", None).results(&[
            "EAI_AGAIN",
            "EAI_NONAME",
            "EAI_FAIL",
            "EAI_NODATA",
        ]),
        denied("dns-udp", "connect udp 127.0.0.1 53", local),
        denied("dns-tcp", "connect tcp 127.0.0.1 53", local),
    ]
}

/// The refusals of the `resolve` probe of [`dns_refused`]: glibc's resolver connects a UDP
/// socket to each nameserver, and may try again.
fn lookup_refused(s: &Session) -> Net {
    let ev = Ev {
        decision: "deny",
        rule: rule::LOCAL_DESTINATION.to_owned(),
        hostname: None,
        socket_paths: None,
    };
    let by = s.outcome("resolve");
    let mut lookup =
        Net::new("resolve", by, &ev).ip(&["connect", "send"], "udp", "127.0.0.1", "53");
    lookup.count = Count::AtLeastOne;
    lookup
}

/// Panics unless `label` resolved to all of `present` and none of `absent`.
fn assert_resolved(s: &Session, label: &str, present: &[&str], absent: &[&str], log: &str) {
    let found = s.detail(label, "addresses").unwrap_or_default();
    let found: Vec<&str> = found.split(',').collect();
    for want in present {
        assert!(
            found.contains(want),
            "`{label}` should have resolved {GIT} to {want}; it found {found:?}\n\
             dnsmasq log:\n{log}"
        );
    }
    for old in absent {
        assert!(
            !found.contains(old),
            "`{label}` should no longer find {old} for {GIT}; it found {found:?}"
        );
    }
}

/// glibc's getaddrinfo sorts several answers (RFC 6724) by connecting a UDP socket to each,
/// on the lookup's port (0 without a service), to learn its source address; nothing is
/// sent. Where the policy allows the name for TCP only, each of those connects is refused
/// and reported. They are tolerated here (at most one per address), not required.
fn sorting_connects(s: &Session, label: &str, addresses: &[&str], port: &str) -> Vec<Net> {
    let Some(by) = s.outcome_opt(label) else {
        return Vec::new();
    };
    let ev = Ev {
        decision: "deny",
        rule: rule::EGRESS_DEFAULT.to_owned(),
        hostname: None,
        socket_paths: None,
    };
    addresses
        .iter()
        .map(|addr| {
            let mut n = Net::new(label, &by, &ev).ip(&["connect"], "udp", addr, port);
            n.count = Count::AtMostOne;
            n.by_address = true;
            n
        })
        .collect()
}

/// A hostname rule against a real resolver: the session resolves the name (DNS to the
/// resolver of /etc/resolv.conf allowed by the generated `dns-resolvers` rule, on port 53
/// only), connects to its A and AAAA addresses (and the mapped form) on the rule's port and
/// protocol, and not to another address, port or protocol. A deny `hosts` rule's address is
/// refused with the hostname in the event. When the name moves to new addresses (dnsmasq
/// reloaded, TTL 2 s), agent-guard follows: the new addresses become allowed, the old ones
/// refused. The test process reaches an address no rule names meanwhile.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn hostname_rules_follow_a_real_resolver() {
    let fx = Fixture::new("net-dns");
    let mut world = DnsWorld::new(&fx);
    let network = format!(
        r#"[network]
egress = "deny"

[[network.rule]]
name = "git-hosts"
action = "allow"
hosts = ["{GIT}"]
ports = [80]
protocol = "tcp"

[[network.rule]]
name = "blocked-hosts"
action = "deny"
hosts = ["{BLOCKED_NAME}"]
"#
    );
    let (local, egress) = (rule::LOCAL_DESTINATION, rule::EGRESS_DEFAULT);
    let before = [
        ok("resolve", &format!("resolve {GIT}")),
        ok("connect-name", &format!("connect-name tcp {GIT} 80 TEXT")),
        ok("git4", &format!("connect tcp {GIT_V1} 80 TEXT")),
        ok("git6", &format!("connect tcp {GIT6_V1} 80 TEXT")),
        ok(
            "git-mapped",
            &format!("connect tcp ::ffff:{GIT_V1} 80 TEXT"),
        ),
        denied(
            "git-other-port",
            &format!("connect tcp {GIT_V1} 8080 TEXT"),
            egress,
        ),
        denied("git-udp", &format!("connect udp {GIT_V1} 80 TEXT"), egress),
        denied(
            "unlisted",
            &format!("connect tcp {UNLISTED} 80 TEXT"),
            egress,
        ),
        denied("not-yet", &format!("connect tcp {GIT_V2} 80 TEXT"), egress),
        denied(
            "blocked",
            &format!("connect tcp {BLOCKED_BY_NAME} 80 TEXT"),
            "blocked-hosts",
        )
        .hostname(BLOCKED_NAME),
        ok("dns-udp", "connect udp 127.0.0.1 53"),
        ok("dns-tcp", "connect tcp 127.0.0.1 53"),
        denied("dns-other-port", "connect udp 127.0.0.1 54 TEXT", local),
    ];
    // After the move: poll until agent-guard has followed (new allowed, old refused) for
    // both families, for at most a minute; what is checked is what the probes after the
    // loop get. The A and AAAA answers come from two queries, which may straddle the
    // resolver's reload of its records, so one family can follow a refresh later.
    let poll = format!(
        r#"i=0
while :; do
  printf 'poll-new '; "$P" connect tcp {GIT_V2} 80 poll; new=$?
  printf 'poll-old '; "$P" connect tcp {GIT_V1} 80 poll; old=$?
  printf 'poll6-new '; "$P" connect tcp {GIT6_V2} 80 poll; new6=$?
  printf 'poll6-old '; "$P" connect tcp {GIT6_V1} 80 poll; old6=$?
  if [ "$new" -eq 0 ] && [ "$old" -eq 1 ] && [ "$new6" -eq 0 ] && [ "$old6" -eq 1 ]; then break; fi
  i=$((i+1)); if [ "$i" -ge 60 ]; then echo poll-gave-up; break; fi
  sleep 1
done"#
    );
    let after = [
        ok("git4-new", &format!("connect tcp {GIT_V2} 80 TEXT")),
        denied("git4-old", &format!("connect tcp {GIT_V1} 80 TEXT"), egress),
        ok("git6-new", &format!("connect tcp {GIT6_V2} 80 TEXT")),
        denied(
            "git6-old",
            &format!("connect tcp {GIT6_V1} 80 TEXT"),
            egress,
        ),
        ok("resolve-new", &format!("resolve {GIT}")),
        ok(
            "connect-name-new",
            &format!("connect-name tcp {GIT} 80 TEXT"),
        ),
    ];
    let script = add(script(&fx, &before).pause().sh(&poll), &after);
    let mut run = Run::script(&fx, script)
        .policy(&policy("enforce", &network))
        .start();
    run.wait_for_pause();
    world.dns.set_hosts(&zone(GIT_V2, GIT6_V2), (GIT, GIT_V2));
    fx.outsider(&["connect", "tcp", UNLISTED, "80", "outsider-unlisted"])
        .assert_ok();
    let s = run.finish();

    let log = world.dns.log();
    assert!(
        !s.stdout.contains("poll-gave-up"),
        "a minute after {GIT} moved from {GIT_V1} to {GIT_V2} (TTL {} s), the session still \
         could not connect to the new address or still could to the old one; stdout:\n{}\n\
         events:\n{}\ndnsmasq log:\n{log}",
        Dnsmasq::TTL,
        s.stdout,
        event_lines(&s.log.decisions)
    );
    let mut tolerated: Vec<Net> = [
        ("poll-new", GIT_V2),
        ("poll-old", GIT_V1),
        ("poll6-new", GIT6_V2),
        ("poll6-old", GIT6_V1),
    ]
    .into_iter()
    .flat_map(|(label, addr)| {
        s.all(label).into_iter().map(move |by| {
            let ev = Ev {
                decision: "deny",
                rule: rule::EGRESS_DEFAULT.to_owned(),
                hostname: None,
                socket_paths: None,
            };
            let mut n = Net::new(label, &by, &ev).ip(&["connect"], "tcp", addr, "80");
            n.count = Count::AtMostOne;
            n
        })
    })
    .collect();
    for (label, port, addresses) in [
        ("resolve", "0", [GIT_V1, GIT6_V1]),
        ("connect-name", "80", [GIT_V1, GIT6_V1]),
        ("resolve-new", "0", [GIT_V2, GIT6_V2]),
        ("connect-name-new", "80", [GIT_V2, GIT6_V2]),
    ] {
        tolerated.extend(sorting_connects(&s, label, &addresses, port));
    }
    let all: Vec<P> = before.iter().chain(&after).cloned().collect();
    assert_probes(&s, &all, tolerated);
    assert_resolved(&s, "resolve", &[GIT_V1, GIT6_V1], &[], &log);
    assert_resolved(
        &s,
        "resolve-new",
        &[GIT_V2, GIT6_V2],
        &[GIT_V1, GIT6_V1],
        &log,
    );
    for (label, want) in [
        ("connect-name", [GIT_V1, GIT6_V1]),
        ("connect-name-new", [GIT_V2, GIT6_V2]),
    ] {
        let used = s.detail(label, "address").unwrap_or_default();
        assert!(
            want.contains(&used.as_str()),
            "`{label}` connected to {used:?}, expected one of {want:?}"
        );
    }
    assert_servers(
        world.finish(),
        deliveries(&[(
            "remote tcp 80".into(),
            &[
                "connect-name",
                "git4",
                "git6",
                "git-mapped",
                "outsider-unlisted",
                "git4-new",
                "git6-new",
                "connect-name-new",
            ],
        )]),
    );
}

// ---------------------------------------------------------------------------------------
// What egress = "allow" does not open; audit mode
// ---------------------------------------------------------------------------------------

/// What `egress = "allow"` opens and what it does not. Unnamed remote destinations are
/// reachable without a report, but deny rules still refuse; loopback is still no free pass
/// (an unnamed port, another loopback address, this host's own addresses, and 0.0.0.0 / ::
/// which reach loopback listeners are refused as local destinations), except the resolver
/// of /etc/resolv.conf on port 53 (the generated `dns-resolvers` rule), so the session
/// resolves. Raw and packet sockets cannot be created, by socket(2) or IORING_OP_SOCKET,
/// nor SCTP ones (`unchecked-protocol`), while netlink, ICMP datagram ("ping"), TCP, UDP
/// and unix sockets can. The test process does all of it meanwhile.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn egress_allow_still_refuses_local_destinations_raw_sockets_and_deny_rules() {
    let fx = Fixture::new("net-egress-allow");
    let world = World::new();
    let (_resolv, _dns) = resolver(&fx);
    // Unprivileged ICMP sockets are off by default (range "1 0"); root's group may use them.
    let _ping = Sysctl::set("net.ipv4.ping_group_range", "0 0");
    // The test process creates SCTP sockets too; load the protocol rather than count on the
    // kernel loading it on demand.
    load_module("sctp");
    let (p, q, h) = world.ports();
    let (local, raw) = (rule::LOCAL_DESTINATION, rule::RAW_SOCKET);
    let (i, o) = (IN_RANGE, OUT_OF_RANGE);
    let probes = [
        ok(
            "tcp-remote-any-port",
            &format!("connect tcp {SRV} {o} TEXT"),
        ),
        ok(
            "udp6-remote-any-port",
            &format!("connect udp {SRV6} {o} TEXT"),
        ),
        ok(
            "sendto-remote-any-port",
            &format!("sendto udp {SRV} {o} TEXT"),
        ),
        denied(
            "tcp-remote-blocked",
            &format!("connect tcp {BLOCKED} {i} TEXT"),
            "blocked-host",
        ),
        ok("tcp4", &format!("connect tcp 127.0.0.1 {p} TEXT")),
        denied(
            "tcp4-unnamed-port",
            &format!("connect tcp 127.0.0.1 {q} TEXT"),
            local,
        ),
        denied(
            "udp-other-loopback",
            &format!("connect udp 127.0.0.2 {p} TEXT"),
            local,
        ),
        denied(
            "tcp-any-address",
            &format!("connect tcp 0.0.0.0 {p} TEXT"),
            local,
        ),
        denied(
            "tcp6-any-address",
            &format!("connect tcp :: {p} TEXT"),
            local,
        ),
        denied(
            "tcp-host-address",
            &format!("connect tcp {HOST4} {h} TEXT"),
            local,
        ),
        denied(
            "sendto-unnamed-port",
            &format!("sendto udp 127.0.0.1 {q} TEXT"),
            local,
        ),
        denied(
            "sendto6-host-address",
            &format!("sendto udp {HOST6} {h} TEXT"),
            local,
        ),
        denied("raw4", "socket raw4", raw),
        denied("raw6", "socket raw6", raw),
        denied("packet", "socket packet", raw),
        denied("packet-dgram", "socket packet-dgram", raw),
        denied("uring-raw4", "uring-socket raw4", raw),
        denied("uring-packet", "uring-socket packet", raw),
        denied("sctp4", "socket sctp4", rule::UNCHECKED_PROTOCOL),
        denied("sctp6", "socket sctp6", rule::UNCHECKED_PROTOCOL),
        ok("netlink", "socket netlink"),
        ok("uring-netlink", "uring-socket netlink"),
        ok("ping", "socket ping"),
        ok("ping6", "socket ping6"),
        ok("tcp4-socket", "socket tcp4"),
        ok("tcp6-socket", "socket tcp6"),
        ok("udp4-socket", "socket udp4"),
        ok("udp6-socket", "socket udp6"),
        ok("unix-socket", "socket unix"),
    ];
    let probes: Vec<P> = probes
        .into_iter()
        .chain([
            // One address: getaddrinfo has nothing to sort, so it connects nowhere else.
            ok("resolve", &format!("resolve {BLOCKED_NAME}")),
            ok("dns-udp", "connect udp 127.0.0.1 53"),
            ok("dns-tcp", "connect tcp 127.0.0.1 53"),
            denied("dns-other-port", "connect udp 127.0.0.1 54", local),
        ])
        .collect();
    let mut run = Run::script(&fx, script(&fx, &probes).pause())
        .policy(&policy("enforce", &world.network("allow")))
        .start();
    run.wait_for_pause();
    let outside = outsiders(&fx, &probes);
    fx.outsider(&["resolve", GIT]).assert_ok();
    let s = run.finish();

    assert_probes(&s, &probes, Vec::new());
    let found = s.detail("resolve", "addresses");
    assert_eq!(
        found.as_deref(),
        Some(BLOCKED_BY_NAME),
        "what the session resolved {BLOCKED_NAME} to"
    );
    assert_servers(world.finish(), World::deliveries(&probes, &outside));
}

/// Audit mode: one refusal of each kind (local destination, egress default, deny rule, UDP
/// datagram, bind, listen, a docker socket, an abstract socket, raw and packet sockets) is
/// allowed, reaches its server, and is reported with decision `audit` and the rule that
/// would have refused it; what is allowed is not reported.
#[test]
#[ignore = "kernel tier: needs BPF LSM, run by `cargo xtask test` inside VMs"]
fn audit_mode_allows_and_reports() {
    let fx = Fixture::new("net-audit");
    let world = World::new();
    let free = abstract_name("free");
    let unix = UnixWorld::new(&fx, &["docker.sock"], &[]).abstract_stream(&free);
    let (p, q, h) = world.ports();
    let (local, egress, listen) = (
        rule::LOCAL_DESTINATION,
        rule::EGRESS_DEFAULT,
        rule::LISTEN_NOT_ALLOWED,
    );
    let (i, o) = (IN_RANGE, OUT_OF_RANGE);
    let probes = [
        ok("tcp4", &format!("connect tcp 127.0.0.1 {p} TEXT")),
        audited(
            "tcp4-unnamed-port",
            &format!("connect tcp 127.0.0.1 {q} TEXT"),
            local,
        ),
        audited(
            "tcp6-unnamed-port",
            &format!("connect tcp ::1 {q} TEXT"),
            local,
        ),
        audited(
            "tcp-mapped-unnamed-port",
            &format!("connect tcp ::ffff:127.0.0.1 {q} TEXT"),
            local,
        ),
        audited(
            "sendto-unnamed-port",
            &format!("sendto udp 127.0.0.1 {q} TEXT"),
            local,
        ),
        audited(
            "tcp-host-address",
            &format!("connect tcp {HOST4} {h} TEXT"),
            local,
        ),
        audited(
            "tcp-remote-port",
            &format!("connect tcp {SRV} {o} TEXT"),
            egress,
        ),
        audited(
            "tcp-remote-blocked",
            &format!("connect tcp {BLOCKED} {i} TEXT"),
            "blocked-host",
        ),
        audited(
            "tcp6-remote-blocked",
            &format!("connect tcp {BLOCKED6} {i} TEXT"),
            "blocked-host",
        ),
        audited(
            "sendto-remote-blocked",
            &format!("sendto udp {BLOCKED} {i} TEXT"),
            "blocked-host",
        ),
        audited(
            "tcp-audited",
            &format!("connect tcp {AUDITED} {i} TEXT"),
            "audited-net",
        ),
        audited("bind-any4", "bind tcp 0.0.0.0 0", listen),
        audited("listen-unbound", "listen-unbound", listen),
        audited(
            "docker",
            &format!("unix-connect {} TEXT", unix.path("docker.sock")),
            "no-docker",
        ),
        audited(
            "abstract-unnamed",
            &format!("unix-connect @{free} TEXT"),
            rule::ABSTRACT_UNIX,
        ),
        audited("raw4", "socket raw4", rule::RAW_SOCKET),
        audited("packet", "socket packet", rule::RAW_SOCKET),
    ];
    let network = format!(
        "{}\n[[network.rule]]\nname = \"no-docker\"\naction = \"deny\"\nunix = [\"{}\"]\n",
        world.network("deny"),
        unix.path("docker.sock")
    );
    let s = Run::script(&fx, script(&fx, &probes))
        .policy(&policy("audit", &network))
        .finish();

    assert_probes(&s, &probes, Vec::new());
    let mut expected = World::deliveries(&probes, &[]);
    expected.extend(deliveries(&[
        ("docker.sock".into(), &["docker"]),
        (format!("@{free}"), &["abstract-unnamed"]),
    ]));
    let mut got = world.finish();
    got.extend(unix.finish());
    assert_servers(got, expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stands_for_the_label() {
        assert_eq!(
            with_text("connect tcp ::1 80 TEXT", "tcp6"),
            ["connect", "tcp", "::1", "80", "tcp6"]
        );
    }

    #[test]
    fn events_are_derived_from_probe_arguments() {
        let by = Outcome::parse("x", "EPERM pid=10 ppid=9").unwrap();
        let p = denied(
            "x",
            "connect udp ::ffff:127.0.0.1 53 TEXT",
            "local-destination",
        );
        let n = Net::derive(&p, &by, p.event.as_ref().unwrap());
        assert_eq!(
            (n.family, n.address.as_deref(), n.port),
            ("inet6", Some("::ffff:127.0.0.1"), Some(53))
        );
        assert_eq!(
            (n.ops.as_slice(), n.protocol.as_deref()),
            (["connect"].as_slice(), Some("udp"))
        );

        let by = Outcome::parse("x", "bind:EPERM pid=10 ppid=9").unwrap();
        let p = denied("x", "listen :: 8080", "listen-not-allowed");
        let n = Net::derive(&p, &by, p.event.as_ref().unwrap());
        assert_eq!(
            (n.ops.as_slice(), n.address.as_deref()),
            (["bind"].as_slice(), Some("::"))
        );

        let by = Outcome::parse("x", "EPERM pid=10 ppid=9").unwrap();
        let p = denied("x", "socket packet", "raw-socket");
        let n = Net::derive(&p, &by, p.event.as_ref().unwrap());
        assert_eq!(
            (n.family, n.socket_type, n.protocol.as_deref(), n.port),
            ("packet", Some("raw"), None, None)
        );
    }

    #[test]
    fn deliveries_follow_the_destination() {
        assert_eq!(
            World::server_for("tcp", "::ffff:127.0.0.1", "5"),
            "tcp 127.0.0.1:5"
        );
        assert_eq!(World::server_for("tcp", "0.0.0.0", "5"), "tcp 127.0.0.1:5");
        assert_eq!(World::server_for("tcp", "::", "5"), "tcp [::1]:5");
        assert_eq!(
            World::server_for("udp", BLOCKED6, "8080"),
            "remote udp 8080"
        );
        assert_eq!(
            World::server_for("udp", &format!("::ffff:{SRV}"), "8080"),
            "remote udp 8080"
        );
        let probes = [
            ok(
                "a",
                "connected-sendto udp 198.51.100.10 8080 127.0.0.1 7 TEXT",
            ),
            denied("b", "sendto udp 198.51.100.66 8080 TEXT", "blocked-host"),
        ];
        let outside: Vec<&P> = probes.iter().filter(|p| p.label == "b").collect();
        let map = World::deliveries(&probes, &outside);
        assert_eq!(map["udp 127.0.0.1:7"], ["a"]);
        assert_eq!(map["remote udp 8080"], ["outsider-b"]);
    }
}
