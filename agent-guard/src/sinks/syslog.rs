//! The syslog sink: each line as an RFC 5424 message, over a local datagram socket
//! (`/dev/log`) or TCP with octet-counting framing (RFC 6587).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME agent-guard PID KIND [agent_guard@32473 seq="N"] JSON`: the
//! severity is warning for a denial (`event.kind` `alert`) and notice otherwise, MSGID is
//! `agent_guard.kind`, and the message is the event's line unchanged, so a receiver can
//! still check its hash chain.
//!
//! There is no spool: while the destination is unreachable the sink retries the same
//! message with backoff, its queue fills and further lines are dropped and counted.
use std::{
    io::{self, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::unix::net::UnixDatagram,
    sync::atomic::Ordering,
    time::Duration,
};

use serde::Deserialize;

use super::{backoff::Backoff, config::SyslogAddress, queue::Inbox, Control};
use crate::report::Line;

pub const APP_NAME: &str = "agent-guard";
/// The private enterprise number in the structured data's ID. 32473 is the one RFC 5612
/// reserves for documentation, as the specified format asks.
pub const SD_ID: &str = "agent_guard@32473";

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Syslog facilities by their conventional names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    /// Security messages readable by administrators only: the default, as events name
    /// what agents tried.
    #[default]
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    pub fn code(self) -> u8 {
        match self {
            Self::Kern => 0,
            Self::User => 1,
            Self::Mail => 2,
            Self::Daemon => 3,
            Self::Auth => 4,
            Self::Syslog => 5,
            Self::Lpr => 6,
            Self::News => 7,
            Self::Uucp => 8,
            Self::Cron => 9,
            Self::Authpriv => 10,
            Self::Ftp => 11,
            Self::Local0 => 16,
            Self::Local1 => 17,
            Self::Local2 => 18,
            Self::Local3 => 19,
            Self::Local4 => 20,
            Self::Local5 => 21,
            Self::Local6 => 22,
            Self::Local7 => 23,
        }
    }
}

const SEVERITY_WARNING: u8 = 4;
const SEVERITY_NOTICE: u8 = 5;

/// The fields of the event the header is made of, as the schema (docs/events.md) nests
/// them.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Header {
    #[serde(rename = "@timestamp")]
    timestamp: Option<String>,
    event: EventPart,
    host: HostPart,
    agent_guard: KindPart,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EventPart {
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HostPart {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KindPart {
    kind: Option<String>,
}

/// The RFC 5424 message for `line`; fields the line lacks (or that syslog cannot carry)
/// are the nil value `-`.
pub fn format_rfc5424(line: &Line, facility: Facility, procid: u32) -> String {
    let header: Header = serde_json::from_str(&line.text).unwrap_or_default();
    let severity = if header.event.kind.as_deref() == Some("alert") {
        SEVERITY_WARNING
    } else {
        SEVERITY_NOTICE
    };
    let pri = u16::from(facility.code()) * 8 + u16::from(severity);
    let timestamp = header
        .timestamp
        .as_deref()
        .filter(|t| looks_like_rfc3339(t))
        .unwrap_or("-");
    let hostname = header
        .host
        .name
        .as_deref()
        .map_or("-".into(), |h| token(h, 255));
    let msgid = header
        .agent_guard
        .kind
        .as_deref()
        .map_or("-".into(), |k| token(k, 32));
    format!(
        "<{pri}>1 {timestamp} {hostname} {APP_NAME} {procid} {msgid} [{SD_ID} seq=\"{}\"] {}",
        line.sequence, line.text
    )
}

/// A header field: printable US-ASCII without spaces, at most `max` characters; `-`
/// when nothing printable is left.
fn token(value: &str, max: usize) -> String {
    let printable: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if printable.is_empty() {
        "-".into()
    } else {
        printable
    }
}

/// RFC 5424 allows at most six fractional digits and wants `T` and a zone; the schema's
/// timestamps have them, anything else becomes `-` rather than a malformed header.
fn looks_like_rfc3339(t: &str) -> bool {
    let fraction_ok = t
        .split_once('.')
        .is_none_or(|(_, rest)| rest.bytes().take_while(u8::is_ascii_digit).count() <= 6);
    t.len() >= 20
        && t.bytes().all(|b| b.is_ascii_graphic())
        && t.as_bytes()[10] == b'T'
        && (t.ends_with('Z') || t[19..].contains(['+', '-']))
        && fraction_ok
}

/// RFC 6587 octet counting: the message's length in bytes, a space, the message.
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut frame = format!("{} ", message.len()).into_bytes();
    frame.extend_from_slice(message.as_bytes());
    frame
}

/// The sink's thread state: where to send and the current connection.
pub struct Sender {
    address: SyslogAddress,
    facility: Facility,
    procid: u32,
    connection: Option<Connection>,
}

enum Connection {
    Unix(UnixDatagram),
    Tcp(TcpStream),
}

impl Sender {
    pub fn new(address: SyslogAddress, facility: Facility) -> Self {
        Self {
            address,
            facility,
            procid: std::process::id(),
            connection: None,
        }
    }

    /// Sends every queued line, retrying each with backoff until it goes through; ends
    /// when the queue closes, or once abandoned (the lines left are counted dropped).
    pub(crate) fn run(mut self, inbox: Inbox, control: Control) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        while let Some(line) = inbox.recv() {
            // Once abandoned, a destination that just failed is not tried again for each
            // line left: a TCP connect alone may take seconds.
            if failing && control.abandon.load(Ordering::Relaxed) {
                control.stats.add_dropped(1, line.sequence, line.sequence);
                continue;
            }
            control.stats.set_in_hand(1);
            let message = format_rfc5424(&line, self.facility, self.procid);
            loop {
                match self.send(&message) {
                    Ok(()) => {
                        control.stats.set_in_hand(0);
                        control.stats.add_delivered(1);
                        backoff.reset();
                        failing = false;
                        break;
                    }
                    Err(e) => {
                        failing = true;
                        self.connection = None;
                        control
                            .stats
                            .set_error(format!("sending to {}: {e}", self.address));
                        // Retrying cannot make a datagram smaller.
                        let hopeless = e.raw_os_error() == Some(libc::EMSGSIZE);
                        if hopeless || !backoff.wait(&control.abandon) {
                            control.stats.set_in_hand(0);
                            control.stats.add_dropped(1, line.sequence, line.sequence);
                            break;
                        }
                    }
                }
            }
        }
    }

    fn send(&mut self, message: &str) -> io::Result<()> {
        if let Some(Connection::Tcp(stream)) = &self.connection {
            if peer_closed(stream) {
                self.connection = None;
            }
        }
        let connection = match &mut self.connection {
            Some(c) => c,
            None => self.connection.insert(connect(&self.address)?),
        };
        match (connection, &self.address) {
            (Connection::Unix(socket), SyslogAddress::Unix(path)) => {
                socket.send_to(message.as_bytes(), path).map(drop)
            }
            (Connection::Tcp(stream), _) => stream.write_all(&octet_counted(message)),
            (Connection::Unix(_), SyslogAddress::Tcp(_)) => {
                unreachable!("a connection is made for its address")
            }
        }
    }
}

/// An unbound datagram socket that sends to the path each time, so a receiver that
/// recreates its socket (rsyslog restarting) is found again without reconnecting.
fn connect(address: &SyslogAddress) -> io::Result<Connection> {
    match address {
        SyslogAddress::Unix(_) => {
            let socket = UnixDatagram::unbound()?;
            socket.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Connection::Unix(socket))
        }
        SyslogAddress::Tcp(host_port) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to nothing");
            for addr in host_port.to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                    Ok(stream) => {
                        stream.set_write_timeout(Some(IO_TIMEOUT))?;
                        stream.set_nodelay(true)?;
                        return Ok(Connection::Tcp(stream));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Whether the receiver has closed the connection. Syslog receivers never write, so a
/// readable end of stream is the only way to learn of a restart before a message is
/// written into a connection nobody reads.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    closed || stream.set_nonblocking(false).is_err()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn line(sequence: u64, text: &str) -> Line {
        Line {
            sequence,
            text: Arc::from(text),
        }
    }

    #[test]
    fn a_denial_is_a_warning() {
        let text = r#"{"@timestamp":"2026-01-02T03:04:05.678901Z","event":{"kind":"alert","sequence":7},"host":{"name":"build-1.example.com"},"agent_guard":{"schema":1,"kind":"decision"}}"#;
        assert_eq!(
            format_rfc5424(&line(7, text), Facility::Authpriv, 42),
            format!(
                "<84>1 2026-01-02T03:04:05.678901Z build-1.example.com agent-guard 42 decision \
                 [agent_guard@32473 seq=\"7\"] {text}"
            )
        );
    }

    #[test]
    fn other_events_are_notices() {
        let text = r#"{"@timestamp":"2026-01-02T03:04:05.000001+01:00","event":{"kind":"event"},"host":{"name":"h"},"agent_guard":{"kind":"session-start"}}"#;
        let message = format_rfc5424(&line(9, text), Facility::Local0, 1);
        assert!(
            message.starts_with("<133>1 2026-01-02T03:04:05.000001+01:00 h agent-guard 1 session-start [agent_guard@32473 seq=\"9\"] {"),
            "{message}"
        );
    }

    #[test]
    fn missing_or_unfit_fields_are_nil() {
        let message = format_rfc5424(&line(1, "not json"), Facility::Authpriv, 5);
        assert_eq!(
            message,
            "<85>1 - - agent-guard 5 - [agent_guard@32473 seq=\"1\"] not json"
        );
        let text = r#"{"@timestamp":"2026-01-02 03:04:05","host":{"name":"a b"},"agent_guard":{"kind":"a-kind-name-that-is-longer-than-thirty-two"}}"#;
        let message = format_rfc5424(&line(2, text), Facility::Authpriv, 5);
        assert!(
            message.starts_with("<85>1 - ab agent-guard 5 a-kind-name-that-is-longer-than- ["),
            "{message}"
        );
    }

    #[test]
    fn octet_counting_counts_bytes() {
        assert_eq!(octet_counted("é x"), b"4 \xc3\xa9 x".to_vec());
    }

    #[test]
    fn facility_codes() {
        assert_eq!(Facility::default().code(), 10);
        assert_eq!(Facility::Local7.code(), 23);
        assert_eq!(Facility::Kern.code(), 0);
    }
}
