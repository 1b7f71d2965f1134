//! Device authentication: the auth code of a bridge's hello, checked against a pin.
//!
//! The 16-character code in the 0x23 hello is the one credential the protocol carries
//! (PROTOCOL.md §6.1): per device, from the Cync account, sent on every connection. cyncd keeps
//! one pin per bridge id and admits a hello only when its code matches:
//!
//! - **Configured** pins come from the configuration (`[device_auth] codes`) and win over
//!   everything else; **account** pins (the same, taken from the Cync account by an importer)
//!   enter through [`AuthStore::import`]. Neither is written to the state file: their source is.
//! - **First use** (trust on first use, on unless `[device_auth] first_use = false`): a bridge id
//!   with no pin is admitted once every other check passed, and its code is pinned then
//!   ([`AuthStore::pin`]). From then on only that code opens a session for that id.
//!
//! A missing (empty) or wrong code is refused ([`Refusal`]). A replaced device (new code, same
//! id) is let in again by forgetting its pin ([`AuthStore::forget`]: `cyncd devices forget`,
//! `DELETE /api/bridges/{id}/auth`).
//!
//! Storage: `device-auth.json` in the state directory, mode 0600, written whole through a
//! temporary file and a rename ([`crate::state::write_atomic`]), at most every [`SAVE_DELAY`]
//! (pins made in a burst, such as a whole home connecting after a restart, are written once).
//! Each pin is `sha256(salt ‖ id ‖ code)` with a random 16-byte salt per pin, never the code. The
//! codes carry 64 bits (16 hex digits), so a salted fast hash is out of reach of a brute force;
//! a slow KDF would make every hello, and every forged one, cost milliseconds of CPU. A file
//! that cannot be read stops the start (starting without it would trust every id anew).
//!
//! Bounds: at most [`MAX_PINS`] pins; when full, a new id is refused (`store_full`) rather than
//! an old pin evicted, since eviction would let a flood of invented ids unpin a real bridge.
//!
//! Limit of the model: devices do not verify the server's certificate, so anyone who can
//! intercept a device's connection (ARP or DNS spoofing on the LAN) can read its code; and a
//! first-use pin trusts whoever says hello first for an id.

use crate::state;
use cync_proto::{AuthCode, ConnId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The pin file in the state directory.
pub const AUTH_FILE: &str = "device-auth.json";
/// Most pins kept (a large home has a few hundred bridges; `cyncd sim` and load tests tens of
/// thousands); a new id beyond it is refused.
pub const MAX_PINS: usize = 65_536;
/// Largest pin file read (65,536 pins take about 9 MB).
const MAX_FILE_BYTES: u64 = 32 << 20;
/// New pins are written at most this long after they were made, together.
pub const SAVE_DELAY: Duration = Duration::from_millis(500);
const SALT_LEN: usize = 16;
const FILE_VERSION: u32 = 1;

/// Where a pin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinSource {
    /// The configuration file.
    Configured,
    /// The Cync account (an import).
    Account,
    /// The bridge's first hello.
    FirstUse,
}

impl PinSource {
    /// Where a person changes such a pin.
    pub fn origin(self) -> &'static str {
        match self {
            Self::Configured => "configuration",
            Self::Account => "account import",
            Self::FirstUse => "first hello",
        }
    }
}

/// Why a hello's code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hello carried no code.
    Empty,
    /// The code differs from the pin.
    Mismatch,
    /// No pin, and first use is off.
    Unpinned,
    /// No pin, and the store is full.
    Full,
}

impl Refusal {
    /// Every refusal, for pre-registering metric labels.
    pub const ALL: [Self; 4] = [Self::Empty, Self::Mismatch, Self::Unpinned, Self::Full];

    /// A stable label for logs and `cyncd_device_auth_failures_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Mismatch => "mismatch",
            Self::Unpinned => "unpinned",
            Self::Full => "store_full",
        }
    }
}

/// What [`AuthStore::check`] found for an acceptable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The code matches a pin of this source.
    Known(PinSource),
    /// No pin yet: admit on first use, then [`AuthStore::pin`] it.
    New,
}

/// What [`AuthStore::forget`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgot {
    /// The first-use pin was removed: the next hello for the id pins again.
    Removed,
    /// The pin comes from the configuration or the account and stays (change it there).
    Kept(PinSource),
    /// There was no pin.
    Unknown,
}

/// A pin store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a pin file.
    #[error(
        "{path} is not a valid pin file ({reason}); fix it, or remove it to pin every bridge again on first use"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Pin {
    salt: [u8; SALT_LEN],
    digest: [u8; 32],
    source: PinSource,
    since: String,
}

#[derive(Debug, Default)]
struct Pins {
    pins: HashMap<ConnId, Pin>,
    /// First-use pins changed since the last save.
    dirty: bool,
}

/// The pins, shared by every connection task (see the module documentation).
#[derive(Debug)]
pub struct AuthStore {
    /// `None`: kept in memory only (tests).
    path: Option<PathBuf>,
    first_use: bool,
    state: Mutex<Pins>,
    changed: Notify,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredFile {
    version: u32,
    pins: BTreeMap<String, StoredPin>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPin {
    salt: String,
    sha256: String,
    since: String,
}

impl AuthStore {
    /// Opens the pin file in `state_dir` (an absent file is an empty store).
    pub fn open(state_dir: &Path, first_use: bool) -> Result<Self, AuthError> {
        let path = state_dir.join(AUTH_FILE);
        let bytes =
            state::read_bounded(&path, MAX_FILE_BYTES).map_err(|source| AuthError::File {
                action: "read",
                path: path.clone(),
                source,
            })?;
        let mut pins = HashMap::new();
        if let Some(bytes) = bytes {
            let corrupt = |reason: String| AuthError::Corrupt {
                path: path.clone(),
                reason,
            };
            let file: StoredFile =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if file.version != FILE_VERSION {
                return Err(corrupt(format!("version {}", file.version)));
            }
            if file.pins.len() > MAX_PINS {
                return Err(corrupt(format!("more than {MAX_PINS} pins")));
            }
            for (id, stored) in file.pins {
                let conn = ConnId::from_hex(&id).ok_or_else(|| corrupt(format!("id {id:?}")))?;
                let pin = Pin {
                    salt: unhex(&stored.salt).ok_or_else(|| corrupt(format!("salt of {id}")))?,
                    digest: unhex(&stored.sha256)
                        .ok_or_else(|| corrupt(format!("sha256 of {id}")))?,
                    source: PinSource::FirstUse,
                    since: stored.since,
                };
                pins.insert(conn, pin);
            }
        }
        Ok(Self {
            path: Some(path),
            first_use,
            state: Mutex::new(Pins { pins, dirty: false }),
            changed: Notify::new(),
        })
    }

    /// A store that is never written (tests and tools).
    pub fn in_memory(first_use: bool) -> Self {
        Self {
            path: None,
            first_use,
            state: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pins> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pins codes from the configuration or the account. They replace any first-use pin of the
    /// same id (a person or the account said so) and are not written to the file. An empty code
    /// is skipped.
    pub fn import(&self, source: PinSource, codes: impl IntoIterator<Item = (ConnId, AuthCode)>) {
        let mut state = self.lock();
        for (conn, code) in codes {
            if code.is_empty() {
                continue;
            }
            let replaced = state.pins.insert(conn, new_pin(conn, &code, source));
            if replaced.is_some_and(|p| p.source == PinSource::FirstUse) {
                state.dirty = true;
            }
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Whether `code` may open a session for `conn`; creates nothing.
    pub fn check(&self, conn: ConnId, code: &AuthCode) -> Result<Check, Refusal> {
        if code.is_empty() {
            return Err(Refusal::Empty);
        }
        let state = self.lock();
        match state.pins.get(&conn) {
            Some(pin) if matches(pin, conn, code) => Ok(Check::Known(pin.source)),
            Some(_) => Err(Refusal::Mismatch),
            None if !self.first_use => Err(Refusal::Unpinned),
            None if state.pins.len() >= MAX_PINS => Err(Refusal::Full),
            None => Ok(Check::New),
        }
    }

    /// Pins `code` for `conn` on first use, after every other check passed. When another
    /// connection pinned the id in between, its pin decides.
    pub fn pin(&self, conn: ConnId, code: &AuthCode) -> Result<(), Refusal> {
        let mut state = self.lock();
        match state.pins.get(&conn) {
            Some(pin) if matches(pin, conn, code) => return Ok(()),
            Some(_) => return Err(Refusal::Mismatch),
            None if code.is_empty() => return Err(Refusal::Empty),
            None if !self.first_use => return Err(Refusal::Unpinned),
            None if state.pins.len() >= MAX_PINS => return Err(Refusal::Full),
            None => {}
        }
        state
            .pins
            .insert(conn, new_pin(conn, code, PinSource::FirstUse));
        state.dirty = true;
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Forgets the first-use pin of `conn`.
    pub fn forget(&self, conn: ConnId) -> Forgot {
        let mut state = self.lock();
        match state.pins.get(&conn).map(|p| p.source) {
            None => Forgot::Unknown,
            Some(PinSource::FirstUse) => {
                state.pins.remove(&conn);
                state.dirty = true;
                drop(state);
                self.changed.notify_one();
                Forgot::Removed
            }
            Some(source) => Forgot::Kept(source),
        }
    }

    /// The pinned ids with their source and when they were pinned, sorted by id.
    pub fn pins(&self) -> Vec<(ConnId, PinSource, String)> {
        let mut out: Vec<_> = self
            .lock()
            .pins
            .iter()
            .map(|(id, p)| (*id, p.source, p.since.clone()))
            .collect();
        out.sort_by_key(|(id, ..)| *id);
        out
    }

    /// Writes the first-use pins when they changed (atomically, mode 0600).
    pub fn save(&self) -> Result<(), AuthError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Copied under the lock (hellos wait for it), encoded outside it.
        let pins: Vec<(ConnId, Pin)> = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state
                .pins
                .iter()
                .filter(|(_, p)| p.source == PinSource::FirstUse)
                .map(|(id, p)| (*id, p.clone()))
                .collect()
        };
        let pins = pins
            .into_iter()
            .map(|(id, p)| {
                let stored = StoredPin {
                    salt: hex(&p.salt),
                    sha256: hex(&p.digest),
                    since: p.since,
                };
                (id.to_string(), stored)
            })
            .collect();
        let file = StoredFile {
            version: FILE_VERSION,
            pins,
        };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        let written = state::write_atomic(path, &bytes, 0o600);
        if written.is_err() {
            // Try again at the next change or at shutdown.
            self.lock().dirty = true;
        }
        written.map_err(|source| AuthError::File {
            action: "write",
            path: path.clone(),
            source,
        })
    }
}

/// Forgets a bridge's first-use pin and closes its open connection, if any, so the next hello
/// for the id is trusted anew (`cyncd devices forget`, `DELETE /api/bridges/{id}/auth`).
pub fn forget_bridge(
    store: &AuthStore,
    registry: &super::registry::Registry,
    conn: ConnId,
) -> Forgot {
    let forgot = store.forget(conn);
    if forgot == Forgot::Removed {
        let closed = registry.disconnect(conn);
        tracing::info!(conn_id = %conn, closed, "auth pin forgotten: the next hello for this bridge is pinned again");
    }
    forgot
}

/// Writes the pins when they change, at most every [`SAVE_DELAY`], and once more when
/// `cancel` fires.
pub async fn save_pins(store: Arc<AuthStore>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = store.changed.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(SAVE_DELAY) => {}
        }
        let s = store.clone();
        let saved = tokio::task::spawn_blocking(move || s.save()).await;
        if let Ok(Err(e)) = saved {
            tracing::error!(error = %e, "could not save the device auth pins");
        }
    }
    if let Err(e) = store.save() {
        tracing::error!(error = %e, "could not save the device auth pins");
    }
}

fn digest(salt: &[u8; SALT_LEN], conn: ConnId, code: &AuthCode) -> [u8; 32] {
    let mut hasher = openssl::sha::Sha256::new();
    hasher.update(salt);
    hasher.update(&conn.0);
    hasher.update(code.expose());
    hasher.finish()
}

fn matches(pin: &Pin, conn: ConnId, code: &AuthCode) -> bool {
    openssl::memcmp::eq(&digest(&pin.salt, conn, code), &pin.digest)
}

fn new_pin(conn: ConnId, code: &AuthCode, source: PinSource) -> Pin {
    let mut salt = [0u8; SALT_LEN];
    if openssl::rand::rand_bytes(&mut salt).is_err() {
        // OpenSSL's generator failing is near impossible; a predictable salt still hashes
        // the code, it only allows precomputation across installs.
        salt = fastrand::u128(..).to_le_bytes();
    }
    Pin {
        digest: digest(&salt, conn, code),
        salt,
        source,
        since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *slot = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const A: ConnId = ConnId([0x32, 0x5d, 0x53, 0x17]);
    const B: ConnId = ConnId([0x38, 0xe8, 0xcf, 0x46]);

    fn code(text: &str) -> AuthCode {
        AuthCode::new(text.as_bytes().to_vec())
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cyncd-auth-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn refusal_labels_are_the_metric_labels() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, crate::metrics::AUTH_FAILURES);
    }

    #[test]
    fn first_use_pins_then_only_that_code_opens() {
        let store = AuthStore::in_memory(true);
        let real = code("1e07d8cdf4f53c50");
        assert_eq!(store.check(A, &AuthCode::default()), Err(Refusal::Empty));
        assert_eq!(store.check(A, &real), Ok(Check::New));
        // Checking pins nothing.
        assert_eq!(store.check(A, &code("0000000000000000")), Ok(Check::New));
        store.pin(A, &real).unwrap();
        assert_eq!(store.check(A, &real), Ok(Check::Known(PinSource::FirstUse)));
        assert_eq!(
            store.check(A, &code("1e07d8cdf4f53c51")),
            Err(Refusal::Mismatch)
        );
        assert_eq!(store.check(A, &AuthCode::default()), Err(Refusal::Empty));
        // A racing first use with another code loses.
        assert_eq!(
            store.pin(A, &code("ffffffffffffffff")),
            Err(Refusal::Mismatch)
        );
        // Another id is independent.
        assert_eq!(store.check(B, &real), Ok(Check::New));
    }

    #[test]
    fn configured_codes_win_and_cannot_be_forgotten() {
        let store = AuthStore::in_memory(false);
        assert_eq!(store.check(A, &code("x")), Err(Refusal::Unpinned));
        store.import(PinSource::Configured, [(A, code("1e07d8cdf4f53c50"))]);
        assert_eq!(
            store.check(A, &code("1e07d8cdf4f53c50")),
            Ok(Check::Known(PinSource::Configured))
        );
        assert_eq!(store.check(A, &code("other")), Err(Refusal::Mismatch));
        assert_eq!(store.forget(A), Forgot::Kept(PinSource::Configured));
        assert_eq!(store.forget(B), Forgot::Unknown);
        // An account import replaces a first-use pin.
        let store = AuthStore::in_memory(true);
        store.pin(B, &code("old-code")).unwrap();
        store.import(PinSource::Account, [(B, code("new-code"))]);
        assert_eq!(
            store.check(B, &code("new-code")),
            Ok(Check::Known(PinSource::Account))
        );
    }

    #[test]
    fn pins_survive_a_restart_as_hashes_in_a_private_file() {
        let dir = temp_dir();
        let store = AuthStore::open(&dir, true).unwrap();
        store.pin(A, &code("1e07d8cdf4f53c50")).unwrap();
        store.pin(B, &code("aaaaaaaaaaaaaaaa")).unwrap();
        store.import(PinSource::Configured, [(ConnId([9; 4]), code("config"))]);
        store.save().unwrap();
        let path = dir.join(AUTH_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("1e07d8cdf4f53c50") && !text.contains("3165"),
            "{text}"
        );
        assert!(!text.contains("09090909"), "configured pins are not stored");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AuthStore::open(&dir, true).unwrap();
        assert_eq!(
            again.check(A, &code("1e07d8cdf4f53c50")),
            Ok(Check::Known(PinSource::FirstUse))
        );
        assert_eq!(
            again.check(B, &code("1e07d8cdf4f53c50")),
            Err(Refusal::Mismatch)
        );
        // Forgotten and saved: the next start trusts the id anew.
        assert_eq!(again.forget(B), Forgot::Removed);
        again.save().unwrap();
        let third = AuthStore::open(&dir, true).unwrap();
        assert_eq!(third.check(B, &code("bbbbbbbbbbbbbbbb")), Ok(Check::New));
        assert_eq!(third.pins().len(), 1);
        // A damaged file stops the start instead of trusting everyone again.
        std::fs::write(&path, "{\"version\":1,\"pins\":{\"zz\":{}}}").unwrap();
        let err = AuthStore::open(&dir, true).unwrap_err().to_string();
        assert!(err.contains("not a valid pin file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn new_pins_are_saved_together_and_at_shutdown() {
        let dir = temp_dir();
        let store = Arc::new(AuthStore::open(&dir, true).unwrap());
        let cancel = CancellationToken::new();
        let saver = tokio::spawn(save_pins(store.clone(), cancel.clone()));
        for i in 0..100u8 {
            store
                .pin(ConnId([1, 2, 3, i]), &code("0123456789abcdef"))
                .unwrap();
        }
        cancel.cancel();
        saver.await.unwrap();
        let again = AuthStore::open(&dir, true).unwrap();
        assert_eq!(again.pins().len(), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
