//! `examples/cyncd.toml` loads with the real loader, says the truth about every default, and
//! names every key the configuration accepts, so a new option cannot be left out of it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use cyncd::config::{Config, DeviceConfig, GroupConfig, Home};
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cyncd.toml")
}

#[test]
fn the_example_loads_and_its_values_are_the_defaults() {
    let loaded = Config::load(&example()).unwrap();
    loaded.validate().unwrap();
    // The example shows the systemd unit's state directory; every other value it sets is the
    // default it claims to be.
    let expected = Config {
        state_dir: PathBuf::from("/var/lib/cyncd"),
        ..Config::default()
    };
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&expected).unwrap()
    );
}

/// Every key name in a serialised configuration, nested ones included.
fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_example_names_every_key() {
    // A configuration with one of everything, so nested keys are serialised too.
    let config = Config {
        homes: vec![Home {
            name: "h".into(),
            bridges: vec!["00000001".into()],
            devices: vec![DeviceConfig {
                id: 1,
                name: Some("d".into()),
                kind: Some(68),
                room: Some("r".into()),
                enabled: Some(true),
            }],
            groups: vec![GroupConfig {
                id: 32769,
                name: "g".into(),
                members: vec![1],
                room: Some(true),
            }],
        }],
        ..Config::default()
    };
    let mut all = Vec::new();
    keys(&serde_json::to_value(&config).unwrap(), &mut all);
    all.sort();
    all.dedup();
    let text = std::fs::read_to_string(example()).unwrap();
    // A key appears as `key =` (set, or commented out with its example value) or as a section.
    let named = |key: &str| {
        text.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} ="))
                || line.contains(&format!("{{ {key} ="))
                || line.contains(&format!(", {key} ="))
                || line == format!("[{key}]")
                || line == format!("[[{key}]]")
        })
    };
    let missing: Vec<&String> = all.iter().filter(|k| !named(k)).collect();
    assert!(
        missing.is_empty(),
        "examples/cyncd.toml does not name {missing:?}"
    );
    assert!(all.len() > 40, "{all:?}");
}
