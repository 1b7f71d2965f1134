//! The device-type table: what a Cync device-type code (the `m2` byte of a mesh-info record, or
//! `type` in the configuration) means — its kind and what it can do.
//!
//! The table is data: one list of codes per capability, in the shape the Cync app's own catalogue
//! uses (on/off, brightness, colour temperature, RGB; plugs and fan controllers by code). A code
//! that is in no list, or a device whose type is not known yet, is [`DeviceType::unknown`]: a
//! plain on/off light, so that nothing is ever dropped for want of a table entry.
//!
//! Codes and capabilities follow the Cync catalogue as published by the open-source
//! controllers; the fan controller (81) speaks its speed in the brightness byte with the steps
//! 0/25/50/75/100 (PROTOCOL.md §8).

use crate::Action;

/// Codes that switch on and off (nearly every device).
pub const ON_OFF: &[u8] = &[
    1, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58, 59, 61, 62, 63,
    64, 65, 66, 67, 68, 80, 81, 82, 83, 85, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138,
    139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 156, 158, 159,
    160, 161, 162, 163, 164, 165,
];
/// Codes that dim.
pub const BRIGHTNESS: &[u8] = &[
    1, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 36, 37, 48, 49, 55, 56, 80, 81, 82, 83, 85, 128, 129, 130, 131, 132, 133,
    134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152,
    153, 154, 156, 158, 159, 160, 161, 162, 163, 164, 165,
];
/// Codes with tunable white.
pub const COLOR_TEMP: &[u8] = &[
    5, 6, 7, 8, 10, 11, 14, 15, 19, 20, 21, 22, 23, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35, 80, 82,
    83, 85, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146,
    147, 153, 154, 156, 158, 159, 160, 161, 162, 163, 164, 165,
];
/// Codes with full colour (and the factory effects).
pub const RGB: &[u8] = &[
    6, 7, 8, 21, 22, 23, 30, 31, 32, 33, 34, 35, 131, 132, 133, 137, 138, 139, 140, 141, 142, 143,
    146, 147, 153, 154, 156, 158, 159, 160, 161, 162, 163, 164, 165,
];
/// Plugs (67 is the multi-outlet plug; cyncd switches it as a whole).
pub const PLUG: &[u8] = &[64, 65, 66, 67, 68];
/// Fan controllers.
pub const FAN: &[u8] = &[81];

/// What a device is, for people and for Home Assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A light: on/off and whatever of brightness, white and colour it has.
    Light,
    /// A plug.
    Plug,
    /// An on/off wall switch.
    Switch,
    /// A fan controller.
    Fan,
}

impl Kind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::Plug => "plug",
            Self::Switch => "switch",
            Self::Fan => "fan",
        }
    }
}

/// Fan speeds, as brightness-byte values (off, low, medium, high, max).
pub const FAN_STEPS: [u8; 5] = [0, 25, 50, 75, 100];
/// Names of the fan speeds above `off`, for presets.
pub const FAN_PRESETS: [&str; 4] = ["low", "medium", "high", "max"];

/// One device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceType {
    /// The Cync code, when known.
    pub code: Option<u8>,
    /// What it is.
    pub kind: Kind,
    /// A model description.
    pub model: &'static str,
    /// Dims (0–100).
    pub brightness: bool,
    /// Tunable white.
    pub color_temp: bool,
    /// Full colour.
    pub rgb: bool,
    /// Factory effects (light shows).
    pub effects: bool,
    /// Fan speed steps above off (0 when not a fan).
    pub fan_speeds: u8,
    /// Warmest white, in kelvin (the device's 0).
    pub min_kelvin: u16,
    /// Coolest white, in kelvin (the device's 100).
    pub max_kelvin: u16,
    /// Whether the code is in the table.
    pub known: bool,
}

/// The white range the Cync app shows for every tunable device.
pub const DEFAULT_KELVIN: (u16, u16) = (2000, 7000);

impl DeviceType {
    /// The type of `code`; an unknown or missing code is [`DeviceType::unknown`].
    pub fn of(code: Option<u8>) -> Self {
        let Some(c) = code else {
            return Self::unknown(None);
        };
        let has = |list: &[u8]| list.contains(&c);
        if !has(ON_OFF) {
            return Self::unknown(Some(c));
        }
        let (brightness, color_temp, rgb) = (has(BRIGHTNESS), has(COLOR_TEMP), has(RGB));
        let (kind, model, fan_speeds) = if has(FAN) {
            (Kind::Fan, "Fan controller", 4)
        } else if has(PLUG) {
            let model = if c == 67 {
                "Multi-outlet plug"
            } else {
                "Smart plug"
            };
            (Kind::Plug, model, 0)
        } else if !brightness {
            (Kind::Switch, "On/off switch", 0)
        } else if rgb {
            (Kind::Light, "Full colour light", 0)
        } else if color_temp {
            (Kind::Light, "Tunable white light", 0)
        } else {
            (Kind::Light, "Dimmable light", 0)
        };
        Self {
            code: Some(c),
            kind,
            model,
            // A fan's speed travels in the brightness byte; it is not a dimmer.
            brightness: brightness && kind != Kind::Fan,
            color_temp,
            rgb,
            effects: rgb,
            fan_speeds,
            min_kelvin: DEFAULT_KELVIN.0,
            max_kelvin: DEFAULT_KELVIN.1,
            known: true,
        }
    }

    /// A plain on/off light, for a code the table does not know.
    pub fn unknown(code: Option<u8>) -> Self {
        Self {
            code,
            kind: Kind::Light,
            model: "Unknown Cync device",
            brightness: false,
            color_temp: false,
            rgb: false,
            effects: false,
            fan_speeds: 0,
            min_kelvin: DEFAULT_KELVIN.0,
            max_kelvin: DEFAULT_KELVIN.1,
            known: false,
        }
    }

    /// Whether the device can carry out `action`. Devices of unknown type accept everything:
    /// cyncd cannot know better, and the device itself rejects what it cannot do.
    pub fn supports(&self, action: &Action) -> bool {
        if !self.known {
            return true;
        }
        match action {
            Action::Power(_) => true,
            Action::Brightness(_) => self.brightness,
            Action::ColorTemp(_) => self.color_temp,
            Action::Rgb(_) => self.rgb,
            Action::Effect(_) => self.effects,
            Action::FanSpeed(_) => self.fan_speeds > 0,
            Action::SwitchMode(_) => self.kind == Kind::Switch,
        }
    }

    /// The capabilities as names (`on_off`, `brightness`, `color_temp`, `rgb`, `effects`,
    /// `fan_speed`).
    pub fn capabilities(&self) -> Vec<&'static str> {
        let mut out = vec!["on_off"];
        for (has, name) in [
            (self.brightness, "brightness"),
            (self.color_temp, "color_temp"),
            (self.rgb, "rgb"),
            (self.effects, "effects"),
            (self.fan_speeds > 0, "fan_speed"),
        ] {
            if has {
                out.push(name);
            }
        }
        out
    }

    /// The device's 0–100 white value as kelvin.
    pub fn kelvin(&self, temp: u8) -> u16 {
        let span = u32::from(self.max_kelvin.saturating_sub(self.min_kelvin));
        let k = u32::from(self.min_kelvin) + span * u32::from(temp.min(100)) / 100;
        u16::try_from(k).unwrap_or(self.max_kelvin)
    }

    /// Kelvin as the device's 0–100 white value (clamped to the range, rounded).
    pub fn temp_of_kelvin(&self, kelvin: u32) -> u8 {
        let (lo, hi) = (u32::from(self.min_kelvin), u32::from(self.max_kelvin));
        if hi <= lo {
            return 0;
        }
        let k = kelvin.clamp(lo, hi);
        let t = ((k - lo) * 100 + (hi - lo) / 2) / (hi - lo);
        u8::try_from(t).unwrap_or(100)
    }

    /// The fan step (0 = off, 1–4) of a brightness-byte speed, rounded to the nearest step.
    pub fn fan_step(speed: u8) -> u8 {
        let s = speed.min(100);
        (s + 12) / 25
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_lists() {
        let plug = DeviceType::of(Some(68));
        assert_eq!(
            (plug.kind, plug.brightness, plug.known),
            (Kind::Plug, false, true)
        );
        let rgb = DeviceType::of(Some(30));
        assert!(rgb.kind == Kind::Light && rgb.rgb && rgb.color_temp && rgb.effects);
        let white = DeviceType::of(Some(5));
        assert!(white.color_temp && !white.rgb && white.brightness);
        let dim = DeviceType::of(Some(55));
        assert!(dim.brightness && !dim.color_temp && dim.kind == Kind::Light);
        let switch = DeviceType::of(Some(51));
        assert_eq!(switch.kind, Kind::Switch);
        let fan = DeviceType::of(Some(81));
        assert_eq!(
            (fan.kind, fan.fan_speeds, fan.brightness),
            (Kind::Fan, 4, false)
        );
    }

    #[test]
    fn unknown_codes_are_on_off_lights_that_accept_everything() {
        for t in [DeviceType::of(None), DeviceType::of(Some(250))] {
            assert_eq!(t.kind, Kind::Light);
            assert!(!t.known && !t.brightness);
            assert!(t.supports(&Action::Rgb([1, 2, 3])));
        }
    }

    #[test]
    fn capability_checks() {
        let plug = DeviceType::of(Some(68));
        assert!(plug.supports(&Action::Power(true)));
        assert!(!plug.supports(&Action::Brightness(5)));
        assert!(!plug.supports(&Action::Rgb([0, 0, 0])));
        let fan = DeviceType::of(Some(81));
        assert!(fan.supports(&Action::FanSpeed(50)));
        assert!(!fan.supports(&Action::Brightness(50)));
        assert_eq!(
            DeviceType::of(Some(30)).capabilities(),
            ["on_off", "brightness", "color_temp", "rgb", "effects"]
        );
    }

    #[test]
    fn kelvin_round_trips_on_the_device_scale() {
        let t = DeviceType::of(Some(5));
        assert_eq!(
            (t.kelvin(0), t.kelvin(100), t.kelvin(50)),
            (2000, 7000, 4500)
        );
        for v in 0..=100u8 {
            assert_eq!(t.temp_of_kelvin(u32::from(t.kelvin(v))), v);
        }
        assert_eq!(t.temp_of_kelvin(1000), 0);
        assert_eq!(t.temp_of_kelvin(9000), 100);
        assert_eq!(t.kelvin(255), 7000);
    }

    #[test]
    fn fan_steps_round_to_the_nearest() {
        let steps: Vec<u8> = [0, 10, 13, 25, 37, 38, 50, 75, 100, 255]
            .into_iter()
            .map(DeviceType::fan_step)
            .collect();
        assert_eq!(steps, [0, 0, 1, 1, 1, 2, 2, 3, 4, 4]);
    }

    #[test]
    fn every_listed_code_is_switchable() {
        for list in [BRIGHTNESS, COLOR_TEMP, RGB, PLUG, FAN] {
            for c in list {
                assert!(ON_OFF.contains(c), "{c}");
            }
        }
    }
}
