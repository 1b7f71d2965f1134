//! MQTT for Home Assistant against a real broker: each test starts its own `mosquitto` on a
//! free port (Debian's `/usr/sbin/mosquitto`), so broker restarts and retained state are the
//! test's own. Without the binary the tests say so and skip — except under CI (`CI` set), where
//! a missing broker fails them.
//!
//! Home Assistant's side is a real MQTT client (rumqttc) that records every message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::broker::*;
use common::*;
use cync_sim::{Fleet, FleetConfig};
use rumqttc::QoS;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

fn fleet_config() -> FleetConfig {
    FleetConfig {
        bridges: 2,
        devices_per_bridge: 6,
        homes: Some(1),
        seed: 6,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6600_0000,
        ..FleetConfig::default()
    }
}

/// A server with MQTT on `broker` and the demo home's configuration, plus its simulated fleet.
async fn home(name: &str, broker: &Mosquitto) -> (cyncd::serve::Running, Fleet) {
    let mut config = config(name);
    config.mqtt.url = Some(broker.url());
    config.homes = vec![cyncd::cli::sim::demo_home(&fleet_config()).unwrap()];
    let server = start(config).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        ..fleet_config()
    })
    .unwrap();
    until(&server, || {
        let devices = server.ctx.registry.devices(&server.ctx.homes.get());
        devices.len() == 12 && devices.iter().all(|d| d.reachable)
    })
    .await;
    (server, fleet)
}

/// Every entity the demo home has: 12 devices, one group, two bridges (two entities each).
fn discovery_topics(seen: &Seen) -> Vec<String> {
    seen.latest
        .keys()
        .filter(|t| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .cloned()
        .collect()
}

fn all_published(seen: &Seen) -> bool {
    discovery_topics(seen).len() == 12 + 1 + 4
        && (1..=12).all(|id| {
            seen.json(&format!("cync/default_{id}/state")).is_some()
                && seen
                    .text(&format!("cync/default_{id}/availability"))
                    .as_deref()
                    == Some("online")
        })
        && seen.text("cync/bridge/availability").as_deref() == Some("online")
        // A bridge's state follows its discovery in the same scan.
        && ["cync/bridge_66000000/state", "cync/bridge_66000001/state"]
            .iter()
            .all(|t| seen.json(t).is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_states_and_commands_through_a_real_broker() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let (server, fleet) = home("mqtt-loop", &broker).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until(
        "every entity's discovery, state and availability",
        all_published,
    )
    .await;
    // Once both bridges listed their mesh, every device names its bridge's own mesh device
    // (a bridge is one device in Home Assistant) as the one it is reached through.
    until(&server, || {
        server
            .ctx
            .registry
            .connections()
            .iter()
            .filter(|c| c.device.is_some())
            .count()
            == 2
    })
    .await;
    let own: Vec<String> = server
        .ctx
        .registry
        .connections()
        .iter()
        .filter_map(|c| c.device.as_ref())
        .map(|d| format!("cyncd_{}", d.replace(':', "_")))
        .collect();
    ha.until("every device via a bridge's own device", |s| {
        (1..=12).all(|id| {
            discovery_topics(s)
                .iter()
                .filter(|t| t.ends_with(&format!("/default_{id}/config")))
                .filter_map(|t| s.json(t))
                .all(|c| match c["device"].get("via_device") {
                    Some(via) => own.iter().any(|o| via == o),
                    None => own.contains(&format!("cyncd_default_{id}")),
                })
        })
    })
    .await;
    let seen = ha.seen();
    insta::assert_json_snapshot!("demo_home_discovery_topics", discovery_topics(&seen));

    // The retained discovery payloads are what the builders make (the builders' snapshots
    // cover every payload); check the kinds of the demo home by their components.
    let kinds: BTreeMap<u16, String> = fleet
        .devices()
        .iter()
        .map(|d| (d.id, format!("{:?}", d.kind)))
        .collect();
    for (id, kind) in &kinds {
        let component = match kind.as_str() {
            "Plug" | "Switch" => "switch",
            "Fan" => "fan",
            _ => "light",
        };
        let config = seen
            .json(&format!(
                "homeassistant/{component}/cyncd/default_{id}/config"
            ))
            .unwrap_or_else(|| panic!("device {id} ({kind}) is not a {component}"));
        assert_eq!(config["unique_id"], format!("cyncd_default_{id}"));
        assert_eq!(config["device"]["manufacturer"], "GE Cync");
        // Reached through a bridge: named by the bridge's own mesh device, never itself.
        match config["device"].get("via_device") {
            Some(via) => {
                assert!(own.iter().any(|o| via == o), "{config} via one of {own:?}");
                assert_ne!(via, &config["device"]["identifiers"][0], "{config}");
            }
            None => assert!(
                own.contains(&format!("cyncd_default_{id}")),
                "only a bridge's own device is via nothing: {config}"
            ),
        }
    }
    let bridge = seen.json("cync/bridge_66000000/state").unwrap();
    assert_eq!(bridge["connected"], "ON");
    assert!(bridge["firmware"].is_string(), "{bridge}");

    // A light: set → the simulated bulb applies it → the retained state says so.
    let bulb = *kinds
        .iter()
        .find(|(_, k)| k.as_str() == "TunableWhite")
        .unwrap()
        .0;
    ha.publish(
        &format!("cync/default_{bulb}/set"),
        r#"{"state":"ON","brightness":40,"color_temp":2000}"#,
    )
    .await;
    let state_topic = format!("cync/default_{bulb}/state");
    ha.until("the bulb's new retained state", |s| {
        s.json(&state_topic)
            .is_some_and(|v| v["state"] == "ON" && v["brightness"] == 40 && v["color_temp"] == 2000)
    })
    .await;
    let truth = fleet.device("home0", bulb).unwrap();
    assert!(truth.on && truth.brightness == 40 && truth.color_temp == Some(0));

    // States are published when they change: an untouched device's state went out once.
    let untouched = *kinds
        .iter()
        .find(|(_, k)| k.as_str() == "Switch")
        .unwrap()
        .0;
    assert_eq!(
        ha.seen().count(&format!("cync/default_{untouched}/state")),
        1
    );

    // A fan by preset.
    let fan = *kinds.iter().find(|(_, k)| k.as_str() == "Fan").unwrap().0;
    ha.publish(
        &format!("cync/default_{fan}/set"),
        r#"{"preset_mode":"high"}"#,
    )
    .await;
    let fan_topic = format!("cync/default_{fan}/state");
    // (A preset is still taken; the speed names are not modes, so the state has none.)
    ha.until("the fan at high", |s| {
        s.json(&fan_topic)
            .is_some_and(|v| v["speed"] == 3 && v.get("preset_mode").is_none())
    })
    .await;
    let truth = fleet.device("home0", fan).unwrap();
    assert!(truth.on && truth.brightness == 75, "{truth:?}");

    // A plug asked for brightness: refused before anything is sent, true state re-published.
    let plug = *kinds.iter().find(|(_, k)| k.as_str() == "Plug").unwrap().0;
    let plug_topic = format!("cync/default_{plug}/state");
    let before = (
        ha.seen().count(&plug_topic),
        fleet.device("home0", plug).unwrap().applied_commands.len(),
    );
    ha.publish(
        &format!("cync/default_{plug}/set"),
        r#"{"state":"ON","brightness":10}"#,
    )
    .await;
    ha.until("the plug's state re-published", |s| {
        s.count(&plug_topic) > before.0
    })
    .await;
    assert_eq!(
        fleet.device("home0", plug).unwrap().applied_commands.len(),
        before.1
    );

    // The whole home off with one group command.
    ha.publish("cync/default_group_32769/set", "OFF").await;
    ha.until("every device off", |s| {
        (1..=12).all(|id| {
            s.json(&format!("cync/default_{id}/state"))
                .is_some_and(|v| v["state"] == "OFF")
        }) && s
            .json("cync/default_group_32769/state")
            .is_some_and(|v| v["state"] == "OFF")
    })
    .await;
    assert!(fleet.devices().iter().all(|d| !d.on));

    // Nonsense on a command topic is refused without harm.
    ha.publish(&format!("cync/default_{plug}/set"), "\u{1}\u{2}not json")
        .await;
    ha.publish("cync/nobody_9/set", "ON").await;
    ha.until("the plug's state re-published again", |s| {
        s.count(&plug_topic) > before.0 + 1
    })
    .await;
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("cyncd_mqtt_commands_total{outcome=\"invalid\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cyncd_mqtt_connected 1"));

    // With every bridge gone a command cannot be applied: the true state (still OFF) is
    // published again so Home Assistant does not keep showing ON.
    fleet.stop().await;
    until(&server, || server.ctx.registry.connections().is_empty()).await;
    let count = ha.seen().count(&state_topic);
    ha.publish(&format!("cync/default_{bulb}/set"), "ON").await;
    ha.until("the bulb's true state re-published", |s| {
        s.count(&state_topic) > count
    })
    .await;
    assert_eq!(ha.seen().json(&state_topic).unwrap()["state"], "OFF");
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("cyncd_mqtt_commands_total{outcome=\"not_applied\"} 1"),
        "{metrics}"
    );

    server.shutdown().await;
    ha.until("cyncd's clean goodbye", |s| {
        s.text("cync/bridge/availability").as_deref() == Some("offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_republishes_everything_and_a_birth_the_states() {
    let Some(mut broker) = Mosquitto::start(None).await else {
        return;
    };
    let (server, fleet) = home("mqtt-restart", &broker).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until("first publication", all_published).await;

    // Home Assistant restarts: its birth message makes cyncd publish the states again.
    ha.publish("homeassistant/status", "online").await;
    ha.until("states again after the birth message", |s| {
        s.count("cync/default_3/state") > 1
    })
    .await;

    // The broker restarts empty (no persistence): cyncd reconnects and re-publishes, so the
    // new broker holds every retained topic again.
    let port = broker.port;
    broker.stop();
    let broker = Mosquitto::start(Some(port)).await.unwrap();
    let mut fresh = Ha::connect(broker.port).await;
    fresh
        .until(
            "every retained topic on the restarted broker",
            all_published,
        )
        .await;
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(metrics.contains("cyncd_mqtt_connects_total 2"), "{metrics}");
    drop(ha);
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_says_offline_when_cyncd_is_killed() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let state = temp_dir("mqtt-will");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args([
            "serve",
            "--plain",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(&state)
        .args(["--mqtt", &broker.url(), "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ha.until("cyncd online", |s| {
        s.text("cync/bridge/availability").as_deref() == Some("online")
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    ha.until("the last will", |s| {
        s.text("cync/bridge/availability").as_deref() == Some("offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_removed_from_the_configuration_are_removed_from_home_assistant() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let mut config = config("mqtt-removal");
    config.mqtt.url = Some(broker.url());
    config.homes = vec![cyncd::cli::sim::demo_home(&fleet_config()).unwrap()];
    let first = start(config.clone()).await;
    let group = "homeassistant/light/cyncd/default_group_32769/config";
    let named = "homeassistant/switch/cyncd/default_1/config";
    ha.until("the group and a configured device", |s| {
        s.latest.contains_key(group) && s.latest.contains_key(named)
    })
    .await;
    first.shutdown().await;

    // Same state directory, the group and device 1 gone from the configuration.
    config.homes[0].groups.clear();
    config.homes[0].devices.retain(|d| d.id != 1);
    let second = start(config).await;
    ha.until("the group's and device 1's discovery cleared", |s| {
        !s.latest.contains_key(group)
            && !s.latest.contains_key(named)
            && s.latest
                .contains_key("homeassistant/light/cyncd/default_3/config")
    })
    .await;
    second.shutdown().await;
}

#[tokio::test]
async fn cyncd_runs_without_a_reachable_broker() {
    // Nothing listens on this port: cyncd keeps serving and keeps retrying.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config("mqtt-unreachable");
    config.mqtt.url = Some(format!("mqtt://127.0.0.1:{port}"));
    let server = start(config).await;
    let (status, _) = get(&server, "/healthz").await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(&server, "/metrics").await;
        let failures: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cyncd_mqtt_connect_failures_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if failures >= 1 {
            assert!(metrics.contains("cyncd_mqtt_connected 0"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for 127.0.0.1 (also its own CA), as PEM (cert, key).
fn loopback_certificate() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_and_a_password_file() {
    let dir = temp_dir("mqtts");
    let (cert, key) = loopback_certificate();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let passwords = dir.join("passwd");
    std::fs::write(&passwords, "").unwrap();
    if mosquitto_binary().is_some() {
        let made = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwords)
            .args(["cyncd", "s3cret"])
            .status()
            .unwrap();
        assert!(made.success());
    }
    let tls_port = free_port();
    // The plain listener is Home Assistant's (anonymous); the TLS one needs cyncd's password.
    let Some(broker) = Mosquitto::start_with(
        None,
        &format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\n",
            cert_file.display(),
            key_file.display(),
            passwords.display(),
        ),
    )
    .await
    else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let password_file = dir.join("mqtt-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let mut config = config("mqtts");
    config.mqtt.url = Some(format!("mqtts://cyncd@127.0.0.1:{tls_port}"));
    config.mqtt.password_file = Some(password_file);
    config.mqtt.ca_file = Some(cert_file);
    let server = start(config).await;
    ha.until("cyncd online over TLS", |s| {
        s.text("cync/bridge/availability").as_deref() == Some("online")
    })
    .await;
    server.shutdown().await;

    // A wrong password is refused by the broker: cyncd keeps serving and counts the failures.
    let wrong = dir.join("wrong-password");
    std::fs::write(&wrong, "guess\n").unwrap();
    let mut config = self::config("mqtts-wrong");
    config.mqtt.url = Some(format!("mqtts://cyncd@127.0.0.1:{tls_port}"));
    config.mqtt.password_file = Some(wrong);
    config.mqtt.ca_file = Some(dir.join("cert.pem"));
    let server = start(config).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(&server, "/metrics").await;
        if !metrics.contains("cyncd_mqtt_connect_failures_total 0") {
            assert!(metrics.contains("cyncd_mqtt_connects_total 0"), "{metrics}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no refusal counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// The value of an unlabelled counter in a Prometheus text body.
fn counter(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_publish_is_dropped_and_the_session_stays_up() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let (server, fleet) = home("mqtt-oversize", &broker).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until("first publication", all_published).await;
    let availability = ha.seen().count("cync/bridge/availability");
    // 200 KB and 1 MB on a command topic, and invalid JSON of 3,000 bytes.
    for size in [200_000, 1_000_000] {
        let body = format!(r#"{{"state":"ON","x":"{}"}}"#, "A".repeat(size));
        ha.publish("cync/default_1/set", &body).await;
    }
    ha.publish("cync/default_1/set", &"{".repeat(3000)).await;
    // A good command after them is applied: the session is up and nothing queued behind them.
    let before = fleet.device("home0", 2).unwrap().on;
    let want = if before { "OFF" } else { "ON" };
    ha.publish("cync/default_2/set", want).await;
    ha.until("the good command's state", |s| {
        s.json("cync/default_2/state")
            .is_some_and(|v| v["state"] == want)
    })
    .await;
    assert_eq!(fleet.device("home0", 2).unwrap().on, !before);
    let (_, metrics) = get(&server, "/metrics").await;
    assert_eq!(
        counter(&metrics, "cyncd_mqtt_connects_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "cyncd_mqtt_oversize_total"),
        2,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "cyncd_mqtt_connect_failures_total"), 0);
    let seen = ha.seen();
    assert_eq!(
        seen.count("cync/bridge/availability"),
        availability,
        "availability re-published"
    );
    assert_eq!(
        seen.text("cync/bridge/availability").as_deref(),
        Some("online")
    );
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_births_republishes_states_once_and_no_discovery() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let (server, fleet) = home("mqtt-births", &broker).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until("first publication", all_published).await;
    let discovery = "homeassistant/light/cyncd/default_3/config";
    let seen = ha.seen();
    let (discovery_before, state_before) =
        (seen.count(discovery), seen.count("cync/default_3/state"));
    let (_, metrics) = get(&server, "/metrics").await;
    let published_before = counter(&metrics, "cyncd_mqtt_published_total");
    for _ in 0..50 {
        ha.publish("homeassistant/status", "online").await;
    }
    ha.until("the states again", |s| {
        s.count("cync/default_3/state") > state_before
    })
    .await;
    // A command after the burst: once its state is seen, every birth was handled before it.
    let before = fleet.device("home0", 2).unwrap().on;
    let want = if before { "OFF" } else { "ON" };
    ha.publish("cync/default_2/set", want).await;
    ha.until("the command's state", |s| {
        s.json("cync/default_2/state")
            .is_some_and(|v| v["state"] == want)
    })
    .await;
    let seen = ha.seen();
    assert_eq!(
        seen.count("cync/default_3/state"),
        state_before + 1,
        "one re-publication"
    );
    assert_eq!(
        seen.count(discovery),
        discovery_before,
        "discovery re-published"
    );
    let (_, metrics) = get(&server, "/metrics").await;
    let published = counter(&metrics, "cyncd_mqtt_published_total") - published_before;
    // States and availability of 12 devices and the group, bridge states, cyncd's
    // availability, and the command's own state and attributes: no discovery (17 topics) and
    // no other attributes among them.
    eprintln!("50 births cost {published} publishes");
    assert!(published <= 12 * 2 + 2 + 2 + 1 + 2 + 1, "{published}");
    fleet.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_no_bridge_lists_get_no_entities_and_stale_ones_are_removed() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let (server, fleet) = home("mqtt-listed", &broker).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until("first publication", all_published).await;
    // Reports from ids no bridge listed and the configuration does not name, from a bridge
    // that never answers the mesh request (as forged 0x83s would come): in the registry, not
    // in Home Assistant.
    // (Its own id: the simulated bridges' ids are pinned to their codes.)
    let mut forger = connect(&server).await;
    write(&mut forger, &hello([0x66, 0, 0, 0x99])).await;
    read_packets(&mut forger, 1, answers).await;
    let mut reports: Vec<u8> = (500..600u16)
        .flat_map(|id| report(0x6600_0099, id, id))
        .collect();
    reports.extend(hex("d3 00 00 00 00"));
    write(&mut forger, &reports).await;
    // Every report's 0x88 and the heartbeat's 0xD8: all of them were handled.
    read_packets(&mut forger, 101, |p| p[0] == 0x88 || p[0] == 0xd8).await;
    assert!(server.ctx.registry.device_count() >= 100);
    // A command afterwards proves a scan ran after the forged reports.
    let before = fleet.device("home0", 2).unwrap().on;
    let want = if before { "OFF" } else { "ON" };
    ha.publish("cync/default_2/set", want).await;
    ha.until("the command's state", |s| {
        s.json("cync/default_2/state")
            .is_some_and(|v| v["state"] == want)
    })
    .await;
    ha.until("a scan after the forged reports", |s| {
        s.count("cync/default_2/state") >= 2
    })
    .await;
    let seen = ha.seen();
    assert!(
        !seen
            .latest
            .keys()
            .any(|t| (500..600).any(|id| t.contains(&format!("default_{id}/")))),
        "a forged device was announced"
    );
    // Every published topic is remembered in the state directory.
    let file = server.ctx.config.state_dir.join("mqtt-entities.json");
    let state_dir = server.ctx.config.state_dir.clone();
    fleet.stop().await;
    server.shutdown().await;
    let remembered: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let topics = remembered["topics"].as_object().unwrap();
    assert!(topics.contains_key("homeassistant/light/cyncd/default_3/config"));
    assert!(topics.contains_key("cync/bridge_66000000/state"));
    assert!(!topics.keys().any(|t| t.contains("default_555/")));

    // An entity last wanted longer ago than the stale limit is removed at the next start.
    let mut edited = remembered.clone();
    let old = "homeassistant/light/cyncd/default_77/config";
    edited["topics"][old] = serde_json::json!({"configured_only": false, "seen": 1});
    std::fs::write(&file, serde_json::to_vec(&edited).unwrap()).unwrap();
    ha.client
        .publish(old, QoS::AtLeastOnce, true, b"{}".to_vec())
        .await
        .unwrap();
    ha.until("the planted entity", |s| s.latest.contains_key(old))
        .await;
    let mut again = config("mqtt-listed-2");
    again.state_dir = state_dir;
    again.mqtt.url = Some(broker.url());
    again.homes = vec![cyncd::cli::sim::demo_home(&fleet_config()).unwrap()];
    let second = start(again).await;
    ha.until("the stale entity removed", |s| !s.latest.contains_key(old))
        .await;
    second.shutdown().await;
}
