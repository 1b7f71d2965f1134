//! `cyncd set` and `cyncd toggle`: the toggle harness, a client of a running server's HTTP API.
//! It prints the outcome, attempts and latency, and exits non-zero unless the command was
//! applied. It sends the server's API token ([`ApiArgs`] says where it is read from).

use anyhow::{Context as _, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable with the API token.
pub const TOKEN_ENV: &str = "CYNCD_API_TOKEN";

/// Where the server's HTTP API is, and its token.
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
    /// File whose first line is the server's API token. Without it: $CYNCD_API_TOKEN, else
    /// the file api-token in --state-dir (the server's default state directory,
    /// $XDG_STATE_HOME/cyncd or ~/.local/state/cyncd, when that is not given either).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The server's state directory, where its api-token is.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl ApiArgs {
    /// The server's state directory: the one given, else the server's default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| crate::config::Config::default().state_dir)
    }

    /// The token to send: the file given, else the environment, else the state directory's
    /// `api-token` when it exists (a server without a token needs none).
    fn token(&self) -> anyhow::Result<Option<String>> {
        let first_line = |path: &Path| -> anyhow::Result<String> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API token from {}", path.display()))?;
            Ok(text.lines().next().unwrap_or_default().trim().to_string())
        };
        if let Some(path) = &self.token_file {
            return first_line(path).map(Some);
        }
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            return Ok(Some(token.trim().to_string()));
        }
        let path = self
            .state_dir()
            .join(crate::frontends::http::guard::TOKEN_FILE);
        if path.exists() {
            return first_line(&path).map(Some);
        }
        Ok(None)
    }
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
    report(&request(&args.api, "POST", &path, &body.to_string())?)
}

/// Runs `cyncd toggle`.
pub fn toggle(args: &ToggleArgs) -> anyhow::Result<()> {
    let path = format!("/api/devices/{}/toggle", encode(&args.device));
    report(&request(&args.api, "POST", &path, "")?)
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

/// Sends a request with a JSON body (and the API token when there is one) and returns the JSON
/// answer, or the server's error.
pub(crate) fn request(
    args: &ApiArgs,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let api = &args.api;
    let host = api
        .strip_prefix("http://")
        .context("--api must be an http:// URL")?
        .trim_end_matches('/');
    let token = args.token()?;
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {api}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let authorization = token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    if status == 401 {
        bail!(
            "HTTP 401: the server wants its API token{}: give --token-file FILE or set {TOKEN_ENV} (the server keeps it in api-token in its state directory)",
            if token.is_some() {
                " and refused the one sent"
            } else {
                ""
            }
        );
    }
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
