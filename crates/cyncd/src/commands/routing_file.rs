//! The routing that survives a restart: `routing.json` in the state directory.
//!
//! What a person changes at run time (`PUT /api/canary`, a reloaded configuration) and what an
//! automatic rollback decides (the percentage at 0 and its latch) is written here at every change,
//! whole and atomically ([`crate::state::write_atomic`], mode 0600). The file also records the
//! configuration's own `[canary]` routing (mode, percent, kill) at that time. At the next start:
//!
//! - when the configuration's routing is what the file recorded, the saved routing and latch
//!   are restored: a restart never undoes a rollback that only a person raises again;
//! - when the configuration's routing was edited since, the configuration wins and the latch is
//!   lifted — editing the file is a person's decision, as it is for SIGHUP.
//!
//! A file that cannot be read is reported and ignored: the configuration's routing applies.

use super::canary::Rollback;
use crate::config::CanaryConfig;
use cync_proto::canary::{Mode, Policy};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file in the state directory.
pub const ROUTING_FILE: &str = "routing.json";
/// Largest routing file read.
const MAX_BYTES: u64 = 64 << 10;
const VERSION: u32 = 1;

/// Mode, percentage and kill switch, as written in the configuration and the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// `legacy`, `shadow`, `canary` or `reliable`.
    pub mode: String,
    /// Canary share, 0–100.
    pub percent: f64,
    /// Kill switch.
    pub kill: bool,
}

impl Routing {
    /// The routing of a `[canary]` section.
    pub fn of_config(c: &CanaryConfig) -> Self {
        Self {
            mode: c.mode.clone(),
            percent: c.percent,
            kill: c.kill,
        }
    }

    /// The routing of a policy.
    pub fn of_policy(p: &Policy) -> Self {
        Self {
            mode: p.mode.name().to_string(),
            percent: p.percent,
            kill: p.kill,
        }
    }

    /// The policy, when the routing is valid.
    pub fn policy(&self) -> Option<Policy> {
        let percent = self.percent;
        (percent.is_finite() && (0.0..=100.0).contains(&percent)).then_some(())?;
        Some(Policy {
            mode: Mode::from_name(&self.mode)?,
            percent,
            kill: self.kill,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    /// The configuration's routing when this was written.
    config: Routing,
    /// The routing in force.
    policy: Routing,
    /// The rollback latch.
    latched: Option<Rollback>,
}

/// The routing file of one state directory.
#[derive(Debug)]
pub struct RoutingFile {
    path: PathBuf,
    /// The configuration's routing as last read (at start or SIGHUP).
    config: Mutex<Routing>,
}

/// What [`RoutingFile::restore`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Restore {
    /// Nothing saved (a first start).
    Nothing,
    /// The saved routing and latch apply.
    Saved(Policy, Option<Rollback>),
    /// The configuration's routing changed since the file was written: it applies.
    ConfigChanged,
    /// The file could not be used (why); the configuration's routing applies.
    Unreadable(String),
}

impl RoutingFile {
    /// The routing file in `state_dir`, for a configuration whose routing is `config`.
    pub fn new(state_dir: &Path, config: Routing) -> Self {
        Self {
            path: state_dir.join(ROUTING_FILE),
            config: Mutex::new(config),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn config(&self) -> std::sync::MutexGuard<'_, Routing> {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What to start with (see the module documentation).
    pub fn restore(&self) -> Restore {
        let bytes = match crate::state::read_bounded(&self.path, MAX_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Restore::Nothing,
            Err(e) => return Restore::Unreadable(e.to_string()),
        };
        let saved: Saved = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return Restore::Unreadable(e.to_string()),
        };
        if saved.version != VERSION {
            return Restore::Unreadable(format!("version {}", saved.version));
        }
        if saved.config != *self.config() {
            return Restore::ConfigChanged;
        }
        match saved.policy.policy() {
            Some(policy) => Restore::Saved(policy, saved.latched),
            None => Restore::Unreadable(format!("invalid routing {:?}", saved.policy)),
        }
    }

    /// Records the configuration's routing after a reload (SIGHUP).
    pub fn reloaded(&self, config: Routing) {
        *self.config() = config;
    }

    /// Writes the routing in force and the latch.
    pub fn save(&self, policy: &Policy, latched: Option<&Rollback>) -> std::io::Result<()> {
        let saved = Saved {
            version: VERSION,
            config: self.config().clone(),
            policy: Routing::of_policy(policy),
            latched: latched.cloned(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        crate::state::write_atomic(&self.path, &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn routing(mode: &str, percent: f64) -> Routing {
        Routing {
            mode: mode.into(),
            percent,
            kill: false,
        }
    }

    #[test]
    fn saved_routing_applies_until_the_configuration_changes() {
        let dir = std::env::temp_dir().join(format!(
            "cyncd-routing-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = RoutingFile::new(&dir, routing("canary", 10.0));
        assert_eq!(file.restore(), Restore::Nothing);
        let rollback = Rollback {
            at: "2026-01-01T00:00:00.000Z".into(),
            slo: "command_success".into(),
            rule: "fast".into(),
            reason: "burn".into(),
            percent_before: 10.0,
        };
        let policy = routing("canary", 0.0).policy().unwrap();
        file.save(&policy, Some(&rollback)).unwrap();
        // Same configuration: the rollback stays.
        let again = RoutingFile::new(&dir, routing("canary", 10.0));
        assert_eq!(again.restore(), Restore::Saved(policy, Some(rollback)));
        // The configuration edited: it wins.
        let edited = RoutingFile::new(&dir, routing("canary", 5.0));
        assert_eq!(edited.restore(), Restore::ConfigChanged);
        // A reload records the new configuration routing with the next save.
        again.reloaded(routing("canary", 5.0));
        again.save(&policy, None).unwrap();
        assert_eq!(edited.restore(), Restore::Saved(policy, None));
        std::fs::write(dir.join(ROUTING_FILE), "{").unwrap();
        assert!(matches!(edited.restore(), Restore::Unreadable(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
