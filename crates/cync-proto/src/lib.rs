//! The Cync device wire protocol, as spoken between Wi-Fi Cync devices and the cloud on TCP/TLS
//! port 23779.
//!
//! This crate is pure: it turns bytes into typed values and back, and builds the packets a server
//! sends. It does no I/O, knows no clock (times are passed in) and never panics on input, whatever
//! the bytes. The async daemon (`cyncd`) and the simulator sit on top of it.
//!
//! The layers, outermost first:
//! - [`Framer`] splits a byte stream into packets by the 5-byte outer header.
//! - [`Packet`] is one decoded packet of any type ([`Packet::decode`], [`Packet::encode`]);
//!   `encode(decode(b)) == b` for every packet that decodes.
//! - [`Frame`] is the inner frame of 0x73/0x83 packets (starting at packet byte 12), with its
//!   checksum verdict.
//! - [`DeviceStatus`], [`Record`], [`MeshRecord`] and [`Firmware`] read device state out of
//!   reports, 0x43 records and mesh-info pages.
//! - [`command`] builds control commands; [`reply`] builds the cloud's answers.
//!
//! Every layout below was checked against the decrypted captures of real devices talking to the
//! real cloud; the byte layout sits next to the parser that reads it.
#![forbid(unsafe_code)]

pub mod canary;
pub mod capture;
pub mod catalog;
pub mod command;
pub mod dedup;
pub mod delivery;
mod frame;
mod framer;
mod ids;
mod packet;
pub mod reply;
pub mod session;
mod status;

pub use command::{Action, CommandError, Effect, SwitchMode, Target};
pub use frame::{Body, Direction, Frame, FrameError, Malformed};
pub use framer::{DEFAULT_MAX_PACKET, Framer, FramerError, OversizePolicy};
pub use ids::{AuthCode, ConnId, MeshId, MsgId, Seq};
pub use packet::{
    Ack3, Announce, AnnounceReply, AppAnnounceAck, Data, DataAck, DecodeError, HEADER_LEN, Hello,
    HelloAck, Info, InfoBody, Notice, Packet, PacketType, Report, TimeReply, Tlv, Unknown,
};
pub use reply::LocalTime;
pub use status::{ColorMode, DeviceStatus, Firmware, FirmwareKind, MeshPage, MeshRecord, Record};

/// Checks the crate's invariants on arbitrary input; the fuzz target and its corpus replay call
/// this. It panics only when an invariant is broken (a bug), never because the input is odd:
/// the framer must not panic or grow past its bound, decoding must not panic, and every packet
/// that decodes must re-encode to the same bytes.
#[doc(hidden)]
#[allow(clippy::panic)]
pub fn check_invariants(data: &[u8]) {
    let mut framer = Framer::new(512).with_policy(OversizePolicy::Resync);
    let mut input = data;
    let mut rounds = 0usize;
    loop {
        let taken = framer.push(input);
        input = input.get(taken..).unwrap_or_default();
        let mut produced = false;
        while let Some(next) = framer.next_packet() {
            produced = true;
            if let Ok(bytes) = next {
                roundtrip(bytes);
            }
        }
        if framer.buffered() > framer.capacity() {
            panic!("framer buffered {} bytes past its bound", framer.buffered());
        }
        if input.is_empty() {
            break;
        }
        rounds += 1;
        if taken == 0 && !produced && rounds > data.len() + 2 {
            panic!("framer made no progress");
        }
    }
    roundtrip(data);
}

#[allow(clippy::panic)]
fn roundtrip(bytes: &[u8]) {
    if let Ok(packet) = Packet::decode(bytes) {
        let again = packet.to_bytes();
        if again != bytes {
            panic!("re-encode differs: {packet:?}");
        }
        // The interpretation helpers must not panic either.
        let _ = packet.statuses();
        let _ = packet.summary();
    }
}

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Space-separated hex pairs to bytes.
    pub fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|p| u8::from_str_radix(p, 16).unwrap())
            .collect()
    }
}
