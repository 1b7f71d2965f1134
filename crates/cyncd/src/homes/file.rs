//! The homes file: cyncd's own record of the user's homes, written by `cyncd account export`,
//! `cyncd account import` and the page's setup screen, read by `cyncd serve`.
//!
//! JSON (`homes.json` in the state directory), one object:
//!
//! ```json
//! {"version": 1, "source": "Cync account a@example.com", "written": "2026-…Z",
//!  "homes": [{"name": "Lake House", "id": 1234567890, "bridges": ["6efe8cbe"],
//!             "devices": [{"id": 5, "name": "Kitchen Lamp", "type": 137, "mac": "A4C1380D1E2F",
//!                          "wifi_mac": "A4C1380D1E30", "firmware": "1.0.340", "enabled": true,
//!                          "outlets": [], "bridge": "6efe8cbe", "extra": {…}}],
//!             "groups": [{"id": 32769, "name": "Kitchen", "members": [5, 7], "subgroup": false}],
//!             "extra": {…}}],
//!  "extra": {…}}
//! ```
//!
//! What the source had that cyncd does not use is kept under `extra` (per file, home, device and
//! group), so nothing of the user's data is lost on the way. The file may hold the Wi-Fi
//! devices' auth codes (`auth_code`, from the account): it is written with mode 0600.
//!
//! Writing ([`HomesFile::save`]): the current file is first written as `homes.json.previous`,
//! then the new one, each whole through a temporary file and a rename
//! ([`crate::state::write_atomic`]) — so `homes.json` is always either the old or the new
//! version, and the version before the last write is kept. Reading is bounded
//! ([`MAX_FILE_BYTES`]) and a file that does not parse or breaks a rule ([`HomesFile::check`])
//! is an error that names the
//! file and what to do, never silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The file's name in the state directory.
pub const HOMES_FILE: &str = "homes.json";
/// The version before the last write, beside it.
pub const PREVIOUS_FILE: &str = "homes.json.previous";
/// The format version written.
pub const VERSION: u32 = 1;
/// Largest homes file read; a larger one is refused (a home of 1,000 devices takes ~300 KB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Most homes kept.
pub const MAX_HOMES: usize = 64;
/// Most devices kept per home (a mesh has at most 255 ids; outlets and history add some).
pub const MAX_DEVICES_PER_HOME: usize = 1024;
/// Most groups kept per home.
pub const MAX_GROUPS_PER_HOME: usize = 1024;
/// Longest home, device, group or outlet name kept, in characters (longer ones are cut).
pub const MAX_NAME: usize = 100;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomesFile {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Where the data came from, for people ("Cync account a@example.com", "cync_mesh.yaml …").
    #[serde(default)]
    pub source: String,
    /// When it was written (RFC 3339).
    #[serde(default)]
    pub written: String,
    /// The homes.
    #[serde(default)]
    pub homes: Vec<HomeRecord>,
    /// Top-level keys of the source cyncd does not use.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// One home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeRecord {
    /// Name as in the Cync app.
    pub name: String,
    /// The account's id of the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Ids (8 hex digits, as in their hellos) of the home's Wi-Fi devices, when the account
    /// names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<String>,
    /// Devices by mesh id.
    #[serde(default)]
    pub devices: Vec<DeviceRecord>,
    /// Rooms and groups.
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// Keys of the source cyncd does not use.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Mesh id.
    pub id: u16,
    /// Name as in the Cync app.
    pub name: String,
    /// Cync device-type code.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    /// Bluetooth MAC, 12 upper-case hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Wi-Fi MAC of a Wi-Fi device, 12 upper-case hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wifi_mac: Option<String>,
    /// Firmware version as the app shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// False hides the device (the app's or the user's choice).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Names of a multi-outlet plug's outlets, outlet 1 first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlets: Vec<String>,
    /// The device's own id as a bridge (8 hex digits), when it is a Wi-Fi device the account
    /// names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The 16-character auth code of a Wi-Fi device, when the account gives it (a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    /// Keys of the source cyncd does not use.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// One room (a group that is not a subgroup) or group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Group id on the mesh.
    pub id: u16,
    /// Name as in the app.
    pub name: String,
    /// Member mesh ids.
    #[serde(default)]
    pub members: Vec<u16>,
    /// A group inside a room rather than a room.
    #[serde(default)]
    pub subgroup: bool,
    /// Keys of the source cyncd does not use.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// Why the homes file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes; it is not a homes file cyncd wrote")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not the format.
    #[error(
        "{path} is not a valid homes file ({why}); restore {PREVIOUS_FILE} beside it, or export or import again"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl HomesFile {
    /// An empty file from `source`, stamped now.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            version: VERSION,
            source: source.into(),
            written: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            homes: Vec::new(),
            extra: Map::new(),
        }
    }

    /// The homes file of a state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(HOMES_FILE)
    }

    /// Reads the homes file of `state_dir`; `Ok(None)` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, FileError> {
        let path = Self::path(state_dir);
        let Some(bytes) = read_bounded(&path)? else {
            return Ok(None);
        };
        Self::parse(&bytes)
            .map(Some)
            .map_err(|why| FileError::Invalid { path, why })
    }

    /// Parses and checks the file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.version != VERSION {
            return Err(format!(
                "version {} (this cyncd reads version {VERSION})",
                file.version
            ));
        }
        file.check()?;
        Ok(file)
    }

    /// The rules a homes file keeps: at most [`MAX_HOMES`] homes with distinct, non-empty names;
    /// within a home, distinct mesh ids and group ids within their bounds; bridge ids of 8 hex
    /// digits.
    pub fn check(&self) -> Result<(), String> {
        if self.homes.len() > MAX_HOMES {
            return Err(format!("more than {MAX_HOMES} homes"));
        }
        let mut names = std::collections::HashSet::new();
        for home in &self.homes {
            if home.name.trim().is_empty() {
                return Err("a home without a name".into());
            }
            if !names.insert(home.name.as_str()) {
                return Err(format!("home {:?} appears twice", home.name));
            }
            if home.devices.len() > MAX_DEVICES_PER_HOME || home.groups.len() > MAX_GROUPS_PER_HOME
            {
                return Err(format!(
                    "home {:?} has too many devices or groups",
                    home.name
                ));
            }
            let mut ids = std::collections::HashSet::new();
            for d in &home.devices {
                if !ids.insert(d.id) {
                    return Err(format!(
                        "home {:?}: mesh id {} appears twice",
                        home.name, d.id
                    ));
                }
            }
            let mut gids = std::collections::HashSet::new();
            for g in &home.groups {
                if !gids.insert(g.id) {
                    return Err(format!(
                        "home {:?}: group {} appears twice",
                        home.name, g.id
                    ));
                }
            }
            let bridges = home
                .bridges
                .iter()
                .chain(home.devices.iter().filter_map(|d| d.bridge.as_ref()));
            for b in bridges {
                if cync_proto::ConnId::from_hex(b).is_none() {
                    return Err(format!(
                        "home {:?}: bridge {b:?} is not 8 hex digits",
                        home.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the file into `state_dir` (created 0700 when missing): through a temporary file
    /// and a rename, after copying the current version to [`PREVIOUS_FILE`]. Nothing is written
    /// when the file breaks a rule.
    pub fn save(&self, state_dir: &Path) -> Result<PathBuf, FileError> {
        let path = Self::path(state_dir);
        self.check().map_err(|why| FileError::Invalid {
            path: path.clone(),
            why,
        })?;
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| FileError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_private(state_dir, HOMES_FILE, &bytes, Some(PREVIOUS_FILE))?;
        Ok(path)
    }

    /// Devices over all homes.
    pub fn device_count(&self) -> usize {
        self.homes.iter().map(|h| h.devices.len()).sum()
    }

    /// Rooms (groups that are not subgroups) over all homes.
    pub fn room_count(&self) -> usize {
        self.homes
            .iter()
            .map(|h| h.groups.iter().filter(|g| !g.subgroup).count())
            .sum()
    }
}

/// A name as kept: trimmed, control characters removed, at most [`MAX_NAME`] characters.
pub fn clean_name(name: &str) -> String {
    name.trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect()
}

/// A MAC as kept: 12 upper-case hex digits, from `A4C1380D1E2F`, `a4:c1:38:0d:1e:2f` or
/// `A4-C1-…`; `None` for anything else.
pub fn clean_mac(text: &str) -> Option<String> {
    let digits: String = text
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    (digits.len() == 12 && digits.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| digits.to_ascii_uppercase())
}

/// Reads a whole file of at most [`MAX_FILE_BYTES`]; `Ok(None)` when it does not exist.
pub(crate) fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    crate::state::read_bounded(path, MAX_FILE_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::InvalidData {
            FileError::TooLarge {
                path: path.to_path_buf(),
            }
        } else {
            FileError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Writes `bytes` as the file `name` of `dir` (created 0700 when missing), mode 0600, whole
/// ([`crate::state::write_atomic`]); with `previous`, the current version is first written
/// under that name beside it, the same way.
pub(crate) fn write_private(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    previous: Option<&str>,
) -> Result<(), FileError> {
    let io = |path: PathBuf| move |source| FileError::Io { path, source };
    let path = dir.join(name);
    if let Some(previous) = previous {
        if let Some(old) = read_bounded(&path)? {
            let kept = dir.join(previous);
            crate::state::write_atomic(&kept, &old, 0o600).map_err(io(kept))?;
        }
    }
    crate::state::write_atomic(&path, bytes, 0o600).map_err(io(path.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cyncd-homes-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample(name: &str) -> HomesFile {
        let mut f = HomesFile::new("test");
        f.homes.push(HomeRecord {
            name: name.into(),
            id: Some(7),
            bridges: vec!["0a0b0c0d".into()],
            devices: vec![DeviceRecord {
                id: 5,
                name: "Lamp".into(),
                kind: Some(137),
                mac: Some("A4C1380D1E2F".into()),
                wifi_mac: None,
                firmware: Some("1.0.340".into()),
                enabled: true,
                outlets: vec![],
                bridge: None,
                auth_code: None,
                extra: Map::from_iter([("colour".to_string(), Value::from("blue"))]),
            }],
            groups: vec![GroupRecord {
                id: 32769,
                name: "Kitchen".into(),
                members: vec![5],
                subgroup: false,
                extra: Map::new(),
            }],
            extra: Map::new(),
        });
        f
    }

    #[test]
    fn saves_atomically_keeps_the_previous_version_and_reads_back() {
        let d = dir("save");
        let first = sample("One");
        first.save(&d).unwrap();
        assert!(!d.join(PREVIOUS_FILE).exists());
        let mode = std::fs::metadata(d.join(HOMES_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = sample("Two");
        second.save(&d).unwrap();
        assert_eq!(HomesFile::load(&d).unwrap().unwrap(), second);
        let previous = HomesFile::parse(&std::fs::read(d.join(PREVIOUS_FILE)).unwrap()).unwrap();
        assert_eq!(previous, first);
        assert!(!d.join(format!(".{HOMES_FILE}.tmp")).exists());
        // Unknown keys survive the round trip.
        assert_eq!(previous.homes[0].devices[0].extra["colour"], "blue");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_breaks_a_rule_is_refused_and_nothing_is_written() {
        let d = dir("bad");
        let good = sample("One");
        good.save(&d).unwrap();
        let mut twice = sample("One");
        twice.homes.push(twice.homes[0].clone());
        let e = twice.save(&d).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        assert_eq!(HomesFile::load(&d).unwrap().unwrap(), good);
        std::fs::write(d.join(HOMES_FILE), b"{\"version\": 1, \"homes\": 3}").unwrap();
        let e = HomesFile::load(&d).unwrap_err().to_string();
        assert!(
            e.contains("not a valid homes file") && e.contains(PREVIOUS_FILE),
            "{e}"
        );
        std::fs::write(d.join(HOMES_FILE), b"{\"version\": 9}").unwrap();
        let e = HomesFile::load(&d).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        assert!(HomesFile::load(&dir("missing")).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn names_and_macs_are_cleaned() {
        assert_eq!(clean_name("  Porch\u{7}  light "), "Porch  light");
        assert_eq!(clean_name(&"x".repeat(500)).len(), MAX_NAME);
        assert_eq!(
            clean_mac("78:6d:eb:28:ea:a4").as_deref(),
            Some("786DEB28EAA4")
        );
        assert_eq!(clean_mac("A4C1380D1E2F").as_deref(), Some("A4C1380D1E2F"));
        assert_eq!(clean_mac("A4C1380D1E2"), None);
        assert_eq!(clean_mac("G4C1380D1E2F"), None);
    }
}
