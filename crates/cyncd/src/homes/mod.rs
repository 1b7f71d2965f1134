//! Homes: the user's homes, device names, types, rooms and MACs, from the Cync account
//! ([`cloud`], [`export`]), from the Python controllers' `cync_mesh.yaml` ([`mesh_yaml`]) or
//! from the configuration, and which home a bridge belongs to.
//!
//! Owns: the homes file in the state directory ([`mod@file`]), the Cync account client
//! ([`cloud`]), and [`Homes`], the merged view every other layer reads: the configuration's
//! `[[homes]]` over the homes file, value by value (the configuration wins where both set one).
//! The view is swapped whole ([`HomesCell`]) when the page's setup screen saves a new export.
//!
//! A bridge's home, in order ([`Homes::home_of_bridge`], [`Homes::match_mesh`]): a home that
//! lists its id (the configuration's `bridges`, or the ids the account gives its Wi-Fi devices);
//! else, once it has sent its mesh listing, the home whose devices that listing (mesh ids, its
//! own type) matches best — among the homes whose bridges the configuration does not list: a
//! home with configured bridges takes no other (a stranger's bridge cannot talk its way into
//! it). Until then, and where two homes match equally, the bridge is in home
//! [`DEFAULT_HOME`], and the log says to list it in the configuration.
//!
//! May import `config`, `state` and `logging`; must not import `devices`, `commands`, `frontends`, `cli`
//! or `serve` (it sits beside `config`, below all of them).

pub mod cloud;
pub mod export;
pub mod file;
pub mod mesh_yaml;

use crate::config::DEFAULT_HOME;
use cync_proto::ConnId;
use cync_proto::catalog::DeviceType;
use file::HomesFile;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// One home as every layer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Home {
    /// Name.
    pub name: String,
    /// Bridge ids listed for this home (configuration first, then the account's).
    pub bridges: Vec<ConnId>,
    /// Devices, by mesh id in the order of their sources.
    pub devices: Vec<Device>,
    /// Rooms and groups.
    pub groups: Vec<Group>,
    /// The configuration lists this home's bridges: no other bridge joins it by its mesh.
    pub closed: bool,
}

/// One device's names and facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Mesh id.
    pub id: u16,
    /// Name shown to people.
    pub name: String,
    /// Cync device-type code.
    pub kind: Option<u8>,
    /// Its room: the configuration's `room`, else the first room (non-subgroup group) that
    /// lists it.
    pub room: Option<String>,
    /// Bluetooth MAC (12 hex digits).
    pub mac: Option<String>,
    /// Wi-Fi MAC of a Wi-Fi device.
    pub wifi_mac: Option<String>,
    /// Firmware version from the account.
    pub firmware: Option<String>,
    /// False: hidden from the API, the page and Home Assistant.
    pub enabled: bool,
    /// Names of a multi-outlet plug's outlets, outlet 1 first (may be empty).
    pub outlets: Vec<String>,
    /// Its own id as a bridge, when the account names it.
    pub bridge: Option<ConnId>,
}

/// A room or group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Group id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Member mesh ids.
    pub members: Vec<u16>,
    /// A room (the app's top-level groups, and configured groups unless `room = false`).
    pub room: bool,
}

/// Where a bridge's listing in a home comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// The configuration's `bridges`.
    Configuration,
    /// The account (the homes file).
    Account,
}

/// What a bridge's mesh listing says about its home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshMatch<'a> {
    /// One home matches best.
    One(&'a str),
    /// Several homes match equally well.
    Several(Vec<&'a str>),
    /// No home has the bridge's own device.
    None,
}

/// The merged homes: the configuration over the homes file.
#[derive(Default)]
pub struct Homes {
    homes: Vec<Home>,
    /// Home name → (home index, mesh id → device index): looked up by `&str` on every view
    /// of every device, so without building a key.
    index: HashMap<String, (usize, HashMap<u16, usize>)>,
    /// Bridge id → (home index, where the listing comes from).
    bridges: HashMap<ConnId, (usize, Listed)>,
    /// Auth codes of Wi-Fi devices from the account (secrets; never in `Debug`).
    auth: Vec<(ConnId, String)>,
}

impl std::fmt::Debug for Homes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Homes")
            .field("homes", &self.homes)
            .field("auth_codes", &self.auth.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Homes {
    fn eq(&self, other: &Self) -> bool {
        self.homes == other.homes && self.auth == other.auth
    }
}

/// Why the homes cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HomesError {
    /// The homes file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] file::FileError),
}

impl Homes {
    /// The configuration's homes over the homes file of its state directory, and one line per
    /// home saying which source gave what (for the log).
    pub fn load(config: &crate::config::Config) -> Result<(Self, Vec<String>), HomesError> {
        let file = HomesFile::load(&config.state_dir)?;
        Ok(Self::merge(&config.homes, file.as_ref()))
    }

    /// The configuration's homes over `file`, value by value: a name, type, room or `enabled`
    /// the configuration sets wins; a configured group replaces the file's group of that id;
    /// bridge lists are joined. Also returns one line per home saying what came from where.
    pub fn merge(config: &[crate::config::Home], file: Option<&HomesFile>) -> (Self, Vec<String>) {
        let mut homes: Vec<Home> = Vec::new();
        let mut listed: Vec<(ConnId, String, Listed)> = Vec::new();
        let mut auth = Vec::new();
        let mut from_file: HashMap<String, (usize, usize)> = HashMap::new();
        if let Some(f) = file {
            for h in &f.homes {
                let mut home = Home {
                    name: h.name.clone(),
                    bridges: Vec::new(),
                    devices: Vec::new(),
                    groups: Vec::new(),
                    closed: false,
                };
                for b in &h.bridges {
                    if let Some(id) = ConnId::from_hex(b) {
                        listed.push((id, h.name.clone(), Listed::Account));
                    }
                }
                for d in &h.devices {
                    let bridge = d.bridge.as_deref().and_then(ConnId::from_hex);
                    if let Some(id) = bridge {
                        listed.push((id, h.name.clone(), Listed::Account));
                        if let Some(code) = &d.auth_code {
                            auth.push((id, code.clone()));
                        }
                    }
                    home.devices.push(Device {
                        id: d.id,
                        name: d.name.clone(),
                        kind: d.kind,
                        room: None,
                        mac: d.mac.clone(),
                        wifi_mac: d.wifi_mac.clone(),
                        firmware: d.firmware.clone(),
                        enabled: d.enabled,
                        outlets: d.outlets.clone(),
                        bridge,
                    });
                }
                for g in &h.groups {
                    home.groups.push(Group {
                        id: g.id,
                        name: g.name.clone(),
                        members: g.members.clone(),
                        room: !g.subgroup,
                    });
                }
                from_file.insert(
                    h.name.clone(),
                    (
                        home.devices.len(),
                        home.groups.iter().filter(|g| g.room).count(),
                    ),
                );
                homes.push(home);
            }
        }
        let mut notes = Vec::new();
        let source = file.map(|f| format!("{} ({})", file::HOMES_FILE, f.source));
        if let (Some(src), Some(f)) = (&source, file) {
            notes.push(format!(
                "{src}: {} homes, {} devices and {} rooms",
                f.homes.len(),
                f.device_count(),
                f.room_count()
            ));
        }
        for c in config {
            let at = match homes.iter().position(|h| h.name == c.name) {
                Some(i) => i,
                None => {
                    homes.push(Home {
                        name: c.name.clone(),
                        bridges: Vec::new(),
                        devices: Vec::new(),
                        groups: Vec::new(),
                        closed: false,
                    });
                    homes.len() - 1
                }
            };
            let Some(home) = homes.get_mut(at) else {
                continue;
            };
            home.closed = !c.bridges.is_empty();
            for b in &c.bridges {
                if let Some(id) = ConnId::from_hex(b) {
                    listed.push((id, c.name.clone(), Listed::Configuration));
                }
            }
            let mut overridden = 0usize;
            for d in &c.devices {
                match home.devices.iter_mut().find(|x| x.id == d.id) {
                    Some(x) => {
                        if let Some(name) = &d.name {
                            overridden += usize::from(*name != x.name);
                            x.name = name.clone();
                        }
                        if d.kind.is_some() {
                            overridden += usize::from(d.kind != x.kind);
                            x.kind = d.kind;
                        }
                        if d.room.is_some() {
                            x.room = d.room.clone();
                        }
                        if let Some(enabled) = d.enabled {
                            x.enabled = enabled;
                        }
                    }
                    None => home.devices.push(Device {
                        id: d.id,
                        name: d.name.clone().unwrap_or_else(|| format!("device {}", d.id)),
                        kind: d.kind,
                        room: d.room.clone(),
                        mac: None,
                        wifi_mac: None,
                        firmware: None,
                        enabled: d.enabled.unwrap_or(true),
                        outlets: Vec::new(),
                        bridge: None,
                    }),
                }
            }
            for g in &c.groups {
                let group = Group {
                    id: g.id,
                    name: g.name.clone(),
                    members: g.members.clone(),
                    room: true,
                };
                match home.groups.iter_mut().find(|x| x.id == g.id) {
                    Some(x) => {
                        let room = g.room.unwrap_or(x.room);
                        *x = Group { room, ..group };
                    }
                    None => home.groups.push(Group {
                        room: g.room.unwrap_or(true),
                        ..group
                    }),
                }
            }
            let line = match (&source, from_file.get(&c.name)) {
                (Some(src), Some((devices, rooms))) => format!(
                    "home {:?}: {devices} devices and {rooms} rooms from {src}; {} devices and {} groups in the configuration, which changed {overridden} values",
                    c.name,
                    c.devices.len(),
                    c.groups.len()
                ),
                _ => format!(
                    "home {:?}: {} devices and {} groups from the configuration",
                    c.name,
                    c.devices.len(),
                    c.groups.len()
                ),
            };
            notes.push(line);
        }
        if let (Some(src), Some(f)) = (&source, file) {
            for h in &f.homes {
                if !config.iter().any(|c| c.name == h.name) {
                    let (devices, rooms) = from_file.get(&h.name).copied().unwrap_or_default();
                    notes.push(format!(
                        "home {:?}: {devices} devices and {rooms} rooms from {src}",
                        h.name
                    ));
                }
            }
        }
        // Rooms: what the configuration says, else the first room that lists the device.
        for home in &mut homes {
            let rooms: Vec<(String, Vec<u16>)> = home
                .groups
                .iter()
                .filter(|g| g.room)
                .map(|g| (g.name.clone(), g.members.clone()))
                .collect();
            for d in &mut home.devices {
                if d.room.is_none() {
                    d.room = rooms
                        .iter()
                        .find(|(_, members)| members.contains(&d.id))
                        .map(|(name, _)| name.clone());
                }
            }
        }
        // Bridges: the configuration's listing wins over the account's.
        listed.sort_by_key(|(_, _, l)| *l != Listed::Configuration);
        let mut bridges = HashMap::new();
        for (id, name, how) in listed {
            let Some(i) = homes.iter().position(|h| h.name == name) else {
                continue;
            };
            match bridges.get(&id) {
                Some((j, _)) if *j != i => {
                    let other = homes.get(*j).map_or("", |h: &Home| h.name.as_str());
                    notes.push(format!(
                        "bridge {id} is listed in homes {other:?} and {name:?}; it belongs to {other:?} (the configuration decides)"
                    ));
                }
                Some(_) => {}
                None => {
                    bridges.insert(id, (i, how));
                    if let Some(h) = homes.get_mut(i) {
                        if !h.bridges.contains(&id) {
                            h.bridges.push(id);
                        }
                    }
                }
            }
        }
        let index = homes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let ids = h
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(j, d)| (d.id, j))
                    .collect();
                (h.name.clone(), (i, ids))
            })
            .collect();
        (
            Self {
                homes,
                index,
                bridges,
                auth,
            },
            notes,
        )
    }

    /// Every home.
    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// One home by name.
    pub fn home(&self, name: &str) -> Option<&Home> {
        self.homes.iter().find(|h| h.name == name)
    }

    /// A device's names and facts.
    pub fn device(&self, home: &str, id: u16) -> Option<&Device> {
        let (i, ids) = self.index.get(home)?;
        self.homes.get(*i)?.devices.get(*ids.get(&id)?)
    }

    /// The members of a group (empty when there is no such group).
    pub fn group_members(&self, home: &str, gid: u16) -> &[u16] {
        self.home(home)
            .and_then(|h| h.groups.iter().find(|g| g.id == gid))
            .map_or(&[], |g| g.members.as_slice())
    }

    /// The home that lists a bridge, and where the listing comes from.
    pub fn home_of_bridge(&self, conn: ConnId) -> Option<(&str, Listed)> {
        let (i, how) = self.bridges.get(&conn)?;
        Some((self.homes.get(*i)?.name.as_str(), *how))
    }

    /// The home of a bridge at its hello: the home that lists it, else [`DEFAULT_HOME`] (until
    /// its mesh listing tells, see [`Homes::match_mesh`]).
    pub fn home_at_hello(&self, conn: ConnId) -> &str {
        self.home_of_bridge(conn)
            .map_or(DEFAULT_HOME, |(home, _)| home)
    }

    /// The home whose devices a bridge's mesh listing matches best, among the homes whose
    /// bridges the configuration does not list: its own device (`ids[0]`) must be in the home,
    /// with the same type when both are known; among those, the most shared ids against the
    /// fewest unshared (Jaccard), ties being [`MeshMatch::Several`].
    pub fn match_mesh(&self, own_type: Option<u8>, ids: &[u16]) -> MeshMatch<'_> {
        let Some(own) = ids.first() else {
            return MeshMatch::None;
        };
        let listed: BTreeSet<u16> = ids.iter().copied().collect();
        // (shared, union) per candidate; compared as fractions without floats.
        let mut best: Vec<(&str, usize, usize)> = Vec::new();
        for h in self.homes.iter().filter(|h| !h.closed) {
            let Some(d) = h.devices.iter().find(|d| d.id == *own) else {
                continue;
            };
            if let (Some(a), Some(b)) = (own_type, d.kind) {
                if a != b {
                    continue;
                }
            }
            let theirs: BTreeSet<u16> = h.devices.iter().map(|d| d.id).collect();
            let shared = listed.intersection(&theirs).count();
            let union = listed.union(&theirs).count().max(1);
            let candidate = (h.name.as_str(), shared, union);
            match best.first() {
                None => best.push(candidate),
                Some((_, s, u)) => {
                    let (lhs, rhs) = (shared * u, s * union);
                    if lhs > rhs {
                        best = vec![candidate];
                    } else if lhs == rhs {
                        best.push(candidate);
                    }
                }
            }
        }
        match best.as_slice() {
            [] => MeshMatch::None,
            [(one, _, _)] => MeshMatch::One(one),
            many => MeshMatch::Several(many.iter().map(|(n, _, _)| *n).collect()),
        }
    }

    /// The mesh ids each home names (its devices and its groups' members): the devices a bridge
    /// may always speak for.
    pub fn named(&self) -> HashMap<String, std::collections::HashSet<u16>> {
        self.homes
            .iter()
            .map(|h| {
                let ids = h
                    .devices
                    .iter()
                    .map(|d| d.id)
                    .chain(h.groups.iter().flat_map(|g| g.members.iter().copied()))
                    .collect();
                (h.name.clone(), ids)
            })
            .collect()
    }

    /// Device-type codes the type table does not know: (home, code, device names).
    pub fn unknown_types(&self) -> Vec<(&str, u8, Vec<&str>)> {
        let mut out: Vec<(&str, u8, Vec<&str>)> = Vec::new();
        for h in &self.homes {
            for d in &h.devices {
                let Some(code) = d.kind.filter(|c| !DeviceType::of(Some(*c)).is_known()) else {
                    continue;
                };
                match out.iter_mut().find(|(n, c, _)| *n == h.name && *c == code) {
                    Some((_, _, names)) => names.push(&d.name),
                    None => out.push((&h.name, code, vec![&d.name])),
                }
            }
        }
        out
    }

    /// The auth codes of Wi-Fi devices the account gave, by bridge id (secrets), for the device
    /// authentication's account pins.
    pub fn auth_codes(&self) -> Vec<(ConnId, cync_proto::AuthCode)> {
        self.auth
            .iter()
            .map(|(id, code)| (*id, cync_proto::AuthCode::new(code.as_bytes().to_vec())))
            .collect()
    }
}

/// The current [`Homes`], replaced whole when a new export is saved (readers keep the `Arc`
/// they took; a replacement never tears a read).
#[derive(Debug, Default)]
pub struct HomesCell {
    current: RwLock<Arc<Homes>>,
}

impl HomesCell {
    /// A cell holding `homes`.
    pub fn new(homes: Homes) -> Self {
        Self {
            current: RwLock::new(Arc::new(homes)),
        }
    }

    /// The current homes.
    pub fn get(&self) -> Arc<Homes> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the homes.
    pub fn set(&self, homes: Homes) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(homes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config;
    use file::{DeviceRecord, GroupRecord, HomeRecord};
    use serde_json::Map;

    fn device(id: u16, name: &str, kind: u8) -> DeviceRecord {
        DeviceRecord {
            id,
            name: name.into(),
            kind: Some(kind),
            mac: None,
            wifi_mac: None,
            firmware: None,
            enabled: true,
            outlets: vec![],
            bridge: None,
            auth_code: None,
            extra: Map::new(),
        }
    }

    fn home(name: &str, devices: Vec<DeviceRecord>, groups: Vec<GroupRecord>) -> HomeRecord {
        HomeRecord {
            name: name.into(),
            id: None,
            bridges: vec![],
            devices,
            groups,
            extra: Map::new(),
        }
    }

    fn group(id: u16, name: &str, members: &[u16], subgroup: bool) -> GroupRecord {
        GroupRecord {
            id,
            name: name.into(),
            members: members.to_vec(),
            subgroup,
            extra: Map::new(),
        }
    }

    fn file() -> HomesFile {
        let mut f = HomesFile::new("test");
        let mut lamp = device(1, "Lamp", 137);
        lamp.bridge = Some("0a0b0c0d".into());
        lamp.auth_code = Some("0123456789abcdef".into());
        f.homes = vec![
            home(
                "Main",
                vec![lamp, device(2, "Plug", 68), device(3, "Fan", 81)],
                vec![
                    group(32769, "Kitchen", &[1, 2], false),
                    group(32770, "Lamps", &[1], true),
                ],
            ),
            home(
                "Cabin",
                vec![device(1, "Porch", 68), device(2, "Lamp", 5)],
                vec![],
            ),
        ];
        f
    }

    #[test]
    fn the_configuration_wins_value_by_value() {
        let config = vec![config::Home {
            name: "Main".into(),
            bridges: vec!["01020304".into(), "0a0b0c0d".into()],
            devices: vec![
                config::DeviceConfig {
                    id: 2,
                    name: Some("Coffee maker".into()),
                    kind: None,
                    room: None,
                    enabled: None,
                },
                config::DeviceConfig {
                    id: 3,
                    name: None,
                    kind: None,
                    room: Some("Porch".into()),
                    enabled: Some(false),
                },
                config::DeviceConfig {
                    id: 9,
                    name: None,
                    kind: Some(68),
                    room: None,
                    enabled: None,
                },
            ],
            groups: vec![],
        }];
        let (homes, notes) = Homes::merge(&config, Some(&file()));
        let plug = homes.device("Main", 2).unwrap();
        assert_eq!((plug.name.as_str(), plug.kind), ("Coffee maker", Some(68)));
        assert_eq!(plug.room.as_deref(), Some("Kitchen"));
        let fan = homes.device("Main", 3).unwrap();
        assert_eq!(
            (fan.name.as_str(), fan.room.as_deref()),
            ("Fan", Some("Porch"))
        );
        assert!(!fan.enabled);
        assert_eq!(homes.device("Main", 9).unwrap().name, "device 9");
        // A subgroup is not a room.
        assert_eq!(
            homes.device("Main", 1).unwrap().room.as_deref(),
            Some("Kitchen")
        );
        assert_eq!(homes.device("Cabin", 1).unwrap().room, None);
        assert_eq!(
            homes.home_of_bridge(ConnId([1, 2, 3, 4])),
            Some(("Main", Listed::Configuration))
        );
        assert_eq!(
            homes
                .home_of_bridge(ConnId([10, 11, 12, 13]))
                .map(|(h, _)| h),
            Some("Main")
        );
        assert_eq!(homes.auth_codes().len(), 1);
        assert!(!format!("{homes:?}").contains("0123456789abcdef"));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("2 homes, 5 devices and 1 rooms"),
            "{notes:?}"
        );
        assert!(notes[1].contains("changed 1 values"), "{notes:?}");
    }

    #[test]
    fn a_bridge_finds_its_home_by_its_mesh() {
        let (homes, _) = Homes::merge(&[], Some(&file()));
        assert_eq!(
            homes.match_mesh(Some(137), &[1, 2, 3]),
            MeshMatch::One("Main")
        );
        assert_eq!(homes.match_mesh(Some(68), &[1, 2]), MeshMatch::One("Cabin"));
        assert_eq!(homes.match_mesh(None, &[2, 1]), MeshMatch::One("Cabin"));
        // The bridge's own device alone: the smaller home shares a larger part.
        assert_eq!(homes.match_mesh(None, &[1]), MeshMatch::One("Cabin"));
        let mut twins = file();
        let mut twin = twins.homes[1].clone();
        twin.name = "Twin".into();
        twins.homes.push(twin);
        let (twins, _) = Homes::merge(&[], Some(&twins));
        assert_eq!(
            twins.match_mesh(Some(68), &[1, 2]),
            MeshMatch::Several(vec!["Cabin", "Twin"])
        );
        assert_eq!(homes.match_mesh(Some(30), &[1, 2]), MeshMatch::None);
        assert_eq!(homes.match_mesh(None, &[]), MeshMatch::None);
        assert_eq!(homes.home_at_hello(ConnId([9, 9, 9, 9])), DEFAULT_HOME);
        assert_eq!(homes.home_at_hello(ConnId([10, 11, 12, 13])), "Main");
        // A home whose bridges the configuration lists takes no other by its mesh.
        let closed = vec![config::Home {
            name: "Main".into(),
            bridges: vec!["01020304".into()],
            devices: vec![],
            groups: vec![],
        }];
        let (homes, _) = Homes::merge(&closed, Some(&file()));
        assert_eq!(homes.match_mesh(Some(137), &[1, 2, 3]), MeshMatch::None);
        assert_eq!(homes.match_mesh(Some(68), &[1, 2]), MeshMatch::One("Cabin"));
    }

    #[test]
    fn unknown_type_codes_are_listed_once_per_home_and_code() {
        let mut f = file();
        f.homes[0].devices.push(device(7, "Mystery", 250));
        f.homes[0].devices.push(device(8, "Mystery 2", 250));
        let (homes, _) = Homes::merge(&[], Some(&f));
        assert_eq!(
            homes.unknown_types(),
            vec![("Main", 250, vec!["Mystery", "Mystery 2"])]
        );
    }

    #[test]
    fn a_cell_swaps_whole_views() {
        let cell = HomesCell::new(Homes::default());
        let before = cell.get();
        cell.set(Homes::merge(&[], Some(&file())).0);
        assert_eq!(before.homes().len(), 0);
        assert_eq!(cell.get().homes().len(), 2);
    }
}
