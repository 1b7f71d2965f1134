//! Home Assistant's MQTT view of cyncd, as pure functions: entities with their discovery
//! payloads, retained state payloads, and commands read from `<base>/<entity>/set`.
//!
//! Topics (`<base>` = `cync`, `<prefix>` = `homeassistant` by default):
//!
//! | topic | payload |
//! |---|---|
//! | `<base>/bridge/availability` | `online` / `offline` (retained; the last will is `offline`) |
//! | `<prefix>/<component>/cyncd/<object_id>/config` | discovery (retained; empty = removed) |
//! | `<base>/<object_id>/state` | state JSON (retained, published when it changes) |
//! | `<base>/<object_id>/availability` | `online` / `offline` for a mesh device or a group (retained) |
//! | `<base>/<object_id>/attributes` | a mesh device's attributes (retained; `json_attributes_topic`) |
//! | `<base>/<object_id>/set` | commands from Home Assistant |
//!
//! Object ids: `<home>_<mesh_id>` for a device, `<home>_<mesh_id>_outlet<n>` for each outlet of
//! a multi-outlet plug, `<home>_<mesh_id>_temperature` and `_humidity` for a thermostat's
//! readings, `<home>_group_<group_id>` for a group, `bridge_<conn_id>` for a Wi-Fi bridge's
//! diagnostics; the home name is lower-cased with anything but letters, digits, `-` and `_`
//! replaced by `_`. Unique ids are the object ids prefixed with `cyncd_`.
//!
//! What a device becomes follows its kind: lights, switches and fans are commanded; each outlet
//! of a multi-outlet plug is a switch; a thermostat's readings are read-only sensors; sensors,
//! remotes and cameras (which take no command) are one connectivity binary sensor, so they are
//! never offered as controllable. A device's room is its `suggested_area`, its product name its
//! `model` and its type code its `model_id`; a Wi-Fi bridge's diagnostics belong to its own mesh
//! device. Lights offer neither flash nor transition (the devices have none), and their states
//! carry a colour mode only with its value.

use crate::commands::control::Step;
use crate::devices::registry::DeviceView;
use cync_proto::catalog::{DeviceType, FAN_PRESETS, FAN_STEPS, Kind};
use cync_proto::{Action, Effect};
use serde_json::{Map, Value, json};

/// Where cyncd's topics live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// State/command prefix.
    pub base: String,
    /// Discovery prefix.
    pub prefix: String,
}

impl Topics {
    /// cyncd's own availability (birth `online`, last will `offline`).
    pub fn availability(&self) -> String {
        format!("{}/bridge/availability", self.base)
    }
    /// Home Assistant's birth and will topic.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.prefix)
    }
    /// Every entity's command topic.
    pub fn set_filter(&self) -> String {
        format!("{}/+/set", self.base)
    }
    /// An entity's state topic.
    pub fn state(&self, object_id: &str) -> String {
        format!("{}/{object_id}/state", self.base)
    }
    /// An entity's availability topic.
    pub fn entity_availability(&self, object_id: &str) -> String {
        format!("{}/{object_id}/availability", self.base)
    }
    /// An entity's attributes topic (Home Assistant's `json_attributes_topic`).
    pub fn attributes(&self, object_id: &str) -> String {
        format!("{}/{object_id}/attributes", self.base)
    }
    /// An entity's command topic.
    pub fn set(&self, object_id: &str) -> String {
        format!("{}/{object_id}/set", self.base)
    }
    /// The object id of a command topic, when it is one.
    pub fn object_of_set<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let id = rest.strip_suffix("/set")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }
    /// A discovery topic.
    pub fn discovery(&self, component: &str, object_id: &str) -> String {
        format!("{}/{component}/cyncd/{object_id}/config", self.prefix)
    }
}

/// An object id part from a home name: lower case, `[a-z0-9_-]` only.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A device's object id.
pub fn device_object(home: &str, mesh: u16) -> String {
    format!("{}_{mesh}", slug(home))
}

/// A group's object id.
pub fn group_object(home: &str, gid: u16) -> String {
    format!("{}_group_{gid}", slug(home))
}

/// A Wi-Fi bridge's object id.
pub fn bridge_object(conn: &str) -> String {
    format!("bridge_{}", slug(conn))
}

/// The object id of outlet `n` of a multi-outlet plug.
pub fn outlet_object(home: &str, mesh: u16, outlet: u8) -> String {
    format!("{}_outlet{outlet}", device_object(home, mesh))
}

/// How an entity is shown and commanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `light` (JSON schema) with the type's capabilities.
    Light(DeviceType),
    /// `switch`.
    Switch,
    /// `fan` with speed steps.
    Fan,
    /// One `switch` per outlet (a multi-outlet plug), each with its own object id.
    Outlets(u8),
    /// Read-only `sensor`s of a thermostat's readings.
    Readings,
    /// A read-only connectivity `binary_sensor`: a device that takes no command.
    Presence,
}

/// The read-only quantities of a thermostat: (suffix, name, device class).
pub const READINGS: [(&str, &str, &str); 2] = [
    ("temperature", "Temperature", "temperature"),
    ("humidity", "Humidity", "humidity"),
];

impl Shape {
    /// The shape of a device type: plugs and on/off switches are switches (one per outlet on a
    /// multi-outlet plug), fans fans, thermostats their readings, sensors, remotes and cameras a
    /// connectivity sensor, the rest (unknown types included) lights.
    pub fn of(t: DeviceType) -> Self {
        match t.kind {
            Kind::Plug if t.outlets > 1 => Self::Outlets(t.outlets),
            Kind::Plug | Kind::Switch => Self::Switch,
            Kind::Fan => Self::Fan,
            Kind::Light => Self::Light(t),
            Kind::Thermostat => Self::Readings,
            Kind::Sensor | Kind::Remote | Kind::Camera => Self::Presence,
        }
    }

    /// The Home Assistant component.
    pub fn component(self) -> &'static str {
        match self {
            Self::Light(_) => "light",
            Self::Switch | Self::Outlets(_) => "switch",
            Self::Fan => "fan",
            Self::Readings => "sensor",
            Self::Presence => "binary_sensor",
        }
    }

    /// The (component, object id) of every entity a device of this shape has.
    pub fn objects(self, home: &str, mesh: u16) -> Vec<(&'static str, String)> {
        let object = device_object(home, mesh);
        match self {
            Self::Outlets(n) => (1..=n)
                .map(|k| ("switch", outlet_object(home, mesh, k)))
                .collect(),
            Self::Readings => READINGS
                .iter()
                .map(|(suffix, _, _)| ("sensor", format!("{object}_{suffix}")))
                .collect(),
            _ => vec![(self.component(), object)],
        }
    }
}

fn origin() -> Value {
    json!({ "name": "cyncd", "sw_version": env!("CARGO_PKG_VERSION") })
}

/// Sets `key` in a discovery payload.
pub fn set_key(payload: &mut Value, key: &str, value: Value) {
    if let Value::Object(map) = payload {
        map.insert(key.into(), value);
    }
}

fn availability(topics: &Topics, object_id: Option<&str>) -> Value {
    let mut list = vec![json!({ "topic": topics.availability() })];
    if let Some(id) = object_id {
        list.push(json!({ "topic": topics.entity_availability(id) }));
    }
    Value::Array(list)
}

/// The discovery payload of a device or group entity.
pub fn discovery(
    topics: &Topics,
    object_id: &str,
    shape: Shape,
    device_block: Value,
    per_entity_availability: bool,
) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), Value::Null);
    c.insert("unique_id".into(), json!(format!("cyncd_{object_id}")));
    c.insert("device".into(), device_block);
    c.insert("origin".into(), origin());
    c.insert(
        "availability".into(),
        availability(topics, per_entity_availability.then_some(object_id)),
    );
    c.insert("availability_mode".into(), json!("all"));
    c.insert("state_topic".into(), json!(topics.state(object_id)));
    c.insert("command_topic".into(), json!(topics.set(object_id)));
    match shape {
        Shape::Light(t) => {
            c.insert("schema".into(), json!("json"));
            c.insert("supported_color_modes".into(), json!(color_modes(&t)));
            if t.brightness || t.color_temp || t.rgb {
                c.insert("brightness".into(), json!(true));
                c.insert("brightness_scale".into(), json!(100));
            }
            if t.color_temp {
                c.insert("color_temp_kelvin".into(), json!(true));
                c.insert("min_kelvin".into(), json!(t.min_kelvin));
                c.insert("max_kelvin".into(), json!(t.max_kelvin));
            }
            if t.effects {
                c.insert("effect".into(), json!(true));
                let names: Vec<&str> = Effect::ALL.iter().map(|e| e.name()).collect();
                c.insert("effect_list".into(), json!(names));
            }
            // The devices change at once and have no flash: Home Assistant must not offer
            // either (its JSON schema offers both unless told).
            c.insert("flash".into(), json!(false));
            c.insert("transition".into(), json!(false));
        }
        Shape::Outlets(_) | Shape::Readings | Shape::Presence => {
            // Not built here: see `outlet_discovery`, `reading_discovery`, `presence_discovery`.
        }
        Shape::Switch => {
            c.insert("payload_on".into(), json!("ON"));
            c.insert("payload_off".into(), json!("OFF"));
            c.insert("state_on".into(), json!("ON"));
            c.insert("state_off".into(), json!("OFF"));
            c.insert("value_template".into(), json!("{{ value_json.state }}"));
        }
        Shape::Fan => {
            let set = topics.set(object_id);
            let state = topics.state(object_id);
            c.insert("payload_on".into(), json!("ON"));
            c.insert("payload_off".into(), json!("OFF"));
            c.insert(
                "command_template".into(),
                json!("{\"state\": \"{{ value }}\"}"),
            );
            c.insert(
                "state_value_template".into(),
                json!("{{ value_json.state }}"),
            );
            c.insert("percentage_command_topic".into(), json!(set));
            c.insert(
                "percentage_command_template".into(),
                json!("{\"speed\": {{ value }}}"),
            );
            c.insert("percentage_state_topic".into(), json!(state));
            c.insert(
                "percentage_value_template".into(),
                json!("{{ value_json.speed }}"),
            );
            c.insert("speed_range_min".into(), json!(1));
            c.insert("speed_range_max".into(), json!(FAN_PRESETS.len()));
            // The speed names are speeds, not modes: no presets (Home Assistant shows the
            // four steps as 25/50/75/100 %).
        }
    }
    Value::Object(c)
}

/// The switch of outlet `outlet` of a multi-outlet plug, named after the outlet.
pub fn outlet_discovery(
    topics: &Topics,
    view: &DeviceView,
    outlet: u8,
    name: &str,
    device_block: Value,
) -> Value {
    let object = outlet_object(&view.home, view.mesh_id, outlet);
    let mut c = discovery(topics, &object, Shape::Switch, device_block, false);
    if let Value::Object(map) = &mut c {
        map.insert("name".into(), json!(name));
        // Offline with the plug itself.
        map.insert(
            "availability".into(),
            availability(topics, Some(&device_object(&view.home, view.mesh_id))),
        );
    }
    c
}

/// A read-only sensor of a thermostat's reading (`temperature` or `humidity`), from the
/// device's state topic. `unit` is the temperature unit the thermostat reports (`F`/`C`).
pub fn reading_discovery(
    topics: &Topics,
    view: &DeviceView,
    reading: (&str, &str, &str),
    unit: Option<&str>,
    device_block: Value,
) -> Value {
    let (suffix, name, class) = reading;
    let device = device_object(&view.home, view.mesh_id);
    let object = format!("{device}_{suffix}");
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    c.insert("unique_id".into(), json!(format!("cyncd_{object}")));
    c.insert("device".into(), device_block);
    c.insert("origin".into(), origin());
    c.insert("availability".into(), availability(topics, Some(&device)));
    c.insert("availability_mode".into(), json!("all"));
    c.insert("state_topic".into(), json!(topics.state(&device)));
    c.insert("device_class".into(), json!(class));
    c.insert("state_class".into(), json!("measurement"));
    c.insert(
        "value_template".into(),
        json!(format!("{{{{ value_json.{suffix} }}}}")),
    );
    let unit = match (suffix, unit) {
        ("humidity", _) => "%",
        (_, Some("C")) => "°C",
        _ => "°F",
    };
    c.insert("unit_of_measurement".into(), json!(unit));
    Value::Object(c)
}

/// The connectivity sensor of a device that takes no command (a battery sensor, a remote, a
/// camera): on while the mesh reports it online.
pub fn presence_discovery(topics: &Topics, view: &DeviceView, device_block: Value) -> Value {
    let object = device_object(&view.home, view.mesh_id);
    let mut c = Map::new();
    c.insert("name".into(), json!("Connected"));
    c.insert("unique_id".into(), json!(format!("cyncd_{object}")));
    c.insert("device".into(), device_block);
    c.insert("origin".into(), origin());
    c.insert("availability".into(), availability(topics, None));
    c.insert("entity_category".into(), json!("diagnostic"));
    c.insert("device_class".into(), json!("connectivity"));
    c.insert("state_topic".into(), json!(topics.state(&object)));
    c.insert("value_template".into(), json!("{{ value_json.connected }}"));
    c.insert("payload_on".into(), json!("ON"));
    c.insert("payload_off".into(), json!("OFF"));
    Value::Object(c)
}

/// A thermostat's state payload: the temperature and humidity of its own sensor (the one it
/// calls `internal`, else the one it follows, else the first), and the unit.
pub fn readings_state(view: &DeviceView) -> Value {
    let sensors = view.sensors.as_deref().unwrap_or_default();
    let main = sensors
        .iter()
        .find(|s| s.kind.eq_ignore_ascii_case("internal"))
        .or_else(|| sensors.iter().find(|s| s.active == Some(true)))
        .or_else(|| sensors.first());
    json!({
        "temperature": main.and_then(|s| s.temperature),
        "humidity": main.and_then(|s| s.humidity),
        "unit": main.and_then(|s| s.unit),
    })
}

/// What a device block links to, besides the device itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The identifier of the device it is reached through: its bridge's own mesh device, or
    /// the bridge ([`bridge_block`]) while that is not known.
    pub via: Option<String>,
    /// The web page's address (ending in `/`), for `configuration_url`.
    pub page: Option<String>,
    /// The Wi-Fi MAC of a Wi-Fi device, when the homes have it.
    pub wifi_mac: Option<String>,
}

/// A device's identifier in Home Assistant.
pub fn device_identifier(home: &str, mesh: u16) -> String {
    format!("cyncd_{}", device_object(home, mesh))
}

/// A MAC as Home Assistant's connections write it (`a4:c1:38:0d:1e:2f`), when it is one.
pub fn mac_connection(mac: &str) -> Option<String> {
    let hex: Vec<char> = mac.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.iter().all(char::is_ascii_hexdigit) {
        return None;
    }
    let pairs: Vec<String> = hex
        .chunks(2)
        .map(|p| p.iter().collect::<String>().to_ascii_lowercase())
        .collect();
    Some(pairs.join(":"))
}

/// The web page's address of one device (its sheet): `<page>#device=<home>:<mesh_id>`.
pub fn device_page(page: &str, id: &str) -> String {
    let mut out = format!("{page}#device=");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `device` block of a mesh device: its name, product (`model`) and type code
/// (`model_id`), firmware, area (its room), its MACs (`serial_number` and `connections`) once
/// known, its page and the device it is reached through.
pub fn device_block(view: &DeviceView, t: &DeviceType, links: &Links) -> Value {
    let mut d = Map::new();
    d.insert(
        "identifiers".into(),
        json!([device_identifier(&view.home, view.mesh_id)]),
    );
    d.insert("name".into(), json!(view.name));
    d.insert("manufacturer".into(), json!("GE Cync"));
    d.insert("model".into(), json!(t.product));
    if let Some(code) = view.type_code {
        d.insert("model_id".into(), json!(code.to_string()));
    }
    if let Some(fw) = &view.firmware {
        d.insert("sw_version".into(), json!(fw));
    }
    if let Some(room) = &view.room {
        d.insert("suggested_area".into(), json!(room));
    }
    let ble = view.mac.as_deref().and_then(mac_connection);
    let wifi = links.wifi_mac.as_deref().and_then(mac_connection);
    if let Some(mac) = &ble {
        d.insert(
            "serial_number".into(),
            json!(mac.replace(':', "").to_ascii_uppercase()),
        );
    }
    let mut connections = Vec::new();
    if let Some(mac) = ble {
        connections.push(json!(["bluetooth", mac]));
    }
    if let Some(mac) = wifi {
        connections.push(json!(["mac", mac]));
    }
    if !connections.is_empty() {
        d.insert("connections".into(), Value::Array(connections));
    }
    if let Some(page) = &links.page {
        d.insert(
            "configuration_url".into(),
            json!(device_page(page, &view.id)),
        );
    }
    if let Some(via) = &links.via {
        d.insert("via_device".into(), json!(via));
    }
    Value::Object(d)
}

/// The `device` block of a Wi-Fi bridge whose own mesh device is not known yet.
pub fn bridge_block(conn: &str) -> Value {
    json!({
        "identifiers": [format!("cyncd_{}", bridge_object(conn))],
        "name": format!("Cync bridge {conn}"),
        "manufacturer": "GE Cync",
        "model": "Wi-Fi bridge",
    })
}

/// The attributes Home Assistant shows with a device's entities: when it last reported (to the
/// minute, so the topic changes at most once a minute), whether a bridge reaches it and which,
/// and the last command cyncd sent it.
pub fn attributes(view: &DeviceView) -> Value {
    let minute = view.last_seen.as_deref().map(|t| match t.get(..16) {
        Some(head) if t.len() > 16 => format!("{head}:00Z"),
        _ => t.to_string(),
    });
    json!({
        "last_seen": minute,
        "online": view.online,
        "reachable": view.reachable,
        "bridges": view.bridges,
        "last_command": view.last_command,
    })
}

/// The `device` block of a group; a room is placed in the area of its name.
pub fn group_block(home: &str, gid: u16, name: &str, room: bool) -> Value {
    let mut d = json!({
        "identifiers": [format!("cyncd_{}", group_object(home, gid))],
        "name": name,
        "manufacturer": "GE Cync",
        "model": if room { "Room" } else { "Group" },
    });
    if let (true, Value::Object(map)) = (room, &mut d) {
        map.insert("suggested_area".into(), json!(name));
    }
    d
}

/// The shape of a group from its members' types: a switch when every member is a known plug or
/// switch, else a light with every capability any member light has (a member without one
/// ignores it). Members that take no command (thermostats, sensors…) do not count.
pub fn group_shape(members: &[DeviceType]) -> Shape {
    let members: Vec<DeviceType> = members
        .iter()
        .filter(|t| t.controllable())
        .copied()
        .collect();
    let lights: Vec<&DeviceType> = members.iter().filter(|t| t.kind == Kind::Light).collect();
    if !members.is_empty() && members.iter().all(|t| t.known) && lights.is_empty() {
        if members.iter().all(|t| t.kind == Kind::Fan) {
            return Shape::Fan;
        }
        return Shape::Switch;
    }
    let mut t = DeviceType::unknown(None);
    t.model = "Group";
    for m in lights {
        t.brightness |= m.brightness;
        t.color_temp |= m.color_temp;
        t.rgb |= m.rgb;
        t.effects |= m.effects;
    }
    Shape::Light(t)
}

/// The two diagnostic entities of a Wi-Fi bridge: (component, object id, discovery). They
/// belong to `device`: the bridge's own mesh device's block once known (a bridge is one device
/// in Home Assistant), else [`bridge_block`].
pub fn bridge_discovery(
    topics: &Topics,
    conn: &str,
    device: &Value,
) -> [(&'static str, String, Value); 2] {
    let object = bridge_object(conn);
    let state = topics.state(&object);
    let common = |suffix: &str, name: &str| {
        let mut c = Map::new();
        c.insert("name".into(), json!(name));
        c.insert(
            "unique_id".into(),
            json!(format!("cyncd_{object}_{suffix}")),
        );
        c.insert("device".into(), device.clone());
        c.insert("origin".into(), origin());
        c.insert("availability".into(), availability(topics, None));
        c.insert("entity_category".into(), json!("diagnostic"));
        c.insert("state_topic".into(), json!(state));
        c
    };
    let mut connected = common("connected", "Connected");
    connected.insert("device_class".into(), json!("connectivity"));
    connected.insert("value_template".into(), json!("{{ value_json.connected }}"));
    connected.insert("payload_on".into(), json!("ON"));
    connected.insert("payload_off".into(), json!("OFF"));
    let mut firmware = common("firmware", "Firmware");
    firmware.insert("icon".into(), json!("mdi:chip"));
    firmware.insert(
        "value_template".into(),
        json!("{{ value_json.firmware | default('unknown', true) }}"),
    );
    [
        (
            "binary_sensor",
            format!("{object}_connected"),
            Value::Object(connected),
        ),
        (
            "sensor",
            format!("{object}_firmware"),
            Value::Object(firmware),
        ),
    ]
}

/// A bridge's state payload.
pub fn bridge_state(connected: bool, firmware: Option<&str>, devices: usize) -> Value {
    json!({
        "connected": if connected { "ON" } else { "OFF" },
        "firmware": firmware,
        "devices": devices,
    })
}

fn on_off(on: bool) -> &'static str {
    if on { "ON" } else { "OFF" }
}

/// A device's state payload in its shape (an outlet's is [`outlet_state`]).
pub fn device_state(view: &DeviceView, shape: Shape) -> Value {
    match shape {
        Shape::Switch => json!({ "state": on_off(view.on) }),
        Shape::Outlets(_) => json!({ "state": on_off(view.on) }),
        Shape::Readings => readings_state(view),
        Shape::Presence => json!({ "connected": on_off(view.online && view.reachable) }),
        Shape::Fan => {
            let step = if view.on {
                view.fan_speed.unwrap_or(0)
            } else {
                0
            };
            json!({ "state": on_off(view.on), "speed": step })
        }
        Shape::Light(t) => {
            let mut s = Map::new();
            s.insert("state".into(), json!(on_off(view.on)));
            if view.on {
                light_on_state(&mut s, view, &t);
            }
            Value::Object(s)
        }
    }
}

/// The color modes of a light in discovery: tunable white and colour as the type has them,
/// else `brightness` or `onoff` alone (Home Assistant allows those only alone).
pub fn color_modes(t: &DeviceType) -> Vec<&'static str> {
    let mut modes = Vec::new();
    if t.color_temp {
        modes.push("color_temp");
    }
    if t.rgb {
        modes.push("rgb");
    }
    if modes.is_empty() {
        modes.push(if t.brightness { "brightness" } else { "onoff" });
    }
    modes
}

/// What a light that is on shows: its brightness, a colour mode always with its value (white
/// with `color_temp`, colour with `color`), and the running effect. While an effect runs the
/// light has no single colour: the colour mode is left out and Home Assistant keeps the last
/// one it had.
fn light_on_state(s: &mut Map<String, Value>, view: &DeviceView, t: &DeviceType) {
    if t.brightness || t.color_temp || t.rgb {
        s.insert("brightness".into(), json!(view.brightness.unwrap_or(0)));
    }
    let modes = color_modes(t);
    if let (true, Some(rgb)) = (t.rgb, view.rgb) {
        s.insert("color_mode".into(), json!("rgb"));
        s.insert(
            "color".into(),
            json!({ "r": rgb[0], "g": rgb[1], "b": rgb[2] }),
        );
    } else if let (true, Some(temp)) = (t.color_temp, view.color_temp) {
        s.insert("color_mode".into(), json!("color_temp"));
        s.insert("color_temp".into(), json!(t.kelvin(temp)));
    } else if let [only @ ("brightness" | "onoff")] = modes.as_slice() {
        s.insert("color_mode".into(), json!(only));
    }
    if t.effects {
        s.insert("effect".into(), json!(view.effect));
    }
}

/// An outlet's state payload.
pub fn outlet_state(on: bool) -> Value {
    json!({ "state": on_off(on) })
}

/// A group's state payload from its members' views: on when any member is on, brightness the
/// mean of the members that are on.
pub fn group_state(members: &[&DeviceView], shape: Shape) -> Value {
    let on: Vec<&&DeviceView> = members.iter().filter(|v| v.on).collect();
    let any = !on.is_empty();
    match shape {
        Shape::Switch | Shape::Outlets(_) | Shape::Readings | Shape::Presence => {
            json!({ "state": on_off(any) })
        }
        Shape::Fan => {
            json!({ "state": on_off(any), "speed": Value::Null })
        }
        Shape::Light(t) => {
            let mut s = Map::new();
            s.insert("state".into(), json!(on_off(any)));
            if any {
                if t.brightness || t.color_temp || t.rgb {
                    let sum: usize = on
                        .iter()
                        .map(|v| usize::from(v.brightness.unwrap_or(0)))
                        .sum();
                    s.insert("brightness".into(), json!(sum / on.len()));
                }
                // A colour (and an effect) only when every member that is on shows the same.
                let same = |f: &dyn Fn(&DeviceView) -> Option<Value>| {
                    let first = f(on.first()?)?;
                    on.iter()
                        .all(|v| f(v).as_ref() == Some(&first))
                        .then_some(first)
                };
                if let (true, Some(color)) = (
                    t.rgb,
                    same(&|v| v.rgb.map(|c| json!({ "r": c[0], "g": c[1], "b": c[2] }))),
                ) {
                    s.insert("color_mode".into(), json!("rgb"));
                    s.insert("color".into(), color);
                } else if let (true, Some(kelvin)) = (
                    t.color_temp,
                    same(&|v| v.color_temp.map(|c| json!(t.kelvin(c)))),
                ) {
                    s.insert("color_mode".into(), json!("color_temp"));
                    s.insert("color_temp".into(), kelvin);
                } else if let [only @ ("brightness" | "onoff")] = color_modes(&t).as_slice() {
                    s.insert("color_mode".into(), json!(only));
                }
                if t.effects {
                    s.insert(
                        "effect".into(),
                        same(&|v| v.effect.map(|e| json!(e))).unwrap_or(Value::Null),
                    );
                }
            }
            Value::Object(s)
        }
    }
}

/// Reads a command payload: `ON`/`OFF`, or a JSON object with any of `state`, `brightness`
/// (0–100), `color_temp` (kelvin; also `color_temp_kelvin`), `color` (`{r, g, b}`), `effect`,
/// `speed` (fan step 0–4), `percentage` (0–100), `preset_mode`, and `transition` only as 0
/// (the devices change at once; discovery offers no transition, and no flash). `currently_on`
/// avoids a redundant power command when only attributes change.
pub fn parse_command(
    payload: &[u8],
    shape: Shape,
    currently_on: bool,
) -> Result<Vec<Step>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    let trimmed = text.trim();
    let value: Value = match trimmed.to_ascii_uppercase().as_str() {
        "ON" | "OFF" => json!({ "state": trimmed.to_ascii_uppercase() }),
        _ => serde_json::from_str(trimmed).map_err(|e| format!("payload is not JSON: {e}"))?,
    };
    let Value::Object(obj) = value else {
        return Err("payload must be ON, OFF or a JSON object".into());
    };
    for key in obj.keys() {
        if ![
            "state",
            "brightness",
            "color_temp",
            "color_temp_kelvin",
            "color",
            "color_mode",
            "effect",
            "speed",
            "percentage",
            "preset_mode",
            "transition",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("unknown field {key:?}"));
        }
    }
    if let Some(t) = obj.get("transition") {
        if t.as_f64() != Some(0.0) {
            return Err(
                "transition is not supported: the devices change at once (send none, or 0)".into(),
            );
        }
    }
    let state = match obj.get("state") {
        None => None,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("on") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("off") => Some(false),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("toggle") => Some(!currently_on),
        Some(other) => return Err(format!("state must be ON, OFF or TOGGLE, got {other}")),
    };
    let number = |key: &str, max: u64| -> Result<Option<u64>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v
                    .as_f64()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .ok_or_else(|| format!("{key} must be a number ≥ 0"))?;
                let n = n.round() as u64;
                if n > max {
                    return Err(format!("{key} must be at most {max}, got {n}"));
                }
                Ok(Some(n))
            }
        }
    };
    let mut attrs: Vec<Step> = Vec::new();
    let mut power: Option<bool> = state;
    match shape {
        Shape::Fan => {
            let mut step = number("speed", FAN_PRESETS.len() as u64)?;
            if let Some(p) = number("percentage", 100)? {
                step = Some(u64::from(DeviceType::fan_step(
                    u8::try_from(p).unwrap_or(100),
                )));
            }
            if let Some(v) = obj.get("preset_mode") {
                let name = v.as_str().unwrap_or_default();
                let i = FAN_PRESETS
                    .iter()
                    .position(|p| p.eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        format!("preset_mode must be one of {}", FAN_PRESETS.join(", "))
                    })?;
                step = Some(i as u64 + 1);
            }
            match step {
                Some(0) => power = Some(false),
                Some(s) => {
                    if power.is_none() {
                        power = Some(true);
                    }
                    let speed = FAN_STEPS
                        .get(usize::try_from(s).unwrap_or(usize::MAX))
                        .copied()
                        .unwrap_or(100);
                    attrs.push(("fan_speed", Action::FanSpeed(speed)));
                }
                None => {}
            }
        }
        Shape::Switch | Shape::Outlets(_) => {
            if obj.keys().any(|k| k != "state") {
                return Err("a switch takes only ON or OFF".into());
            }
        }
        Shape::Readings | Shape::Presence => {
            return Err("this device takes no command".into());
        }
        Shape::Light(t) => {
            match number("brightness", 100)? {
                Some(0) => power = Some(false),
                Some(b) => attrs.push((
                    "brightness",
                    Action::Brightness(u8::try_from(b).unwrap_or(100)),
                )),
                None => {}
            }
            let kelvin = match number("color_temp_kelvin", 20_000)? {
                Some(k) => Some(k),
                None => number("color_temp", 20_000)?,
            };
            if let Some(k) = kelvin {
                // Mireds (HA without color_temp_kelvin) are below 1000; kelvin above.
                let k = if (1..1000).contains(&k) {
                    1_000_000 / k
                } else {
                    k
                };
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                attrs.push(("color_temp", Action::ColorTemp(t.temp_of_kelvin(k))));
            }
            if let Some(c) = obj.get("color") {
                let channel = |name: &str| {
                    c.get(name)
                        .and_then(Value::as_f64)
                        .filter(|v| (0.0..=255.0).contains(v))
                        .map(|v| v.round() as u8)
                        .ok_or_else(|| format!("color.{name} must be 0-255"))
                };
                attrs.push((
                    "rgb",
                    Action::Rgb([channel("r")?, channel("g")?, channel("b")?]),
                ));
            }
            if let Some(e) = obj.get("effect") {
                let name = e.as_str().unwrap_or_default();
                let effect =
                    Effect::from_name(name).ok_or_else(|| format!("unknown effect {name:?}"))?;
                attrs.push(("effect", Action::Effect(effect)));
            }
        }
    }
    let mut steps: Vec<Step> = Vec::new();
    match power {
        Some(false) => steps.push(("on", Action::Power(false))),
        Some(true) => {
            // Changing an attribute of a light that is already on needs no power command.
            if !currently_on || attrs.is_empty() {
                steps.push(("on", Action::Power(true)));
            }
            steps.extend(attrs);
        }
        None => steps.extend(attrs),
    }
    if steps.is_empty() {
        return Err("nothing to do".into());
    }
    Ok(steps)
}

/// The state a device will have once `steps` are applied, for publishing right after the
/// command's outcome is `applied` (before the device's own report arrives).
pub fn applied_view(view: &DeviceView, t: &DeviceType, steps: &[Step]) -> DeviceView {
    let mut v = view.clone();
    for (_, action) in steps {
        match *action {
            Action::Power(on) => v.on = on,
            Action::Brightness(b) => {
                v.brightness = Some(b);
                v.on = true;
            }
            Action::ColorTemp(temp) => {
                v.color_temp = Some(temp);
                v.rgb = None;
                v.effect = None;
            }
            Action::Rgb(rgb) => {
                v.rgb = Some(rgb);
                v.color_temp = None;
                v.effect = None;
            }
            Action::Effect(e) => {
                v.rgb = None;
                v.color_temp = None;
                v.effect = Some(e.name());
            }
            Action::FanSpeed(s) => {
                v.fan_speed = Some(DeviceType::fan_step(s));
                v.brightness = v.brightness.map(|_| s);
            }
            Action::SwitchMode(_) => {}
        }
    }
    if !t.brightness && !t.color_temp && !t.rgb && t.fan_speeds == 0 {
        v.brightness = v.brightness.map(|_| if v.on { 100 } else { 0 });
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn topics() -> Topics {
        Topics {
            base: "cync".into(),
            prefix: "homeassistant".into(),
        }
    }

    fn view(mesh: u16, type_code: Option<u8>, name: &str) -> DeviceView {
        let t = DeviceType::of(type_code);
        DeviceView {
            id: format!("default:{mesh}"),
            home: "default".into(),
            mesh_id: mesh,
            name: name.into(),
            room: Some("Kitchen".into()),
            type_code,
            kind: t.kind.name(),
            model: t.product,
            sku: t.sku,
            capabilities: t.capabilities(),
            fan_speed: (t.fan_speeds > 0).then_some(2),
            outlets: None,
            sensors: None,
            online: true,
            on: true,
            brightness: Some(40),
            color_temp: Some(50),
            rgb: None,
            bridges: vec!["1a2b3c4d".into()],
            reachable: true,
            last_seen: Some("2026-11-26T00:00:00.000Z".into()),
            mac: Some("A4C1380D1E2F".into()),
            firmware: Some("1.0.158".into()),
            effect: None,
            last_command: None,
        }
    }

    fn links() -> Links {
        Links {
            via: Some("cyncd_default_1".into()),
            page: Some("http://cyncd.lan:8080/".into()),
            wifi_mac: None,
        }
    }

    fn discovery_of(code: Option<u8>, name: &str) -> Value {
        let v = view(3, code, name);
        let t = DeviceType::of(code);
        let id = device_object(&v.home, v.mesh_id);
        discovery(
            &topics(),
            &id,
            Shape::of(t),
            device_block(&v, &t, &links()),
            true,
        )
    }

    #[test]
    fn discovery_payloads() {
        insta::assert_json_snapshot!("light_rgb", discovery_of(Some(30), "Colour bulb"));
        insta::assert_json_snapshot!("light_white", discovery_of(Some(5), "White bulb"));
        insta::assert_json_snapshot!("light_dimmable", discovery_of(Some(55), "Dimmer"));
        insta::assert_json_snapshot!("light_unknown", discovery_of(None, "device 3"));
        insta::assert_json_snapshot!("switch_plug", discovery_of(Some(68), "Plug"));
        insta::assert_json_snapshot!("switch_wall", discovery_of(Some(51), "Wall switch"));
        insta::assert_json_snapshot!("fan", discovery_of(Some(81), "Ceiling fan"));
        let group_light = group_shape(&[DeviceType::of(Some(5)), DeviceType::of(Some(68))]);
        insta::assert_json_snapshot!(
            "group_light",
            discovery(
                &topics(),
                &group_object("default", 32769),
                group_light,
                group_block("default", 32769, "Whole home", false),
                false,
            )
        );
        let group_switch = group_shape(&[DeviceType::of(Some(68)), DeviceType::of(Some(51))]);
        assert_eq!(group_switch, Shape::Switch);
        insta::assert_json_snapshot!(
            "group_switch",
            discovery(
                &topics(),
                &group_object("My Home", 2),
                group_switch,
                group_block("My Home", 2, "Kitchen", true),
                false,
            )
        );
        let [connected, firmware] =
            bridge_discovery(&topics(), "1a2b3c4d", &bridge_block("1a2b3c4d"));
        assert_eq!(
            (connected.0, connected.1.as_str()),
            ("binary_sensor", "bridge_1a2b3c4d_connected")
        );
        insta::assert_json_snapshot!("bridge_connected", connected.2);
        insta::assert_json_snapshot!("bridge_firmware", firmware.2);
    }

    #[test]
    fn kinds_that_take_no_command_and_outlets_get_their_own_entities() {
        use crate::devices::registry::{OutletView, Reading};
        assert_eq!(Shape::of(DeviceType::of(Some(67))), Shape::Outlets(2));
        assert_eq!(Shape::of(DeviceType::of(Some(68))), Shape::Switch);
        assert_eq!(Shape::of(DeviceType::of(Some(224))), Shape::Readings);
        for code in [96, 113, 240] {
            assert_eq!(
                Shape::of(DeviceType::of(Some(code))),
                Shape::Presence,
                "{code}"
            );
        }
        assert_eq!(
            Shape::Outlets(2).objects("My Home", 6),
            [
                ("switch", "my_home_6_outlet1".to_string()),
                ("switch", "my_home_6_outlet2".to_string())
            ]
        );
        assert_eq!(
            Shape::Readings.objects("default", 9),
            [
                ("sensor", "default_9_temperature".to_string()),
                ("sensor", "default_9_humidity".to_string())
            ]
        );
        let t = DeviceType::of(Some(67));
        let mut plug = view(6, Some(67), "Porch plug");
        plug.outlets = Some(vec![
            OutletView {
                outlet: 1,
                name: "String lights".into(),
                on: false,
            },
            OutletView {
                outlet: 2,
                name: "Fountain".into(),
                on: true,
            },
        ]);
        insta::assert_json_snapshot!(
            "outlet_switch",
            outlet_discovery(
                &topics(),
                &plug,
                2,
                "Fountain",
                device_block(&plug, &t, &links())
            )
        );
        let t = DeviceType::of(Some(224));
        let mut thermostat = view(9, Some(224), "Hallway thermostat");
        thermostat.sensors = Some(vec![
            Reading {
                slot: 0,
                kind: "savant sensor".into(),
                active: Some(false),
                temperature: Some(75.7),
                unit: Some("F"),
                humidity: Some(48),
                battery_volts: Some(2.87),
            },
            Reading {
                slot: 1,
                kind: "internal".into(),
                active: Some(true),
                temperature: Some(75.9),
                unit: Some("F"),
                humidity: Some(50),
                battery_volts: None,
            },
        ]);
        assert_eq!(
            readings_state(&thermostat),
            json!({"temperature": 75.9, "humidity": 50, "unit": "F"})
        );
        insta::assert_json_snapshot!(
            "thermostat_temperature",
            reading_discovery(
                &topics(),
                &thermostat,
                READINGS[0],
                Some("F"),
                device_block(&thermostat, &t, &Links::default())
            )
        );
        let t = DeviceType::of(Some(113));
        let remote = view(11, Some(113), "Bedside remote");
        insta::assert_json_snapshot!(
            "remote_presence",
            presence_discovery(
                &topics(),
                &remote,
                device_block(&remote, &t, &Links::default())
            )
        );
        assert_eq!(
            device_state(&remote, Shape::Presence),
            json!({"connected": "ON"})
        );
        // Nothing a thermostat or a remote could be told is accepted.
        assert!(parse_command(b"ON", Shape::Readings, false).is_err());
        assert!(parse_command(b"ON", Shape::Presence, false).is_err());
        // A group of a plug and a thermostat is a switch: the thermostat does not count.
        assert_eq!(
            group_shape(&[DeviceType::of(Some(68)), DeviceType::of(Some(224))]),
            Shape::Switch
        );
    }

    #[test]
    fn states_follow_the_shape() {
        let mut white = view(3, Some(5), "w");
        let t = DeviceType::of(Some(5));
        assert_eq!(
            device_state(&white, Shape::of(t)),
            json!({"state": "ON", "brightness": 40, "color_mode": "color_temp", "color_temp": 4500})
        );
        white.on = false;
        assert_eq!(device_state(&white, Shape::of(t)), json!({"state": "OFF"}));
        let mut rgb = view(4, Some(30), "c");
        rgb.rgb = Some([255, 0, 10]);
        rgb.color_temp = None;
        assert_eq!(
            device_state(&rgb, Shape::of(DeviceType::of(Some(30)))),
            json!({"state": "ON", "brightness": 40, "color_mode": "rgb", "color": {"r": 255, "g": 0, "b": 10}, "effect": null})
        );
        // An effect: its name, no colour mode (the light has no single colour then), never a
        // mode without its value.
        let mut show = rgb.clone();
        show.rgb = None;
        show.effect = Some("rainbow");
        assert_eq!(
            device_state(&show, Shape::of(DeviceType::of(Some(30)))),
            json!({"state": "ON", "brightness": 40, "effect": "rainbow"})
        );
        let applied = applied_view(
            &rgb,
            &DeviceType::of(Some(30)),
            &[("effect", Action::Effect(Effect::Candle))],
        );
        assert_eq!(
            device_state(&applied, Shape::of(DeviceType::of(Some(30)))),
            json!({"state": "ON", "brightness": 40, "effect": "candle"})
        );
        let plug = view(5, Some(68), "p");
        assert_eq!(device_state(&plug, Shape::Switch), json!({"state": "ON"}));
        let fan = view(6, Some(81), "f");
        assert_eq!(
            device_state(&fan, Shape::Fan),
            json!({"state": "ON", "speed": 2})
        );
        let unknown = view(7, None, "u");
        assert_eq!(
            device_state(&unknown, Shape::of(DeviceType::of(None))),
            json!({"state": "ON", "color_mode": "onoff"})
        );
        let members = [&white, &plug, &rgb];
        assert_eq!(
            group_state(&members, group_shape(&[t])),
            json!({"state": "ON", "brightness": 40})
        );
    }

    #[test]
    fn commands_become_steps() {
        let white = Shape::of(DeviceType::of(Some(5)));
        let steps = |p: &str, shape, on| parse_command(p.as_bytes(), shape, on);
        assert_eq!(
            steps("ON", Shape::Switch, false).unwrap(),
            [("on", Action::Power(true))]
        );
        assert_eq!(
            steps(" off ", white, true).unwrap(),
            [("on", Action::Power(false))]
        );
        assert_eq!(
            steps(r#"{"state":"ON","brightness":40}"#, white, true).unwrap(),
            [("brightness", Action::Brightness(40))]
        );
        assert_eq!(
            steps(r#"{"state":"ON","brightness":40}"#, white, false).unwrap(),
            [
                ("on", Action::Power(true)),
                ("brightness", Action::Brightness(40))
            ]
        );
        assert_eq!(
            steps(r#"{"state":"ON","color_temp":7000}"#, white, true).unwrap(),
            [("color_temp", Action::ColorTemp(100))]
        );
        assert_eq!(
            steps(r#"{"color_temp":250}"#, white, true).unwrap(),
            [("color_temp", Action::ColorTemp(40))],
            "250 mireds = 4000 K"
        );
        assert_eq!(
            steps(r#"{"state":"ON","brightness":0}"#, white, true).unwrap(),
            [("on", Action::Power(false))]
        );
        let rgb = Shape::of(DeviceType::of(Some(30)));
        assert_eq!(
            steps(
                r#"{"state":"ON","color":{"r":1,"g":2,"b":3},"transition":0}"#,
                rgb,
                true
            )
            .unwrap(),
            [("rgb", Action::Rgb([1, 2, 3]))]
        );
        // Discovery offers neither: a transition or a flash asked anyway is refused.
        for offered_nowhere in [
            r#"{"state":"ON","transition":3}"#,
            r#"{"state":"ON","flash":2}"#,
        ] {
            assert!(
                steps(offered_nowhere, rgb, true).is_err(),
                "{offered_nowhere}"
            );
        }
        assert_eq!(
            steps(r#"{"state":"ON","effect":"rainbow"}"#, rgb, true).unwrap(),
            [("effect", Action::Effect(Effect::Rainbow))]
        );
        assert_eq!(
            steps(r#"{"speed":3}"#, Shape::Fan, false).unwrap(),
            [
                ("on", Action::Power(true)),
                ("fan_speed", Action::FanSpeed(75))
            ]
        );
        assert_eq!(
            steps(r#"{"preset_mode":"low"}"#, Shape::Fan, true).unwrap(),
            [("fan_speed", Action::FanSpeed(25))]
        );
        assert_eq!(
            steps(r#"{"speed":0}"#, Shape::Fan, true).unwrap(),
            [("on", Action::Power(false))]
        );
        assert_eq!(
            steps(r#"{"state":"TOGGLE"}"#, Shape::Switch, true).unwrap(),
            [("on", Action::Power(false))]
        );
        for bad in [
            "",
            "maybe",
            "[1]",
            r#"{"state":"blue"}"#,
            r#"{"brightness":101}"#,
            r#"{"brightness":-1}"#,
            r#"{"color":{"r":300,"g":0,"b":0}}"#,
            r#"{"effect":"disco"}"#,
            r#"{"hue":3}"#,
            r#"{}"#,
        ] {
            assert!(steps(bad, rgb, true).is_err(), "{bad}");
        }
        assert!(steps(r#"{"speed":5}"#, Shape::Fan, true).is_err());
        assert!(steps(r#"{"preset_mode":"turbo"}"#, Shape::Fan, true).is_err());
        assert!(steps(r#"{"state":"ON","brightness":3}"#, Shape::Switch, true).is_err());
        assert!(parse_command(&[0xff, 0xfe], rgb, true).is_err());
    }

    #[test]
    fn topics_and_ids() {
        let t = topics();
        assert_eq!(t.object_of_set("cync/default_3/set"), Some("default_3"));
        assert_eq!(t.object_of_set("cync/a/b/set"), None);
        assert_eq!(t.object_of_set("cync//set"), None);
        assert_eq!(t.object_of_set("other/x/set"), None);
        assert_eq!(device_object("My Home!", 7), "my_home__7");
        assert_eq!(group_object("default", 32769), "default_group_32769");
    }

    #[test]
    fn applied_view_overlays_the_command() {
        let t = DeviceType::of(Some(30));
        let mut v = view(3, Some(30), "c");
        v.on = false;
        let after = applied_view(
            &v,
            &t,
            &[("on", Action::Power(true)), ("rgb", Action::Rgb([9, 8, 7]))],
        );
        assert!(after.on);
        assert_eq!((after.rgb, after.color_temp), (Some([9, 8, 7]), None));
    }
}
