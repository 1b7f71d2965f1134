//! Simulated fleets against `cyncd serve` over real TLS on 127.0.0.1: handshakes, mesh
//! discovery, statuses reaching the registry, reconnects and a reconnect storm absorbed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use std::time::Duration;

fn fleet_config(
    server: &cyncd::serve::Running,
    bridges: usize,
    devices: usize,
    seed: u64,
) -> FleetConfig {
    FleetConfig {
        server: server.devices.to_string(),
        bridges,
        devices_per_bridge: devices,
        homes: Some(1),
        seed,
        heartbeat: Duration::from_secs(5),
        firmware_delay: Duration::from_millis(100),
        ..FleetConfig::default()
    }
}

#[tokio::test]
async fn a_fleet_connects_and_its_mesh_reaches_the_registry() {
    let server = start(config("fleet")).await;
    let fleet = Fleet::start(fleet_config(&server, 4, 3, 11)).unwrap();
    // Every bridge says hello, answers the 0xA3 and the mesh request; the registry learns each
    // bridge's mesh (own 3 devices + the next bridge's first) and all 12 devices.
    until(&server, || {
        let conns = server.ctx.registry.connections();
        conns.len() == 4
            && conns.iter().all(|c| {
                c.mesh.len() == 4 && c.firmware.get("device").is_some_and(|v| v == "1.1.158")
            })
    })
    .await;
    until(&server, || server.ctx.registry.device_count() == 12).await;
    let devices = server.ctx.registry.devices(&server.ctx.homes.get());
    // The registry's view equals the simulator's truth.
    for d in &devices {
        let truth = fleet.device("home0", d.mesh_id).unwrap();
        assert_eq!(d.on, truth.on, "{}", d.id);
        assert!(d.online);
        // Each bridge's own device (first mesh record) gets its type from the mesh info.
        if [1, 4, 7, 10].contains(&d.mesh_id) {
            assert_eq!(d.type_code, Some(truth.kind.type_code()), "{}", d.id);
        }
    }
    // Devices reached by two bridges list both.
    assert!(devices.iter().filter(|d| d.bridges.len() == 2).count() >= 4);
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(metrics.contains("cyncd_hellos_total 4"), "{metrics}");
    assert!(
        metrics.contains(r#"tcp_comm_packet_recv_total{type="announce_reply",outcome="ok"} 4"#)
    );
    let summary = fleet.summary();
    assert_eq!(
        (
            summary.connected,
            summary.connects,
            summary.connect_failures
        ),
        (4, 4, 0)
    );
    fleet.stop().await;
    until(&server, || server.ctx.registry.connection_count() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_storm_is_absorbed() {
    let server = start(config("storm")).await;
    let fleet = Fleet::start(fleet_config(&server, 60, 2, 5)).unwrap();
    until(&server, || server.ctx.registry.connection_count() == 60).await;
    for round in 1..=2u64 {
        fleet.storm();
        // Every bridge drops and reconnects; the server ends with one session per bridge again.
        until(&server, || {
            fleet.summary().connects >= 60 * (round + 1)
                && server.ctx.registry.connection_count() == 60
        })
        .await;
    }
    let s = fleet.summary();
    assert_eq!(s.faults.get("storm"), Some(&2));
    assert!(s.disconnects >= 120, "{s:?}");
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(metrics.contains("cyncd_connections_open 60"), "{metrics}");
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restart_is_survived_by_reconnecting() {
    let first = start(config("restart")).await;
    let addr = first.devices;
    let fleet = Fleet::start(fleet_config(&first, 3, 2, 3)).unwrap();
    until(&first, || first.ctx.registry.connection_count() == 3).await;
    first.shutdown().await;
    // A new server on the same port: the bridges come back by themselves (backoff ≤ 5 s).
    let mut cfg = config("restart2");
    cfg.listen = addr;
    let second = start(cfg).await;
    until(&second, || second.ctx.registry.connection_count() == 3).await;
    assert!(fleet.summary().connects >= 6);
    fleet.stop().await;
    second.shutdown().await;
}

#[tokio::test]
async fn garbage_and_bytewise_writes_from_a_fleet_are_tolerated() {
    let server = start(config("chaos")).await;
    let mut cfg = fleet_config(&server, 3, 2, 9);
    cfg.chaos = cync_sim::Chaos::parse("garbage=1,byte_at_a_time=true").unwrap();
    cfg.heartbeat = Duration::from_millis(300);
    let fleet = Fleet::start(cfg).unwrap();
    until(&server, || {
        server
            .ctx
            .registry
            .connections()
            .iter()
            .filter(|c| c.mesh.len() == 3 && c.errors >= 2)
            .count()
            == 3
    })
    .await;
    // Garbage is counted, never fatal: still one connection per bridge.
    assert_eq!(fleet.summary().connects, 3);
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("tcp_comm_decode_errors_total"),
        "{metrics}"
    );
    fleet.stop().await;
    server.shutdown().await;
}
