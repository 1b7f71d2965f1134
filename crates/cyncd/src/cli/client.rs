//! `cyncd set` and `cyncd toggle`: the toggle harness, a client of a running server's HTTP API.
//! Values are in the units of the page and Home Assistant (brightness in percent, white in
//! kelvin). It prints the outcome, attempts and latency, then the device's state with the
//! command applied, and exits non-zero unless the command was applied.

use super::http::{ApiArgs, Client};
use anyhow::bail;
use cync_proto::catalog::{DEFAULT_KELVIN, DeviceType};

/// Set a device (or group) to a state and wait for the outcome.
///
/// Examples: `cyncd set 5 on`, `cyncd set cabin:5 brightness 40`, `cyncd set 7 color-temp
/// 2700`, `cyncd set 7 rgb 255 0 0`, `cyncd set --group cabin:32769 off`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    /// The device: `home:mesh_id`, or a mesh id when only one home has it (a group id with
    /// --group).
    device: String,
    #[command(subcommand)]
    state: SetState,
    /// The target is a group from the configuration.
    #[arg(long, global = true)]
    group: bool,
    /// One outlet (1 = left, 2 = right) of a two-outlet plug, with on or off.
    #[arg(long, global = true, value_name = "N")]
    outlet: Option<u8>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum SetState {
    /// Turn on.
    On,
    /// Turn off.
    Off,
    /// Brightness in percent, 0-100.
    Brightness {
        #[arg(value_parser = percent)]
        value: u8,
    },
    /// White colour temperature in kelvin, 2000-7000 (2700 warm, 4000 neutral, 6500 daylight).
    ColorTemp {
        #[arg(value_parser = kelvin)]
        kelvin: u16,
    },
    /// RGB colour, each 0-255.
    Rgb { r: u8, g: u8, b: u8 },
    /// A factory effect.
    Effect { name: String },
    /// Fan speed in percent, 0-100 (0 off, 25 low, 50 medium, 75 high, 100 max).
    FanSpeed {
        #[arg(value_parser = percent)]
        value: u8,
    },
}

/// A percentage, with an error that states the range.
fn percent(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(v) if v <= 100 => Ok(v),
        _ => Err(format!("expected a percentage 0-100, got {text}")),
    }
}

/// A white temperature in kelvin, in the range the page and Home Assistant use.
fn kelvin(text: &str) -> Result<u16, String> {
    let (lo, hi) = DEFAULT_KELVIN;
    match text.trim_end_matches(['K', 'k']).parse::<u16>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a white temperature in kelvin, {lo}-{hi} (2700 warm, 6500 daylight), got {text}"
        )),
    }
}

/// Toggle a device's on/off (resolved by the server against what it knows, then sent as an
/// absolute on or off).
#[derive(Debug, Clone, clap::Args)]
pub struct ToggleArgs {
    /// The device: `home:mesh_id`, or a mesh id.
    device: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs `cyncd set`.
pub fn set(args: &SetArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let device = if args.group {
        None
    } else {
        Some(device(&client, &args.device)?)
    };
    let body = match &args.state {
        SetState::On => serde_json::json!({"on": true}),
        SetState::Off => serde_json::json!({"on": false}),
        SetState::Brightness { value } => serde_json::json!({"brightness": value}),
        SetState::ColorTemp { kelvin } => {
            // The API takes the device's 0-100 white scale; the device's type says which kelvin
            // its ends are (groups use the common range).
            let t = DeviceType::of(device.as_ref().and_then(type_code));
            serde_json::json!({"color_temp": t.temp_of_kelvin(u32::from(*kelvin))})
        }
        SetState::Rgb { r, g, b } => serde_json::json!({"rgb": [r, g, b]}),
        SetState::Effect { name } => serde_json::json!({"effect": name}),
        SetState::FanSpeed { value } => serde_json::json!({"fan_speed": value}),
    };
    let body = match (args.outlet, body) {
        (None, body) => body,
        (Some(_), _) if args.group => anyhow::bail!("--outlet is for a device, not a group"),
        (Some(n), serde_json::Value::Object(mut map)) if map.contains_key("on") => {
            map.insert("outlet".into(), n.into());
            serde_json::Value::Object(map)
        }
        (Some(_), _) => anyhow::bail!("--outlet goes with on or off"),
    };
    let kind = if args.group { "groups" } else { "devices" };
    let path = format!("/api/{kind}/{}/state", encode(&args.device));
    let answer = client.post(&path, &body)?.ok()?;
    finish(&answer, device.map(|view| applied(view, &body)))
}

/// Runs `cyncd toggle`.
pub fn toggle(args: &ToggleArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let before = device(&client, &args.device)?;
    let path = format!("/api/devices/{}/toggle", encode(&args.device));
    let answer = client.post(&path, &serde_json::json!({}))?.ok()?;
    let on = before.get("on").and_then(serde_json::Value::as_bool) == Some(true);
    finish(
        &answer,
        Some(applied(before, &serde_json::json!({ "on": !on }))),
    )
}

/// Prints the outcome and, for a device, its state with the command applied; fails unless the
/// command was applied.
fn finish(answer: &serde_json::Value, after: Option<serde_json::Value>) -> anyhow::Result<()> {
    let field = |k: &str| answer.get(k).unwrap_or(&serde_json::Value::Null);
    let outcome = field("outcome").as_str().unwrap_or("unknown");
    let command = field("command_id").as_str().unwrap_or("?");
    println!(
        "{outcome}: {} attempt(s), {:.1} ms, command {command}",
        field("attempts"),
        field("latency_ms").as_f64().unwrap_or(0.0),
    );
    if let (Some(view), "applied") = (after, outcome) {
        println!("{}", describe(&view));
    }
    if outcome != "applied" {
        bail!("the command ended {outcome}; see /api/trace/{command}");
    }
    Ok(())
}

/// `GET /api/devices/{id}`.
fn device(client: &Client, id: &str) -> anyhow::Result<serde_json::Value> {
    client.get(&format!("/api/devices/{}", encode(id)))?.ok()
}

/// The device's view with an applied command's attributes (`body`, as sent to the API): what
/// the device now is, as the MQTT bridge publishes it, without waiting for the report that
/// follows (the server may hold a relayed copy of it back for a few seconds).
fn applied(mut view: serde_json::Value, body: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Some(v) = view.as_object_mut() else {
        return view;
    };
    let get = |k: &str| body.get(k).cloned();
    if let (Some(n), Some(on)) = (get("outlet").and_then(|n| n.as_u64()), get("on")) {
        // One outlet switched: the others keep their state.
        if let Some(Value::Array(outlets)) = v.get_mut("outlets") {
            for o in outlets.iter_mut().filter(|o| o["outlet"] == n) {
                o["on"] = on.clone();
            }
        }
        return view;
    }
    if let Some(on) = get("on") {
        v.insert("on".into(), on);
    }
    if let Some(b) = get("brightness") {
        if v.get("brightness").is_some_and(|x| !x.is_null()) {
            v.insert("brightness".into(), b);
        }
        v.insert("on".into(), Value::Bool(true));
    }
    if let Some(t) = get("color_temp") {
        v.insert("color_temp".into(), t);
        v.insert("rgb".into(), Value::Null);
    }
    if let Some(rgb) = get("rgb") {
        v.insert("rgb".into(), rgb);
        v.insert("color_temp".into(), Value::Null);
    }
    if get("effect").is_some() {
        v.insert("rgb".into(), Value::Null);
        v.insert("color_temp".into(), Value::Null);
    }
    if let Some(speed) = get("fan_speed").and_then(|s| s.as_u64()) {
        let speed = u8::try_from(speed).unwrap_or(100);
        if v.get("fan_speed").is_some_and(|x| !x.is_null()) {
            v.insert("fan_speed".into(), DeviceType::fan_step(speed).into());
        }
        v.insert("on".into(), Value::Bool(speed > 0));
    }
    view
}

fn type_code(view: &serde_json::Value) -> Option<u8> {
    view.get("type")
        .and_then(serde_json::Value::as_u64)
        .and_then(|t| u8::try_from(t).ok())
}

/// One line for a device view, in the units the command line takes:
/// `default:3 White bulb 3: on, 40 %, 2700 K`.
pub fn describe(view: &serde_json::Value) -> String {
    let text = |k: &str| {
        view.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
    };
    let number = |k: &str| view.get(k).and_then(serde_json::Value::as_u64);
    let on = view.get("on").and_then(serde_json::Value::as_bool) == Some(true);
    let mut parts = vec![if on { "on" } else { "off" }.to_string()];
    if on {
        if let Some(b) = number("brightness") {
            parts.push(format!("{b} %"));
        }
        if let Some(t) = number("color_temp").and_then(|t| u8::try_from(t).ok()) {
            parts.push(format!("{} K", DeviceType::of(type_code(view)).kelvin(t)));
        }
        if let Some(rgb) = view.get("rgb").and_then(serde_json::Value::as_array) {
            let rgb: Vec<String> = rgb.iter().map(ToString::to_string).collect();
            parts.push(format!("rgb {}", rgb.join(" ")));
        }
    }
    if let Some(step) = number("fan_speed") {
        let name = usize::try_from(step)
            .ok()
            .and_then(|i| ["off", "low", "medium", "high", "max"].get(i).copied())
            .unwrap_or("?");
        parts.push(format!("fan {name}"));
    }
    if let Some(outlets) = view.get("outlets").and_then(serde_json::Value::as_array) {
        parts = outlets
            .iter()
            .map(|o| {
                let name = o
                    .get("name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?");
                let on = o.get("on").and_then(serde_json::Value::as_bool) == Some(true);
                format!("{name} {}", if on { "on" } else { "off" })
            })
            .collect();
    }
    if view.get("online").and_then(serde_json::Value::as_bool) != Some(true) {
        parts.push("offline".into());
    }
    format!("{} {}: {}", text("id"), text("name"), parts.join(", "))
}

/// Percent-encodes the few characters an id could carry that a path cannot.
fn encode(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("%{:02X}", u32::from(c))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_percent_and_kelvin_with_the_real_range_in_errors() {
        assert_eq!(percent("40"), Ok(40));
        assert_eq!(percent("100"), Ok(100));
        assert_eq!(
            percent("300"),
            Err("expected a percentage 0-100, got 300".into())
        );
        assert!(percent("-1").is_err());
        assert_eq!(kelvin("2700"), Ok(2700));
        assert_eq!(kelvin("6500K"), Ok(6500));
        let err = kelvin("50").unwrap_err();
        assert!(err.contains("2000-7000") && err.contains("got 50"), "{err}");
        assert!(kelvin("9000").is_err());
    }

    #[test]
    fn a_device_is_described_in_the_command_line_units() {
        let view = serde_json::json!({"id": "default:3", "name": "White bulb 3", "type": 5,
            "on": true, "brightness": 40, "color_temp": 14, "rgb": null, "fan_speed": null,
            "online": true});
        let t = DeviceType::of(Some(5));
        assert_eq!(
            describe(&view),
            format!("default:3 White bulb 3: on, 40 %, {} K", t.kelvin(14))
        );
        let plug = serde_json::json!({"id": "h:4", "name": "Plug", "on": false,
            "brightness": null, "color_temp": null, "online": false});
        assert_eq!(describe(&plug), "h:4 Plug: off, offline");
        let fan = serde_json::json!({"id": "h:6", "name": "Fan", "on": true, "fan_speed": 2,
            "online": true});
        assert_eq!(describe(&fan), "h:6 Fan: on, fan medium");
    }

    #[test]
    fn an_applied_command_shows_in_the_state() {
        let view = serde_json::json!({"id": "h:3", "name": "Bulb", "type": 5, "on": false,
            "brightness": 0, "color_temp": 50, "rgb": null, "online": true});
        let after = applied(view.clone(), &serde_json::json!({"brightness": 40}));
        assert_eq!(
            (after["on"].as_bool(), after["brightness"].as_u64()),
            (Some(true), Some(40))
        );
        let after = applied(view.clone(), &serde_json::json!({"rgb": [1, 2, 3]}));
        assert_eq!(after["rgb"], serde_json::json!([1, 2, 3]));
        assert!(after["color_temp"].is_null());
        let plug = serde_json::json!({"id": "h:4", "on": true, "brightness": null});
        let after = applied(plug, &serde_json::json!({"on": false}));
        assert_eq!(after["on"], false);
        assert!(after["brightness"].is_null());
        let fan = serde_json::json!({"id": "h:6", "on": false, "fan_speed": 0});
        let after = applied(fan, &serde_json::json!({"fan_speed": 75}));
        assert_eq!(
            (after["on"].as_bool(), after["fan_speed"].as_u64()),
            (Some(true), Some(3))
        );
        // One outlet of a two-outlet plug: only it changes, and both are shown.
        let dual = serde_json::json!({"id": "h:6", "name": "Patio", "on": true, "online": true,
            "outlets": [{"outlet": 1, "name": "Left outlet", "on": false},
                        {"outlet": 2, "name": "Right outlet", "on": true}]});
        let after = applied(dual, &serde_json::json!({"outlet": 1, "on": true}));
        assert_eq!(
            describe(&after),
            "h:6 Patio: Left outlet on, Right outlet on"
        );
    }
}
