//! `cyncd set` and `cyncd toggle`: the toggle harness, a client of a running server's HTTP API.
//! It prints the outcome, attempts and latency, and exits non-zero unless the command was
//! applied.

use anyhow::{Context as _, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where the server's HTTP API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The server's HTTP API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    api: String,
}

/// Set a device (or group) to a state and wait for the outcome.
///
/// Examples: `cyncd set 5 on`, `cyncd set cabin:5 brightness 40`, `cyncd set 7 rgb 255 0 0`,
/// `cyncd set --group cabin:32769 off`.
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
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum SetState {
    /// Turn on.
    On,
    /// Turn off.
    Off,
    /// Brightness 0-100.
    Brightness { value: u8 },
    /// White colour temperature 0-100.
    ColorTemp { value: u8 },
    /// RGB colour.
    Rgb { r: u8, g: u8, b: u8 },
    /// A factory effect.
    Effect { name: String },
    /// Fan speed 0-100.
    FanSpeed { value: u8 },
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
    let body = match &args.state {
        SetState::On => serde_json::json!({"on": true}),
        SetState::Off => serde_json::json!({"on": false}),
        SetState::Brightness { value } => serde_json::json!({"brightness": value}),
        SetState::ColorTemp { value } => serde_json::json!({"color_temp": value}),
        SetState::Rgb { r, g, b } => serde_json::json!({"rgb": [r, g, b]}),
        SetState::Effect { name } => serde_json::json!({"effect": name}),
        SetState::FanSpeed { value } => serde_json::json!({"fan_speed": value}),
    };
    let kind = if args.group { "groups" } else { "devices" };
    let path = format!("/api/{kind}/{}/state", encode(&args.device));
    report(&request(&args.api.api, "POST", &path, &body.to_string())?)
}

/// Runs `cyncd toggle`.
pub fn toggle(args: &ToggleArgs) -> anyhow::Result<()> {
    let path = format!("/api/devices/{}/toggle", encode(&args.device));
    report(&request(&args.api.api, "POST", &path, "")?)
}

fn report(answer: &serde_json::Value) -> anyhow::Result<()> {
    let outcome = answer
        .get("outcome")
        .unwrap_or(&serde_json::Value::Null)
        .as_str()
        .unwrap_or("unknown");
    println!(
        "{outcome}: {} attempt(s), {:.1} ms, command {}",
        answer.get("attempts").unwrap_or(&serde_json::Value::Null),
        answer
            .get("latency_ms")
            .unwrap_or(&serde_json::Value::Null)
            .as_f64()
            .unwrap_or(0.0),
        answer
            .get("command_id")
            .unwrap_or(&serde_json::Value::Null)
            .as_str()
            .unwrap_or("?")
    );
    if outcome != "applied" {
        bail!(
            "the command ended {outcome}; see /api/trace/{}",
            answer
                .get("command_id")
                .unwrap_or(&serde_json::Value::Null)
                .as_str()
                .unwrap_or("?")
        );
    }
    Ok(())
}

/// Sends a request with a JSON body and returns the JSON answer, or the server's error.
pub(crate) fn request(
    api: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let host = api
        .strip_prefix("http://")
        .context("--api must be an http:// URL")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {api}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("reading the answer")?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status")?;
    let json: serde_json::Value =
        serde_json::from_str(payload).with_context(|| format!("HTTP {status}: {payload}"))?;
    if !(200..300).contains(&status) {
        bail!(
            "HTTP {status}: {}",
            json.get("error")
                .unwrap_or(&serde_json::Value::Null)
                .as_str()
                .unwrap_or(payload)
        );
    }
    Ok(json)
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
