//! The cloud's answers to device packets, and the local time carried by 0xC8.
//!
//! | device sends | server answers |
//! |---|---|
//! | 0x23 | `28 00 00 00 02 00 00` |
//! | 0xC3 | `c8 00 00 00 0b 0d` + local time (below) |
//! | 0xD3 | `d8 00 00 00 00` |
//! | 0x43 | `48 00 00 00 03` + `[9:11]` + `00` |
//! | 0x83 | `88 00 00 00 03` + `[9:12]` |
//! | 0x73 | `7b 00 00 00 07` + `[5:12]` |
//!
//! Checked against every request/answer pair of captures A and B (0x48 113/113, 0x88 390/390).

use crate::ids::{ConnId, MsgId};
use crate::packet::{Ack3, DataAck, HelloAck, Packet, TimeReply};

/// The `0d` byte that opens every 0xC8 payload seen (meaning unknown).
pub const TIME_REPLY_MARKER: u8 = 0x0d;

/// A local date and time with its UTC offset, as the 0xC8 carries it.
///
/// ```text
/// 07 e9 | 0b | 06 | 05 | 02 | 14 | 2d | fd a8
/// year    mon  day  wday hour min  sec  offset = i16 BE holding ±HHMM in decimal (-600 = -06:00)
/// ```
/// Capture A 08:20:45.048213 UTC = 2025-11-06 (Thursday, weekday 5 with Sunday = 1) 02:20:45 −06:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Year.
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 1 = Sunday … 7 = Saturday.
    pub weekday: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
    /// The UTC offset as on the wire: ±HHMM in decimal (−600 for −06:00, 530 for +05:30).
    pub offset_hhmm: i16,
}

impl LocalTime {
    /// The local time at `unix_seconds` (UTC) in a zone `offset_minutes` east of UTC.
    pub fn from_unix(unix_seconds: i64, offset_minutes: i16) -> Self {
        let local = unix_seconds.saturating_add(i64::from(offset_minutes) * 60);
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let abs = offset_minutes.unsigned_abs();
        let hhmm = i16::try_from(abs / 60 * 100 + abs % 60).unwrap_or(i16::MAX);
        Self {
            year: u16::try_from(year).unwrap_or(0),
            month,
            day,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: u8::try_from((days + 4).rem_euclid(7) + 1).unwrap_or(1),
            hour: u8::try_from(secs / 3600).unwrap_or(0),
            minute: u8::try_from(secs % 3600 / 60).unwrap_or(0),
            second: u8::try_from(secs % 60).unwrap_or(0),
            offset_hhmm: if offset_minutes < 0 { -hhmm } else { hhmm },
        }
    }

    /// The UTC offset in minutes east of UTC.
    pub fn offset_minutes(&self) -> i32 {
        let v = i32::from(self.offset_hhmm);
        v.signum() * (v.abs() / 100 * 60 + v.abs() % 100)
    }

    /// Reads the 10 bytes after the marker.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; 10] = b.try_into().ok()?;
        Some(Self {
            year: u16::from_be_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            weekday: b[4],
            hour: b[5],
            minute: b[6],
            second: b[7],
            offset_hhmm: i16::from_be_bytes([b[8], b[9]]),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.year.to_be_bytes());
        out.extend_from_slice(&[
            self.month,
            self.day,
            self.weekday,
            self.hour,
            self.minute,
            self.second,
        ]);
        out.extend_from_slice(&self.offset_hhmm.to_be_bytes());
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

/// `28 00 00 00 02 00 00`.
pub fn hello_ack() -> Packet {
    Packet::HelloAck(HelloAck([0, 0]))
}

/// `c8 00 00 00 0b 0d` + the local time.
pub fn time_reply(time: LocalTime) -> Packet {
    Packet::TimeReply(TimeReply {
        marker: TIME_REPLY_MARKER,
        time,
    })
}

/// `d8 00 00 00 00`.
pub fn heartbeat_ack() -> Packet {
    Packet::HeartbeatAck
}

/// 0x48 for a 0x43 with message id `msg`: echoes `[9:11]` and ends with `00`.
pub fn info_ack(msg: MsgId) -> Packet {
    Packet::InfoAck(Ack3([msg.0[0], msg.0[1], 0]))
}

/// 0x88 for a 0x83 with message id `msg`: echoes all of `[9:12]`.
pub fn report_ack(msg: MsgId) -> Packet {
    Packet::ReportAck(Ack3(msg.0))
}

/// 0x7B for a 0x73: echoes `[5:12]`.
pub fn data_ack(conn_id: ConnId, msg_id: MsgId) -> Packet {
    Packet::DataAck(DataAck { conn_id, msg_id })
}

/// The answer the cloud gives to a packet a device sent, if any: 0x23→0x28, 0xC3→0xC8 (with
/// `now`), 0xD3→0xD8, 0x43→0x48, 0x83→0x88, and 0x7B for a device's 0x73. Everything else
/// (ACKs, 0xAB, unknown types) gets no answer.
pub fn answer(packet: &Packet, now: LocalTime) -> Option<Packet> {
    match packet {
        Packet::Hello(_) => Some(hello_ack()),
        Packet::TimeRequest(_) => Some(time_reply(now)),
        Packet::Heartbeat => Some(heartbeat_ack()),
        Packet::Info(info) => Some(info_ack(info.msg_id)),
        Packet::Report(report) => Some(report_ack(report.msg_id)),
        Packet::Data(data) => Some(data_ack(data.conn_id, data.msg_id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::hex;

    #[test]
    fn time_reply_matches_capture_a() {
        // 2025-11-06T08:20:45 UTC at −06:00.
        let t = LocalTime::from_unix(1_762_417_245, -360);
        assert_eq!(
            time_reply(t).to_bytes(),
            hex("c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 2d fd a8")
        );
        assert_eq!(t.offset_minutes(), -360);
    }

    #[test]
    fn time_reply_matches_cloud_trace() {
        // 2024-03-11 (Monday) 01:14:28 at −05:00 = 06:14:28 UTC.
        let t = LocalTime::from_unix(1_710_137_668, -300);
        assert_eq!(
            time_reply(t).to_bytes(),
            hex("c8 00 00 00 0b 0d 07 e8 03 0b 02 01 0e 1c fe 0c")
        );
    }

    #[test]
    fn half_hour_offsets_and_epoch_edges() {
        let t = LocalTime::from_unix(0, 330);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.offset_hhmm),
            (1970, 1, 1, 5, 30, 530)
        );
        assert_eq!(t.offset_minutes(), 330);
        let t = LocalTime::from_unix(951_782_400, 0); // 2000-02-29
        assert_eq!((t.year, t.month, t.day, t.weekday), (2000, 2, 29, 3));
    }

    #[test]
    fn acks_echo_the_right_bytes() {
        let msg = MsgId([0x01, 0x01, 0x06]);
        assert_eq!(info_ack(msg).to_bytes(), hex("48 00 00 00 03 01 01 00"));
        assert_eq!(
            report_ack(MsgId([0x1f, 0x83, 0])).to_bytes(),
            hex("88 00 00 00 03 1f 83 00")
        );
        let conn = ConnId([0x2d, 0xe4, 0xb5, 0xd2]);
        assert_eq!(
            data_ack(conn, MsgId([0, 2, 0])).to_bytes(),
            hex("7b 00 00 00 07 2d e4 b5 d2 00 02 00")
        );
        assert_eq!(hello_ack().to_bytes(), hex("28 00 00 00 02 00 00"));
        assert_eq!(heartbeat_ack().to_bytes(), hex("d8 00 00 00 00"));
    }

    #[test]
    fn answer_covers_every_device_request() {
        let now = LocalTime::from_unix(0, 0);
        let ask = |s: &str| answer(&Packet::decode(&hex(s)).unwrap(), now).map(|p| p.to_bytes());
        assert_eq!(ask("d3 00 00 00 00"), Some(hex("d8 00 00 00 00")));
        assert_eq!(
            ask("43 00 00 00 07 3d 54 86 1c 01 01 06"),
            Some(hex("48 00 00 00 03 01 01 00"))
        );
        assert_eq!(ask("7b 00 00 00 07 2d e4 b5 d2 15 37 00"), None);
        assert_eq!(ask("c3 00 00 00 01 0c").map(|b| b.len()), Some(16));
    }
}
