//! Typed packets: one struct per packet type, one enum over all of them.
//!
//! ```text
//! byte 0      type
//! byte 1..2   00 00          (all 9,950 packets of the captures)
//! byte 3..4   length, u16 BE  total = 5 + length
//! byte 5..    payload
//! ```
//! Types 0x43 0x73 0x7B 0x78 0x83 0xA3 0xAB carry the 4-byte connection id at `[5:9]` and the
//! 3-byte message id at `[9:12]`; the hello (0x23) carries the id at `[6:10]`.
//!
//! [`Packet::decode`] takes exactly one packet (as the [`crate::Framer`] yields it). Decoding is
//! strict about sizes that are fixed on the wire and keeps every variable or unknown byte, so for
//! every input that decodes, [`Packet::encode`] writes the same bytes back.

use crate::frame::{Body, Frame};
use crate::ids::{AuthCode, ConnId, MsgId};
use crate::reply::LocalTime;
use crate::status::{DeviceStatus, Entry, Firmware, MeshPage, Record};
use crate::thermostat::SensorReport;
use thiserror::Error;

/// Size of the outer header.
pub const HEADER_LEN: usize = 5;

/// The packet types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 0x23, device hello / authentication.
    Hello,
    /// 0x28, hello ACK.
    HelloAck,
    /// 0xC3, time / connect request.
    TimeRequest,
    /// 0xC8, time / connect reply.
    TimeReply,
    /// 0xD3, heartbeat.
    Heartbeat,
    /// 0xD8, heartbeat ACK.
    HeartbeatAck,
    /// 0x43, device info (ping, status records, TLV).
    Info,
    /// 0x48, 0x43 ACK.
    InfoAck,
    /// 0x83, device report (status, firmware, other).
    Report,
    /// 0x88, 0x83 ACK.
    ReportAck,
    /// 0xA3, "want to control" announce.
    Announce,
    /// 0xAB, the device's reply to 0xA3.
    AnnounceReply,
    /// 0x73, data channel (commands, results, mesh info).
    Data,
    /// 0x7B, transport ACK of a 0x73.
    DataAck,
    /// 0x78, cloud status notice for an earlier packet.
    Notice,
    /// 0x13, phone-app hello.
    AppHello,
    /// 0x18, phone-app hello ACK.
    AppHelloAck,
    /// 0xA8, reply to a phone app's 0xA3.
    AppAnnounceAck,
}

impl PacketType {
    /// Every known type.
    pub const ALL: [PacketType; 18] = [
        Self::Hello,
        Self::HelloAck,
        Self::TimeRequest,
        Self::TimeReply,
        Self::Heartbeat,
        Self::HeartbeatAck,
        Self::Info,
        Self::InfoAck,
        Self::Report,
        Self::ReportAck,
        Self::Announce,
        Self::AnnounceReply,
        Self::Data,
        Self::DataAck,
        Self::Notice,
        Self::AppHello,
        Self::AppHelloAck,
        Self::AppAnnounceAck,
    ];

    /// The type for a type byte, if known.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.byte() == b)
    }

    /// The type byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Hello => 0x23,
            Self::HelloAck => 0x28,
            Self::TimeRequest => 0xc3,
            Self::TimeReply => 0xc8,
            Self::Heartbeat => 0xd3,
            Self::HeartbeatAck => 0xd8,
            Self::Info => 0x43,
            Self::InfoAck => 0x48,
            Self::Report => 0x83,
            Self::ReportAck => 0x88,
            Self::Announce => 0xa3,
            Self::AnnounceReply => 0xab,
            Self::Data => 0x73,
            Self::DataAck => 0x7b,
            Self::Notice => 0x78,
            Self::AppHello => 0x13,
            Self::AppHelloAck => 0x18,
            Self::AppAnnounceAck => 0xa8,
        }
    }

    /// A short stable name (used in logs, metrics labels and `cyncd decode`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::HelloAck => "hello_ack",
            Self::TimeRequest => "time_request",
            Self::TimeReply => "time_reply",
            Self::Heartbeat => "heartbeat",
            Self::HeartbeatAck => "heartbeat_ack",
            Self::Info => "info",
            Self::InfoAck => "info_ack",
            Self::Report => "report",
            Self::ReportAck => "report_ack",
            Self::Announce => "announce",
            Self::AnnounceReply => "announce_reply",
            Self::Data => "data",
            Self::DataAck => "data_ack",
            Self::Notice => "notice",
            Self::AppHello => "app_hello",
            Self::AppHelloAck => "app_hello_ack",
            Self::AppAnnounceAck => "app_announce_ack",
        }
    }

    /// Whether packets of this type carry the connection id at `[5:9]` and message id at
    /// `[9:12]`.
    pub fn has_ids(self) -> bool {
        matches!(
            self,
            Self::Info
                | Self::Data
                | Self::DataAck
                | Self::Notice
                | Self::Report
                | Self::Announce
                | Self::AnnounceReply
        )
    }
}

/// Why bytes are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer than 5 bytes.
    #[error("truncated: {0} bytes, a header needs 5")]
    Truncated(usize),
    /// The header length does not match the bytes given.
    #[error("header declares {declared} bytes in all, {actual} given")]
    LengthMismatch {
        /// 5 + the header length.
        declared: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Bytes 1..2 are not `00 00`.
    #[error("reserved header bytes are {0:02x?}, not 00 00")]
    Reserved([u8; 2]),
    /// The payload size does not fit the type.
    #[error("{name} (type {kind:#04x}) needs a payload of {expected} bytes, got {actual}")]
    BadSize {
        /// Type byte.
        kind: u8,
        /// Type name.
        name: &'static str,
        /// What the type needs, e.g. "7" or "at least 7".
        expected: &'static str,
        /// Payload bytes present.
        actual: usize,
    },
    /// A hello whose auth-code length runs past the packet.
    #[error("hello auth code length {declared} exceeds the {available} bytes present")]
    AuthLength {
        /// `[10:12]`.
        declared: usize,
        /// Bytes after the length field.
        available: usize,
    },
}

/// One packet of any type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// 0x23.
    Hello(Hello),
    /// 0x28.
    HelloAck(HelloAck),
    /// 0xC3: one unknown byte (`0c` on every device seen).
    TimeRequest(u8),
    /// 0xC8.
    TimeReply(TimeReply),
    /// 0xD3, empty.
    Heartbeat,
    /// 0xD8, empty.
    HeartbeatAck,
    /// 0x43.
    Info(Info),
    /// 0x48.
    InfoAck(Ack3),
    /// 0x83.
    Report(Report),
    /// 0x88.
    ReportAck(Ack3),
    /// 0xA3.
    Announce(Announce),
    /// 0xAB.
    AnnounceReply(AnnounceReply),
    /// 0x73.
    Data(Data),
    /// 0x7B.
    DataAck(DataAck),
    /// 0x78.
    Notice(Notice),
    /// 0x13.
    AppHello(Hello),
    /// 0x18.
    AppHelloAck(HelloAck),
    /// 0xA8.
    AppAnnounceAck(AppAnnounceAck),
    /// A type byte not in the protocol; skipped by its length.
    Unknown(Unknown),
}

/// 0x23 / 0x13 hello.
///
/// ```text
/// 23 00 00 00 1a | 03 | 32 5d 53 17 | 00 10 | 16 ASCII bytes (auth code) | 00 00 3c
///                  marker id[6:10]    u16 BE code length                    trailer
/// ```
/// Capture A 08:20:44.836127 (auth code not reproduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Byte 5 (`03` on every device).
    pub marker: u8,
    /// The device's id.
    pub conn_id: ConnId,
    /// The per-device secret; redacted in `Debug`.
    pub auth: AuthCode,
    /// Bytes after the code (`00 00 3c` on devices; meaning unknown).
    pub trailer: Vec<u8>,
}

/// 0x28 / 0x18 hello ACK: `28 00 00 00 02 00 00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HelloAck(pub [u8; 2]);

/// 0xC8 time reply: a marker byte (`0d`) and the local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeReply {
    /// `[5]`, `0d` in every sample.
    pub marker: u8,
    /// The local date, time and UTC offset.
    pub time: LocalTime,
}

/// 0x43 device info.
///
/// ```text
/// 43 00 00 | len | id[4] | 01 01 06 | body
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:12]` (`01 01 06` on every device seen).
    pub msg_id: MsgId,
    /// The body, by class.
    pub body: InfoBody,
}

/// The body of a 0x43, by class (PROTOCOL.md §6.6):
/// - empty → [`InfoBody::Ping`];
/// - first byte ≥ 0xC0 → [`InfoBody::Tlv`];
/// - otherwise length-prefixed entries `tag | flags:4 length:12 | value` ([`Entry`]): all of
///   them 19-byte status records (`tag 00 10` + 16) → [`InfoBody::Records`], any other mix →
///   [`InfoBody::Entries`] (short status records, a thermostat's JSON);
/// - a body the entries do not fill exactly → [`InfoBody::Opaque`].
///
/// A body is never cut into 19-byte records by its size alone: a thermostat's 608-byte JSON
/// body is 32 × 19 bytes and must not become 32 statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoBody {
    /// Empty body.
    Ping,
    /// One or more 19-byte status records.
    Records(Vec<Record>),
    /// `tag type len value` items, e.g. the `c7 90 2a` timestamp string.
    Tlv(Vec<Tlv>),
    /// Length-prefixed entries, not all of them 19-byte records.
    Entries(Vec<Entry>),
    /// A body that fits no known class.
    Opaque(Vec<u8>),
}

/// One TLV item of a 0x43 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// Tag (c2–c7 seen).
    pub tag: u8,
    /// Second byte (`20` or `90` seen).
    pub kind: u8,
    /// Value (its length is the third byte on the wire).
    pub value: Vec<u8>,
}

/// An ACK that echoes three bytes: 0x48 (`[9:11]` of the 0x43 + `00`) and 0x88 (`[9:12]` of the
/// 0x83).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack3(pub [u8; 3]);

/// 0x83 device report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `[5:9]`: the device's own id.
    pub conn_id: ConnId,
    /// `[9:12]`: `00 NN 00`, NN counting reports.
    pub msg_id: MsgId,
    /// The inner frame from byte 12.
    pub body: Body,
}

/// 0xA3 announce: `a3 00 00 00 07 | id | msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:12]`.
    pub msg_id: MsgId,
}

/// 0xAB, the device's 1,024-byte reply to 0xA3 (`07 00 09 "xlink_dev" 00…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceReply {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:12]`.
    pub msg_id: MsgId,
    /// Bytes from 12 on.
    pub body: Vec<u8>,
}

/// 0x73 data-channel packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:12]`.
    pub msg_id: MsgId,
    /// The inner frame from byte 12.
    pub body: Body,
}

/// 0x7B transport ACK: `7b 00 00 00 07` + `[5:12]` of the acknowledged 0x73.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAck {
    /// Echoed `[5:9]`.
    pub conn_id: ConnId,
    /// Echoed `[9:12]`.
    pub msg_id: MsgId,
}

/// 0x78 notice: `78 00 00 00 07 | id | msg[0:2] | code` (codes 05 and 0a seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:11]`.
    pub msg: [u8; 2],
    /// `[11]`.
    pub code: u8,
}

/// 0xA8, the cloud's reply to an app's 0xA3: `a8 00 00 00 08 | id | msg[0:2] | code | 00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppAnnounceAck {
    /// `[5:9]`.
    pub conn_id: ConnId,
    /// `[9:11]`.
    pub msg: [u8; 2],
    /// `[11]`.
    pub code: u8,
    /// `[12]`.
    pub tail: u8,
}

/// A packet of a type the protocol does not define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// The type byte.
    pub kind: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Packet {
    /// Decodes exactly one packet.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Truncated(bytes.len()));
        };
        let declared = HEADER_LEN + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if declared != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                declared,
                actual: bytes.len(),
            });
        }
        let [kind, r1, r2, _, _] = *header;
        if [r1, r2] != [0, 0] {
            return Err(DecodeError::Reserved([r1, r2]));
        }
        let Some(ty) = PacketType::from_byte(kind) else {
            return Ok(Self::Unknown(Unknown {
                kind,
                payload: payload.to_vec(),
            }));
        };
        let size = |expected: &'static str| DecodeError::BadSize {
            kind,
            name: ty.name(),
            expected,
            actual: payload.len(),
        };
        // Id-carrying types: `[5:9]` and `[9:12]` are payload[0..4] and payload[4..7].
        let ids = || -> Result<(ConnId, MsgId, &[u8]), DecodeError> {
            match (
                ConnId::read(payload, 0),
                MsgId::read(payload, 4),
                payload.get(7..),
            ) {
                (Some(c), Some(m), Some(rest)) => Ok((c, m, rest)),
                _ => Err(size("at least 7")),
            }
        };
        Ok(match ty {
            PacketType::Hello | PacketType::AppHello => {
                let hello = Hello::decode(payload).ok_or_else(|| size("at least 7"))??;
                if ty == PacketType::Hello {
                    Self::Hello(hello)
                } else {
                    Self::AppHello(hello)
                }
            }
            PacketType::HelloAck | PacketType::AppHelloAck => {
                let ack = HelloAck(*fixed(payload).ok_or_else(|| size("2"))?);
                if ty == PacketType::HelloAck {
                    Self::HelloAck(ack)
                } else {
                    Self::AppHelloAck(ack)
                }
            }
            PacketType::TimeRequest => {
                let [code] = *fixed(payload).ok_or_else(|| size("1"))?;
                Self::TimeRequest(code)
            }
            PacketType::TimeReply => {
                let (&marker, rest) = payload.split_first().ok_or_else(|| size("11"))?;
                let time = LocalTime::decode(rest).ok_or_else(|| size("11"))?;
                Self::TimeReply(TimeReply { marker, time })
            }
            PacketType::Heartbeat | PacketType::HeartbeatAck => {
                let [] = *fixed(payload).ok_or_else(|| size("0"))?;
                if ty == PacketType::Heartbeat {
                    Self::Heartbeat
                } else {
                    Self::HeartbeatAck
                }
            }
            PacketType::InfoAck | PacketType::ReportAck => {
                let ack = Ack3(*fixed(payload).ok_or_else(|| size("3"))?);
                if ty == PacketType::InfoAck {
                    Self::InfoAck(ack)
                } else {
                    Self::ReportAck(ack)
                }
            }
            PacketType::Info => {
                let (conn_id, msg_id, rest) = ids()?;
                Self::Info(Info {
                    conn_id,
                    msg_id,
                    body: InfoBody::decode(rest),
                })
            }
            PacketType::Report => {
                let (conn_id, msg_id, rest) = ids()?;
                Self::Report(Report {
                    conn_id,
                    msg_id,
                    body: Body::decode(rest),
                })
            }
            PacketType::Data => {
                let (conn_id, msg_id, rest) = ids()?;
                Self::Data(Data {
                    conn_id,
                    msg_id,
                    body: Body::decode(rest),
                })
            }
            PacketType::AnnounceReply => {
                let (conn_id, msg_id, rest) = ids()?;
                Self::AnnounceReply(AnnounceReply {
                    conn_id,
                    msg_id,
                    body: rest.to_vec(),
                })
            }
            PacketType::Announce | PacketType::DataAck => {
                let _: &[u8; 7] = fixed(payload).ok_or_else(|| size("7"))?;
                let (conn_id, msg_id, _) = ids()?;
                if ty == PacketType::Announce {
                    Self::Announce(Announce { conn_id, msg_id })
                } else {
                    Self::DataAck(DataAck { conn_id, msg_id })
                }
            }
            PacketType::Notice => {
                let [a, b, c, d, m0, m1, code] = *fixed(payload).ok_or_else(|| size("7"))?;
                Self::Notice(Notice {
                    conn_id: ConnId([a, b, c, d]),
                    msg: [m0, m1],
                    code,
                })
            }
            PacketType::AppAnnounceAck => {
                let [a, b, c, d, m0, m1, code, tail] = *fixed(payload).ok_or_else(|| size("8"))?;
                Self::AppAnnounceAck(AppAnnounceAck {
                    conn_id: ConnId([a, b, c, d]),
                    msg: [m0, m1],
                    code,
                    tail,
                })
            }
        })
    }

    /// The type byte.
    pub fn kind(&self) -> u8 {
        match self.packet_type() {
            Some(ty) => ty.byte(),
            None => match self {
                Self::Unknown(u) => u.kind,
                _ => 0,
            },
        }
    }

    /// The type, or `None` for [`Packet::Unknown`].
    pub fn packet_type(&self) -> Option<PacketType> {
        Some(match self {
            Self::Hello(_) => PacketType::Hello,
            Self::HelloAck(_) => PacketType::HelloAck,
            Self::TimeRequest(_) => PacketType::TimeRequest,
            Self::TimeReply(_) => PacketType::TimeReply,
            Self::Heartbeat => PacketType::Heartbeat,
            Self::HeartbeatAck => PacketType::HeartbeatAck,
            Self::Info(_) => PacketType::Info,
            Self::InfoAck(_) => PacketType::InfoAck,
            Self::Report(_) => PacketType::Report,
            Self::ReportAck(_) => PacketType::ReportAck,
            Self::Announce(_) => PacketType::Announce,
            Self::AnnounceReply(_) => PacketType::AnnounceReply,
            Self::Data(_) => PacketType::Data,
            Self::DataAck(_) => PacketType::DataAck,
            Self::Notice(_) => PacketType::Notice,
            Self::AppHello(_) => PacketType::AppHello,
            Self::AppHelloAck(_) => PacketType::AppHelloAck,
            Self::AppAnnounceAck(_) => PacketType::AppAnnounceAck,
            Self::Unknown(_) => return None,
        })
    }

    /// A short stable name: the type's name, or `unknown`.
    pub fn name(&self) -> &'static str {
        self.packet_type().map_or("unknown", PacketType::name)
    }

    /// The connection id: `[6:10]` of a hello, `[5:9]` of the id-carrying types.
    pub fn conn_id(&self) -> Option<ConnId> {
        match self {
            Self::Hello(h) | Self::AppHello(h) => Some(h.conn_id),
            Self::Info(p) => Some(p.conn_id),
            Self::Report(p) => Some(p.conn_id),
            Self::Announce(p) => Some(p.conn_id),
            Self::AnnounceReply(p) => Some(p.conn_id),
            Self::Data(p) => Some(p.conn_id),
            Self::DataAck(p) => Some(p.conn_id),
            Self::Notice(p) => Some(p.conn_id),
            Self::AppAnnounceAck(p) => Some(p.conn_id),
            _ => None,
        }
    }

    /// The 3-byte message id `[9:12]` of the id-carrying types (for 0x78, the two id bytes and
    /// the code, as they stand on the wire).
    pub fn msg_id(&self) -> Option<MsgId> {
        match self {
            Self::Info(p) => Some(p.msg_id),
            Self::Report(p) => Some(p.msg_id),
            Self::Announce(p) => Some(p.msg_id),
            Self::AnnounceReply(p) => Some(p.msg_id),
            Self::Data(p) => Some(p.msg_id),
            Self::DataAck(p) => Some(p.msg_id),
            Self::Notice(p) => Some(MsgId([p.msg[0], p.msg[1], p.code])),
            _ => None,
        }
    }

    /// The inner-frame body of a 0x73 or 0x83.
    pub fn body(&self) -> Option<&Body> {
        match self {
            Self::Report(r) => Some(&r.body),
            Self::Data(d) => Some(&d.body),
            _ => None,
        }
    }

    /// The well-formed inner frame of a 0x73 or 0x83.
    pub fn frame(&self) -> Option<&Frame> {
        self.body().and_then(Body::frame)
    }

    /// Every device status this packet carries: a `fa db` report, the records and status
    /// entries of a 0x43, or the records of an `f9 52` mesh-info page.
    pub fn statuses(&self) -> Vec<DeviceStatus> {
        match self {
            Self::Info(Info {
                body: InfoBody::Records(records),
                ..
            }) => records.iter().map(Record::status).collect(),
            Self::Info(Info {
                body: InfoBody::Entries(entries),
                ..
            }) => entries.iter().filter_map(Entry::status).collect(),
            Self::Report(r) => r
                .body
                .frame()
                .and_then(DeviceStatus::from_report)
                .into_iter()
                .collect(),
            Self::Data(d) => d
                .body
                .frame()
                .and_then(MeshPage::from_frame)
                .map(|page| page.records.iter().map(|r| r.status()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The thermostat sensor report this packet carries: a 0x43 entry, or a 0xAB whose bytes
    /// after the 4-byte id are `sensorsData:[…]` (the thermostat's answer to 0xA3 has no
    /// message id; PROTOCOL.md's 0xAB layout is a plug's).
    pub fn sensors(&self) -> Option<SensorReport> {
        match self {
            Self::Info(Info {
                body: InfoBody::Entries(entries),
                ..
            }) => entries.iter().find_map(|e| e.sensors().ok()),
            Self::AnnounceReply(a) => {
                let mut bytes = a.msg_id.0.to_vec();
                bytes.extend_from_slice(&a.body);
                SensorReport::parse(&bytes).ok()
            }
            _ => None,
        }
    }

    /// The firmware version of an unbound 0x83 report.
    pub fn firmware(&self) -> Option<Firmware> {
        match self {
            Self::Report(r) => r.body.frame().and_then(Firmware::from_frame),
            _ => None,
        }
    }

    /// A short description of the content for logs: e.g. `fa db len 19`, `records 3`, `tlv`.
    pub fn summary(&self) -> String {
        match self {
            Self::Info(info) => match &info.body {
                InfoBody::Ping => "ping".into(),
                InfoBody::Records(r) => format!("records {}", r.len()),
                InfoBody::Tlv(_) => "tlv".into(),
                InfoBody::Entries(e) => format!("entries {}", e.len()),
                InfoBody::Opaque(b) => format!("opaque {} bytes", b.len()),
            },
            Self::Report(Report { body, .. }) | Self::Data(Data { body, .. }) => match body {
                Body::Frame(f) => format!(
                    "{}{:02x} {:02x} len {}",
                    if f.is_unbound() { "unbound " } else { "" },
                    f.dir.byte(),
                    f.opcode,
                    f.payload.len()
                ),
                Body::Malformed(m) => format!("malformed frame: {}", m.error),
            },
            _ => String::new(),
        }
    }

    /// Size of the encoded packet.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::Hello(h) | Self::AppHello(h) => 7 + h.auth.len() + h.trailer.len(),
            Self::HelloAck(_) | Self::AppHelloAck(_) => 2,
            Self::TimeRequest(_) => 1,
            Self::TimeReply(_) => 11,
            Self::Heartbeat | Self::HeartbeatAck => 0,
            Self::InfoAck(_) | Self::ReportAck(_) => 3,
            Self::Info(i) => 7 + i.body.encoded_len(),
            Self::Report(Report { body, .. }) | Self::Data(Data { body, .. }) => {
                7 + body.encoded_len()
            }
            Self::AnnounceReply(a) => 7 + a.body.len(),
            Self::Announce(_) | Self::DataAck(_) | Self::Notice(_) => 7,
            Self::AppAnnounceAck(_) => 8,
            Self::Unknown(u) => u.payload.len(),
        }
    }

    /// Appends the wire bytes. A hand-built packet whose payload exceeds 65,535 bytes gets a
    /// saturated length field (no such packet exists on the wire).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[self.kind(), 0, 0, 0, 0]);
        let ids = |out: &mut Vec<u8>, c: &ConnId, m: &MsgId| {
            out.extend_from_slice(&c.0);
            out.extend_from_slice(&m.0);
        };
        match self {
            Self::Hello(h) | Self::AppHello(h) => {
                out.push(h.marker);
                out.extend_from_slice(&h.conn_id.0);
                let len = u16::try_from(h.auth.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(h.auth.expose());
                out.extend_from_slice(&h.trailer);
            }
            Self::HelloAck(a) | Self::AppHelloAck(a) => out.extend_from_slice(&a.0),
            Self::TimeRequest(b) => out.push(*b),
            Self::TimeReply(t) => {
                out.push(t.marker);
                t.time.encode(out);
            }
            Self::Heartbeat | Self::HeartbeatAck => {}
            Self::InfoAck(a) | Self::ReportAck(a) => out.extend_from_slice(&a.0),
            Self::Info(i) => {
                ids(out, &i.conn_id, &i.msg_id);
                i.body.encode(out);
            }
            Self::Report(Report {
                conn_id,
                msg_id,
                body,
            })
            | Self::Data(Data {
                conn_id,
                msg_id,
                body,
            }) => {
                ids(out, conn_id, msg_id);
                body.encode(out);
            }
            Self::AnnounceReply(a) => {
                ids(out, &a.conn_id, &a.msg_id);
                out.extend_from_slice(&a.body);
            }
            Self::Announce(Announce { conn_id, msg_id })
            | Self::DataAck(DataAck { conn_id, msg_id }) => ids(out, conn_id, msg_id),
            Self::Notice(n) => {
                out.extend_from_slice(&n.conn_id.0);
                out.extend_from_slice(&n.msg);
                out.push(n.code);
            }
            Self::AppAnnounceAck(a) => {
                out.extend_from_slice(&a.conn_id.0);
                out.extend_from_slice(&a.msg);
                out.extend_from_slice(&[a.code, a.tail]);
            }
            Self::Unknown(u) => out.extend_from_slice(&u.payload),
        }
        let len = out.len() - start - HEADER_LEN;
        let [hi, lo] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(field) = out.get_mut(start + 3..start + 5) {
            field.copy_from_slice(&[hi, lo]);
        }
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }
}

/// The payload as a fixed-size array, if it has exactly that size.
fn fixed<const N: usize>(payload: &[u8]) -> Option<&[u8; N]> {
    payload.try_into().ok()
}

impl Hello {
    /// Reads the payload of a hello; `None` when it is shorter than 7 bytes.
    fn decode(p: &[u8]) -> Option<Result<Self, DecodeError>> {
        let (&marker, rest) = p.split_first()?;
        let conn_id = ConnId::read(rest, 0)?;
        let len = usize::from(u16::from_be_bytes(rest.get(4..6)?.try_into().ok()?));
        let after = rest.get(6..)?;
        let Some(auth) = after.get(..len) else {
            return Some(Err(DecodeError::AuthLength {
                declared: len,
                available: after.len(),
            }));
        };
        let trailer = after.get(len..).unwrap_or_default().to_vec();
        Some(Ok(Self {
            marker,
            conn_id,
            auth: AuthCode::new(auth.to_vec()),
            trailer,
        }))
    }
}

impl InfoBody {
    /// Classifies and reads a 0x43 body (bytes from 12 on).
    pub fn decode(body: &[u8]) -> Self {
        match body.first() {
            None => Self::Ping,
            Some(&b) if b >= 0xc0 => {
                Tlv::decode_all(body).map_or_else(|| Self::Opaque(body.to_vec()), Self::Tlv)
            }
            Some(_) => match Entry::split(body) {
                Some(entries) => {
                    let records: Option<Vec<Record>> = entries.iter().map(Entry::record).collect();
                    match records {
                        Some(records) => Self::Records(records),
                        None => Self::Entries(entries),
                    }
                }
                None => Self::Opaque(body.to_vec()),
            },
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Ping => 0,
            Self::Records(r) => r.len() * Record::LEN,
            Self::Tlv(items) => items.iter().map(|t| 3 + t.value.len()).sum(),
            Self::Entries(e) => e.iter().map(Entry::encoded_len).sum(),
            Self::Opaque(b) => b.len(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ping => {}
            Self::Records(records) => records.iter().for_each(|r| out.extend_from_slice(&r.0)),
            Self::Tlv(items) => {
                for t in items {
                    let len = u8::try_from(t.value.len()).unwrap_or(u8::MAX);
                    out.extend_from_slice(&[t.tag, t.kind, len]);
                    out.extend_from_slice(&t.value);
                }
            }
            Self::Entries(entries) => entries.iter().for_each(|e| e.encode(out)),
            Self::Opaque(b) => out.extend_from_slice(b),
        }
    }
}

impl Tlv {
    /// Reads a whole body of TLV items; `None` if the items do not exactly fill it.
    fn decode_all(mut body: &[u8]) -> Option<Vec<Self>> {
        let mut items = Vec::new();
        while !body.is_empty() {
            let (&[tag, kind, len], rest) = body.split_first_chunk::<3>()?;
            let value = rest.get(..usize::from(len))?;
            items.push(Self {
                tag,
                kind,
                value: value.to_vec(),
            });
            body = rest.get(usize::from(len)..)?;
        }
        Some(items)
    }

    /// The value as text, when it is printable ASCII (the `c7` timestamp item).
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value)
            .ok()
            .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::{hex, pycync};

    #[track_caller]
    fn roundtrip(s: &str) -> Packet {
        let bytes = hex(s);
        let packet = Packet::decode(&bytes).unwrap();
        assert_eq!(packet.to_bytes(), bytes, "{packet:?}");
        assert_eq!(packet.encoded_len(), bytes.len());
        packet
    }

    #[test]
    fn hello() {
        let p = roundtrip(
            "23 00 00 00 1a 03 38 e8 cf 46 00 10 31 65 30 37 64 38 63 65 30 61 36 31 37 61 33 37 00 00 3c",
        );
        let Packet::Hello(h) = &p else { panic!() };
        assert_eq!(h.conn_id.to_string(), "38e8cf46");
        assert_eq!(h.trailer, [0, 0, 0x3c]);
        assert!(!format!("{p:?}").contains("3165"));
    }

    #[test]
    fn fixed_packets() {
        assert_eq!(
            roundtrip("28 00 00 00 02 00 00"),
            Packet::HelloAck(HelloAck([0, 0]))
        );
        assert_eq!(roundtrip("c3 00 00 00 01 0c"), Packet::TimeRequest(0x0c));
        assert_eq!(roundtrip("d3 00 00 00 00"), Packet::Heartbeat);
        assert_eq!(roundtrip("d8 00 00 00 00"), Packet::HeartbeatAck);
        assert_eq!(
            roundtrip("48 00 00 00 03 01 01 00"),
            Packet::InfoAck(Ack3([1, 1, 0]))
        );
        assert_eq!(
            roundtrip("88 00 00 00 03 1f 83 00"),
            Packet::ReportAck(Ack3([0x1f, 0x83, 0]))
        );
        roundtrip("c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 2d fd a8");
        roundtrip("a3 00 00 00 07 2d e4 b5 d2 15 2b 00");
        roundtrip("7b 00 00 00 07 2d e4 b5 d2 15 37 00");
        let n = roundtrip("78 00 00 00 07 45 88 0f 3a 00 10 05");
        assert_eq!(n.msg_id(), Some(MsgId([0, 0x10, 5])));
        roundtrip("18 00 00 00 02 00 00");
        roundtrip("a8 00 00 00 08 37 96 24 69 15 2b 0a 00");
    }

    #[test]
    fn info_classes() {
        let p = roundtrip("43 00 00 00 07 3d 54 86 1c 01 01 06");
        assert!(matches!(
            p,
            Packet::Info(Info {
                body: InfoBody::Ping,
                ..
            })
        ));
        let p = roundtrip(
            "43 00 00 00 1e 32 5d 53 17 01 01 06 c6 20 02 00 ab c5 20 02 00 04 c4 20 02 00 01 c3 20 02 00 05 c2 90 00",
        );
        let Packet::Info(Info {
            body: InfoBody::Tlv(items),
            ..
        }) = &p
        else {
            panic!()
        };
        assert_eq!(items.len(), 5);
        let p = roundtrip(
            "43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00",
        );
        assert_eq!(p.statuses().len(), 1);
        assert_eq!(p.statuses()[0].id.0, 0xee);
    }

    /// Lengths of the entries of a body read with `e1..2` as a plain u16 BE length, the way
    /// pycync reads it; `None` when they do not fill the body.
    fn split_u16(mut body: &[u8]) -> Option<Vec<usize>> {
        let mut lens = Vec::new();
        while !body.is_empty() {
            let len = usize::from(u16::from_be_bytes([*body.get(1)?, *body.get(2)?]));
            lens.push(len);
            body = body.get(3 + len..)?;
        }
        Some(lens)
    }

    #[test]
    fn thermostat_json_is_one_entry_not_32_invented_statuses() {
        let p = roundtrip(pycync::THERMOSTAT_43);
        let Packet::Info(info) = &p else { panic!() };
        let body = hex(pycync::THERMOSTAT_43)[12..].to_vec();
        assert_eq!(body.len(), 608);
        // The reading by size alone: 32 chunks of 19, whose r1..2 are not `00 10`.
        assert_eq!(body.len() % Record::LEN, 0);
        assert!(body.chunks(Record::LEN).all(|c| c[1..3] != [0, 0x10]));
        // pycync's plain u16 length (0x925d) does not fit the body; flags + 12-bit length does.
        assert_eq!(split_u16(&body), None);
        let InfoBody::Entries(entries) = &info.body else {
            panic!("{:?}", info.body)
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].tag, entries[0].flags, entries[0].value.len()),
            (0x57, 9, 605)
        );
        assert!(entries[0].status().is_none());
        assert!(p.statuses().is_empty());
        let report = p.sensors().unwrap();
        assert_eq!(report.sensors.len(), 7);
        let temps: Vec<i32> = report
            .present()
            .filter_map(|s| s.temperature())
            .map(|t| t.tenths)
            .collect();
        assert_eq!(temps, [759, 757, 752]);
        assert_eq!(p.summary(), "entries 1");
    }

    #[test]
    fn outdoor_plug_entry_decodes_by_its_length() {
        let p = roundtrip(pycync::OUTDOOR_PLUG_43);
        let Packet::Info(info) = &p else { panic!() };
        let body = hex(pycync::OUTDOOR_PLUG_43)[12..].to_vec();
        // Both readings of `00 07` agree: one 7-byte entry.
        assert_eq!(split_u16(&body), Some(vec![7]));
        let InfoBody::Entries(entries) = &info.body else {
            panic!("{:?}", info.body)
        };
        assert_eq!(
            (entries[0].tag, entries[0].flags, entries[0].value.clone()),
            (0, 0, vec![6, 1, 2, 0, 0, 0, 0])
        );
        let statuses = p.statuses();
        assert_eq!(statuses.len(), 1);
        let s = statuses[0];
        assert_eq!(
            (s.id, s.on, s.brightness, s.temperature, s.rgb, s.online),
            (crate::MeshId(6), true, 2, 0, [0; 3], true)
        );
        // Type 67: mask 2 = the right outlet (2) on, the left (1) off.
        let t = crate::catalog::DeviceType::of(Some(67));
        assert_eq!(
            (t.outlet_on(&s, 1), t.outlet_on(&s, 2)),
            (Some(false), Some(true))
        );
        assert!(p.sensors().is_none());
    }

    #[test]
    fn light_record_from_pycync() {
        let p = roundtrip(pycync::LIGHT_43);
        let Packet::Info(Info {
            body: InfoBody::Records(records),
            ..
        }) = &p
        else {
            panic!()
        };
        assert_eq!((records.len(), records[0].index()), (1, 6));
        let s = p.statuses()[0];
        assert_eq!(
            (s.id.0, s.on, s.brightness, s.mode(), s.rgb),
            (7, true, 76, crate::ColorMode::Rgb, [0xf8, 0x38, 0x30])
        );
    }

    #[test]
    fn entries_that_are_all_records_stay_records() {
        // A 19-byte record with a short entry after it: entries; the record alone: records.
        let record = "05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00";
        let body = hex(&format!("{record} 00 00 07 06 01 02 00 00 00 00"));
        let InfoBody::Entries(e) = InfoBody::decode(&body) else {
            panic!()
        };
        assert_eq!(e.iter().filter_map(Entry::status).count(), 2);
        assert!(matches!(
            InfoBody::decode(&hex(record)),
            InfoBody::Records(_)
        ));
        // A record-sized body whose r1..2 is not a length is opaque, not a record.
        let bad = hex("05 00 11 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00");
        assert!(matches!(InfoBody::decode(&bad), InfoBody::Opaque(_)));
        // An entry too short for a state carries none.
        let short = InfoBody::decode(&hex("06 00 02 07 01"));
        let InfoBody::Entries(e) = short else {
            panic!()
        };
        assert!(e[0].status().is_none());
        // Eight bytes: the eighth is the online flag.
        let offline = InfoBody::decode(&hex("06 00 08 07 01 64 00 00 00 00 00"));
        let InfoBody::Entries(e) = offline else {
            panic!()
        };
        assert!(!e[0].status().unwrap().online);
    }

    #[test]
    fn thermostat_probe_answer_carries_sensors() {
        let p = roundtrip(pycync::PROBE_AB);
        assert_eq!(p.conn_id(), Some(ConnId([0x49, 0x96, 0x02, 0xd2])));
        let report = p.sensors().unwrap();
        assert_eq!(report.sensors.len(), 4);
        assert_eq!(report.present().count(), 0);
    }

    #[test]
    fn stuffed_mesh_page_from_pycync() {
        let p = roundtrip(pycync::MESH_PAGE_73);
        let frame = p.frame().unwrap();
        assert!(frame.stuffed && frame.checksum_ok());
        assert_eq!(frame.payload.len(), 0x7e);
        let page = crate::MeshPage::from_frame(frame).unwrap();
        assert_eq!((page.count, page.total), (5, 5));
        assert_eq!(page.records[0].device_type(), 137);
        let ids: Vec<u16> = p.statuses().iter().map(|s| s.id.0).collect();
        assert_eq!(ids, [4, 7, 2, 0xe8, 0x1e]);
        let t = crate::catalog::DeviceType::of(Some(page.records[0].device_type()));
        assert_eq!(
            (t.kind, t.product),
            (crate::catalog::Kind::Light, "Full Color A19 Bulb")
        );
        // The same page with a wrong checksum is not taken as stuffed: no statuses, same bytes.
        let bad = roundtrip(pycync::MESH_PAGE_BAD_73);
        assert!(bad.frame().is_none());
        assert!(bad.statuses().is_empty());
    }

    #[test]
    fn report_with_7e_in_the_id() {
        // Capture A 08:24:01.017043: searching for the first 0x7E would get this wrong.
        let p = roundtrip(
            "83 00 00 00 26 60 b1 7e f1 00 0c 00 7e 1f 00 00 00 fa db 14 00 0c 2e 00 1a 00 ff ff ea 11 02 1a a1 01 0b 01 00 00 00 00 00 06 7e",
        );
        assert!(p.frame().unwrap().checksum_ok());
        assert_eq!(p.conn_id().unwrap().to_string(), "60b17ef1");
        assert!(p.statuses().is_empty());
    }

    #[test]
    fn firmware_report() {
        let p = roundtrip(
            "83 00 00 00 32 32 5d 53 17 00 02 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00 00 00 ea 00 00 00 86 01 01 31 31 31 35 38 00 00 00 00 00 00 00 00 00 00 00 00 00 92 7e",
        );
        assert!(p.frame().unwrap().checksum_ok());
        assert_eq!(p.firmware().unwrap().version(), "1.1.158");
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            Packet::decode(&[0xd3, 0, 0]),
            Err(DecodeError::Truncated(3))
        );
        assert_eq!(
            Packet::decode(&[0xd3, 0, 0, 0, 1]),
            Err(DecodeError::LengthMismatch {
                declared: 6,
                actual: 5
            })
        );
        assert_eq!(
            Packet::decode(&[0xd3, 1, 0, 0, 0]),
            Err(DecodeError::Reserved([1, 0]))
        );
        assert!(matches!(
            Packet::decode(&[0xd3, 0, 0, 0, 1, 0]),
            Err(DecodeError::BadSize { .. })
        ));
        assert!(matches!(
            Packet::decode(&hex("23 00 00 00 08 03 01 02 03 04 00 10 41")),
            Err(DecodeError::AuthLength {
                declared: 16,
                available: 1
            })
        ));
    }

    #[test]
    fn unknown_type_is_kept() {
        let p = roundtrip("99 00 00 00 02 ab cd");
        assert_eq!(p.kind(), 0x99);
        assert_eq!(p.name(), "unknown");
    }
}
