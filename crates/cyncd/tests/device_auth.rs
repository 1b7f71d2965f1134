//! Devices prove who they are, over real TLS on 127.0.0.1: an impostor with a bridge's id but
//! not its auth code is refused before anything is answered or registered and the real bridge
//! keeps working (its commands applied), a takeover loop changes nothing, several hellos in one
//! write kick nobody, forged reports cannot crowd out a configured home's devices, and the bounds
//! per connection (hello deadline, per-address cap) hold. Pins: first use, the configuration,
//! forgetting one through the API and the CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use cyncd::config::{Config, DeviceConfig, Home};
use cyncd::serve::Running;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The real bridge of these tests: one simulated bridge with two mesh devices, home `cabin`.
const REAL: u32 = 0x6a00_0000;

fn cabin(config: &mut Config) {
    config.homes = vec![Home {
        name: "cabin".into(),
        bridges: vec![format!("{REAL:08x}")],
        devices: vec![DeviceConfig {
            id: 1,
            name: Some("Porch".into()),
            kind: None,
            room: None,
            enabled: None,
        }],
        groups: vec![],
    }];
}

async fn real_bridge(server: &Running) -> Fleet {
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 1,
        devices_per_bridge: 2,
        homes: Some(1),
        seed: 7,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(20),
        id_base: REAL,
        ..FleetConfig::default()
    })
    .unwrap();
    until(server, || {
        server
            .ctx
            .registry
            .devices(&server.ctx.homes.get())
            .iter()
            .filter(|d| d.home == "cabin" && d.reachable)
            .count()
            == 2
    })
    .await;
    fleet
}

/// A hello for `id` carrying `code`.
fn hello_with(id: u32, code: &[u8]) -> Vec<u8> {
    let mut p = vec![0x23, 0, 0];
    p.extend(u16::try_from(code.len() + 10).unwrap().to_be_bytes());
    p.push(0x03);
    p.extend(id.to_be_bytes());
    p.extend(u16::try_from(code.len()).unwrap().to_be_bytes());
    p.extend(code);
    p.extend([0, 0, 0x3c]);
    p
}

/// Everything the server sends until it closes (10 s at most).
async fn until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized)) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "connection still open");
    got
}

/// The real bridge's connection start time (changes when its session is replaced).
fn since(server: &Running) -> Option<String> {
    server
        .ctx
        .registry
        .connections()
        .into_iter()
        .find(|c| c.conn_id == format!("{REAL:08x}"))
        .map(|c| c.since)
}

async fn command(server: &Running, on: bool) -> String {
    let (status, body) = post(
        server,
        "/api/devices/cabin:1/state",
        &format!(r#"{{"on": {on}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["outcome"].as_str().unwrap().to_string()
}

async fn metric(server: &Running, line: &str) -> bool {
    get(server, "/metrics").await.1.lines().any(|l| l == line)
}

#[tokio::test]
async fn an_impostor_without_the_code_is_refused_and_the_real_bridge_keeps_working() {
    let mut cfg = config("auth-impostor");
    cabin(&mut cfg);
    let server = start(cfg).await;
    let fleet = real_bridge(&server).await;
    let before = since(&server);
    assert_eq!(command(&server, true).await, "applied");
    for code in [&b""[..], b"0000000000000000", b"not the real one"] {
        let mut impostor = connect(&server).await;
        write(&mut impostor, &hello_with(REAL, code)).await;
        // Then what a bridge says after its hello, in the same breath.
        write(&mut impostor, &hex("d3 00 00 00 00")).await;
        let got = until_closed(&mut impostor).await;
        assert!(got.is_empty(), "answered an impostor: {got:02x?}");
    }
    assert_eq!(since(&server), before, "the real session was replaced");
    assert_eq!(fleet.summary().disconnects, 0);
    assert_eq!(command(&server, false).await, "applied");
    assert!(fleet.device("home0", 1).is_some_and(|d| !d.on));
    assert!(
        metric(
            &server,
            r#"cyncd_device_auth_failures_total{reason="empty"} 1"#
        )
        .await
    );
    assert!(
        metric(
            &server,
            r#"cyncd_device_auth_failures_total{reason="mismatch"} 2"#
        )
        .await
    );
    assert!(metric(&server, "cyncd_hellos_total 1").await);
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_loop_for_ten_seconds_changes_nothing() {
    let mut cfg = config("auth-loop");
    cabin(&mut cfg);
    let server = start(cfg).await;
    let fleet = real_bridge(&server).await;
    let before = since(&server);
    let devices = server.devices;
    // The impostor reconnects as fast as it can for 10 s, each time with the real id, a wrong
    // or empty code, and a 0x7B and a success result ready for any command it might get.
    let impostor = tokio::spawn(async move {
        let stop = tokio::time::Instant::now() + Duration::from_secs(10);
        let (mut attempts, mut answered) = (0u32, 0usize);
        while tokio::time::Instant::now() < stop {
            let mut s = connect_to(devices, false).await;
            let code: &[u8] = if attempts % 2 == 0 {
                b""
            } else {
                b"ffffffffffffffff"
            };
            let mut burst = hello_with(REAL, code);
            burst.extend(hex("7b 00 00 00 07 6a 00 00 00 00 01 00"));
            burst.extend(hex(
                "73 00 00 00 13 6a 00 00 00 00 02 00 7e 01 00 00 00 f9 d0 01 00 00 d1 7e",
            ));
            write(&mut s, &burst).await;
            answered += until_closed(&mut s).await.len();
            attempts += 1;
        }
        (attempts, answered)
    });
    let mut outcomes = Vec::new();
    let mut on = true;
    while !impostor.is_finished() {
        outcomes.push(command(&server, on).await);
        on = !on;
    }
    let (attempts, answered) = impostor.await.unwrap();
    assert!(attempts > 20, "only {attempts} takeover attempts");
    assert_eq!(answered, 0, "the impostor got bytes");
    assert!(outcomes.len() > 10);
    assert!(outcomes.iter().all(|o| o == "applied"), "{outcomes:?}");
    assert_eq!(since(&server), before, "the real session was replaced");
    assert_eq!(fleet.summary().disconnects, 0);
    assert_eq!(server.ctx.registry.connection_count(), 1);
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn several_hellos_in_one_write_kick_nobody_and_a_second_hello_closes() {
    let mut cfg = config("auth-hellos");
    cabin(&mut cfg);
    let server = start(cfg).await;
    let fleet = real_bridge(&server).await;
    let before = since(&server);
    // The real bridge's id first (wrong code), then fresh ids: refused at the first.
    let mut four = Vec::new();
    for id in [REAL, 0x6b00_0001, 0x6b00_0002, 0x6b00_0003] {
        four.extend(hello_with(id, b"0123456789abcdef"));
    }
    let mut s = connect(&server).await;
    write(&mut s, &four).await;
    assert!(until_closed(&mut s).await.is_empty());
    // A fresh id first: admitted (pinned on first use), then the second hello closes it.
    let mut four = Vec::new();
    for id in [0x6b00_0001, REAL, 0x6b00_0002, 0x6b00_0003] {
        four.extend(hello_with(id, b"0123456789abcdef"));
    }
    let mut s = connect(&server).await;
    write(&mut s, &four).await;
    assert_eq!(until_closed(&mut s).await, hex("28 00 00 00 02 00 00"));
    assert_eq!(since(&server), before);
    assert_eq!(fleet.summary().disconnects, 0);
    assert_eq!(command(&server, true).await, "applied");
    assert!(
        metric(
            &server,
            r#"cyncd_device_refusals_total{reason="second_hello"} 1"#
        )
        .await
    );
    assert!(
        metric(
            &server,
            r#"cyncd_device_auth_failures_total{reason="mismatch"} 1"#
        )
        .await
    );
    until(&server, || server.ctx.registry.connections().len() == 1).await;
    fleet.stop().await;
    server.shutdown().await;
}

/// Writes `packets` while reading their `answers` 0x88s (the server stops reading when its
/// answers are not read), then makes sure every one was handled: a heartbeat answered after
/// the last read means that read's events were applied (a connection handles its reads in
/// order, events included, before the next).
async fn flood_and_wait(stream: Box<dyn Stream>, packets: Vec<u8>, answers: usize) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        read_packets(&mut rd, answers + 1, |p| p[0] == 0x88 || p[0] == 0xd8).await;
        rd
    });
    write(&mut wr, &packets).await;
    write(&mut wr, &hex("d3 00 00 00 00")).await;
    let mut rd = reader.await.unwrap();
    write(&mut wr, &hex("d3 00 00 00 00")).await;
    assert_eq!(
        read_packets(&mut rd, 1, |p| p[0] == 0xd8).await[0],
        hex("d8 00 00 00 00")
    );
}

#[tokio::test]
async fn forged_reports_from_an_unknown_bridge_never_crowd_out_a_configured_home() {
    let mut cfg = config("auth-forged");
    cabin(&mut cfg);
    let server = start(cfg).await;
    let fleet = real_bridge(&server).await;
    // An unknown bridge (pinned on first use, so in home "default") reports every mesh id.
    let forger = 0x6c00_0000;
    let mut s = connect(&server).await;
    write(&mut s, &hello_with(forger, b"0123456789abcdef")).await;
    read_packets(&mut s, 1, answers).await;
    let reports: Vec<u8> = (0..=u16::MAX)
        .flat_map(|mesh| report(forger, mesh, mesh))
        .collect();
    flood_and_wait(s, reports, 65_536).await;
    let per_bridge = cyncd::config::DEFAULT_DEVICES_PER_BRIDGE;
    assert_eq!(
        server.ctx.registry.rejected_devices(),
        65_536 - per_bridge as u64
    );
    let devices = server.ctx.registry.devices(&server.ctx.homes.get());
    assert_eq!(
        devices.iter().filter(|d| d.home == "default").count(),
        per_bridge
    );
    // The configured home's devices are untouched and reachable, and take commands.
    assert!(
        devices
            .iter()
            .filter(|d| d.home == "cabin")
            .all(|d| d.reachable)
    );
    assert_eq!(command(&server, true).await, "applied");
    let (status, _) = get(&server, "/api/devices/cabin:1").await;
    assert_eq!(status, 200);
    let refused = 65_536 - per_bridge;
    assert!(
        metric(
            &server,
            &format!(r#"cyncd_statuses_refused_total{{reason="bridge_cap"}} {refused}"#)
        )
        .await
    );
    // Several forging bridges: the home cap bounds them together.
    for n in 1..=4u32 {
        let id = forger + n;
        let mut s = connect(&server).await;
        write(&mut s, &hello_with(id, b"0123456789abcdef")).await;
        read_packets(&mut s, 1, answers).await;
        let batch: Vec<u8> = (0..per_bridge as u16)
            .flat_map(|m| report(id, m + n as u16 * 1000, m))
            .collect();
        flood_and_wait(s, batch, per_bridge).await;
    }
    let home_cap = cyncd::config::DEFAULT_DEVICES_PER_HOME;
    let in_default = server
        .ctx
        .registry
        .devices(&server.ctx.homes.get())
        .iter()
        .filter(|d| d.home == "default")
        .count();
    assert_eq!(in_default, home_cap);
    assert_eq!(command(&server, false).await, "applied");
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_hello_is_closed_at_the_hello_deadline() {
    let server = start(Config {
        plain: true,
        ..config("auth-deadline")
    })
    .await;
    let mut dev = connect(&server).await;
    let t0 = tokio::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), dev.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let waited = t0.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // Anything but a hello first closes at once, unanswered.
    let mut dev = connect(&server).await;
    write(&mut dev, &hex("d3 00 00 00 00")).await;
    assert!(until_closed(&mut dev).await.is_empty());
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains(r#"cyncd_device_refusals_total{reason="hello_timeout"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"cyncd_device_refusals_total{reason="no_hello"} 1"#));
    server.shutdown().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let server = start(Config {
        max_connections_per_ip: 2,
        limit_loopback: true,
        ..config("auth-per-ip")
    })
    .await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    write(&mut a, &hello([1, 0, 0, 1])).await;
    write(&mut b, &hello([1, 0, 0, 2])).await;
    read_packets(&mut a, 1, answers).await;
    read_packets(&mut b, 1, answers).await;
    let mut third = tokio::net::TcpStream::connect(server.devices)
        .await
        .unwrap();
    assert!(until_closed(&mut third).await.is_empty());
    assert!(
        metric(
            &server,
            r#"cyncd_device_refusals_total{reason="per_ip_cap"} 1"#
        )
        .await
    );
    drop(a);
    until(&server, || server.ctx.registry.connection_count() == 1).await;
    let mut c = connect(&server).await;
    write(&mut c, &hello([1, 0, 0, 3])).await;
    read_packets(&mut c, 1, answers).await;
    server.shutdown().await;
}

#[tokio::test]
async fn configured_codes_and_unknown_bridges() {
    let mut cfg = config("auth-configured");
    cabin(&mut cfg);
    cfg.refuse_unknown_bridges = true;
    cfg.device_auth.first_use = false;
    cfg.device_auth
        .codes
        .insert(format!("{REAL:08x}"), "1e07d8cdf4f53c50".into());
    let server = start(cfg).await;
    // A bridge no home lists: refused, whatever its code.
    let mut s = connect(&server).await;
    write(&mut s, &hello_with(0x6d00_0000, b"1e07d8cdf4f53c50")).await;
    assert!(until_closed(&mut s).await.is_empty());
    // The listed bridge with another code: refused; with its configured code: admitted.
    let mut s = connect(&server).await;
    write(&mut s, &hello_with(REAL, b"0000000000000000")).await;
    assert!(until_closed(&mut s).await.is_empty());
    let mut s = connect(&server).await;
    write(&mut s, &hello_with(REAL, b"1e07d8cdf4f53c50")).await;
    assert_eq!(
        read_packets(&mut s, 1, answers).await[0],
        hex("28 00 00 00 02 00 00")
    );
    assert!(
        metric(
            &server,
            r#"cyncd_device_refusals_total{reason="unknown_bridge"} 1"#
        )
        .await
    );
    assert!(
        metric(
            &server,
            r#"cyncd_device_auth_failures_total{reason="mismatch"} 1"#
        )
        .await
    );
    // A configured pin cannot be forgotten through the API.
    let (status, body) = delete(&server, &format!("/api/bridges/{REAL:08x}/auth")).await;
    assert_eq!(status, 409, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn forgetting_a_pin_lets_a_replaced_device_in() {
    let cfg = config("auth-forget");
    let state_dir = cfg.state_dir.clone();
    let server = start(cfg).await;
    let id = 0x6e00_0000u32;
    let mut old = connect(&server).await;
    write(&mut old, &hello_with(id, b"old-device-code!")).await;
    read_packets(&mut old, 1, answers).await;
    // The replacement has a new code: refused.
    let mut new = connect(&server).await;
    write(&mut new, &hello_with(id, b"new-device-code!")).await;
    assert!(until_closed(&mut new).await.is_empty());
    // Forgotten through the API: the old session is closed, the replacement pins its code.
    assert_eq!(delete(&server, "/api/bridges/zz/auth").await.0, 400);
    let (status, body) = delete(&server, &format!("/api/bridges/{id:08x}/auth")).await;
    assert_eq!(status, 200, "{body}");
    until_closed(&mut old).await;
    let mut new = connect(&server).await;
    write(&mut new, &hello_with(id, b"new-device-code!")).await;
    read_packets(&mut new, 1, answers).await;
    assert_eq!(delete(&server, "/api/bridges/6e000001/auth").await.0, 404);
    // The command line asks the running server.
    // Off the runtime: the server answering it runs there.
    let cli = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
                .args(args)
                .output()
                .unwrap()
        })
    };
    let api = format!("http://{}", server.http);
    let token = state_dir.join("api-token");
    let token = token.to_str().unwrap();
    let out = cli(&[
        "devices",
        "forget",
        &format!("{id:08x}"),
        "--api",
        &api,
        "--token-file",
        token,
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = state_dir.join("api-token");
    let token = token.to_str().unwrap();
    let out = cli(&[
        "devices",
        "forget",
        &format!("{id:08x}"),
        "--api",
        &api,
        "--token-file",
        token,
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // Offline: the pin file of a stopped server.
    let mut again = connect(&server).await;
    write(&mut again, &hello_with(id, b"third-code-here!")).await;
    read_packets(&mut again, 1, answers).await;
    server.shutdown().await;
    let pins = cyncd::devices::auth::AuthStore::open(&state_dir, true).unwrap();
    assert_eq!(pins.pins().len(), 1);
    let dir = state_dir.to_str().unwrap();
    let out = cli(&[
        "devices",
        "forget",
        &format!("{id:08x}"),
        "--offline",
        "--state-dir",
        dir,
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pins = cyncd::devices::auth::AuthStore::open(&state_dir, true).unwrap();
    assert!(pins.pins().is_empty());
}
