//! Property tests: typed packets survive encode → decode unchanged, built commands read back
//! as the action they were built from, local times round-trip, and arbitrary bytes never panic
//! the framer or the decoder (nor break byte-exact re-encoding of whatever does decode).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use cync_proto::command::{self, Action, Effect, FrameEscaping, SeqCounter, SwitchMode, Target};
use cync_proto::{
    Ack3, Announce, AnnounceReply, AppAnnounceAck, AuthCode, Body, ConnId, Data, DataAck,
    Direction, Entry, Frame, Framer, Hello, HelloAck, Info, InfoBody, LocalTime, MsgId, Notice,
    Packet, PacketType, Record, Report, Sensor, SensorReport, SensorValue, Seq, TimeReply, Tlv,
    Unknown,
};
use cync_proto::{DeviceStatus, MeshId, delivery};
use proptest::prelude::*;

fn conn() -> impl Strategy<Value = ConnId> {
    any::<[u8; 4]>().prop_map(ConnId)
}

fn msg() -> impl Strategy<Value = MsgId> {
    any::<[u8; 3]>().prop_map(MsgId)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(0x7eu8), Just(0u8)],
        any::<u8>(),
        any::<[u8; 3]>(),
        prop_oneof![Just(0xf8u8), Just(0xf9), Just(0xfa), any::<u8>()],
        any::<u8>(),
        bytes(200),
        any::<u8>(),
    )
        .prop_map(
            |(start, seq, flags, dir, opcode, payload, checksum)| Frame {
                start,
                seq,
                flags,
                dir: Direction::from_byte(dir),
                opcode,
                payload,
                checksum,
                stuffed: false,
            },
        )
}

fn info_body() -> impl Strategy<Value = InfoBody> {
    // A record is the entry `index 00 10` + 16 bytes.
    let record = (0u8..0xc0, any::<[u8; 16]>()).prop_map(|(first, rest)| {
        let mut r = [0u8; 19];
        r[0] = first;
        r[2] = 0x10;
        r[3..].copy_from_slice(&rest);
        Record(r)
    });
    let entry = (any::<u8>(), 0u8..16, bytes(40)).prop_map(|(tag, flags, value)| Entry {
        tag,
        flags,
        value,
    });
    let tlv = (0xc0u8..=0xff, any::<u8>(), bytes(60)).prop_map(|(tag, kind, value)| Tlv {
        tag,
        kind,
        value,
    });
    prop_oneof![
        Just(InfoBody::Ping),
        prop::collection::vec(record, 1..8).prop_map(|mut records| {
            // Only the first record decides the class.
            records[0].0[0] = records[0].0[0].min(0xbf);
            InfoBody::Records(records)
        }),
        prop::collection::vec(tlv, 1..5).prop_map(InfoBody::Tlv),
        (prop::collection::vec(entry, 1..5), 0u8..0xc0).prop_map(|(mut entries, first)| {
            // Only the first tag decides the class; an entry that is not a 19-byte record
            // keeps the body from being records.
            entries[0].tag = first;
            if entries.iter().all(Entry::is_record) {
                entries[0].flags = 1;
            }
            InfoBody::Entries(entries)
        }),
    ]
}

fn sensor_value() -> impl Strategy<Value = SensorValue> {
    prop_oneof![
        Just(SensorValue::Null),
        any::<bool>().prop_map(SensorValue::Bool),
        (any::<i32>(), prop::option::of(0u16..1000)).prop_map(|(i, f)| SensorValue::Number(
            match f {
                Some(f) => format!("{i}.{f}"),
                None => i.to_string(),
            }
        )),
        "[ -~\\t\\n\u{e9}\u{1}]{0,30}".prop_map(SensorValue::Text),
    ]
}

fn sensor_report() -> impl Strategy<Value = SensorReport> {
    let sensor = prop::collection::vec(("[ -~]{0,12}", sensor_value()), 0..8)
        .prop_map(|fields| Sensor { fields });
    ("[A-Za-z0-9_]{1,16}", prop::collection::vec(sensor, 0..8))
        .prop_map(|(name, sensors)| SensorReport { name, sensors })
}

fn local_time() -> impl Strategy<Value = LocalTime> {
    (any::<i64>().prop_map(|s| s % 10_000_000_000), -720i16..=840)
        .prop_map(|(s, o)| LocalTime::from_unix(s.abs(), o))
}

fn packet() -> impl Strategy<Value = Packet> {
    let known: Vec<u8> = PacketType::ALL.iter().map(|t| t.byte()).collect();
    prop_oneof![
        (any::<u8>(), conn(), bytes(40), bytes(30)).prop_map(|(marker, conn_id, auth, trailer)| {
            Packet::Hello(Hello {
                marker,
                conn_id,
                auth: AuthCode::new(auth),
                trailer,
            })
        }),
        (any::<u8>(), conn(), bytes(40), bytes(30)).prop_map(|(marker, conn_id, auth, trailer)| {
            Packet::AppHello(Hello {
                marker,
                conn_id,
                auth: AuthCode::new(auth),
                trailer,
            })
        }),
        any::<[u8; 2]>().prop_map(|b| Packet::HelloAck(HelloAck(b))),
        any::<[u8; 2]>().prop_map(|b| Packet::AppHelloAck(HelloAck(b))),
        any::<u8>().prop_map(Packet::TimeRequest),
        (any::<u8>(), local_time())
            .prop_map(|(marker, time)| Packet::TimeReply(TimeReply { marker, time })),
        Just(Packet::Heartbeat),
        Just(Packet::HeartbeatAck),
        (conn(), msg(), info_body()).prop_map(|(conn_id, msg_id, body)| Packet::Info(Info {
            conn_id,
            msg_id,
            body
        })),
        any::<[u8; 3]>().prop_map(|b| Packet::InfoAck(Ack3(b))),
        any::<[u8; 3]>().prop_map(|b| Packet::ReportAck(Ack3(b))),
        (conn(), msg(), frame()).prop_map(|(conn_id, msg_id, f)| Packet::Report(Report {
            conn_id,
            msg_id,
            body: Body::Frame(f)
        })),
        (conn(), msg(), frame()).prop_map(|(conn_id, msg_id, f)| Packet::Data(Data {
            conn_id,
            msg_id,
            body: Body::Frame(f)
        })),
        (conn(), msg())
            .prop_map(|(conn_id, msg_id)| Packet::Announce(Announce { conn_id, msg_id })),
        (conn(), msg(), bytes(1100)).prop_map(|(conn_id, msg_id, body)| Packet::AnnounceReply(
            AnnounceReply {
                conn_id,
                msg_id,
                body
            }
        )),
        (conn(), msg()).prop_map(|(conn_id, msg_id)| Packet::DataAck(DataAck { conn_id, msg_id })),
        (conn(), any::<[u8; 2]>(), any::<u8>())
            .prop_map(|(conn_id, msg, code)| Packet::Notice(Notice { conn_id, msg, code })),
        (conn(), any::<[u8; 2]>(), any::<u8>(), any::<u8>()).prop_map(
            |(conn_id, msg, code, tail)| {
                Packet::AppAnnounceAck(AppAnnounceAck {
                    conn_id,
                    msg,
                    code,
                    tail,
                })
            }
        ),
        (
            any::<u8>().prop_filter("unknown type", move |k| !known.contains(k)),
            bytes(100)
        )
            .prop_map(|(kind, payload)| Packet::Unknown(Unknown { kind, payload })),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        any::<bool>().prop_map(Action::Power),
        (0u8..=100).prop_map(Action::Brightness),
        (0u8..=100).prop_map(Action::ColorTemp),
        any::<[u8; 3]>().prop_map(Action::Rgb),
        prop::sample::select(Effect::ALL.to_vec()).prop_map(Action::Effect),
        prop_oneof![Just(SwitchMode::Smart), Just(SwitchMode::Traditional)]
            .prop_map(Action::SwitchMode),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn typed_packets_round_trip(p in packet()) {
        let bytes = p.to_bytes();
        prop_assert_eq!(bytes.len(), p.encoded_len());
        let back = Packet::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &p);
        // And through the framer, split at an arbitrary point.
        let mut framer = Framer::new(2048);
        let cut = bytes.len() / 2;
        framer.push(&bytes[..cut]);
        if cut >= 5 && cut < bytes.len() {
            prop_assert!(framer.next_packet().is_none());
        }
        framer.push(&bytes[cut..]);
        let framed = framer.next_packet().unwrap().unwrap().to_vec();
        prop_assert_eq!(framed, bytes);
    }

    #[test]
    fn commands_read_back(
        conn in conn(), msg in msg(), seq in any::<u8>(), target in any::<u16>(),
        group in any::<bool>(), action in action()
    ) {
        let t = if group { Target::Group(target) } else { Target::Device(target) };
        let p = command::command(conn, msg, Seq(seq), t, action).unwrap();
        let bytes = p.to_bytes();
        let back = Packet::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &p);
        let frame = back.frame().unwrap();
        prop_assert!(frame.checksum_ok());
        prop_assert_eq!(frame.seq, seq);
        prop_assert_eq!(Action::from_frame(frame), Some((Target::Device(target), action)));
        // The 0x7B a device sends back echoes [5:12].
        prop_assert_eq!(&bytes[5..12], &cync_proto::reply::data_ack(conn, msg).to_bytes()[5..12]);
    }

    #[test]
    fn escaped_commands_decode_and_keep_their_promises(
        conn in conn(), msg in msg(), after in any::<u8>(), target in any::<u16>(),
        group in any::<bool>(), action in action(),
        escaping in prop::sample::select(FrameEscaping::ALL.to_vec())
    ) {
        let t = if group { Target::Group(target) } else { Target::Device(target) };
        let b = command::build(conn, msg, &mut SeqCounter::starting_after(Seq(after)), t, action, escaping).unwrap();
        let bytes = b.packet.to_bytes();
        let back = Packet::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &b.packet);
        let frame = back.frame().unwrap();
        prop_assert!(frame.checksum_ok());
        prop_assert_eq!(frame.stuffed, b.stuffed);
        prop_assert_eq!(Action::from_frame(frame), Some((Target::Device(target), b.action)));
        // Seqs are cyncd's own: never 1E/1F/7D/7E.
        prop_assert!(![0x1e, 0x1f, 0x7d, 0x7e].contains(&b.seq.0));
        let inner = &bytes[13..bytes.len() - 1];
        let flags = |bytes: &[u8]| bytes.iter().filter(|b| command::is_flag_byte(**b)).count();
        // A stuffed frame has no bare 7E inside and every 7D escapes 5D or 5E.
        if b.stuffed {
            prop_assert!(!inner.contains(&0x7e));
            for (i, byte) in inner.iter().enumerate() {
                if *byte == 0x7d {
                    prop_assert!(matches!(inner.get(i + 1), Some(0x5d | 0x5e)));
                }
            }
        }
        let target_flag = target.to_le_bytes().iter().any(|b| command::is_flag_byte(*b));
        let same_seq = command::command(conn, msg, b.seq, t, action).unwrap();
        match escaping {
            FrameEscaping::Avoid => {
                // Only an unavoidable target is stuffed; a colour is nudged and still confirms.
                prop_assert_eq!(b.stuffed, target_flag);
                if !target_flag {
                    prop_assert_eq!(flags(inner), 0);
                }
                if let (Action::Rgb(asked), Action::Rgb(sent)) = (action, b.action) {
                    prop_assert_eq!(sent, command::nudge_rgb(asked));
                    let shown = DeviceStatus { id: MeshId(1), online: true, on: true, brightness: 1, temperature: 254, rgb: sent };
                    prop_assert!(delivery::satisfies(&action, &shown));
                } else {
                    prop_assert_eq!(b.action, action);
                }
            }
            FrameEscaping::Stuff => {
                // Stuffed exactly when the plain frame holds a 7D/7E.
                prop_assert_eq!(b.action, action);
                let plain = same_seq.frame().unwrap().to_bytes();
                prop_assert_eq!(b.stuffed, flags(&plain[1..plain.len() - 1]) > 0);
            }
            FrameEscaping::Raw => {
                prop_assert!(!b.stuffed);
                prop_assert_eq!(&b.packet, &same_seq);
            }
        }
        // A command that needs no escaping is the same under every policy.
        let raw = command::build(conn, msg, &mut SeqCounter::starting_after(Seq(after)), t, action, FrameEscaping::Raw).unwrap();
        let raw_bytes = raw.packet.to_bytes();
        if flags(&raw_bytes[13..raw_bytes.len() - 1]) == 0 {
            prop_assert_eq!(bytes, raw_bytes);
        }
    }

    #[test]
    fn out_of_range_values_are_rejected(v in 101u8..) {
        let r = command::command(ConnId([1; 4]), MsgId([0; 3]), Seq(1), Target::Device(1), Action::Brightness(v));
        prop_assert!(r.is_err());
    }

    #[test]
    fn local_time_fields_are_in_range(secs in 0i64..8_000_000_000, offset in -720i16..=840) {
        let t = LocalTime::from_unix(secs, offset);
        prop_assert!((1..=12).contains(&t.month) && (1..=31).contains(&t.day));
        prop_assert!((1..=7).contains(&t.weekday) && t.hour < 24 && t.minute < 60 && t.second < 60);
        prop_assert_eq!(t.offset_minutes(), i32::from(offset));
    }

    #[test]
    fn sensor_reports_round_trip(r in sensor_report()) {
        prop_assert_eq!(SensorReport::parse(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn sensor_parsing_never_panics(data in bytes(700), prefix in any::<bool>()) {
        // With the prefix, the JSON parser itself sees the arbitrary bytes.
        let data = if prefix { [&b"sensorsData:"[..], &data].concat() } else { data };
        let _ = SensorReport::parse(&data);
    }

    #[test]
    fn info_bodies_decode_by_their_entries(entries in prop::collection::vec((0u8..0xc0, 0u8..16, bytes(30)), 0..6)) {
        // Whatever the mix, a body built from entries re-encodes byte for byte, and statuses
        // come only from flags-0 entries of at least 7 bytes.
        let mut body = Vec::new();
        for (tag, flags, value) in &entries {
            Entry { tag: *tag, flags: *flags, value: value.clone() }.encode(&mut body);
        }
        let packet = Packet::Info(Info { conn_id: ConnId([1; 4]), msg_id: MsgId([1, 1, 6]), body: InfoBody::decode(&body) });
        prop_assert_eq!(&packet.to_bytes()[12..], &body[..]);
        let expected = entries.iter().filter(|(_, f, v)| *f == 0 && v.len() >= 7).count();
        prop_assert_eq!(packet.statuses().len(), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(3000)) {
        cync_proto::check_invariants(&data);
    }

    #[test]
    fn plausible_headers_never_panic(kind in any::<u8>(), body in bytes(300)) {
        // Bytes with a consistent header reach the per-type decoders far more often.
        let mut data = vec![kind, 0, 0];
        data.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        data.extend_from_slice(&body);
        cync_proto::check_invariants(&data);
        if let Ok(p) = Packet::decode(&data) {
            prop_assert_eq!(p.to_bytes(), data);
        }
    }

    #[test]
    fn framer_stays_bounded(chunks in prop::collection::vec(bytes(700), 0..20), max in 5usize..600) {
        let mut framer = Framer::new(max).with_policy(cync_proto::OversizePolicy::Resync);
        for chunk in chunks {
            let mut rest = chunk.as_slice();
            let mut stalls = 0;
            while !rest.is_empty() {
                let n = framer.push(rest);
                rest = &rest[n..];
                prop_assert!(framer.buffered() <= max);
                let mut any = false;
                while let Some(next) = framer.next_packet() {
                    any = true;
                    if let Ok(p) = next {
                        prop_assert!(p.len() <= max);
                    }
                }
                if n == 0 && !any {
                    stalls += 1;
                    prop_assert!(stalls < 2, "framer stalled");
                }
            }
        }
    }
}
