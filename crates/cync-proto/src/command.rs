//! Command builders: the 0x73 packets a server sends to control mesh devices.
//!
//! ```text
//! 73 00 00 | len u16 BE | id[4] | msg[3] | 7e | seq | 00 00 00 | f8 | OP | L 00 |
//!     seq 00 00 00 00 | TT TT | OP' | 11 02 | args … | cs | 7e
//!     payload[0]        target u16 LE (device or group)
//! ```
//! The cloud's power command (cloud trace 00:16:19.803267, seq 0x21, device 5, on):
//! `73 00 00 00 1f 2d e4 b5 d2 15 37 00 7e 21 00 00 00 f8 d0 0d 00 21 00 00 00 00 05 00 d0 11 02 01 00 00 e7 7e`.
//! Every example of the protocol document is rebuilt byte for byte by the tests below.
//!
//! Commands set absolute state: there is no "toggle" on the wire, so sending one twice is
//! harmless.
//!
//! # 0x7D and 0x7E inside a frame
//!
//! 0x7E delimits the inner frame. One cloud sample stuffs 0x7D as `7d 5d` inside a frame (length
//! field and checksum over the unstuffed bytes, outer length over the stuffed ones); a working
//! app-side client escapes 0x7E as `7d 5e`; whether devices expect, accept or reject either in
//! a command is unknown (PROTOCOL.md §5, §12.1 item 21, §12.2). So cyncd keeps such bytes out
//! of what it sends wherever it can, and follows a stated policy, [`FrameEscaping`], for bytes
//! it cannot choose:
//!
//! | byte | chosen by | `avoid` (default) | `stuff` | `raw` |
//! |---|---|---|---|---|
//! | seq, `frame[1]` and `payload[0]` | cyncd | never 7D/7E ([`SeqCounter`]) | same | same |
//! | message id `[9:12]` | cyncd | never 7D/7E ([`clean_msg_counter`]) | same | same |
//! | checksum | the other bytes | the seq is picked again until it is clean | stuffed | sent as is |
//! | RGB component 125/126 | the user | nudged to 124/127 ([`nudge_rgb`]) | stuffed | sent as is |
//! | a target id byte of 0x7D/0x7E (device 125, 126, 381, …, or such a group) | the configuration | stuffed: the only way to reach it | stuffed | sent as is |
//!
//! The message id lies outside the frame, but a receiver that finds the frame by searching for
//! 0x7E (as legacy code does, PROTOCOL.md §12.1 item 5) would trip over one there, and avoiding
//! it costs nothing. A frame is stuffed only when it holds a 7D/7E; every other command is
//! byte-for-byte what [`command`] builds, so the real cloud's commands are reproduced exactly.
//! [`build`] applies the policy; [`command`] builds exactly what it is given (the `cyncd encode`
//! path and every worked example). The legacy transport's all-zero message id is unaffected.

use crate::frame::{Body, Direction, FLAG, Frame};
use crate::ids::{ConnId, MsgId, Seq};
use crate::packet::{Data, Packet};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Seq of the mesh-info request (fixed, as the cloud and legacy send it).
pub const MESH_REQUEST_SEQ: Seq = Seq(0x1f);
/// Seq of the mesh status ACK (fixed).
pub const MESH_ACK_SEQ: Seq = Seq(0x1e);

/// Who a command addresses; both are u16 LE on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mesh device id.
    Device(u16),
    /// A group id (sent to one bridge).
    Group(u16),
}

impl Target {
    fn id(self) -> u16 {
        match self {
            Self::Device(id) | Self::Group(id) => id,
        }
    }
}

/// The ten factory effects and their two-byte codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// `01 f1`.
    Candle,
    /// `43 9f`.
    Cyber,
    /// `02 7a`.
    Rainbow,
    /// `3a da`.
    Fireworks,
    /// `04 f4`.
    Volcanic,
    /// `05 1c`.
    Aurora,
    /// `06 54`.
    HappyHolidays,
    /// `07 4f`.
    RedWhiteBlue,
    /// `08 e3`.
    Vegas,
    /// `09 06`.
    PartyTime,
}

impl Effect {
    /// All effects, in catalogue order.
    pub const ALL: [Effect; 10] = [
        Self::Candle,
        Self::Cyber,
        Self::Rainbow,
        Self::Fireworks,
        Self::Volcanic,
        Self::Aurora,
        Self::HappyHolidays,
        Self::RedWhiteBlue,
        Self::Vegas,
        Self::PartyTime,
    ];

    /// The snake-case name (`happy_holidays`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Cyber => "cyber",
            Self::Rainbow => "rainbow",
            Self::Fireworks => "fireworks",
            Self::Volcanic => "volcanic",
            Self::Aurora => "aurora",
            Self::HappyHolidays => "happy_holidays",
            Self::RedWhiteBlue => "red_white_blue",
            Self::Vegas => "vegas",
            Self::PartyTime => "party_time",
        }
    }

    /// The effect with that name (case-insensitive; `-` and ` ` accepted for `_`).
    pub fn from_name(name: &str) -> Option<Self> {
        let norm = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Self::ALL.into_iter().find(|e| e.name() == norm)
    }

    /// The two bytes on the wire.
    pub fn code(self) -> [u8; 2] {
        match self {
            Self::Candle => [0x01, 0xf1],
            Self::Cyber => [0x43, 0x9f],
            Self::Rainbow => [0x02, 0x7a],
            Self::Fireworks => [0x3a, 0xda],
            Self::Volcanic => [0x04, 0xf4],
            Self::Aurora => [0x05, 0x1c],
            Self::HappyHolidays => [0x06, 0x54],
            Self::RedWhiteBlue => [0x07, 0x4f],
            Self::Vegas => [0x08, 0xe3],
            Self::PartyTime => [0x09, 0x06],
        }
    }

    /// The effect for two wire bytes.
    pub fn from_code(code: [u8; 2]) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

/// Wall-switch mode (`f8 8e` sub-op `f7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchMode {
    /// `02`: smart (the switch controls bulbs over the mesh).
    Smart,
    /// `01`: traditional (the switch cuts power).
    Traditional,
}

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// On or off.
    Power(bool),
    /// Brightness 0–100.
    Brightness(u8),
    /// White colour temperature 0–100.
    ColorTemp(u8),
    /// RGB colour.
    Rgb([u8; 3]),
    /// A factory effect.
    Effect(Effect),
    /// Fan speed 0–100 (sent as brightness; devices step 0/25/50/75/100).
    FanSpeed(u8),
    /// Switch mode.
    SwitchMode(SwitchMode),
}

/// A command that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// A value outside 0–100.
    #[error("{what} must be 0-100, got {value}")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value given.
        value: u8,
    },
}

impl Action {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), CommandError> {
        let check = |what, value: u8| {
            if value <= 100 {
                Ok(())
            } else {
                Err(CommandError::OutOfRange { what, value })
            }
        };
        match *self {
            Self::Brightness(v) => check("brightness", v),
            Self::ColorTemp(v) => check("color_temp", v),
            Self::FanSpeed(v) => check("fan_speed", v),
            _ => Ok(()),
        }
    }

    /// Reads the action of a request frame (`f8 d0`, `f8 f0`, `f8 e2`, `f8 8e`); `None` for
    /// anything else. A fan speed reads back as [`Action::Brightness`]: the bytes are the same.
    pub fn from_frame(frame: &Frame) -> Option<(Target, Self)> {
        if frame.dir != Direction::Request {
            return None;
        }
        let p = &frame.payload;
        let target = Target::Device(u16::from_le_bytes([*p.get(5)?, *p.get(6)?]));
        let args = p.get(10..)?;
        let action = match (frame.opcode, args) {
            (0xd0, [state, 0, 0]) => Self::Power(*state != 0),
            (0xf0, [1, b, 0xff, 0xff, 0xff, 0xff]) if *b <= 100 => Self::Brightness(*b),
            (0xf0, [1, 0xff, 0xfe, r, g, b]) => Self::Rgb([*r, *g, *b]),
            (0xf0, [1, 0xff, t, 0, 0, 0]) if *t <= 100 => Self::ColorTemp(*t),
            (0xe2, [7, 1, a, b]) => Self::Effect(Effect::from_code([*a, *b])?),
            (0x8e, [1, 2]) => Self::SwitchMode(SwitchMode::Smart),
            (0x8e, [1, 1]) => Self::SwitchMode(SwitchMode::Traditional),
            _ => return None,
        };
        Some((target, action))
    }

    /// Opcode and the argument bytes after `11 02`.
    fn wire(&self) -> (u8, Vec<u8>) {
        match *self {
            Self::Power(on) => (0xd0, vec![u8::from(on), 0, 0]),
            Self::Brightness(b) | Self::FanSpeed(b) => (0xf0, vec![1, b, 0xff, 0xff, 0xff, 0xff]),
            Self::ColorTemp(t) => (0xf0, vec![1, 0xff, t, 0, 0, 0]),
            Self::Rgb([r, g, b]) => (0xf0, vec![1, 0xff, 0xfe, r, g, b]),
            Self::Effect(e) => {
                let [a, b] = e.code();
                (0xe2, vec![7, 1, a, b])
            }
            Self::SwitchMode(m) => (0x8e, vec![1, if m == SwitchMode::Smart { 2 } else { 1 }]),
        }
    }
}

/// What to do with a 0x7D or 0x7E that cyncd cannot keep out of a frame it sends (see the
/// module documentation). Configured as `frame_escaping = "avoid" | "stuff" | "raw"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FrameEscaping {
    /// Keep them out: nudge colour components, pick another seq to move the checksum, and stuff
    /// only a target id that has one.
    #[default]
    Avoid,
    /// Stuff every one HDLC-style (`7d 5d`, `7d 5e`), as the cloud sample does.
    Stuff,
    /// Send them as they are, as the legacy controllers did.
    Raw,
}

/// A `frame_escaping` value that is not `avoid`, `stuff` or `raw`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("frame_escaping must be \"avoid\", \"stuff\" or \"raw\", not {0:?}")]
pub struct UnknownEscaping(pub String);

impl FrameEscaping {
    /// Every policy.
    pub const ALL: [FrameEscaping; 3] = [Self::Avoid, Self::Stuff, Self::Raw];

    /// The configuration name: `avoid`, `stuff` or `raw`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avoid => "avoid",
            Self::Stuff => "stuff",
            Self::Raw => "raw",
        }
    }
}

impl FromStr for FrameEscaping {
    type Err = UnknownEscaping;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownEscaping(s.to_string()))
    }
}

impl fmt::Display for FrameEscaping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a byte inside a frame would need escaping.
pub fn is_flag_byte(b: u8) -> bool {
    b == FLAG || b == ESCAPE
}

const ESCAPE: u8 = 0x7d;

/// Picks command seqs: +1 per command (the first is 1), wrapping 255 → 0, and never the mesh
/// request's or mesh ACK's fixed 0x1F/0x1E (a command's result could be taken for theirs) nor
/// 0x7D/0x7E (the seq sits inside the frame twice). In relay mode it also skips the seqs the
/// cloud uses ([`SeqCounter::set_avoid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqCounter {
    last: u8,
    avoid: crate::relay::SeqSet,
}

impl SeqCounter {
    /// A counter whose next seq is 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter whose next seq is the first usable one after `last`.
    pub fn starting_after(last: Seq) -> Self {
        Self {
            last: last.0,
            avoid: crate::relay::SeqSet::EMPTY,
        }
    }

    /// Seqs to skip besides the fixed ones (the cloud's, on a relayed connection); replaces
    /// the previous set.
    pub fn set_avoid(&mut self, avoid: crate::relay::SeqSet) {
        self.avoid = avoid;
    }

    /// The next seq.
    pub fn next_seq(&mut self) -> Seq {
        let usable = |s: u8| s != MESH_REQUEST_SEQ.0 && s != MESH_ACK_SEQ.0 && !is_flag_byte(s);
        // One full turn at most: if the set to avoid left nothing usable, it is ignored.
        for _ in 0..=u8::MAX {
            self.last = self.last.wrapping_add(1);
            let s = self.last;
            if usable(s) && !self.avoid.contains(s) {
                return Seq(s);
            }
        }
        // At most 3 values in a row are fixed-unusable (0x7D, 0x7E; 0x1E, 0x1F), so this ends.
        loop {
            self.last = self.last.wrapping_add(1);
            if usable(self.last) {
                return Seq(self.last);
            }
        }
    }
}

/// The first message-id counter at or after `counter` (wrapping) whose two bytes hold no 0x7D or
/// 0x7E, for [`MsgId::from_counter`].
pub fn clean_msg_counter(counter: u16) -> u16 {
    let [hi, lo] = counter.to_be_bytes();
    if is_flag_byte(hi) {
        // 0x7d00 and 0x7e00 both move on to 0x7f00.
        return 0x7f00;
    }
    if is_flag_byte(lo) {
        return u16::from_be_bytes([hi, 0x7f]);
    }
    counter
}

/// The colour with 125 sent as 124 and 126 as 127: one step, invisible, and no escaping.
pub fn nudge_rgb(rgb: [u8; 3]) -> [u8; 3] {
    rgb.map(|c| match c {
        0x7d => 0x7c,
        0x7e => 0x7f,
        other => other,
    })
}

/// A command built under a [`FrameEscaping`] policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The packet, ready to send.
    pub packet: Packet,
    /// The seq it carries (the counter may have skipped some).
    pub seq: Seq,
    /// The action as sent (a nudged colour under `avoid`).
    pub action: Action,
    /// Whether its frame is HDLC-stuffed.
    pub stuffed: bool,
}

/// Builds a control command under `escaping`, taking seqs from `seqs` (see the module
/// documentation for the policy).
pub fn build(
    conn: ConnId,
    msg: MsgId,
    seqs: &mut SeqCounter,
    target: Target,
    action: Action,
    escaping: FrameEscaping,
) -> Result<Built, CommandError> {
    action.validate()?;
    let action = match (escaping, action) {
        (FrameEscaping::Avoid, Action::Rgb(rgb)) => Action::Rgb(nudge_rgb(rgb)),
        _ => action,
    };
    let mut seq = seqs.next_seq();
    if escaping == FrameEscaping::Avoid {
        // Each seq moves the checksum by one (two for switch mode, which carries seq + 1 too);
        // at most a handful of seqs are unusable, so this finds one long before its bound.
        for _ in 0..=u8::MAX {
            if !needs_escape_beside_target(&frame(seq, target, action)) {
                break;
            }
            seq = seqs.next_seq();
        }
    }
    let mut f = frame(seq, target, action);
    f.stuffed = escaping != FrameEscaping::Raw && has_flag_bytes(&f);
    let stuffed = f.stuffed;
    Ok(Built {
        packet: data(conn, msg, f),
        seq,
        action,
        stuffed,
    })
}

/// The bytes between the delimiters of an encoded frame, unstuffed.
fn inner(f: &Frame) -> impl Iterator<Item = u8> + '_ {
    let [lo, hi] = u16::try_from(f.payload.len())
        .unwrap_or(u16::MAX)
        .to_le_bytes();
    [
        f.seq,
        f.flags[0],
        f.flags[1],
        f.flags[2],
        f.dir.byte(),
        f.opcode,
        lo,
        hi,
    ]
    .into_iter()
    .chain(f.payload.iter().copied())
    .chain(std::iter::once(f.checksum))
}

fn has_flag_bytes(f: &Frame) -> bool {
    inner(f).any(is_flag_byte)
}

/// Whether a byte other than the target id (`payload[5..7]`, frame bytes 14 and 15) needs
/// escaping.
fn needs_escape_beside_target(f: &Frame) -> bool {
    inner(f)
        .enumerate()
        // `inner` starts at frame[1]: frame[14..16] are its items 13 and 14.
        .any(|(i, b)| !(13..=14).contains(&i) && is_flag_byte(b))
}

/// Builds a control command for `target` on connection `conn`, with outer message id `msg` and
/// inner sequence `seq`, byte for byte as given (no escaping policy: see [`build`]).
pub fn command(
    conn: ConnId,
    msg: MsgId,
    seq: Seq,
    target: Target,
    action: Action,
) -> Result<Packet, CommandError> {
    action.validate()?;
    Ok(data(conn, msg, frame(seq, target, action)))
}

/// The request frame of a (validated) action.
fn frame(seq: Seq, target: Target, action: Action) -> Frame {
    let (opcode, args) = action.wire();
    let [t0, t1] = target.id().to_le_bytes();
    if let Action::SwitchMode(_) = action {
        // Legacy template: frame[2] = 01, payload[0] = seq + 1, payload[1] = 01, sub-op f7.
        let mut payload = vec![seq.0.wrapping_add(1), 1, 0, 0, 0, t0, t1, 0xf7, 0x11, 0x02];
        payload.extend_from_slice(&args);
        let mut frame = Frame::new(seq.0, Direction::Request, opcode, payload);
        frame.flags = [1, 0, 0];
        frame
    } else {
        let mut payload = vec![seq.0, 0, 0, 0, 0, t0, t1, opcode, 0x11, 0x02];
        payload.extend_from_slice(&args);
        Frame::new(seq.0, Direction::Request, opcode, payload)
    }
}

/// The mesh-info request (`f8 52`, payload `00 00 ff ff 00 00` = all devices); the device
/// answers with `f9 52` pages.
pub fn mesh_info_request(conn: ConnId, msg: MsgId, seq: Seq) -> Packet {
    data(
        conn,
        msg,
        Frame::new(
            seq.0,
            Direction::Request,
            0x52,
            vec![0, 0, 0xff, 0xff, 0, 0],
        ),
    )
}

/// The mesh status ACK (`f8 af`, payload `af 01`), sent after a mesh-info answer.
pub fn mesh_status_ack(conn: ConnId, msg: MsgId, seq: Seq) -> Packet {
    data(
        conn,
        msg,
        Frame::new(seq.0, Direction::Request, 0xaf, vec![0xaf, 0x01]),
    )
}

/// The 0xA3 "want to control" announce.
pub fn announce(conn_id: ConnId, msg_id: MsgId) -> Packet {
    Packet::Announce(crate::packet::Announce { conn_id, msg_id })
}

fn data(conn_id: ConnId, msg_id: MsgId, frame: Frame) -> Packet {
    Packet::Data(Data {
        conn_id,
        msg_id,
        body: Body::Frame(frame),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::hex;

    fn id(s: &str) -> ConnId {
        ConnId::from_hex(s).unwrap()
    }

    fn msg(s: &str) -> MsgId {
        MsgId::from_hex(s).unwrap()
    }

    #[track_caller]
    fn check(packet: Result<Packet, CommandError>, expected: &str) {
        let packet = packet.unwrap();
        assert_eq!(packet.to_bytes(), hex(expected));
        // Decoding the built bytes gives the same value back.
        assert_eq!(Packet::decode(&hex(expected)).unwrap(), packet);
    }

    #[test]
    fn power_on_from_cloud_trace() {
        check(
            command(
                id("2de4b5d2"),
                msg("153700"),
                Seq(0x21),
                Target::Device(5),
                Action::Power(true),
            ),
            "73 00 00 00 1f 2d e4 b5 d2 15 37 00 7e 21 00 00 00 f8 d0 0d 00 21 00 00 00 00 05 00 d0 11 02 01 00 00 e7 7e",
        );
    }

    #[test]
    fn power_off_from_cloud_trace() {
        check(
            command(
                id("2de4b5d2"),
                msg("153a00"),
                Seq(0x22),
                Target::Device(5),
                Action::Power(false),
            ),
            "73 00 00 00 1f 2d e4 b5 d2 15 3a 00 7e 22 00 00 00 f8 d0 0d 00 22 00 00 00 00 05 00 d0 11 02 00 00 00 e7 7e",
        );
    }

    #[test]
    fn brightness() {
        check(
            command(
                id("37962469"),
                msg("604800"),
                Seq(0x17),
                Target::Device(7),
                Action::Brightness(39),
            ),
            "73 00 00 00 22 37 96 24 69 60 48 00 7e 17 00 00 00 f8 f0 10 00 17 00 00 00 00 07 00 f0 11 02 01 27 ff ff ff ff 45 7e",
        );
    }

    #[test]
    fn color_temp_and_rgb_frames() {
        let conn = id("37962469");
        let p = command(
            conn,
            msg("000000"),
            Seq(0x36),
            Target::Device(7),
            Action::ColorTemp(0x48),
        )
        .unwrap();
        assert_eq!(
            p.frame().unwrap().to_bytes(),
            hex("7e 36 00 00 00 f8 f0 10 00 36 00 00 00 00 07 00 f0 11 02 01 ff 48 00 00 00 88 7e")
        );
        let p = command(
            conn,
            msg("000000"),
            Seq(0x2b),
            Target::Device(7),
            Action::Rgb([0, 0xfb, 0xff]),
        )
        .unwrap();
        assert_eq!(
            p.frame().unwrap().to_bytes(),
            hex("7e 2b 00 00 00 f8 f0 10 00 2b 00 00 00 00 07 00 f0 11 02 01 ff fe 00 fb ff 2d 7e")
        );
    }

    #[test]
    fn effect_candle() {
        check(
            command(
                id("2de4b5d2"),
                msg("b30500"),
                Seq(0x14),
                Target::Device(0x0a),
                Action::Effect(Effect::Candle),
            ),
            "73 00 00 00 20 2d e4 b5 d2 b3 05 00 7e 14 00 00 00 f8 e2 0e 00 14 00 00 00 00 0a 00 e2 11 02 07 01 01 f1 fd 7e",
        );
    }

    #[test]
    fn switch_mode_traditional() {
        check(
            command(
                id("1bdcda3e"),
                msg("001300"),
                Seq(0x0d),
                Target::Device(0xa0),
                Action::SwitchMode(SwitchMode::Traditional),
            ),
            "73 00 00 00 1e 1b dc da 3e 00 13 00 7e 0d 01 00 00 f8 8e 0c 00 0e 01 00 00 00 a0 00 f7 11 02 01 01 55 7e",
        );
    }

    #[test]
    fn group_power() {
        check(
            command(
                id("37962469"),
                msg("000000"),
                Seq(5),
                Target::Group(0x8001),
                Action::Power(true),
            ),
            "73 00 00 00 1f 37 96 24 69 00 00 00 7e 05 00 00 00 f8 d0 0d 00 05 00 00 00 00 01 80 d0 11 02 01 00 00 47 7e",
        );
    }

    #[test]
    fn mesh_request_and_ack() {
        assert_eq!(
            mesh_info_request(id("2de4b5d2"), msg("152c00"), MESH_REQUEST_SEQ).to_bytes(),
            hex(
                "73 00 00 00 18 2d e4 b5 d2 15 2c 00 7e 1f 00 00 00 f8 52 06 00 00 00 ff ff 00 00 56 7e"
            )
        );
        assert_eq!(
            mesh_status_ack(id("2de4b5d2"), msg("152d00"), MESH_ACK_SEQ).to_bytes(),
            hex("73 00 00 00 14 2d e4 b5 d2 15 2d 00 7e 1e 00 00 00 f8 af 02 00 af 01 61 7e")
        );
        assert_eq!(
            announce(id("2de4b5d2"), msg("152b00")).to_bytes(),
            hex("a3 00 00 00 07 2d e4 b5 d2 15 2b 00")
        );
    }

    #[test]
    fn fan_speed_is_brightness_on_the_wire() {
        let conn = id("37962469");
        let fan = command(
            conn,
            msg("000100"),
            Seq(3),
            Target::Device(9),
            Action::FanSpeed(75),
        )
        .unwrap();
        let dim = command(
            conn,
            msg("000100"),
            Seq(3),
            Target::Device(9),
            Action::Brightness(75),
        )
        .unwrap();
        assert_eq!(fan, dim);
    }

    #[test]
    fn out_of_range_is_rejected() {
        let r = command(
            id("37962469"),
            msg("000000"),
            Seq(1),
            Target::Device(1),
            Action::Brightness(101),
        );
        assert_eq!(
            r,
            Err(CommandError::OutOfRange {
                what: "brightness",
                value: 101
            })
        );
    }

    #[test]
    fn actions_read_back_from_frames() {
        let conn = id("37962469");
        for action in [
            Action::Power(true),
            Action::Power(false),
            Action::Brightness(0),
            Action::ColorTemp(100),
            Action::Rgb([1, 2, 3]),
            Action::SwitchMode(SwitchMode::Smart),
        ]
        .into_iter()
        .chain(Effect::ALL.map(Action::Effect))
        {
            let p = command(conn, msg("000100"), Seq(9), Target::Device(300), action).unwrap();
            assert_eq!(
                Action::from_frame(p.frame().unwrap()),
                Some((Target::Device(300), action))
            );
        }
    }

    /// The byte positions of a frame between its delimiters, as sent.
    fn inside(p: &Packet) -> Vec<u8> {
        let bytes = p.to_bytes();
        bytes[13..bytes.len() - 1].to_vec()
    }

    fn flag_bytes(p: &Packet) -> usize {
        inside(p).into_iter().filter(|b| is_flag_byte(*b)).count()
    }

    #[track_caller]
    fn built(seq_after: u8, target: Target, action: Action, escaping: FrameEscaping) -> Built {
        let mut seqs = SeqCounter::starting_after(Seq(seq_after));
        let b = build(
            id("2de4b5d2"),
            msg("153700"),
            &mut seqs,
            target,
            action,
            escaping,
        )
        .unwrap();
        // Whatever the policy, the bytes decode back to the same packet, the checksum holds and
        // the action reads back as sent.
        let back = Packet::decode(&b.packet.to_bytes()).unwrap();
        assert_eq!(back, b.packet);
        let frame = back.frame().unwrap();
        assert!(frame.checksum_ok());
        assert_eq!(frame.stuffed, b.stuffed);
        assert_eq!(frame.seq, b.seq.0);
        // (The wire does not tell a group from a device.)
        let read = Target::Device(target.id());
        assert_eq!(Action::from_frame(frame), Some((read, b.action)));
        b
    }

    #[test]
    fn escaping_names() {
        for e in FrameEscaping::ALL {
            assert_eq!(e.name().parse::<FrameEscaping>(), Ok(e));
            assert_eq!(e.to_string(), e.name());
        }
        assert_eq!(" Stuff ".parse::<FrameEscaping>(), Ok(FrameEscaping::Stuff));
        assert_eq!(FrameEscaping::default(), FrameEscaping::Avoid);
        assert_eq!(
            "escape".parse::<FrameEscaping>(),
            Err(UnknownEscaping("escape".into()))
        );
    }

    #[test]
    fn seqs_skip_the_mesh_seqs_and_the_flag_bytes() {
        let mut seqs = SeqCounter::new();
        let picked: Vec<u8> = (0..600).map(|_| seqs.next_seq().0).collect();
        assert_eq!(picked[..3], [1, 2, 3]);
        for bad in [0x1e, 0x1f, 0x7d, 0x7e] {
            assert!(!picked.contains(&bad), "{bad:#x}");
        }
        // Every other value comes up, in order, wrapping 255 → 0.
        assert_eq!(picked[..252].iter().filter(|s| **s == 0x1d).count(), 1);
        let after_1d = picked.iter().position(|s| *s == 0x1d).unwrap();
        assert_eq!(picked[after_1d + 1], 0x20);
        let after_7c = picked.iter().position(|s| *s == 0x7c).unwrap();
        assert_eq!(picked[after_7c + 1], 0x7f);
        let after_ff = picked.iter().position(|s| *s == 0xff).unwrap();
        assert_eq!(picked[after_ff + 1], 0);
    }

    #[test]
    fn message_counters_skip_the_flag_bytes() {
        let clean = |c: u16| c.to_be_bytes().iter().all(|b| !is_flag_byte(*b));
        for c in 0..=u16::MAX {
            let got = clean_msg_counter(c);
            // The first clean counter at or after c (none is skipped).
            let expected = (c..=u16::MAX).find(|n| clean(*n)).unwrap();
            assert_eq!(got, expected, "{c:#06x}");
        }
    }

    #[test]
    fn the_clouds_commands_are_unchanged_under_every_policy() {
        for e in FrameEscaping::ALL {
            for (after, action, expected) in [
                (
                    0x20,
                    Action::Power(true),
                    "73 00 00 00 1f 2d e4 b5 d2 15 37 00 7e 21 00 00 00 f8 d0 0d 00 21 00 00 00 00 05 00 d0 11 02 01 00 00 e7 7e",
                ),
                (
                    0x21,
                    Action::Power(false),
                    "73 00 00 00 1f 2d e4 b5 d2 15 37 00 7e 22 00 00 00 f8 d0 0d 00 22 00 00 00 00 05 00 d0 11 02 00 00 00 e7 7e",
                ),
            ] {
                let b = built(after, Target::Device(5), action, e);
                assert_eq!(b.packet.to_bytes(), hex(expected), "{e}");
                assert!(!b.stuffed);
            }
        }
    }

    #[test]
    fn a_target_id_of_125_or_126_is_stuffed_unless_raw() {
        for (target, escaped) in [
            (Target::Device(125), [0x7d, 0x5d]),
            (Target::Device(126), [0x7d, 0x5e]),
            (Target::Device(0x017d), [0x7d, 0x5d]),
            (Target::Group(0x7e01), [0x7d, 0x5e]),
        ] {
            for e in [FrameEscaping::Avoid, FrameEscaping::Stuff] {
                let b = built(0, target, Action::Power(true), e);
                assert!(b.stuffed, "{target:?} {e}");
                let inner = inside(&b.packet);
                // The escape is the target's and nothing else needs one: a one-byte longer frame.
                assert!(inner.windows(2).any(|w| w == escaped), "{target:?} {e}");
                assert!(!inner.contains(&0x7e));
                assert_eq!(b.packet.to_bytes().len(), 37);
            }
            let raw = built(0, target, Action::Power(true), FrameEscaping::Raw);
            assert!(!raw.stuffed);
            assert_eq!(flag_bytes(&raw.packet), 1, "{target:?}");
            assert_eq!(raw.packet.to_bytes().len(), 36);
        }
    }

    #[test]
    fn an_rgb_component_of_125_or_126_is_nudged_stuffed_or_sent() {
        let asked = Action::Rgb([125, 126, 10]);
        let avoid = built(0, Target::Device(7), asked, FrameEscaping::Avoid);
        assert_eq!(avoid.action, Action::Rgb([124, 127, 10]));
        assert!(!avoid.stuffed);
        assert_eq!(flag_bytes(&avoid.packet), 0);
        let stuff = built(0, Target::Device(7), asked, FrameEscaping::Stuff);
        assert_eq!(stuff.action, asked);
        assert!(stuff.stuffed);
        assert!(inside(&stuff.packet).windows(2).any(|w| w == [0x7d, 0x5d]));
        assert!(inside(&stuff.packet).windows(2).any(|w| w == [0x7d, 0x5e]));
        let raw = built(0, Target::Device(7), asked, FrameEscaping::Raw);
        assert_eq!(raw.action, asked);
        assert_eq!(flag_bytes(&raw.packet), 2);
        // Components that need nothing are left alone.
        assert_eq!(nudge_rgb([0, 124, 127]), [0, 124, 127]);
    }

    #[test]
    fn a_checksum_of_0x7d_or_0x7e_moves_the_seq_under_avoid() {
        // Power on to device 5: checksum = 0xc6 + seq, so seq 0xb7 → 0x7d and 0xb8 → 0x7e.
        for (after, bad) in [(0xb6u8, 0xb7u8), (0xb7, 0xb8)] {
            let on = Action::Power(true);
            let avoid = built(after, Target::Device(5), on, FrameEscaping::Avoid);
            assert_eq!(avoid.seq, Seq(0xb9), "{bad:#x}");
            assert!(!avoid.stuffed);
            assert_eq!(flag_bytes(&avoid.packet), 0);
            let stuff = built(after, Target::Device(5), on, FrameEscaping::Stuff);
            assert_eq!(stuff.seq, Seq(bad));
            assert!(stuff.stuffed);
            let raw = built(after, Target::Device(5), on, FrameEscaping::Raw);
            assert_eq!(raw.seq, Seq(bad));
            let bytes = raw.packet.to_bytes();
            assert!(is_flag_byte(bytes[bytes.len() - 2]));
        }
        // Switch mode carries seq + 1 as well: after 0x7b the next seq 0x7c would put 0x7d in
        // payload[0].
        let mode = Action::SwitchMode(SwitchMode::Smart);
        let b = built(0x7b, Target::Device(0xa0), mode, FrameEscaping::Avoid);
        assert_ne!(b.seq, Seq(0x7c));
        assert_eq!(flag_bytes(&b.packet), 0);
    }

    #[test]
    fn effect_names() {
        for e in Effect::ALL {
            assert_eq!(Effect::from_name(e.name()), Some(e));
        }
        assert_eq!(
            Effect::from_name("Happy Holidays"),
            Some(Effect::HappyHolidays)
        );
        assert_eq!(Effect::from_name("disco"), None);
    }
}
