//! Just enough of a JSON writer for the one record written a million times a second: a
//! decision. The record's structure is written as literal fragments (keys, braces and
//! commas together), values through the methods here. Strings are escaped as serde_json
//! escapes them (`"`, `\` and control characters), so a line reads the same either way.
use std::io::Write as _;

pub struct JsonWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> JsonWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// A fragment of the record's structure, written as it stands.
    #[inline]
    pub fn raw(&mut self, fragment: &str) {
        self.out.extend_from_slice(fragment.as_bytes());
    }

    /// A string value, quoted and escaped.
    #[inline]
    pub fn string(&mut self, value: &str) {
        let bytes = value.as_bytes();
        self.out.reserve(bytes.len() + 2);
        self.out.push(b'"');
        // Branch-free over the whole string, so the compiler can vectorize the common
        // case: nothing to escape, one copy.
        let needs_escape = bytes.iter().fold(false, |acc, &b| {
            acc | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if needs_escape {
            self.escaped(bytes);
        } else {
            self.out.extend_from_slice(bytes);
        }
        self.out.push(b'"');
    }

    /// A number.
    #[inline]
    pub fn number(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.out.extend_from_slice(&digits[at..]);
    }

    /// A number as a string, as ECS keeps ids.
    pub fn number_as_string(&mut self, value: u64) {
        self.out.push(b'"');
        self.number(value);
        self.out.push(b'"');
    }

    /// A 32-bit number as a string of eight hex digits, as session ids print.
    pub fn hex8(&mut self, value: u32) {
        self.out.push(b'"');
        for shift in (0..8).rev() {
            self.out
                .push(b"0123456789abcdef"[((value >> (shift * 4)) & 0xf) as usize]);
        }
        self.out.push(b'"');
    }

    /// A value that `Display` writes as a string that needs no escaping (an IP address).
    pub fn display(&mut self, value: impl std::fmt::Display) {
        self.out.push(b'"');
        let _ = write!(self.out, "{value}");
        self.out.push(b'"');
    }

    fn escaped(&mut self, bytes: &[u8]) {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => {
                    self.out.extend_from_slice(&bytes[start..i]);
                    let hex = b"0123456789abcdef";
                    self.out.extend_from_slice(b"\\u00");
                    self.out.push(hex[usize::from(b >> 4)]);
                    self.out.push(hex[usize::from(b & 0xf)]);
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[start..i]);
            self.out.extend_from_slice(escape);
            start = i + 1;
        }
        self.out.extend_from_slice(&bytes[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "quote \" and backslash \\",
            "ctl \u{1}\u{8}\u{c}\n\r\t\u{1f} end",
            "unicode é 漢 …",
            "",
        ] {
            let mut out = Vec::new();
            let mut w = JsonWriter::new(&mut out);
            w.raw("{\"k\":");
            w.string(s);
            w.raw("}");
            let ours = String::from_utf8(out).unwrap();
            let theirs = serde_json::json!({ "k": s }).to_string();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn numbers_ids_and_addresses() {
        let mut out = Vec::new();
        let mut w = JsonWriter::new(&mut out);
        w.raw("{\"n\":");
        w.number(0);
        w.raw(",\"max\":");
        w.number(u64::MAX);
        w.raw(",\"id\":");
        w.number_as_string(42);
        w.raw(",\"session\":");
        w.hex8(0xabc);
        w.raw(",\"ip\":");
        w.display(std::net::Ipv6Addr::LOCALHOST);
        w.raw("}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"n":0,"max":u64::MAX,"id":"42","session":"00000abc","ip":"::1"})
        );
    }
}
