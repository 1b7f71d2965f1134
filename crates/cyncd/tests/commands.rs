//! Commands end to end: the HTTP API → the command service → real TLS → simulated devices, and
//! back: outcomes, the device-side truth, the registry, traces, validation, groups, toggles.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use serde_json::Value;
use std::time::Duration;

async fn setup(name: &str) -> (cyncd::serve::Running, Fleet) {
    let mut cfg = config(name);
    cfg.homes = vec![cyncd::config::Home {
        name: "home0".into(),
        bridges: vec!["60000000".into(), "60000001".into()],
        devices: vec![],
        groups: vec![cyncd::config::GroupConfig {
            id: 0x8001,
            name: "All".into(),
            members: vec![],
            room: None,
        }],
    }];
    let server = start(cfg).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        bridges: 2,
        devices_per_bridge: 6,
        homes: Some(1),
        seed: 3,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6000_0000,
        ..FleetConfig::default()
    })
    .unwrap();
    // Ready when both bridges reported their mesh.
    until(&server, || server.ctx.registry.device_count() == 12).await;
    (server, fleet)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn a_command_is_applied_once_and_traced() {
    let (server, fleet) = setup("cmd-applied").await;
    // Device 3 is a tunable-white bulb behind bridge 0.
    let (status, body) = post(
        &server,
        "/api/devices/home0:3/state",
        r#"{"brightness": 42}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = json(&body);
    assert_eq!(r["outcome"], "applied", "{body}");
    assert_eq!(r["attempts"], 1);
    assert!(r["latency_ms"].as_f64().unwrap() < 1000.0);
    // Device-side truth: exactly one application.
    let truth = fleet.device("home0", 3).unwrap();
    assert_eq!(truth.brightness, 42);
    assert_eq!(truth.applied_commands.len(), 1);
    // The registry follows the report.
    until(&server, || {
        server
            .ctx
            .registry
            .status("home0", 3)
            .is_some_and(|s| s.brightness == 42)
    })
    .await;
    // The trace tells the story in order.
    let id = r["command_id"].as_str().unwrap();
    let (status, body) = get(&server, &format!("/api/trace/{id}")).await;
    assert_eq!(status, 200);
    let events: Vec<String> = json(&body)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events[..4],
        ["submitted", "attempt", "sent", "ack"],
        "{events:?}"
    );
    assert!(events.contains(&"outcome".to_string()));
    let sent = json(&body)["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "sent")
        .cloned()
        .unwrap();
    assert_eq!(
        sent["msg_id"].as_str().unwrap(),
        truth.applied_commands[0].msg_id
    );
    assert!(sent["hex"].as_str().unwrap().starts_with("73000000"));
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains(r#"cync_commands_total{outcome="applied"} 1"#),
        "{metrics}"
    );
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_and_nothing_is_sent() {
    let (server, fleet) = setup("cmd-bad").await;
    for (path, body, want) in [
        (
            "/api/devices/home0:3/state",
            r#"{"brightness": 101}"#,
            "brightness must be 0-100",
        ),
        (
            "/api/devices/home0:3/state",
            r#"{"bright": 1}"#,
            "unknown field",
        ),
        ("/api/devices/home0:3/state", r#"{}"#, "nothing to do"),
        (
            "/api/devices/home0:3/state",
            r#"{"effect": "disco"}"#,
            "unknown effect",
        ),
        (
            "/api/devices/home0:3/state",
            r#"{"rgb": [1,2]}"#,
            "invalid body",
        ),
        (
            "/api/devices/home0:3/state",
            r#"{"color_temp": 5, "rgb": [1,2,3]}"#,
            "at most one",
        ),
        ("/api/devices/home0:3/state", "not json", "invalid body"),
    ] {
        let (status, text) = post(&server, path, body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            json(&text)["error"].as_str().unwrap().contains(want),
            "{body}: {text}"
        );
    }
    assert_eq!(
        post(&server, "/api/devices/home0:99/state", r#"{"on": true}"#)
            .await
            .0,
        404
    );
    assert_eq!(
        post(&server, "/api/groups/7/state", r#"{"on": true}"#)
            .await
            .0,
        404
    );
    assert!(
        fleet
            .devices()
            .iter()
            .all(|d| d.applied_commands.is_empty())
    );
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn toggle_resolves_against_the_registry_and_groups_go_through_one_bridge() {
    let (server, fleet) = setup("cmd-toggle").await;
    let before = server.ctx.registry.status("home0", 1).unwrap().on;
    let (_, body) = post(&server, "/api/devices/home0:1/toggle", "").await;
    assert_eq!(json(&body)["outcome"], "applied", "{body}");
    assert_eq!(fleet.device("home0", 1).unwrap().on, !before);
    let truth = &fleet.device("home0", 1).unwrap().applied_commands;
    assert_eq!(
        (truth[0].attribute, truth[0].value.as_str()),
        ("on", if before { "false" } else { "true" })
    );

    let (_, body) = post(&server, "/api/groups/home0:32769/state", r#"{"on": true}"#).await;
    assert_eq!(json(&body)["outcome"], "applied", "{body}");
    let devices = fleet.devices();
    assert!(devices.iter().all(|d| d.on), "every member is on");
    let bridges: std::collections::BTreeSet<String> = devices
        .iter()
        .flat_map(|d| d.applied_commands.iter().map(|a| a.bridge.clone()))
        .collect();
    assert!(
        devices
            .iter()
            .all(|d| d.applied_commands.iter().any(|a| a.attribute == "on"))
    );
    let group_bridges: std::collections::BTreeSet<String> = devices
        .iter()
        .filter(|d| d.id != 1)
        .flat_map(|d| d.applied_commands.iter().map(|a| a.bridge.clone()))
        .collect();
    assert_eq!(
        group_bridges.len(),
        1,
        "one bridge carried the group command: {bridges:?}"
    );
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wait_false_answers_at_once_and_the_trace_fills_in() {
    let (server, fleet) = setup("cmd-async").await;
    let mut outcomes = server.ctx.commands.watch_done();
    let (status, body) = post(
        &server,
        "/api/devices/home0:4/state?wait=false",
        r#"{"rgb": [10, 20, 30]}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = json(&body)["command_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(&server, &format!("/api/trace/{id}")).await;
        if body.contains(r#""outcome":"applied""#) {
            break;
        }
        let next = tokio::time::timeout_at(deadline, outcomes.changed()).await;
        assert!(next.is_ok(), "no outcome: {body}");
    }
    assert_eq!(fleet.device("home0", 4).unwrap().rgb, [10, 20, 30]);
    fleet.stop().await;
    server.shutdown().await;
}
