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

use crate::frame::{Body, Direction, Frame};
use crate::ids::{ConnId, MsgId, Seq};
use crate::packet::{Data, Packet};
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

/// Builds a control command for `target` on connection `conn`, with outer message id `msg` and
/// inner sequence `seq`.
pub fn command(
    conn: ConnId,
    msg: MsgId,
    seq: Seq,
    target: Target,
    action: Action,
) -> Result<Packet, CommandError> {
    action.validate()?;
    let (opcode, args) = action.wire();
    let [t0, t1] = target.id().to_le_bytes();
    let frame = if let Action::SwitchMode(_) = action {
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
    };
    Ok(data(conn, msg, frame))
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
