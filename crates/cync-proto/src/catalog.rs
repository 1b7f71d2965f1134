//! The device-type table: what a Cync device-type code (the `m2` byte of a mesh-info record, or
//! `type` in the configuration) means — its kind, the product people know, and what it can do.
//!
//! The table is data: one list of codes per capability, in the shape the Cync app's own catalogue
//! uses (on/off, brightness, colour temperature, RGB; plugs, fans, thermostats… by code), plus a
//! list of product names. [`DeviceType::of`] composes them. A code that is in no list, or a device
//! whose type is not known yet, is [`DeviceType::unknown`]: a plain on/off light that accepts
//! every command, so that nothing is ever dropped for want of a table entry; the daemon can tell
//! it apart with [`DeviceType::is_known`] and report the code once.
//!
//! Kinds: lights, plugs, switches and fans are commanded; thermostats, sensors, wire-free remotes
//! and cameras are not lights and accept no mesh command ([`DeviceType::controllable`]). A
//! dimmer wall switch is a [`Kind::Light`] (it dims a load), as it always was here.
//!
//! # Where the facts come from
//!
//! Facts were read from the open-source controllers; none of their code is used.
//!
//! - **app**: Kinachi249/pycync `pycync/devices/device_types.py` (type names as the Cync Android
//!   app 6.20 knows them) and `pycync/devices/capabilities.py` (the app's capabilities per type:
//!   OnOff, Dimming, CctColor, RgbColor, LightShow, FanSpeed, SegmentedControl, NoMesh,
//!   DataPointProtocol).
//! - **lan**: baudneo/cync-lan `src/cync_lan/metadata/model_info.py` (product names, SKUs,
//!   kelvin, `MULTI_ENDPOINT_TYPES = [67]` and its notes on type 67).
//! - **ha**: jslamartina/hass-addons `cync-controller/src/cync_controller/metadata/model_info.py`
//!   (product names, SKUs and kelvin of 26, 138, 171; 224 is a thermostat).
//! - **fan**: baudneo/cync-lan issue #21 and pull request #22: the fan controller takes 0–100 in
//!   the brightness byte, 25/50/75/100 for low/medium/high/max, confirmed on a device (an
//!   earlier user report of 0–255 is thought to be older firmware); PROTOCOL.md §8 and §12.1
//!   item 18. Type 121 (app `FanSpeedSwitchGen2`) is assumed to step the same way.
//! - **outlets**: PROTOCOL.md §8 (type 67: the brightness byte is a bit mask of outlet states,
//!   bit outlet − 1); pycync `tests/test_packet_parser.py` `test_outdoor_plug_sync_packet`
//!   (outlet 1 = left, 2 = right; mask 2 = right on); cync-lan `model_info.py` notes on 67 (a
//!   command addresses one outlet by a sub-id byte right after the device-id byte).
//! - **lists**: the capability lists this module always had (the Cync catalogue as the
//!   open-source controllers publish it), checked against app wherever both list a code.
//!
//! Kelvin: every tunable-white product shows 2000–7000 K (PROTOCOL.md §8; lan and ha give
//! 2000–7000 explicitly for 26, 72, 76, 138, 171). Fixed-white products with a known colour
//! (lan: 9, 17, 18, 128, 148, 151, 152 at 2700 K) carry that as both ends of their range.
//!
//! Type 155 is a bulb (app: `SingleChipFullColorDynamicEffectsBulbA19`; lan: "Dynamic Effects
//! E26 Bulb"), not a strip; 157 is its BR30 sibling.
//!
//! Type 80 (C by GE Sol) is said to take brightness and white with opcodes `d2`/`e2` rather than
//! `f0` (lan `OpcodeFamily(sol_lamp=True)`; PROTOCOL.md §5.1, unverified); cyncd sends `f0` to
//! every light, so a Sol may ignore brightness and white until that is confirmed.

use crate::Action;
use crate::command::Target;
use crate::status::DeviceStatus;

/// Codes that switch on and off (every commanded device).
pub const ON_OFF: &[u8] = &[
    1, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
    57, 58, 59, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 72, 73, 74, 75, 76, 80, 81, 82, 83, 85, 97,
    105, 107, 108, 109, 110, 111, 116, 117, 118, 119, 120, 121, 128, 129, 130, 131, 132, 133, 134,
    135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153,
    154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172,
    180, 181, 182,
];
/// Codes that dim.
pub const BRIGHTNESS: &[u8] = &[
    1, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 46, 47, 48, 49, 55, 56, 71, 72, 73, 74, 75, 76, 80,
    81, 82, 83, 85, 97, 105, 107, 108, 109, 110, 116, 117, 128, 129, 130, 131, 132, 133, 134, 135,
    136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152, 153, 154,
    155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 180, 181,
    182,
];
/// Codes with tunable white.
pub const COLOR_TEMP: &[u8] = &[
    5, 6, 7, 8, 10, 11, 14, 15, 19, 20, 21, 22, 23, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35, 41, 42,
    43, 44, 46, 47, 71, 72, 73, 74, 75, 76, 80, 82, 83, 85, 97, 105, 107, 108, 109, 110, 129, 130,
    131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 153, 154, 155,
    156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 180, 181, 182,
];
/// Codes with full colour (and the factory effects).
pub const RGB: &[u8] = &[
    6, 7, 8, 21, 22, 23, 30, 31, 32, 33, 34, 35, 41, 42, 43, 44, 46, 47, 71, 72, 73, 74, 75, 76,
    97, 105, 107, 108, 109, 110, 131, 132, 133, 137, 138, 139, 140, 141, 142, 143, 146, 147, 153,
    154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 180,
    181, 182,
];
/// "Dynamic Effects" products: the app lists per-segment colour (SegmentedControl) and music
/// shows for them. cyncd can send them the factory effects like any colour light; the segment
/// and music scenes have no known wire form.
pub const DYNAMIC: &[u8] = &[71, 72, 73, 74, 75, 76, 155, 157, 158, 159, 166, 167, 168];
/// Plugs (67 has two outlets, see [`MULTI_OUTLET`]).
pub const PLUG: &[u8] = &[64, 65, 66, 67, 68, 69, 111, 172];
/// Plugs with more than one outlet, and how many (lan `MULTI_ENDPOINT_TYPES`, PROTOCOL.md §8).
pub const MULTI_OUTLET: &[(u8, u8)] = &[(67, 2)];
/// Fan controllers (81 Gen 1, 121 Gen 2; app FanSpeed).
pub const FAN: &[u8] = &[81, 121];
/// Thermostats (app `ThermostatGen1` 224, `ThermostatGen2` 122; 224 is NoMesh and speaks the
/// data-point protocol: its 0x43 carries JSON, not status records).
pub const THERMOSTAT: &[u8] = &[122, 224];
/// Battery sensors (app `WireFreeMotionSensor`).
pub const SENSOR: &[u8] = &[96];
/// Battery wall switches and remotes that control other devices and take no command themselves
/// (app `WireFreeSmartSwitchDimmer…`, `WireFreeSmartRemoteDimmer…`: no OnOff capability).
pub const REMOTE: &[u8] = &[112, 113, 114, 115];
/// Cameras (app `Camera…`, NoMesh: not on the Bluetooth mesh).
pub const CAMERA: &[u8] = &[240, 241, 242];

/// Fixed-white products and their colour temperature in kelvin (lan).
const FIXED_WHITE: &[(u8, u16)] = &[
    (9, 2700),
    (17, 2700),
    (18, 2700),
    (128, 2700),
    (148, 2700),
    (151, 2700),
    (152, 2700),
];

/// Product names as people know them, and SKUs where a source gives one. Source tags as in the
/// module documentation; `app:Name` is the app's internal type name the product was named from.
#[rustfmt::skip]
const PRODUCTS: &[(u8, &str, Option<&str>)] = &[
    (5, "Tunable White A19 Bulb", None),                                        // lan, ha
    (6, "Full Color A19 Bulb", None),                                           // app:FullColorA19Gen2Standalone
    (8, "Full Color Light Strip", None),                                        // app:FullColorStripGen1Standalone
    (9, "Soft White A19 Bulb", None),                                           // lan
    (10, "C-Sleep A19 Bulb", None),                                             // app:CSleepA19Gen2StandaloneCECTier2
    (11, "C-Sleep BR30 Bulb", None),                                            // app:CSleepBR30Gen2StandaloneCECTier2
    (13, "C-Life A19 Bulb", None),                                              // app:CLifeA19TCOGen2Standalone
    (14, "C-Sleep A19 Bulb", None),                                             // app:CSleepA19TCOGen2Standalone
    (15, "C-Sleep BR30 Bulb", None),                                            // app:CSleepBR30TCOGen2Standalone
    (17, "C-Life A19 Bulb", Some("CLED199L2")),                                 // app, lan
    (18, "C-Life A19 Bulb", Some("CLED199L2")),                                 // app, lan
    (19, "C-Sleep A19 Bulb", None),                                             // app:CSleepA19Gen2MadeForGoogle
    (20, "C-Sleep BR30 Bulb", None),                                            // app:CSleepBR30Gen2MadeForGoogle
    (21, "Full Color A19 Bulb", Some("CLEDA1911C2")),                           // lan, ha
    (22, "Full Color BR30 Bulb", Some("CLEDR3010C2")),                          // lan, ha
    (23, "Full Color Light Strip", None),                                       // app:FullColorStripGen1MadeForGoogle
    (24, "C-Life A19 Bulb", None),                                              // app:CLifeA19Gen2MadeForGoogleCECTier2
    (25, "C-Sleep A19 Bulb", None),                                             // app:CSleepA19Gen2MadeForGoogleCECTier2
    (26, "C-Sleep BR30 Bulb", Some("CLEDR309S2")),                              // app, lan, ha
    (27, "C-Life A19 Bulb", None),                                              // app:CLifeA19TCOGen2MadeForGoogle
    (28, "C-Sleep A19 Bulb", None),                                             // app:CSleepA19TCOGen2MadeForGoogle
    (29, "C-Sleep BR30 Bulb", None),                                            // app:CSleepBR30TCOGen2MadeForGoogle
    (30, "Full Color A19 Bulb", Some("CLEDA1911C2")),                           // app, lan, ha
    (31, "Full Color A19 Bulb", None),                                          // app:FullColorA19TCOGen2MadeForGoogle
    (32, "Full Color BR30 Bulb", None),                                         // app:FullColorBR30TCOGen2Standalone
    (33, "Full Color BR30 Bulb", None),                                         // app:FullColorBR30TCOGen2MadeForGoogle
    (34, "Full Color Light Strip", None),                                       // app:FullColorStripTCOGen2Standalone
    (35, "Full Color Light Strip", None),                                       // app:FullColorStripTCOGen2MadeForGoogle
    (36, "Dimmer Switch", None),                                                // app:FourWireSwitchDimmerGen2
    (37, "Dimmer Switch with Motion Sensor", Some("CSWDMOCBWF1")),              // app, lan, ha
    (38, "Smart Switch (circle)", None),                                        // app:FourWireSwitchCircleGen2
    (39, "Paddle Switch", Some("CSWONBLPWF1")),                                 // app, lan
    (40, "Toggle Switch", Some("CSWONBLTWF1")),                                 // app, lan
    (41, "Reveal HD+ Full Color Under Cabinet Light 12 in", None),              // app, lan
    (42, "Reveal HD+ Full Color Under Cabinet Light 18 in", None),              // app, lan, ha
    (43, "Reveal HD+ Full Color Under Cabinet Light 24 in", None),              // app, lan, ha
    (44, "Full Color Under Cabinet Puck Light", None),                          // app:SingleChipFullColorUnderCabinetPuckFixtureGen1
    (46, "Full Color 6 in Recessed Downlight", None),                           // app:SingleChipFullColorRecessedCanRetrofitFixture6InchGen1
    (47, "Reveal Full Color 6 in Recessed Downlight", Some("CFIXRSCR6CRVD")),   // app, lan
    (48, "Dimmer Switch", Some("CSWDMBLBWF1")),                                 // app, lan, ha
    (49, "Dimmer Switch with Motion Sensor", Some("CSWDMOCBWF1")),              // app, lan, ha
    (51, "Paddle Switch", None),                                                // app:FourWireSwitchPaddleGen1
    (52, "Toggle Switch", None),                                                // app:FourWireSwitchToggleGen1
    (53, "Smart Switch (circle)", None),                                        // app:FourWireSwitchCircleGen1
    (55, "Dimmer Switch (no neutral)", None),                                   // app, lan, ha
    (56, "Dimmer Switch with Motion Sensor (no neutral)", None),                // app, lan
    (57, "Paddle Switch (no neutral)", Some("CSWONBLPWF1NN")),                  // app, lan
    (58, "Toggle Switch (no neutral)", None),                                   // app, lan, ha
    (59, "Smart Switch (circle, no neutral)", None),                            // app:NoNeutralSwitchGen1SwitchCircle
    (61, "Paddle Switch", None),                                                // app:FourWireSwitchPaddleTCOGen1
    (62, "Toggle Switch", None),                                                // app:FourWireSwitchToggleTCOGen1
    (63, "Smart Switch (circle)", None),                                        // app:FourWireSwitchCircleTCOGen1
    (64, "Indoor Smart Plug", None),                                            // app:PlugGen1, lan, ha
    (65, "Indoor Smart Plug", None),                                            // app:PlugTCOGen2
    (66, "Indoor Smart Plug", None),                                            // app:PlugGen2
    (67, "Outdoor Smart Plug (2 outlets)", Some("CPLGOD2BLG1")),                // app:PlugOutdoorGen1, lan
    (68, "Indoor Smart Plug", None),                                            // app:SingleChipPlug, lan, ha
    (69, "Outdoor Smart Plug", None),                                           // app:PlugOutdoorGen2
    (71, "Dynamic Effects Premium Light Strip 16 ft", Some("CSTR16CDID")),      // app, lan
    (72, "Dynamic Effects Premium Light Strip 32 ft", None),                    // app, lan
    (73, "Dynamic Effects Outdoor Neon Light Strip 16 ft", None),               // app
    (74, "Dynamic Effects Outdoor Neon Light Strip 32 ft", None),               // app
    (75, "Dynamic Effects Outdoor Café Lights 24 ft", None),                    // app
    (76, "Dynamic Effects Outdoor Café Lights 48 ft", Some("CCF48CDOD")),       // app, lan
    (80, "C by GE Sol", None),                                                  // app:SolGen1Standalone, lan
    (81, "Fan Speed Controller", Some("CSWFSBLBWF1/ST-1P")),                    // app, lan, ha
    (82, "C-Life BR30 Bulb", None),                                             // app:CLifeBR30Gen1Standalone
    (83, "C-Sleep BR30 Bulb", None),                                            // app:CSleepBR30Gen2Standalone
    (96, "Wire-Free Motion Sensor", None),                                      // app:WireFreeMotionSensor
    (97, "Full Color ST19 Edison Bulb", None),                                  // app:SingleChipFullColorBulbST19Gen2
    (105, "Full Color A21 Bulb", None),                                         // app:SingleChipFullColorBulbA21Gen2
    (107, "Reveal Full Color A19 Bulb", Some("CLEDA199CDRV")),                  // app, lan
    (108, "Reveal Full Color BR30 Bulb", None),                                 // app:SingleChipRevealFullColorBulbBR30Gen2
    (109, "Reveal Full Color A21 Bulb", None),                                  // app:SingleChipRevealFullColorBulbA21Gen2
    (110, "Full Color Light Strip 16 ft", None),                                // app:SingleChipFullColorIndoorValueLightStrip16ftGen3
    (111, "Outdoor Smart Plug", None),                                          // app:PlugOutdoorGen3
    (112, "Wire-Free Dimmer Switch", None),                                     // app:WireFreeSmartSwitchDimmer
    (113, "Wire-Free Dimmer and Color Switch", None),                           // app, lan, ha
    (114, "Wire-Free Dimmer Remote", None),                                     // app:WireFreeSmartRemoteDimmer
    (115, "Wire-Free Dimmer and Color Remote", None),                           // app:WireFreeSmartRemoteDimmerPlusColorController
    (116, "Dimmer Switch", None),                                               // app:FourWireSwitchDimmerGen3
    (117, "Dimmer Switch with Motion Sensor", None),                            // app:FourWireSwitchMotionSensingDimmerGen3
    (118, "Smart Switch (circle)", None),                                       // app:FourWireSwitchCircleGen3
    (119, "Paddle Switch", None),                                               // app:FourWireSwitchPaddleGen3
    (120, "Toggle Switch", None),                                               // app:FourWireSwitchToggleGen3
    (121, "Fan Speed Controller", None),                                        // app:FanSpeedSwitchGen2
    (122, "Thermostat", None),                                                  // app:ThermostatGen2
    (128, "Dimmable A19 Bulb", Some("CLEDA199LD1")),                            // app, lan
    (129, "Tunable White A19 Bulb", None),                                      // app:DirectConnectTunableWhiteBulbA19
    (130, "Tunable White BR30 Bulb", None),                                     // app:DirectConnectTunableWhiteBulbBR30
    (131, "Full Color A19 Bulb", None),                                         // app, lan, ha
    (132, "Full Color BR30 Bulb", None),                                        // app:DirectConnectFullColorBulbBR30
    (133, "Full Color Light Strip", None),                                      // app, lan, ha
    (134, "Soft White A19 Bulb", None),                                         // app:SingleChipSoftWhiteA19
    (135, "Tunable White A19 Bulb", None),                                      // app:SingleChipTunableWhiteA19
    (136, "Tunable White BR30 Bulb", None),                                     // app:SingleChipTunableWhiteBR30
    (137, "Full Color A19 Bulb", None),                                         // app, lan, ha
    (138, "Full Color BR30 Bulb", Some("CLEDR309CD1")),                         // app, lan, ha
    (139, "Full Color Light Strip", None),                                      // app:SingleChipFullColorIndoorValueLightStripGen2
    (140, "Full Color PAR38 Outdoor Floodlight", Some("CLEDP3815CD1")),         // app, lan, ha
    (141, "Outdoor Premium Light Strip 16 ft", None),                           // app:SingleChipFullColorOutdoorPremiumLightStrip16ftGen2
    (142, "Full Color 4 in Wafer Downlight", None),                             // app:SingleChipFullColorWafer4InchGen1
    (143, "Full Color 6 in Wafer Downlight", None),                             // app:SingleChipFullColorWafer6InchGen1
    (144, "Tunable White 4 in Wafer Downlight", None),                          // app:SingleChipTunableWhiteWafer4InchGen1
    (145, "Tunable White 6 in Wafer Downlight", None),                          // app:SingleChipTunableWhiteWafer6InchGen1
    (146, "Full Color ST19 Edison Bulb", Some("CLEDST196CDGS")),                // app, lan, ha
    (147, "Full Color G25 Edison Bulb", Some("CLEDG256CDGS")),                  // app, lan, ha
    (148, "Soft White ST19 Edison Bulb", None),                                 // app, lan, ha
    (149, "Soft White G25 Edison Bulb", None),                                  // app:SingleChipSoftWhiteBulbG25Gen1
    (150, "Soft White Candle Bulb", None),                                      // app:SingleChipSoftWhiteBulbBCGen1
    (151, "Soft White Decorative Candle Bulb", Some("CLEDBM6LDGF")),            // app, lan
    (152, "Reveal Soft White A19 Bulb", None),                                  // app, lan, ha
    (153, "Reveal Full Color A19 Bulb", None),                                  // app:SingleChipRevealFullColorBulbA19
    (154, "Reveal Full Color BR30 Bulb", None),                                 // app:SingleChipRevealFullColorBulbBR30
    (155, "Dynamic Effects A19 Bulb", None),                                    // app, lan
    (156, "Reveal Full Color A21 Bulb", None),                                  // app:SingleChipRevealFullColorBulbA21
    (157, "Dynamic Effects BR30 Bulb", None),                                   // app:SingleChipFullColorDynamicEffectsBulbBR30
    (158, "Dynamic Effects Premium Light Strip", None),                         // app:SingleChipFullColorIndoorPremiumLightStripGen2
    (159, "Dynamic Effects Outdoor Premium Light Strip 32 ft", None),           // app
    (160, "Full Color A21 Bulb", None),                                         // app:SingleChipFullColorBulbA21
    (161, "Reveal Full Color 2 in Wafer Downlight", None),                      // app:SingleChipRevealFullColorWafer2InchGen1
    (162, "Reveal Full Color 4 in Gimbal Downlight", None),                     // app:SingleChipRevealFullColorGimbalWafer4InchGen1
    (163, "Reveal Full Color 6 in Gimbal Downlight", None),                     // app:SingleChipRevealFullColorGimbalWafer6InchGen1
    (164, "Reveal Full Color 4 in High Lumen Downlight", None),                 // app
    (165, "Reveal Full Color 6 in High Lumen Downlight", None),                 // app
    (166, "Dynamic Effects Neon Light Strip 10 ft", None),                      // app
    (167, "Dynamic Effects Neon Light Strip 16 ft", None),                      // app
    (168, "Dynamic Effects Hexagon Light Panels", None),                        // app
    (169, "Reveal HD+ Full Color 4 in Wafer Downlight", Some("CFIXCNLR4CRVD")), // app, lan, ha
    (170, "Reveal Full Color 6 in Wafer Downlight", None),                      // app, lan
    (171, "Full Color A19 Bulb", Some("CLEDA1921C4")),                          // app, ha
    (172, "Indoor Smart Plug", None),                                           // app:SingleChipPlugTCOGen1
    (180, "Reveal Full Color 4 in High Lumen Downlight", None),                 // app
    (181, "Reveal Full Color 6 in High Lumen Downlight", None),                 // app
    (182, "Full Color A19 Clear Spiral Bulb", None),                            // app
    (224, "Thermostat", None),                                                  // app:ThermostatGen1, lan, ha
    (240, "Indoor Camera", None),                                               // app:CameraIndoorGen1
    (241, "Outdoor Wired Camera", None),                                        // app:CameraOutdoorWiredGen1
    (242, "Outdoor Battery Camera", None),                                      // app:CameraOutdoorBatteryGen1
];

/// What a device is, for people and for Home Assistant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A light: on/off and whatever of brightness, white and colour it has (dimmer wall
    /// switches included).
    Light,
    /// A plug.
    Plug,
    /// An on/off wall switch.
    Switch,
    /// A fan controller.
    Fan,
    /// A thermostat: never a light; its state is a JSON sensor report, not a status record.
    Thermostat,
    /// A battery sensor (motion).
    Sensor,
    /// A battery wall switch or remote that commands other devices.
    Remote,
    /// A camera (not on the mesh).
    Camera,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Self::Light,
        Self::Plug,
        Self::Switch,
        Self::Fan,
        Self::Thermostat,
        Self::Sensor,
        Self::Remote,
        Self::Camera,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::Plug => "plug",
            Self::Switch => "switch",
            Self::Fan => "fan",
            Self::Thermostat => "thermostat",
            Self::Sensor => "sensor",
            Self::Remote => "remote",
            Self::Camera => "camera",
        }
    }

    /// Whether devices of this kind take mesh commands (lights, plugs, switches, fans).
    pub fn controllable(self) -> bool {
        matches!(self, Self::Light | Self::Plug | Self::Switch | Self::Fan)
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
    /// A short generic description ("Smart plug", "Full colour light"); kept stable because
    /// configurations and snapshots show it. [`DeviceType::product`] names the product.
    pub model: &'static str,
    /// The product as people know it ("Outdoor Smart Plug (2 outlets)"); the generic
    /// description when no source names the code.
    pub product: &'static str,
    /// The product's SKU, where a source gives one.
    pub sku: Option<&'static str>,
    /// Dims (0–100).
    pub brightness: bool,
    /// Tunable white.
    pub color_temp: bool,
    /// Full colour.
    pub rgb: bool,
    /// Factory effects (light shows).
    pub effects: bool,
    /// A "Dynamic Effects" product (segmented colour and music shows in the app).
    pub dynamic: bool,
    /// Fan speed steps above off (0 when not a fan).
    pub fan_speeds: u8,
    /// Separately switched outlets: 2 for the dual outdoor plug (its brightness byte is the
    /// outlet bit mask), 1 for other plugs, 0 for everything else.
    pub outlets: u8,
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
        let kind = if has(THERMOSTAT) {
            Kind::Thermostat
        } else if has(SENSOR) {
            Kind::Sensor
        } else if has(REMOTE) {
            Kind::Remote
        } else if has(CAMERA) {
            Kind::Camera
        } else if !has(ON_OFF) {
            return Self::unknown(Some(c));
        } else if has(FAN) {
            Kind::Fan
        } else if has(PLUG) {
            Kind::Plug
        } else if !has(BRIGHTNESS) {
            Kind::Switch
        } else {
            Kind::Light
        };
        let (brightness, color_temp, rgb) = (has(BRIGHTNESS), has(COLOR_TEMP), has(RGB));
        let model = match kind {
            Kind::Fan => "Fan controller",
            Kind::Plug if c == 67 => "Multi-outlet plug",
            Kind::Plug => "Smart plug",
            Kind::Switch => "On/off switch",
            Kind::Light if rgb => "Full colour light",
            Kind::Light if color_temp => "Tunable white light",
            Kind::Light => "Dimmable light",
            Kind::Thermostat => "Thermostat",
            Kind::Sensor => "Sensor",
            Kind::Remote => "Wire-free remote",
            Kind::Camera => "Camera",
        };
        let (product, sku) = PRODUCTS
            .iter()
            .find(|(p, _, _)| *p == c)
            .map_or((model, None), |(_, name, sku)| (*name, *sku));
        let outlets = match kind {
            Kind::Plug => MULTI_OUTLET
                .iter()
                .find(|(p, _)| *p == c)
                .map_or(1, |(_, n)| *n),
            _ => 0,
        };
        let (min_kelvin, max_kelvin) = FIXED_WHITE
            .iter()
            .find(|(p, _)| *p == c)
            .map_or(DEFAULT_KELVIN, |(_, k)| (*k, *k));
        Self {
            code: Some(c),
            kind,
            model,
            product,
            sku,
            // A fan's speed travels in the brightness byte; it is not a dimmer.
            brightness: brightness && kind != Kind::Fan,
            color_temp,
            rgb,
            effects: rgb,
            dynamic: has(DYNAMIC),
            fan_speeds: if kind == Kind::Fan { 4 } else { 0 },
            outlets,
            min_kelvin,
            max_kelvin,
            known: true,
        }
    }

    /// A plain on/off light, for a code the table does not know.
    pub fn unknown(code: Option<u8>) -> Self {
        Self {
            code,
            kind: Kind::Light,
            model: "Unknown Cync device",
            product: "Unknown Cync device",
            sku: None,
            brightness: false,
            color_temp: false,
            rgb: false,
            effects: false,
            dynamic: false,
            fan_speeds: 0,
            outlets: 0,
            min_kelvin: DEFAULT_KELVIN.0,
            max_kelvin: DEFAULT_KELVIN.1,
            known: false,
        }
    }

    /// Whether the code is in the table. A daemon reports a device whose type is not known
    /// once, with its code, so that people can tell us what it is.
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Whether the device takes mesh commands at all (see [`Kind::controllable`]); unknown
    /// types do.
    pub fn controllable(&self) -> bool {
        !self.known || self.kind.controllable()
    }

    /// Whether the device can carry out `action`. Devices of unknown type accept everything:
    /// cyncd cannot know better, and the device itself rejects what it cannot do. Thermostats,
    /// sensors, remotes and cameras accept nothing.
    pub fn supports(&self, action: &Action) -> bool {
        if !self.known {
            return true;
        }
        if !self.kind.controllable() {
            return false;
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
    /// `fan_speed`); empty for the kinds that take no command.
    pub fn capabilities(&self) -> Vec<&'static str> {
        if !self.controllable() {
            return Vec::new();
        }
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

    /// Whether outlet `outlet` (1-based) of this plug is on in `status`: for a multi-outlet
    /// plug the brightness byte is the outlet bit mask (PROTOCOL.md §8), gated by the state
    /// byte (a plug that reports off has every outlet off); a single-outlet plug's outlet 1
    /// follows the state. `None` for an outlet the device does not have.
    pub fn outlet_on(&self, status: &DeviceStatus, outlet: u8) -> Option<bool> {
        if outlet == 0 || outlet > self.outlets {
            return None;
        }
        if self.outlets == 1 {
            return Some(status.on);
        }
        Some(status.on && outlet_bit(status.brightness, outlet)?)
    }
}

/// Whether bit `outlet − 1` of an outlet mask is set (outlets 1–8; `None` outside).
pub fn outlet_bit(mask: u8, outlet: u8) -> Option<bool> {
    let bit = outlet.checked_sub(1).filter(|b| *b < 8)?;
    Some(mask & (1 << bit) != 0)
}

/// The outlet mask with outlet `outlet` (1–8) switched on or off; `None` outside 1–8.
/// PROTOCOL.md §8: bit `outlet − 1` of the brightness byte is that outlet's state.
pub fn outlet_mask(mask: u8, outlet: u8, on: bool) -> Option<u8> {
    let bit = outlet.checked_sub(1).filter(|b| *b < 8)?;
    Some(if on {
        mask | (1 << bit)
    } else {
        mask & !(1 << bit)
    })
}

/// The command target of one outlet of a multi-outlet plug: the device id byte followed by the
/// outlet number as "sub id" instead of the `00` high byte (PROTOCOL.md §9.1, §12.1 item 12;
/// cync-lan's notes on type 67). A (legacy) reading that no capture confirms. `None` for a mesh
/// id above 255 (the sub-id form has one byte for it) or an outlet outside 1–8.
pub fn outlet_target(mesh_id: u16, outlet: u8) -> Option<Target> {
    let id = u8::try_from(mesh_id).ok()?;
    if !(1..=8).contains(&outlet) {
        return None;
    }
    Some(Target::Device(u16::from_le_bytes([id, outlet])))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::MeshId;

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

    /// The types the issue names, written out from the sources (not from the lists above), so
    /// that a wrong list entry fails here: code, kind, product, capabilities, kelvin.
    #[test]
    fn named_types_match_their_sources() {
        let full = ["on_off", "brightness", "color_temp", "rgb", "effects"];
        let plug: [&str; 1] = ["on_off"];
        let none: [&str; 0] = [];
        type Case<'a> = (u8, Kind, &'a str, &'a [&'a str], (u16, u16));
        let cases: &[Case<'_>] = &[
            (
                47,
                Kind::Light,
                "Reveal Full Color 6 in Recessed Downlight",
                &full,
                (2000, 7000),
            ),
            (64, Kind::Plug, "Indoor Smart Plug", &plug, (2000, 7000)),
            (65, Kind::Plug, "Indoor Smart Plug", &plug, (2000, 7000)),
            (66, Kind::Plug, "Indoor Smart Plug", &plug, (2000, 7000)),
            (
                67,
                Kind::Plug,
                "Outdoor Smart Plug (2 outlets)",
                &plug,
                (2000, 7000),
            ),
            (68, Kind::Plug, "Indoor Smart Plug", &plug, (2000, 7000)),
            (69, Kind::Plug, "Outdoor Smart Plug", &plug, (2000, 7000)),
            (
                71,
                Kind::Light,
                "Dynamic Effects Premium Light Strip 16 ft",
                &full,
                (2000, 7000),
            ),
            (
                72,
                Kind::Light,
                "Dynamic Effects Premium Light Strip 32 ft",
                &full,
                (2000, 7000),
            ),
            (
                76,
                Kind::Light,
                "Dynamic Effects Outdoor Café Lights 48 ft",
                &full,
                (2000, 7000),
            ),
            (
                81,
                Kind::Fan,
                "Fan Speed Controller",
                &["on_off", "fan_speed"],
                (2000, 7000),
            ),
            (
                107,
                Kind::Light,
                "Reveal Full Color A19 Bulb",
                &full,
                (2000, 7000),
            ),
            (111, Kind::Plug, "Outdoor Smart Plug", &plug, (2000, 7000)),
            (
                155,
                Kind::Light,
                "Dynamic Effects A19 Bulb",
                &full,
                (2000, 7000),
            ),
            (
                157,
                Kind::Light,
                "Dynamic Effects BR30 Bulb",
                &full,
                (2000, 7000),
            ),
            (172, Kind::Plug, "Indoor Smart Plug", &plug, (2000, 7000)),
            (224, Kind::Thermostat, "Thermostat", &none, (2000, 7000)),
            (
                96,
                Kind::Sensor,
                "Wire-Free Motion Sensor",
                &none,
                (2000, 7000),
            ),
            (
                152,
                Kind::Light,
                "Reveal Soft White A19 Bulb",
                &["on_off", "brightness"],
                (2700, 2700),
            ),
        ];
        for (code, kind, product, caps, kelvin) in cases {
            let t = DeviceType::of(Some(*code));
            assert!(t.is_known(), "{code}");
            assert_eq!(t.kind, *kind, "{code}");
            assert_eq!(t.product, *product, "{code}");
            assert_eq!(t.capabilities(), *caps, "{code}");
            assert_eq!((t.min_kelvin, t.max_kelvin), *kelvin, "{code}");
        }
        assert_eq!(DeviceType::of(Some(67)).sku, Some("CPLGOD2BLG1"));
        for code in [71, 72, 155, 157] {
            assert!(DeviceType::of(Some(code)).dynamic, "{code}");
        }
        assert!(!DeviceType::of(Some(137)).dynamic);
    }

    #[test]
    fn thermostats_sensors_remotes_and_cameras_are_never_lights() {
        for code in THERMOSTAT.iter().chain(SENSOR).chain(REMOTE).chain(CAMERA) {
            let t = DeviceType::of(Some(*code));
            assert_ne!(t.kind, Kind::Light, "{code}");
            assert!(t.is_known() && !t.controllable(), "{code}");
            assert!(t.capabilities().is_empty(), "{code}");
            assert!(!t.supports(&Action::Power(true)), "{code}");
        }
    }

    #[test]
    fn unknown_codes_are_on_off_lights_that_accept_everything() {
        for t in [DeviceType::of(None), DeviceType::of(Some(250))] {
            assert_eq!(t.kind, Kind::Light);
            assert!(!t.is_known() && !t.brightness && t.controllable());
            assert!(t.supports(&Action::Rgb([1, 2, 3])));
            assert_eq!(t.capabilities(), ["on_off"]);
        }
        assert_eq!(DeviceType::of(Some(250)).code, Some(250));
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
    fn generic_models_stay_as_they_were() {
        // Configurations, the API and Home Assistant snapshots show these strings.
        let models: Vec<&str> = [30, 5, 55, 68, 51, 81, 67]
            .into_iter()
            .map(|c| DeviceType::of(Some(c)).model)
            .collect();
        assert_eq!(
            models,
            [
                "Full colour light",
                "Tunable white light",
                "Dimmable light",
                "Smart plug",
                "On/off switch",
                "Fan controller",
                "Multi-outlet plug"
            ]
        );
        assert_eq!(DeviceType::of(None).model, "Unknown Cync device");
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
        let fixed = DeviceType::of(Some(9));
        assert_eq!((fixed.kelvin(0), fixed.kelvin(100)), (2700, 2700));
        assert_eq!(fixed.temp_of_kelvin(2700), 0);
    }

    #[test]
    fn fan_steps_round_to_the_nearest() {
        let steps: Vec<u8> = [0, 10, 13, 25, 37, 38, 50, 75, 100, 255]
            .into_iter()
            .map(DeviceType::fan_step)
            .collect();
        assert_eq!(steps, [0, 0, 1, 1, 1, 2, 2, 3, 4, 4]);
        // Both fan generations step the same way.
        assert_eq!(DeviceType::of(Some(121)).fan_speeds, 4);
    }

    #[test]
    fn lists_are_consistent() {
        for list in [BRIGHTNESS, COLOR_TEMP, RGB, PLUG, FAN, DYNAMIC] {
            for c in list {
                assert!(ON_OFF.contains(c), "{c}");
            }
        }
        for c in THERMOSTAT.iter().chain(SENSOR).chain(REMOTE).chain(CAMERA) {
            assert!(!ON_OFF.contains(c), "{c}");
        }
        for (c, n) in MULTI_OUTLET {
            assert!(PLUG.contains(c) && *n > 1, "{c}");
        }
        for c in RGB.iter().chain(DYNAMIC) {
            assert!(COLOR_TEMP.contains(c) && BRIGHTNESS.contains(c), "{c}");
        }
        // Every named product is a known type, named once.
        for (i, (c, _, _)) in PRODUCTS.iter().enumerate() {
            assert!(DeviceType::of(Some(*c)).is_known(), "{c}");
            assert!(PRODUCTS.iter().skip(i + 1).all(|(d, _, _)| d != c), "{c}");
        }
    }

    #[test]
    fn dual_outlet_plug_reads_and_writes_the_outlet_mask() {
        let t = DeviceType::of(Some(67));
        assert_eq!(t.outlets, 2);
        assert_eq!(DeviceType::of(Some(68)).outlets, 1);
        assert_eq!(DeviceType::of(Some(30)).outlets, 0);
        let status = |on, brightness| DeviceStatus {
            id: MeshId(6),
            online: true,
            on,
            brightness,
            temperature: 0,
            rgb: [0; 3],
        };
        // pycync's vector: state 1, mask 2 → right (2) on, left (1) off.
        let right = status(true, 2);
        assert_eq!(
            (t.outlet_on(&right, 1), t.outlet_on(&right, 2)),
            (Some(false), Some(true))
        );
        let both = status(true, 3);
        assert_eq!(
            (t.outlet_on(&both, 1), t.outlet_on(&both, 2)),
            (Some(true), Some(true))
        );
        // The state byte gates the mask: a plug that reports off has no outlet on.
        assert_eq!(t.outlet_on(&status(false, 3), 1), Some(false));
        assert_eq!(t.outlet_on(&right, 3), None);
        assert_eq!(t.outlet_on(&right, 0), None);
        // A single-outlet plug follows its state.
        let single = DeviceType::of(Some(68));
        assert_eq!(single.outlet_on(&status(true, 100), 1), Some(true));
        assert_eq!(single.outlet_on(&status(true, 100), 2), None);
        // Switching one outlet leaves the other alone.
        assert_eq!(outlet_mask(2, 1, true), Some(3));
        assert_eq!(outlet_mask(3, 2, false), Some(1));
        assert_eq!(outlet_mask(1, 1, true), Some(1));
        assert_eq!(outlet_mask(1, 9, true), None);
        assert_eq!(outlet_bit(0x80, 8), Some(true));
        assert_eq!(outlet_bit(0x80, 0), None);
    }

    #[test]
    fn outlet_targets_carry_the_sub_id_after_the_device_id() {
        let cmd = crate::command::command(
            crate::ConnId([1, 2, 3, 4]),
            crate::MsgId([0, 1, 0]),
            crate::Seq(2),
            outlet_target(6, 2).unwrap(),
            Action::Power(true),
        )
        .unwrap();
        // payload[5..7] = target: device 06, outlet 02.
        assert_eq!(cmd.frame().unwrap().payload[5..7], [6, 2]);
        assert_eq!(outlet_target(300, 1), None);
        assert_eq!(outlet_target(6, 0), None);
        assert_eq!(outlet_target(6, 9), None);
    }
}
