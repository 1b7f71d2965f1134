//! Conformance over every packet of the real captures in `../shared/captures/` (set
//! `CYNC_CAPTURES` to read them from elsewhere): counts per type, zero decode errors apart from
//! the proxy's documented malformed injections, byte-exact re-encoding, valid checksums, the
//! statuses the captures carry, and the cloud's answers rebuilt by our reply builders.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use cync_proto::capture::{self, Direction, Record};
use cync_proto::{Body, Framer, InfoBody, LocalTime, Packet, reply};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn captures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CYNC_CAPTURES") {
        return dir.into();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures");
    assert!(
        dir.is_dir(),
        "captures not found at {}: check out shared/ beside the repository or set CYNC_CAPTURES",
        dir.display()
    );
    dir
}

fn load(name: &str) -> Vec<Record> {
    let text = std::fs::read_to_string(captures_dir().join(name)).unwrap();
    capture::parse(&text)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// A decoded packet with the record it came from.
struct Seen {
    record: usize,
    ts: String,
    dir: Direction,
    injected: bool,
    bytes: Vec<u8>,
    packet: Result<Packet, cync_proto::DecodeError>,
}

/// Frames each record on its own, asserts the bytes are fully accounted for (packets re-encoded
/// byte for byte, then any trailing bytes) and returns the packets and the trailing remainders.
fn decode_all(records: &[Record]) -> (Vec<Seen>, Vec<(usize, Vec<u8>)>) {
    let mut seen = Vec::new();
    let mut trailing = Vec::new();
    for record in records {
        assert_eq!(
            record.declared,
            Some(record.bytes.len()),
            "record {}",
            record.index
        );
        let mut framer = Framer::default();
        assert_eq!(framer.push(&record.bytes), record.bytes.len());
        let mut rebuilt = Vec::new();
        while let Some(next) = framer.next_packet() {
            let bytes = next.unwrap().to_vec();
            let packet = Packet::decode(&bytes);
            if let Ok(p) = &packet {
                assert_eq!(
                    p.to_bytes(),
                    bytes,
                    "record {} re-encodes differently",
                    record.index
                );
                rebuilt.extend(p.to_bytes());
            } else {
                rebuilt.extend(&bytes);
            }
            seen.push(Seen {
                record: record.index,
                ts: record.ts.clone(),
                dir: record.dir,
                injected: record.injected,
                bytes,
                packet,
            });
        }
        rebuilt.extend(framer.remainder());
        assert_eq!(rebuilt, record.bytes, "record {}", record.index);
        if !framer.remainder().is_empty() {
            trailing.push((record.index, framer.remainder().to_vec()));
        }
    }
    (seen, trailing)
}

fn counts(seen: &[Seen]) -> BTreeMap<(u8, &'static str), usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry((s.bytes[0], s.dir.tag())).or_default() += 1;
    }
    out
}

fn frame_ok(p: &Packet) -> Option<bool> {
    p.body()
        .map(|b| matches!(b, Body::Frame(f) if f.checksum_ok()))
}

#[test]
fn capture_a_conforms() {
    let records = load("capture-a.txt");
    assert_eq!(records.len(), 2251);
    let (seen, trailing) = decode_all(&records);
    assert!(trailing.is_empty());
    let expected: BTreeMap<(u8, &str), usize> = [
        ((0x23, "dev"), 25),
        ((0x28, "srv"), 25),
        ((0x43, "dev"), 381),
        ((0x48, "srv"), 381),
        ((0x83, "dev"), 101),
        ((0x88, "srv"), 101),
        ((0xc3, "dev"), 25),
        ((0xc8, "srv"), 25),
        ((0xd3, "dev"), 658),
        ((0xd8, "srv"), 658),
    ]
    .into();
    assert_eq!(counts(&seen), expected);
    assert_eq!(seen.len(), 2380);

    let packets: Vec<&Packet> = seen.iter().map(|s| s.packet.as_ref().unwrap()).collect();
    // Every inner frame is well formed and its checksum valid (101 reports, one with 7e in its id).
    let frames: Vec<bool> = packets.iter().filter_map(|p| frame_ok(p)).collect();
    assert_eq!(frames.len(), 101);
    assert!(frames.iter().all(|ok| *ok));

    // 0x83 kinds: 71 status (fa db 19), 24 fa db 20, 6 firmware.
    let reports: Vec<_> = packets.iter().filter_map(|p| p.frame()).collect();
    let status = reports
        .iter()
        .filter(|f| f.opcode == 0xdb && f.payload.len() == 19)
        .count();
    let db20 = reports
        .iter()
        .filter(|f| f.opcode == 0xdb && f.payload.len() == 20)
        .count();
    let firmware = packets.iter().filter(|p| p.firmware().is_some()).count();
    assert_eq!((status, db20, firmware), (71, 24, 6));

    // 0x43 classes: 270 pings, 101 with records, 10 TLV.
    let mut classes = BTreeMap::<&str, usize>::new();
    for p in &packets {
        if let Packet::Info(info) = p {
            let class = match info.body {
                InfoBody::Ping => "ping",
                InfoBody::Records(_) => "records",
                InfoBody::Tlv(_) => "tlv",
                InfoBody::Entries(_) => "entries",
                InfoBody::Opaque(_) => "opaque",
            };
            *classes.entry(class).or_default() += 1;
        }
    }
    assert_eq!(
        classes,
        [("ping", 270), ("records", 101), ("tlv", 10)].into()
    );

    // The mesh devices in the status records.
    let ids: BTreeSet<u16> = packets
        .iter()
        .flat_map(|p| p.statuses())
        .map(|s| s.id.0)
        .collect();
    assert_eq!(ids, [0x2c, 0x4b, 0x50, 0x7c, 0xac, 0xc0, 0xee].into());

    // 25 distinct hello ids, and every [5:9] of a 0x43/0x83 is one of them.
    let hellos: BTreeSet<String> = packets
        .iter()
        .filter(|p| matches!(p, Packet::Hello(_)))
        .map(|p| p.conn_id().unwrap().to_string())
        .collect();
    assert_eq!(hellos.len(), 25);
    assert!(hellos.contains("60b17ef1"));
    for p in packets
        .iter()
        .filter(|p| matches!(p, Packet::Info(_) | Packet::Report(_)))
    {
        assert!(hellos.contains(&p.conn_id().unwrap().to_string()));
    }
}

#[test]
fn capture_a_statuses_match_the_protocol_example() {
    // §10.2: device 38 e8 cf 46, mesh id 0xEE, on, brightness 10, temperature 10.
    let records = load("capture-a.txt");
    let (seen, _) = decode_all(&records);
    let s = seen
        .iter()
        .find(|s| s.ts == "2025-11-06T08:23:56.914362")
        .unwrap();
    let p = s.packet.as_ref().unwrap();
    let status = p.statuses();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (
            status[0].id.0,
            status[0].on,
            status[0].brightness,
            status[0].temperature
        ),
        (0xee, true, 10, 10)
    );
    let firmware: Vec<String> = seen
        .iter()
        .filter_map(|s| s.packet.as_ref().ok()?.firmware())
        .map(|f| f.version())
        .collect();
    assert!(firmware.contains(&"1.1.158".to_string()), "{firmware:?}");
}

#[test]
fn capture_b_conforms_apart_from_documented_injections() {
    let records = load("capture-b-part1.txt");
    assert_eq!(records.len(), 3400);
    let (seen, trailing) = decode_all(&records);
    let expected: BTreeMap<(u8, &str), usize> = [
        ((0x23, "dev"), 25),
        ((0x28, "srv"), 25),
        ((0x43, "dev"), 7),
        ((0x48, "srv"), 7),
        ((0x73, "srv"), 346),
        ((0x78, "srv"), 346),
        ((0x7b, "dev"), 346),
        ((0xd3, "dev"), 1149),
        ((0xd8, "srv"), 1149),
    ]
    .into();
    assert_eq!(counts(&seen), expected);

    // Outer decoding never fails; only the injected 0x73s have a malformed inner frame.
    let mut malformed = 0;
    for s in &seen {
        let p = s
            .packet
            .as_ref()
            .unwrap_or_else(|e| panic!("record {}: {e}", s.record));
        match p.body() {
            Some(Body::Malformed(m)) => {
                assert!(s.injected, "record {} malformed but not injected", s.record);
                // 321 commands with the proxy's 5-byte id are valid one byte later; the 25 mesh
                // requests are one byte short of their stray 7e.
                assert!(m.valid_at_13 || s.bytes.len() == 29, "record {}", s.record);
                malformed += 1;
            }
            Some(Body::Frame(f)) => assert!(f.checksum_ok()),
            None => assert!(!s.injected),
        }
    }
    assert_eq!(malformed, 346);
    // The 25 mesh-request records each leave one stray 7e.
    assert_eq!(trailing.len(), 25);
    for (index, bytes) in &trailing {
        assert_eq!(bytes, &[0x7e]);
        assert!(records[*index].injected);
    }
    // Every device 0x7B echoes [5:12] of an injected 0x73.
    let injected: BTreeSet<Vec<u8>> = seen
        .iter()
        .filter(|s| s.injected)
        .map(|s| s.bytes[5..12].to_vec())
        .collect();
    for s in seen.iter().filter(|s| s.bytes[0] == 0x7b) {
        assert!(injected.contains(&s.bytes[5..12]));
    }
}

#[test]
fn reply_builders_reproduce_the_clouds_answers() {
    for name in ["capture-a.txt", "capture-b-part1.txt"] {
        let (seen, _) = decode_all(&load(name));
        // The multiset of our answers to device packets equals the cloud's answers in the file.
        let mut ours = BTreeMap::<Vec<u8>, i64>::new();
        let mut cloud_c8 = Vec::new();
        let mut our_c8 = Vec::new();
        for s in &seen {
            let p = s.packet.as_ref().unwrap();
            match (s.dir, p) {
                (Direction::Device, Packet::TimeRequest(_)) => our_c8.push(s.ts.clone()),
                (Direction::Device, Packet::DataAck(_) | Packet::AnnounceReply(_)) => {}
                (Direction::Device, _) => {
                    let now = LocalTime::from_unix(0, 0);
                    let answer =
                        reply::answer(p, now).expect("every device packet here is answered");
                    *ours.entry(answer.to_bytes()).or_default() += 1;
                }
                (Direction::Server, Packet::TimeReply(t)) => cloud_c8.push((s.ts.clone(), *t)),
                (Direction::Server, Packet::Data(_) | Packet::Notice(_)) => {}
                (Direction::Server, _) => *ours.entry(s.bytes.clone()).or_default() -= 1,
            }
        }
        ours.retain(|_, n| *n != 0);
        assert!(ours.is_empty(), "{name}: answers differ: {ours:?}");
        assert_eq!(our_c8.len(), cloud_c8.len());
        // 0xC8: the cloud's local time at −06:00 within 2 s of the proxy's clock.
        for (ts, reply) in cloud_c8 {
            let unix = parse_ts(&ts);
            let near = (-2..=2).any(|d| {
                let ours = LocalTime::from_unix(unix + d, -360);
                ours == reply.time
            });
            assert!(near, "{name} {ts}: {reply:?}");
            assert_eq!(reply.marker, reply::TIME_REPLY_MARKER);
        }
    }
}

/// `2025-11-06T08:20:45.048213` → Unix seconds (UTC), for the two capture days only.
fn parse_ts(ts: &str) -> i64 {
    assert!(ts.starts_with("2025-11-06T"), "{ts}");
    let h: i64 = ts[11..13].parse().unwrap();
    let m: i64 = ts[14..16].parse().unwrap();
    let s: i64 = ts[17..19].parse().unwrap();
    1_762_387_200 + h * 3600 + m * 60 + s
}
