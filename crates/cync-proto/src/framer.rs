//! Stream framer: splits the bytes of one connection into packets by the outer header.
//!
//! ```text
//! byte 0     type
//! byte 1..2  00 00
//! byte 3..4  length, u16 BE       total packet size = 5 + length
//! ```
//!
//! One TCP read may hold several packets (capture A: 129 reads with two), and nothing stops a
//! packet from being split across reads, so the framer buffers. It frames by the length only and
//! never searches for 0x7E.
//!
//! # Bound and recovery policy
//!
//! The buffer never holds more than `max_packet` bytes (default [`DEFAULT_MAX_PACKET`] = 4,096;
//! the largest packet seen from a device is the 1,024-byte 0xAB). [`Framer::push`] accepts only
//! what fits and says how much it took; the caller drains packets and pushes the rest.
//!
//! A header that declares a packet larger than `max_packet` yields
//! [`FramerError::Oversize`]. What happens next is the [`OversizePolicy`]:
//! - [`OversizePolicy::Close`] (the default, for devices): the framer stays failed and returns the
//!   same error from then on; the owner closes the connection and the device reconnects. The
//!   stream has no delimiters, so after a lying header nothing later can be trusted.
//! - [`OversizePolicy::Resync`] (for reading captures and fuzzing): the declared bytes are
//!   skipped without being stored and framing continues after them.

use thiserror::Error;

/// The default largest packet accepted, header included.
pub const DEFAULT_MAX_PACKET: usize = 4096;

/// What the framer does after an oversize header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OversizePolicy {
    /// Stay failed: the connection must be closed.
    #[default]
    Close,
    /// Skip the declared bytes (without buffering them) and carry on.
    Resync,
}

/// A framing failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramerError {
    /// A header declared a packet larger than the configured maximum.
    #[error("packet type {kind:#04x} declares {size} bytes, more than the {max}-byte limit")]
    Oversize {
        /// The type byte of the offending header.
        kind: u8,
        /// Total size the header declares (5 + length).
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// Splits a byte stream into packets. See the module documentation for the bound and policy.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
    max_packet: usize,
    policy: OversizePolicy,
    /// Bytes still to discard after an oversize header under [`OversizePolicy::Resync`].
    skip: usize,
    failed: Option<FramerError>,
    /// Length of the packet handed out by the last `next_packet`, consumed on the next call.
    pending_consume: usize,
}

impl Framer {
    /// A framer accepting packets of at most `max_packet` bytes (header included; at least 5).
    pub fn new(max_packet: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_packet: max_packet.max(crate::HEADER_LEN),
            policy: OversizePolicy::Close,
            skip: 0,
            failed: None,
            pending_consume: 0,
        }
    }

    /// Sets the recovery policy after an oversize header.
    pub fn with_policy(mut self, policy: OversizePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The most bytes the framer will ever buffer.
    pub fn capacity(&self) -> usize {
        self.max_packet
    }

    /// Bytes buffered and not yet handed out as packets.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start - self.pending_consume
    }

    /// The buffered bytes that do not (yet) form a whole packet.
    pub fn remainder(&self) -> &[u8] {
        self.buf
            .get(self.start + self.pending_consume..)
            .unwrap_or_default()
    }

    /// Whether the framer has failed under [`OversizePolicy::Close`].
    pub fn failed(&self) -> Option<FramerError> {
        self.failed
    }

    /// Offers bytes read from the stream and returns how many were taken. Fewer than offered
    /// means the buffer is full: drain [`Framer::next_packet`] and offer the rest again. After a
    /// failure under [`OversizePolicy::Close`] nothing more is taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        self.consume_pending();
        let mut taken = 0;
        if self.skip > 0 {
            taken = self.skip.min(data.len());
            self.skip -= taken;
        }
        let rest = data.get(taken..).unwrap_or_default();
        if rest.is_empty() {
            return taken;
        }
        self.compact();
        let room = self.max_packet - (self.buf.len() - self.start);
        let n = room.min(rest.len());
        self.buf
            .extend_from_slice(rest.get(..n).unwrap_or_default());
        taken + n
    }

    /// The next whole packet, if one is buffered. The slice is valid until the next call.
    /// `Some(Err(..))` reports an oversize header (see the policy); `None` means more bytes are
    /// needed.
    pub fn next_packet(&mut self) -> Option<Result<&[u8], FramerError>> {
        if let Some(error) = self.failed {
            return Some(Err(error));
        }
        self.consume_pending();
        let avail_len = self.buf.len().saturating_sub(self.start);
        let header = self
            .buf
            .get(self.start..)?
            .first_chunk::<{ crate::HEADER_LEN }>()?;
        let [kind, _, _, hi, lo] = *header;
        let size = crate::HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
        if size > self.max_packet {
            let error = FramerError::Oversize {
                kind,
                size,
                max: self.max_packet,
            };
            match self.policy {
                OversizePolicy::Close => {
                    self.failed = Some(error);
                    self.buf = Vec::new();
                    self.start = 0;
                }
                OversizePolicy::Resync => {
                    let have = avail_len.min(size);
                    self.start += have;
                    self.skip = size - have;
                }
            }
            return Some(Err(error));
        }
        if avail_len < size {
            return None;
        }
        self.pending_consume = size;
        self.buf.get(self.start..self.start + size).map(Ok)
    }

    fn consume_pending(&mut self) {
        self.start += std::mem::take(&mut self.pending_consume);
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Moves unconsumed bytes to the front so the buffer never grows past `max_packet`.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(framer: &mut Framer) -> Vec<Result<Vec<u8>, FramerError>> {
        let mut out = Vec::new();
        while let Some(next) = framer.next_packet() {
            let failed = next.is_err();
            out.push(next.map(<[u8]>::to_vec));
            if failed && framer.failed().is_some() {
                break;
            }
        }
        out
    }

    const HB: [u8; 5] = [0xd3, 0, 0, 0, 0];
    const INFO_PING: [u8; 12] = [0x43, 0, 0, 0, 7, 0x3d, 0x54, 0x86, 0x1c, 1, 1, 6];

    #[test]
    fn splits_coalesced_packets() {
        let mut framer = Framer::default();
        let mut read = INFO_PING.to_vec();
        read.extend_from_slice(&HB);
        assert_eq!(framer.push(&read), read.len());
        assert_eq!(
            drain(&mut framer),
            vec![Ok(INFO_PING.to_vec()), Ok(HB.to_vec())]
        );
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn resumes_partial_packets_one_byte_at_a_time() {
        let mut framer = Framer::default();
        let mut got = Vec::new();
        for b in INFO_PING.iter().chain(HB.iter()) {
            assert_eq!(framer.push(&[*b]), 1);
            got.extend(drain(&mut framer));
        }
        assert_eq!(got, vec![Ok(INFO_PING.to_vec()), Ok(HB.to_vec())]);
    }

    #[test]
    fn push_takes_only_what_fits() {
        let mut framer = Framer::new(16);
        let data = [HB; 5].concat();
        let taken = framer.push(&data);
        assert_eq!(taken, 16);
        assert_eq!(drain(&mut framer).len(), 3);
        assert_eq!(framer.buffered(), 1);
        assert_eq!(framer.push(&data[taken..]), 9);
        assert_eq!(drain(&mut framer).len(), 2);
    }

    #[test]
    fn oversize_closes_by_default() {
        let mut framer = Framer::new(64);
        framer.push(&[0x43, 0, 0, 0x10, 0x00, 1, 2, 3]);
        let err = FramerError::Oversize {
            kind: 0x43,
            size: 5 + 4096,
            max: 64,
        };
        assert_eq!(
            framer.next_packet().map(|r| r.map(<[u8]>::to_vec)),
            Some(Err(err))
        );
        assert_eq!(framer.failed(), Some(err));
        assert_eq!(framer.push(&HB), 0);
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn oversize_resync_skips_declared_bytes() {
        let mut framer = Framer::new(64).with_policy(OversizePolicy::Resync);
        let mut data = vec![0x99, 0, 0, 0, 100];
        data.extend(std::iter::repeat_n(0xaa, 100));
        data.extend_from_slice(&HB);
        let mut rest = &data[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let n = framer.push(rest);
            rest = &rest[n..];
            got.extend(drain(&mut framer));
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(HB.to_vec()));
    }

    #[test]
    fn exact_max_packet_fits() {
        let mut framer = Framer::new(10);
        let packet = [0x43, 0, 0, 0, 5, 1, 2, 3, 4, 5];
        assert_eq!(framer.push(&packet), 10);
        assert_eq!(drain(&mut framer), vec![Ok(packet.to_vec())]);
    }
}
