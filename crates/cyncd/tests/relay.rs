//! Relay mode end to end, all over real TLS on 127.0.0.1: simulated bridges → `cyncd serve`
//! relaying → a second `cyncd serve` playing the cloud.
//!
//! - Commands from the cloud's API and from the relaying cyncd's API each reach the simulated
//!   devices exactly once and end `applied`; state set by the cloud's commands shows in the
//!   relay's registry; the page's API shows each bridge's upstream state.
//! - The cloud killed and restarted mid-test costs no device ACK (the simulator counts every
//!   answer it waits for) and the relay resumes: the new cloud's commands reach the devices.
//! - The relay's capture of that run decodes with `cyncd decode` (both sides of each
//!   connection, the upstream's too), holds no auth code, and played with `cyncd replay` into a
//!   fresh server gives the same device states.
//! - Device-side chaos (`mixed`) over 10 seeds: every local command ends with one outcome,
//!   no device applies more changes than it was sent commands, and no cloud packet is lost
//!   (every packet the cloud wrote is relayed down or consumed as an answer) or reordered
//!   (the cloud's commands reach each device in the order of their message ids).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_proto::delivery::Request;
use cync_proto::{Action, Target};
use cync_sim::{Chaos, Fleet, FleetConfig};
use cyncd::config::Config;
use cyncd::serve::Running;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// A relaying cyncd's configuration, towards `upstream`.
fn relay_config(name: &str, upstream: std::net::SocketAddr) -> Config {
    let mut c = config(name);
    c.relay.upstream = Some(upstream.to_string());
    c
}

fn fleet(server: &Running, seed: u64, chaos: &str, id_base: u32) -> Fleet {
    Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 2,
        devices_per_bridge: 3,
        homes: Some(1),
        seed,
        chaos: Chaos::parse(chaos).unwrap(),
        heartbeat: Duration::from_millis(500),
        firmware_delay: Duration::from_millis(50),
        id_base,
        ..FleetConfig::default()
    })
    .unwrap()
}

/// Waits until `check` holds, polling (for conditions on metrics and fleet counters, which
/// have no change notification), failing after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The upstream state of every connection the relay's API lists.
async fn upstreams(relay: &Running) -> Vec<Option<String>> {
    let (status, body) = get(relay, "/api/connections").await;
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|c| c["upstream"].as_str().map(String::from))
        .collect()
}

/// Sends `{"on": on}` through a server's API and returns the outcome. With `answered`, an
/// `applied` command must also have had both of the device's answers, its 0x7B and its `f9`
/// result, delivered to the server that sent it (an answer routed to the other side would be
/// missing). Only for a device one bridge reaches, with no other command for it under way: a
/// report of a change (another bridge's, or another command's) can complete a command before
/// its own answers arrive.
async fn set_on_with(server: &Running, id: u16, on: bool, answered: bool) -> String {
    let (status, body) = post(
        server,
        &format!("/api/devices/default:{id}/state"),
        &format!(r#"{{"on": {on}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let outcome = v["outcome"].as_str().unwrap().to_string();
    if answered && outcome == "applied" {
        let command =
            cync_proto::delivery::CommandId::parse(v["command_id"].as_str().unwrap()).unwrap();
        let trace = server.ctx.commands.trace(command).unwrap();
        let events: Vec<&str> = trace.iter().map(|r| r.event).collect();
        assert!(
            events.contains(&"ack") && events.contains(&"result"),
            "device {id}: the device's answers did not all come back: {events:?}"
        );
    }
    outcome
}

/// [`set_on_with`], checking the answers when one bridge reaches the device.
async fn set_on(server: &Running, id: u16, on: bool) -> String {
    let one_bridge = server.ctx.registry.bridges_for("default", id).len() == 1;
    set_on_with(server, id, on, one_bridge).await
}

/// Every packet type's `tcp_comm_packet_sent_total`, summed.
fn sent_total(m: &cyncd::metrics::Metrics) -> u64 {
    let mut seen = HashSet::new();
    (0..=255u8)
        .filter_map(|b| {
            let name = cync_proto::PacketType::from_byte(b).map_or("unknown", |t| t.name());
            seen.insert(name).then(|| m.of_type(b).sent.get())
        })
        .sum()
}

/// Cloud packets the relay wrote to devices or consumed as answers.
fn relayed_down(m: &cyncd::metrics::Metrics) -> u64 {
    m.relay
        .packets
        .get_or_create(&[("direction", "down")])
        .get()
        + m.relay
            .kept
            .get_or_create(&[("direction", "down"), ("reason", "cloud_answer")])
            .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_and_local_commands_reach_the_devices_once_and_the_relay_survives_the_cloud() {
    let mut cloud_config = config("relay-cloud");
    let cloud = start(cloud_config.clone()).await;
    // The restarted cloud listens where the first one did, with the same state (its
    // certificate, its pins).
    cloud_config.listen = cloud.devices;
    let capture_dir = temp_dir("relay-capture");
    let mut relayed = relay_config("relay-local", cloud.devices);
    relayed.capture.dir = Some(capture_dir.clone());
    let relay = start(relayed).await;
    let fleet = fleet(&relay, 7, "none", 0x7200_0000);
    // Both learn the whole mesh: the relay from the bridges, the cloud through the relay.
    mesh_learned(&relay, &cloud).await;
    assert_eq!(
        upstreams(&relay).await,
        [Some("up".into()), Some("up".into())]
    );
    let ids: Vec<u16> = fleet.devices().iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 6);

    // Commands from both sides at once, every device, interleaved on each bridge.
    let mut sent: BTreeMap<u16, usize> = BTreeMap::new();
    for round in 0..2 {
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().copied().enumerate() {
            let on = (i + round) % 2 == 0;
            tasks.push(set_on_with(&cloud, id, on, false));
            tasks.push(set_on_with(&relay, id, !on, false));
            *sent.entry(id).or_default() += 2;
        }
        for outcome in futures_util::future::join_all(tasks).await {
            assert_eq!(outcome, "applied");
        }
    }
    // Each device applied exactly the commands it was sent, once each.
    for d in fleet.devices() {
        assert_eq!(
            d.applied_commands.len(),
            sent[&d.id],
            "device {}: {:?}",
            d.id,
            d.applied_commands
        );
    }
    // State the cloud set shows in the relay's registry.
    for (i, id) in ids.iter().copied().enumerate() {
        assert_eq!(set_on(&cloud, id, i % 3 == 0).await, "applied");
        *sent.entry(id).or_default() += 1;
    }
    for (i, id) in ids.iter().copied().enumerate() {
        until(&relay, || {
            relay
                .ctx
                .registry
                .status("default", id)
                .is_some_and(|s| s.on == (i % 3 == 0))
        })
        .await;
    }
    let before = fleet.summary();
    assert!(before.acks_received > 0);
    assert_eq!(
        (before.ack_gaps, before.acks_unexpected),
        (0, 0),
        "{before:?}"
    );

    // The cloud goes away: the bridges stay connected and answered, local commands work.
    cloud.shutdown().await;
    until(&relay, || {
        relay
            .ctx
            .registry
            .connections_named(&relay.ctx.homes.get())
            .iter()
            .all(|c| c.upstream.is_some_and(|u| u != "up"))
    })
    .await;
    // Heartbeats (every 500 ms) keep coming and being answered while the cloud is away.
    let answered = fleet.summary().acks_received;
    eventually(
        Duration::from_secs(5),
        "heartbeats answered while the cloud is down",
        || fleet.summary().acks_received >= answered + 8,
    )
    .await;
    for id in &ids {
        assert_eq!(set_on(&relay, *id, true).await, "applied");
        *sent.entry(*id).or_default() += 1;
    }

    // The cloud comes back: the relay reconnects by itself and the new cloud commands again.
    let cloud = start(cloud_config).await;
    until(&relay, || {
        relay
            .ctx
            .registry
            .connections_named(&relay.ctx.homes.get())
            .iter()
            .all(|c| c.upstream == Some("up"))
    })
    .await;
    until(&cloud, || cloud.ctx.registry.device_count() == 6).await;
    for id in &ids {
        assert_eq!(set_on(&cloud, *id, false).await, "applied");
        *sent.entry(*id).or_default() += 1;
    }
    for d in fleet.devices() {
        assert_eq!(d.applied_commands.len(), sent[&d.id], "device {}", d.id);
        assert!(!d.on);
    }
    let after = fleet.summary();
    assert_eq!(after.disconnects, 0, "{after:?}");
    assert_eq!((after.ack_gaps, after.acks_unexpected), (0, 0), "{after:?}");
    let m = &relay.ctx.metrics.relay;
    assert!(m.connects.get() >= 4, "two bridges, connected twice each");
    assert!(
        m.failures.get_or_create(&[("reason", "closed")]).get()
            + m.failures.get_or_create(&[("reason", "connect")]).get()
            > 0
    );
    let expected = device_states(&relay).await;
    assert_eq!(expected.len(), 6);
    fleet.stop().await;
    relay.shutdown().await;
    cloud.shutdown().await;

    // The relay's capture of all this: it decodes, both sides of every connection...
    let files: Vec<PathBuf> = std::fs::read_dir(&capture_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "one file per bridge: {files:?}");
    let lines = decode(&files);
    assert!(
        lines
            .iter()
            .all(|l| l.get("error").is_none() && l.get("trailing").is_none())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["upstream"] == true && l["dir"] == "dev")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["upstream"] == true && l["dir"] == "srv")
    );
    // ...holds no auth code: every hello, to cyncd and replayed to both clouds, is masked.
    let mut hellos = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut streams: BTreeMap<(bool, bool), Vec<u8>> = BTreeMap::new();
        for record in cync_proto::capture::parse(&text) {
            let record = record.unwrap();
            let device = record.dir == cync_proto::capture::Direction::Device;
            streams
                .entry((device, record.upstream))
                .or_default()
                .extend(record.bytes);
        }
        for ((device, _), bytes) in streams.iter().filter(|((device, _), _)| *device) {
            assert!(device);
            let mut framer = cync_proto::Framer::default();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let taken = framer.push(rest);
                rest = &rest[taken..];
                while let Some(p) = framer.next_packet() {
                    let p = p.unwrap();
                    if p[0] == 0x23 {
                        hellos += 1;
                        assert!(p[12..28].iter().all(|b| *b == b'*'), "{file:?}: {p:02x?}");
                    }
                }
            }
            assert!(framer.remainder().is_empty());
        }
    }
    // Each bridge's hello to cyncd, and its two replays (one per cloud).
    assert_eq!(hellos, 6);
    // ...and played into a fresh server, gives the same device states.
    let fresh = start(config("relay-replayed")).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .arg("replay")
        .arg(&capture_dir)
        .args(["--to", &fresh.devices.to_string(), "--hold"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (said_tx, mut said) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if said_tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), said.recv())
            .await
            .expect("replay did not finish")
            .expect("replay ended before holding");
        if line.contains("holding") {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut changes = fresh.ctx.registry.watch();
    let mut got = device_states(&fresh).await;
    while got != expected
        && tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_ok()
    {
        got = device_states(&fresh).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, expected);
    fresh.shutdown().await;
}

/// Both learn the whole mesh (6 devices, each bridge listing 4): the relay from the bridges,
/// the cloud through the relay.
async fn mesh_learned(relay: &Running, cloud: &Running) {
    until(relay, || relay.ctx.registry.device_count() == 6).await;
    until(cloud, || {
        cloud.ctx.registry.device_count() == 6
            && cloud
                .ctx
                .registry
                .connections()
                .iter()
                .all(|c| c.mesh.len() == 4)
    })
    .await;
}

#[tokio::test]
async fn a_phone_app_connection_is_passed_to_the_cloud_untouched() {
    // The upstream here records what arrives and sends what the cloud sends an app: a phone
    // app's session cannot be played by a cyncd (it closes app connections).
    let dir = temp_dir("relay-app-upstream");
    let files = cyncd::devices::tls::ensure_certificate(&dir, None, None).unwrap();
    let acceptor = cyncd::devices::tls::acceptor(&files, false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = start(relay_config("relay-app", listener.local_addr().unwrap())).await;
    let mut app = connect(&relay).await;
    // The app's 0x13 (its id 2de4b5d2) and its 0xA3 for the plug, in one write.
    let app_hello = hex(&format!(
        "13 00 00 00 1a 03 2d e4 b5 d2 00 10 {} 00 00 3c",
        "31 ".repeat(16)
    ));
    let announce = hex("a3 00 00 00 07 37 96 24 69 15 2b 00");
    write(&mut app, &[app_hello.clone(), announce.clone()].concat()).await;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut cloud = cyncd::devices::tls::accept(&acceptor, tcp).await.unwrap();
    // What the app sent arrives whole, in order.
    assert_eq!(
        read_packets(&mut cloud, 2, |_| true).await,
        [app_hello, announce]
    );
    // The cloud's answers reach the app untouched, and cyncd adds nothing of its own.
    let answers = [
        hex("18 00 00 00 02 00 00"),
        hex("a8 00 00 00 08 37 96 24 69 15 2b 0a 00"),
    ];
    write(&mut cloud, &answers.concat()).await;
    assert_eq!(read_packets(&mut app, 2, |_| true).await, answers);
    // The cloud goes away: the app's connection is closed, so the app connects again.
    drop(cloud);
    expect_closed(&mut app, Duration::from_secs(5)).await;
    let closed = || {
        relay
            .ctx
            .metrics
            .connections_closed
            .get_or_create(&[("reason", "upstream_lost")])
            .get()
    };
    eventually(Duration::from_secs(5), "closed as upstream_lost", || {
        closed() == 1
    })
    .await;
    // It never became a device.
    assert!(relay.ctx.registry.connections().is_empty());
    relay.shutdown().await;
}

/// One chaos run: returns a line of numbers for the log.
async fn chaos_run(seed: u64) -> String {
    let cloud = start(config(&format!("relay-chaos-cloud-{seed}"))).await;
    let relay = start(relay_config(&format!("relay-chaos-{seed}"), cloud.devices)).await;
    let fleet = fleet(
        &relay,
        seed,
        "mixed",
        0x7300_0000 + u32::try_from(seed).unwrap() * 16,
    );
    mesh_learned(&relay, &cloud).await;
    let devices = fleet.devices();
    let deadline = Duration::from_millis(relay.ctx.config.command_deadline_ms);
    // Each bridge has devices commanded only by cyncd and devices commanded only by the
    // cloud (so each device's truth says whose commands it applied), all at once.
    let mut tasks = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let from_cloud = i % 2 == 1;
        let server = if from_cloud { &cloud } else { &relay };
        let commands = server.ctx.commands.clone();
        let registry = server.ctx.registry.clone();
        let id = d.id;
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for k in 0..4 {
                let req = Request {
                    id: commands.new_id(),
                    home: "default".into(),
                    target: Target::Device(id),
                    action: Action::Power(k % 2 == 0),
                    bridges: registry.bridges_for("default", id),
                    outlet: None,
                };
                let rx = commands.submit(req, true).unwrap().unwrap();
                let done = tokio::time::timeout(deadline + Duration::from_secs(2), rx)
                    .await
                    .expect("an outcome within the deadline")
                    .expect("exactly one outcome");
                outcomes.push(done.outcome);
            }
            (id, from_cloud, outcomes)
        }));
    }
    let mut asked = BTreeMap::new();
    let mut applied = 0;
    for t in tasks {
        let (id, from_cloud, outcomes) = t.await.unwrap();
        applied += outcomes.iter().filter(|o| **o == "applied").count();
        asked.insert(id, (from_cloud, outcomes));
    }
    // No cloud packet lost: once quiet between heartbeats, everything the cloud wrote was
    // relayed to a device or consumed as an answer cyncd had given already.
    eventually(
        Duration::from_secs(5),
        "cloud packets all accounted for",
        || sent_total(&cloud.ctx.metrics) == relayed_down(&relay.ctx.metrics),
    )
    .await;
    let summary = fleet.summary();
    fleet.stop().await;
    for d in fleet.devices() {
        let (from_cloud, outcomes) = &asked[&d.id];
        // No more state changes than commands (4 alternating commands: at most 4 changes).
        let mut changes = 0;
        let mut last = None;
        for a in &d.applied_commands {
            if last != Some(a.value.as_str()) {
                changes += 1;
            }
            last = Some(a.value.as_str());
        }
        assert!(
            changes <= outcomes.len(),
            "seed {seed} device {}: {changes} changes for {outcomes:?}",
            d.id
        );
        if *from_cloud {
            // The cloud's commands arrive in the order it sent them: on each bridge's
            // connection its message ids (a 16-bit counter) only move forward, and no packet
            // is applied twice.
            let mut by_bridge: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
            for a in &d.applied_commands {
                by_bridge
                    .entry(a.bridge.as_str())
                    .or_default()
                    .push(u16::from_str_radix(&a.msg_id[..4], 16).unwrap());
            }
            for (bridge, msgs) in &by_bridge {
                for w in msgs.windows(2) {
                    let step = w[1].wrapping_sub(w[0]);
                    assert!(
                        step > 0 && step < 0x8000,
                        "seed {seed} device {} via {bridge}: out of order {msgs:04x?}",
                        d.id
                    );
                }
            }
        }
    }
    // The relay answered every device packet once, chaos or not.
    assert_eq!(
        (summary.ack_gaps, summary.acks_unexpected),
        (0, 0),
        "seed {seed}: {summary:?}"
    );
    relay.shutdown().await;
    cloud.shutdown().await;
    format!(
        "seed {seed}: {applied}/24 applied, faults {:?}",
        summary.faults
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_chaos_over_ten_seeds_keeps_one_outcome_and_the_clouds_order() {
    // Five runs at a time: each is two servers and two bridges, light, and deadlines are
    // real time.
    for wave in [1..=5u64, 6..=10] {
        let runs: Vec<_> = wave.map(|seed| tokio::spawn(chaos_run(seed))).collect();
        for r in runs {
            eprintln!("{}", r.await.unwrap());
        }
    }
}
