//! The Cync account export: the account's homes, devices and rooms as a homes file
//! ([`super::file::HomesFile`]), and a preview of it for people.
//!
//! [`export`] asks the API ([`super::cloud`]) for the home list, then each home's properties;
//! [`build`] turns the answers into homes, purely (no I/O), so every shape — missing fields,
//! empty homes, homes without properties — is tested without a server.
//!
//! From a home's `bulbsArray`: `deviceID` (home id × 1000 + mesh id; × 1,000,000 + outlet ×
//! 1000 + mesh id for an outlet of a multi-outlet plug, whose outlets come as one entry each),
//! `displayName`, `deviceType`, `mac`, `wifiMac`, `firmwareVersion`, and `switchID`, the id of
//! the Wi-Fi device itself — read as its id in the 0x23 hello (8 hex digits; an inference: the
//! Cync platform's device id is 32 bits like the hello's, and the account lists the Wi-Fi
//! devices' auth codes under the same id). From `groupsArray`: `groupID`, `displayName`,
//! `deviceIDArray` (mesh ids in the last three digits), `isSubgroup`. Everything else of an item
//! is kept under `extra`.

use super::cloud::{Client, CloudError, Token};
use super::file::{
    DeviceRecord, GroupRecord, HomeRecord, HomesFile, MAX_DEVICES_PER_HOME, MAX_GROUPS_PER_HOME,
    MAX_HOMES, clean_mac, clean_name,
};
use serde_json::{Map, Value, json};

/// Most entries of the home list whose properties are read (the list also names every Wi-Fi
/// device; those are skipped without a request when the entry says so).
pub const MAX_LISTED: usize = 256;

/// An export: the homes file to write and notes for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The homes.
    pub file: HomesFile,
    /// What was skipped or filled in, and why.
    pub notes: Vec<String>,
}

/// Reads the account's homes with a logged-in client.
pub async fn export(client: &Client, token: &Token) -> Result<Export, ExportError> {
    let listed = client.homes(token).await?;
    let mut answers = Vec::new();
    let mut notes = Vec::new();
    for entry in listed.iter().take(MAX_LISTED) {
        // The real list mixes homes (source 5) and Wi-Fi devices, which have no properties.
        let source = entry.get("source").and_then(Value::as_u64);
        let id = entry.get("id").and_then(Value::as_u64);
        let product = entry.get("product_id").and_then(|p| match p {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        match (source, id, product) {
            (Some(s), _, _) if s != 5 => continue,
            (_, Some(id), Some(product)) => {
                let properties = client.home(token, &product, id).await?;
                answers.push((entry.clone(), properties));
            }
            _ => notes.push(format!(
                "an entry of the home list without an id or product_id was skipped: {}",
                short(entry)
            )),
        }
    }
    if listed.len() > MAX_LISTED {
        notes.push(format!(
            "the account lists {} entries; only the first {MAX_LISTED} were read",
            listed.len()
        ));
    }
    let mut export = build(&token.email, &listed, &answers)?;
    notes.append(&mut export.notes);
    export.notes = notes;
    Ok(export)
}

/// Why an export produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The API failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// No home with a name and devices.
    #[error(
        "the Cync account {email} has no named home with devices. Add your devices to a home in the Cync app (and name it), then export again"
    )]
    NoHomes {
        /// The account.
        email: String,
    },
}

/// The homes of an account from the API's answers: the home list (for the Wi-Fi devices' auth
/// codes) and, per home entry, its properties (`None` when Cync had none).
pub fn build(
    email: &str,
    listed: &[Value],
    answers: &[(Value, Option<Value>)],
) -> Result<Export, ExportError> {
    let mut file = HomesFile::new(format!("Cync account {email}"));
    let mut notes = Vec::new();
    let mut unnamed_empty = 0usize;
    // Wi-Fi devices' auth codes by their platform id.
    let auth: Vec<(u64, String)> = listed
        .iter()
        .filter_map(|e| {
            let id = e.get("id")?.as_u64()?;
            let code = e.get("authorize_code")?.as_str()?;
            (code.len() == 16 && code.chars().all(|c| c.is_ascii_graphic()))
                .then(|| (id, code.to_string()))
        })
        .collect();
    for (entry, properties) in answers {
        let home_id = entry.get("id").and_then(Value::as_u64).unwrap_or(0);
        let listed_name = clean_name(entry.get("name").and_then(Value::as_str).unwrap_or(""));
        let Some(properties) = properties else {
            if listed_name.is_empty() {
                unnamed_empty += 1;
            } else {
                notes.push(format!(
                    "home {listed_name:?} has no devices in the account (Cync error 4041009): skipped"
                ));
            }
            continue;
        };
        let mut home = HomeRecord {
            name: listed_name.clone(),
            id: Some(home_id),
            bridges: Vec::new(),
            devices: Vec::new(),
            groups: Vec::new(),
            extra: Map::new(),
        };
        let bulbs = properties
            .get("bulbsArray")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for bulb in &bulbs {
            add_device(&mut home, home_id, bulb, &auth, &mut notes);
        }
        let groups = properties
            .get("groupsArray")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for g in &groups {
            add_group(&mut home, g, &mut notes);
        }
        if home.devices.is_empty() {
            if listed_name.is_empty() {
                unnamed_empty += 1;
            } else {
                notes.push(format!("home {listed_name:?} has no devices: skipped"));
            }
            continue;
        }
        if home.name.is_empty() {
            home.name = format!("Home {home_id}");
            notes.push(format!(
                "a home without a name holds {} devices: named {:?} (rename it in the configuration or the app)",
                home.devices.len(),
                home.name
            ));
        }
        if file.homes.iter().any(|h| h.name == home.name) {
            let renamed = format!("{} ({home_id})", home.name);
            notes.push(format!(
                "two homes are named {:?}: the second is {renamed:?}",
                home.name
            ));
            home.name = renamed;
        }
        if file.homes.len() >= MAX_HOMES {
            notes.push(format!(
                "home {:?} skipped: more than {MAX_HOMES} homes",
                home.name
            ));
            continue;
        }
        for key in properties.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !matches!(key.as_str(), "bulbsArray" | "groupsArray") {
                if let Some(v) = properties.get(key) {
                    home.extra.insert(key.clone(), v.clone());
                }
            }
        }
        file.homes.push(home);
    }
    if unnamed_empty > 0 {
        notes.push(format!(
            "{unnamed_empty} empty home(s) without a name were skipped (the app creates them)"
        ));
    }
    if file.homes.is_empty() {
        return Err(ExportError::NoHomes {
            email: email.to_string(),
        });
    }
    Ok(Export { file, notes })
}

/// Mesh id and outlet of a `deviceID` of home `home_id`.
fn split_device_id(device_id: u64, home_id: u64) -> (u16, Option<u8>) {
    let mesh = u16::try_from(device_id % 1000).unwrap_or(0);
    let outlet = (home_id > 0 && device_id / 1_000_000 == home_id)
        .then(|| u8::try_from((device_id / 1000) % 1000).ok())
        .flatten()
        .filter(|o| *o > 0);
    (mesh, outlet)
}

fn add_device(
    home: &mut HomeRecord,
    home_id: u64,
    bulb: &Value,
    auth: &[(u64, String)],
    notes: &mut Vec<String>,
) {
    let place = if home.name.is_empty() {
        format!("home {home_id}")
    } else {
        format!("home {:?}", home.name)
    };
    let Some(device_id) = bulb.get("deviceID").and_then(Value::as_u64) else {
        notes.push(format!(
            "{place}: a device without a deviceID was skipped: {}",
            short(bulb)
        ));
        return;
    };
    let (mesh, outlet) = split_device_id(device_id, home_id);
    if mesh == 0 {
        notes.push(format!(
            "{place}: device {device_id} has no mesh id: skipped"
        ));
        return;
    }
    let name = clean_name(
        bulb.get("displayName")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let kind = bulb
        .get("deviceType")
        .and_then(Value::as_u64)
        .and_then(|t| u8::try_from(t).ok());
    let switch = bulb
        .get("switchID")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from(s).ok());
    let text = |key: &str| bulb.get(key).and_then(Value::as_str).map(str::to_string);
    if let Some(existing) = home.devices.iter_mut().find(|d| d.id == mesh) {
        // Another outlet of a multi-outlet plug already listed.
        if let Some(n) = outlet {
            set_outlet(existing, n, &name);
            existing.name = outlet_device_name(existing);
        } else {
            notes.push(format!(
                "{place}: mesh id {mesh} is listed twice: the first is kept"
            ));
        }
        return;
    }
    if home.devices.len() >= MAX_DEVICES_PER_HOME {
        notes.push(format!(
            "{place}: more than {MAX_DEVICES_PER_HOME} devices: {name:?} skipped"
        ));
        return;
    }
    let mut d = DeviceRecord {
        id: mesh,
        name: name.clone(),
        kind,
        mac: text("mac").as_deref().and_then(clean_mac),
        wifi_mac: text("wifiMac").as_deref().and_then(clean_mac),
        firmware: text("firmwareVersion").filter(|f| !f.is_empty()),
        enabled: true,
        outlets: Vec::new(),
        bridge: switch.map(|s| format!("{s:08x}")),
        auth_code: switch.and_then(|s| {
            auth.iter()
                .find(|(id, _)| *id == u64::from(s))
                .map(|(_, c)| c.clone())
        }),
        extra: Map::new(),
    };
    if let Some(n) = outlet {
        set_outlet(&mut d, n, &name);
        d.name = outlet_device_name(&d);
    }
    if d.name.is_empty() {
        d.name = format!("device {mesh}");
        notes.push(format!(
            "{place}: device {mesh} has no name: called {:?}",
            d.name
        ));
    }
    if kind.is_none() {
        notes.push(format!(
            "{place}: {:?} has no deviceType: shown as an on/off light until its type is set in the configuration",
            d.name
        ));
    }
    for (key, value) in bulb.as_object().into_iter().flatten() {
        if !matches!(
            key.as_str(),
            "deviceID"
                | "displayName"
                | "deviceType"
                | "mac"
                | "wifiMac"
                | "firmwareVersion"
                | "switchID"
        ) {
            d.extra.insert(key.clone(), value.clone());
        }
    }
    home.devices.push(d);
}

fn set_outlet(d: &mut DeviceRecord, outlet: u8, name: &str) {
    let i = usize::from(outlet - 1).min(7);
    if d.outlets.len() <= i {
        d.outlets.resize(i + 1, String::new());
    }
    if let Some(slot) = d.outlets.get_mut(i) {
        *slot = name.to_string();
    }
}

/// A multi-outlet plug's name from its outlets' names ("Left Outlet / Right Outlet").
fn outlet_device_name(d: &DeviceRecord) -> String {
    let names: Vec<&str> = d
        .outlets
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    clean_name(&names.join(" / "))
}

fn add_group(home: &mut HomeRecord, g: &Value, notes: &mut Vec<String>) {
    let Some(id) = g
        .get("groupID")
        .and_then(Value::as_u64)
        .and_then(|i| u16::try_from(i).ok())
        .filter(|i| *i > 0)
    else {
        notes.push(format!(
            "a group without a usable groupID was skipped: {}",
            short(g)
        ));
        return;
    };
    if home.groups.len() >= MAX_GROUPS_PER_HOME || home.groups.iter().any(|x| x.id == id) {
        return;
    }
    let mut members = Vec::new();
    for m in g
        .get("deviceIDArray")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(mesh) = m.as_u64().and_then(|n| u16::try_from(n % 1000).ok()) {
            if mesh > 0 && !members.contains(&mesh) {
                members.push(mesh);
            }
        }
    }
    let mut name = clean_name(g.get("displayName").and_then(Value::as_str).unwrap_or(""));
    if name.is_empty() {
        name = format!("group {id}");
    }
    let mut extra = Map::new();
    for (key, value) in g.as_object().into_iter().flatten() {
        if !matches!(
            key.as_str(),
            "groupID" | "displayName" | "deviceIDArray" | "isSubgroup"
        ) {
            extra.insert(key.clone(), value.clone());
        }
    }
    home.groups.push(GroupRecord {
        id,
        name,
        members,
        subgroup: g
            .get("isSubgroup")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        extra,
    });
}

/// A JSON value cut short for a note.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

impl Export {
    /// What the page's setup screen shows before saving: per home its rooms with their
    /// devices (name, product, type), devices in no room, and groups.
    pub fn preview(&self) -> Value {
        let homes: Vec<Value> = self
            .file
            .homes
            .iter()
            .map(|h| {
                let device = |d: &DeviceRecord| {
                    let t = cync_proto::catalog::DeviceType::of(d.kind);
                    json!({
                        "id": d.id,
                        "name": d.name,
                        "type": d.kind,
                        "model": t.product,
                        "kind": t.kind.name(),
                        "known": t.is_known(),
                        "outlets": d.outlets,
                    })
                };
                let rooms: Vec<Value> = h
                    .groups
                    .iter()
                    .filter(|g| !g.subgroup)
                    .map(|g| {
                        let devices: Vec<Value> = g
                            .members
                            .iter()
                            .filter_map(|m| h.devices.iter().find(|d| d.id == *m))
                            .map(device)
                            .collect();
                        json!({ "id": g.id, "name": g.name, "devices": devices })
                    })
                    .collect();
                let roomless: Vec<Value> = h
                    .devices
                    .iter()
                    .filter(|d| {
                        !h.groups
                            .iter()
                            .any(|g| !g.subgroup && g.members.contains(&d.id))
                    })
                    .map(device)
                    .collect();
                let groups: Vec<Value> = h
                    .groups
                    .iter()
                    .filter(|g| g.subgroup)
                    .map(|g| json!({ "id": g.id, "name": g.name, "members": g.members }))
                    .collect();
                json!({
                    "name": h.name,
                    "devices": h.devices.len(),
                    "rooms": rooms,
                    "other": roomless,
                    "groups": groups,
                })
            })
            .collect();
        json!({
            "source": self.file.source,
            "homes": homes,
            "devices": self.file.device_count(),
            "rooms": self.file.room_count(),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn home_entry(id: u64, name: &str) -> Value {
        json!({"id": id, "product_id": "1234", "name": name, "source": 5, "access_key": 777})
    }

    /// pycync's property fixture, shortened: a lamp with its Wi-Fi id, a Bluetooth bulb, the two
    /// outlets of a dual outdoor plug, rooms and a subgroup.
    fn properties() -> Value {
        json!({
            "bulbsArray": [
                {"displayName": "Bedroom Lamp", "mac": "ABCDEF123456", "firmwareVersion": "1.0.315",
                 "deviceType": 131, "switchID": 6874, "deviceID": 1234567890002_u64,
                 "wifiMac": "AB:CD:EF:12:34:56", "fadeOn": 1},
                {"displayName": "Office Light", "mac": "123456ABCDEF", "firmwareVersion": "1.3.176",
                 "deviceType": 137, "deviceID": 1234567890004_u64},
                {"displayName": "Left Outlet", "mac": "654321ABCDEF", "firmwareVersion": "",
                 "deviceType": 67, "switchID": 1862155454, "deviceID": 1234567890001006_u64,
                 "wifiMac": "654321ABCDEF"},
                {"displayName": "Right Outlet", "mac": "654321ABCDEF", "firmwareVersion": "",
                 "deviceType": 67, "switchID": 1862155454, "deviceID": 1234567890002006_u64,
                 "wifiMac": "654321ABCDEF"},
                {"mac": "001122334455", "deviceID": 1234567890009_u64},
                {"displayName": "No id"}
            ],
            "groupsArray": [
                {"displayName": "Bedroom", "groupID": 12345, "isSubgroup": false, "deviceIDArray": [2]},
                {"displayName": "Office", "groupID": 23456, "isSubgroup": false, "deviceIDArray": [],
                 "subgroupIDArray": [34567]},
                {"displayName": "Office Lamp", "groupID": 34567, "isSubgroup": true, "deviceIDArray": [4]},
                {"displayName": "Front Porch", "groupID": 45678, "isSubgroup": false, "deviceIDArray": [1006, 2006]},
                {"displayName": "Too big", "groupID": 99999999}
            ],
            "lightShows": [],
            "version": "1.0"
        })
    }

    #[test]
    fn devices_rooms_outlets_and_bridges_come_from_the_properties() {
        let listed = vec![
            home_entry(1234567890, "Home"),
            json!({"id": 6874, "authorize_code": "0123456789abcdef", "source": 1}),
        ];
        let answers = vec![(listed[0].clone(), Some(properties()))];
        let Export { file, notes } = build("a@example.com", &listed, &answers).unwrap();
        let home = &file.homes[0];
        assert_eq!((home.name.as_str(), home.id), ("Home", Some(1234567890)));
        let ids: Vec<u16> = home.devices.iter().map(|d| d.id).collect();
        assert_eq!(ids, [2, 4, 6, 9]);
        let lamp = &home.devices[0];
        assert_eq!(lamp.bridge.as_deref(), Some("00001ada"));
        assert_eq!(lamp.auth_code.as_deref(), Some("0123456789abcdef"));
        assert_eq!(lamp.wifi_mac.as_deref(), Some("ABCDEF123456"));
        assert_eq!(lamp.extra["fadeOn"], 1);
        let plug = &home.devices[2];
        assert_eq!(plug.outlets, ["Left Outlet", "Right Outlet"]);
        assert_eq!(plug.name, "Left Outlet / Right Outlet");
        assert_eq!(plug.kind, Some(67));
        assert_eq!(plug.firmware, None);
        assert_eq!(plug.bridge.as_deref(), Some("6efe3cbe"));
        assert_eq!(home.devices[3].name, "device 9");
        assert!(
            notes.iter().any(|n| n.contains("without a deviceID")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("no deviceType")),
            "{notes:?}"
        );
        let porch = home
            .groups
            .iter()
            .find(|g| g.name == "Front Porch")
            .unwrap();
        assert_eq!(porch.members, [6]);
        assert!(
            home.groups
                .iter()
                .any(|g| g.name == "Office Lamp" && g.subgroup)
        );
        assert!(home.groups.iter().all(|g| g.name != "Too big"));
        assert_eq!(home.extra["version"], "1.0");
        file.check().unwrap();
        let preview = Export { file, notes }.preview();
        assert_eq!(preview["devices"], 4);
        assert_eq!(preview["rooms"], 3);
        assert_eq!(
            preview["homes"][0]["rooms"][0]["devices"][0]["model"],
            "Full Color A19 Bulb"
        );
        assert_eq!(preview["homes"][0]["groups"][0]["name"], "Office Lamp");
    }

    #[test]
    fn empty_unnamed_and_property_less_homes_are_skipped_with_a_note() {
        let listed = vec![
            home_entry(1, ""),
            home_entry(2, "Summer house"),
            home_entry(3, ""),
        ];
        let answers = vec![
            (listed[0].clone(), None),
            (listed[1].clone(), None),
            (listed[2].clone(), Some(json!({"bulbsArray": []}))),
        ];
        let e = build("a@example.com", &listed, &answers).unwrap_err();
        assert_eq!(
            e,
            ExportError::NoHomes {
                email: "a@example.com".into()
            }
        );
        assert!(e.to_string().contains("no named home with devices"));
        // An unnamed home with devices gets a name.
        let answers = vec![(
            listed[0].clone(),
            Some(json!({"bulbsArray": [{"deviceID": 1005, "displayName": "A", "deviceType": 68}]})),
        )];
        let Export { file, notes } = build("a@example.com", &listed, &answers).unwrap();
        assert_eq!(file.homes[0].name, "Home 1");
        assert!(
            notes.iter().any(|n| n.contains("without a name")),
            "{notes:?}"
        );
    }

    #[test]
    fn device_ids_split_into_mesh_ids_and_outlets() {
        assert_eq!(split_device_id(1234567890002, 1234567890), (2, None));
        assert_eq!(split_device_id(1234567890002006, 1234567890), (6, Some(2)));
        assert_eq!(split_device_id(1234567005, 0), (5, None));
        assert_eq!(split_device_id(7, 1234567890), (7, None));
    }
}
