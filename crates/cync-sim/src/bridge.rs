//! One simulated Wi-Fi bridge's protocol behaviour, without I/O: what it says when it
//! connects, how it answers each server packet, and what it reports when a device it reaches
//! changes. It speaks as the devices of the captures and the cloud trace do:
//!
//! - connect: `0x23` hello; after the `0x28`, the network-firmware `0x83` and a `0x43` TLV in one
//!   write, then `0xC3`; the device-firmware `0x83` about 2 s later;
//! - `0xA3` → the 1,024-byte `0xAB`;
//! - mesh request `f8 52` → `f9 52` pages (24-byte records) and the `0x7B`; `f8 af` → `0x7B`;
//! - a command → `0x7B` echoing `[5:12]`, the `f9` result with the command's seq, then the
//!   `0x83 fa db` report (its `frame[1]` = the seq) and a `0x43` record; a command for a device
//!   it does not reach, or one the device cannot do, gets a bare `0x7B`;
//! - other bridges that reach a changed device send their own `0x43` record of it.

use crate::chaos::{Chaos, Fate, Message};
use crate::mesh::{Change, Home, SimDevice};
use cync_proto::command::Target;
use cync_proto::{
    Action, Body, ConnId, Direction, Frame, MsgId, Packet, Record, Report, Tlv, reply,
};
use std::sync::Arc;

/// A simulated bridge's identity and reach.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    /// Its id (sent in the hello and in its 0x43/0x83).
    pub conn_id: ConnId,
    /// Its 16-character auth code.
    pub auth: [u8; 16],
    /// The home it belongs to.
    pub home: Arc<Home>,
    /// Its own mesh id (the Wi-Fi device itself).
    pub own: u16,
    /// Every mesh id it reaches, own first.
    pub reach: Vec<u16>,
    /// Device firmware digits, e.g. `11158`.
    pub firmware: String,
}

/// One outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// Which chaos class it belongs to, if any.
    pub message: Option<Message>,
    /// The bytes (one or more whole packets).
    pub bytes: Vec<u8>,
}

/// What the bridge does about one server packet.
#[derive(Debug, Default)]
pub struct Reaction {
    /// Messages to send, in order.
    pub out: Vec<Out>,
    /// The fate chaos chose, for a command.
    pub fate: Option<Fate>,
    /// Whether the packet was a command the device applied.
    pub applied: bool,
}

/// A bridge's protocol state. Its counters survive reconnects, as on real devices.
#[derive(Debug)]
pub struct Bridge {
    /// Identity and reach.
    pub spec: BridgeSpec,
    report_msg: u8,
    data_msg: u16,
}

impl Bridge {
    /// A bridge that has never connected.
    pub fn new(spec: BridgeSpec) -> Self {
        Self {
            spec,
            report_msg: 0,
            data_msg: 0,
        }
    }

    /// The hello.
    pub fn hello(&self) -> Vec<u8> {
        let mut p = vec![0x23, 0, 0, 0, 0x1a, 0x03];
        p.extend_from_slice(&self.spec.conn_id.0);
        p.extend_from_slice(&[0, 0x10]);
        p.extend_from_slice(&self.spec.auth);
        p.extend_from_slice(&[0, 0, 0x3c]);
        p
    }

    /// What follows the hello ACK: network firmware report + TLV 0x43, then 0xC3.
    pub fn after_hello(&mut self) -> Vec<Vec<u8>> {
        let mut first = self.firmware_report(false);
        let tlv = Packet::Info(cync_proto::Info {
            conn_id: self.spec.conn_id,
            msg_id: MsgId([1, 1, 6]),
            body: cync_proto::InfoBody::Tlv(vec![
                Tlv {
                    tag: 0xc6,
                    kind: 0x20,
                    value: vec![0, 0xab],
                },
                Tlv {
                    tag: 0xc2,
                    kind: 0x90,
                    value: vec![],
                },
            ]),
        });
        tlv.encode(&mut first);
        if let Some(report) = self.sensor_report() {
            first.extend(report);
        }
        vec![first, vec![0xc3, 0, 0, 0, 1, 0x0c]]
    }

    /// A thermostat's sensor report, as its 0x43 carries it (tag 0x57, flags 9, the JSON of
    /// pycync's `test_thermostat_sync_packet`): its own sensor and one remote sensor. `None`
    /// unless this bridge is a thermostat.
    pub fn sensor_report(&self) -> Option<Vec<u8>> {
        let home = self.spec.home.clone();
        let devices = home.devices();
        let own = devices.get(&self.spec.own)?;
        if own.kind != crate::mesh::Kind::Thermostat {
            return None;
        }
        let text = concat!(
            r#"sensorsData:[{"Type":"internal","Temperature":"71.6F","Humidity":44,"Active":true},"#,
            r#"{"Type":"savant sensor","PinCode":5324,"Temperature":"68.9F","Humidity":51,"Active":false,"Batt":"2.87"},"#,
            r#"{"Type":"None","Temperature":null,"Humidity":null,"Active":false,"Batt":null}]"#
        );
        let info = Packet::Info(cync_proto::Info {
            conn_id: self.spec.conn_id,
            msg_id: MsgId([1, 1, 6]),
            body: cync_proto::InfoBody::Entries(vec![cync_proto::Entry {
                tag: 0x57,
                flags: 9,
                value: text.as_bytes().to_vec(),
            }]),
        });
        Some(info.to_bytes())
    }

    /// An unbound firmware report: device firmware, or (false) the network module's "0".
    pub fn firmware_report(&mut self, device: bool) -> Vec<u8> {
        // Capture A 08:20:46.979901: `… ea 00 00 00 86 01 01 "11158" 00 …`.
        let mut payload = [0u8; 32];
        payload[7] = 0xea;
        payload[11] = 0x86;
        payload[12] = 0x01;
        payload[13] = u8::from(device);
        let digits = if device {
            self.spec.firmware.as_bytes()
        } else {
            b"0"
        };
        for (slot, d) in payload.iter_mut().skip(14).take(5).zip(digits) {
            *slot = *d;
        }
        let mut frame = Frame::new(0, Direction::Report, 0x00, payload.to_vec());
        frame.start = 0;
        self.report(frame).to_bytes()
    }

    fn report(&mut self, frame: Frame) -> Packet {
        self.report_msg = self.report_msg.wrapping_add(1);
        Packet::Report(Report {
            conn_id: self.spec.conn_id,
            msg_id: MsgId([0, self.report_msg, 0]),
            body: Body::Frame(frame),
        })
    }

    fn data(&mut self, session: ConnId, frame: Frame) -> Vec<u8> {
        let msg = MsgId::from_counter(self.data_msg);
        self.data_msg = self.data_msg.wrapping_add(1);
        Packet::Data(cync_proto::Data {
            conn_id: session,
            msg_id: msg,
            body: Body::Frame(frame),
        })
        .to_bytes()
    }

    /// The `0x83 fa db` report and the `0x43` record this bridge sends about `device`.
    pub fn status_messages(
        &mut self,
        device: &mut SimDevice,
        seq: u8,
        own_report: bool,
    ) -> Vec<u8> {
        let s = device.status();
        let mut out = Vec::new();
        let [lo, hi] = s.id.0.to_le_bytes();
        if own_report {
            device.counter = device.counter.wrapping_add(1);
            let payload = vec![
                device.counter,
                0x25,
                0x11,
                lo,
                hi,
                lo,
                hi,
                0xdb,
                0x11,
                0x02,
                1,
                u8::from(s.on),
                s.brightness,
                s.temperature,
                s.rgb[0],
                s.rgb[1],
                s.rgb[2],
                0,
                0,
            ];
            self.report(Frame::new(seq, Direction::Report, 0xdb, payload))
                .encode(&mut out);
        }
        let me = u8::try_from(self.spec.own).unwrap_or(0);
        let id = u8::try_from(s.id.0).unwrap_or(0);
        let own = s.id.0 == self.spec.own;
        let record = Record([
            if own { 5 } else { 6 },
            0,
            0x10,
            id,
            u8::from(s.on),
            s.brightness,
            s.temperature,
            s.rgb[0],
            s.rgb[1],
            s.rgb[2],
            1,
            if own { 0 } else { 0x14 },
            me,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        Packet::Info(cync_proto::Info {
            conn_id: self.spec.conn_id,
            msg_id: MsgId([1, 1, 6]),
            body: cync_proto::InfoBody::Records(vec![record]),
        })
        .encode(&mut out);
        out
    }

    /// Another bridge changed a device: report it if this bridge reaches it.
    pub fn on_change(&mut self, change: Change) -> Option<Out> {
        if change.via == self.spec.conn_id || !self.spec.reach.contains(&change.id) {
            return None;
        }
        let home = self.spec.home.clone();
        let mut devices = home.devices();
        let device = devices.get_mut(&change.id)?;
        let bytes = self.status_messages(device, change.seq, false);
        Some(Out {
            message: Some(Message::Report),
            bytes,
        })
    }

    /// Answers one server packet. `chaos` decides a command's fate.
    pub fn on_packet(
        &mut self,
        packet: &Packet,
        chaos: &Chaos,
        rng: &mut fastrand::Rng,
    ) -> Reaction {
        let mut r = Reaction::default();
        match packet {
            Packet::Announce(a) => {
                let mut body = vec![0x07, 0x00, 0x09];
                body.extend_from_slice(b"xlink_dev");
                body.resize(1008, 0);
                body.extend_from_slice(&[0xe3, 0x4f, 0x02, 0x10]);
                let ab = Packet::AnnounceReply(cync_proto::AnnounceReply {
                    conn_id: a.conn_id,
                    msg_id: a.msg_id,
                    body,
                });
                r.out.push(Out {
                    message: None,
                    bytes: ab.to_bytes(),
                });
            }
            Packet::Data(d) => self.on_data(d, chaos, rng, &mut r),
            _ => {}
        }
        r
    }

    fn on_data(
        &mut self,
        d: &cync_proto::Data,
        chaos: &Chaos,
        rng: &mut fastrand::Rng,
        r: &mut Reaction,
    ) {
        let ack = Out {
            message: Some(Message::Ack),
            bytes: reply::data_ack(d.conn_id, d.msg_id).to_bytes(),
        };
        let Some(frame) = d.body.frame().filter(|f| f.dir == Direction::Request) else {
            r.out.push(ack);
            return;
        };
        match frame.opcode {
            0x52 => {
                r.out.extend(self.mesh_pages(d.conn_id, frame.seq));
                r.out.insert(1.min(r.out.len()), ack);
            }
            0xaf => r.out.push(ack),
            _ => {
                let fate = chaos.fate(rng);
                r.fate = Some(fate);
                match fate {
                    Fate::Ignore | Fate::Reset => {}
                    Fate::Reject => r.out.push(ack),
                    Fate::Apply => {
                        r.out.push(ack);
                        let Some((target, action)) = cync_proto::Action::from_frame(frame) else {
                            return;
                        };
                        self.apply(d, frame, target, &action, r);
                    }
                }
            }
        }
    }

    fn apply(
        &mut self,
        d: &cync_proto::Data,
        frame: &Frame,
        target: Target,
        action: &Action,
        r: &mut Reaction,
    ) {
        let Target::Device(id) = target else { return };
        let home = self.spec.home.clone();
        // An outlet of a multi-outlet plug: the device id byte, then the outlet as sub id.
        let [low, outlet] = id.to_le_bytes();
        let outlet_of = u16::from(low);
        let is_outlet = (1..=8).contains(&outlet)
            && self.spec.reach.contains(&outlet_of)
            && home
                .devices()
                .get(&outlet_of)
                .is_some_and(|d| d.kind == crate::mesh::Kind::DualPlug);
        // A group id addresses its members anywhere in the home's mesh.
        let members: Vec<u16> = match home.groups.get(&id) {
            _ if is_outlet => vec![outlet_of],
            Some(members) => members.clone(),
            None if self.spec.reach.contains(&id) => vec![id],
            None => return,
        };
        let bridge = self.spec.conn_id.to_string();
        let mut changed = Vec::new();
        {
            let mut devices = home.devices();
            for m in &members {
                if let Some(dev) = devices.get_mut(m) {
                    let applied = match (is_outlet, action) {
                        (true, Action::Power(on)) => {
                            dev.apply_outlet(outlet, *on, d.msg_id, frame.seq, &bridge)
                        }
                        (true, _) => false,
                        (false, _) => dev.apply(action, d.msg_id, frame.seq, &bridge),
                    };
                    if applied {
                        changed.push(*m);
                    }
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        r.applied = true;
        let result = Frame {
            start: 0x7e,
            seq: frame.seq,
            flags: frame.flags,
            dir: Direction::Response,
            opcode: frame.opcode,
            payload: vec![0],
            checksum: 0,
            stuffed: false,
        };
        let result = Frame {
            checksum: result.computed_checksum(),
            ..result
        };
        r.out.push(Out {
            message: Some(Message::Result),
            bytes: self.data(d.conn_id, result),
        });
        let mut report = Vec::new();
        {
            let mut devices = home.devices();
            let reached: Vec<u16> = changed
                .iter()
                .copied()
                .filter(|id| self.spec.reach.contains(id))
                .collect();
            for id in &reached {
                if let Some(dev) = devices.get_mut(id) {
                    report.extend(self.status_messages(dev, frame.seq, true));
                }
            }
        }
        if !report.is_empty() {
            r.out.push(Out {
                message: Some(Message::Report),
                bytes: report,
            });
        }
        for id in changed {
            home.announce(Change {
                id,
                seq: frame.seq,
                via: self.spec.conn_id,
            });
        }
    }

    fn mesh_pages(&mut self, session: ConnId, seq: u8) -> Vec<Out> {
        const PER_PAGE: usize = 16;
        let home = self.spec.home.clone();
        let devices = home.devices();
        let records: Vec<[u8; 24]> = self
            .spec
            .reach
            .iter()
            .filter_map(|id| devices.get(id))
            .map(|dev| {
                let s = dev.status();
                let mut m = [0u8; 24];
                m[0] = u8::try_from(s.id.0).unwrap_or(0);
                m[2] = dev.type_code;
                m[3] = 1;
                m[7] = 1;
                m[8] = u8::from(s.on);
                m[12] = s.brightness;
                m[16] = s.temperature;
                m[20..23].copy_from_slice(&s.rgb);
                m
            })
            .collect();
        drop(devices);
        let total = u8::try_from(records.len()).unwrap_or(u8::MAX);
        records
            .chunks(PER_PAGE)
            .map(|page| {
                let mut payload = vec![u8::try_from(page.len()).unwrap_or(0), 0, 0, 0, total, 0];
                for m in page {
                    payload.extend_from_slice(m);
                }
                let frame = Frame::new(seq, Direction::Response, 0x52, payload);
                Out {
                    message: None,
                    bytes: self.data(session, frame),
                }
            })
            .collect()
    }
}

/// A whole garbage packet: an unknown type, or a 0x43 whose reserved header bytes are set.
pub fn garbage(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.bool() {
        vec![0x99, 0, 0, 0, 3, 0xde, 0xad, 0xbe]
    } else {
        vec![0x43, 0xff, 0, 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Kind, SimDevice};
    use cync_proto::{Seq, command};

    fn bridge() -> Bridge {
        let home = Home::new(
            "h",
            vec![
                SimDevice::new(5, "h", Kind::Plug),
                SimDevice::new(7, "h", Kind::Rgb),
            ],
        );
        Bridge::new(BridgeSpec {
            conn_id: ConnId([0x37, 0x96, 0x24, 0x69]),
            auth: *b"0000000000000000",
            home,
            own: 5,
            reach: vec![5, 7],
            firmware: "10298".into(),
        })
    }

    fn packets(bytes: &[u8]) -> Vec<Packet> {
        let mut framer = cync_proto::Framer::default();
        framer.push(bytes);
        std::iter::from_fn(|| {
            framer
                .next_packet()
                .map(|p| Packet::decode(p.unwrap()).unwrap())
        })
        .collect()
    }

    #[test]
    fn power_command_round_trip_like_the_cloud_trace() {
        let mut b = bridge();
        let session = ConnId([0x2d, 0xe4, 0xb5, 0xd2]);
        let cmd = command::command(
            session,
            MsgId([0x15, 0x37, 0]),
            Seq(0x21),
            Target::Device(5),
            Action::Power(true),
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let r = b.on_packet(&cmd, &Chaos::none(), &mut rng);
        assert!(r.applied);
        let kinds: Vec<Option<Message>> = r.out.iter().map(|o| o.message).collect();
        assert_eq!(
            kinds,
            [
                Some(Message::Ack),
                Some(Message::Result),
                Some(Message::Report)
            ]
        );
        assert_eq!(
            r.out[0].bytes,
            reply::data_ack(session, MsgId([0x15, 0x37, 0])).to_bytes()
        );
        // The f9 result of the cloud trace, with the device's own msg id.
        let result = &packets(&r.out[1].bytes)[0];
        assert_eq!(
            result.frame().unwrap().to_bytes(),
            [0x7e, 0x21, 0, 0, 0, 0xf9, 0xd0, 1, 0, 0, 0xd1, 0x7e]
        );
        let report = packets(&r.out[2].bytes);
        assert_eq!(report[0].frame().unwrap().seq, 0x21);
        assert!(report[0].statuses()[0].on);
        assert_eq!(report[1].statuses()[0].id.0, 5);
        let truth = b.spec.home.devices()[&5].applied_commands.clone();
        assert_eq!(truth.len(), 1);
        assert_eq!(
            (
                truth[0].attribute,
                truth[0].value.as_str(),
                truth[0].msg_id.as_str()
            ),
            ("on", "true", "153700")
        );
    }

    #[test]
    fn a_dual_plug_switches_one_outlet_and_reports_the_mask() {
        let home = Home::new(
            "h",
            vec![SimDevice::typed(6, "h", 67), SimDevice::typed(9, "h", 224)],
        );
        let mut b = Bridge::new(BridgeSpec {
            conn_id: ConnId([1, 2, 3, 4]),
            auth: *b"0000000000000000",
            home,
            own: 6,
            reach: vec![6, 9],
            firmware: "10298".into(),
        });
        let mut rng = fastrand::Rng::with_seed(1);
        let right_on = command::command(
            ConnId([1, 2, 3, 4]),
            MsgId([0, 1, 0]),
            Seq(4),
            cync_proto::catalog::outlet_target(6, 2).unwrap(),
            Action::Power(true),
        )
        .unwrap();
        let r = b.on_packet(&right_on, &Chaos::none(), &mut rng);
        assert!(r.applied);
        let report = packets(&r.out[2].bytes);
        // Mask 2: the right outlet on, the left off — pycync's outdoor-plug reading.
        let s = report[1].statuses()[0];
        assert_eq!((s.id.0, s.on, s.brightness), (6, true, 2));
        let t = cync_proto::catalog::DeviceType::of(Some(67));
        assert_eq!(
            (t.outlet_on(&s, 1), t.outlet_on(&s, 2)),
            (Some(false), Some(true))
        );
        assert_eq!(
            b.spec.home.devices()[&6].applied_commands[0].value,
            "2=true"
        );
        // A thermostat takes nothing, and the plug's outlets take only power.
        for (target, action) in [
            (Target::Device(9), Action::Power(true)),
            (
                cync_proto::catalog::outlet_target(6, 1).unwrap(),
                Action::Brightness(5),
            ),
        ] {
            let cmd =
                command::command(ConnId([1; 4]), MsgId([0, 2, 0]), Seq(5), target, action).unwrap();
            assert!(!b.on_packet(&cmd, &Chaos::none(), &mut rng).applied);
        }
        // The mesh listing reports each device's own type.
        assert!(b.sensor_report().is_none(), "the plug is no thermostat");
    }

    #[test]
    fn a_thermostat_sends_its_sensor_report_after_the_hello() {
        let home = Home::new("h", vec![SimDevice::typed(9, "h", 224)]);
        let mut b = Bridge::new(BridgeSpec {
            conn_id: ConnId([9, 9, 9, 9]),
            auth: *b"0000000000000000",
            home,
            own: 9,
            reach: vec![9],
            firmware: "10298".into(),
        });
        let first = b.after_hello().remove(0);
        let report = packets(&first)
            .iter()
            .find_map(Packet::sensors)
            .expect("a sensor report");
        let internal = report.sensors.first().unwrap();
        assert_eq!(internal.kind(), Some("internal"));
        assert_eq!(internal.temperature().unwrap().tenths, 716);
        assert_eq!(report.present().count(), 2);
    }

    #[test]
    fn unknown_target_and_unsupported_action_get_a_bare_ack() {
        let mut b = bridge();
        let mut rng = fastrand::Rng::with_seed(1);
        let conn = ConnId([1; 4]);
        for (target, action) in [(9, Action::Power(true)), (5, Action::Rgb([1, 2, 3]))] {
            let cmd = command::command(
                conn,
                MsgId([0, 1, 0]),
                Seq(3),
                Target::Device(target),
                action,
            )
            .unwrap();
            let r = b.on_packet(&cmd, &Chaos::none(), &mut rng);
            assert!(!r.applied);
            assert_eq!(r.out.len(), 1);
            assert_eq!(r.out[0].message, Some(Message::Ack));
        }
    }

    #[test]
    fn commands_under_every_escaping_policy_are_applied() {
        // A device whose mesh id is 125 (0x7D) can only be reached with that byte in the
        // frame; a colour of 126 can be nudged. The simulated device must understand each form.
        use cync_proto::command::{FrameEscaping, SeqCounter, build};
        for (escaping, applied) in [
            (FrameEscaping::Avoid, "127,0,9"),
            (FrameEscaping::Stuff, "126,0,9"),
            (FrameEscaping::Raw, "126,0,9"),
        ] {
            let home = Home::new(
                "h",
                vec![
                    SimDevice::new(5, "h", Kind::Plug),
                    SimDevice::new(125, "h", Kind::Rgb),
                ],
            );
            let mut b = Bridge::new(BridgeSpec {
                conn_id: ConnId([0x37, 0x96, 0x24, 0x69]),
                auth: *b"0000000000000000",
                home,
                own: 5,
                reach: vec![5, 125],
                firmware: "10298".into(),
            });
            let built = build(
                ConnId([1; 4]),
                MsgId([0, 1, 0]),
                &mut SeqCounter::new(),
                Target::Device(125),
                Action::Rgb([126, 0, 9]),
                escaping,
            )
            .unwrap();
            // Through the bytes, as a device receives them.
            let cmd = Packet::decode(&built.packet.to_bytes()).unwrap();
            let mut rng = fastrand::Rng::with_seed(1);
            let r = b.on_packet(&cmd, &Chaos::none(), &mut rng);
            assert!(r.applied, "{escaping}");
            let truth = b.spec.home.devices()[&125].applied_commands.clone();
            assert_eq!(
                (truth[0].attribute, truth[0].value.as_str()),
                ("rgb", applied),
                "{escaping}"
            );
            // Its report decodes, whatever bytes the colour put in the frame.
            let report = packets(&r.out[2].bytes);
            assert_eq!(report[0].statuses()[0].id.0, 125, "{escaping}");
        }
    }

    #[test]
    fn mesh_request_answered_with_pages_and_ack() {
        let mut b = bridge();
        let mut rng = fastrand::Rng::with_seed(1);
        let req =
            command::mesh_info_request(ConnId([1; 4]), MsgId([0, 2, 0]), command::MESH_REQUEST_SEQ);
        let r = b.on_packet(&req, &Chaos::none(), &mut rng);
        let all: Vec<Packet> = r.out.iter().flat_map(|o| packets(&o.bytes)).collect();
        assert_eq!(all.len(), 2);
        let page = cync_proto::MeshPage::from_frame(all[0].frame().unwrap()).unwrap();
        assert_eq!((page.count, page.total), (2, 2));
        assert_eq!(page.records[0].device_type(), 68);
        assert!(matches!(all[1], Packet::DataAck(_)));
    }

    #[test]
    fn greeting_decodes() {
        let mut b = bridge();
        assert!(matches!(
            Packet::decode(&b.hello()).unwrap(),
            Packet::Hello(_)
        ));
        let after = b.after_hello();
        let first = packets(&after[0]);
        assert_eq!(first[0].firmware().unwrap().raw, "0");
        assert!(matches!(first[1], Packet::Info(_)));
        assert_eq!(
            packets(&b.firmware_report(true))[0]
                .firmware()
                .unwrap()
                .version(),
            "1.0.298"
        );
    }
}
