//! The contract with Home Assistant, against a real Mosquitto and the simulated devices: every
//! retained discovery and state payload is checked against Home Assistant's documented MQTT
//! schemas (light with the JSON schema, switch, fan, binary sensor, sensor: keys, types,
//! allowed values, and each state against its own discovery), some exactly; and what happens
//! when entities change shape, when cyncd restarts with another configuration, and when a
//! group's bridges come and go.
//!
//! Without the `mosquitto` binary the tests say so and skip — except under CI (`CI` set),
//! where they fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::broker::*;
use common::*;
use cync_sim::fleet::{BridgeLayout, HomeLayout};
use cync_sim::{Fleet, FleetConfig};
use cyncd::config::{DeviceConfig, GroupConfig, Home};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

// ---------------------------------------------------------------- the home under test

const BRIDGE: u32 = 0x6700_0001;
const HOME: &str = "lab";
/// (mesh id, type code, name): the bridge is plug 1 (Indoor Smart Plug); a colour bulb, a
/// tunable white bulb, a fan controller, a wall switch and a dimmer.
const DEVICES: [(u16, u8, &str); 6] = [
    (1, 68, "Plug 1"),
    (2, 30, "Colour 2"),
    (3, 5, "White 3"),
    (4, 81, "Fan 4"),
    (5, 51, "Switch 5"),
    (6, 55, "Dimmer 6"),
];
const GROUP: u16 = 32769;
const PAGE: &str = "http://cyncd.test:8080/";

fn layout() -> Vec<HomeLayout> {
    vec![HomeLayout {
        name: HOME.into(),
        devices: DEVICES.iter().map(|(id, code, _)| (*id, *code)).collect(),
        bridges: vec![BridgeLayout {
            id: BRIDGE,
            own: 1,
            reach: DEVICES.iter().map(|d| d.0).filter(|id| *id != 1).collect(),
        }],
    }]
}

fn fleet(server: &cyncd::serve::Running) -> Fleet {
    Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        layout: Some(layout()),
        seed: 15,
        heartbeat: Duration::from_secs(10),
        firmware_delay: Duration::from_millis(20),
        ..FleetConfig::default()
    })
    .unwrap()
}

/// The home as the configuration names it; `typed` = false leaves the types to the bridges.
fn home(typed: bool) -> Home {
    Home {
        name: HOME.into(),
        bridges: vec![format!("{BRIDGE:08x}")],
        devices: DEVICES
            .iter()
            .map(|(id, code, name)| DeviceConfig {
                id: *id,
                name: Some((*name).into()),
                kind: typed.then_some(*code),
                room: None,
                enabled: None,
            })
            .collect(),
        groups: vec![GroupConfig {
            id: GROUP,
            name: "Whole lab".into(),
            members: DEVICES.iter().map(|d| d.0).collect(),
            room: Some(false),
        }],
    }
}

fn lab_config(name: &str, broker: &Mosquitto, homes: Vec<Home>) -> cyncd::config::Config {
    let mut config = config(name);
    config.mqtt.url = Some(broker.url());
    config.mqtt.page_url = Some(PAGE.into());
    config.homes = homes;
    config
}

async fn all_reachable(server: &cyncd::serve::Running, home: &str, n: usize) {
    until(server, || {
        let devices = server.ctx.registry.devices(&server.ctx.homes.get());
        devices
            .iter()
            .filter(|d| d.home == home && d.reachable && d.last_seen.is_some())
            .count()
            == n
    })
    .await;
}

fn discovery(seen: &Seen) -> BTreeMap<String, Value> {
    seen.latest
        .keys()
        .filter(|t| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .map(|t| (t.clone(), seen.json(t).unwrap_or(Value::Null)))
        .collect()
}

// ---------------------------------------------------------------- Home Assistant's schemas

/// Keys every MQTT entity accepts (`MQTT_ENTITY_COMMON_SCHEMA`, availability, JSON attributes,
/// read/write topics).
const COMMON_KEYS: &[&str] = &[
    "name",
    "unique_id",
    "object_id",
    "default_entity_id",
    "device",
    "origin",
    "availability",
    "availability_mode",
    "availability_topic",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "enabled_by_default",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "qos",
    "retain",
    "encoding",
    "state_topic",
    "command_topic",
    "optimistic",
];

/// The JSON-schema light's own keys (`schema_json.py`).
const LIGHT_KEYS: &[&str] = &[
    "schema",
    "brightness",
    "brightness_scale",
    "color_temp_kelvin",
    "effect",
    "effect_list",
    "flash",
    "flash_time_long",
    "flash_time_short",
    "max_kelvin",
    "min_kelvin",
    "max_mireds",
    "min_mireds",
    "supported_color_modes",
    "transition",
    "white_scale",
];

const SWITCH_KEYS: &[&str] = &[
    "device_class",
    "payload_on",
    "payload_off",
    "state_on",
    "state_off",
    "value_template",
    "command_template",
];

const FAN_KEYS: &[&str] = &[
    "command_template",
    "payload_on",
    "payload_off",
    "state_value_template",
    "percentage_command_topic",
    "percentage_command_template",
    "percentage_state_topic",
    "percentage_value_template",
    "speed_range_min",
    "speed_range_max",
    "payload_reset_percentage",
    "preset_mode_command_topic",
    "preset_mode_command_template",
    "preset_mode_state_topic",
    "preset_mode_value_template",
    "preset_modes",
    "payload_reset_preset_mode",
];

const BINARY_SENSOR_KEYS: &[&str] = &[
    "device_class",
    "value_template",
    "payload_on",
    "payload_off",
    "expire_after",
    "force_update",
    "off_delay",
];

const SENSOR_KEYS: &[&str] = &[
    "device_class",
    "state_class",
    "unit_of_measurement",
    "value_template",
    "suggested_display_precision",
    "expire_after",
    "force_update",
];

const DEVICE_KEYS: &[&str] = &[
    "identifiers",
    "connections",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "hw_version",
    "serial_number",
    "sw_version",
    "via_device",
    "suggested_area",
    "configuration_url",
];

/// Light color modes Home Assistant knows (`VALID_COLOR_MODES`).
const COLOR_MODES: &[&str] = &[
    "onoff",
    "brightness",
    "color_temp",
    "hs",
    "xy",
    "rgb",
    "rgbw",
    "rgbww",
    "white",
];

type Check = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(what()) }
}

fn is_str(v: &Value, key: &str) -> Check {
    ensure(v.get(key).is_some_and(Value::is_string), || {
        format!("{key} must be a string: {v}")
    })
}

fn opt<F: Fn(&Value) -> bool>(v: &Value, key: &str, ok: F, what: &str) -> Check {
    match v.get(key) {
        None => Ok(()),
        Some(x) => ensure(ok(x), || format!("{key} must be {what}, got {x}")),
    }
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#'])
}

/// A template that reads one key of the JSON state: `{{ value_json.KEY }}`, maybe with a
/// `| default(…)` filter. Returns the key.
fn template_key(template: &str) -> Option<&str> {
    let inner = template.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let path = inner.split('|').next()?.trim();
    path.strip_prefix("value_json.")
        .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn check_device(d: &Value) -> Check {
    let map = d.as_object().ok_or("device must be an object")?;
    for k in map.keys() {
        ensure(DEVICE_KEYS.contains(&k.as_str()), || {
            format!("device key {k} is not in the schema")
        })?;
    }
    let ids = d["identifiers"].as_array().map_or(0, Vec::len);
    let conns = d["connections"].as_array().map_or(0, Vec::len);
    ensure(ids + conns > 0, || {
        "a device needs an identifier or a connection".into()
    })?;
    for k in [
        "manufacturer",
        "model",
        "model_id",
        "name",
        "hw_version",
        "serial_number",
        "sw_version",
        "via_device",
        "suggested_area",
    ] {
        opt(d, k, Value::is_string, "a string")?;
    }
    opt(
        d,
        "identifiers",
        |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "a list of strings",
    )?;
    opt(
        d,
        "connections",
        |v| {
            v.as_array().is_some_and(|a| {
                a.iter().all(|c| {
                    c.as_array()
                        .is_some_and(|p| p.len() == 2 && p.iter().all(Value::is_string))
                })
            })
        },
        "a list of [type, id] pairs",
    )?;
    opt(
        d,
        "configuration_url",
        |v| {
            v.as_str().is_some_and(|u| {
                ["http://", "https://", "homeassistant://"]
                    .iter()
                    .any(|s| u.strip_prefix(s).is_some_and(|r| !r.is_empty()))
            })
        },
        "an http(s):// or homeassistant:// URL",
    )
}

/// The keys, types and values a discovery payload of `component` may have.
fn check_discovery(component: &str, c: &Value) -> Check {
    let map = c.as_object().ok_or("discovery must be an object")?;
    let own: &[&str] = match component {
        "light" => LIGHT_KEYS,
        "switch" => SWITCH_KEYS,
        "fan" => FAN_KEYS,
        "binary_sensor" => BINARY_SENSOR_KEYS,
        "sensor" => SENSOR_KEYS,
        other => return Err(format!("unexpected component {other}")),
    };
    for k in map.keys() {
        ensure(
            COMMON_KEYS.contains(&k.as_str()) || own.contains(&k.as_str()),
            || {
                format!(
                    "{component}: key {k} is not in Home Assistant's schema (it would be dropped)"
                )
            },
        )?;
    }
    is_str(c, "unique_id")?;
    opt(
        c,
        "name",
        |v| v.is_string() || v.is_null(),
        "a string or null",
    )?;
    check_device(&c["device"])?;
    opt(
        c,
        "origin",
        |v| v.get("name").is_some_and(Value::is_string),
        "an object with a name",
    )?;
    opt(
        c,
        "availability",
        |v| {
            v.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|e| {
                        e.get("topic")
                            .and_then(Value::as_str)
                            .is_some_and(valid_topic)
                    })
            })
        },
        "a list of {topic}",
    )?;
    opt(
        c,
        "availability_mode",
        |v| ["all", "any", "latest"].contains(&v.as_str().unwrap_or_default()),
        "all, any or latest",
    )?;
    opt(
        c,
        "entity_category",
        |v| ["config", "diagnostic"].contains(&v.as_str().unwrap_or_default()),
        "config or diagnostic",
    )?;
    for k in [
        "state_topic",
        "command_topic",
        "json_attributes_topic",
        "percentage_command_topic",
        "percentage_state_topic",
        "preset_mode_command_topic",
        "preset_mode_state_topic",
    ] {
        opt(
            c,
            k,
            |v| v.as_str().is_some_and(valid_topic),
            "a topic without wildcards",
        )?;
    }
    is_str(c, "state_topic")?;
    match component {
        "light" => {
            ensure(c["schema"] == "json", || "light schema must be json".into())?;
            is_str(c, "command_topic")?;
            let modes = c["supported_color_modes"]
                .as_array()
                .ok_or("supported_color_modes must be a list")?;
            let modes: Vec<&str> = modes.iter().filter_map(Value::as_str).collect();
            ensure(!modes.is_empty(), || "no color mode".into())?;
            for m in &modes {
                ensure(COLOR_MODES.contains(m), || {
                    format!("unknown color mode {m}")
                })?;
            }
            // `valid_supported_color_modes`: onoff and brightness only alone.
            ensure(
                modes.len() == 1 || !modes.iter().any(|m| ["onoff", "brightness"].contains(m)),
                || format!("onoff/brightness must be alone: {modes:?}"),
            )?;
            for k in [
                "brightness",
                "color_temp_kelvin",
                "effect",
                "flash",
                "transition",
            ] {
                opt(c, k, Value::is_boolean, "a boolean")?;
            }
            for k in [
                "brightness_scale",
                "min_kelvin",
                "max_kelvin",
                "flash_time_long",
                "flash_time_short",
            ] {
                opt(
                    c,
                    k,
                    |v| v.as_u64().is_some_and(|n| n >= 1),
                    "a positive integer",
                )?;
            }
            opt(
                c,
                "effect_list",
                |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                "a list of strings",
            )?;
            if c["effect"] == true {
                ensure(c.get("effect_list").is_some(), || {
                    "effect without effect_list".into()
                })?;
            }
            if modes.contains(&"color_temp") {
                let (lo, hi) = (c["min_kelvin"].as_u64(), c["max_kelvin"].as_u64());
                ensure(lo.zip(hi).is_some_and(|(l, h)| l <= h), || {
                    format!("kelvin range {lo:?}..{hi:?}")
                })?;
            }
        }
        "switch" => {
            is_str(c, "command_topic")?;
            opt(
                c,
                "device_class",
                |v| ["outlet", "switch"].contains(&v.as_str().unwrap_or_default()),
                "outlet or switch",
            )?;
            let key = c["value_template"].as_str().and_then(template_key);
            ensure(key.is_some(), || {
                format!("value_template {}", c["value_template"])
            })?;
        }
        "fan" => {
            is_str(c, "command_topic")?;
            let (lo, hi) = (c["speed_range_min"].as_u64(), c["speed_range_max"].as_u64());
            ensure(lo.zip(hi).is_some_and(|(l, h)| l >= 1 && h > l), || {
                format!("speed range {lo:?}..{hi:?}")
            })?;
            // Presets only with their command topic, and then a list of names.
            ensure(
                c.get("preset_modes").is_none() == c.get("preset_mode_command_topic").is_none(),
                || "preset_modes and preset_mode_command_topic go together".into(),
            )?;
        }
        "binary_sensor" | "sensor" => {
            let key = c["value_template"].as_str().and_then(template_key);
            ensure(key.is_some(), || {
                format!("value_template {}", c["value_template"])
            })?;
        }
        _ => {}
    }
    Ok(())
}

/// A state payload against its discovery: what Home Assistant's entity reads from it must be
/// there, of the right type, and consistent.
fn check_state(component: &str, c: &Value, s: &Value) -> Check {
    let map = s
        .as_object()
        .ok_or_else(|| format!("state must be a JSON object: {s}"))?;
    match component {
        "light" => {
            let on = match s["state"].as_str() {
                Some("ON") => true,
                Some("OFF") => false,
                _ => return Err(format!("state must be ON or OFF: {s}")),
            };
            let modes: Vec<&str> = c["supported_color_modes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let scale = c["brightness_scale"].as_u64().unwrap_or(255);
            for k in map.keys() {
                ensure(
                    [
                        "state",
                        "brightness",
                        "color_mode",
                        "color_temp",
                        "color",
                        "effect",
                    ]
                    .contains(&k.as_str()),
                    || format!("unexpected state key {k}: {s}"),
                )?;
            }
            if let Some(mode) = s.get("color_mode") {
                let mode = mode.as_str().ok_or("color_mode must be a string")?;
                ensure(modes.contains(&mode), || {
                    format!("color_mode {mode} not in {modes:?}")
                })?;
                match mode {
                    "color_temp" => {
                        let k = s["color_temp"].as_u64().ok_or_else(|| {
                            format!("color_mode color_temp without color_temp: {s}")
                        })?;
                        let (lo, hi) = (
                            c["min_kelvin"].as_u64().unwrap(),
                            c["max_kelvin"].as_u64().unwrap(),
                        );
                        ensure(c["color_temp_kelvin"] == true, || {
                            "kelvin values need color_temp_kelvin".into()
                        })?;
                        ensure((lo..=hi).contains(&k), || {
                            format!("color_temp {k} outside {lo}..{hi}")
                        })?;
                    }
                    "rgb" => {
                        for ch in ["r", "g", "b"] {
                            ensure(s["color"][ch].as_u64().is_some_and(|v| v <= 255), || {
                                format!("color_mode rgb without color.{ch}: {s}")
                            })?;
                        }
                    }
                    _ => {}
                }
            }
            if on {
                let dims = !modes.contains(&"onoff");
                if dims {
                    ensure(s["brightness"].as_u64().is_some_and(|b| b <= scale), || {
                        format!("an ON light that dims needs its brightness: {s}")
                    })?;
                }
                if modes.len() == 1 && ["onoff", "brightness"].contains(&modes[0]) {
                    ensure(s["color_mode"] == modes[0], || {
                        format!("a {} light's color_mode: {s}", modes[0])
                    })?;
                }
                if c["effect"] == true {
                    let list = c["effect_list"].as_array().unwrap();
                    ensure(
                        s.get("effect")
                            .is_some_and(|e| e.is_null() || list.contains(e)),
                        || format!("an ON effect light states its effect (or null): {s}"),
                    )?;
                    // With an effect running there is no single colour; without one, a light
                    // that has colour modes says which (a group only when its members agree).
                    let group = c["unique_id"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("_group_");
                    if s["effect"].is_null() && modes.len() > 1 && !group {
                        ensure(s.get("color_mode").is_some(), || {
                            format!("no color_mode without an effect: {s}")
                        })?;
                    }
                } else {
                    ensure(s.get("effect").is_none(), || {
                        format!("effect on a light without effects: {s}")
                    })?;
                }
            } else {
                ensure(map.len() == 1, || {
                    format!("an OFF light says only OFF: {s}")
                })?;
            }
        }
        "switch" => {
            let key = template_key(c["value_template"].as_str().unwrap()).unwrap();
            let v = &s[key];
            ensure(*v == c["state_on"] || *v == c["state_off"], || {
                format!("switch state {v} is neither state_on nor state_off")
            })?;
        }
        "fan" => {
            let key = template_key(c["state_value_template"].as_str().unwrap()).unwrap();
            ensure(
                s[key] == c["payload_on"] || s[key] == c["payload_off"],
                || format!("fan state {s}"),
            )?;
            let key = template_key(c["percentage_value_template"].as_str().unwrap()).unwrap();
            let max = c["speed_range_max"].as_u64().unwrap();
            ensure(
                s[key].is_null() || s[key].as_u64().is_some_and(|v| v <= max),
                || format!("fan speed {} outside 0..={max}", s[key]),
            )?;
            if c.get("preset_modes").is_none() {
                ensure(s.get("preset_mode").is_none(), || {
                    format!("a preset in the state of a fan without presets: {s}")
                })?;
            }
        }
        "binary_sensor" => {
            let key = template_key(c["value_template"].as_str().unwrap()).unwrap();
            ensure(
                s[key] == c["payload_on"] || s[key] == c["payload_off"],
                || format!("binary sensor state {s}"),
            )?;
        }
        "sensor" => {
            let key = template_key(c["value_template"].as_str().unwrap()).unwrap();
            // A measurement is a number (or unknown); a text sensor any scalar.
            let numeric = c.get("device_class").is_some() || c.get("state_class").is_some();
            ensure(
                s[key].is_number()
                    || s[key].is_null()
                    || (!numeric && !s[key].is_object() && !s[key].is_array()),
                || format!("sensor value {s}"),
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks everything retained: every discovery payload, every state against its discovery,
/// availability values, and that each unique id is under exactly one discovery topic.
fn check_retained(seen: &Seen) -> Check {
    let mut by_unique: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (topic, c) in discovery(seen) {
        let component = topic.split('/').nth(1).unwrap_or_default().to_string();
        check_discovery(&component, &c).map_err(|e| format!("{topic}: {e}"))?;
        by_unique
            .entry(c["unique_id"].as_str().unwrap().to_string())
            .or_default()
            .push(topic.clone());
        let state_topic = c["state_topic"].as_str().unwrap();
        let state = seen
            .json(state_topic)
            .ok_or_else(|| format!("{topic}: no retained state on {state_topic}"))?;
        check_state(&component, &c, &state).map_err(|e| format!("{topic}: {e}"))?;
        for a in c["availability"].as_array().into_iter().flatten() {
            let t = a["topic"].as_str().unwrap();
            let v = seen.text(t);
            ensure(matches!(v.as_deref(), Some("online" | "offline")), || {
                format!("{topic}: availability {t} is {v:?}")
            })?;
        }
        if let Some(t) = c["json_attributes_topic"].as_str() {
            ensure(seen.json(t).is_some_and(|a| a.is_object()), || {
                format!("{topic}: no attributes on {t}")
            })?;
        }
    }
    for (unique, topics) in by_unique {
        ensure(topics.len() == 1, || {
            format!("{unique} is retained under {topics:?}")
        })?;
    }
    Ok(())
}

/// The schema checker refuses what Home Assistant would refuse or misread.
#[test]
fn the_schema_checker_can_fail() {
    let light = json!({
        "unique_id": "u", "device": {"identifiers": ["d"]}, "schema": "json",
        "state_topic": "s", "command_topic": "c",
        "supported_color_modes": ["color_temp", "rgb"], "brightness_scale": 100,
        "color_temp_kelvin": true, "min_kelvin": 2000, "max_kelvin": 7000,
        "effect": true, "effect_list": ["rainbow"], "flash": false, "transition": false,
    });
    check_discovery("light", &light).unwrap();
    let mut typo = light.clone();
    typo["flash_enabled"] = json!(false);
    assert!(check_discovery("light", &typo).is_err());
    let mut mixed = light.clone();
    mixed["supported_color_modes"] = json!(["brightness", "rgb"]);
    assert!(check_discovery("light", &mixed).is_err());
    let mut url = light.clone();
    url["device"]["configuration_url"] = json!("cyncd.lan:8080");
    assert!(check_discovery("light", &url).is_err());
    let good = json!({"state": "ON", "brightness": 50, "color_mode": "rgb", "color": {"r": 1, "g": 2, "b": 3}, "effect": null});
    check_state("light", &light, &good).unwrap();
    for bad in [
        json!({"state": "ON", "brightness": 50, "color_mode": "color_temp", "effect": null}),
        json!({"state": "ON", "brightness": 50, "color_mode": "rgb", "effect": null}),
        json!({"state": "ON", "color_mode": "color_temp", "color_temp": 3000, "effect": null}),
        json!({"state": "ON", "brightness": 50, "color_mode": "color_temp", "color_temp": 3000}),
        json!({"state": "ON", "brightness": 50, "effect": "disco"}),
        json!({"state": "ON", "brightness": 50, "effect": null}),
        json!({"state": "ON", "brightness": 50, "color_mode": "color_temp", "color_temp": 9000, "effect": null}),
    ] {
        assert!(check_state("light", &light, &bad).is_err(), "{bad}");
    }
    let fan = json!({
        "unique_id": "f", "device": {"identifiers": ["d"]}, "state_topic": "s",
        "command_topic": "c", "speed_range_min": 1, "speed_range_max": 4,
        "preset_modes": ["low"],
    });
    assert!(
        check_discovery("fan", &fan).is_err(),
        "presets without a command topic"
    );
}

// ---------------------------------------------------------------- the tests

/// Every retained payload meets Home Assistant's schemas; the exact payloads of a colour
/// light, a plug, a fan and a bridge; and the states after white, colour and an effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_states_meet_home_assistants_schemas() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let server = start(lab_config("ha-contract", &broker, vec![home(true)])).await;
    let fleet = fleet(&server);
    all_reachable(&server, HOME, DEVICES.len()).await;
    let mut ha = Ha::connect(broker.port).await;
    let colour = "cync/lab_2/state";
    ha.until(
        "every entity, the bridge on its own device, attributes",
        |s| {
            discovery(s).len() == DEVICES.len() + 1 + 2
                && s.json("homeassistant/binary_sensor/cyncd/bridge_67000001_connected/config")
                    .is_some_and(|c| c["device"]["identifiers"] == json!(["cyncd_lab_1"]))
                && s.json("cync/lab_2/attributes")
                    .is_some_and(|a| a["reachable"] == true)
                && s.json("homeassistant/switch/cyncd/lab_1/config")
                    .is_some_and(|c| c["device"]["sw_version"].is_string())
                && s.json(colour).is_some()
        },
    )
    .await;
    let seen = ha.seen();
    if let Err(e) = check_retained(&seen) {
        panic!("{e}");
    }

    // Exact payloads. Firmware comes from the simulated bridge: checked, then left out.
    let version = env!("CARGO_PKG_VERSION");
    let mut light = seen.json("homeassistant/light/cyncd/lab_2/config").unwrap();
    light["device"]
        .as_object_mut()
        .unwrap()
        .remove("sw_version");
    assert_eq!(
        light,
        json!({
            "name": null,
            "unique_id": "cyncd_lab_2",
            "device": {
                "identifiers": ["cyncd_lab_2"],
                "name": "Colour 2",
                "manufacturer": "GE Cync",
                "model": cync_proto::catalog::DeviceType::of(Some(30)).product,
                "model_id": "30",
                "configuration_url": "http://cyncd.test:8080/#device=lab:2",
                "via_device": "cyncd_lab_1",
            },
            "origin": {"name": "cyncd", "sw_version": version},
            "availability": [
                {"topic": "cync/bridge/availability"},
                {"topic": "cync/lab_2/availability"},
            ],
            "availability_mode": "all",
            "state_topic": "cync/lab_2/state",
            "command_topic": "cync/lab_2/set",
            "json_attributes_topic": "cync/lab_2/attributes",
            "schema": "json",
            "supported_color_modes": ["color_temp", "rgb"],
            "brightness": true,
            "brightness_scale": 100,
            "color_temp_kelvin": true,
            "min_kelvin": 2000,
            "max_kelvin": 7000,
            "effect": true,
            "effect_list": ["candle", "cyber", "rainbow", "fireworks", "volcanic", "aurora",
                "happy_holidays", "red_white_blue", "vegas", "party_time"],
            "flash": false,
            "transition": false,
        })
    );
    let plug = seen
        .json("homeassistant/switch/cyncd/lab_1/config")
        .unwrap();
    assert_eq!(plug["device_class"], "outlet", "{plug}");
    assert!(
        plug["device"]["sw_version"].is_string(),
        "the bridge's firmware: {plug}"
    );
    assert_eq!(plug["device"]["model_id"], "68");
    assert!(
        plug["device"].get("via_device").is_none(),
        "a bridge is not via itself"
    );
    let switch = seen
        .json("homeassistant/switch/cyncd/lab_5/config")
        .unwrap();
    assert_eq!(switch["device_class"], "switch", "{switch}");
    let mut fan = seen.json("homeassistant/fan/cyncd/lab_4/config").unwrap();
    for k in [
        "device",
        "origin",
        "availability",
        "availability_mode",
        "name",
    ] {
        fan.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(
        fan,
        json!({
            "unique_id": "cyncd_lab_4",
            "state_topic": "cync/lab_4/state",
            "command_topic": "cync/lab_4/set",
            "json_attributes_topic": "cync/lab_4/attributes",
            "payload_on": "ON",
            "payload_off": "OFF",
            "command_template": "{\"state\": \"{{ value }}\"}",
            "state_value_template": "{{ value_json.state }}",
            "percentage_command_topic": "cync/lab_4/set",
            "percentage_command_template": "{\"speed\": {{ value }}}",
            "percentage_state_topic": "cync/lab_4/state",
            "percentage_value_template": "{{ value_json.speed }}",
            "speed_range_min": 1,
            "speed_range_max": 4,
        })
    );
    // The bridge's diagnostics are on its own mesh device: no second device for it.
    for (topic, c) in discovery(&seen) {
        assert!(
            !c["device"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Cync bridge"),
            "{topic}: {c}"
        );
    }
    let bridge = seen
        .json("homeassistant/sensor/cyncd/bridge_67000001_firmware/config")
        .unwrap();
    assert_eq!(
        bridge["device"],
        seen.json("homeassistant/switch/cyncd/lab_1/config")
            .unwrap()["device"]
    );

    // White, colour and an effect, each through Home Assistant's command topic: the state
    // always carries a colour mode with its value, or (with an effect) none and the effect.
    let truth = || fleet.device(HOME, 2).unwrap();
    let registry = |f: &dyn Fn(&cyncd::devices::registry::DeviceView) -> bool| {
        server
            .ctx
            .registry
            .devices(&server.ctx.homes.get())
            .iter()
            .any(|d| d.home == HOME && d.mesh_id == 2 && f(d))
    };
    type Agrees = fn(&cyncd::devices::registry::DeviceView) -> bool;
    let steps: [(&str, Value, Agrees); 4] = [
        (
            r#"{"state":"ON","brightness":60,"color_temp":3000}"#,
            json!({"state": "ON", "brightness": 60, "color_mode": "color_temp", "color_temp": 3000, "effect": null}),
            |d| d.on && d.brightness == Some(60) && d.color_temp == Some(20),
        ),
        (
            r#"{"state":"ON","color":{"r":10,"g":20,"b":30}}"#,
            json!({"state": "ON", "brightness": 60, "color_mode": "rgb", "color": {"r": 10, "g": 20, "b": 30}, "effect": null}),
            |d| d.rgb == Some([10, 20, 30]),
        ),
        (
            r#"{"state":"ON","effect":"rainbow"}"#,
            json!({"state": "ON", "brightness": 60, "effect": "rainbow"}),
            |d| d.effect == Some("rainbow"),
        ),
        (
            r#"{"state":"ON","color_temp":7000}"#,
            json!({"state": "ON", "brightness": 60, "color_mode": "color_temp", "color_temp": 7000, "effect": null}),
            |d| d.color_temp == Some(100) && d.effect.is_none(),
        ),
    ];
    for (command, want, agrees) in steps {
        ha.publish("cync/lab_2/set", command).await;
        ha.until(&format!("{command} → {want}"), |s| {
            s.json(colour).as_ref() == Some(&want)
        })
        .await;
        // The device's own report agrees, and the state says the same from it (not only from
        // the command's outcome).
        until(&server, || registry(&|d| agrees(d))).await;
        let count = ha.seen().count(colour);
        ha.publish("homeassistant/status", "online").await;
        ha.until("the states again after a birth", |s| {
            s.count(colour) > count
        })
        .await;
        assert_eq!(ha.seen().json(colour), Some(want.clone()), "{command}");
        if let Err(e) = check_retained(&ha.seen()) {
            panic!("after {command}: {e}");
        }
    }
    assert_eq!(truth().effect, None);
    assert_eq!(truth().color_temp, Some(100));
    let attributes = ha.seen().json("cync/lab_2/attributes").unwrap();
    assert_eq!(
        attributes["last_command"]["outcome"], "applied",
        "{attributes}"
    );
    assert_eq!(
        attributes["last_command"]["attributes"],
        json!(["color_temp"])
    );
    assert_eq!(attributes["bridges"], json!(["67000001"]));

    // A fan by percentage: HA's 50 % is speed 2.
    ha.publish("cync/lab_4/set", r#"{"percentage":50}"#).await;
    ha.until("the fan at speed 2", |s| {
        s.json("cync/lab_4/state") == Some(json!({"state": "ON", "speed": 2}))
    })
    .await;
    assert_eq!(fleet.device(HOME, 4).unwrap().brightness, 50);
    fleet.stop().await;
    server.shutdown().await;
}

/// After an effect the state names it and carries no colour mode without its value, as the
/// device's own report keeps saying; a colour afterwards ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_is_stated_and_no_colour_mode_goes_without_its_value() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let server = start(lab_config("ha-effect", &broker, vec![home(true)])).await;
    let fleet = fleet(&server);
    all_reachable(&server, HOME, DEVICES.len()).await;
    let mut ha = Ha::connect(broker.port).await;
    let light = "homeassistant/light/cyncd/lab_2/config";
    let state = "cync/lab_2/state";
    ha.until("the colour light", |s| {
        s.json(light).is_some() && s.json(state).is_some()
    })
    .await;
    let config = ha.seen().json(light).unwrap();
    ha.publish(
        "cync/lab_2/set",
        r#"{"state":"ON","brightness":50,"effect":"rainbow"}"#,
    )
    .await;
    ha.until("the effect in the state", |s| {
        s.json(state).is_some_and(|v| v["effect"] == "rainbow")
    })
    .await;
    assert_eq!(fleet.device(HOME, 2).unwrap().effect, Some("rainbow"));
    // Once the device's own report (temperature byte 129) is in, the state is built from it:
    // Home Assistant's birth makes cyncd publish it again.
    let count = ha.seen().count(state);
    ha.publish("homeassistant/status", "online").await;
    ha.until("the state again", |s| s.count(state) > count)
        .await;
    let shown = ha.seen().json(state).unwrap();
    assert_eq!(shown["effect"], "rainbow", "{shown}");
    assert_eq!(shown["brightness"], 50, "{shown}");
    if let Err(e) = check_state("light", &config, &shown) {
        panic!("{e}");
    }
    ha.publish("cync/lab_2/set", r#"{"color":{"r":255,"g":0,"b":0}}"#)
        .await;
    ha.until("the colour ends the effect", |s| {
        s.json(state).is_some_and(|v| {
            v == json!({"state": "ON", "brightness": 50, "color_mode": "rgb", "color": {"r": 255, "g": 0, "b": 0}, "effect": null})
        })
    })
    .await;
    fleet.stop().await;
    server.shutdown().await;
}

/// Light discovery says no flash and no transition, and a command asking for them anyway is
/// refused before anything is sent (nothing is offered that cyncd refuses, nothing refused
/// is reported done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_and_transition_are_not_offered_and_not_pretended() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let server = start(lab_config("ha-flash", &broker, vec![home(true)])).await;
    let fleet = fleet(&server);
    all_reachable(&server, HOME, DEVICES.len()).await;
    let mut ha = Ha::connect(broker.port).await;
    ha.until("the lights", |s| {
        ["lab_2", "lab_3", "lab_6", "lab_group_32769"]
            .iter()
            .all(|o| {
                s.latest
                    .contains_key(&format!("homeassistant/light/cyncd/{o}/config"))
            })
            && s.json("cync/lab_3/state").is_some()
    })
    .await;
    for (topic, c) in discovery(&ha.seen()) {
        if topic.starts_with("homeassistant/light/") {
            assert_eq!(
                (&c["flash"], &c["transition"]),
                (&json!(false), &json!(false)),
                "{topic}"
            );
        }
    }
    let before = fleet.device(HOME, 3).unwrap().applied_commands.len();
    let count = ha.seen().count("cync/lab_3/state");
    ha.publish(
        "cync/lab_3/set",
        r#"{"state":"ON","brightness":20,"transition":3}"#,
    )
    .await;
    ha.until("the true state re-published", |s| {
        s.count("cync/lab_3/state") > count
    })
    .await;
    assert_eq!(
        fleet.device(HOME, 3).unwrap().applied_commands.len(),
        before,
        "a 3 s transition was applied at once"
    );
    fleet.stop().await;
    server.shutdown().await;
}

/// A device whose type only its bridge tells is a placeholder light until then; when the
/// bridge reports a plug, the light's discovery is cleared before the switch is published,
/// and at no time are both retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_light_becomes_a_switch_without_a_second_entity() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let mut typed = home(true);
    typed.devices[0].kind = None;
    // A group of the plug alone: a light while its member's type is unknown, then a switch.
    typed.groups.push(GroupConfig {
        id: 2,
        name: "Plug group".into(),
        members: vec![1],
        room: Some(false),
    });
    let server = start(lab_config("ha-shape", &broker, vec![typed])).await;
    let light = "homeassistant/light/cyncd/lab_1/config";
    let switch = "homeassistant/switch/cyncd/lab_1/config";
    let group_light = "homeassistant/light/cyncd/lab_group_2/config";
    let group_switch = "homeassistant/switch/cyncd/lab_group_2/config";
    ha.until(
        "the placeholder light, every payload as Home Assistant reads it",
        |s| {
            s.latest.contains_key(light)
                && s.latest.contains_key(group_light)
                && check_retained(s).is_ok()
        },
    )
    .await;
    let fleet = fleet(&server);
    ha.until("the switches", |s| {
        s.latest.contains_key(switch) && s.latest.contains_key(group_switch)
    })
    .await;
    let seen = ha.seen();
    for (old, new) in [(light, switch), (group_light, group_switch)] {
        assert!(
            !seen.latest.contains_key(old),
            "{old} is still retained beside {new}"
        );
        let cleared = seen
            .order
            .iter()
            .position(|(t, empty)| t == old && *empty)
            .unwrap_or_else(|| panic!("{old} was never cleared"));
        let published = seen
            .order
            .iter()
            .position(|(t, empty)| t == new && !*empty)
            .unwrap();
        assert!(cleared < published, "{new} came before {old} went");
    }
    all_reachable(&server, HOME, DEVICES.len()).await;
    ha.until("every state", |s| check_retained(s).is_ok()).await;
    fleet.stop().await;
    let state_dir = server.ctx.config.state_dir.clone();
    server.shutdown().await;

    // Restarted with the same state directory, before the bridge says its type again: the
    // switch stays (no placeholder light replaces it).
    let mut again = lab_config("ha-shape-2", &broker, vec![home(true)]);
    again.homes[0].devices[0].kind = None;
    again.homes[0].groups.push(GroupConfig {
        id: 2,
        name: "Plug group".into(),
        members: vec![1],
        room: Some(false),
    });
    again.state_dir = state_dir;
    let seen = ha.seen();
    let counts = (
        seen.count(light),
        seen.count(group_light),
        seen.count("cync/lab_group_2/state"),
    );
    let second = start(again).await;
    // Everything is published again at a start, groups after devices, each discovery before
    // its state.
    ha.until("the group published again", |s| {
        s.count("cync/lab_group_2/state") > counts.2
    })
    .await;
    let seen = ha.seen();
    assert!(seen.latest.contains_key(switch) && seen.latest.contains_key(group_switch));
    assert_eq!(
        (seen.count(light), seen.count(group_light)),
        (counts.0, counts.1),
        "a placeholder light came back"
    );
    second.shutdown().await;
}

/// A restart with `[[homes]]` added: the `default_N` entities of the first run (devices the
/// bridge listed while no home was configured) are all cleared, and the home's are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_homes_added_clears_the_default_entities() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let first = start(lab_config("ha-homes", &broker, Vec::new())).await;
    let fleet_a = fleet(&first);
    all_reachable(&first, "default", DEVICES.len()).await;
    ha.until("the default entities", |s| {
        s.latest
            .contains_key("homeassistant/switch/cyncd/default_1/config")
            && (2..=6).all(|id| {
                s.text(&format!("cync/default_{id}/availability"))
                    .as_deref()
                    == Some("online")
            })
    })
    .await;
    fleet_a.stop().await;
    let state_dir = first.ctx.config.state_dir.clone();
    first.shutdown().await;

    let mut second_config = lab_config("ha-homes-2", &broker, vec![home(true)]);
    second_config.state_dir = state_dir;
    let second = start(second_config).await;
    let fleet_b = fleet(&second);
    all_reachable(&second, HOME, DEVICES.len()).await;
    let is_default = |t: &str| t.contains("/default_") || t.contains("cyncd/default_");
    ha.until("lab_N published", |s| {
        s.latest
            .contains_key("homeassistant/light/cyncd/lab_2/config")
    })
    .await;
    ha.until("every default_N topic cleared", |s| {
        !s.latest.keys().any(|t| is_default(t))
    })
    .await;
    ha.until("every state", |s| check_retained(s).is_ok()).await;
    fleet_b.stop().await;
    second.shutdown().await;
}

/// A group is available while a bridge that reaches a member is connected, not merely while
/// cyncd is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_availability_follows_the_members_bridges() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut ha = Ha::connect(broker.port).await;
    let server = start(lab_config("ha-group", &broker, vec![home(true)])).await;
    let config = "homeassistant/light/cyncd/lab_group_32769/config";
    let availability = "cync/lab_group_32769/availability";
    ha.until("the group, unavailable with no bridge", |s| {
        s.json(config).is_some_and(|c| {
            c["availability"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["topic"] == availability))
        }) && s.text(availability).as_deref() == Some("offline")
    })
    .await;
    let fleet = fleet(&server);
    ha.until("the group available", |s| {
        s.text(availability).as_deref() == Some("online")
    })
    .await;
    fleet.stop().await;
    until(&server, || server.ctx.registry.connections().is_empty()).await;
    ha.until("the group unavailable again", |s| {
        s.text(availability).as_deref() == Some("offline")
    })
    .await;
    server.shutdown().await;
}

/// A bridge whose own device the homes hide is a device of its own in Home Assistant, and the
/// devices it reaches name that device: nothing points at a device Home Assistant is not told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_whose_own_device_is_hidden_keeps_a_device_of_its_own() {
    let Some(broker) = Mosquitto::start(None).await else {
        return;
    };
    let mut lab = home(true);
    lab.devices[0].enabled = Some(false);
    let server = start(lab_config("ha-hidden", &broker, vec![lab])).await;
    let fleet = fleet(&server);
    all_reachable(&server, HOME, DEVICES.len() - 1).await;
    until(&server, || {
        server
            .ctx
            .registry
            .connections()
            .iter()
            .any(|c| c.device.is_some())
    })
    .await;
    let mut ha = Ha::connect(broker.port).await;
    let bridge = "homeassistant/binary_sensor/cyncd/bridge_67000001_connected/config";
    ha.until("the bridge and the colour light", |s| {
        s.json(bridge).is_some()
            && s.json("homeassistant/light/cyncd/lab_2/config")
                .is_some_and(|c| c["device"]["via_device"].is_string())
            && check_retained(s).is_ok()
    })
    .await;
    let seen = ha.seen();
    assert!(
        !seen
            .latest
            .contains_key("homeassistant/switch/cyncd/lab_1/config")
    );
    assert_eq!(
        seen.json(bridge).unwrap()["device"]["identifiers"],
        json!(["cyncd_bridge_67000001"])
    );
    assert_eq!(
        seen.json("homeassistant/light/cyncd/lab_2/config").unwrap()["device"]["via_device"],
        "cyncd_bridge_67000001"
    );
    fleet.stop().await;
    server.shutdown().await;
}
