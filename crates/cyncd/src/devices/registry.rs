//! The device registry: what cyncd knows about every mesh device and every connection.
//!
//! Devices are keyed by (home, mesh id), so two homes with the same mesh ids never overwrite
//! each other. Connections are keyed by their connection id; a device that reconnects with the
//! same id replaces its old session (the old one is cancelled).
//!
//! Status convergence. Reports come as the device's own (its 0x83, or its index-05 0x43
//! record), as copies relayed by other mesh nodes (other index 0x43 records), and as mesh-info
//! pages. In the captures (PROTOCOL.md §9.5, capture A) relayed copies of a change trail the
//! device's own report by up to 1.54 s, a few arrive up to 0.72 s before it, and the one copy
//! that contradicted a fresh own report came 61 ms after it; after a group command the members
//! that are nobody's own device are heard of only through relayed copies. So:
//!
//! 1. Commands tell the registry what they ask for ([`Registry::expect`]): a report that shows
//!    what a command still waiting for its outcome asked for is applied whoever sends it.
//! 2. An `applied` outcome ([`Registry::settle`]) — of a device command or of a group command
//!    for each member that can carry it out — is the device's own word: its state becomes the
//!    commanded one at once, and for [`COMMAND_HOLD`] a report that contradicts it (a copy
//!    older than the command, a report delayed behind a newer one) is not applied but
//!    remembered; if no report agreed with the command by the end of the hold, the last
//!    contradicting report applies then (the command was overtaken after all).
//! 3. Otherwise a device's own report always applies, and a relayed copy or a mesh-info page
//!    applies unless the device's own report came within [`OWN_REPORT_HOLD`].
//!
//! A device is marked offline only after [`OFFLINE_AFTER`] consecutive offline reports. The
//! factory effect a device runs is known only from the command that started it (a report says
//! "an effect"; after an unknown outcome, the effect asked for is what such a report means); it
//! is forgotten when a report shows another mode.
//!
//! Reachable: a device is reachable through a connected bridge once that connection gave news
//! of it (a report of the device from any bridge, its mesh-info page included, after the
//! bridge connected), or [`FRESH_WAIT`] after the bridge connected without any: a bridge that
//! reconnects does not make its devices look available with the state from before it left.
//! The registry's timers ([`Registry::run_timers`]) end holds and these waits.
//!
//! The registry sits behind one mutex with short critical sections; it is touched on status
//! events, hellos and disconnects, never per heartbeat (per-connection counters are atomics).
//!
//! Who may speak for a device: a status is applied only from a registered connection (one whose
//! hello was admitted), and only for a device that connection vouches for. The devices the
//! homes name (the configuration and the homes file, [`Registry::set_named`]) always pass. Any other device passes when the bridge listed it in its
//! mesh-info answer; before a bridge has listed its mesh (or when it never does), it may speak
//! for at most [`Limits::per_bridge`] distinct devices per connection. A new device is created
//! only while its home holds fewer than [`Limits::per_home`] unconfigured devices and the whole
//! table fewer than [`MAX_DEVICES`]. So forged reports from one bridge id cannot fill the table,
//! and reports from bridges of one home never crowd out another home's devices. Every status
//! refused is reported to the caller ([`Refusal`]), which counts and logs it.
//!
//! Names, rooms, types and MACs come from [`Homes`] when a view is built: the views list the
//! devices bridges reported and those the homes name (offline until reported), and leave out
//! the ones the homes hide. A bridge whose mesh listing places it in another home moves there
//! with the devices only it reported ([`Registry::rehome`]); a thermostat's sensor report is
//! kept on its connection and its device ([`Registry::sensors`]).
//!
//! Bounds: at most [`MAX_DEVICES`] devices (named ones on top) and `max_connections`
//! connections; [`MAX_EXPECTED`] commands' expectations (and 16 per device), one timer per
//! device and per recent connection; per connection at most [`Limits::per_bridge`] devices spoken for and
//! [`cync_proto::session::MAX_MESH_RECORDS`] listed; [`MAX_UNKNOWN_TYPES`] unknown type codes
//! reported and [`MAX_LEARNED_HOMES`] learned homes remembered.

use super::link::ConnCommand;
use crate::homes::Homes;
use cync_proto::canary::{Policy, Route, Transport};
use cync_proto::catalog::{DeviceType, Kind};
use cync_proto::delivery::{CommandId, Outcome, after, satisfies, satisfies_outlet};
use cync_proto::session::Source;
use cync_proto::thermostat::SensorReport;
use cync_proto::{Action, ColorMode, ConnId, DeviceStatus, Effect};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long a device's own report outranks relayed copies and mesh-info pages that contradict
/// it: longer than the 1.54 s by which relayed copies trail own reports in the captures.
pub const OWN_REPORT_HOLD: Duration = Duration::from_secs(2);
/// How long the state an `applied` command set outranks reports that contradict it.
pub const COMMAND_HOLD: Duration = Duration::from_secs(2);
/// How long after a bridge connects its devices are shown reachable through it even without
/// news of them (its mesh-info answer normally comes about 2 s after the hello).
pub const FRESH_WAIT: Duration = Duration::from_secs(5);
/// Commands whose expected state is kept at once; the oldest is forgotten first when full.
pub const MAX_EXPECTED: usize = 65_536;
/// Commands waiting for an outcome remembered per device (the per-device command queue's
/// size); the oldest is forgotten first.
const MAX_PENDING_PER_DEVICE: usize = 16;
/// Timers (hold ends and fresh waits) at once; when full, a fresh wait gets no timer (the next
/// change of the registry shows its end).
const MAX_TIMERS: usize = 2 * MAX_DEVICES;
/// Consecutive offline reports before a device is shown offline.
pub const OFFLINE_AFTER: u8 = 3;
/// Most devices tracked over all homes.
pub const MAX_DEVICES: usize = 65_536;
/// Most bridges remembered per device.
const MAX_BRIDGES_PER_DEVICE: usize = 16;
/// Most (home, type code) pairs reported as unknown; further unknown codes are not logged.
pub const MAX_UNKNOWN_TYPES: usize = 1024;
/// Most bridges whose home was learned from their mesh, remembered across reconnects (an
/// older one is forgotten first when full).
pub const MAX_LEARNED_HOMES: usize = 65_536;

/// Who may add what to the registry (see the module documentation).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Distinct devices one connection may speak for, configured ones not counted.
    pub per_bridge: usize,
    /// Unconfigured devices one home may hold.
    pub per_home: usize,
    /// The devices the configuration names, by home: always accepted, never counted.
    pub configured: HashMap<String, HashSet<u16>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_bridge: crate::config::DEFAULT_DEVICES_PER_BRIDGE,
            per_home: crate::config::DEFAULT_DEVICES_PER_HOME,
            configured: HashMap::new(),
        }
    }
}

impl Limits {
    /// The limits a configuration sets.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            per_bridge: config.max_devices_per_bridge,
            per_home: config.max_devices_per_home,
            configured: config.configured_devices(),
        }
    }
}

/// Why a status was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bridge listed its mesh, and this device is not in it (or the connection is not
    /// registered).
    Unlisted,
    /// The connection already spoke for [`Limits::per_bridge`] devices.
    BridgeCap,
    /// The home already holds [`Limits::per_home`] unconfigured devices.
    HomeCap,
    /// The table holds [`MAX_DEVICES`] devices.
    TableFull,
}

impl Refusal {
    /// Every refusal, in the order of [`crate::metrics::STATUS_REFUSALS`].
    pub const ALL: [Self; 4] = [
        Self::Unlisted,
        Self::BridgeCap,
        Self::HomeCap,
        Self::TableFull,
    ];

    /// A stable label for logs and `cyncd_statuses_refused_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unlisted => "unlisted",
            Self::BridgeCap => "bridge_cap",
            Self::HomeCap => "home_cap",
            Self::TableFull => "table_full",
        }
    }
}

/// Shared registry handle.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Shared>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_limits(Limits::default())
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Bumped on every change; receivers never miss one.
    changed: watch::Sender<u64>,
    /// Told when a timer comes due earlier than the earliest one before.
    timer_added: tokio::sync::Notify,
    rejected_devices: AtomicU64,
    generation: AtomicU64,
    limits: Limits,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<(String, u16), Device>,
    connections: HashMap<ConnId, Connection>,
    /// (home, code) pairs already reported as not in the type table.
    unknown_types: HashSet<(String, u8)>,
    /// Homes learned from bridges' mesh listings, oldest first.
    learned: std::collections::VecDeque<(ConnId, String)>,
    /// Unconfigured devices per home.
    unconfigured: HashMap<String, usize>,
    /// The devices the homes (configuration and homes file) name, by home: always accepted,
    /// never counted against the caps. Replaced when new homes are loaded.
    named: HashMap<String, HashSet<u16>>,
    /// Commands waiting for their outcome: whose devices expect what (at most
    /// [`MAX_EXPECTED`]; command ids sort by time, so the first is the oldest).
    expected: BTreeMap<CommandId, Expectation>,
    /// When something is due: a hold ends, a connection's fresh wait ends.
    timers: BTreeSet<(Instant, Timer)>,
    /// Effects saved before a restart, until the device's first report (at most
    /// [`MAX_DEVICES`]).
    remembered: HashMap<(String, u16), Effect>,
    /// What the last command through cyncd did to each device in the table (bounded by it).
    commanded: HashMap<(String, u16), Commanded>,
}

/// A command's target devices, until its outcome.
#[derive(Debug)]
struct Expectation {
    home: String,
    members: Vec<u16>,
    until: Instant,
}

/// Something the registry's timer task does when it is due.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A device's command hold ends.
    Hold(String, u16),
    /// A connection's wait for news of its devices ends.
    Fresh(ConnId),
}

/// What became of a command, for the state of its devices ([`Registry::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The device (or the group's bridge) said it carried it out.
    Applied,
    /// Unknown: it may have been carried out (no answer, or only a bare `0x7B`). Reports that
    /// show it are still taken as news of it for [`COMMAND_HOLD`].
    Unknown,
    /// It was not carried out (superseded, or refused before it was sent).
    NotApplied,
}

/// A command sent to a device that has no outcome yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    command: CommandId,
    action: Action,
    outlet: Option<u8>,
    /// The device type's outlet count (a multi-outlet plug's power is every outlet).
    outlets: u8,
    until: Instant,
    /// A report showed it.
    seen: bool,
}

/// The state commands a device carried out established, while it outranks other reports.
#[derive(Debug, Clone, Copy)]
struct Held {
    claim: Claim,
    until: Instant,
    /// A report agreed with it.
    confirmed: bool,
    /// The last report that contradicted it: applied when the hold ends unconfirmed.
    disputed: Option<DeviceStatus>,
}

/// What commands say about a device's state: the status they lead to, and which parts of it
/// they set.
#[derive(Debug, Clone, Copy)]
struct Claim {
    expected: DeviceStatus,
    on: bool,
    level: bool,
    color: bool,
}

impl Claim {
    /// Nothing claimed yet, from the status now.
    fn from(status: DeviceStatus) -> Self {
        Self {
            expected: status,
            on: false,
            level: false,
            color: false,
        }
    }

    /// This claim followed by a command.
    fn then(mut self, p: &Pending) -> Self {
        self.expected = after(&p.action, p.outlet, p.outlets, &self.expected);
        match (p.action, p.outlet) {
            (Action::Power(_), Some(_)) | (Action::Brightness(_) | Action::FanSpeed(_), _) => {
                self.on = true;
                self.level = true;
            }
            (Action::Power(_), None) => {
                self.on = true;
                self.level |= p.outlets > 1;
            }
            (Action::ColorTemp(_) | Action::Rgb(_) | Action::Effect(_), _) => self.color = true,
            (Action::SwitchMode(_), _) => {}
        }
        self
    }

    /// Whether the two claim a part of the state in common.
    fn overlaps(&self, other: &Self) -> bool {
        (self.on && other.on) || (self.level && other.level) || (self.color && other.color)
    }

    /// Whether a report agrees: the power and colour claimed, and while on the level claimed
    /// (a device that is off keeps its colour but reports whatever level: capture A's 0x83
    /// says 24 where its 0x43 record says 0).
    fn agrees(&self, s: &DeviceStatus) -> bool {
        let e = &self.expected;
        if self.on && s.on != e.on {
            return false;
        }
        if self.level && s.on && s.brightness != e.brightness {
            return false;
        }
        !self.color
            || match e.mode() {
                ColorMode::Rgb => {
                    s.mode() == ColorMode::Rgb
                        && (s.rgb == e.rgb || s.rgb == cync_proto::command::nudge_rgb(e.rgb))
                }
                mode => s.mode() == mode,
            }
    }
}

/// Whether a report shows what one command asked for.
fn shows(p: &Pending, s: &DeviceStatus) -> bool {
    match p.outlet {
        None => satisfies(&p.action, s),
        Some(n) => satisfies_outlet(&p.action, n, s),
    }
}

/// Whether a report about `d` is applied (see the module documentation): `Some` when it is,
/// with the effect a command it shows started; `None` when it is not.
#[allow(clippy::option_option)] // applied or not, and then which effect, if one
fn judge(d: &mut Device, s: &DeviceStatus, source: Source, now: Instant) -> Option<Option<Effect>> {
    d.pending.retain(|p| p.until > now);
    let held = d.held.filter(|h| h.until > now);
    // The commands waiting for their outcome, in order, on top of what is held: the report
    // agrees when it shows the held state followed by some of them.
    let mut claim = held.map_or_else(|| Claim::from(d.status), |h| h.claim);
    let mut agrees = held.is_some_and(|h| h.claim.agrees(s));
    let mut shown = 0;
    let mut effect = None;
    for (i, p) in d.pending.iter().enumerate() {
        claim = claim.then(p);
        if claim.agrees(s) && shows(p, s) {
            agrees = true;
            shown = i + 1;
        }
    }
    for p in d.pending.iter_mut().take(shown) {
        p.seen = true;
        match p.action {
            Action::Effect(e) => effect = Some(e),
            Action::ColorTemp(_) | Action::Rgb(_) => effect = None,
            _ => {}
        }
    }
    if let Some(h) = d.held.as_mut().filter(|h| h.until > now) {
        if agrees {
            h.confirmed = true;
        } else {
            h.disputed = Some(*s);
            return None;
        }
    }
    if agrees || source == Source::Own {
        return Some(effect);
    }
    let fresh_own = d
        .last_own
        .is_some_and(|t| now.duration_since(t) < OWN_REPORT_HOLD);
    (!fresh_own).then_some(None)
}

/// Applies a report to a device: its online state counts offline reports.
fn take(d: &mut Device, s: &DeviceStatus) {
    if s.online {
        d.offline_reports = 0;
        d.online = true;
    } else {
        d.offline_reports = d.offline_reports.saturating_add(1);
        if d.offline_reports >= OFFLINE_AFTER {
            d.online = false;
        }
    }
    d.status = DeviceStatus {
        online: d.online,
        ..*s
    };
    if s.mode() != ColorMode::Effect {
        d.effect = None;
    }
}

/// What cyncd's own commands left on a device: the last command's outcome.
#[derive(Debug, Clone, Default)]
struct Commanded {
    last: Option<LastCommand>,
}

/// The last command sent to a device (or to a group it is in) and how it ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastCommand {
    /// RFC 3339 time of its outcome.
    pub at: String,
    /// `applied` when every attribute was applied, else the first other outcome.
    pub outcome: &'static str,
    /// The attributes it set (`on`, `brightness`, `color_temp`, `rgb`, `effect`, `fan_speed`).
    pub attributes: Vec<&'static str>,
    /// The group it was sent to, when it was a group command.
    pub group: Option<u16>,
}

impl State {
    /// Whether the homes name this device (it is always accepted, never counted).
    fn is_named(&self, home: &str, mesh: u16) -> bool {
        self.named.get(home).is_some_and(|ids| ids.contains(&mesh))
    }
}

/// One mesh device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Last applied status.
    pub status: DeviceStatus,
    /// Shown online.
    pub online: bool,
    offline_reports: u8,
    last_own: Option<Instant>,
    /// When the last report of it came (applied or not).
    heard: Option<Instant>,
    /// The factory effect it runs, when a command started it.
    pub effect: Option<Effect>,
    /// Commands sent to it with no outcome yet, oldest first.
    pending: Vec<Pending>,
    /// The state the commands it carried out set, while it outranks other reports.
    held: Option<Held>,
    /// Wall-clock time of the last report.
    pub last_seen: SystemTime,
    /// Cync device type, when a mesh-info page told it.
    pub device_type: Option<u8>,
    /// Firmware version, when its bridge reported one.
    pub firmware: Option<String>,
    /// Connection ids of the bridges that report it.
    pub bridges: BTreeSet<ConnId>,
    /// A bridge's mesh listing named it (sticky).
    pub listed: bool,
    /// A thermostat's sensor readings, when it sent some.
    pub sensors: Option<Arc<[Reading]>>,
}

/// One sensor of a thermostat's report (its own, or a remote one), as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reading {
    /// Position in the thermostat's report (0 = first slot).
    pub slot: usize,
    /// What the thermostat calls it (`internal`, `savant sensor`).
    pub kind: String,
    /// The sensor the thermostat follows now.
    pub active: Option<bool>,
    /// Temperature in `unit`.
    pub temperature: Option<f64>,
    /// `F` or `C`.
    pub unit: Option<&'static str>,
    /// Relative humidity, %.
    pub humidity: Option<u8>,
    /// Battery voltage of a remote sensor.
    pub battery_volts: Option<f64>,
}

impl Reading {
    /// The fitted sensors of a report.
    pub fn all(report: &SensorReport) -> Vec<Self> {
        report
            .sensors
            .iter()
            .enumerate()
            .filter(|(_, s)| s.present())
            .map(|(slot, s)| {
                let t = s.temperature();
                Self {
                    slot,
                    kind: s.kind().unwrap_or_default().to_string(),
                    active: s.active(),
                    temperature: t.map(|t| f64::from(t.tenths) / 10.0),
                    unit: t.map(|t| match t.unit {
                        cync_proto::thermostat::TemperatureUnit::Fahrenheit => "F",
                        cync_proto::thermostat::TemperatureUnit::Celsius => "C",
                    }),
                    humidity: s.humidity(),
                    battery_volts: s.battery_millivolts().map(|mv| f64::from(mv) / 1000.0),
                }
            })
            .collect()
    }
}

/// One outlet of a multi-outlet plug, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutletView {
    /// Outlet number (1 = left, 2 = right on the dual outdoor plug).
    pub outlet: u8,
    /// Name from the account, or "Left outlet"/"Right outlet"/"Outlet N".
    pub name: String,
    /// On.
    pub on: bool,
}

/// Per-connection counters, updated without a lock.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Packets received.
    pub packets_in: AtomicU64,
    /// Packets sent.
    pub packets_out: AtomicU64,
    /// Decode errors.
    pub errors: AtomicU64,
    /// Unix milliseconds of the last packet received.
    pub last_packet_ms: AtomicU64,
    /// Outcomes of the commands last sent through this connection, in [`Outcome::ALL`] order
    /// (counted by the command service when it decides one).
    pub outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Relay mode: the upstream's state (0 = not relayed, then connecting, up, down).
    pub upstream: std::sync::atomic::AtomicU8,
}

impl ConnStats {
    /// Records the relay's upstream state (`None`: not relayed).
    pub fn set_upstream(&self, state: Option<cync_proto::relay::Upstream>) {
        use cync_proto::relay::Upstream;
        let code = match state {
            None => 0,
            Some(Upstream::Connecting) => 1,
            Some(Upstream::Up) => 2,
            Some(Upstream::Down) => 3,
        };
        self.upstream.store(code, Ordering::Relaxed);
    }

    /// The relay's upstream state's label, when the connection is relayed.
    pub fn upstream(&self) -> Option<&'static str> {
        use cync_proto::relay::Upstream;
        match self.upstream.load(Ordering::Relaxed) {
            1 => Some(Upstream::Connecting.label()),
            2 => Some(Upstream::Up.label()),
            3 => Some(Upstream::Down.label()),
            _ => None,
        }
    }

    /// Counts an outcome of a command last sent through this connection.
    pub fn count_outcome(&self, outcome: Outcome) {
        let slot = Outcome::ALL.iter().position(|o| *o == outcome);
        if let Some(counter) = slot.and_then(|i| self.outcomes.get(i)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Command outcomes by name, every outcome present (zeros included).
    pub fn outcome_counts(&self) -> BTreeMap<&'static str, u64> {
        Outcome::ALL
            .iter()
            .zip(&self.outcomes)
            .map(|(o, n)| (o.name(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One device connection (after its hello).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The remote address.
    pub peer: SocketAddr,
    /// The home it belongs to.
    pub home: String,
    /// When it connected.
    pub since: SystemTime,
    /// Its counters.
    pub stats: Arc<ConnStats>,
    /// Firmware versions reported on it.
    pub firmware: BTreeMap<&'static str, String>,
    /// Mesh devices it reported in its mesh-info answer.
    pub mesh: Vec<u16>,
    /// Sensor readings it sent (a thermostat).
    pub sensors: Option<Arc<[Reading]>>,
    /// The same as a set, once it listed its mesh: it speaks only for these then.
    listing: Option<BTreeSet<u16>>,
    /// Unconfigured devices this connection spoke for (at most [`Limits::per_bridge`]).
    spoken: BTreeSet<u16>,
    /// The transport that owns its commands (decided at its hello).
    pub route: Route,
    /// When it registered: its devices are reachable through it once news of them came since.
    connected_at: Instant,
    generation: u64,
    cancel: CancellationToken,
    writer: Option<mpsc::Sender<ConnCommand>>,
}

/// A device as the HTTP API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceView {
    /// `home:mesh_id`.
    pub id: String,
    /// Home.
    pub home: String,
    /// Mesh id.
    pub mesh_id: u16,
    /// Name from the homes (configuration or account), or `device <id>`.
    pub name: String,
    /// Room (from the account's rooms or the configuration), when it has one.
    pub room: Option<String>,
    /// Cync type code.
    #[serde(rename = "type")]
    pub type_code: Option<u8>,
    /// `light`, `plug`, `switch`, `fan`, `thermostat`, `sensor`, `remote` or `camera` (from the
    /// device-type table; unknown types are lights).
    pub kind: &'static str,
    /// The product as people know it, from the device-type table.
    pub model: &'static str,
    /// The product's SKU, when known.
    pub sku: Option<&'static str>,
    /// What it can do: `on_off`, `brightness`, `color_temp`, `rgb`, `effects`, `fan_speed`
    /// (empty for kinds that take no command).
    pub capabilities: Vec<&'static str>,
    /// Fan speed step (0 off, 1–4 low–max) for fan controllers, else null.
    pub fan_speed: Option<u8>,
    /// Each outlet of a multi-outlet plug, else null.
    pub outlets: Option<Vec<OutletView>>,
    /// A thermostat's sensors (empty until it reports), else null.
    pub sensors: Option<Vec<Reading>>,
    /// Online.
    pub online: bool,
    /// On.
    pub on: bool,
    /// 0–100; null when the device's type does not dim (plugs, switches, fans).
    pub brightness: Option<u8>,
    /// 0–100, or null in RGB/effect mode and when the device's type has no tunable white.
    pub color_temp: Option<u8>,
    /// `[r, g, b]` in RGB mode, else null.
    pub rgb: Option<[u8; 3]>,
    /// Bridges that report it.
    pub bridges: Vec<String>,
    /// Whether one of those bridges is connected and gave news of it since it connected (or
    /// connected [`FRESH_WAIT`] ago).
    pub reachable: bool,
    /// RFC 3339 time of the last report; null when no bridge has reported it yet.
    pub last_seen: Option<String>,
    /// Bluetooth MAC, when the homes file has it.
    pub mac: Option<String>,
    /// Firmware, when known (its bridge's report, else the account's).
    pub firmware: Option<String>,
    /// The factory effect running, when the device reports one and cyncd started it (null
    /// otherwise, also for an effect started elsewhere; kept across restarts).
    pub effect: Option<&'static str>,
    /// The last command cyncd sent it (directly or to a group it is in), null before one.
    pub last_command: Option<LastCommand>,
}

impl DeviceView {
    /// A device the homes name that no bridge has reported yet: offline, off.
    pub fn configured(home: &str, d: &crate::homes::Device) -> Self {
        let t = DeviceType::of(d.kind);
        let blank = DeviceStatus {
            id: cync_proto::MeshId(d.id),
            online: false,
            on: false,
            brightness: 0,
            temperature: 0,
            rgb: [0; 3],
        };
        Self {
            id: format!("{home}:{}", d.id),
            home: home.to_string(),
            mesh_id: d.id,
            name: d.name.clone(),
            room: d.room.clone(),
            type_code: d.kind,
            kind: t.kind.name(),
            model: t.product,
            sku: t.sku,
            capabilities: t.capabilities(),
            fan_speed: (t.fan_speeds > 0).then_some(0),
            outlets: outlets(&t, Some(d), &blank),
            sensors: (t.kind == Kind::Thermostat).then(Vec::new),
            online: false,
            on: false,
            brightness: shows_brightness(&t).then_some(0),
            color_temp: None,
            rgb: None,
            bridges: Vec::new(),
            reachable: false,
            last_seen: None,
            mac: d.mac.clone(),
            firmware: d.firmware.clone(),
            effect: None,
            last_command: None,
        }
    }
}

/// The outlets of a multi-outlet plug in `status`, named from the homes when they name them.
fn outlets(
    t: &DeviceType,
    named: Option<&crate::homes::Device>,
    status: &DeviceStatus,
) -> Option<Vec<OutletView>> {
    if t.outlets < 2 {
        return None;
    }
    Some(
        (1..=t.outlets)
            .map(|n| OutletView {
                outlet: n,
                name: named
                    .and_then(|d| d.outlets.get(usize::from(n) - 1))
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .unwrap_or_else(|| outlet_name(t.outlets, n)),
                on: t.outlet_on(status, n).unwrap_or(false),
            })
            .collect(),
    )
}

/// The default name of outlet `n` of `count`: left and right on a two-outlet plug.
pub fn outlet_name(count: u8, n: u8) -> String {
    match (count, n) {
        (2, 1) => "Left outlet".into(),
        (2, 2) => "Right outlet".into(),
        _ => format!("Outlet {n}"),
    }
}

/// A connection as the HTTP API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionView {
    /// Connection id.
    pub conn_id: String,
    /// Remote address.
    pub peer: String,
    /// Home.
    pub home: String,
    /// RFC 3339 connect time.
    pub since: String,
    /// RFC 3339 time of the last packet.
    pub last_packet: Option<String>,
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Decode errors.
    pub errors: u64,
    /// Firmware by kind (`device`, `network`).
    pub firmware: BTreeMap<&'static str, String>,
    /// Mesh ids learned from this bridge.
    pub mesh: Vec<u16>,
    /// The bridge's own device (`home:mesh_id`): the device the homes name with this bridge
    /// id, else the first id of its mesh listing; null until one is known.
    pub device: Option<String>,
    /// That device's name from the homes; null when they do not name it.
    pub name: Option<String>,
    /// Sensor readings it sent (a thermostat), else null.
    pub sensors: Option<Vec<Reading>>,
    /// Outcomes of the commands sent through this bridge (this session), by outcome name.
    pub commands: BTreeMap<&'static str, u64>,
    /// `legacy` or `reliable`: the transport that owns its commands.
    pub transport: &'static str,
    /// Whether the reliable transport shadows it.
    pub shadow: bool,
    /// Relay mode: the state of its upstream connection (`connecting`, `up`, `down`); absent
    /// when it is not relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'static str>,
}

/// A registered connection: drop it (or call [`Registration::release`]) when the session ends.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    conn: ConnId,
    generation: u64,
    released: bool,
}

impl Registry {
    /// An empty registry with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        let state = State {
            named: limits.configured.clone(),
            ..State::default()
        };
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(state),
                changed: watch::Sender::new(0),
                timer_added: tokio::sync::Notify::new(),
                rejected_devices: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing all state, so keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver that sees every later change (for tests and live views).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Statuses refused so far, for any [`Refusal`].
    pub fn rejected_devices(&self) -> u64 {
        self.inner.rejected_devices.load(Ordering::Relaxed)
    }

    /// Registers a connection after its hello, cancelling an older session with the same id.
    #[allow(clippy::too_many_arguments)] // one call site; each is a distinct part of the entry
    pub fn register(
        &self,
        conn: ConnId,
        peer: SocketAddr,
        home: &str,
        stats: Arc<ConnStats>,
        cancel: CancellationToken,
        writer: Option<mpsc::Sender<ConnCommand>>,
        route: Route,
    ) -> Registration {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let entry = Connection {
            route,
            connected_at: now,
            peer,
            home: home.to_string(),
            since: SystemTime::now(),
            stats,
            firmware: BTreeMap::new(),
            mesh: Vec::new(),
            sensors: None,
            listing: None,
            spoken: BTreeSet::new(),
            generation,
            cancel,
            writer,
        };
        let mut state = self.lock();
        if let Some(old) = state.connections.insert(conn, entry) {
            old.cancel.cancel();
        }
        // Its devices become reachable through it by news of them, or when the wait ends.
        if state.timers.len() < MAX_TIMERS {
            self.add_timer(&mut state, now + FRESH_WAIT, Timer::Fresh(conn));
        }
        drop(state);
        self.notify();
        Registration {
            registry: self.clone(),
            conn,
            generation,
            released: false,
        }
    }

    /// Applies a status reported by bridge `conn` of `home`, when that bridge may speak for the
    /// device (see the module documentation).
    pub fn apply(
        &self,
        home: &str,
        conn: ConnId,
        status: DeviceStatus,
        source: Source,
        now: Instant,
    ) -> Result<(), Refusal> {
        let applied = self.apply_locked(&mut self.lock(), home, conn, status, source, now);
        match applied {
            Ok(()) => self.notify(),
            Err(_) => {
                self.inner.rejected_devices.fetch_add(1, Ordering::Relaxed);
            }
        }
        applied
    }

    fn apply_locked(
        &self,
        state: &mut State,
        home: &str,
        conn: ConnId,
        status: DeviceStatus,
        source: Source,
        now: Instant,
    ) -> Result<(), Refusal> {
        let limits = &self.inner.limits;
        let mesh = status.id.0;
        let configured = state.is_named(home, mesh);
        if !configured {
            let c = state
                .connections
                .get_mut(&conn)
                .filter(|c| c.home == home)
                .ok_or(Refusal::Unlisted)?;
            // Mesh-info pages are the listing being read; anything else must be in it.
            let listed = c.listing.as_ref().is_none_or(|l| l.contains(&mesh));
            if !listed && source != Source::MeshInfo {
                return Err(Refusal::Unlisted);
            }
            if !c.spoken.contains(&mesh) {
                if c.spoken.len() >= limits.per_bridge {
                    return Err(Refusal::BridgeCap);
                }
                c.spoken.insert(mesh);
            }
        }
        let key = (home.to_string(), mesh);
        let total = state.devices.len();
        let device = match state.devices.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                if !configured {
                    let count = state.unconfigured.entry(home.to_string()).or_default();
                    if *count >= limits.per_home {
                        return Err(Refusal::HomeCap);
                    }
                    if total >= MAX_DEVICES {
                        return Err(Refusal::TableFull);
                    }
                    *count += 1;
                }
                e.insert(Device {
                    status,
                    online: status.online,
                    offline_reports: 0,
                    last_own: None,
                    heard: None,
                    effect: None,
                    pending: Vec::new(),
                    held: None,
                    last_seen: SystemTime::now(),
                    device_type: None,
                    firmware: None,
                    bridges: BTreeSet::new(),
                    sensors: None,
                    listed: false,
                })
            }
        };
        if device.bridges.len() < MAX_BRIDGES_PER_DEVICE {
            device.bridges.insert(conn);
        }
        device.last_seen = SystemTime::now();
        device.heard = Some(now);
        let Some(started) = judge(device, &status, source, now) else {
            return Ok(());
        };
        if source == Source::Own {
            device.last_own = Some(now);
        }
        take(device, &status);
        if let Some(effect) = started {
            device.effect = Some(effect);
        }
        if !state.remembered.is_empty() {
            // Saved before a restart: the effect it still runs.
            let saved = state.remembered.remove(&(home.to_string(), mesh));
            if device.effect.is_none() && status.mode() == ColorMode::Effect {
                device.effect = saved;
            }
        }
        Ok(())
    }

    /// The effects lights run (or were last told to run, when that command's outcome is not
    /// known), as `home:mesh_id` → name (for [`super::effects`]).
    pub fn effects(&self) -> BTreeMap<String, &'static str> {
        self.lock()
            .devices
            .iter()
            .filter_map(|((home, mesh), d)| Some((format!("{home}:{mesh}"), d.effect?.name())))
            .collect()
    }

    /// Effects saved before a restart: a device whose first report shows an effect runs this
    /// one.
    pub fn remember_effects(&self, effects: HashMap<(String, u16), Effect>) {
        self.lock().remembered = effects;
    }

    /// Notes what a command asks of its devices (`members`, each with its type's outlet count:
    /// the device, or the members of a group that can carry it out), before it is sent; its
    /// outcome is given to [`Registry::settle`]. Devices no bridge reported yet are left out.
    #[allow(clippy::too_many_arguments)] // one call site; each is a distinct part of the command
    pub fn expect(
        &self,
        command: CommandId,
        home: &str,
        members: &[(u16, u8)],
        action: Action,
        outlet: Option<u8>,
        now: Instant,
        until: Instant,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        // The oldest first: those past their time, then any over the bound.
        loop {
            let full = state.expected.len() >= MAX_EXPECTED;
            match state.expected.first_key_value() {
                Some((id, e)) if full || e.until <= now => {
                    let id = *id;
                    state.expected.remove(&id);
                }
                _ => break,
            }
        }
        let mut kept = Vec::new();
        for (mesh, outlets) in members {
            let Some(d) = state.devices.get_mut(&(home.to_string(), *mesh)) else {
                continue;
            };
            d.pending.retain(|p| p.until > now);
            if d.pending.len() >= MAX_PENDING_PER_DEVICE {
                d.pending.remove(0);
            }
            d.pending.push(Pending {
                command,
                action,
                outlet,
                outlets: *outlets,
                until,
                seen: false,
            });
            kept.push(*mesh);
        }
        if !kept.is_empty() {
            state.expected.insert(
                command,
                Expectation {
                    home: home.to_string(),
                    members: kept,
                    until,
                },
            );
        }
    }

    /// A command's outcome, for the state of its devices (see the module documentation).
    pub fn settle(&self, command: CommandId, settled: Settled, now: Instant) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(expectation) = state.expected.remove(&command) else {
            return;
        };
        let mut changed = false;
        let mut holds = Vec::new();
        for mesh in expectation.members {
            let key = (expectation.home.clone(), mesh);
            let Some(d) = state.devices.get_mut(&key) else {
                continue;
            };
            let Some(i) = d.pending.iter().position(|p| p.command == command) else {
                continue;
            };
            match settled {
                Settled::NotApplied => {
                    d.pending.remove(i);
                }
                Settled::Unknown => {
                    if let Some(p) = d.pending.get_mut(i) {
                        p.until = now + COMMAND_HOLD;
                        // Likely carried out: the effect a report of "an effect" will mean,
                        // even one that comes after a restart.
                        if let Action::Effect(e) = p.action {
                            d.effect = Some(e);
                            changed = true;
                        }
                    }
                }
                Settled::Applied => {
                    let p = d.pending.remove(i);
                    // Older commands for the same parts of the state, still without an
                    // outcome or with an unknown one, are overtaken: a report cannot tell one
                    // effect (or an old value) from the other, so they no longer count.
                    let parts = Claim::from(d.status).then(&p);
                    d.pending.retain(|q| {
                        q.command > command || !parts.overlaps(&Claim::from(d.status).then(q))
                    });
                    let base = d
                        .held
                        .filter(|h| h.until > now)
                        .map_or_else(|| Claim::from(d.status), |h| h.claim);
                    d.status = after(&p.action, p.outlet, p.outlets, &d.status);
                    d.effect = match p.action {
                        Action::Effect(e) => Some(e),
                        Action::ColorTemp(_) | Action::Rgb(_) => None,
                        _ => d.effect,
                    };
                    let old = d.held.replace(Held {
                        claim: base.then(&p),
                        until: now + COMMAND_HOLD,
                        confirmed: p.seen,
                        disputed: None,
                    });
                    holds.push((old.map(|h| h.until), key));
                    changed = true;
                }
            }
        }
        for (old, (home, mesh)) in holds {
            if let Some(old) = old {
                state.timers.remove(&(old, Timer::Hold(home.clone(), mesh)));
            }
            self.add_timer(state, now + COMMAND_HOLD, Timer::Hold(home, mesh));
        }
        drop(guard);
        if changed {
            self.notify();
        }
    }

    fn add_timer(&self, state: &mut State, at: Instant, timer: Timer) {
        let earliest = state.timers.first().is_none_or(|(t, _)| at < *t);
        state.timers.insert((at, timer));
        if earliest {
            self.inner.timer_added.notify_one();
        }
    }

    /// Carries out the timers due at `now`: a hold that no report confirmed gives way to the
    /// last report that contradicted it; a fresh wait that ended changes what is reachable.
    pub fn tick(&self, now: Instant) {
        let mut state = self.lock();
        let mut changed = false;
        while let Some((at, _)) = state.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = state.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Fresh(_) => changed = true,
                Timer::Hold(home, mesh) => {
                    let Some(d) = state.devices.get_mut(&(home, mesh)) else {
                        continue;
                    };
                    let Some(held) = d.held.filter(|h| h.until <= now) else {
                        continue;
                    };
                    d.held = None;
                    if let (false, Some(report)) = (held.confirmed, held.disputed) {
                        take(d, &report);
                        changed = true;
                    }
                }
            }
        }
        drop(state);
        if changed {
            self.notify();
        }
    }

    /// When the next timer is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.lock().timers.first().map(|(at, _)| *at)
    }

    /// Runs the registry's timers until `cancel` fires (one task per registry).
    pub async fn run_timers(self, cancel: CancellationToken) {
        loop {
            let next = self.next_timer();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.timer_added.notified() => {}
                () = due => self.tick(Instant::now()),
            }
        }
    }

    /// Whether a device is one to show people and Home Assistant: the configuration names it,
    /// or a bridge's mesh listing did (a device only ever seen in reports is not).
    pub fn listed(&self, home: &str, mesh: u16) -> bool {
        let state = self.lock();
        state.is_named(home, mesh)
            || state
                .devices
                .get(&(home.to_string(), mesh))
                .is_some_and(|d| d.listed)
    }

    /// Whether a bridge's mesh listing named this device (since the start), whatever the homes
    /// say: an entity that exists only because the homes name the device goes when they stop
    /// naming it.
    pub fn listed_by_bridge(&self, home: &str, mesh: u16) -> bool {
        self.lock()
            .devices
            .get(&(home.to_string(), mesh))
            .is_some_and(|d| d.listed)
    }

    /// Takes the devices the homes name (configuration and homes file) as the ones always
    /// accepted and never counted against the caps; called at start and when new homes load.
    pub fn set_named(&self, homes: &Homes) {
        let named = homes.named();
        let mut state = self.lock();
        // Devices that were named and no longer are count against their home from now on.
        let newly_unnamed: Vec<String> = state
            .devices
            .keys()
            .filter(|(h, m)| {
                state.is_named(h, *m) && !named.get(h).is_some_and(|ids| ids.contains(m))
            })
            .map(|(h, _)| h.clone())
            .collect();
        let newly_named: Vec<String> = state
            .devices
            .keys()
            .filter(|(h, m)| {
                !state.is_named(h, *m) && named.get(h).is_some_and(|ids| ids.contains(m))
            })
            .map(|(h, _)| h.clone())
            .collect();
        for h in newly_unnamed {
            *state.unconfigured.entry(h).or_default() += 1;
        }
        for h in newly_named {
            let count = state.unconfigured.entry(h).or_default();
            *count = count.saturating_sub(1);
        }
        state.named = named;
    }

    /// Records a bridge's mesh (from its mesh-info answer) and its own device type.
    ///
    /// From then on the bridge speaks only for the devices it listed (and configured ones).
    pub fn learn_mesh(&self, conn: ConnId, home: &str, device_type: Option<u8>, mesh: &[u16]) {
        let mut state = self.lock();
        let Some(c) = state.connections.get_mut(&conn).filter(|c| c.home == home) else {
            return;
        };
        c.mesh = mesh
            .iter()
            .copied()
            .take(cync_proto::session::MAX_MESH_RECORDS)
            .collect();
        let listing: BTreeSet<u16> = c.mesh.iter().copied().collect();
        for id in &listing {
            if let Some(d) = state.devices.get_mut(&(home.to_string(), *id)) {
                d.listed = true;
            }
        }
        if let Some(c) = state.connections.get_mut(&conn) {
            c.listing = Some(listing);
        }
        if let (Some(kind), Some(first)) = (device_type, mesh.first()) {
            if let Some(d) = state.devices.get_mut(&(home.to_string(), *first)) {
                d.device_type = Some(kind);
            }
        }
        drop(state);
        self.notify();
    }

    /// Records a firmware version reported on a connection; true when it is new there.
    pub fn firmware(&self, conn: ConnId, kind: &'static str, version: String) -> bool {
        let changed = match self.lock().connections.get_mut(&conn) {
            Some(c) if c.firmware.get(kind) != Some(&version) => {
                c.firmware.insert(kind, version);
                true
            }
            _ => false,
        };
        if changed {
            self.notify();
        }
        changed
    }

    /// Closes the connection of a bridge, if one is open (its pin was forgotten).
    pub fn disconnect(&self, conn: ConnId) -> bool {
        self.lock()
            .connections
            .get(&conn)
            .map(|c| c.cancel.cancel())
            .is_some()
    }

    /// Every device to show, sorted by home and mesh id: those bridges reported and those the
    /// homes name (offline until reported), named from `homes`; devices the homes hide
    /// (`enabled = false`) are left out.
    pub fn devices(&self, homes: &Homes) -> Vec<DeviceView> {
        let state = self.lock();
        let mut out: Vec<DeviceView> = state
            .devices
            .iter()
            .filter(|((home, id), _)| homes.device(home, *id).is_none_or(|d| d.enabled))
            .map(|((home, id), d)| view(homes, &state, home, *id, d))
            .collect();
        let mut unseen = false;
        for h in homes.homes() {
            for d in &h.devices {
                if d.enabled && !state.devices.contains_key(&(h.name.clone(), d.id)) {
                    out.push(DeviceView::configured(&h.name, d));
                    unseen = true;
                }
            }
        }
        if unseen {
            out.sort_by(|a, b| (&a.home, a.mesh_id).cmp(&(&b.home, b.mesh_id)));
        }
        out
    }

    /// One device by `home:mesh_id`, or by a bare mesh id when only one home has it.
    pub fn device(&self, homes: &Homes, id: &str) -> Result<DeviceView, Lookup> {
        let (home, mesh) = self.resolve(homes, id)?;
        let state = self.lock();
        match state.devices.get(&(home.clone(), mesh)) {
            Some(device) => Ok(view(homes, &state, &home, mesh, device)),
            None => homes
                .device(&home, mesh)
                .map(|d| DeviceView::configured(&home, d))
                .ok_or(Lookup::NotFound),
        }
    }

    /// Devices bridges have reported (over all homes).
    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// Every connection, sorted by id; its own device from its mesh listing only, unnamed (see
    /// [`Registry::connections_named`]).
    pub fn connections(&self) -> Vec<ConnectionView> {
        self.connections_named(&Homes::default())
    }

    /// Every connection, sorted by id, with its own device found and named from `homes`.
    pub fn connections_named(&self, homes: &Homes) -> Vec<ConnectionView> {
        let state = self.lock();
        let mut out: Vec<ConnectionView> = state
            .connections
            .iter()
            .map(|(id, c)| {
                let last = c.stats.last_packet_ms.load(Ordering::Relaxed);
                let named = homes.home(&c.home).and_then(|h| {
                    h.devices
                        .iter()
                        .find(|d| d.bridge == Some(*id))
                        .map(|d| d.id)
                });
                let own = named.or_else(|| c.mesh.first().copied());
                ConnectionView {
                    conn_id: id.to_string(),
                    peer: c.peer.to_string(),
                    home: c.home.clone(),
                    since: rfc3339(c.since),
                    last_packet: (last > 0)
                        .then(|| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(last))),
                    packets_in: c.stats.packets_in.load(Ordering::Relaxed),
                    packets_out: c.stats.packets_out.load(Ordering::Relaxed),
                    errors: c.stats.errors.load(Ordering::Relaxed),
                    firmware: c.firmware.clone(),
                    mesh: c.mesh.clone(),
                    device: own.map(|m| format!("{}:{m}", c.home)),
                    name: own
                        .and_then(|m| homes.device(&c.home, m))
                        .map(|d| d.name.clone()),
                    sensors: c.sensors.as_deref().map(<[Reading]>::to_vec),
                    commands: c.stats.outcome_counts(),
                    transport: c.route.transport.name(),
                    shadow: c.route.shadow,
                    upstream: c.stats.upstream(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.conn_id.cmp(&b.conn_id));
        out
    }

    /// The route of each bridge (`None` when not connected), in one lock.
    pub fn routes(&self, bridges: &[ConnId]) -> Vec<(ConnId, Option<Route>)> {
        let state = self.lock();
        bridges
            .iter()
            .map(|b| (*b, state.connections.get(b).map(|c| c.route)))
            .collect()
    }

    /// Closes every connection whose transport differs from what `policy` decides for it now,
    /// so the device reconnects under the new decision. Returns how many were closed.
    pub fn drain(&self, policy: &Policy) -> usize {
        let state = self.lock();
        let mut closed = 0;
        for (id, c) in &state.connections {
            if policy.route(*id) != c.route {
                c.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Connections on each transport: (legacy, reliable).
    pub fn transport_counts(&self) -> (usize, usize) {
        let state = self.lock();
        let reliable = state
            .connections
            .values()
            .filter(|c| c.route.transport == Transport::Reliable)
            .count();
        (state.connections.len() - reliable, reliable)
    }

    /// The write queue of a connected bridge and the route of its connection (which says the
    /// only transport that may write on it); `None` while it is away or closing.
    pub fn writer(&self, conn: ConnId) -> Option<(Route, mpsc::Sender<ConnCommand>)> {
        let state = self.lock();
        let c = state.connections.get(&conn)?;
        let writer = c.writer.as_ref().filter(|w| !w.is_closed())?;
        Some((c.route, writer.clone()))
    }

    /// Bridges that reach a device: connected ones first, the one whose own device it is
    /// first among them.
    pub fn bridges_for(&self, home: &str, mesh: u16) -> Vec<ConnId> {
        let state = self.lock();
        let Some(device) = state.devices.get(&(home.to_string(), mesh)) else {
            return Vec::new();
        };
        // Every bridge that reported it, connected or not: one that is reconnecting is waited
        // for (within the command's deadline). Connected first, its own bridge first.
        let mut out: Vec<ConnId> = device.bridges.iter().copied().collect();
        out.sort_by_key(|b| {
            let live = state.connections.get(b).filter(|c| c.home == home);
            (
                live.is_none(),
                live.is_none_or(|c| c.mesh.first() != Some(&mesh)),
            )
        });
        out
    }

    /// Whether a session with this id is registered.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.lock().connections.contains_key(&conn)
    }

    /// The counters of a connected bridge.
    pub fn conn_stats(&self, conn: ConnId) -> Option<Arc<ConnStats>> {
        self.lock().connections.get(&conn).map(|c| c.stats.clone())
    }

    /// Connected bridges of a home.
    pub fn home_bridges(&self, home: &str) -> Vec<ConnId> {
        let state = self.lock();
        let mut out: Vec<ConnId> = state
            .connections
            .iter()
            .filter(|(_, c)| c.home == home)
            .map(|(id, _)| *id)
            .collect();
        out.sort();
        out
    }

    /// A device's last known status.
    pub fn status(&self, home: &str, mesh: u16) -> Option<DeviceStatus> {
        self.lock()
            .devices
            .get(&(home.to_string(), mesh))
            .map(|d| d.status)
    }

    /// The device type its bridge reported, when one did.
    pub fn device_type(&self, home: &str, mesh: u16) -> Option<u8> {
        self.lock()
            .devices
            .get(&(home.to_string(), mesh))
            .and_then(|d| d.device_type)
    }

    /// Resolves an API device id (`home:mesh` or a bare mesh id) to its home and mesh id,
    /// among the devices bridges reported and those the homes name; a hidden device
    /// (`enabled = false`) is not found.
    pub fn resolve(&self, homes: &Homes, id: &str) -> Result<(String, u16), Lookup> {
        let state = self.lock();
        let shown = |home: &str, mesh: u16| homes.device(home, mesh).is_none_or(|d| d.enabled);
        let mut found: BTreeSet<(String, u16)> = BTreeSet::new();
        match id.split_once(':') {
            Some((home, mesh)) => {
                let mesh: u16 = mesh.parse().map_err(|_| Lookup::BadId)?;
                let key = (home.to_string(), mesh);
                if state.devices.contains_key(&key) || homes.device(home, mesh).is_some() {
                    found.insert(key);
                }
            }
            None => {
                let mesh: u16 = id.parse().map_err(|_| Lookup::BadId)?;
                found.extend(state.devices.keys().filter(|(_, m)| *m == mesh).cloned());
                for h in homes.homes() {
                    if h.devices.iter().any(|d| d.id == mesh) {
                        found.insert((h.name.clone(), mesh));
                    }
                }
            }
        }
        found.retain(|(h, m)| shown(h, *m));
        let mut found = found.into_iter();
        match (found.next(), found.next()) {
            (Some(key), None) => Ok(key),
            (None, _) => Err(Lookup::NotFound),
            (Some(_), Some(_)) => Err(Lookup::Ambiguous),
        }
    }

    /// Moves a connection to another home (its mesh listing showed where it belongs), with the
    /// devices only it reported; remembers the home for its next connections. Returns the home
    /// it left, or `None` when it was already there or is not registered.
    pub fn rehome(&self, conn: ConnId, to: &str) -> Option<String> {
        let mut state = self.lock();
        let c = state.connections.get_mut(&conn)?;
        if c.home == to {
            return None;
        }
        let from = std::mem::replace(&mut c.home, to.to_string());
        let keys: Vec<(String, u16)> = state
            .devices
            .iter()
            .filter(|((h, _), d)| *h == from && d.bridges.contains(&conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(mut d) = state.devices.remove(&key) else {
                continue;
            };
            if d.bridges.len() > 1 {
                // Other bridges of the old home report it too: it stays there, without this one.
                let mut copy = d.clone();
                d.bridges.remove(&conn);
                state.devices.insert(key.clone(), d);
                copy.bridges = BTreeSet::from([conn]);
                d = copy;
            }
            if !state.devices.contains_key(&key) && !state.is_named(&from, key.1) {
                let count = state.unconfigured.entry(from.clone()).or_default();
                *count = count.saturating_sub(1);
            }
            let arriving = !state.devices.contains_key(&(to.to_string(), key.1));
            if arriving && !state.is_named(to, key.1) {
                *state.unconfigured.entry(to.to_string()).or_default() += 1;
            }
            match state.devices.entry((to.to_string(), key.1)) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    e.get_mut().bridges.insert(conn);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(d);
                }
            }
        }
        state.learned.retain(|(b, _)| *b != conn);
        if state.learned.len() >= MAX_LEARNED_HOMES {
            state.learned.pop_front();
        }
        state.learned.push_back((conn, to.to_string()));
        drop(state);
        self.notify();
        Some(from)
    }

    /// Puts every connected bridge in the home `homes` give it now (new homes were loaded): the
    /// home that lists it, else the one its mesh listing matches, else the home it is in when
    /// that still exists, else the default home. Returns the moves made, as (bridge, from, to).
    pub fn place_bridges(&self, homes: &Homes) -> Vec<(ConnId, String, String)> {
        let wanted: Vec<(ConnId, String)> = {
            let state = self.lock();
            state
                .connections
                .iter()
                .filter_map(|(conn, c)| {
                    let home = match homes.home_of_bridge(*conn) {
                        Some((h, _)) => h.to_string(),
                        None => {
                            let own_type = c.mesh.first().and_then(|m| {
                                state
                                    .devices
                                    .get(&(c.home.clone(), *m))
                                    .and_then(|d| d.device_type)
                            });
                            match homes.match_mesh(own_type, &c.mesh) {
                                crate::homes::MeshMatch::One(h) => h.to_string(),
                                // Nothing better known: a home that still exists stays.
                                _ if homes.home(&c.home).is_some_and(|h| !h.closed) => {
                                    c.home.clone()
                                }
                                _ => homes.home_at_hello(*conn).to_string(),
                            }
                        }
                    };
                    (home != c.home).then_some((*conn, home))
                })
                .collect()
        };
        wanted
            .into_iter()
            .filter_map(|(conn, to)| self.rehome(conn, &to).map(|from| (conn, from, to)))
            .collect()
    }

    /// Tells every watcher to look again (the homes changed: names, rooms, types).
    pub fn touch(&self) {
        self.notify();
    }

    /// The home a bridge's mesh listing showed on an earlier connection.
    pub fn learned_home(&self, conn: ConnId) -> Option<String> {
        self.lock()
            .learned
            .iter()
            .find(|(b, _)| *b == conn)
            .map(|(_, h)| h.clone())
    }

    /// Records a thermostat's sensor report sent on `conn` of `home`, on the connection and on
    /// its device: the device the homes name with this bridge id, else the bridge's own device
    /// from its mesh listing, else the home's only thermostat.
    pub fn sensors(&self, homes: &Homes, home: &str, conn: ConnId, report: &SensorReport) {
        let readings: Arc<[Reading]> = Arc::from(Reading::all(report));
        let mut state = self.lock();
        let Some(c) = state.connections.get_mut(&conn) else {
            return;
        };
        c.sensors = Some(readings.clone());
        let own = c.mesh.first().copied();
        let named = homes.home(home).and_then(|h| {
            let by_bridge = h.devices.iter().find(|d| d.bridge == Some(conn));
            let thermostats: Vec<u16> = h
                .devices
                .iter()
                .filter(|d| DeviceType::of(d.kind).kind == Kind::Thermostat)
                .map(|d| d.id)
                .collect();
            by_bridge
                .map(|d| d.id)
                .or(own)
                .or(match thermostats.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                })
        });
        let Some(mesh) = named.or(own) else {
            drop(state);
            self.notify();
            return;
        };
        // A device the homes do not name is created under the same caps as any report.
        let named_here = state.is_named(home, mesh);
        if !named_here && !state.devices.contains_key(&(home.to_string(), mesh)) {
            let len = state.devices.len();
            let count = state.unconfigured.entry(home.to_string()).or_default();
            if *count >= self.inner.limits.per_home || len >= MAX_DEVICES {
                self.inner.rejected_devices.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *count += 1;
        }
        let device = match state.devices.entry((home.to_string(), mesh)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(Device {
                status: DeviceStatus {
                    id: cync_proto::MeshId(mesh),
                    online: true,
                    on: false,
                    brightness: 0,
                    temperature: 0,
                    rgb: [0; 3],
                },
                online: true,
                offline_reports: 0,
                last_own: None,
                heard: None,
                effect: None,
                pending: Vec::new(),
                held: None,
                last_seen: SystemTime::now(),
                device_type: None,
                firmware: None,
                bridges: BTreeSet::new(),
                listed: false,
                sensors: None,
            }),
        };
        device.online = true;
        device.last_seen = SystemTime::now();
        device.sensors = Some(readings);
        if device.bridges.len() < MAX_BRIDGES_PER_DEVICE {
            device.bridges.insert(conn);
        }
        drop(state);
        self.notify();
    }

    /// Reports a device-type code the table does not know, once per (home, code): the device
    /// keeps working as an on/off light, and the log asks people to tell us what it is.
    /// Returns whether it was reported now.
    pub fn unknown_type(&self, home: &str, code: u8, what: &str) -> bool {
        let mut state = self.lock();
        if state.unknown_types.len() >= MAX_UNKNOWN_TYPES
            || !state.unknown_types.insert((home.to_string(), code))
        {
            return false;
        }
        drop(state);
        warn!(
            home,
            type_code = code,
            device = what,
            "device type {code} is not in cyncd's table: it is shown and commanded as a plain on/off light. \
             Please report the code with the product's name and what it does, so it can be supported"
        );
        true
    }

    /// Records a command's end on the devices it was for (`members`: the device, or a group's
    /// members): its outcome. Devices not in the table are skipped. (Its effect on their
    /// state is [`Registry::settle`]'s.)
    pub fn commanded(&self, home: &str, members: &[u16], last: &LastCommand) {
        let mut state = self.lock();
        let State {
            devices, commanded, ..
        } = &mut *state;
        for m in members {
            let key = (home.to_string(), *m);
            if !devices.contains_key(&key) {
                continue;
            }
            commanded.entry(key).or_default().last = Some(last.clone());
        }
        drop(state);
        self.notify();
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        self.lock().connections.len()
    }

    /// Cancels every session (shutdown).
    pub fn cancel_all(&self) {
        for c in self.lock().connections.values() {
            c.cancel.cancel();
        }
    }
}

/// Why a device lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not `home:mesh` or a number.
    BadId,
    /// No such device.
    NotFound,
    /// A bare mesh id that several homes have.
    Ambiguous,
}

impl Registration {
    /// The connection id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Ends the registration (also done on drop). Returns whether this session was still the
    /// registered one; `false` when a newer session with the same id replaced it.
    pub fn release(mut self) -> bool {
        self.remove()
    }

    fn remove(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        let mut state = self.registry.lock();
        // Only remove our own entry: a newer session with the same id may have replaced it.
        let ours = state
            .connections
            .get(&self.conn)
            .is_some_and(|c| c.generation == self.generation);
        if ours {
            state.connections.remove(&self.conn);
        }
        drop(state);
        self.registry.notify();
        ours
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.remove();
    }
}

fn view(homes: &Homes, state: &State, home: &str, id: u16, d: &Device) -> DeviceView {
    let named = homes.device(home, id);
    let s = d.status;
    let (color_temp, rgb) = match s.mode() {
        cync_proto::ColorMode::White(t) => (Some(t), None),
        cync_proto::ColorMode::Rgb => (None, Some(s.rgb)),
        _ => (None, None),
    };
    // A device's firmware is known when its own bridge (mesh list starts with it) reported one.
    let firmware = d
        .bridges
        .iter()
        .filter_map(|b| state.connections.get(b))
        .find(|c| c.mesh.first() == Some(&id))
        .and_then(|c| c.firmware.get("device").cloned());
    let type_code = named.and_then(|c| c.kind).or(d.device_type);
    let device_type = DeviceType::of(type_code);
    let commanded = state.commanded.get(&(home.to_string(), id));
    DeviceView {
        id: format!("{home}:{id}"),
        home: home.to_string(),
        mesh_id: id,
        name: named.map_or_else(|| format!("device {id}"), |c| c.name.clone()),
        room: named.and_then(|c| c.room.clone()),
        type_code,
        kind: device_type.kind.name(),
        model: device_type.product,
        sku: device_type.sku,
        capabilities: device_type.capabilities(),
        fan_speed: (device_type.fan_speeds > 0)
            .then(|| DeviceType::fan_step(if s.on { s.brightness } else { 0 })),
        outlets: outlets(&device_type, named, &s),
        sensors: (device_type.kind == Kind::Thermostat || d.sensors.is_some()).then(|| {
            d.sensors
                .as_deref()
                .map(<[Reading]>::to_vec)
                .unwrap_or_default()
        }),
        online: d.online,
        on: s.on,
        // Devices report a stale brightness while off; show 0 then.
        brightness: shows_brightness(&device_type).then_some(if s.on { s.brightness } else { 0 }),
        // Plugs and switches report a white value too; it means nothing for them.
        color_temp: color_temp.filter(|_| device_type.color_temp || !device_type.known),
        rgb: rgb.filter(|_| device_type.rgb || !device_type.known),
        bridges: d.bridges.iter().map(ConnId::to_string).collect(),
        reachable: reachable(state, d, Instant::now()),
        last_seen: Some(rfc3339(d.last_seen)),
        mac: named.and_then(|c| c.mac.clone()),
        firmware: firmware
            .or_else(|| d.firmware.clone())
            .or_else(|| named.and_then(|c| c.firmware.clone())),
        effect: d
            .effect
            .filter(|_| s.mode() == cync_proto::ColorMode::Effect)
            .map(Effect::name),
        last_command: commanded.and_then(|c| c.last.clone()),
    }
}

/// Whether a connected bridge vouches for a device's state: it gave news of the device since it
/// connected, or it connected [`FRESH_WAIT`] ago.
fn reachable(state: &State, d: &Device, now: Instant) -> bool {
    d.bridges.iter().any(|b| {
        state.connections.get(b).is_some_and(|c| {
            d.heard.is_some_and(|h| h >= c.connected_at) || now >= c.connected_at + FRESH_WAIT
        })
    })
}

/// Whether a device of this type has a brightness to show: a known type only when it dims; an
/// unknown one always (what it reports is all there is to know).
fn shows_brightness(t: &DeviceType) -> bool {
    t.brightness || !t.known
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cync_proto::MeshId;

    fn status(id: u16, on: bool, brightness: u8, online: bool) -> DeviceStatus {
        DeviceStatus {
            id: MeshId(id),
            online,
            on,
            brightness,
            temperature: 50,
            rgb: [0; 3],
        }
    }

    const A: ConnId = ConnId([1, 1, 1, 1]);
    const B: ConnId = ConnId([2, 2, 2, 2]);

    const ROUTE: Route = Route {
        transport: Transport::Reliable,
        shadow: false,
    };

    /// Registers `conn` in `home` (statuses are taken only from registered connections).
    fn connect(r: &Registry, conn: ConnId, home: &str) -> Registration {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        r.register(
            conn,
            peer,
            home,
            Arc::default(),
            CancellationToken::new(),
            None,
            ROUTE,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn homes_do_not_overwrite_each_other() {
        let r = Registry::new();
        let _a = connect(&r, A, "a");
        let _b = connect(&r, B, "b");
        let now = Instant::now();
        r.apply("a", A, status(5, true, 10, true), Source::Own, now)
            .unwrap();
        r.apply("b", B, status(5, false, 0, true), Source::Own, now)
            .unwrap();
        let config = Homes::default();
        let all = r.devices(&config);
        assert_eq!(all.len(), 2);
        assert!(all[0].on && !all[1].on);
        assert_eq!(r.device(&config, "a:5").unwrap().home, "a");
        assert_eq!(r.device(&config, "5"), Err(Lookup::Ambiguous));
        assert_eq!(r.device(&config, "x"), Err(Lookup::BadId));
        assert_eq!(r.device(&config, "a:6"), Err(Lookup::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn relayed_copies_do_not_flap_a_fresh_own_report() {
        let r = Registry::new();
        let _a = connect(&r, A, "h");
        let _b = connect(&r, B, "h");
        let config = Homes::default();
        let t0 = Instant::now();
        r.apply("h", A, status(7, true, 80, true), Source::Own, t0)
            .unwrap();
        // Another bridge relays the state from before the change.
        r.apply(
            "h",
            B,
            status(7, false, 0, true),
            Source::Relayed,
            t0 + Duration::from_millis(300),
        )
        .unwrap();
        assert!(r.device(&config, "7").unwrap().on);
        assert_eq!(r.device(&config, "7").unwrap().bridges.len(), 2);
        // Long after, relayed news counts again (the change may have come over BLE).
        r.apply(
            "h",
            B,
            status(7, false, 0, true),
            Source::Relayed,
            t0 + OWN_REPORT_HOLD,
        )
        .unwrap();
        assert!(!r.device(&config, "7").unwrap().on);
    }

    fn on_off(id: u16, on: bool) -> DeviceStatus {
        status(id, on, 80, true)
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_command_reaches_members_heard_of_only_through_relayed_copies() {
        let r = Registry::new();
        let _a = connect(&r, A, "h");
        let _b = connect(&r, B, "h");
        let homes = Homes::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Both devices just reported their own state (on).
        for id in [7, 8] {
            r.apply("h", B, on_off(id, true), Source::Own, t0).unwrap();
        }
        // A group command switches them off through bridge A.
        let group = CommandId(1);
        r.expect(
            group,
            "h",
            &[(7, 0), (8, 0)],
            Action::Power(false),
            None,
            t0,
            t0 + ms(11_000),
        );
        // B relays 7's new state: it shows what the command asked, so it applies at once.
        r.apply("h", B, on_off(7, false), Source::Relayed, t0 + ms(300))
            .unwrap();
        assert!(!r.device(&homes, "h:7").unwrap().on);
        // The outcome sets 8, whose copy has not come.
        r.settle(group, Settled::Applied, t0 + ms(310));
        assert!(!r.device(&homes, "h:8").unwrap().on);
        // A copy from before the command does not flip them back …
        r.apply("h", B, on_off(8, true), Source::Relayed, t0 + ms(400))
            .unwrap();
        r.apply("h", B, on_off(7, true), Source::Own, t0 + ms(400))
            .unwrap();
        assert!(!r.device(&homes, "h:8").unwrap().on);
        assert!(!r.device(&homes, "h:7").unwrap().on);
        // … and once the hold ends, the device that confirmed the command stays as it said;
        // the one no report confirmed takes the report that contradicted it.
        r.tick(t0 + ms(310) + COMMAND_HOLD);
        assert!(
            !r.device(&homes, "h:7").unwrap().on,
            "confirmed by its relayed copy"
        );
        assert!(
            r.device(&homes, "h:8").unwrap().on,
            "contradicted, never confirmed"
        );
        // Later news applies as usual.
        r.apply("h", B, on_off(7, true), Source::Relayed, t0 + ms(5000))
            .unwrap();
        assert!(r.device(&homes, "h:7").unwrap().on);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_other_than_applied_change_nothing_and_a_refusal_forgets_the_command() {
        let r = Registry::new();
        let _b = connect(&r, B, "h");
        let homes = Homes::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        r.apply("h", B, on_off(7, true), Source::Own, t0).unwrap();
        let refused = CommandId(1);
        r.expect(
            refused,
            "h",
            &[(7, 0)],
            Action::Power(false),
            None,
            t0,
            t0 + ms(11_000),
        );
        r.settle(refused, Settled::NotApplied, t0 + ms(10));
        assert!(r.device(&homes, "h:7").unwrap().on);
        // Not its command any more: a relayed "off" within the own hold is not taken.
        r.apply("h", B, on_off(7, false), Source::Relayed, t0 + ms(100))
            .unwrap();
        assert!(r.device(&homes, "h:7").unwrap().on);
        // An unknown outcome (no answer) keeps taking reports that show it, for a while.
        let silent = CommandId(2);
        r.expect(
            silent,
            "h",
            &[(7, 0)],
            Action::Power(false),
            None,
            t0,
            t0 + ms(11_000),
        );
        r.settle(silent, Settled::Unknown, t0 + ms(200));
        assert!(r.device(&homes, "h:7").unwrap().on);
        r.apply("h", B, on_off(7, false), Source::Relayed, t0 + ms(300))
            .unwrap();
        assert!(!r.device(&homes, "h:7").unwrap().on);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_delayed_behind_a_newer_command_does_not_undo_it() {
        let r = Registry::new();
        let _b = connect(&r, B, "h");
        let homes = Homes::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        r.apply("h", B, status(7, true, 50, true), Source::Own, t0)
            .unwrap();
        for (n, level) in [(1, 30), (2, 60)] {
            let id = CommandId(n);
            r.expect(
                id,
                "h",
                &[(7, 0)],
                Action::Brightness(level),
                None,
                t0,
                t0 + ms(11_000),
            );
            r.settle(id, Settled::Applied, t0 + ms(n * 10));
        }
        // Command 2's report, then command 1's, late.
        r.apply("h", B, status(7, true, 60, true), Source::Own, t0 + ms(30))
            .unwrap();
        r.apply("h", B, status(7, true, 30, true), Source::Own, t0 + ms(150))
            .unwrap();
        assert_eq!(r.device(&homes, "h:7").unwrap().brightness, Some(60));
        r.tick(t0 + ms(30) + COMMAND_HOLD);
        assert_eq!(r.device(&homes, "h:7").unwrap().brightness, Some(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_effect_is_known_from_its_command_until_another_mode_shows() {
        let r = Registry::new();
        let _b = connect(&r, B, "h");
        let homes = Homes::default();
        let t0 = Instant::now();
        r.apply("h", B, status(2, true, 50, true), Source::Own, t0)
            .unwrap();
        let id = CommandId(1);
        let until = t0 + Duration::from_secs(11);
        r.expect(
            id,
            "h",
            &[(2, 0)],
            Action::Effect(Effect::Rainbow),
            None,
            t0,
            until,
        );
        let mut running = status(2, true, 50, true);
        running.temperature = 129;
        r.apply("h", B, running, Source::Own, t0).unwrap();
        let view = r.device(&homes, "h:2").unwrap();
        assert_eq!((view.effect, view.color_temp), (Some("rainbow"), None));
        r.settle(id, Settled::Applied, t0);
        assert_eq!(r.device(&homes, "h:2").unwrap().effect, Some("rainbow"));
        // Much later the light reports white: the effect is over.
        r.apply("h", B, status(2, true, 50, true), Source::Own, until)
            .unwrap();
        assert_eq!(r.device(&homes, "h:2").unwrap().effect, None);
        // A group's effect with no known outcome, then the light's own newer one applied: a
        // report of "an effect" is the newer one's.
        let t1 = until + Duration::from_secs(5);
        let (group, own) = (CommandId(2), CommandId(3));
        r.expect(
            group,
            "h",
            &[(2, 0)],
            Action::Effect(Effect::Vegas),
            None,
            t1,
            t1 + Duration::from_secs(11),
        );
        r.settle(group, Settled::Unknown, t1);
        r.expect(
            own,
            "h",
            &[(2, 0)],
            Action::Effect(Effect::Candle),
            None,
            t1,
            t1 + Duration::from_secs(11),
        );
        r.settle(own, Settled::Applied, t1);
        r.apply("h", B, running, Source::Relayed, t1).unwrap();
        assert_eq!(r.device(&homes, "h:2").unwrap().effect, Some("candle"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_saved_effect_names_the_effect_a_light_still_runs_after_a_restart() {
        let r = Registry::new();
        let _b = connect(&r, B, "h");
        let homes = Homes::default();
        r.remember_effects(HashMap::from([
            (("h".to_string(), 2), Effect::Aurora),
            (("h".to_string(), 3), Effect::Candle),
        ]));
        let mut running = status(2, true, 50, true);
        running.temperature = 129;
        r.apply("h", B, running, Source::MeshInfo, Instant::now())
            .unwrap();
        // Light 3 stopped its effect while cyncd was away.
        r.apply(
            "h",
            B,
            status(3, true, 50, true),
            Source::MeshInfo,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(r.device(&homes, "h:2").unwrap().effect, Some("aurora"));
        assert_eq!(r.device(&homes, "h:3").unwrap().effect, None);
        assert_eq!(r.effects(), BTreeMap::from([("h:2".to_string(), "aurora")]));
        // A saved name is used once: a later effect nobody named here stays unnamed.
        let mut later = status(3, true, 50, true);
        later.temperature = 129;
        r.apply("h", B, later, Source::Own, Instant::now()).unwrap();
        assert_eq!(r.device(&homes, "h:3").unwrap().effect, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnected_bridge_vouches_for_its_devices_once_it_gave_news_of_them() {
        let r = Registry::new();
        let homes = Homes::default();
        let first = connect(&r, A, "h");
        r.apply("h", A, on_off(5, true), Source::Own, Instant::now())
            .unwrap();
        assert!(r.device(&homes, "h:5").unwrap().reachable);
        drop(first);
        assert!(!r.device(&homes, "h:5").unwrap().reachable);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Back, but no news yet: the old state is not shown as current.
        let _again = connect(&r, A, "h");
        assert!(!r.device(&homes, "h:5").unwrap().reachable);
        // Its mesh-info page tells the state now.
        tokio::time::advance(Duration::from_secs(2)).await;
        r.apply("h", A, on_off(5, false), Source::MeshInfo, Instant::now())
            .unwrap();
        let view = r.device(&homes, "h:5").unwrap();
        assert!(view.reachable && !view.on);
        // A bridge that never says anything about a device vouches for it after the wait,
        // and the timer tells the watchers.
        let b = connect(&r, B, "h");
        r.apply("h", B, on_off(6, true), Source::Own, Instant::now())
            .unwrap();
        drop(b);
        tokio::time::advance(Duration::from_millis(10)).await;
        let _b = connect(&r, B, "h");
        assert!(!r.device(&homes, "h:6").unwrap().reachable);
        let mut watch = r.watch();
        watch.mark_unchanged();
        let timers = tokio::spawn(r.clone().run_timers(CancellationToken::new()));
        tokio::time::advance(FRESH_WAIT).await;
        tokio::time::timeout(Duration::from_secs(1), watch.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(r.device(&homes, "h:6").unwrap().reachable);
        timers.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_plug_has_no_brightness_or_white_and_an_unknown_type_shows_what_it_reports() {
        let r = Registry::new();
        let config = vec![crate::config::Home {
            name: "h".into(),
            bridges: Vec::new(),
            devices: vec![
                crate::config::DeviceConfig {
                    id: 4,
                    name: Some("Plug".into()),
                    kind: Some(68),
                    room: None,
                    enabled: None,
                },
                crate::config::DeviceConfig {
                    id: 9,
                    name: Some("Not seen yet".into()),
                    kind: Some(68),
                    room: None,
                    enabled: None,
                },
            ],
            groups: Vec::new(),
        }];
        let (homes, _) = Homes::merge(&config, None);
        let _a = connect(&r, A, "h");
        let now = Instant::now();
        r.apply("h", A, status(4, true, 50, true), Source::Own, now)
            .unwrap();
        r.apply("h", A, status(5, true, 50, true), Source::Own, now)
            .unwrap();
        let plug = r.device(&homes, "h:4").unwrap();
        assert_eq!(
            (plug.brightness, plug.color_temp, plug.rgb),
            (None, None, None)
        );
        let json = serde_json::to_value(&plug).unwrap();
        assert!(
            json["brightness"].is_null() && json["color_temp"].is_null(),
            "{json}"
        );
        let unseen = DeviceView::configured("h", homes.device("h", 9).unwrap());
        assert_eq!(unseen.brightness, None);
        let unknown = r.device(&homes, "h:5").unwrap();
        assert_eq!(
            (unknown.brightness, unknown.color_temp),
            (Some(50), Some(50))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn offline_needs_three_reports() {
        let r = Registry::new();
        let _a = connect(&r, A, "h");
        let config = Homes::default();
        let t = Instant::now();
        r.apply("h", A, status(3, true, 1, true), Source::Relayed, t)
            .unwrap();
        for n in 1..=3 {
            r.apply("h", A, status(3, true, 1, false), Source::Relayed, t)
                .unwrap();
            assert_eq!(r.device(&config, "3").unwrap().online, n < 3, "after {n}");
        }
        r.apply("h", A, status(3, true, 1, true), Source::Relayed, t)
            .unwrap();
        assert!(r.device(&config, "3").unwrap().online);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_replaces_the_old_session() {
        let r = Registry::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let old = CancellationToken::new();
        let route = Route {
            transport: Transport::Reliable,
            shadow: false,
        };
        let first = r.register(A, peer, "h", Arc::default(), old.clone(), None, route);
        let new = CancellationToken::new();
        let second = r.register(
            A,
            "127.0.0.1:2".parse().unwrap(),
            "h",
            Arc::default(),
            new.clone(),
            None,
            route,
        );
        assert!(old.is_cancelled() && !new.is_cancelled());
        assert!(r.is_connected(A));
        // The old session ending must not remove the new one (and does not announce a loss).
        assert!(!first.release());
        assert_eq!(r.connections()[0].peer, "127.0.0.1:2");
        assert!(second.release());
        assert_eq!(r.connection_count(), 0);
    }

    fn homes() -> Homes {
        Homes::merge(&[], Some(&homes_file())).0
    }

    fn homes_file() -> crate::homes::file::HomesFile {
        use crate::homes::file::{DeviceRecord, GroupRecord, HomeRecord, HomesFile};
        let device = |id: u16, name: &str, kind: u8, enabled: bool| DeviceRecord {
            id,
            name: name.into(),
            kind: Some(kind),
            mac: Some(format!("A4C1380D1E{id:02X}")),
            wifi_mac: None,
            firmware: Some("1.0.1".into()),
            enabled,
            outlets: vec![],
            bridge: None,
            auth_code: None,
            extra: serde_json::Map::new(),
        };
        let mut file = HomesFile::new("test");
        file.homes = vec![
            HomeRecord {
                name: "Main".into(),
                id: None,
                bridges: vec![],
                devices: vec![
                    device(1, "Lamp", 137, true),
                    device(2, "Plug", 68, true),
                    device(3, "Old", 68, false),
                    device(6, "Patio", 67, true),
                    device(9, "Thermostat", 224, true),
                ],
                groups: vec![GroupRecord {
                    id: 32769,
                    name: "Kitchen".into(),
                    members: vec![1, 2],
                    subgroup: false,
                    extra: serde_json::Map::new(),
                }],
                extra: serde_json::Map::new(),
            },
            HomeRecord {
                name: "Cabin".into(),
                id: None,
                bridges: vec![],
                devices: vec![device(1, "Porch", 68, true)],
                groups: vec![],
                extra: serde_json::Map::new(),
            },
        ];
        file
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn views_name_every_device_of_the_homes_and_hide_the_hidden() {
        let r = Registry::new();
        let homes = homes();
        // Named devices are taken from any connection.
        r.set_named(&homes);
        let now = Instant::now();
        r.apply("Main", A, status(2, true, 100, true), Source::Own, now)
            .unwrap();
        r.apply("Main", A, status(3, true, 100, true), Source::Own, now)
            .unwrap();
        let all = r.devices(&homes);
        let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        // Reported or not; the hidden one (3) left out although it reported.
        assert_eq!(ids, ["Cabin:1", "Main:1", "Main:2", "Main:6", "Main:9"]);
        let plug = r.device(&homes, "Main:2").unwrap();
        assert_eq!(
            (plug.name.as_str(), plug.room.as_deref(), plug.model),
            ("Plug", Some("Kitchen"), "Indoor Smart Plug")
        );
        assert_eq!(plug.mac.as_deref(), Some("A4C1380D1E02"));
        assert_eq!(plug.firmware.as_deref(), Some("1.0.1"));
        assert!(plug.last_seen.is_some());
        let lamp = r.device(&homes, "Main:1").unwrap();
        assert!(
            !lamp.online && lamp.last_seen.is_none(),
            "named, not seen yet"
        );
        assert_eq!(r.device(&homes, "Main:3"), Err(Lookup::NotFound));
        assert_eq!(r.device(&homes, "1"), Err(Lookup::Ambiguous));
        assert_eq!(r.resolve(&homes, "6"), Ok(("Main".into(), 6)));
        let patio = r.device(&homes, "Main:6").unwrap();
        let outlets = patio.outlets.unwrap();
        assert_eq!(
            outlets.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["Left outlet", "Right outlet"]
        );
        assert_eq!(r.device(&homes, "Main:9").unwrap().sensors, Some(vec![]));
        assert_eq!(r.device_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_moves_to_its_home_with_the_devices_only_it_reported() {
        let r = Registry::new();
        let homes = homes();
        let _a = r.register(
            A,
            peer(),
            "default",
            Arc::default(),
            CancellationToken::new(),
            None,
            ROUTE,
        );
        let _b = r.register(
            B,
            peer(),
            "default",
            Arc::default(),
            CancellationToken::new(),
            None,
            ROUTE,
        );
        let now = Instant::now();
        r.apply("default", A, status(1, true, 50, true), Source::Own, now)
            .unwrap();
        r.apply(
            "default",
            A,
            status(2, true, 50, true),
            Source::Relayed,
            now,
        )
        .unwrap();
        r.apply("default", B, status(2, true, 50, true), Source::Own, now)
            .unwrap();
        assert_eq!(r.rehome(A, "Main").as_deref(), Some("default"));
        assert_eq!(r.rehome(A, "Main"), None, "already there");
        assert!(r.status("Main", 1).is_some() && r.status("default", 1).is_none());
        // Device 2 is reported by B too: it stays, and a copy goes along with A.
        assert!(r.status("default", 2).is_some() && r.status("Main", 2).is_some());
        assert_eq!(r.learned_home(A).as_deref(), Some("Main"));
        let conns = r.connections_named(&homes);
        assert_eq!(conns[0].home, "Main");
        // No mesh listing yet: A's own device is not known.
        assert_eq!(
            (conns[0].device.as_deref(), conns[0].name.as_deref()),
            (None, None)
        );
        // Its listing names its own device first: the lamp.
        r.learn_mesh(A, "Main", Some(137), &[1, 2]);
        let conns = r.connections_named(&homes);
        assert_eq!(conns[0].device.as_deref(), Some("Main:1"));
        assert_eq!(conns[0].name.as_deref(), Some("Lamp"));
        // New homes: B's mesh (own device 1, a plug) matches only the cabin.
        r.learn_mesh(B, "default", Some(68), &[1]);
        let moves = r.place_bridges(&homes);
        assert_eq!(moves, [(B, "default".to_string(), "Cabin".to_string())]);
    }

    #[test]
    fn a_bridge_the_account_names_is_shown_by_its_device_name() {
        let r = Registry::new();
        let mut file = homes_file();
        file.homes[0].devices[3].bridge = Some(A.to_string());
        let homes = Homes::merge(&[], Some(&file)).0;
        let _a = r.register(
            A,
            peer(),
            "Main",
            Arc::default(),
            CancellationToken::new(),
            None,
            ROUTE,
        );
        // The account's link wins over the listing's first id.
        r.learn_mesh(A, "Main", Some(137), &[1, 6]);
        let conns = r.connections_named(&homes);
        assert_eq!(conns[0].device.as_deref(), Some("Main:6"));
        assert_eq!(conns[0].name.as_deref(), Some("Patio"));
        // Without homes, the listing's own device, unnamed.
        let conns = r.connections();
        assert_eq!(conns[0].device.as_deref(), Some("Main:1"));
        assert_eq!(conns[0].name, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thermostat_report_lands_on_its_device() {
        let r = Registry::new();
        let homes = homes();
        let _t = r.register(
            A,
            peer(),
            "Main",
            Arc::default(),
            CancellationToken::new(),
            None,
            ROUTE,
        );
        let report = SensorReport::parse(
            br#"sensorsData:[{"Type":"internal","Temperature":"75.9F","Humidity":50,"Active":true},{"Type":"None","Temperature":null}]"#,
        )
        .unwrap();
        // No mesh listing yet: the home's only thermostat.
        r.sensors(&homes, "Main", A, &report);
        let t = r.device(&homes, "Main:9").unwrap();
        let readings = t.sensors.unwrap();
        assert_eq!(readings.len(), 1, "the empty slot is left out");
        assert_eq!(
            (
                readings[0].temperature,
                readings[0].unit,
                readings[0].humidity
            ),
            (Some(75.9), Some("F"), Some(50))
        );
        assert!(t.online);
        assert_eq!(
            r.connections_named(&homes)[0]
                .sensors
                .as_ref()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_unknown_type_is_reported_once_per_home_and_code() {
        let r = Registry::new();
        assert!(r.unknown_type("Main", 250, "Mystery"));
        assert!(!r.unknown_type("Main", 250, "Mystery 2"));
        assert!(r.unknown_type("Cabin", 250, "Mystery"));
        assert!(r.unknown_type("Main", 251, "Other"));
    }

    #[test]
    fn outcomes_are_counted_per_connection() {
        let stats = ConnStats::default();
        stats.count_outcome(Outcome::Applied);
        stats.count_outcome(Outcome::Applied);
        stats.count_outcome(Outcome::NoAck);
        let counts = stats.outcome_counts();
        assert_eq!(counts.len(), Outcome::ALL.len());
        assert_eq!(
            (counts["applied"], counts["no_ack"], counts["rejected"]),
            (2, 1, 0)
        );
    }

    #[test]
    fn refusal_labels_are_the_metric_labels() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, crate::metrics::STATUS_REFUSALS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_speaks_only_for_a_bounded_set_then_for_its_mesh() {
        let mut configured = HashMap::new();
        configured.insert("cabin".to_string(), HashSet::from([5u16]));
        let r = Registry::with_limits(Limits {
            per_bridge: 3,
            per_home: 4,
            configured,
        });
        let t = Instant::now();
        // Not registered: nothing it says counts, except for devices the configuration names
        // (reported by a registered bridge of their home below).
        assert_eq!(
            r.apply("cabin", A, status(9, true, 1, true), Source::Own, t),
            Err(Refusal::Unlisted)
        );
        let _a = connect(&r, A, "cabin");
        for id in [1, 2, 3] {
            r.apply("cabin", A, status(id, true, 1, true), Source::Own, t)
                .unwrap();
        }
        assert_eq!(
            r.apply("cabin", A, status(4, true, 1, true), Source::Own, t),
            Err(Refusal::BridgeCap)
        );
        // The configured device always passes and is not counted.
        r.apply("cabin", A, status(5, true, 1, true), Source::Own, t)
            .unwrap();
        // Once the bridge listed its mesh, it speaks only for what it listed.
        r.learn_mesh(A, "cabin", None, &[2, 3]);
        assert_eq!(
            r.apply("cabin", A, status(1, false, 1, true), Source::Own, t),
            Err(Refusal::Unlisted)
        );
        r.apply("cabin", A, status(2, false, 1, true), Source::Relayed, t)
            .unwrap();
        assert!(r.listed("cabin", 2) && r.listed("cabin", 5));
        assert!(!r.listed("cabin", 1), "seen in reports only");
        assert!(r.listed_by_bridge("cabin", 2) && !r.listed_by_bridge("cabin", 5));
        // The home cap: another bridge of the home adds one more, then no more.
        let _b = connect(&r, B, "cabin");
        r.apply("cabin", B, status(6, true, 1, true), Source::Own, t)
            .unwrap();
        assert_eq!(
            r.apply("cabin", B, status(7, true, 1, true), Source::Own, t),
            Err(Refusal::HomeCap)
        );
        assert_eq!(r.rejected_devices(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn forged_devices_of_one_home_never_crowd_out_a_configured_one() {
        let mut configured = HashMap::new();
        configured.insert("cabin".to_string(), HashSet::from([5u16]));
        let r = Registry::with_limits(Limits {
            per_bridge: 65_536,
            per_home: 100,
            configured,
        });
        let t = Instant::now();
        let _a = connect(&r, A, "default");
        let refused = (0..1000u16)
            .filter(|id| {
                r.apply("default", A, status(*id, true, 1, true), Source::Own, t)
                    .is_err()
            })
            .count();
        assert_eq!(refused, 900);
        let _b = connect(&r, B, "cabin");
        r.apply("cabin", B, status(5, true, 50, true), Source::Own, t)
            .unwrap();
        assert!(r.device(&Homes::default(), "cabin:5").unwrap().on);
    }
}
