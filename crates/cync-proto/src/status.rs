//! Device state as devices report it: the 0x83 `fa db` status report, the 19-byte records and
//! other length-prefixed entries of a 0x43, the 24-byte records of an `f9 52` mesh-info page,
//! and the unbound firmware report. Every state source is read into one [`DeviceStatus`].

use crate::frame::{Direction, Frame};
use crate::ids::MeshId;
use crate::thermostat::{SensorError, SensorReport};

/// One mesh device's state, whichever packet carried it. Values are as on the wire: brightness
/// may be non-zero while the device is off (devices do report that), and the registry decides
/// what to believe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceStatus {
    /// The mesh device.
    pub id: MeshId,
    /// Online / "fresh" flag (mesh-info records carry none: a listed device counts as online).
    pub online: bool,
    /// On or off.
    pub on: bool,
    /// 0–100 (fan controllers: the speed step).
    pub brightness: u8,
    /// 0–100 = white at that colour temperature; above 100 the colour bytes apply
    /// (254 = RGB, 129 = effect).
    pub temperature: u8,
    /// Red, green, blue.
    pub rgb: [u8; 3],
}

/// What the temperature byte says about the light's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// White light at a colour temperature of 0–100.
    White(u8),
    /// RGB colour (temperature byte 254).
    Rgb,
    /// A factory effect is running (temperature byte 129).
    Effect,
    /// Another value above 100; legacy controllers treat any value above 100 as RGB.
    Other(u8),
}

impl DeviceStatus {
    /// The light's mode according to the temperature byte.
    pub fn mode(&self) -> ColorMode {
        match self.temperature {
            t @ 0..=100 => ColorMode::White(t),
            254 => ColorMode::Rgb,
            129 => ColorMode::Effect,
            other => ColorMode::Other(other),
        }
    }

    /// Reads a `fa db` status report (payload length 19).
    ///
    /// ```text
    /// payload: p0 counter | p1 p2 ? | p3..4 id LE | p5..6 id LE | p7 db | p8..9 11 02 |
    ///          p10 online | p11 state | p12 brightness | p13 temperature | p14..16 R G B | p17..18
    /// ```
    /// Capture A 08:23:56.914362: `87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00`.
    pub fn from_report(frame: &Frame) -> Option<Self> {
        if frame.dir != Direction::Report || frame.opcode != 0xdb || frame.payload.len() != 19 {
            return None;
        }
        let p: &[u8; 19] = frame.payload.as_slice().try_into().ok()?;
        Some(Self {
            id: MeshId(u16::from_le_bytes([p[5], p[6]])),
            online: p[10] != 0,
            on: p[11] != 0,
            brightness: p[12],
            temperature: p[13],
            rgb: [p[14], p[15], p[16]],
        })
    }
}

/// A 19-byte status record of a 0x43 (one per mesh node the bridge reports).
///
/// ```text
/// r0 index (05 = the reporter itself) | r1..2 00 10 | r3 mesh id | r4 state | r5 brightness |
/// r6 temperature | r7..9 R G B | r10 online | r11 ? | r12 reporter id | r13..18 00
/// ```
/// Capture A 08:23:56.914362: `05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record(pub [u8; 19]);

impl Record {
    /// Size of one record.
    pub const LEN: usize = 19;

    /// `r0`: 05 for the reporting device itself, 06, 07 … for other nodes.
    pub fn index(&self) -> u8 {
        self.0[0]
    }

    /// `r12`: the mesh id of the node that reported this record.
    pub fn reporter(&self) -> MeshId {
        MeshId(u16::from(self.0[12]))
    }

    /// The device state this record carries.
    pub fn status(&self) -> DeviceStatus {
        let r = &self.0;
        DeviceStatus {
            id: MeshId(u16::from(r[3])),
            online: r[10] != 0,
            on: r[4] != 0,
            brightness: r[5],
            temperature: r[6],
            rgb: [r[7], r[8], r[9]],
        }
    }
}

/// One length-prefixed entry of a 0x43 body; bodies whose entries are all 19-byte status
/// records decode as [`Record`]s instead.
///
/// ```text
/// e0 tag | e1..2 word: flags (high 4 bits) and length (low 12 bits) | value (length bytes)
/// ```
/// A 19-byte status record is the entry `tag 00 10 value(16)`: `r1..2 = 00 10` is this length
/// (PROTOCOL.md §6.6 (inferred)), and the TLV items `c7 90 2a …`, `c6 20 02 …` have the same
/// shape (flags 9 for text, 2 for numbers (inferred)). Two peer vectors decode only by it
/// (Kinachi249/pycync `tests/test_packet_parser.py`):
/// - an outdoor plug (type 67): `00 00 07 | 06 01 02 00 00 00 00` — tag 0, 7 bytes: mesh id 6,
///   on, brightness byte 2 (the outlet mask: outlet 2 on), temperature 0, RGB 0;
/// - a thermostat (type 224): `57 92 5d` + 605 bytes of `sensorsData:[…]` JSON — tag 0x57,
///   flags 9, length 0x25d ([`crate::SensorReport`]).
///
/// pycync reads `e1..2` as a plain u16 length, which agrees for every flags-0 entry but not for
/// the thermostat's (0x925d); the 12-bit reading fits every sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// `e0`: the record index for status entries (05 = the reporter itself), a tag otherwise.
    pub tag: u8,
    /// The high 4 bits of `e1` (0 for status entries; 9 for text).
    pub flags: u8,
    /// The bytes the length covers.
    pub value: Vec<u8>,
}

impl Entry {
    /// Longest value the 12-bit length can describe.
    pub const MAX_VALUE: usize = 0x0fff;

    /// Splits a whole body into entries; `None` unless they fill it exactly.
    pub fn split(mut body: &[u8]) -> Option<Vec<Self>> {
        let mut out = Vec::new();
        while !body.is_empty() {
            let (&[tag, hi, lo], rest) = body.split_first_chunk::<3>()?;
            let len = usize::from(u16::from_be_bytes([hi & 0x0f, lo]));
            let value = rest.get(..len)?;
            out.push(Self {
                tag,
                flags: hi >> 4,
                value: value.to_vec(),
            });
            body = rest.get(len..)?;
        }
        Some(out)
    }

    /// Whether this entry is a plain 19-byte status record (`tag 00 10` + 16 bytes).
    pub fn is_record(&self) -> bool {
        self.flags == 0 && self.value.len() == Record::LEN - 3
    }

    /// The entry as a 19-byte [`Record`], if it is one.
    pub fn record(&self) -> Option<Record> {
        if !self.is_record() {
            return None;
        }
        let mut r = [0u8; Record::LEN];
        r[0] = self.tag;
        r[2] = 0x10;
        r.get_mut(3..)?.copy_from_slice(&self.value);
        Some(Record(r))
    }

    /// The device state of a status entry: flags 0 and at least the 7 bytes id, state,
    /// brightness, temperature and RGB (the record layout from `r3`). The online byte (`r10`)
    /// is read when present; a shorter entry counts as online, since the device it describes
    /// just reported (inferred). `None` for anything else: no state is invented from text.
    pub fn status(&self) -> Option<DeviceStatus> {
        if self.flags != 0 {
            return None;
        }
        let v = self.value.get(..7)?;
        Some(DeviceStatus {
            id: MeshId(u16::from(*v.first()?)),
            online: self.value.get(7).is_none_or(|b| *b != 0),
            on: *v.get(1)? != 0,
            brightness: *v.get(2)?,
            temperature: *v.get(3)?,
            rgb: [*v.get(4)?, *v.get(5)?, *v.get(6)?],
        })
    }

    /// The thermostat's sensor report this entry carries, or why it is not one.
    pub fn sensors(&self) -> Result<SensorReport, SensorError> {
        SensorReport::parse(&self.value)
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        3 + self.value.len()
    }

    /// Appends the wire bytes. A hand-built value longer than [`Entry::MAX_VALUE`] gets a
    /// saturated (wrong) length; flags above 15 lose their high bits. Decoded entries have
    /// neither.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = u16::try_from(self.value.len().min(Self::MAX_VALUE)).unwrap_or(0x0fff);
        let word = (u16::from(self.flags & 0x0f) << 12) | len;
        out.push(self.tag);
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(&self.value);
    }
}

/// A 24-byte record of an `f9 52` mesh-info page.
///
/// ```text
/// m0 mesh id | m2 device type (first record: the responding device) | m8 state |
/// m12 brightness | m16 temperature | m20..22 R G B | other bytes unknown
/// ```
/// Cloud trace 00:16:09.350416: `05 00 44 01 00 00 44 01 00 00 00 00 64 00 …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeshRecord(pub [u8; 24]);

impl MeshRecord {
    /// Size of one record.
    pub const LEN: usize = 24;

    /// `m2`: the Cync device type code (meaningful in the first record of a page).
    pub fn device_type(&self) -> u8 {
        self.0[2]
    }

    /// The device state this record carries (online = listed).
    pub fn status(&self) -> DeviceStatus {
        let m = &self.0;
        DeviceStatus {
            id: MeshId(u16::from(m[0])),
            online: true,
            on: m[8] != 0,
            brightness: m[12],
            temperature: m[16],
            rgb: [m[20], m[21], m[22]],
        }
    }
}

/// One page of an `f9 52` mesh-info answer.
///
/// ```text
/// payload[0] records in this page | payload[4] total devices | 24-byte records from payload[6]
/// ```
/// Some firmware first answers with a 1-byte result (`00`), which is not a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPage {
    /// Records in this page (header value).
    pub count: u8,
    /// Devices in the whole mesh (header value).
    pub total: u8,
    /// The records present.
    pub records: Vec<MeshRecord>,
}

impl MeshPage {
    /// Reads an `f9 52` frame with a 6-byte header and whole 24-byte records.
    pub fn from_frame(frame: &Frame) -> Option<Self> {
        if frame.dir != Direction::Response || frame.opcode != 0x52 {
            return None;
        }
        let (header, body) = frame.payload.split_first_chunk::<6>()?;
        let records = body
            .chunks_exact(MeshRecord::LEN)
            .filter_map(|chunk| chunk.try_into().ok().map(MeshRecord))
            .collect();
        Some(Self {
            count: header[0],
            total: header[4],
            records,
        })
    }
}

/// Which firmware an unbound report describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// `payload[13]` = 01.
    Device,
    /// Any other value: the Wi-Fi/network module.
    Network,
}

/// A firmware version from the unbound 0x83 report.
///
/// ```text
/// frame: 00 00 00 00 00 fa 00 20 00 | payload (32): … p11 86 | p12 01 | p13 kind | p14.. ASCII digits | 00 padding
/// ```
/// Capture A 08:20:46.979901: kind 01, `31 31 31 35 38` = "11158", shown as "1.1.158".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// Device or network firmware.
    pub kind: FirmwareKind,
    /// The digits as sent, e.g. `11158`.
    pub raw: String,
}

impl Firmware {
    /// Reads an unbound `fa 00` frame.
    pub fn from_frame(frame: &Frame) -> Option<Self> {
        if !frame.is_unbound() || frame.dir != Direction::Report || frame.opcode != 0x00 {
            return None;
        }
        let kind = match frame.payload.get(13)? {
            1 => FirmwareKind::Device,
            _ => FirmwareKind::Network,
        };
        let digits = frame.payload.get(14..)?;
        let raw: String = digits
            .iter()
            .take(5)
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| char::from(b))
            .collect();
        Some(Self { kind, raw })
    }

    /// The version as the app shows it: five digits `abccc` read as `a.b.ccc`; anything else as
    /// sent.
    pub fn version(&self) -> String {
        match self.raw.as_bytes() {
            [a, b, c @ ..] if c.len() == 3 => {
                format!(
                    "{}.{}.{}",
                    char::from(*a),
                    char::from(*b),
                    String::from_utf8_lossy(c)
                )
            }
            _ => self.raw.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::hex;

    #[test]
    fn report_status() {
        let frame = Frame::decode(&hex(
            "7e 21 00 00 00 fa db 13 00 34 22 11 05 00 05 00 db 11 02 01 01 64 00 00 00 00 00 00 b3 7e",
        ))
        .unwrap();
        let status = DeviceStatus::from_report(&frame).unwrap();
        assert_eq!(status.id, MeshId(5));
        assert!(status.on && status.online);
        assert_eq!(status.brightness, 100);
        assert_eq!(status.mode(), ColorMode::White(0));
    }

    #[test]
    fn record_status() {
        let r: [u8; 19] = hex("05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00")
            .try_into()
            .unwrap();
        let record = Record(r);
        assert_eq!(record.index(), 5);
        assert_eq!(record.reporter(), MeshId(0xee));
        let s = record.status();
        assert_eq!(
            (s.id, s.on, s.brightness, s.temperature, s.rgb, s.online),
            (MeshId(0xee), true, 10, 10, [0xff; 3], true)
        );
    }

    #[test]
    fn firmware_versions() {
        let fw = Firmware {
            kind: FirmwareKind::Device,
            raw: "11158".into(),
        };
        assert_eq!(fw.version(), "1.1.158");
        let fw = Firmware {
            kind: FirmwareKind::Network,
            raw: "0".into(),
        };
        assert_eq!(fw.version(), "0");
    }

    #[test]
    fn mesh_page_from_cloud_trace() {
        let frame = Frame::decode(&hex("7e 1f 00 00 00 f9 52 66 00 04 00 00 00 04 00 \
             05 00 44 01 00 00 44 01 00 00 00 00 64 00 00 00 00 00 00 00 00 00 00 00 \
             07 00 00 01 00 00 00 01 01 00 00 00 64 00 00 00 64 00 00 00 00 00 00 00 \
             03 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 \
             02 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 f2 7e"))
        .unwrap();
        assert!(frame.checksum_ok());
        let page = MeshPage::from_frame(&frame).unwrap();
        assert_eq!((page.count, page.total, page.records.len()), (4, 4, 4));
        assert_eq!(page.records[0].device_type(), 0x44);
        let ids: Vec<u16> = page.records.iter().map(|r| r.status().id.0).collect();
        assert_eq!(ids, [5, 7, 3, 2]);
        let bulb = page.records[1].status();
        assert!(bulb.on);
        assert_eq!((bulb.brightness, bulb.temperature), (100, 100));
        let plug = page.records[0].status();
        assert!(!plug.on);
    }
}
