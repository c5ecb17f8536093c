//! One link of the audit chain. A sealed line is the event's JSON object with
//! `,"chain":{"prev":"P","hash":"H"}` added as its last member, where `H` is the hex
//! SHA-256 of `P` (64 hex characters) followed by the line's bytes up to `,"chain":`.
//!
//! A bare `"` cannot occur inside a JSON string, so the last occurrence of [`SEAL_START`]
//! in a line is the seal, whatever the event's strings contain.
use sha2::{Digest as _, Sha256};

/// A SHA-256 in lowercase hex, as it appears in `chain.prev` and `chain.hash`.
pub type HexHash = [u8; 64];

/// `chain.prev` of the first line ever written.
pub const GENESIS: HexHash = [b'0'; 64];

/// What a seal starts with; the event's own bytes end just before it.
pub const SEAL_START: &[u8] = br#","chain":{"prev":""#;
const SEAL_MIDDLE: &[u8] = br#"","hash":""#;
const SEAL_END: &[u8] = br#""}}"#;
/// The length of everything a seal adds to the event's bytes.
pub const SEAL_LEN: usize = SEAL_START.len() + 64 + SEAL_MIDDLE.len() + 64 + SEAL_END.len();

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event must be a non-empty JSON object ending with `}}` to be sealed")]
pub struct NotAnObject;

/// `H` of a line whose bytes before the seal are `content`, linked to `prev`.
pub fn link_hash(prev: &HexHash, content: &[u8]) -> HexHash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(content);
    hex(&hasher.finalize().into())
}

/// Seals `body`, a JSON object, in place and returns its hash, the next line's `prev`.
pub fn seal(prev: &HexHash, body: &mut Vec<u8>) -> Result<HexHash, NotAnObject> {
    // `{}` has no member for the seal's comma to follow.
    if body.len() < 3 || body[0] != b'{' || body.last() != Some(&b'}') {
        return Err(NotAnObject);
    }
    body.pop();
    let hash = link_hash(prev, body);
    body.reserve(SEAL_LEN);
    body.extend_from_slice(SEAL_START);
    body.extend_from_slice(prev);
    body.extend_from_slice(SEAL_MIDDLE);
    body.extend_from_slice(&hash);
    body.extend_from_slice(SEAL_END);
    Ok(hash)
}

/// A sealed line taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal<'a> {
    /// The bytes the hash covers after `prev`: the line up to `,"chain":`.
    pub content: &'a [u8],
    pub prev: HexHash,
    pub hash: HexHash,
}

impl Seal<'_> {
    /// Whether `hash` is what `prev` and `content` give.
    pub fn recomputes(&self) -> bool {
        link_hash(&self.prev, self.content) == self.hash
    }
}

/// Finds the seal at the end of `line` (without its newline); `None` when the line does
/// not end with a well-formed one.
pub fn unseal(line: &[u8]) -> Option<Seal<'_>> {
    if line.len() < SEAL_LEN {
        return None;
    }
    let start = line.len() - SEAL_LEN;
    let (content, seal) = line.split_at(start);
    let rest = seal.strip_prefix(SEAL_START)?;
    let (prev, rest) = rest.split_at(64);
    let rest = rest.strip_prefix(SEAL_MIDDLE)?;
    let (hash, rest) = rest.split_at(64);
    if rest != SEAL_END || !is_hex(prev) || !is_hex(hash) {
        return None;
    }
    Some(Seal {
        content,
        prev: prev.try_into().ok()?,
        hash: hash.try_into().ok()?,
    })
}

fn is_hex(text: &[u8]) -> bool {
    text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of a digest, by table: this runs for every event.
pub fn hex(digest: &[u8; 32]) -> HexHash {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 64];
    for (i, byte) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

/// A hex hash as text (it is always ASCII).
pub fn hash_str(hash: &HexHash) -> &str {
    std::str::from_utf8(hash).expect("hex digits are ASCII")
}

/// Parses a 64-character lowercase hex hash.
pub fn parse_hash(text: &str) -> Option<HexHash> {
    let bytes: HexHash = text.as_bytes().try_into().ok()?;
    is_hex(&bytes).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_as_the_schema_says() {
        let mut body = br#"{"event":{"sequence":1}}"#.to_vec();
        let hash = seal(&GENESIS, &mut body).unwrap();
        // The hash covers the 64 zeros and the object without its closing brace.
        let mut expected = Sha256::new();
        expected.update([b'0'; 64]);
        expected.update(br#"{"event":{"sequence":1}"#);
        let expected = hex(&expected.finalize().into());
        assert_eq!(hash, expected);
        let line = String::from_utf8(body).unwrap();
        assert_eq!(
            line,
            format!(
                r#"{{"event":{{"sequence":1}},"chain":{{"prev":"{}","hash":"{}"}}}}"#,
                "0".repeat(64),
                hash_str(&expected)
            )
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["chain"]["hash"], hash_str(&hash));
    }

    #[test]
    fn a_known_vector() {
        // Computed apart from this code: sha256("0" * 64 + '{"a":1').
        let mut body = br#"{"a":1}"#.to_vec();
        let hash = seal(&GENESIS, &mut body).unwrap();
        assert_eq!(
            hash_str(&hash),
            "a6fc8d7dbf738917ee8344e1cd5486b01255b25fe5de4df9be7af29689f6a1aa"
        );
    }

    #[test]
    fn unseal_reads_back_what_seal_wrote_and_notices_edits() {
        let mut body = br#"{"text":"a \",\"chain\":{\"prev\":\" inside a string"}"#.to_vec();
        let prev = [b'a'; 64];
        let hash = seal(&prev, &mut body).unwrap();
        let seal = unseal(&body).unwrap();
        assert_eq!((seal.prev, seal.hash), (prev, hash));
        assert!(seal.recomputes());
        let edited = String::from_utf8(body)
            .unwrap()
            .replace("inside", "outside");
        assert!(!unseal(edited.as_bytes()).unwrap().recomputes());
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        for bad in [&b"{}"[..], b"[1]", b"", b"{\"a\":1} "] {
            assert_eq!(seal(&GENESIS, &mut bad.to_vec()), Err(NotAnObject));
        }
    }

    #[test]
    fn unseal_refuses_cut_or_malformed_seals() {
        let mut body = br#"{"a":1}"#.to_vec();
        seal(&GENESIS, &mut body).unwrap();
        assert!(unseal(&body[..body.len() - 1]).is_none());
        let upper = String::from_utf8(body).unwrap().to_uppercase();
        assert!(unseal(upper.as_bytes()).is_none());
    }
}
