//! The simulated homes: every mesh device's state and its device-side truth (every command it
//! applied), shared by the bridges that reach it.
//!
//! One mutex per home; the simulator is a test tool, and a command touches one home.

use cync_proto::{Action, DeviceStatus, Effect, MeshId, MsgId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// Most applied commands remembered per device; older ones are dropped (and counted).
pub const MAX_APPLIED: usize = 4096;

/// The kinds of mesh device the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// On/off plug.
    Plug,
    /// Dimmable white bulb.
    Dimmable,
    /// Tunable-white bulb.
    TunableWhite,
    /// Full-colour bulb.
    Rgb,
    /// Fan controller (speed in the brightness byte).
    Fan,
    /// On/off wall switch.
    Switch,
    /// Two-outlet outdoor plug (type 67): the brightness byte is the outlet bit mask, and a
    /// command addresses one outlet by a sub id after the device id.
    DualPlug,
    /// Thermostat (type 224): reports a JSON sensor report, takes no mesh command.
    Thermostat,
    /// A device that takes no command (a battery sensor, a remote): it is only seen.
    Inert,
}

impl Kind {
    /// Every kind, in the order fleets cycle through them.
    pub const ALL: [Kind; 6] = [
        Self::Plug,
        Self::Dimmable,
        Self::TunableWhite,
        Self::Rgb,
        Self::Fan,
        Self::Switch,
    ];

    /// The Cync device-type code the simulator reports in mesh-info records.
    pub fn type_code(self) -> u8 {
        match self {
            Self::Plug => 68,        // 0x44, the plug of the cloud trace
            Self::Dimmable => 55,    // dimmer
            Self::TunableWhite => 5, // tunable-white bulb
            Self::Rgb => 30,         // Full Color A19
            Self::Fan => 81,
            Self::Switch => 51, // switch paddle
            Self::DualPlug => 67,
            Self::Thermostat => 224,
            Self::Inert => 96, // motion sensor
        }
    }

    /// The behaviour that plays a Cync type code, from the device-type table; a code the
    /// table does not know plays as an on/off plug.
    pub fn for_type(code: u8) -> Self {
        use cync_proto::catalog::{DeviceType, Kind as K};
        let t = DeviceType::of(Some(code));
        match t.kind {
            _ if !t.is_known() => Self::Plug,
            K::Plug if t.outlets > 1 => Self::DualPlug,
            K::Plug => Self::Plug,
            K::Switch => Self::Switch,
            K::Fan => Self::Fan,
            K::Light if t.rgb => Self::Rgb,
            K::Light if t.color_temp => Self::TunableWhite,
            K::Light if t.brightness => Self::Dimmable,
            K::Light => Self::Switch,
            K::Thermostat => Self::Thermostat,
            K::Sensor | K::Remote | K::Camera => Self::Inert,
        }
    }

    fn accepts(self, action: &Action) -> bool {
        match action {
            _ if matches!(self, Self::Thermostat | Self::Inert) => false,
            Action::Power(_) => true,
            _ if self == Self::DualPlug => false,
            Action::Brightness(_) => !matches!(self, Self::Plug | Self::Switch),
            Action::FanSpeed(_) => self == Self::Fan,
            Action::ColorTemp(_) => matches!(self, Self::TunableWhite | Self::Rgb),
            Action::Rgb(_) | Action::Effect(_) => self == Self::Rgb,
            Action::SwitchMode(_) => self == Self::Switch,
        }
    }
}

/// One command a device applied, as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `on`, `brightness`, `color_temp`, `rgb`, `effect`, `switch_mode`.
    pub attribute: &'static str,
    /// The value, as text.
    pub value: String,
    /// Outer message id of the packet that carried it.
    pub msg_id: String,
    /// Inner sequence byte.
    pub seq: u8,
    /// The bridge it came through.
    pub bridge: String,
}

/// One simulated mesh device.
#[derive(Debug, Clone, Serialize)]
pub struct SimDevice {
    /// Mesh id.
    pub id: u16,
    /// Home name.
    pub home: String,
    /// Kind.
    pub kind: Kind,
    /// The Cync type code it reports.
    #[serde(rename = "type")]
    pub type_code: u8,
    /// On.
    pub on: bool,
    /// 0–100.
    pub brightness: u8,
    /// 0–100 (white), or null in RGB/effect mode.
    pub color_temp: Option<u8>,
    /// RGB (meaningful in RGB mode).
    pub rgb: [u8; 3],
    /// Running effect.
    pub effect: Option<&'static str>,
    /// Every command applied, oldest first (bounded by [`MAX_APPLIED`]).
    pub applied_commands: Vec<Applied>,
    /// Applied commands dropped from the list by its bound.
    pub applied_dropped: u64,
    /// Report counter (`fa db` payload[0]).
    #[serde(skip)]
    pub counter: u8,
}

impl SimDevice {
    /// A device in its initial state (off, 50 %, white 50).
    pub fn new(id: u16, home: &str, kind: Kind) -> Self {
        Self {
            id,
            home: home.to_string(),
            kind,
            type_code: kind.type_code(),
            on: false,
            brightness: 50,
            color_temp: Some(50),
            rgb: [255, 255, 255],
            effect: None,
            applied_commands: Vec::new(),
            applied_dropped: 0,
            counter: 0,
        }
    }

    /// A device of Cync type `code`, played by the kind the type table gives it. A dual plug
    /// starts with both outlets off.
    pub fn typed(id: u16, home: &str, code: u8) -> Self {
        let kind = Kind::for_type(code);
        let mut d = Self::new(id, home, kind);
        d.type_code = code;
        if kind == Kind::DualPlug {
            d.brightness = 0;
        }
        d
    }

    /// The state as a status record carries it.
    pub fn status(&self) -> DeviceStatus {
        let temperature = match (self.effect, self.color_temp) {
            (Some(_), _) => 129,
            (None, Some(t)) => t,
            (None, None) => 254,
        };
        DeviceStatus {
            id: MeshId(self.id),
            online: true,
            on: self.on,
            brightness: self.brightness,
            temperature,
            rgb: self.rgb,
        }
    }

    /// Applies a command and records it. Returns false if this kind does not support it.
    pub fn apply(&mut self, action: &Action, msg: MsgId, seq: u8, bridge: &str) -> bool {
        if !self.kind.accepts(action) {
            return false;
        }
        let (attribute, value) = match *action {
            Action::Power(on) if self.kind == Kind::DualPlug => {
                // The whole plug: every outlet.
                self.on = on;
                self.brightness = if on { 0b11 } else { 0 };
                ("on", on.to_string())
            }
            Action::Power(on) => {
                self.on = on;
                ("on", on.to_string())
            }
            Action::Brightness(b) | Action::FanSpeed(b) => {
                self.brightness = b;
                self.on = b > 0;
                ("brightness", b.to_string())
            }
            Action::ColorTemp(t) => {
                self.color_temp = Some(t);
                self.effect = None;
                ("color_temp", t.to_string())
            }
            Action::Rgb(rgb) => {
                self.rgb = rgb;
                self.color_temp = None;
                self.effect = None;
                ("rgb", format!("{},{},{}", rgb[0], rgb[1], rgb[2]))
            }
            Action::Effect(e) => {
                self.effect = Some(Effect::name(e));
                ("effect", e.name().to_string())
            }
            Action::SwitchMode(m) => ("switch_mode", format!("{m:?}").to_lowercase()),
        };
        if self.applied_commands.len() >= MAX_APPLIED {
            self.applied_commands.remove(0);
            self.applied_dropped += 1;
        }
        self.applied_commands.push(Applied {
            attribute,
            value,
            msg_id: msg.to_string(),
            seq,
            bridge: bridge.to_string(),
        });
        true
    }
}

impl SimDevice {
    /// Switches one outlet (1 or 2) of a dual plug and records it; false for any other device
    /// or outlet.
    pub fn apply_outlet(
        &mut self,
        outlet: u8,
        on: bool,
        msg: MsgId,
        seq: u8,
        bridge: &str,
    ) -> bool {
        if self.kind != Kind::DualPlug || !(1..=2).contains(&outlet) {
            return false;
        }
        let Some(mask) = cync_proto::catalog::outlet_mask(self.brightness, outlet, on) else {
            return false;
        };
        self.brightness = mask;
        self.on = mask != 0;
        if self.applied_commands.len() >= MAX_APPLIED {
            self.applied_commands.remove(0);
            self.applied_dropped += 1;
        }
        self.applied_commands.push(Applied {
            attribute: "outlet",
            value: format!("{outlet}={on}"),
            msg_id: msg.to_string(),
            seq,
            bridge: bridge.to_string(),
        });
        true
    }
}

/// A state change, announced to every bridge of the home so each reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The device.
    pub id: u16,
    /// The seq of the command that caused it.
    pub seq: u8,
    /// The bridge that applied it (it reports the change itself).
    pub via: cync_proto::ConnId,
}

/// One home's mesh.
#[derive(Debug)]
pub struct Home {
    /// Name.
    pub name: String,
    devices: Mutex<BTreeMap<u16, SimDevice>>,
    /// Group id → members.
    pub groups: BTreeMap<u16, Vec<u16>>,
    changes: broadcast::Sender<Change>,
}

/// Group id that addresses every device of a simulated home.
pub const ALL_GROUP: u16 = 0x8001;

impl Home {
    /// A home with these devices; group [`ALL_GROUP`] holds them all.
    pub fn new(name: &str, devices: Vec<SimDevice>) -> Arc<Self> {
        let ids: Vec<u16> = devices.iter().map(|d| d.id).collect();
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Self {
            name: name.to_string(),
            devices: Mutex::new(devices.into_iter().map(|d| (d.id, d)).collect()),
            groups: BTreeMap::from([(ALL_GROUP, ids)]),
            changes,
        })
    }

    /// Locks the devices.
    pub fn devices(&self) -> MutexGuard<'_, BTreeMap<u16, SimDevice>> {
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes to state changes (a lagging subscriber misses old ones, as a radio would).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Announces a change.
    pub fn announce(&self, change: Change) {
        let _ = self.changes.send(change);
    }
}
