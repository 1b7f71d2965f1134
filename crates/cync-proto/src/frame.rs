//! The inner frame of 0x73 and 0x83 packets, at packet byte 12.
//!
//! ```text
//! frame[0]      7e start ("bound"); 00 in the "unbound" firmware report
//! frame[1]      seq
//! frame[2..5]   00 00 00 (01 00 00 in the switch-mode command)
//! frame[5]      direction: f8 server request, f9 device result, fa device report
//! frame[6]      opcode
//! frame[7..9]   payload length, u16 LE
//! frame[9..]    payload
//! frame[-2]     checksum = sum(frame[6..len-2]) mod 256 (opcode, length and payload)
//! frame[-1]     7e end
//! ```
//!
//! Checked against capture A (101 reports, including `60 b1 7e f1 …` whose id holds a 0x7E
//! before byte 12) and the cloud's commands. The frame is found by position, never by searching
//! for 0x7E.
//!
//! Byte stuffing: one cloud sample carries `7d 5d` for 0x7D inside a frame, with the length field
//! and checksum computed over the unstuffed bytes. The checksum verdict is first taken over the
//! bytes as received; only when the length does not add up and the frame holds `7d 5d`/`7d 5e`
//! is an unstuffed copy tried, and used (marked [`Frame::stuffed`]) only if it is consistent and
//! re-stuffs to exactly the bytes received.

use thiserror::Error;

/// Byte at both ends of a bound frame.
pub const FLAG: u8 = 0x7e;
const ESCAPE: u8 = 0x7d;
/// Smallest possible frame: start, seq, 3 flag bytes, dir, op, 2 length, checksum, end.
pub const MIN_FRAME: usize = 11;

/// The direction byte `frame[5]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `f8`: a request from the server (commands, mesh-info request, mesh ACK).
    Request,
    /// `f9`: a device's answer to a request.
    Response,
    /// `fa`: a report the device sends on its own.
    Report,
    /// Any other value.
    Other(u8),
}

impl Direction {
    /// Reads the direction byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0xf8 => Self::Request,
            0xf9 => Self::Response,
            0xfa => Self::Report,
            other => Self::Other(other),
        }
    }

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::Request => 0xf8,
            Self::Response => 0xf9,
            Self::Report => 0xfa,
            Self::Other(b) => b,
        }
    }
}

/// A well-formed inner frame. Its length field always equals the payload length; the checksum
/// is kept as received, so a frame with a wrong checksum still re-encodes to its original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `frame[0]`: 0x7E, or 0x00 for the unbound firmware report.
    pub start: u8,
    /// `frame[1]`.
    pub seq: u8,
    /// `frame[2..5]`.
    pub flags: [u8; 3],
    /// `frame[5]`.
    pub dir: Direction,
    /// `frame[6]`.
    pub opcode: u8,
    /// The payload, unstuffed.
    pub payload: Vec<u8>,
    /// `frame[-2]` as received (or as computed, for frames built here).
    pub checksum: u8,
    /// The frame arrived HDLC-stuffed (`7d 5d` for 0x7D, `7d 5e` for 0x7E) and is re-stuffed
    /// when encoded.
    pub stuffed: bool,
}

/// Why the bytes at packet offset 12 are not a well-formed frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes than the smallest frame.
    #[error("inner frame too short: {0} bytes, need at least 11")]
    TooShort(usize),
    /// The first byte is neither 0x7E nor 0x00.
    #[error("inner frame starts with {0:#04x}, not 0x7e or 0x00")]
    BadStart(u8),
    /// The last byte of the packet is not 0x7E.
    #[error("inner frame ends with {0:#04x}, not 0x7e")]
    NoEnd(u8),
    /// The u16 LE length field disagrees with the payload present.
    #[error("inner frame length field says {declared} payload bytes, {actual} present")]
    LengthMismatch {
        /// `frame[7..9]`.
        declared: u16,
        /// Bytes between the length field and the checksum.
        actual: usize,
    },
}

/// Frame bytes that do not form a well-formed frame, kept verbatim with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The bytes from packet offset 12 to the end.
    pub bytes: Vec<u8>,
    /// Why they are not a frame.
    pub error: FrameError,
    /// Whether the same bytes form a valid frame one byte later (offset 13): the layout of
    /// packets built with a 5-byte connection id, such as the capturing proxy's injections.
    pub valid_at_13: bool,
}

/// The body of a 0x73 or 0x83 packet: a frame, or the bytes that failed to be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A well-formed frame.
    Frame(Frame),
    /// Not a frame; the bytes are kept so the packet re-encodes exactly.
    Malformed(Malformed),
}

impl Frame {
    /// A bound (`7e`) frame with flags `00 00 00` and a correct checksum.
    pub fn new(seq: u8, dir: Direction, opcode: u8, payload: Vec<u8>) -> Self {
        let mut frame = Self {
            start: FLAG,
            seq,
            flags: [0; 3],
            dir,
            opcode,
            payload,
            checksum: 0,
            stuffed: false,
        };
        frame.checksum = frame.computed_checksum();
        frame
    }

    /// Parses a frame from `bytes` (packet bytes `[12..]`).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        match Self::decode_plain(bytes) {
            Err(FrameError::LengthMismatch { declared, actual })
                if bytes
                    .windows(2)
                    .any(|w| w == [ESCAPE, 0x5d] || w == [ESCAPE, 0x5e]) =>
            {
                Self::decode_stuffed(bytes).ok_or(FrameError::LengthMismatch { declared, actual })
            }
            other => other,
        }
    }

    fn decode_plain(bytes: &[u8]) -> Result<Self, FrameError> {
        let n = bytes.len();
        if n < MIN_FRAME {
            return Err(FrameError::TooShort(n));
        }
        let (&start, _) = bytes.split_first().ok_or(FrameError::TooShort(n))?;
        let (&end, _) = bytes.split_last().ok_or(FrameError::TooShort(n))?;
        if start != FLAG && start != 0 {
            return Err(FrameError::BadStart(start));
        }
        if end != FLAG {
            return Err(FrameError::NoEnd(end));
        }
        let head: &[u8; 9] = bytes
            .get(..9)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::TooShort(n))?;
        let declared = u16::from_le_bytes([head[7], head[8]]);
        let payload = bytes.get(9..n - 2).ok_or(FrameError::TooShort(n))?;
        if usize::from(declared) != payload.len() {
            return Err(FrameError::LengthMismatch {
                declared,
                actual: payload.len(),
            });
        }
        Ok(Self {
            start,
            seq: head[1],
            flags: [head[2], head[3], head[4]],
            dir: Direction::from_byte(head[5]),
            opcode: head[6],
            payload: payload.to_vec(),
            checksum: bytes.get(n - 2).copied().unwrap_or_default(),
            stuffed: false,
        })
    }

    fn decode_stuffed(bytes: &[u8]) -> Option<Self> {
        let (&start, rest) = bytes.split_first()?;
        let (&end, inner) = rest.split_last()?;
        let mut plain = vec![start];
        let mut it = inner.iter();
        while let Some(&b) = it.next() {
            if b == ESCAPE {
                plain.push(*it.next()? ^ 0x20);
            } else {
                plain.push(b);
            }
        }
        plain.push(end);
        let mut frame = Self::decode_plain(&plain).ok()?;
        frame.stuffed = true;
        (frame.checksum_ok() && frame.to_bytes() == bytes).then_some(frame)
    }

    /// The checksum the bytes should carry: sum of opcode, length and payload, mod 256.
    pub fn computed_checksum(&self) -> u8 {
        let [lo, hi] = self.len_field().to_le_bytes();
        self.payload
            .iter()
            .fold(self.opcode.wrapping_add(lo).wrapping_add(hi), |acc, b| {
                acc.wrapping_add(*b)
            })
    }

    /// Whether the checksum received matches the bytes.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.computed_checksum()
    }

    /// Whether this is the unbound (`frame[0]` = 0x00) variant.
    pub fn is_unbound(&self) -> bool {
        self.start == 0
    }

    fn len_field(&self) -> u16 {
        // Payloads come from a packet of at most 65,535 bytes, so this never saturates for a
        // decoded frame; a hand-built oversize payload gets a saturated (wrong) length.
        u16::try_from(self.payload.len()).unwrap_or(u16::MAX)
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        if self.stuffed {
            self.to_bytes().len()
        } else {
            MIN_FRAME + self.payload.len()
        }
    }

    /// Appends the wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let [lo, hi] = self.len_field().to_le_bytes();
        let head = [
            self.seq,
            self.flags[0],
            self.flags[1],
            self.flags[2],
            self.dir.byte(),
            self.opcode,
            lo,
            hi,
        ];
        let inner = head
            .iter()
            .chain(self.payload.iter())
            .chain(std::iter::once(&self.checksum));
        out.push(self.start);
        for &b in inner {
            if self.stuffed && (b == FLAG || b == ESCAPE) {
                out.extend_from_slice(&[ESCAPE, b ^ 0x20]);
            } else {
                out.push(b);
            }
        }
        out.push(FLAG);
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_FRAME + self.payload.len());
        self.encode(&mut out);
        out
    }
}

impl Body {
    /// Parses packet bytes `[12..]`.
    pub fn decode(bytes: &[u8]) -> Self {
        match Frame::decode(bytes) {
            Ok(frame) => Self::Frame(frame),
            Err(error) => Self::Malformed(Malformed {
                bytes: bytes.to_vec(),
                error,
                valid_at_13: bytes
                    .get(1..)
                    .is_some_and(|rest| Frame::decode(rest).is_ok_and(|f| f.checksum_ok())),
            }),
        }
    }

    /// The frame, if well formed.
    pub fn frame(&self) -> Option<&Frame> {
        match self {
            Self::Frame(frame) => Some(frame),
            Self::Malformed(_) => None,
        }
    }

    /// Appends the wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Frame(frame) => frame.encode(out),
            Self::Malformed(m) => out.extend_from_slice(&m.bytes),
        }
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.encoded_len(),
            Self::Malformed(m) => m.bytes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::hex;

    #[test]
    fn status_report_frame_from_capture_a() {
        // Capture A 08:23:56.914362, device 38 e8 cf 46, packet bytes [12..].
        let bytes = hex(
            "7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e",
        );
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.seq, 0x1f);
        assert_eq!(frame.dir, Direction::Report);
        assert_eq!(frame.opcode, 0xdb);
        assert_eq!(frame.payload.len(), 19);
        assert!(frame.checksum_ok());
        assert_eq!(frame.to_bytes(), bytes);
    }

    #[test]
    fn power_command_checksum_matches_cloud() {
        let frame = Frame::new(
            0x21,
            Direction::Request,
            0xd0,
            hex("21 00 00 00 00 05 00 d0 11 02 01 00 00"),
        );
        assert_eq!(frame.checksum, 0xe7);
    }

    #[test]
    fn stuffed_sample_from_cloud_trace() {
        // The 2024-03-16 relay: `7d 5d` stands for 0x7D (the report counter).
        let bytes = hex(
            "7e 25 00 00 00 fa db 13 00 7d 5d 22 11 07 00 07 00 db 11 02 01 01 64 fe f8 00 00 00 00 f6 7e",
        );
        let frame = Frame::decode(&bytes).unwrap();
        assert!(frame.stuffed);
        assert!(frame.checksum_ok());
        assert_eq!(frame.payload[0], 0x7d);
        assert_eq!(frame.to_bytes(), bytes);
    }

    #[test]
    fn bad_checksum_is_reported_not_rejected() {
        let mut bytes = hex("7e 1e 00 00 00 f8 af 02 00 af 01 61 7e");
        bytes[11] = 0x62;
        let frame = Frame::decode(&bytes).unwrap();
        assert!(!frame.checksum_ok());
        assert_eq!(frame.to_bytes(), bytes);
    }

    #[test]
    fn injected_frame_is_malformed_but_valid_one_byte_later() {
        // Capture B 08:58:12.350746, packet bytes [12..]: the proxy's extra 00 at byte 12.
        let bytes = hex("00 7e 10 01 00 00 f8 8e 0c 00 10 01 00 00 00 50 00 f7 11 02 01 01 07 7e");
        let Body::Malformed(m) = Body::decode(&bytes) else {
            panic!("should be malformed")
        };
        assert!(matches!(m.error, FrameError::LengthMismatch { .. }));
        assert!(m.valid_at_13);
    }

    #[test]
    fn errors() {
        assert_eq!(Frame::decode(&[0x7e; 5]), Err(FrameError::TooShort(5)));
        let mut bytes = hex("7e 1e 00 00 00 f8 af 02 00 af 01 61 7e");
        bytes[0] = 0x55;
        assert_eq!(Frame::decode(&bytes), Err(FrameError::BadStart(0x55)));
        bytes[0] = 0x7e;
        bytes[12] = 0x00;
        assert_eq!(Frame::decode(&bytes), Err(FrameError::NoEnd(0)));
    }
}
