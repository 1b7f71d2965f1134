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
//! - [`DeviceStatus`], [`Record`], [`Entry`], [`MeshRecord`] and [`Firmware`] read device state
//!   out of reports, 0x43 records and entries, and mesh-info pages; [`SensorReport`] reads the
//!   JSON a thermostat sends instead.
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
pub mod relay;
pub mod reply;
pub mod session;
mod status;
pub mod thermostat;

pub use command::{Action, CommandError, Effect, FrameEscaping, SwitchMode, Target};
pub use frame::{Body, Direction, Frame, FrameError, Malformed};
pub use framer::{DEFAULT_MAX_PACKET, Framer, FramerError, OversizePolicy};
pub use ids::{AuthCode, ConnId, MeshId, MsgId, Seq};
pub use packet::{
    Ack3, Announce, AnnounceReply, AppAnnounceAck, Data, DataAck, DecodeError, HEADER_LEN, Hello,
    HelloAck, Info, InfoBody, Notice, Packet, PacketType, Report, TimeReply, Tlv, Unknown,
};
pub use reply::LocalTime;
pub use status::{
    ColorMode, DeviceStatus, Entry, Firmware, FirmwareKind, MeshPage, MeshRecord, Record,
};
pub use thermostat::{
    Sensor, SensorError, SensorReport, SensorValue, Temperature, TemperatureUnit,
};

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
        let _ = packet.sensors();
        let _ = packet.summary();
    }
}

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Hex pairs to bytes; spaces between pairs are optional.
    pub fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// Peer vectors from Kinachi249/pycync `tests/test_packet_parser.py`, verbatim.
    pub mod pycync {
        /// `test_thermostat_sync_packet`: a type-224 thermostat's 0x43, 620 bytes.
        pub const THERMOSTAT_43: &str = concat!(
            "430000026700000d8001010657925d73656e736f7273446174613a5b7b2254797065223a22696e746572",
            "6e616c222c2254656d7065726174757265223a2237352e3946222c2248756d6964697479223a35302c22",
            "416374697665223a747275657d2c7b2254797065223a22736176616e742073656e736f72222c2250696e",
            "436f6465223a353332342c2254656d7065726174757265223a2237352e3746222c2248756d6964697479",
            "223a34382c22416374697665223a66616c73652c2242617474223a22322e3837227d2c7b225479706522",
            "3a22736176616e742073656e736f72222c2250696e436f6465223a353134302c2254656d706572617475",
            "7265223a2237352e3246222c2248756d6964697479223a35302c22416374697665223a66616c73652c22",
            "42617474223a22322e3930227d2c7b2254797065223a224e6f6e65222c2254656d706572617475726522",
            "3a6e756c6c2c2248756d6964697479223a6e756c6c2c22416374697665223a66616c73652c2242617474",
            "223a6e756c6c7d2c7b2254797065223a224e6f6e65222c2254656d7065726174757265223a6e756c6c2c",
            "2248756d6964697479223a6e756c6c2c22416374697665223a66616c73652c2242617474223a6e756c6c",
            "7d2c7b2254797065223a224e6f6e65222c2254656d7065726174757265223a6e756c6c2c2248756d6964",
            "697479223a6e756c6c2c22416374697665223a66616c73652c2242617474223a6e756c6c7d2c7b225479",
            "7065223a224e6f6e65222c2254656d7065726174757265223a6e756c6c2c2248756d6964697479223a6e",
            "756c6c2c22416374697665223a66616c73652c2242617474223a6e756c6c7d5d",
        );
        /// `test_outdoor_plug_sync_packet`: a type-67 dual outdoor plug's 0x43, right outlet on.
        pub const OUTDOOR_PLUG_43: &str = "4300000011000004d201010600000706010200000000";
        /// `test_light_sync_packet`: a type-137 bulb's 0x43 with one 19-byte record.
        pub const LIGHT_43: &str = "430000001a0000092901010606001007014cfef8383001141e000000000000";
        /// `test_probe_packet`: a thermostat's 0xAB answer, four empty sensor slots.
        pub const PROBE_AB: &str = concat!(
            "ab00000149499602d273656e736f7273446174613a5b7b2254797065223a224e6f6e65222c2254656d70",
            "65726174757265223a6e756c6c2c2248756d6964697479223a6e756c6c2c22416374697665223a66616c",
            "73652c2242617474223a6e756c6c7d2c7b2254797065223a224e6f6e65222c2254656d70657261747572",
            "65223a6e756c6c2c2248756d6964697479223a6e756c6c2c22416374697665223a66616c73652c224261",
            "7474223a6e756c6c7d2c7b2254797065223a224e6f6e65222c2254656d7065726174757265223a6e756c",
            "6c2c2248756d6964697479223a6e756c6c2c22416374697665223a66616c73652c2242617474223a6e75",
            "6c6c7d2c7b2254797065223a224e6f6e65222c2254656d7065726174757265223a6e756c6c2c2248756d",
            "6964697479223a6e756c6c2c22416374697665223a66616c73652c2242617474223a6e756c6c7d5d",
        );
        /// `test_pipe_packet`: an `f9 52` mesh page whose length byte 0x7E is stuffed as
        /// `7d 5e`; the bridge (mesh id 4) is type 137.
        pub const MESH_PAGE_73: &str = concat!(
            "730000009100000d8002e5007e01010000f9527d5e000500000005000400890100008901010000005000",
            "000039000000d796ff0007000001000000010000000000000000fe000000f83830000200000100000001",
            "01000000410000001e00000000000000e800000100000001010000005000000039000000000000001e00",
            "00010000000101000000500000003900000000000000d17e",
        );
        /// `test_bad_checksum`: the same page with its checksum changed to 0x12.
        pub const MESH_PAGE_BAD_73: &str = concat!(
            "730000009100000d8002e5007e01010000f9527d5e000500000005000400890100008901010000005000",
            "000039000000d796ff0007000001000000010000000000000000fe000000f83830000200000100000001",
            "01000000410000001e00000000000000e800000100000001010000005000000039000000000000001e00",
            "00010000000101000000500000003900000000000000127e",
        );
    }
}
