//! The factory effects lights run, kept across restarts: a device's reports say only that it
//! runs *an* effect (temperature byte 129), so the name cyncd learnt from the command that
//! started it is written to `effects.json` in the state directory and given back to the
//! registry at start ([`Registry::remember_effects`]), where a device's first report that still
//! shows an effect takes it.
//!
//! The file is written whole ([`crate::state::write_atomic`], mode 0600) at most every
//! [`SAVE_DELAY`] while the effects change, and once at shutdown. Bounds: at most
//! [`super::registry::MAX_DEVICES`] entries are read, from at most [`MAX_FILE_BYTES`]; an
//! unreadable or malformed file is logged and ignored.

use super::registry::{MAX_DEVICES, Registry};
use crate::state;
use cync_proto::Effect;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// The file's name in the state directory.
pub const FILE: &str = "effects.json";
/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Shortest time between two writes.
pub const SAVE_DELAY: Duration = Duration::from_secs(1);

/// Reads the effects saved in `dir` (`home:mesh_id` → effect name) into the registry.
pub fn load(dir: &Path, registry: &Registry) {
    let path = dir.join(FILE);
    let bytes = match state::read_bounded(&path, MAX_FILE_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "could not read the saved effects; ignored");
            return;
        }
    };
    let Ok(saved) = serde_json::from_slice::<BTreeMap<String, String>>(&bytes) else {
        warn!(file = %path.display(), "the saved effects are not a JSON object of names; ignored");
        return;
    };
    let effects: HashMap<(String, u16), Effect> = saved
        .iter()
        .filter_map(|(id, name)| {
            let (home, mesh) = id.rsplit_once(':')?;
            Some((
                (home.to_string(), mesh.parse().ok()?),
                Effect::from_name(name)?,
            ))
        })
        .take(MAX_DEVICES)
        .collect();
    registry.remember_effects(effects);
}

/// Writes the effects to `dir` whenever they change (at most every [`SAVE_DELAY`]) until
/// `cancel` fires, then once more.
pub async fn keep(registry: Registry, dir: PathBuf, cancel: CancellationToken) {
    let mut changes = registry.watch();
    let mut written = registry.effects();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(SAVE_DELAY) => {}
        }
        let now = registry.effects();
        if now != written {
            let (dir, saving) = (dir.clone(), now.clone());
            let saved = tokio::task::spawn_blocking(move || save(&dir, &saving)).await;
            if let Ok(Err(e)) = saved {
                error!(error = %e, "could not save the running effects");
            }
            written = now;
        }
    }
    let now = registry.effects();
    if now != written {
        if let Err(e) = save(&dir, &now) {
            error!(error = %e, "could not save the running effects");
        }
    }
}

fn save(dir: &Path, effects: &BTreeMap<String, &'static str>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(effects).unwrap_or_default();
    state::write_atomic(&dir.join(FILE), &bytes, 0o600)
}
