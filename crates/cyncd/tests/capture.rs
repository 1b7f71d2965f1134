//! `cyncd serve --capture` over real TLS on 127.0.0.1: one private file per connection that
//! `cyncd decode` reads back byte for byte (the client's own bytes both ways), auth codes
//! masked unless asked to keep them, rotation that keeps every packet exactly once, a capture
//! directory that disappears without harm, and a capture of a simulated home replayed with
//! `cyncd replay` into a fresh server that ends with the same device states.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_proto::capture::{self, Direction, FileHeader};
use cync_proto::{ConnId, Framer};
use cync_sim::{Fleet, FleetConfig, Kind};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CODE_A: &[u8; 16] = b"1e07d8cdf4f53c50";
const CODE_B: &[u8; 16] = b"9f3a61c07b2e4d85";
const BRIDGE_A: [u8; 4] = [0x38, 0xe8, 0xcf, 0x46];
const BRIDGE_B: [u8; 4] = [0x32, 0x5d, 0x53, 0x17];

fn hello_with(id: [u8; 4], code: &[u8; 16]) -> Vec<u8> {
    let mut p = hello(id);
    p[12..28].copy_from_slice(code);
    p
}

/// The bytes a capture holds for what a device sent: its hello's code masked.
fn masked(sent: &[u8]) -> Vec<u8> {
    let mut out = sent.to_vec();
    assert_eq!(out[0], 0x23, "the stream starts with the hello");
    out[12..28].fill(b'*');
    out
}

fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A device over real TLS that keeps every byte it wrote and read.
struct Device {
    stream: Box<dyn Stream>,
    sent: Vec<u8>,
    received: Vec<u8>,
}

impl Device {
    async fn connect(server: &cyncd::serve::Running) -> Self {
        Self {
            stream: connect(server).await,
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    /// One write (one TLS record, so one read on the server).
    async fn send(&mut self, bytes: &[u8]) {
        write(&mut self.stream, bytes).await;
        self.sent.extend_from_slice(bytes);
    }

    /// Reads packets until `n` answers (0x28, 0x48, 0x88, 0xC8, 0xD8…) arrived.
    async fn answers(&mut self, n: usize) {
        let mut got = 0;
        while got < n {
            let header = read_n(&mut self.stream, 5).await;
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let body = read_n(&mut self.stream, len).await;
            if answers(&header) {
                got += 1;
            }
            self.received.extend(header);
            self.received.extend(body);
        }
    }

    /// Closes its side and reads whatever the server still sends until it closes.
    async fn finish(mut self) -> (Vec<u8>, Vec<u8>) {
        let _ = self.stream.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut rest))
            .await
            .expect("the server did not close");
        self.received.extend(rest);
        (self.sent, self.received)
    }
}

/// The capture files in `dir`, by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The bytes of each direction of a capture text, joined: (device's, server's).
fn streams(text: &str) -> (Vec<u8>, Vec<u8>) {
    let (mut dev, mut srv) = (Vec::new(), Vec::new());
    for record in capture::parse(text) {
        let record = record.unwrap();
        assert!(!record.upstream);
        match record.dir {
            Direction::Device => dev.extend(record.bytes),
            Direction::Server => srv.extend(record.bytes),
        }
    }
    (dev, srv)
}

fn packet_count(bytes: &[u8]) -> usize {
    let mut framer = Framer::default();
    assert_eq!(framer.push(bytes), bytes.len());
    let mut n = 0;
    while let Some(p) = framer.next_packet() {
        p.unwrap();
        n += 1;
    }
    assert!(framer.remainder().is_empty());
    n
}

/// The decoded packets' bytes of one direction, joined, after checking no line is an error or
/// left-over bytes.
fn decoded(lines: &[Value], dir: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        assert!(line.get("error").is_none(), "{line}");
        assert!(line.get("trailing").is_none(), "{line}");
        if line["dir"] == dir {
            out.extend(hex_bytes(line["raw"].as_str().unwrap()));
        }
    }
    out
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn capture_config(name: &str, dir: &Path) -> cyncd::config::Config {
    let mut cfg = config(name);
    cfg.capture.dir = Some(dir.to_path_buf());
    cfg
}

#[tokio::test]
async fn each_connection_gets_a_private_file_that_decodes_to_the_bytes_on_the_wire() {
    let dir = temp_dir("capture-files").join("captures");
    let server = start(capture_config("capture-files", &dir)).await;
    // Bridge A: its hello split over two writes (the code is cut after 3 characters), then a
    // report, a time request and a heartbeat, each in its own write.
    let mut a = Device::connect(&server).await;
    let hello_a = hello_with(BRIDGE_A, CODE_A);
    a.send(&hello_a[..15]).await;
    a.send(&hello_a[15..]).await;
    a.answers(1).await;
    a.send(&report(0x38e8_cf46, 238, 1)).await;
    a.send(&hex("c3 00 00 00 01 0c")).await;
    a.send(&hex("d3 00 00 00 00")).await;
    a.answers(3).await;
    let (a_sent, a_received) = a.finish().await;
    // Bridge B: everything in one write.
    let mut b = Device::connect(&server).await;
    let mut all = hello_with(BRIDGE_B, CODE_B);
    all.extend(report(0x325d_5317, 17, 1));
    all.extend(hex("d3 00 00 00 00"));
    b.send(&all).await;
    b.answers(3).await;
    let (b_sent, b_received) = b.finish().await;
    // A connection that never says hello.
    let mut c = Device::connect(&server).await;
    c.send(&hex("d3 00 00 00 00")).await;
    let (c_sent, c_received) = c.finish().await;
    assert!(c_received.is_empty());
    // Shutdown writes every record.
    server.shutdown().await;

    assert_eq!(mode(&dir), 0o700);
    let found = files(&dir);
    let names: Vec<String> = found.iter().map(|p| name(p)).collect();
    assert_eq!(found.len(), 3, "{names:?}");
    for path in &found {
        assert_eq!(mode(path), 0o600, "{}", path.display());
        let n = name(path);
        assert!(n.starts_with("cyncd-") && n.ends_with("-001.txt"), "{n}");
    }
    let file_of = |id: &str| {
        found
            .iter()
            .find(|p| name(p).contains(&format!("-{id}-")))
            .unwrap_or_else(|| panic!("no file for {id} in {names:?}"))
            .clone()
    };
    for (path, code, sent, received) in [
        (file_of("38e8cf46"), CODE_A, &a_sent, &a_received),
        (file_of("325d5317"), CODE_B, &b_sent, &b_received),
    ] {
        let text = std::fs::read_to_string(&path).unwrap();
        // Not the code, in any spelling: text, spaced hex, unbroken hex.
        let code_text = std::str::from_utf8(code).unwrap();
        let code_hex = spaced_hex(code);
        for spelling in [
            code_text.to_string(),
            code_hex.clone(),
            code_hex.replace(' ', ""),
        ] {
            assert!(!text.contains(&spelling), "{spelling} in {text}");
        }
        // (A's mask is split over two records like its hello.)
        assert!(
            streams(&text).0.windows(16).any(|w| w == [b'*'; 16]),
            "{text}"
        );
        assert!(text.contains("DEV→CLOUD [MASKED]"), "{text}");
        let header = FileHeader::of(&text).unwrap();
        assert_eq!(header.part, 1);
        // Byte for byte what the client wrote (its code masked) and read, in order.
        let (dev, srv) = streams(&text);
        assert_eq!(dev, masked(sent), "{}", path.display());
        assert_eq!(&srv, received, "{}", path.display());
        // And `cyncd decode` reads it all, as whole packets, without an error.
        let lines = decode(&[&path]);
        assert_eq!(decoded(&lines, "dev"), masked(sent));
        assert_eq!(&decoded(&lines, "srv"), received);
        assert_eq!(lines.len(), packet_count(sent) + packet_count(received));
        let hello = lines.iter().find(|l| l["name"] == "hello").unwrap();
        assert_eq!(hello["detail"], "auth code ****************", "{hello}");
    }
    // A's hello came in two reads: two records, both masked.
    let text = std::fs::read_to_string(file_of("38e8cf46")).unwrap();
    let records: Vec<capture::Record> = capture::parse(&text)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(records[0].bytes.len(), 15, "{text}");
    assert!(records[0].masked && records[1].masked, "{text}");
    assert!(records[0].bytes.ends_with(b"***"));
    // The connection without a hello has its file too, named unknown.
    let text = std::fs::read_to_string(file_of("unknown")).unwrap();
    assert_eq!(streams(&text).0, c_sent);
}

#[tokio::test]
async fn rotation_keeps_every_packet_exactly_once_across_files() {
    let dir = temp_dir("capture-rotation");
    let mut cfg = capture_config("capture-rotation", &dir);
    cfg.capture.max_file_bytes = 1024;
    let server = start(cfg).await;
    let mut d = Device::connect(&server).await;
    d.send(&hello_with(BRIDGE_A, CODE_A)).await;
    for counter in 1..=60u16 {
        // Every report split over two writes, at a different byte each time: a file may end
        // only once the second half is in.
        let r = report(0x38e8_cf46, 238, counter);
        let at = 1 + usize::from(counter * 7) % 40;
        d.send(&r[..at]).await;
        d.send(&r[at..]).await;
        if counter % 10 == 0 {
            // Two packets in one write.
            let mut two = hex("d3 00 00 00 00");
            two.extend(hex("c3 00 00 00 01 0c"));
            d.send(&two).await;
        }
    }
    let (sent, received) = d.finish().await;
    server.shutdown().await;

    let parts = files(&dir);
    assert!(parts.len() >= 8, "{} parts", parts.len());
    let mut dev = Vec::new();
    let mut srv = Vec::new();
    let mut packets = 0;
    for (i, path) in parts.iter().enumerate() {
        let n = name(path);
        assert!(n.contains("-38e8cf46-"), "{n}");
        assert!(n.ends_with(&format!("-{:03}.txt", i + 1)), "{n}");
        assert_eq!(mode(path), 0o600);
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(FileHeader::of(&text).unwrap().part, i as u32 + 1);
        let size = text.len();
        if i + 1 < parts.len() {
            // Full files only, each ended at the first packet boundary past the size.
            assert!(size >= 1024, "{n}: {size} bytes");
            assert!(size < 1024 + 400, "{n}: {size} bytes");
        }
        // Each part decodes on its own into whole packets.
        let lines = decode(&[path]);
        packets += lines.len();
        dev.extend(decoded(&lines, "dev"));
        srv.extend(decoded(&lines, "srv"));
    }
    assert_eq!(dev, masked(&sent));
    assert_eq!(srv, received);
    assert_eq!(packets, packet_count(&sent) + packet_count(&received));
    // All parts given at once are one stream.
    let all: Vec<&Path> = parts.iter().map(PathBuf::as_path).collect();
    let lines = decode(&all);
    assert_eq!(lines.len(), packets);
    assert_eq!(decoded(&lines, "dev"), masked(&sent));
}

#[tokio::test]
async fn capture_secrets_keeps_the_auth_code() {
    let dir = temp_dir("capture-secrets");
    let mut cfg = capture_config("capture-secrets", &dir);
    cfg.capture.secrets = true;
    let server = start(cfg).await;
    let mut d = Device::connect(&server).await;
    d.send(&hello_with(BRIDGE_A, CODE_A)).await;
    d.answers(1).await;
    let (sent, received) = d.finish().await;
    server.shutdown().await;
    let found = files(&dir);
    assert_eq!(found.len(), 1);
    let text = std::fs::read_to_string(&found[0]).unwrap();
    assert!(text.contains(&spaced_hex(CODE_A)), "{text}");
    assert!(!text.contains("[MASKED]"), "{text}");
    assert_eq!(streams(&text), (sent, received));
    let lines = decode(&[&found[0]]);
    assert_eq!(lines[0]["detail"], "auth code 1e07d8cdf4f53c50");
}

#[tokio::test]
async fn a_capture_directory_that_disappears_costs_no_device_anything() {
    let dir = temp_dir("capture-gone");
    let server = start(capture_config("capture-gone", &dir)).await;
    std::fs::remove_dir_all(&dir).unwrap();
    // The device is served as ever; its records are dropped and counted.
    let mut d = Device::connect(&server).await;
    d.send(&hello_with(BRIDGE_A, CODE_A)).await;
    d.send(&hex("d3 00 00 00 00")).await;
    d.answers(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = get(&server, "/metrics").await;
        let dropped = metric(
            &metrics,
            r#"cyncd_capture_dropped_total{reason="write_error"}"#,
        );
        assert_eq!(metric(&metrics, "cyncd_capture_files_total"), 0.0);
        if dropped >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the directory is back, capture goes on (failed creates are retried after a second).
    std::fs::create_dir_all(&dir).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while files(&dir).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no file after the directory came back"
        );
        d.send(&hex("d3 00 00 00 00")).await;
        d.answers(1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first record after the loss says so.
    d.finish().await;
    server.shutdown().await;
    let text = std::fs::read_to_string(&files(&dir)[0]).unwrap();
    let first = capture::parse(&text).remove(0).unwrap();
    assert!(first.gap, "{text}");
    assert_eq!(FileHeader::of(&text).unwrap().part, 1);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[tokio::test]
async fn a_capture_replayed_into_a_fresh_server_gives_the_same_device_states() {
    let dir = temp_dir("capture-replay");
    let first = start(capture_config("capture-replay-a", &dir)).await;
    let fleet = Fleet::start(FleetConfig {
        server: first.devices.to_string(),
        bridges: 3,
        devices_per_bridge: 4,
        homes: Some(1),
        seed: 21,
        heartbeat: Duration::from_secs(5),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6100_0000,
        ..FleetConfig::default()
    })
    .unwrap();
    until(&first, || {
        let conns = first.ctx.registry.connections();
        conns.len() == 3
            && conns
                .iter()
                .all(|c| c.mesh.len() == 5 && c.firmware.contains_key("device"))
    })
    .await;
    // Commands through the API, each applied by its device.
    let devices = fleet.devices();
    let switchable: Vec<u16> = devices
        .iter()
        .filter(|d| {
            matches!(
                d.kind,
                Kind::Plug | Kind::Dimmable | Kind::TunableWhite | Kind::Rgb
            )
        })
        .map(|d| d.id)
        .collect();
    assert!(switchable.len() >= 4, "{switchable:?}");
    let bulb = devices
        .iter()
        .find(|d| matches!(d.kind, Kind::Dimmable | Kind::TunableWhite | Kind::Rgb))
        .unwrap()
        .id;
    let mut commands: Vec<(u16, String)> = switchable
        .iter()
        .take(3)
        .map(|id| {
            let on = !devices.iter().find(|d| d.id == *id).unwrap().on;
            (*id, format!(r#"{{"on": {on}}}"#))
        })
        .collect();
    commands.push((bulb, r#"{"on": true, "brightness": 37}"#.to_string()));
    for (id, body) in commands {
        let (status, answer) =
            post(&first, &format!("/api/devices/default:{id}/state"), &body).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains(r#""outcome":"applied""#), "{answer}");
    }
    // A device switched at the wall: its bridges report it by themselves.
    let wall = *switchable.last().unwrap();
    let home = fleet.homes[0].clone();
    let now_on = {
        let mut all = home.devices();
        let d = all.get_mut(&wall).unwrap();
        d.on = !d.on;
        d.on
    };
    home.announce(cync_sim::mesh::Change {
        id: wall,
        seq: 0,
        via: ConnId([0; 4]),
    });
    // The registry agrees with every device's truth.
    until(&first, || {
        fleet.devices().iter().all(|d| {
            first
                .ctx
                .registry
                .status("default", d.id)
                .is_some_and(|s| s.on == d.on)
        })
    })
    .await;
    assert_eq!(
        first.ctx.registry.status("default", wall).map(|s| s.on),
        Some(now_on)
    );
    let expected = device_states(&first).await;
    assert_eq!(expected.len(), 12);
    fleet.stop().await;
    first.shutdown().await;
    assert_eq!(
        files(&dir)
            .iter()
            .filter(|p| !name(p).contains("unknown"))
            .count(),
        3
    );

    // A fresh server, and the capture played into it.
    let second = start(config("capture-replay-b")).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .arg("replay")
        .arg(&dir)
        .args(["--to", &second.devices.to_string(), "--hold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("replay did not finish");
        let Some(line) = line else {
            let out = child.wait_with_output();
            panic!("replay ended: {said:?} {out:?}");
        };
        said.push(line.clone());
        if line.contains("holding") {
            break;
        }
    }
    assert!(said[0].contains("3 connections (3 bridges)"), "{said:?}");
    assert!(!said[0].contains("waiting"), "{said:?}");
    // The same states, from the capture alone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut changes = second.ctx.registry.watch();
    let mut got = device_states(&second).await;
    while got != expected {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            break;
        }
        got = device_states(&second).await;
    }
    let connected = second.ctx.registry.connection_count();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, expected);
    assert_eq!(connected, 3);
    second.shutdown().await;
}
