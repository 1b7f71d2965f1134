//! `cyncd doctor` against a running server with a simulated device, a private mosquitto and a
//! local DNS responder: every check passes while the responder points the device names at this
//! host (given as `--address 127.0.0.1`), and the DNS checks fail with their fix once it points
//! elsewhere. Everything stays on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A DNS responder on 127.0.0.1: answers A questions for any name with the address it holds
/// (NXDOMAIN while it holds 0.0.0.0). Stops when dropped.
struct Responder {
    port: u16,
    answer: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(answer: Ipv4Addr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let held = Arc::new(AtomicU32::new(u32::from(answer)));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (held.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = reply(&buf[..n], Ipv4Addr::from(a.load(Ordering::Relaxed))) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self {
            port,
            answer: held,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(&self, ip: Ipv4Addr) {
        self.answer.store(u32::from(ip), Ordering::Relaxed);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one question: the question echoed, then one A record pointing at its name.
fn reply(query: &[u8], ip: Ipv4Addr) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(*query.get(end)?);
    }
    let question = query.get(12..end + 5)?;
    let mut m = query.get(..2)?.to_vec();
    let nx = ip.is_unspecified();
    m.extend_from_slice(&[
        0x81,
        if nx { 0x83 } else { 0x80 },
        0,
        1,
        0,
        u8::from(!nx),
        0,
        0,
        0,
        0,
    ]);
    m.extend_from_slice(question);
    if !nx {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&ip.octets());
    }
    Some(m)
}

/// The next message the client received.
async fn next(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(15), seen.recv())
        .await
        .unwrap()
        .unwrap()
}

async fn doctor(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_cyncd"))
            .arg("doctor")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_good_setup_and_names_the_dns_fix() {
    let Some(broker) = common::broker::Mosquitto::start(None).await else {
        return;
    };
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut cfg = config("doctor");
    cfg.mqtt.url = Some(url.clone());
    let server = start(cfg).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 1,
        devices_per_bridge: 2,
        homes: Some(1),
        seed: 5,
        heartbeat: Duration::from_secs(10),
        id_base: 0x6600_0000,
        ..FleetConfig::default()
    })
    .unwrap();
    until(&server, || !server.ctx.registry.connections().is_empty()).await;

    // Home Assistant announces itself, as it does when it starts. cyncd subscribes to its
    // status topic before it publishes its own availability, and answers a birth by
    // publishing that again: both are seen here, so no timing is guessed.
    let mut options = rumqttc::MqttOptions::new("ha", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (ha, mut ha_events) = rumqttc::AsyncClient::new(options, 10);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let ha_loop = tokio::spawn(async move {
        while let Ok(event) = ha_events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = seen_tx.send(p.payload.to_vec());
            }
        }
    });
    ha.subscribe("cync/bridge/availability", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(next(&mut seen).await, b"online", "cyncd's availability");
    ha.publish(
        "homeassistant/status",
        rumqttc::QoS::AtLeastOnce,
        false,
        "online",
    )
    .await
    .unwrap();
    assert_eq!(next(&mut seen).await, b"online", "cyncd answered the birth");

    let dns = Responder::start(Ipv4Addr::LOCALHOST);
    let (state_dir, devices, http) = (
        server.ctx.config.state_dir.to_str().unwrap().to_string(),
        server.devices,
        server.http,
    );
    let args = || {
        [
            "--state-dir",
            &state_dir,
            "--listen",
            &devices.to_string(),
            "--http",
            &http.to_string(),
            "--mqtt",
            &url,
            "--utc-offset",
            "-06:00",
            "--resolver",
            &format!("127.0.0.1:{}", dns.port),
            "--address",
            "127.0.0.1",
            "--device-port",
            &devices.port().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (ok, out, err) = doctor(args()).await;
    println!("resolver pointing here:\n{out}{err}");
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("✓ ")), "{out}");
    for expected in [
        "✓ DNS cm.gelighting.com: ",
        "✓ DNS cm-sec.gelighting.com: ",
        "✓ device port: ",
        "✓ certificate: ",
        "✓ state directory: ",
        "✓ devices connected: 1 Wi-Fi device(s) connected: 66000000",
        "✓ MQTT broker: ",
        "✓ Home Assistant: ",
        "✓ clock: ",
    ] {
        assert!(out.contains(expected), "{expected} in {out}");
    }

    // The resolver points the names elsewhere: the DNS lines fail with the fix, the rest pass.
    dns.answer(Ipv4Addr::new(192, 0, 2, 1));
    let (ok, out, err) = doctor(args()).await;
    println!("resolver pointing elsewhere:\n{out}{err}");
    assert!(!ok, "{out}");
    assert!(err.contains("2 of 10 checks failed"), "{err}");
    for name in ["cm.gelighting.com", "cm-sec.gelighting.com"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("DNS {name}")))
            .unwrap();
        assert!(
            line.starts_with("✗ ")
                && line.contains("192.0.2.1 is not this host")
                && line.contains("— fix: on the DNS server the devices use")
                && line.contains(&format!("answer {name} with 127.0.0.1")),
            "{line}"
        );
    }
    assert_eq!(
        out.lines().filter(|l| l.starts_with("✓ ")).count(),
        8,
        "{out}"
    );

    // No record at all, as JSON for scripts.
    dns.answer(Ipv4Addr::UNSPECIFIED);
    let mut json_args = args();
    json_args.push("--json".into());
    let (ok, out, _) = doctor(json_args).await;
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let first = &v["checks"][1];
    assert_eq!(first["name"], "DNS cm.gelighting.com");
    assert_eq!(first["status"], "fail");
    assert!(
        first["detail"].as_str().unwrap().contains("has no address"),
        "{first}"
    );
    assert!(first["fix"].is_string());

    // The server gone: the port and the devices fail with what to do.
    ha_loop.abort();
    fleet.stop().await;
    server.shutdown().await;
    dns.answer(Ipv4Addr::LOCALHOST);
    let (ok, out, _) = doctor(args()).await;
    assert!(!ok);
    let line = out
        .lines()
        .find(|l| l.contains("devices connected"))
        .unwrap();
    assert!(
        line.starts_with("✗ ")
            && line.contains("does not answer")
            && line.contains("fix: start it"),
        "{line}"
    );
    let line = out.lines().find(|l| l.contains("device port")).unwrap();
    assert!(line.starts_with("✗ ") && line.contains("fix:"), "{line}");
    drop(broker);
}
