//! `cyncd serve` over real sockets and real TLS on 127.0.0.1: devices replayed from the real
//! captures get the cloud's answers byte for byte, statuses reach the registry and the HTTP API,
//! and split, coalesced, garbage, oversize, silent, capped and reconnecting connections behave.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_proto::capture::{self, Direction};
use cync_proto::session::Source;
use cync_proto::{ConnId, DeviceStatus, Framer, InfoBody, Packet};
use std::collections::BTreeMap;
use std::time::Duration;

/// Records of a capture by timestamp.
fn capture_records(name: &str) -> Vec<capture::Record> {
    let text = std::fs::read_to_string(captures().join(name)).unwrap();
    capture::parse(&text)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

fn at<'a>(records: &'a [capture::Record], ts: &str) -> &'a [u8] {
    &records.iter().find(|r| r.ts.ends_with(ts)).unwrap().bytes
}

fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut framer = Framer::default();
    framer.push(bytes);
    std::iter::from_fn(|| framer.next_packet().map(|p| p.unwrap().to_vec())).collect()
}

#[tokio::test]
async fn handshake_replayed_from_capture_a_gets_the_clouds_bytes() {
    // PROTOCOL.md §10.1: device 32 5d 53 17, capture A 08:20:44–08:20:47.
    let a = capture_records("capture-a.txt");
    let server = start(config("handshake")).await;
    let mut dev = connect(&server).await;
    let exchanges = [
        ("08:20:44.836127", "08:20:44.879907"), // 0x23 → 0x28
        ("08:20:44.920590", "08:20:44.966080"), // 0x43 + 0x83 → 0x48 + 0x88
        ("08:20:46.979901", "08:20:47.020365"), // 0x83 firmware → 0x88
    ];
    for (ask, answer) in exchanges {
        write(&mut dev, at(&a, ask)).await;
        let expected = at(&a, answer);
        let got = read_packets(&mut dev, split(expected).len(), answers)
            .await
            .concat();
        assert_eq!(got, expected, "answer to the read at {ask}");
    }
    // 0xC3 → 0xC8: checked by structure (the cloud's carries its own clock).
    write(&mut dev, at(&a, "08:20:45.006188")).await;
    let c8 = read_packets(&mut dev, 1, answers).await.remove(0);
    let Packet::TimeReply(reply) = Packet::decode(&c8).unwrap() else {
        panic!("{c8:02x?}")
    };
    assert_eq!((c8.len(), reply.marker), (16, 0x0d));
    assert_eq!(reply.time.offset_hhmm, -600);
    assert!(reply.time.year >= 2025 && (1..=7).contains(&reply.time.weekday));
    // 0xD3 → 0xD8.
    write(&mut dev, &hex("d3 00 00 00 00")).await;
    assert_eq!(
        read_packets(&mut dev, 1, answers).await[0],
        hex("d8 00 00 00 00")
    );
    // The firmware report reached the connection table.
    until(&server, || {
        server
            .ctx
            .registry
            .connections()
            .first()
            .is_some_and(|c| c.firmware.get("device").map(String::as_str) == Some("1.1.158"))
    })
    .await;
    server.shutdown().await;
}

/// Each connection's device packets from capture A, in capture order, keyed by connection id.
fn device_packets_by_connection() -> BTreeMap<ConnId, Vec<Vec<u8>>> {
    let mut out = BTreeMap::<ConnId, Vec<Vec<u8>>>::new();
    for record in capture_records("capture-a.txt") {
        if record.dir != Direction::Device {
            continue;
        }
        for p in split(&record.bytes) {
            let packet = Packet::decode(&p).unwrap();
            if matches!(packet, Packet::Hello(_)) {
                continue;
            }
            if let Some(id) = packet.conn_id() {
                out.entry(id).or_default().push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn capture_a_statuses_end_in_the_registry() {
    let by_conn = device_packets_by_connection();
    assert_eq!(by_conn.len(), 24);
    // Expected: per device, the last status it reported about itself; for a device that never
    // did, the last relayed one.
    let mut own = BTreeMap::<u16, DeviceStatus>::new();
    let mut relayed = BTreeMap::<u16, DeviceStatus>::new();
    for packets in by_conn.values() {
        for p in packets {
            let packet = Packet::decode(p).unwrap();
            let sources: Vec<(DeviceStatus, Source)> = match &packet {
                Packet::Info(info) => match &info.body {
                    InfoBody::Records(r) => r
                        .iter()
                        .map(|r| {
                            (
                                r.status(),
                                if r.index() == 5 {
                                    Source::Own
                                } else {
                                    Source::Relayed
                                },
                            )
                        })
                        .collect(),
                    _ => vec![],
                },
                _ => packet
                    .statuses()
                    .into_iter()
                    .map(|s| (s, Source::Own))
                    .collect(),
            };
            for (s, src) in sources {
                if src == Source::Own {
                    own.insert(s.id.0, s)
                } else {
                    relayed.insert(s.id.0, s)
                };
            }
        }
    }
    let mut expected = relayed;
    expected.extend(own);
    assert_eq!(expected.len(), 7);

    let server = start(config("statuses")).await;
    let mut tasks = Vec::new();
    for (id, packets) in by_conn {
        let mut dev = connect(&server).await;
        tasks.push(tokio::spawn(async move {
            write(&mut dev, &hello(id.0)).await;
            for p in &packets {
                write(&mut dev, p).await;
            }
            // One answer per packet, in order: 0x28, then 0x48/0x88 echoing the right bytes.
            let got = read_packets(&mut dev, packets.len() + 1, answers).await;
            assert_eq!(got[0], hex("28 00 00 00 02 00 00"));
            for (asked, answer) in packets.iter().zip(&got[1..]) {
                let want = match asked[0] {
                    0x43 => [&[0x48, 0, 0, 0, 3][..], &asked[9..11], &[0]].concat(),
                    0x83 => [&[0x88, 0, 0, 0, 3][..], &asked[9..12]].concat(),
                    other => panic!("unexpected type {other:#x}"),
                };
                assert_eq!(answer, &want);
            }
            dev
        }));
    }
    let mut devs = Vec::new();
    for t in tasks {
        devs.push(t.await.unwrap());
    }
    until(&server, || server.ctx.registry.device_count() == 7).await;
    let (status, body) = get(&server, "/api/devices").await;
    assert_eq!(status, 200);
    let devices: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    for d in &devices {
        let id = u16::try_from(d["mesh_id"].as_u64().unwrap()).unwrap();
        let want = expected[&id];
        assert_eq!(d["on"], want.on, "device {id}");
        assert_eq!(d["online"], true, "device {id}");
        if want.on {
            assert_eq!(d["brightness"], want.brightness, "device {id}");
        }
        if want.temperature <= 100 {
            assert_eq!(d["color_temp"], want.temperature, "device {id}");
        }
        assert_eq!(d["home"], "default");
        assert!(!d["bridges"].as_array().unwrap().is_empty());
    }
    assert_eq!(server.ctx.registry.connection_count(), 24);
    server.shutdown().await;
}

#[tokio::test]
async fn coalesced_and_split_writes() {
    let server = start(config("split")).await;
    let mut dev = connect(&server).await;
    // Many packets in one write: answered in order, nothing lost.
    let mut burst = hello([0x60, 0xb1, 0x7e, 0xf1]);
    for _ in 0..10 {
        burst.extend(hex("d3 00 00 00 00"));
    }
    burst.extend(hex("43 00 00 00 07 60 b1 7e f1 01 01 06"));
    write(&mut dev, &burst).await;
    let got = read_packets(&mut dev, 12, answers).await;
    assert_eq!(got[0], hex("28 00 00 00 02 00 00"));
    assert!(got[1..11].iter().all(|p| p == &hex("d8 00 00 00 00")));
    assert_eq!(got[11], hex("48 00 00 00 03 01 01 00"));
    // One byte at a time (capture A 08:24:01.017043: an id holding 0x7e).
    let report = hex(
        "83 00 00 00 26 60 b1 7e f1 00 0c 00 7e 1f 00 00 00 fa db 14 00 0c 2e 00 1a 00 ff ff ea 11 02 1a a1 01 0b 01 00 00 00 00 00 06 7e",
    );
    for b in &report {
        write(&mut dev, std::slice::from_ref(b)).await;
    }
    assert_eq!(
        read_packets(&mut dev, 1, answers).await[0],
        hex("88 00 00 00 03 00 0c 00")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_and_oversize_touch_no_other_connection() {
    let server = start(config("garbage")).await;
    let mut good = connect(&server).await;
    write(&mut good, &hello([1, 2, 3, 4])).await;
    read_packets(&mut good, 1, answers).await;

    let mut bad = connect(&server).await;
    write(&mut bad, &hello([5, 6, 7, 8])).await;
    read_packets(&mut bad, 1, answers).await;
    // Reserved bytes set: not decodable, not answered, counted; the connection stays.
    write(&mut bad, &hex("43 01 00 00 00 d3 00 00 00 00")).await;
    assert_eq!(
        read_packets(&mut bad, 1, answers).await[0],
        hex("d8 00 00 00 00")
    );
    // A header declaring 64 KiB: the framer's policy closes this connection.
    write(&mut bad, &hex("43 00 00 ff ff 00 00 00")).await;
    expect_closed(&mut bad, Duration::from_secs(10)).await;

    write(&mut good, &hex("d3 00 00 00 00")).await;
    assert_eq!(
        read_packets(&mut good, 1, answers).await[0],
        hex("d8 00 00 00 00")
    );
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains(r#"tcp_comm_decode_errors_total{reason="reserved_bytes"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tcp_comm_decode_errors_total{reason="oversize"} 1"#));
    assert!(metrics.contains(r#"cyncd_connections_closed_total{reason="oversize"} 1"#));
    server.shutdown().await;
}

#[tokio::test]
async fn reconnect_with_the_same_id_replaces_the_old_session() {
    let server = start(config("reconnect")).await;
    let mut old = connect(&server).await;
    write(&mut old, &hello([9, 9, 9, 9])).await;
    read_packets(&mut old, 1, answers).await;
    let mut new = connect(&server).await;
    write(&mut new, &hello([9, 9, 9, 9])).await;
    read_packets(&mut new, 1, answers).await;
    expect_closed(&mut old, Duration::from_secs(10)).await;
    write(&mut new, &hex("d3 00 00 00 00")).await;
    assert_eq!(
        read_packets(&mut new, 1, answers).await[0],
        hex("d8 00 00 00 00")
    );
    let conns = server.ctx.registry.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].conn_id, "09090909");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    let server = start(cyncd::config::Config {
        max_connections: 2,
        ..config("cap")
    })
    .await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    write(&mut a, &hello([1, 0, 0, 1])).await;
    write(&mut b, &hello([1, 0, 0, 2])).await;
    read_packets(&mut a, 1, answers).await;
    read_packets(&mut b, 1, answers).await;
    // The third TCP connection is closed before any TLS.
    let mut third = tokio::net::TcpStream::connect(server.devices)
        .await
        .unwrap();
    expect_closed(&mut third, Duration::from_secs(10)).await;
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("cyncd_connections_refused_total 1"),
        "{metrics}"
    );
    // Closing one frees a slot.
    drop(a);
    until(&server, || server.ctx.registry.connection_count() == 1).await;
    let mut c = connect(&server).await;
    write(&mut c, &hello([1, 0, 0, 3])).await;
    read_packets(&mut c, 1, answers).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_three_heartbeats() {
    let server = start(cyncd::config::Config {
        plain: true,
        ..config("silent")
    })
    .await;
    let mut dev = connect(&server).await;
    let t0 = tokio::time::Instant::now();
    write(&mut dev, &hello([7, 7, 7, 7])).await;
    read_packets(&mut dev, 1, answers).await;
    // No sleeping: the paused clock jumps to the server's silence deadline.
    expect_closed(&mut dev, Duration::from_secs(120)).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(62),
        "{waited:?}"
    );
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains(r#"cyncd_connections_closed_total{reason="silent"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_connection_open() {
    let server = start(cyncd::config::Config {
        plain: true,
        ..config("alive")
    })
    .await;
    let mut dev = connect(&server).await;
    write(&mut dev, &hello([7, 7, 7, 8])).await;
    read_packets(&mut dev, 1, answers).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        write(&mut dev, &hex("d3 00 00 00 00")).await;
        assert_eq!(
            read_packets(&mut dev, 1, answers).await[0],
            hex("d8 00 00 00 00")
        );
    }
    assert_eq!(server.ctx.registry.connection_count(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http_api_shapes() {
    // No mesh discovery: the packet counters in the snapshot must not depend on timing.
    let mut cfg = cyncd::config::Config {
        discover_mesh: false,
        ..config("api")
    };
    cfg.homes = vec![cyncd::config::Home {
        name: "cabin".into(),
        bridges: vec!["38e8cf46".into()],
        devices: vec![cyncd::config::DeviceConfig {
            id: 0xee,
            name: Some("Porch".into()),
            kind: Some(68),
            room: None,
            enabled: None,
        }],
        groups: vec![],
    }];
    let server = start(cfg).await;
    let mut dev = connect(&server).await;
    write(&mut dev, &hello([0x38, 0xe8, 0xcf, 0x46])).await;
    // §10.2: a report and its 0x43 record in one write.
    write(&mut dev, &hex("83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e \
                          43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00")).await;
    read_packets(&mut dev, 3, answers).await;
    until(&server, || server.ctx.registry.device_count() == 1).await;

    assert_eq!(get(&server, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = get(&server, "/api/devices/cabin:238").await;
    assert_eq!(status, 200);
    let mut device: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(device["last_seen"].as_str().unwrap().ends_with('Z'));
    device["last_seen"] = "<time>".into();
    insta::assert_json_snapshot!("device", device);
    assert_eq!(get(&server, "/api/devices/238").await.0, 200);
    assert_eq!(get(&server, "/api/devices/cabin:1").await.0, 404);
    assert_eq!(get(&server, "/api/devices/nope").await.0, 400);

    let (status, body) = get(&server, "/api/connections").await;
    assert_eq!(status, 200);
    let mut conns: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &mut conns[0];
    assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    for key in ["peer", "since", "last_packet"] {
        c[key] = "<redacted>".into();
    }
    insta::assert_json_snapshot!("connections", conns);

    let (status, metrics) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "tcp_comm_packet_sent_total",
        "tcp_comm_packet_recv_total",
        "tcp_comm_packet_latency_seconds",
        "tcp_comm_packet_retransmit_total",
        "cyncd_connections_open",
        "cyncd_tls_handshakes_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(
        metrics.contains(r#"tcp_comm_packet_recv_total{type="report",outcome="ok"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_promptly() {
    let server = start(config("shutdown")).await;
    let mut devs = Vec::new();
    for i in 0..5u8 {
        let mut d = connect(&server).await;
        write(&mut d, &hello([0xaa, 0, 0, i])).await;
        read_packets(&mut d, 1, answers).await;
        devs.push(d);
    }
    let t0 = std::time::SystemTime::now();
    let addr = server.devices;
    server.shutdown().await;
    assert!(t0.elapsed().unwrap() < Duration::from_secs(5));
    for d in &mut devs {
        expect_closed(d, Duration::from_secs(5)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}
