//! The web page's server side: the embedded page and its cache policy, the live event stream
//! (first snapshot, pushed changes, client cap, shutdown) and the per-bridge command outcomes
//! the page shows.
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

fn fleet_config(server: &cyncd::serve::Running, id_base: u32) -> FleetConfig {
    FleetConfig {
        server: server.devices.to_string(),
        bridges: 1,
        devices_per_bridge: 4,
        homes: Some(1),
        seed: 21,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(50),
        id_base,
        ..FleetConfig::default()
    }
}

#[tokio::test]
async fn the_page_is_served_with_its_type_and_cache_policy() {
    let server = start(config("web-page")).await;
    let (status, head, body) = get_with(&server, "/", "").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(body.contains("<script src=\"app.js\""), "{body}");
    // Revalidation: the same ETag answers 304 with no body.
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (status, _, body) = get_with(&server, "/", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, _, _) = get_with(&server, "/", "If-None-Match: \"other\"\r\n").await;
    assert_eq!(status, 200);

    for (path, kind) in [
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = get_with(&server, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(!body.is_empty());
    }
    // Unknown paths, under / or /api, are JSON 404s.
    for path in ["/nope", "/app.js/x", "/api/nope"] {
        let (status, head, body) = get_with(&server, path, "").await;
        assert_eq!(status, 404, "{path}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(body.contains("\"error\""), "{body}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_start_with_a_snapshot_and_push_changes() {
    let mut cfg = config("web-events");
    cfg.homes = vec![cyncd::config::Home {
        name: "default".into(),
        bridges: Vec::new(),
        devices: Vec::new(),
        groups: vec![cyncd::config::GroupConfig {
            id: 7,
            name: "Kitchen".into(),
            members: vec![2, 3],
            room: None,
        }],
    }];
    let server = start(cfg).await;
    let fleet = Fleet::start(fleet_config(&server, 0x6200_0000)).unwrap();
    until(&server, || server.ctx.registry.device_count() == 4).await;

    let (status, head, mut stream) = events(&server).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let first = stream.expect("snapshot").await;
    assert_eq!(first["devices"].as_array().unwrap().len(), 4);
    assert_eq!(first["connections"].as_array().unwrap().len(), 1);
    insta::assert_json_snapshot!("events_meta", first["meta"]);
    let mut seq = first["seq"].as_u64().unwrap();

    // A command changes device 2 in the simulator; its report reaches the page.
    let before = fleet.device("home0", 2).unwrap().on;
    let (status, body) = post(&server, "/api/devices/default:2/toggle", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fleet.device("home0", 2).unwrap().on, !before);
    // Both reach the page: the device's new state, and the bridge's outcome counter.
    let (mut changed, mut counted) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(changed && counted) {
        assert!(tokio::time::Instant::now() < deadline, "no update");
        let update = stream.expect("update").await;
        // Updates follow each other, one frame at a time.
        seq += 1;
        assert_eq!(update["seq"].as_u64(), Some(seq), "{update}");
        if let Some(conns) = update["connections"].as_array() {
            counted |= conns[0]["commands"]["applied"] == 1;
        }
        let devices = update["devices"].as_array().unwrap();
        if devices
            .iter()
            .any(|d| d["id"] == "default:2" && d["on"] == !before)
        {
            // Only what changed is sent.
            assert!(devices.len() < 4, "{update}");
            changed = true;
        }
    }
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped() {
    let server = start(config("web-cap")).await;
    let mut open = Vec::new();
    for _ in 0..cyncd::frontends::live::MAX_CLIENTS {
        let (status, _, mut stream) = events(&server).await;
        assert_eq!(status, 200);
        stream.expect("snapshot").await;
        open.push(stream);
    }
    assert_eq!(
        server.ctx.metrics.web_clients.get(),
        cyncd::frontends::live::MAX_CLIENTS as i64
    );
    let (status, head, refused) = events(&server).await;
    assert_eq!(status, 503);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("retry-after: 5"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&refused.rest().await).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("cyncd_web_clients_refused_total 1"),
        "{metrics}"
    );

    // A page that goes away frees its place.
    drop(open.pop());
    wait_for(|| server.ctx.metrics.web_clients.get() < cyncd::frontends::live::MAX_CLIENTS as i64)
        .await;
    let (status, _, mut stream) = events(&server).await;
    assert_eq!(status, 200);
    stream.expect("snapshot").await;
    server.shutdown().await;
}

/// Waits for a condition nothing announces (a closed socket noticed by the server), checking
/// every 10 ms, failing after 10 s.
async fn wait_for(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams() {
    let server = start(config("web-shutdown")).await;
    let (_, _, mut stream) = events(&server).await;
    stream.expect("snapshot").await;
    let t0 = tokio::time::Instant::now();
    server.shutdown().await;
    // Well inside the grace period: shutdown did not wait for the page to go away.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(stream.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_counted_on_the_bridge_that_carried_them() {
    let server = start(config("web-outcomes")).await;
    let fleet = Fleet::start(fleet_config(&server, 0x6300_0000)).unwrap();
    until(&server, || server.ctx.registry.device_count() == 4).await;
    // Device 3 is a tunable-white bulb: applied. Device 2 is a dimmable bulb whose type cyncd
    // does not know: the command goes out and the bulb refuses colour.
    let (status, body) = post(
        &server,
        "/api/devices/default:3/state",
        r#"{"brightness":30}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""outcome":"applied""#), "{body}");
    let (status, body) = post(
        &server,
        "/api/devices/default:2/state",
        r#"{"rgb":[1,2,3]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""outcome":"rejected""#), "{body}");
    // Refused before sending: counted nowhere.
    let (status, _) = post(
        &server,
        "/api/devices/default:1/state",
        r#"{"rgb":[1,2,3]}"#,
    )
    .await;
    assert_eq!(status, 400);

    let (_, body) = get(&server, "/api/connections").await;
    let conns: serde_json::Value = serde_json::from_str(&body).unwrap();
    let commands = &conns[0]["commands"];
    assert_eq!(commands["applied"], 1, "{conns}");
    assert_eq!(commands["rejected"], 1, "{conns}");
    let total: u64 = commands
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "{conns}");
    fleet.stop().await;
    server.shutdown().await;
}
