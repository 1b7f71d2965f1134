//! Import of `cync_mesh.yaml`, the file the Python controllers' account export writes (and
//! their users already have): `account data` → home name → `devices` (by mesh id) and `groups`
//! (by group id), as `../shared/protocol/CLOUD-API.md` describes it.
//!
//! What is read: per home its `id`; per device `name`, `type`, `mac` and `wifi_mac` (quoted,
//! unquoted — YAML then reads an all-digit MAC as a number —, with or without colons), `fw`,
//! `enabled` (`false`, `no`, `off` hide the device); per group `name`, `members`,
//! `is_subgroup`. Older cync-lan files have no `type`: the kind is inferred from `is_plug`,
//! `supports_rgb` and `supports_temperature` (a plug; a full-colour, tunable-white or
//! dimmable bulb) and the report says so. Every other key — of the file, a home, a device or
//! a group — is kept under `extra` in the homes file, never rejected. Top-level settings
//! (`mqtt_url`, `cert`, `key`, `host`, `port`) are reported; `mqtt_url` is offered as cyncd's
//! broker.
//!
//! Bounds, checked before anything is built: the file at most [`MAX_YAML_BYTES`], nesting at
//! most [`MAX_DEPTH`] deep, at most [`MAX_NODES`] values once aliases are expanded (a file of
//! aliases of aliases cannot make the import take all memory).

use super::file::{
    DeviceRecord, GroupRecord, HomeRecord, HomesFile, MAX_DEVICES_PER_HOME, MAX_GROUPS_PER_HOME,
    MAX_HOMES, clean_mac, clean_name,
};
use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// Largest `cync_mesh.yaml` read.
pub const MAX_YAML_BYTES: usize = 8 << 20;
/// Deepest nesting accepted (the format needs 5).
pub const MAX_DEPTH: usize = 32;
/// Most values in the file once aliases are expanded.
pub const MAX_NODES: usize = 500_000;

/// The type codes inferred for devices of older files that have no `type`.
pub const INFERRED_PLUG: u8 = 68;
/// Full colour (and white): a Full Color A19 Bulb.
pub const INFERRED_RGB: u8 = 137;
/// Tunable white: a Tunable White A19 Bulb.
pub const INFERRED_WHITE: u8 = 5;
/// Neither: a Dimmable A19 Bulb.
pub const INFERRED_DIMMABLE: u8 = 128;

/// What an import produced and what it says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The homes file to write.
    pub file: HomesFile,
    /// What was taken, inferred, hidden, ignored and kept.
    pub report: Report,
}

/// What an import did, for people.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// One line per home: devices, rooms, groups.
    pub taken: Vec<String>,
    /// Devices whose kind was inferred from older flags.
    pub inferred: Vec<String>,
    /// Devices hidden by `enabled: false`.
    pub hidden: Vec<String>,
    /// What was not taken, and why.
    pub ignored: Vec<String>,
    /// Keys kept under `extra` without being used, with where they were.
    pub kept: Vec<String>,
    /// Top-level settings found (`mqtt_url` with its password hidden, `cert`, …).
    pub settings: Vec<String>,
    /// `mqtt_url`, when the file has one: offered as cyncd's broker URL.
    pub mqtt_url: Option<String>,
}

/// Why a file cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// Larger than [`MAX_YAML_BYTES`].
    #[error("the file is larger than {MAX_YAML_BYTES} bytes; a cync_mesh.yaml is far smaller")]
    TooLarge,
    /// Not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// Deeper than [`MAX_DEPTH`] or more than [`MAX_NODES`] values.
    #[error(
        "the YAML is nested deeper than {MAX_DEPTH} levels or has more than {MAX_NODES} values (with aliases expanded)"
    )]
    TooComplex,
    /// No `account data` section.
    #[error(
        "no `account data` section: this is not a cync_mesh.yaml written by the Cync account export of cync-lan or the Cync add-on"
    )]
    NoAccountData,
    /// No home with a name and devices.
    #[error(
        "the file has no home with devices: export your Cync account again (cyncd account login, then cyncd account export)"
    )]
    NoHomes,
}

/// Reads a `cync_mesh.yaml`. `source` names it in the homes file (e.g. its path).
pub fn import(text: &str, source: &str) -> Result<Import, ImportError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(ImportError::TooLarge);
    }
    prescan(text)?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| ImportError::Yaml(e.to_string()))?;
    let Some(Yaml::Hash(top)) = docs.into_iter().next() else {
        return Err(ImportError::NoAccountData);
    };
    let mut report = Report::default();
    let mut file = HomesFile::new(format!("cync_mesh.yaml import of {source}"));
    let mut account = None;
    for (key, value) in top {
        let name = text_of(&key).unwrap_or_default();
        if name == "account data" {
            account = Some(value);
            continue;
        }
        match name.as_str() {
            "mqtt_url" => {
                let url = text_of(&value).unwrap_or_default();
                let shown = crate::config::Broker::parse(&url).map_or_else(
                    |_| "(not an mqtt:// or mqtts:// URL)".to_string(),
                    |b| match &b.username {
                        Some(u) => format!("{b} (user {u:?})"),
                        None => b.to_string(),
                    },
                );
                report.settings.push(format!("mqtt_url: {shown}"));
                report.mqtt_url = Some(url);
            }
            "cert" | "key" | "host" | "port" => {
                let v = text_of(&value).unwrap_or_default();
                report.settings.push(format!("{name}: {v}"));
            }
            _ => report.kept.push(format!("top-level key {name:?}")),
        }
        file.extra.insert(name, json_of(&value));
    }
    let Some(Yaml::Hash(homes)) = account else {
        return Err(ImportError::NoAccountData);
    };
    for (key, value) in homes {
        let name = clean_name(&text_of(&key).unwrap_or_default());
        if name.is_empty() {
            report.ignored.push("a home without a name".into());
            continue;
        }
        if file.homes.len() >= MAX_HOMES {
            report
                .ignored
                .push(format!("home {name:?}: more than {MAX_HOMES} homes"));
            continue;
        }
        if file.homes.iter().any(|h| h.name == name) {
            report
                .ignored
                .push(format!("home {name:?}: a second home of the same name"));
            continue;
        }
        let Yaml::Hash(body) = value else {
            report.ignored.push(format!(
                "home {name:?}: not a mapping of devices and groups"
            ));
            continue;
        };
        let home = read_home(&name, body, &mut report);
        if home.devices.is_empty() {
            report.ignored.push(format!("home {name:?}: no devices"));
            continue;
        }
        report.taken.push(format!(
            "home {name:?}: {} devices, {} rooms, {} groups",
            home.devices.len(),
            home.groups.iter().filter(|g| !g.subgroup).count(),
            home.groups.iter().filter(|g| g.subgroup).count()
        ));
        file.homes.push(home);
    }
    if file.homes.is_empty() {
        return Err(ImportError::NoHomes);
    }
    Ok(Import { file, report })
}

fn read_home(name: &str, body: yaml_rust2::yaml::Hash, report: &mut Report) -> HomeRecord {
    let mut home = HomeRecord {
        name: name.to_string(),
        id: None,
        bridges: Vec::new(),
        devices: Vec::new(),
        groups: Vec::new(),
        extra: Map::new(),
    };
    for (key, value) in body {
        let k = text_of(&key).unwrap_or_default();
        match (k.as_str(), value) {
            ("id", Yaml::Integer(id)) => home.id = u64::try_from(id).ok(),
            ("devices", Yaml::Hash(devices)) => {
                for (id, d) in devices {
                    read_device(&mut home, &id, d, report);
                }
            }
            ("groups", Yaml::Hash(groups)) => {
                for (id, g) in groups {
                    read_group(&mut home, &id, g, report);
                }
            }
            ("devices" | "groups", Yaml::Null) => {}
            (_, value) => {
                report.kept.push(format!("home {name:?}: {k:?}"));
                home.extra.insert(k, json_of(&value));
            }
        }
    }
    home
}

fn read_device(home: &mut HomeRecord, key: &Yaml, value: Yaml, report: &mut Report) {
    let place = format!("home {:?}", home.name);
    let Some(id) = mesh_id(key) else {
        report.ignored.push(format!(
            "{place}: device {:?}: a mesh id is a number from 1 to 65535",
            text_of(key).unwrap_or_default()
        ));
        return;
    };
    if home.devices.len() >= MAX_DEVICES_PER_HOME {
        report.ignored.push(format!(
            "{place}: device {id}: more than {MAX_DEVICES_PER_HOME} devices"
        ));
        return;
    }
    let Yaml::Hash(fields) = value else {
        report
            .ignored
            .push(format!("{place}: device {id}: not a mapping"));
        return;
    };
    let mut d = DeviceRecord {
        id,
        name: String::new(),
        kind: None,
        mac: None,
        wifi_mac: None,
        firmware: None,
        enabled: true,
        outlets: Vec::new(),
        bridge: None,
        auth_code: None,
        extra: Map::new(),
    };
    let mut flags = (None, None, None);
    for (key, value) in fields {
        let k = text_of(&key).unwrap_or_default();
        let used = match k.as_str() {
            "name" => {
                d.name = clean_name(&text_of(&value).unwrap_or_default());
                true
            }
            "type" => {
                match &value {
                    Yaml::Integer(n) => match u8::try_from(*n) {
                        Ok(code) => d.kind = Some(code),
                        Err(_) => report.ignored.push(format!(
                            "{place}: device {id}: type {n} is not a Cync type code (0-255)"
                        )),
                    },
                    Yaml::Null => {}
                    other => report.ignored.push(format!(
                        "{place}: device {id}: type {:?} is not a number",
                        text_of(other).unwrap_or_default()
                    )),
                }
                true
            }
            "mac" | "wifi_mac" => {
                let mac = mac_of(&value);
                if mac.is_none() && !matches!(value, Yaml::Null) {
                    report.ignored.push(format!(
                        "{place}: device {id}: {k} {:?} is not 12 hex digits (quote it in the file)",
                        text_of(&value).unwrap_or_default()
                    ));
                }
                if k == "mac" {
                    d.mac = mac;
                } else {
                    d.wifi_mac = mac;
                }
                true
            }
            "fw" => {
                d.firmware = text_of(&value).filter(|v| !v.is_empty());
                true
            }
            "enabled" => {
                d.enabled = truth(&value).unwrap_or(true);
                true
            }
            "is_plug" => {
                flags.0 = truth(&value);
                false
            }
            "supports_rgb" => {
                flags.1 = truth(&value);
                false
            }
            "supports_temperature" => {
                flags.2 = truth(&value);
                false
            }
            _ => {
                report.kept.push(format!("{place}: device {id}: {k:?}"));
                false
            }
        };
        if !used {
            d.extra.insert(k, json_of(&value));
        }
    }
    if d.name.is_empty() {
        d.name = format!("device {id}");
    }
    if d.kind.is_none() && flags != (None, None, None) {
        let code = match flags {
            (Some(true), _, _) => INFERRED_PLUG,
            (_, Some(true), _) => INFERRED_RGB,
            (_, _, Some(true)) => INFERRED_WHITE,
            _ => INFERRED_DIMMABLE,
        };
        let product = cync_proto::catalog::DeviceType::of(Some(code)).model;
        report.inferred.push(format!(
            "{place}: {:?} (mesh id {id}) has no type: taken as type {code} ({product}) from its flags; set its type in the configuration for the exact product",
            d.name
        ));
        d.kind = Some(code);
    }
    if !d.enabled {
        report
            .hidden
            .push(format!("{place}: {:?} (mesh id {id})", d.name));
    }
    if home.devices.iter().any(|x| x.id == id) {
        report
            .ignored
            .push(format!("{place}: device {id}: listed twice"));
        return;
    }
    home.devices.push(d);
}

fn read_group(home: &mut HomeRecord, key: &Yaml, value: Yaml, report: &mut Report) {
    let place = format!("home {:?}", home.name);
    let Some(id) = mesh_id(key) else {
        report.ignored.push(format!(
            "{place}: group {:?}: a group id is a number from 1 to 65535",
            text_of(key).unwrap_or_default()
        ));
        return;
    };
    if home.groups.len() >= MAX_GROUPS_PER_HOME || home.groups.iter().any(|g| g.id == id) {
        report.ignored.push(format!(
            "{place}: group {id}: too many groups, or listed twice"
        ));
        return;
    }
    let Yaml::Hash(fields) = value else {
        report
            .ignored
            .push(format!("{place}: group {id}: not a mapping"));
        return;
    };
    let mut g = GroupRecord {
        id,
        name: String::new(),
        members: Vec::new(),
        subgroup: false,
        extra: Map::new(),
    };
    for (key, value) in fields {
        let k = text_of(&key).unwrap_or_default();
        match (k.as_str(), &value) {
            ("name", v) => g.name = clean_name(&text_of(v).unwrap_or_default()),
            ("members", Yaml::Array(list)) => {
                for m in list {
                    match mesh_id(m) {
                        Some(m) if !g.members.contains(&m) => g.members.push(m),
                        Some(_) => {}
                        None => report.ignored.push(format!(
                            "{place}: group {id}: member {:?} is not a mesh id",
                            text_of(m).unwrap_or_default()
                        )),
                    }
                }
            }
            ("members", Yaml::Null) => {}
            ("is_subgroup", v) => g.subgroup = truth(v).unwrap_or(false),
            _ => {
                report.kept.push(format!("{place}: group {id}: {k:?}"));
                g.extra.insert(k, json_of(&value));
            }
        }
    }
    if g.name.is_empty() {
        g.name = format!("group {id}");
    }
    home.groups.push(g);
}

/// A mesh or group id key: a number 1–65535, written as a number or as digits.
fn mesh_id(key: &Yaml) -> Option<u16> {
    let n = match key {
        Yaml::Integer(n) => u16::try_from(*n).ok()?,
        Yaml::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (n > 0).then_some(n)
}

/// A MAC written quoted, unquoted (an all-digit MAC reads as a number and loses its leading
/// zeros; one like `000000000E10` reads as a float, whose text is kept), with or without
/// separators.
fn mac_of(value: &Yaml) -> Option<String> {
    match value {
        Yaml::Integer(n) if *n >= 0 => clean_mac(&format!("{n:012}")),
        Yaml::String(s) | Yaml::Real(s) => clean_mac(s),
        _ => None,
    }
}

/// YAML 1.1 truth words (the Python writers' `yes`/`no`), booleans and 0/1.
fn truth(value: &Yaml) -> Option<bool> {
    match value {
        Yaml::Boolean(b) => Some(*b),
        Yaml::Integer(n) => Some(*n != 0),
        Yaml::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" | "y" | "true" | "on" => Some(true),
            "no" | "n" | "false" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A scalar as text.
fn text_of(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Any YAML value as JSON, to keep it: mapping keys become text, floats keep their digits when
/// JSON cannot hold them. The prescan bounds the depth.
fn json_of(value: &Yaml) -> Value {
    match value {
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(list) => Value::Array(list.iter().map(json_of).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = text_of(k).unwrap_or_else(|| json_of(k).to_string());
                    (key, json_of(v))
                })
                .collect(),
        ),
    }
}

/// Walks the parser's events once, before building anything: depth and the number of values
/// with aliases expanded (an alias counts the size of what it names).
fn prescan(text: &str) -> Result<(), ImportError> {
    struct Scan {
        /// Per open container: its anchor and the values in it so far.
        open: Vec<(usize, usize)>,
        /// Anchor → values it stands for.
        sizes: std::collections::HashMap<usize, usize>,
        total: usize,
        over: bool,
    }
    impl Scan {
        fn add(&mut self, n: usize) {
            self.total = self.total.saturating_add(n);
            if let Some((_, count)) = self.open.last_mut() {
                *count = count.saturating_add(n);
            }
            if self.total > MAX_NODES {
                self.over = true;
            }
        }
    }
    impl yaml_rust2::parser::EventReceiver for Scan {
        fn on_event(&mut self, ev: Event) {
            if self.over {
                return;
            }
            match ev {
                Event::Scalar(_, _, anchor, _) => {
                    if anchor > 0 {
                        self.sizes.insert(anchor, 1);
                    }
                    self.add(1);
                }
                Event::Alias(anchor) => {
                    let n = self.sizes.get(&anchor).copied().unwrap_or(1);
                    self.add(n);
                }
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    self.open.push((anchor, 1));
                    if self.open.len() > MAX_DEPTH {
                        self.over = true;
                    }
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    if let Some((anchor, count)) = self.open.pop() {
                        if anchor > 0 {
                            self.sizes.insert(anchor, count);
                        }
                        // The container's own values were counted into the total as they came.
                        self.total = self.total.saturating_add(1);
                        if let Some((_, parent)) = self.open.last_mut() {
                            *parent = parent.saturating_add(count);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut scan = Scan {
        open: Vec::new(),
        sizes: std::collections::HashMap::new(),
        total: 0,
        over: false,
    };
    // Parse errors are reported by the loader with their position; here only the bounds count.
    let _ = Parser::new_from_str(text).load(&mut scan, true);
    if scan.over {
        return Err(ImportError::TooComplex);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const SAMPLE: &str = r#"
account data:
  My Home:
    id: 123456789
    access_key: 987654
    mac: 'AABBCCDDEEFF'
    devices:
      5:
        name: Kitchen Lamp
        mac: 'A4C1380D1E2F'
        wifi_mac: A4C1380D1E30
        type: 137
        is_plug: false
        supports_rgb: true
        supports_temperature: true
        fw: 1.0.340
        enabled: true
        colour_memory: [1, 2]
      7:
        name: Porch
        mac: 112233445566
        type: 68
        enabled: no
    groups:
      32769:
        name: Kitchen
        members: [5, 7]
        is_subgroup: false
        icon: 3
  Cabin:
    devices:
      2:
        name: Old bulb
        mac: 78:6D:EB:28:EA:A4
        is_plug: false
        supports_rgb: false
        supports_temperature: true
mqtt_url: "mqtt://cync:s3cret@broker.lan:1883/"
cert: certs/cert.pem
debug: true
"#;

    #[test]
    fn reads_homes_devices_groups_and_keeps_what_it_does_not_use() {
        let Import { file, report } = import(SAMPLE, "test.yaml").unwrap();
        assert_eq!(file.homes.len(), 2);
        let home = &file.homes[0];
        assert_eq!((home.name.as_str(), home.id), ("My Home", Some(123456789)));
        assert_eq!(home.extra["access_key"], 987654);
        let lamp = &home.devices[0];
        assert_eq!(
            (lamp.id, lamp.name.as_str(), lamp.kind),
            (5, "Kitchen Lamp", Some(137))
        );
        assert_eq!(lamp.mac.as_deref(), Some("A4C1380D1E2F"));
        assert_eq!(lamp.wifi_mac.as_deref(), Some("A4C1380D1E30"));
        assert_eq!(lamp.firmware.as_deref(), Some("1.0.340"));
        assert_eq!(lamp.extra["colour_memory"], serde_json::json!([1, 2]));
        assert_eq!(lamp.extra["supports_rgb"], true);
        let porch = &home.devices[1];
        assert_eq!(
            porch.mac.as_deref(),
            Some("112233445566"),
            "unquoted digits"
        );
        assert!(!porch.enabled, "`no` hides it");
        assert_eq!(home.groups[0].members, [5, 7]);
        assert_eq!(home.groups[0].extra["icon"], 3);
        let old = &file.homes[1].devices[0];
        assert_eq!(old.mac.as_deref(), Some("786DEB28EAA4"));
        assert_eq!(old.kind, Some(INFERRED_WHITE));
        assert_eq!(report.inferred.len(), 1);
        assert_eq!(report.hidden.len(), 1);
        assert!(report.mqtt_url.as_deref().unwrap().contains("s3cret"));
        let settings = report.settings.join("\n");
        assert!(!settings.contains("s3cret"), "{settings}");
        assert!(settings.contains("mqtt://broker.lan:1883"), "{settings}");
        assert_eq!(file.extra["debug"], true);
        assert!(report.kept.iter().any(|k| k.contains("debug")));
        file.check().unwrap();
    }

    #[test]
    fn bad_values_are_reported_not_fatal() {
        let text = r#"
account data:
  Home:
    devices:
      0: {name: Zero}
      abc: {name: Letters}
      3: {name: Big type, type: 999, mac: 'nope'}
      4: [not, a, mapping]
      5: {}
    groups:
      9: {name: G, members: [3, x, 3]}
"#;
        let Import { file, report } = import(text, "t").unwrap();
        let ids: Vec<u16> = file.homes[0].devices.iter().map(|d| d.id).collect();
        assert_eq!(ids, [3, 5]);
        assert_eq!(file.homes[0].devices[1].name, "device 5");
        assert_eq!(file.homes[0].devices[0].kind, None);
        assert_eq!(file.homes[0].groups[0].members, [3]);
        let ignored = report.ignored.join("\n");
        for needle in [
            "\"0\"",
            "\"abc\"",
            "type 999",
            "\"nope\"",
            "device 4",
            "member \"x\"",
        ] {
            assert!(ignored.contains(needle), "{needle} in {ignored}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_export() {
        assert_eq!(import("a: 1", "t"), Err(ImportError::NoAccountData));
        assert_eq!(import("- 1\n- 2", "t"), Err(ImportError::NoAccountData));
        assert_eq!(
            import("account data:\n  Empty: {}\n", "t"),
            Err(ImportError::NoHomes)
        );
        assert!(matches!(import("a: [", "t"), Err(ImportError::Yaml(_))));
        assert!(matches!(
            import(
                "account data:\n  H:\n    devices:\n      1: {}\n      1: {}\n",
                "t"
            ),
            Err(ImportError::Yaml(_))
        ));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_before_loading() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(import(&bomb, "t"), Err(ImportError::TooComplex));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(import(&deep, "t").is_err());
        let nested: String = (0..40).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
        assert_eq!(import(&nested, "t"), Err(ImportError::TooComplex));
        // A few aliases in an ordinary file are fine.
        let ok = "account data:\n  H:\n    devices:\n      1: &d {name: A}\n      2: *d\n";
        assert_eq!(import(ok, "t").unwrap().file.homes[0].devices.len(), 2);
    }
}
