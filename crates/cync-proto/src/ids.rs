//! Identifier newtypes. Each is built by parsing bytes off the wire (or a hex string typed by a
//! person), so a value of one of these types is always well formed.

use std::fmt;

/// The 4-byte connection id: the device's own id from its 0x23 hello (`[6:10]`), repeated at
/// `[5:9]` of the 0x43/0x83 it sends; on the data channel (0xA3/0x73/0x7B) the id of the
/// controlling session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConnId(pub [u8; 4]);

/// The 3-byte message id at `[9:12]`, echoed verbatim by the acknowledgement of its packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MsgId(pub [u8; 3]);

/// A Bluetooth-mesh device id (1 byte in status records, u16 LE in reports and commands).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct MeshId(pub u16);

/// The inner-frame sequence byte (`frame[1]`), used to match a command with its result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Seq(pub u8);

/// The 16-character auth code of a 0x23 hello: a per-device secret. Its `Debug` and `Display`
/// never show the bytes; use [`AuthCode::expose`] where the secret is really needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AuthCode(Vec<u8>);

impl ConnId {
    /// Parses 8 hex digits (spaces allowed between byte pairs).
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex_array(text).map(Self)
    }

    /// Reads the id at `bytes[at..at + 4]`, if present.
    pub fn read(bytes: &[u8], at: usize) -> Option<Self> {
        bytes.get(at..at + 4)?.try_into().ok().map(Self)
    }
}

impl MsgId {
    /// Parses 6 hex digits (spaces allowed between byte pairs).
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex_array(text).map(Self)
    }

    /// The id the cloud uses for its n-th packet: a u16 BE counter followed by `00`.
    pub fn from_counter(counter: u16) -> Self {
        let [hi, lo] = counter.to_be_bytes();
        Self([hi, lo, 0])
    }

    /// Reads the id at `bytes[at..at + 3]`, if present.
    pub fn read(bytes: &[u8], at: usize) -> Option<Self> {
        bytes.get(at..at + 3)?.try_into().ok().map(Self)
    }
}

impl AuthCode {
    /// Wraps the raw bytes of an auth code.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes themselves.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes (16 on every device seen).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the code is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let digits = digits.strip_prefix(b"0x").unwrap_or(&digits);
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Writes bytes as lowercase hex without separators.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({self})")
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({self})")
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthCode(<redacted {} bytes>)", self.0.len())
    }
}

impl fmt::Display for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        assert_eq!(
            ConnId::from_hex("2de4b5d2"),
            Some(ConnId([0x2d, 0xe4, 0xb5, 0xd2]))
        );
        assert_eq!(
            ConnId::from_hex("2d e4 b5 d2"),
            Some(ConnId([0x2d, 0xe4, 0xb5, 0xd2]))
        );
        assert_eq!(
            ConnId::from_hex("0x2de4b5d2"),
            Some(ConnId([0x2d, 0xe4, 0xb5, 0xd2]))
        );
        assert_eq!(ConnId::from_hex("2de4b5"), None);
        assert_eq!(ConnId::from_hex("2de4b5zz"), None);
        assert_eq!(MsgId::from_hex("153700"), Some(MsgId([0x15, 0x37, 0])));
        assert_eq!(MsgId::from_counter(0x152c), MsgId([0x15, 0x2c, 0]));
    }

    #[test]
    fn auth_code_is_redacted() {
        let code = AuthCode::new(b"1e07d8cdf4f53c50".to_vec());
        assert!(!format!("{code:?}").contains("1e07"));
        assert!(!format!("{code}").contains("1e07"));
        assert_eq!(code.expose(), b"1e07d8cdf4f53c50");
    }
}
