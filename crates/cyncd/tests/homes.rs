//! A real home, end to end: `cyncd account import` of a realistic `cync_mesh.yaml` (3 homes,
//! 40 devices of 12 types, 8 rooms, one hidden device) into a fresh state directory, then the
//! server with that state directory and simulated bridges playing those homes (each bridge's
//! home found from its mesh listing, since the file names no bridge): the API shows every
//! name, room, type, product and MAC; each outlet of the dual plug and the thermostat's
//! readings come through; and Home Assistant gets the right entity for every device, in its
//! room's area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::broker::{Ha, Mosquitto};
use common::*;
use cync_proto::catalog::{DeviceType, Kind};
use cync_sim::{BridgeLayout, Fleet, FleetConfig, HomeLayout};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn yaml() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cync_mesh.yaml")
}

/// `cyncd account import` of the test data into `state`, as a user runs it.
fn import(state: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cyncd"))
        .args(["account", "import"])
        .arg(yaml())
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (home, mesh id) → (name, room, type code, MAC).
type Expected = BTreeMap<(String, u16), (String, Option<String>, u8, Option<String>)>;

/// What the homes file says each enabled device is.
fn expected(state: &Path) -> Expected {
    let file: Value =
        serde_json::from_slice(&std::fs::read(state.join("homes.json")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for h in file["homes"].as_array().unwrap() {
        let home = h["name"].as_str().unwrap().to_string();
        for d in h["devices"].as_array().unwrap() {
            if d["enabled"] == false {
                continue;
            }
            let id = u16::try_from(d["id"].as_u64().unwrap()).unwrap();
            let room = h["groups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| {
                    g["subgroup"] != true
                        && g["members"].as_array().unwrap().iter().any(|m| m == id)
                })
                .map(|g| g["name"].as_str().unwrap().to_string());
            out.insert(
                (home.clone(), id),
                (
                    d["name"].as_str().unwrap().to_string(),
                    room,
                    u8::try_from(d["type"].as_u64().unwrap()).unwrap(),
                    d["mac"].as_str().map(str::to_string),
                ),
            );
        }
    }
    out
}

/// The homes as the simulator plays them: every device of the file (the hidden one too: it is
/// still on the mesh), the Wi-Fi bridges with ids the file does not know.
fn layout(state: &Path) -> Vec<HomeLayout> {
    let file: Value =
        serde_json::from_slice(&std::fs::read(state.join("homes.json")).unwrap()).unwrap();
    let devices = |home: &str| -> Vec<(u16, u8)> {
        let h = file["homes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == home)
            .unwrap();
        h["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    u16::try_from(d["id"].as_u64().unwrap()).unwrap(),
                    u8::try_from(d["type"].as_u64().unwrap()).unwrap(),
                )
            })
            .collect()
    };
    let ids = |list: &[(u16, u8)], skip: &[u16]| -> Vec<u16> {
        list.iter()
            .map(|(id, _)| *id)
            .filter(|id| !skip.contains(id))
            .collect()
    };
    let maple = devices("Maple Street");
    let cabin = devices("Lake Cabin");
    let grandma = devices("Grandma's House");
    vec![
        HomeLayout {
            name: "Maple Street".into(),
            bridges: vec![
                // The pendant reaches the mesh; the thermostat is on Wi-Fi only.
                BridgeLayout {
                    id: 0x7a00_0001,
                    own: 1,
                    reach: ids(&maple, &[9]),
                },
                BridgeLayout {
                    id: 0x7a00_0006,
                    own: 6,
                    reach: vec![18],
                },
                BridgeLayout {
                    id: 0x7a00_0009,
                    own: 9,
                    reach: vec![],
                },
            ],
            devices: maple,
        },
        HomeLayout {
            name: "Lake Cabin".into(),
            bridges: vec![BridgeLayout {
                id: 0x7b00_0001,
                own: 1,
                reach: ids(&cabin, &[]),
            }],
            devices: cabin,
        },
        HomeLayout {
            name: "Grandma's House".into(),
            bridges: vec![BridgeLayout {
                id: 0x7c00_0002,
                own: 2,
                reach: ids(&grandma, &[]),
            }],
            devices: grandma,
        },
    ]
}

fn path_id(id: &str) -> String {
    id.replace(' ', "%20").replace('\'', "%27")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_home_shows_every_name_room_and_type_in_the_api_and_home_assistant() {
    let broker = Mosquitto::start(None).await;
    let mut config = config("homes-acceptance");
    let state = config.state_dir.join("state");
    import(&state);
    config.state_dir = state.clone();
    if let Some(b) = &broker {
        config.mqtt.url = Some(b.url());
    }
    let want = expected(&state);
    assert_eq!(want.len(), 39, "40 devices, one hidden");
    let types: std::collections::BTreeSet<u8> = want.values().map(|v| v.2).collect();
    assert_eq!(types.len(), 12, "{types:?}");
    let rooms: std::collections::BTreeSet<(String, String)> = want
        .iter()
        .filter_map(|((h, _), v)| v.1.clone().map(|r| (h.clone(), r)))
        .collect();
    assert_eq!(rooms.len(), 8, "{rooms:?}");

    let server = start(config).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        plain: false,
        seed: 40,
        firmware_delay: std::time::Duration::from_millis(50),
        layout: Some(layout(&state)),
        ..FleetConfig::default()
    })
    .unwrap();
    // Every device reported, through a bridge its mesh placed in the right home, and the
    // thermostat's readings in.
    until(&server, || {
        let devices = server.ctx.registry.devices(&server.ctx.homes.get());
        devices.len() == 39
            && devices.iter().all(|d| d.reachable)
            && devices
                .iter()
                .any(|d| d.sensors.as_ref().is_some_and(|s| !s.is_empty()))
    })
    .await;

    let (status, body) = get(&server, "/api/devices").await;
    assert_eq!(status, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 39, "the hidden device is not listed");
    for d in &list {
        let key = (
            d["home"].as_str().unwrap().to_string(),
            u16::try_from(d["mesh_id"].as_u64().unwrap()).unwrap(),
        );
        let (name, room, code, mac) = want.get(&key).unwrap_or_else(|| panic!("{d}"));
        let t = DeviceType::of(Some(*code));
        assert_eq!(d["name"], name.as_str(), "{d}");
        assert_eq!(d["room"].as_str(), room.as_deref(), "{d}");
        assert_eq!(d["type"], *code, "{d}");
        assert_eq!(d["kind"], t.kind.name(), "{d}");
        assert_eq!(d["model"], t.product, "{d}");
        assert_eq!(d["mac"].as_str(), mac.as_deref(), "{d}");
        assert!(d["online"].as_bool().unwrap(), "{d}");
    }
    assert!(
        list.iter().all(|d| d["name"] != "Old Lamp"),
        "hidden by enabled: false"
    );
    let (status, _) = get(&server, &path_id("/api/devices/Maple Street:20")).await;
    assert_eq!(status, 404);
    // The thermostat's own and remote sensors; never a light.
    let (_, body) = get(&server, &path_id("/api/devices/Maple Street:9")).await;
    let thermostat: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(thermostat["kind"], "thermostat");
    assert_eq!(thermostat["capabilities"], serde_json::json!([]));
    assert_eq!(thermostat["sensors"][0]["kind"], "internal");
    assert_eq!(thermostat["sensors"][0]["temperature"], 71.6);
    assert_eq!(thermostat["sensors"][1]["battery_volts"], 2.87);
    let (status, body) = post(
        &server,
        &path_id("/api/devices/Maple Street:9/state"),
        r#"{"on": true}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("takes no command"), "{body}");
    // Every bridge is in the home its mesh matched.
    let (_, body) = get(&server, "/api/connections").await;
    let conns: Vec<Value> = serde_json::from_str(&body).unwrap();
    let home_of = |id: &str| {
        conns
            .iter()
            .find(|c| c["conn_id"] == id)
            .map(|c| c["home"].as_str().unwrap().to_string())
    };
    assert_eq!(home_of("7a000001").as_deref(), Some("Maple Street"));
    assert_eq!(home_of("7a000009").as_deref(), Some("Maple Street"));
    assert_eq!(home_of("7b000001").as_deref(), Some("Lake Cabin"));
    assert_eq!(home_of("7c000002").as_deref(), Some("Grandma's House"));

    // One outlet of the dual plug, through the API: only that outlet changes.
    let plug = path_id("/api/devices/Maple Street:6/state");
    let (status, body) = post(&server, &plug, r#"{"outlet": 2, "on": true}"#).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["outcome"], "applied", "{answer}");
    let truth = fleet.device("Maple Street", 6).unwrap();
    assert_eq!(truth.brightness, 0b10, "right outlet only");
    assert_eq!(truth.applied_commands.last().unwrap().value, "2=true");
    until(&server, || {
        server
            .ctx
            .registry
            .device(&server.ctx.homes.get(), "Maple Street:6")
            .is_ok_and(|d| {
                d.outlets
                    .is_some_and(|o| !o[0].on && o[1].on && o[1].name == "Right outlet")
            })
    })
    .await;
    let (status, body) = post(&server, &plug, r#"{"outlet": 3, "on": true}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&server, &plug, r#"{"outlet": 1, "brightness": 5}"#).await;
    assert_eq!(status, 400, "{body}");

    let (status, _, mut stream) = events(&server).await;
    assert_eq!(status, 200);
    let snapshot = stream.expect("snapshot").await;
    let page_rooms: Vec<String> = snapshot["meta"]["homes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["groups"].as_array().unwrap().clone())
        .filter(|g| g["room"] == true)
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(page_rooms.len(), 8, "{page_rooms:?}");

    if let Some(broker) = &broker {
        home_assistant(broker, &want, &fleet).await;
    } else {
        eprintln!("SKIPPED (Home Assistant part): mosquitto is not installed");
    }
    fleet.stop().await;
    server.shutdown().await;
}

/// Every visible device is the right Home Assistant entity, in its room's area, named and
/// modelled as in the account; the hidden one has none.
async fn home_assistant(broker: &Mosquitto, want: &Expected, fleet: &Fleet) {
    let mut ha = Ha::connect(broker.port).await;
    let topic =
        |component: &str, object: &str| format!("homeassistant/{component}/cyncd/{object}/config");
    let slug = |home: &str| cyncd::frontends::mqtt::ha::slug(home);
    let expected: Vec<(String, String, String)> = want
        .iter()
        .flat_map(|((home, id), (name, _, code, _))| {
            let t = DeviceType::of(Some(*code));
            let object = format!("{}_{id}", slug(home));
            let list: Vec<(String, String)> = match t.kind {
                Kind::Plug if t.outlets > 1 => (1..=t.outlets)
                    .map(|n| ("switch".to_string(), format!("{object}_outlet{n}")))
                    .collect(),
                Kind::Plug | Kind::Switch => vec![("switch".into(), object)],
                Kind::Fan => vec![("fan".into(), object)],
                Kind::Light => vec![("light".into(), object)],
                Kind::Thermostat => vec![
                    ("sensor".into(), format!("{object}_temperature")),
                    ("sensor".into(), format!("{object}_humidity")),
                ],
                Kind::Sensor | Kind::Remote | Kind::Camera => {
                    vec![("binary_sensor".into(), object)]
                }
            };
            list.into_iter()
                .map(move |(c, o)| (c, o, format!("{home}:{id} {name}")))
        })
        .collect();
    ha.until("every entity of the imported homes", |s| {
        expected.iter().all(|(c, o, _)| s.json(&topic(c, o)).is_some())
            && s
                .json("cync/maple_street_9/state")
                .is_some_and(|v| v["temperature"] == 71.6)
            // The right outlet, switched on through the API before.
            && s
                .json("cync/maple_street_6_outlet2/state")
                .is_some_and(|v| v["state"] == "ON")
    })
    .await;
    let seen = ha.seen();
    for ((home, id), (name, room, code, _)) in want {
        let t = DeviceType::of(Some(*code));
        let object = format!("{}_{id}", slug(home));
        let entities: Vec<&(String, String, String)> = expected
            .iter()
            .filter(|(_, o, _)| *o == object || o.starts_with(&format!("{object}_")))
            .collect();
        assert!(!entities.is_empty(), "{home}:{id}");
        for (component, o, what) in entities {
            let config = seen.json(&topic(component, o)).unwrap();
            assert_eq!(config["device"]["name"], name.as_str(), "{what}");
            assert_eq!(config["device"]["model"], t.product, "{what}");
            assert_eq!(
                config["device"]["suggested_area"].as_str(),
                room.as_deref(),
                "{what}"
            );
            // Nothing that takes no command is offered one.
            assert_eq!(
                config.get("command_topic").is_some(),
                t.kind.controllable(),
                "{what}: {config}"
            );
        }
        // No device of the imported homes is the plain on/off light of an unknown type.
        assert!(t.is_known(), "{home}:{id}");
    }
    // The outlets are named after the plug's left and right.
    let outlet = seen
        .json(&topic("switch", "maple_street_6_outlet1"))
        .unwrap();
    assert_eq!(outlet["name"], "Left outlet");
    assert!(
        seen.json(&topic("switch", "maple_street_20")).is_none(),
        "the hidden device has no entity"
    );
    assert_eq!(
        seen.json("cync/maple_street_6_outlet1/state").unwrap()["state"],
        "OFF"
    );
    // Home Assistant switches the left outlet: the plug's mask gets that bit, the right one
    // stays on.
    ha.publish("cync/maple_street_6_outlet1/set", "ON").await;
    ha.until("the left outlet on", |s| {
        s.json("cync/maple_street_6_outlet1/state")
            .is_some_and(|v| v["state"] == "ON")
    })
    .await;
    assert_eq!(fleet.device("Maple Street", 6).unwrap().brightness, 0b11);
}
