//! Configuration: an optional TOML file, every key also a command-line flag (flags win), and
//! defaults that need no file at all.

pub mod options;

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The effective configuration of `cyncd serve`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where devices connect (TLS, or plain with `plain`).
    pub listen: SocketAddr,
    /// HTTP API, metrics and web page.
    pub http: SocketAddr,
    /// Certificate, key and other state.
    pub state_dir: PathBuf,
    /// Serve devices without TLS (lab tests and packet crafting).
    pub plain: bool,
    /// The user's own certificate (PEM); with `key`.
    pub cert: Option<PathBuf>,
    /// The user's own private key (PEM); with `cert`.
    pub key: Option<PathBuf>,
    /// Most device connections at once; further ones are refused.
    pub max_connections: usize,
    /// Largest packet accepted from a device, in bytes.
    pub max_packet: usize,
    /// The devices' heartbeat cadence, in seconds.
    pub heartbeat_secs: u64,
    /// Close a connection silent for this many heartbeats.
    pub silence_multiple: u32,
    /// Close a connection whose writes stall this long, in seconds.
    pub write_timeout_secs: u64,
    /// Give up a TLS handshake after this long, in seconds.
    pub handshake_timeout_secs: u64,
    /// Close a connection that has not sent an acceptable hello this long after its TLS
    /// handshake, in seconds (devices send it at once).
    pub hello_timeout_secs: u64,
    /// Most device connections open at once from one address; loopback addresses are exempt
    /// unless `limit_loopback` (load tests and `cyncd sim` connect thousands from 127.0.0.1).
    pub max_connections_per_ip: usize,
    /// Apply `max_connections_per_ip` to loopback addresses too.
    pub limit_loopback: bool,
    /// Devices one bridge connection may speak for, the configuration's devices not counted.
    /// Once the bridge listed its mesh, it speaks only for the devices it listed.
    pub max_devices_per_bridge: usize,
    /// Devices one home may hold, the configuration's devices not counted.
    pub max_devices_per_home: usize,
    /// With homes configured: refuse bridges that no home lists.
    pub refuse_unknown_bridges: bool,
    /// Device authentication: auth codes pinned by hand, and trust on first use.
    pub device_auth: DeviceAuthConfig,
    /// Ask each bridge for its mesh after it connects.
    pub discover_mesh: bool,
    /// How a 0x7D/0x7E byte that cyncd cannot choose away is sent inside a command frame:
    /// `avoid` (nudge a colour component, re-pick the seq, stuff only an unavoidable target
    /// id), `stuff` (escape every one as `7d 5d`/`7d 5e`) or `raw`; see
    /// [`cync_proto::FrameEscaping`].
    pub frame_escaping: String,
    /// The UTC offset sent to devices in 0xC8, e.g. `-06:00`; the system's when unset.
    pub utc_offset: Option<String>,
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `cyncd=debug`.
    pub log_level: String,
    /// Runtime threads: 1 (the default) runs every connection on one event loop, which measured
    /// the least CPU per packet; more spread TLS handshakes (bursts of reconnects) over cores.
    pub threads: usize,
    /// Offer encrypt-then-MAC to devices (off by default: see the TLS notes in docs/protocol.md).
    pub tls_encrypt_then_mac: bool,
    /// Command deadline (submit → outcome), in milliseconds.
    pub command_deadline_ms: u64,
    /// Retries after a first attempt that got nothing back.
    pub command_retries: u8,
    /// Commands queued per device.
    pub command_queue: usize,
    /// A file whose first line is the HTTP API token; unset: `api-token` in the state
    /// directory, generated at the first start.
    pub http_token_file: Option<PathBuf>,
    /// Serve the HTTP API without a token. Allowed only when `http` is a loopback address.
    pub http_no_auth: bool,
    /// Host names (besides IP addresses and localhost) the HTTP server answers to, e.g.
    /// `cyncd.lan`; any other `Host` header is refused (DNS rebinding).
    pub http_hosts: Vec<String>,
    /// Exact addresses of reverse proxies that authenticate people themselves (Home
    /// Assistant's ingress gateway, `172.30.32.2`, which the add-on sets). A request from one
    /// of them that carries `X-Ingress-Path` needs no API token and passes the `Host` check;
    /// every other request still needs the token. Empty by default; at most
    /// [`MAX_TRUSTED_PROXIES`], no networks.
    pub http_trusted_proxies: Vec<IpAddr>,
    /// Most HTTP connections at once; further ones are accepted and closed at once.
    pub http_max_connections: usize,
    /// Close an HTTP connection whose request head has not arrived this long after it opened
    /// (or after its previous answer), in seconds.
    pub http_header_timeout_secs: f64,
    /// Refuse a request whose body has not arrived this long after its head, in seconds.
    pub http_request_timeout_secs: f64,
    /// Close an HTTP connection on which no byte moved this long, in seconds.
    pub http_idle_timeout_secs: f64,
    /// MQTT for Home Assistant; off until a broker URL is set.
    pub mqtt: MqttConfig,
    /// Routing between the legacy and the reliable command transports, SLOs and rollback.
    pub canary: CanaryConfig,
    /// Homes, with their bridges, device names and groups (over the homes file's).
    pub homes: Vec<Home>,
    /// The Cync account API (`cyncd account`, the page's setup screen).
    pub account: AccountConfig,
    /// Captures of the device connections' traffic; off until a directory is set.
    pub capture: CaptureConfig,
}

/// The `[capture]` section: every device connection's traffic written to files in the
/// captures' text format (see `docs/captures.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// The directory for the capture files (created mode 0700). Unset: no capture.
    pub dir: Option<PathBuf>,
    /// Keep the auth codes of the devices' hellos in the files (masked with `*` otherwise).
    pub secrets: bool,
    /// A connection's file is ended, and its next part started, at the first packet boundary
    /// past this size, in bytes.
    pub max_file_bytes: u64,
    /// Most bytes of capture files in the directory; past it the oldest files are deleted.
    pub max_total_bytes: u64,
    /// Most capture files in the directory; past it the oldest files are deleted.
    pub max_files: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            dir: None,
            secrets: false,
            max_file_bytes: 1 << 20,
            max_total_bytes: 256 << 20,
            max_files: 1000,
        }
    }
}

/// The `[account]` section: where the Cync account API is.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    /// Base URL of the API.
    pub api_base: String,
    /// Time allowed for one request, in seconds.
    pub timeout_secs: u64,
}

impl Default for AccountConfig {
    fn default() -> Self {
        Self {
            api_base: DEFAULT_ACCOUNT_API.into(),
            timeout_secs: 20,
        }
    }
}

/// Most addresses `http_trusted_proxies` may list (a proxy or two; the list is searched on
/// every request).
pub const MAX_TRUSTED_PROXIES: usize = 8;

/// The Cync account API's base URL.
pub const DEFAULT_ACCOUNT_API: &str = "https://api.gelighting.com/v2/";

/// The `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL: `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883); user and
    /// password may be given as `mqtt://user:password@host`. Unset: MQTT is off. Shown with
    /// its password redacted.
    #[serde(serialize_with = "redacted_url")]
    pub url: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer `password_file` or the `CYNCD_MQTT_PASSWORD` environment variable).
    /// Never logged.
    #[serde(serialize_with = "redacted")]
    pub password: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for `mqtts://` (the system's roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// MQTT client id.
    pub client_id: String,
    /// Topic prefix for states, availability and commands.
    pub base_topic: String,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// The web page's address as people reach it, e.g. `http://cyncd.lan:8080/`: each
    /// device's "Visit" link in Home Assistant opens its page there. Unset: `http://<http>/`
    /// when `http` is a definite address (the first of `http_hosts` for a wildcard one).
    pub page_url: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_id: "cyncd".into(),
            base_topic: "cync".into(),
            discovery_prefix: "homeassistant".into(),
            page_url: None,
        }
    }
}

/// The `[device_auth]` section: how a bridge's hello is authenticated.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceAuthConfig {
    /// Pin a bridge's auth code the first time it says hello (trust on first use); off, only
    /// the codes given here (or imported from the account) are accepted.
    pub first_use: bool,
    /// Auth codes pinned by hand: bridge id (8 hex digits) → the 16-character code from its
    /// hello. Never logged.
    #[serde(serialize_with = "redacted_codes")]
    pub codes: BTreeMap<String, String>,
    /// Pin the auth codes the Cync account export gave for the Wi-Fi devices (in the homes
    /// file). Off: they are ignored, and first use (or `codes`) decides.
    pub account_codes: bool,
}

impl Default for DeviceAuthConfig {
    fn default() -> Self {
        Self {
            first_use: true,
            codes: BTreeMap::new(),
            account_codes: true,
        }
    }
}

impl DeviceAuthConfig {
    /// The configured codes by bridge id (ids already validated).
    pub fn pins(&self) -> Vec<(cync_proto::ConnId, cync_proto::AuthCode)> {
        self.codes
            .iter()
            .filter_map(|(id, code)| {
                let conn = cync_proto::ConnId::from_hex(id)?;
                Some((conn, cync_proto::AuthCode::new(code.as_bytes().to_vec())))
            })
            .collect()
    }
}

fn redacted_codes<S: serde::Serializer>(
    codes: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(codes.keys().map(|k| (k, "<redacted>")))
}

/// Default of `max_connections_per_ip`: more Wi-Fi devices than one address ever holds.
pub const DEFAULT_CONNECTIONS_PER_IP: usize = 32;
/// Default of `max_devices_per_bridge`: a mesh has at most 255 device ids (one byte in status
/// records).
pub const DEFAULT_DEVICES_PER_BRIDGE: usize = 256;
/// Default of `max_devices_per_home`: four full meshes.
pub const DEFAULT_DEVICES_PER_HOME: usize = 1024;

/// The `[canary]` section (also changed at run time by `PUT /api/canary` and SIGHUP).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// `legacy`, `shadow`, `canary` or `reliable`.
    pub mode: String,
    /// Share of connections on the reliable transport in `canary` mode, 0–100.
    pub percent: f64,
    /// Every new connection legacy, whatever the mode.
    pub kill: bool,
    /// How often the SLO rules are evaluated, in seconds.
    pub evaluate_secs: f64,
    /// Events a window needs before it counts.
    pub min_events: u64,
    /// SLO bucket width, in seconds.
    pub bucket_secs: f64,
    /// Target share of applied commands.
    pub success_target: f64,
    /// Latency limit in milliseconds …
    pub latency_limit_ms: u64,
    /// … met by this share of commands.
    pub latency_target: f64,
    /// Target share of packets that decode.
    pub decode_target: f64,
    /// Target share of commands not refused by a full queue.
    pub queue_target: f64,
    /// Burn-rate rules.
    pub rules: Vec<BurnRuleConfig>,
    /// The legacy transport's drain and 0x7B timeout, in milliseconds.
    pub legacy_timeout_ms: u64,
    /// Shadow differences logged: the first ten, then one in this many.
    pub shadow_log_every: u64,
}

/// One multi-window burn-rate rule.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BurnRuleConfig {
    /// Name.
    pub name: String,
    /// Long window, seconds.
    pub long_secs: f64,
    /// Short window, seconds.
    pub short_secs: f64,
    /// Burn-rate threshold.
    pub factor: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        let slo = cync_proto::canary::SloConfig::default();
        Self {
            mode: "reliable".into(),
            percent: 0.0,
            kill: false,
            evaluate_secs: 10.0,
            min_events: slo.min_events,
            bucket_secs: slo.bucket.as_secs_f64(),
            success_target: slo.success_target,
            latency_limit_ms: 1500,
            latency_target: slo.latency_target,
            decode_target: slo.decode_target,
            queue_target: slo.queue_target,
            rules: slo
                .rules
                .iter()
                .map(|r| BurnRuleConfig {
                    name: r.name.clone(),
                    long_secs: r.long.as_secs_f64(),
                    short_secs: r.short.as_secs_f64(),
                    factor: r.factor,
                })
                .collect(),
            legacy_timeout_ms: 2000,
            shadow_log_every: 100,
        }
    }
}

impl CanaryConfig {
    /// The SLO configuration, or why it is not valid.
    pub fn slo(&self) -> Result<cync_proto::canary::SloConfig, String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 30.0 * 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "canary {name} must be a positive number of seconds, got {v}"
                ))
            }
        };
        let share = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1.0 {
                Ok(v)
            } else {
                Err(format!(
                    "canary {name} must be between 0 and 1 (exclusive), got {v}"
                ))
            }
        };
        let mut rules = Vec::new();
        for r in &self.rules {
            let long = secs("rule long_secs", r.long_secs)?;
            let short = secs("rule short_secs", r.short_secs)?;
            if short > long {
                return Err(format!(
                    "canary rule {:?}: short_secs exceeds long_secs",
                    r.name
                ));
            }
            if !(r.factor.is_finite() && r.factor > 0.0) {
                return Err(format!("canary rule {:?}: factor must be positive", r.name));
            }
            rules.push(cync_proto::canary::BurnRule {
                name: r.name.clone(),
                long,
                short,
                factor: r.factor,
            });
        }
        Ok(cync_proto::canary::SloConfig {
            success_target: share("success_target", self.success_target)?,
            latency_limit: Duration::from_millis(self.latency_limit_ms.max(1)),
            latency_target: share("latency_target", self.latency_target)?,
            decode_target: share("decode_target", self.decode_target)?,
            queue_target: share("queue_target", self.queue_target)?,
            rules,
            min_events: self.min_events.max(1),
            bucket: secs("bucket_secs", self.bucket_secs)?,
        })
    }

    /// The routing policy.
    pub fn policy(&self) -> Result<cync_proto::canary::Policy, String> {
        let mode = cync_proto::canary::Mode::from_name(&self.mode).ok_or_else(|| {
            format!(
                "canary mode must be legacy, shadow, canary or reliable, got {:?}",
                self.mode
            )
        })?;
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!(
                "canary percent must be 0-100, got {}",
                self.percent
            ));
        }
        Ok(cync_proto::canary::Policy {
            mode,
            percent: self.percent,
            kill: self.kill,
        })
    }
}

fn redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

fn redacted_url<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_some(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// One home: the bridges (by connection id) that belong to it, and what its devices are.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Home {
    /// Name, unique among homes.
    pub name: String,
    /// Connection ids (8 hex digits) of this home's Wi-Fi devices.
    #[serde(default)]
    pub bridges: Vec<String>,
    /// Named devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// A device's name, type, room and visibility; each one set here wins over the homes file
/// (the Cync account's data).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Mesh id.
    pub id: u16,
    /// Name shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Cync device type code.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    /// Room (a Home Assistant area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// False hides the device from the API, the page and Home Assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A group of devices commanded together; it replaces a group of the same id from the homes
/// file.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Group id.
    pub id: u16,
    /// Name.
    pub name: String,
    /// Member mesh ids.
    #[serde(default)]
    pub members: Vec<u16>,
    /// Whether it is a room (its devices are shown under it and get it as their area); true
    /// unless set, or unless the homes file says it is a subgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<bool>,
}

/// The home used when the config names none for a bridge.
pub const DEFAULT_HOME: &str = "default";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 23779)),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: default_state_dir(),
            plain: false,
            cert: None,
            key: None,
            max_connections: 20_000,
            max_packet: cync_proto::DEFAULT_MAX_PACKET,
            heartbeat_secs: 20,
            silence_multiple: 3,
            write_timeout_secs: 10,
            handshake_timeout_secs: 10,
            hello_timeout_secs: 5,
            max_connections_per_ip: DEFAULT_CONNECTIONS_PER_IP,
            limit_loopback: false,
            max_devices_per_bridge: DEFAULT_DEVICES_PER_BRIDGE,
            max_devices_per_home: DEFAULT_DEVICES_PER_HOME,
            refuse_unknown_bridges: false,
            device_auth: DeviceAuthConfig::default(),
            discover_mesh: true,
            frame_escaping: cync_proto::FrameEscaping::default().to_string(),
            utc_offset: None,
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            threads: 1,
            tls_encrypt_then_mac: false,
            command_deadline_ms: 5000,
            command_retries: 2,
            command_queue: 16,
            http_token_file: None,
            http_no_auth: false,
            http_hosts: Vec::new(),
            http_trusted_proxies: Vec::new(),
            http_max_connections: 256,
            http_header_timeout_secs: 10.0,
            http_request_timeout_secs: 30.0,
            http_idle_timeout_secs: 120.0,
            mqtt: MqttConfig::default(),
            canary: CanaryConfig::default(),
            homes: Vec::new(),
            account: AccountConfig::default(),
            capture: CaptureConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. (The cause is the error's source, not repeated in its
    /// message, so a chain printed with `{:#}` names it once.)
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for cyncd (the cause, with line and column, is the source).
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// The frame escaping policy (validated: an unknown name was refused at load).
    pub fn frame_escaping(&self) -> cync_proto::FrameEscaping {
        self.frame_escaping.parse().unwrap_or_default()
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self
            .frame_escaping
            .parse::<cync_proto::FrameEscaping>()
            .is_err()
        {
            return bad(format!(
                "frame_escaping must be avoid, stuff or raw, got {:?}",
                self.frame_escaping
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if !(64..=65_540).contains(&self.max_packet) {
            return bad(format!(
                "max_packet must be 64..=65540, got {}",
                self.max_packet
            ));
        }
        if self.heartbeat_secs == 0 || self.silence_multiple == 0 {
            return bad("heartbeat_secs and silence_multiple must be at least 1".into());
        }
        if !(100..=600_000).contains(&self.command_deadline_ms) {
            return bad(format!(
                "command_deadline_ms must be 100..=600000, got {}",
                self.command_deadline_ms
            ));
        }
        if !(1..=300).contains(&self.hello_timeout_secs) {
            return bad(format!(
                "hello_timeout_secs must be 1..=300, got {}",
                self.hello_timeout_secs
            ));
        }
        if self.max_connections_per_ip == 0 {
            return bad("max_connections_per_ip must be at least 1".into());
        }
        for (name, v) in [
            ("max_devices_per_bridge", self.max_devices_per_bridge),
            ("max_devices_per_home", self.max_devices_per_home),
        ] {
            if !(1..=65_536).contains(&v) {
                return bad(format!("{name} must be 1..=65536, got {v}"));
            }
        }
        if self.refuse_unknown_bridges && self.homes.iter().all(|h| h.bridges.is_empty()) {
            return bad(
                "refuse_unknown_bridges needs [[homes]] that list their bridges (it would refuse every bridge)"
                    .into(),
            );
        }
        for (id, code) in &self.device_auth.codes {
            if cync_proto::ConnId::from_hex(id).is_none() {
                return bad(format!(
                    "device_auth codes: bridge {id:?} is not 8 hex digits"
                ));
            }
            if code.is_empty() || code.len() > 255 {
                return bad(format!(
                    "device_auth codes: the code of {id} must be 1-255 characters"
                ));
            }
        }
        if !(1..=64).contains(&self.threads) {
            return bad(format!("threads must be 1..=64, got {}", self.threads));
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert and key must be given together".into());
        }
        if let Some(offset) = &self.utc_offset {
            if parse_offset(offset).is_none() {
                return bad(format!(
                    "utc_offset must look like -06:00 or +05:30, got {offset:?}"
                ));
            }
        }
        self.canary.policy().map_err(ConfigError::Invalid)?;
        self.canary.slo().map_err(ConfigError::Invalid)?;
        if !(self.canary.evaluate_secs.is_finite() && self.canary.evaluate_secs >= 0.01) {
            return bad("canary evaluate_secs must be at least 0.01".into());
        }
        if !(100..=60_000).contains(&self.canary.legacy_timeout_ms) {
            return bad("canary legacy_timeout_ms must be 100..=60000".into());
        }
        if self.http_no_auth && !self.http.ip().is_loopback() {
            return bad(format!(
                "http_no_auth needs a loopback http address (127.0.0.1 or [::1]), not {}: on any \
                 other address everyone on the network could command the devices",
                self.http
            ));
        }
        if !(1..=65_536).contains(&self.http_max_connections) {
            return bad(format!(
                "http_max_connections must be 1..=65536, got {}",
                self.http_max_connections
            ));
        }
        for (name, v) in [
            ("http_header_timeout_secs", self.http_header_timeout_secs),
            ("http_request_timeout_secs", self.http_request_timeout_secs),
            ("http_idle_timeout_secs", self.http_idle_timeout_secs),
        ] {
            if !(v.is_finite() && (0.01..=86_400.0).contains(&v)) {
                return bad(format!("{name} must be 0.01..=86400 seconds, got {v}"));
            }
        }
        for host in &self.http_hosts {
            if host.is_empty()
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
            {
                return bad(format!(
                    "http_hosts: {host:?} is not a host name (letters, digits, - and . only)"
                ));
            }
        }
        if self.http_trusted_proxies.len() > MAX_TRUSTED_PROXIES {
            return bad(format!(
                "http_trusted_proxies lists {} addresses; at most {MAX_TRUSTED_PROXIES}",
                self.http_trusted_proxies.len()
            ));
        }
        if let Some(ip) = self
            .http_trusted_proxies
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return bad(format!(
                "http_trusted_proxies: {ip} is not one machine's address (list each proxy's own address)"
            ));
        }
        if let Some(url) = &self.mqtt.url {
            Broker::parse(url).map_err(ConfigError::Invalid)?;
        }
        let topic_ok = |t: &str| !t.is_empty() && !t.contains(['+', '#']) && !t.ends_with('/');
        if !topic_ok(&self.mqtt.base_topic) || !topic_ok(&self.mqtt.discovery_prefix) {
            return bad(
                "mqtt base_topic and discovery_prefix must be non-empty, without + # or a trailing /"
                    .into(),
            );
        }
        if let Some(page) = self.mqtt.page_url.as_deref().filter(|p| !p.is_empty()) {
            // Home Assistant refuses a whole discovery payload over a bad configuration_url.
            let ok = ["http://", "https://", "homeassistant://"]
                .iter()
                .any(|s| page.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
                && !page.contains(char::is_whitespace);
            if !ok {
                return bad(format!(
                    "mqtt page_url must be an http://, https:// or homeassistant:// address, got {:?}",
                    page.chars().take(200).collect::<String>()
                ));
            }
        }
        if !(self.account.api_base.starts_with("https://")
            || self.account.api_base.starts_with("http://"))
        {
            return bad(format!(
                "account api_base must be an http:// or https:// URL, got {:?}",
                self.account.api_base
            ));
        }
        if !(1..=600).contains(&self.account.timeout_secs) {
            return bad("account timeout_secs must be 1..=600".into());
        }
        let cap = &self.capture;
        if !(1024..=1 << 30).contains(&cap.max_file_bytes) {
            return bad(format!(
                "capture max_file_bytes must be 1024..=1073741824, got {}",
                cap.max_file_bytes
            ));
        }
        if cap.max_total_bytes < cap.max_file_bytes.saturating_mul(2) {
            return bad(format!(
                "capture max_total_bytes must be at least twice max_file_bytes ({}), got {}",
                cap.max_file_bytes.saturating_mul(2),
                cap.max_total_bytes
            ));
        }
        if !(2..=1_000_000).contains(&cap.max_files) {
            return bad(format!(
                "capture max_files must be 2..=1000000, got {}",
                cap.max_files
            ));
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 64 {
            return bad("mqtt client_id must be 1-64 characters".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut bridges = std::collections::HashSet::new();
        for home in &self.homes {
            if !names.insert(home.name.as_str()) {
                return bad(format!("home {:?} is named twice", home.name));
            }
            for b in &home.bridges {
                if cync_proto::ConnId::from_hex(b).is_none() {
                    return bad(format!(
                        "home {:?}: bridge {b:?} is not 8 hex digits",
                        home.name
                    ));
                }
                if !bridges.insert(b.to_ascii_lowercase()) {
                    return bad(format!("bridge {b} belongs to two homes"));
                }
            }
        }
        Ok(())
    }

    /// The mesh ids the configuration names, by home.
    pub fn configured_devices(&self) -> HashMap<String, HashSet<u16>> {
        self.homes
            .iter()
            .map(|h| {
                let ids = h
                    .devices
                    .iter()
                    .map(|d| d.id)
                    .chain(h.groups.iter().flat_map(|g| g.members.iter().copied()))
                    .collect();
                (h.name.clone(), ids)
            })
            .collect()
    }

    /// The delivery settings.
    pub fn delivery(&self) -> cync_proto::delivery::DeliveryConfig {
        cync_proto::delivery::DeliveryConfig {
            deadline: Duration::from_millis(self.command_deadline_ms),
            max_retries: self.command_retries,
            max_queue: self.command_queue.max(1),
            seed: fastrand::u64(..),
            ..cync_proto::delivery::DeliveryConfig::default()
        }
    }

    /// Heartbeat cadence.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// The UTC offset in minutes, from the config or the system.
    pub fn offset_minutes(&self) -> i16 {
        self.utc_offset
            .as_deref()
            .and_then(parse_offset)
            .unwrap_or_else(|| {
                let secs = chrono::Local::now().offset().local_minus_utc();
                i16::try_from(secs / 60).unwrap_or(0)
            })
    }
}

/// The UTC offset, recomputed at most once a minute (daylight-saving changes are picked up;
/// reading the system zone on every packet is not).
#[derive(Debug, Default)]
pub struct OffsetCache {
    minutes: std::sync::atomic::AtomicI32,
    /// Unix second of the last lookup, plus one (0 = never).
    checked: std::sync::atomic::AtomicU64,
}

impl OffsetCache {
    /// The offset in minutes at `unix` seconds.
    pub fn get(&self, config: &Config, unix: u64) -> i16 {
        use std::sync::atomic::Ordering::Relaxed;
        let checked = self.checked.load(Relaxed);
        if checked == 0 || unix >= checked.saturating_add(59) {
            let minutes = config.offset_minutes();
            self.minutes.store(i32::from(minutes), Relaxed);
            self.checked.store(unix.saturating_add(1), Relaxed);
            return minutes;
        }
        i16::try_from(self.minutes.load(Relaxed)).unwrap_or(0)
    }
}

/// `-06:00` → −360.
pub fn parse_offset(text: &str) -> Option<i16> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'-' => (-1, text.get(1..)?),
        b'+' => (1, text.get(1..)?),
        _ => (1, text),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i16, i16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

/// A broker address parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// User from the URL.
    pub username: Option<String>,
    /// Password from the URL.
    pub password: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Display for Broker {
    /// The URL without credentials, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Broker {
    /// Parses `mqtt://[user[:password]@]host[:port]` or `mqtts://…` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("mqtt url {:?}: {why}", redact_url(url)));
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return bad("must start with mqtt:// or mqtts://");
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return bad("must not have a path or query");
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (Some(name.to_string()), Some(pass.to_string())),
                None => (Some(u.to_string()), None),
            },
        };
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return bad("unclosed [ in the host");
            };
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok(),
                None if after.is_empty() => Some(default_port),
                None => None,
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()),
                None => (hostport.to_string(), Some(default_port)),
            }
        };
        let Some(port) = port.filter(|p| *p != 0) else {
            return bad("the port must be 1-65535");
        };
        if host.is_empty() {
            return bad("no host");
        }
        Ok(Self {
            host,
            port,
            tls,
            username: username.filter(|u| !u.is_empty()),
            password,
        })
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = url.get(s + 3..at).unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:<redacted>{}",
                url.get(..s + 3).unwrap_or_default(),
                url.get(at..).unwrap_or_default()
            )
        }
        _ => url.to_string(),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("cyncd");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/cyncd");
    }
    PathBuf::from("cyncd-state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_section_parses_and_its_password_is_never_shown() {
        let text = r#"
            [mqtt]
            url = "mqtts://broker.lan"
            username = "cyncd"
            password = "hunter2"
            base_topic = "home/cync"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.mqtt.discovery_prefix, "homeassistant");
        assert_eq!(config.mqtt.client_id, "cyncd");
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        // A password inside the URL is redacted in the effective configuration as well.
        let config = Config {
            mqtt: MqttConfig {
                url: Some("mqtt://user:SECRET@broker.lan:1883".into()),
                ..MqttConfig::default()
            },
            ..Config::default()
        };
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            shown.contains("mqtt://user:<redacted>@broker.lan:1883"),
            "{shown}"
        );
        for bad in [
            "[mqtt]\nurl = \"http://x\"",
            "[mqtt]\nbase_topic = \"cync/#\"",
            "[mqtt]\ndiscovery_prefix = \"\"",
            "[mqtt]\nclient_id = \"\"",
            "[mqtt]\npage_url = \"cyncd.lan:8080\"",
            "[mqtt]\npage_url = \"http://\"",
        ] {
            let config: Config = toml::from_str(bad).unwrap();
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_auth_codes_are_checked_and_never_shown() {
        let text = r#"
            refuse_unknown_bridges = true
            max_connections_per_ip = 8
            [device_auth]
            first_use = false
            codes = { "325d5317" = "1e07d8cdf4f53c50" }
            [[homes]]
            name = "cabin"
            bridges = ["325d5317"]
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert!(!config.device_auth.first_use);
        assert_eq!(config.device_auth.pins().len(), 1);
        assert_eq!(config.homes[0].bridges, ["325d5317"]);
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("1e07d8cdf4f53c50"), "{shown}");
        assert!(shown.contains(r#""325d5317":"<redacted>""#), "{shown}");
        for bad in [
            "[device_auth]\ncodes = { \"xyz\" = \"1e07d8cdf4f53c50\" }",
            "[device_auth]\ncodes = { \"325d5317\" = \"\" }",
            "refuse_unknown_bridges = true",
            "max_connections_per_ip = 0",
            "max_devices_per_home = 0",
            "hello_timeout_secs = 0",
        ] {
            let config: Config = toml::from_str(bad).unwrap();
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            listen = "0.0.0.0:24000"
            plain = true
            utc_offset = "-06:00"
            log_format = "json"
            [[homes]]
            name = "cabin"
            bridges = ["325d5317"]
            devices = [{ id = 5, name = "Porch", type = 68 }]
            groups = [{ id = 32769, name = "Outside", members = [5] }]
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 24000);
        assert_eq!(config.offset_minutes(), -360);
        assert_eq!(config.homes[0].devices[0].name.as_deref(), Some("Porch"));
    }

    #[test]
    fn typos_and_bad_values_are_explained() {
        let err = toml::from_str::<Config>("lisen = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let mut config = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_connections")
        );
        config.max_connections = 1;
        config.utc_offset = Some("six".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("utc_offset")
        );
        config.utc_offset = None;
        config.homes = vec![Home {
            name: "a".into(),
            bridges: vec!["xyz".into()],
            devices: vec![],
            groups: vec![],
        }];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("8 hex digits")
        );
    }

    #[test]
    fn http_options_are_checked() {
        let ok = Config::default();
        ok.validate().unwrap();
        for (bad, why) in [
            (
                Config {
                    http: "0.0.0.0:8080".parse().unwrap(),
                    http_no_auth: true,
                    ..Config::default()
                },
                "loopback",
            ),
            (
                Config {
                    http_max_connections: 0,
                    ..Config::default()
                },
                "http_max_connections",
            ),
            (
                Config {
                    http_header_timeout_secs: 0.0,
                    ..Config::default()
                },
                "http_header_timeout_secs",
            ),
            (
                Config {
                    http_idle_timeout_secs: f64::NAN,
                    ..Config::default()
                },
                "http_idle_timeout_secs",
            ),
            (
                Config {
                    http_hosts: vec!["evil/host".into()],
                    ..Config::default()
                },
                "http_hosts",
            ),
            (
                Config {
                    http_trusted_proxies: vec!["0.0.0.0".parse().unwrap()],
                    ..Config::default()
                },
                "http_trusted_proxies",
            ),
            (
                Config {
                    http_trusted_proxies: vec!["::".parse().unwrap()],
                    ..Config::default()
                },
                "http_trusted_proxies",
            ),
            (
                Config {
                    http_trusted_proxies: (1..=9u8).map(|n| IpAddr::from([10, 0, 0, n])).collect(),
                    ..Config::default()
                },
                "at most 8",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let loopback = Config {
            http: "[::1]:8080".parse().unwrap(),
            http_no_auth: true,
            ..Config::default()
        };
        loopback.validate().unwrap();
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("-06:00"), Some(-360));
        assert_eq!(parse_offset("+05:30"), Some(330));
        assert_eq!(parse_offset("0"), Some(0));
        assert_eq!(parse_offset("+25:00"), None);
    }

    #[test]
    fn broker_urls() {
        let b = Broker::parse("mqtt://localhost").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("localhost", 1883, false));
        let b = Broker::parse("mqtts://user:p%40ss:x@broker.lan:8884/").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("broker.lan", 8884, true));
        assert_eq!(b.username.as_deref(), Some("user"));
        assert_eq!(b.password.as_deref(), Some("p%40ss:x"));
        assert_eq!(b.to_string(), "mqtts://broker.lan:8884");
        assert!(!format!("{b:?}").contains("p%40ss"));
        let b = Broker::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 1884));
        assert_eq!(b.to_string(), "mqtt://[::1]:1884");
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://host:0",
            "mqtt://host:99999",
            "mqtt://host/topic",
            "mqtt://[::1",
            "mqtt://host:port",
        ] {
            assert!(Broker::parse(bad).is_err(), "{bad}");
        }
        let e = Broker::parse("ftp://me:secret@x").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn frame_escaping_is_one_of_three_policies() {
        let c: Config = toml::from_str("frame_escaping = \"stuff\"").unwrap_or_default();
        assert_eq!(c.frame_escaping(), cync_proto::FrameEscaping::Stuff);
        assert!(c.validate().is_ok());
        assert_eq!(
            Config::default().frame_escaping(),
            cync_proto::FrameEscaping::Avoid
        );
        let bad = Config {
            frame_escaping: "escape".into(),
            ..Config::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("avoid, stuff or raw"), "{e}");
    }
}
