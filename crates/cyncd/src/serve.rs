//! `cyncd serve`: the controller. Loads the configuration, prepares TLS, starts the device
//! server and the HTTP API, and shuts both down on SIGINT/SIGTERM.

use crate::commands::Context;
use crate::config::{Config, LogFormat};
use crate::devices::registry::Registry;
use crate::frontends::http::Api;
use crate::frontends::http::guard::{Auth, Guard, Token};
use crate::frontends::http::server::Limits;
use crate::metrics::Metrics;
use anyhow::Context as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Run the controller: accept Cync devices over TLS and serve the HTTP API.
///
/// With no options at all it generates its certificate in the state directory, listens for
/// devices on 0.0.0.0:23779 and serves HTTP on 127.0.0.1:8080. Every option can also be set in
/// the TOML file given with --config; options given here win.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Home Assistant add-on options (the Supervisor's /data/options.json), mapped onto the
    /// configuration; its folder becomes the state directory. Replaces --config (the options'
    /// config_file names a TOML file).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub options_json: Option<PathBuf>,
    /// Address for device connections [default: 0.0.0.0:23779].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address for the HTTP API and metrics [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Directory for the certificate and other state [default: $XDG_STATE_HOME/cyncd].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve devices over plain TCP, without TLS (lab tests, packet crafting).
    #[arg(long)]
    pub plain: bool,
    /// Your own certificate (PEM) instead of the generated one; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Your own private key (PEM); needs --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Most device connections at once [default: 20000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// The devices' heartbeat cadence in seconds [default: 20].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_secs: Option<u64>,
    /// Close a connection silent for this many heartbeats [default: 3].
    #[arg(long, value_name = "N")]
    pub silence_multiple: Option<u32>,
    /// Largest packet accepted from a device, in bytes [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub max_packet: Option<usize>,
    /// Close a connection whose writes stall this long, in seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Give up a TLS handshake after this long, in seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Do not ask bridges for their mesh (no 0xA3 or mesh-info request).
    #[arg(long)]
    pub no_discover_mesh: bool,
    /// Close a connection without an acceptable hello after this long, in seconds [default: 5].
    #[arg(long, value_name = "SECS")]
    pub hello_timeout_secs: Option<u64>,
    /// Most device connections from one address; loopback addresses are exempt unless
    /// --limit-loopback [default: 32].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Apply --max-connections-per-ip to loopback addresses too.
    #[arg(long)]
    pub limit_loopback: bool,
    /// Devices one bridge may speak for, configured devices not counted [default: 256].
    #[arg(long, value_name = "N")]
    pub max_devices_per_bridge: Option<usize>,
    /// Devices one home may hold, configured devices not counted [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_devices_per_home: Option<usize>,
    /// With homes configured, refuse bridges that no home lists.
    #[arg(long)]
    pub refuse_unknown_bridges: bool,
    /// Accept only auth codes pinned in the configuration: never pin a new bridge on first use.
    #[arg(long)]
    pub no_first_use: bool,
    /// How a 0x7D/0x7E byte inside a command frame is sent when cyncd cannot choose it away:
    /// avoid (nudge a colour by one, re-pick the seq, stuff only a target id), stuff or raw
    /// [default: avoid].
    #[arg(long, value_name = "POLICY")]
    pub frame_escaping: Option<String>,
    /// Runtime threads [default: 1, one event loop; more spread TLS handshakes over cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Offer encrypt-then-MAC in TLS (costs CPU with OpenSSL 3; see docs/protocol.md).
    #[arg(long)]
    pub tls_encrypt_then_mac: bool,
    /// UTC offset sent to devices, e.g. -06:00 [default: the system's].
    #[arg(long, value_name = "OFFSET", allow_hyphen_values = true)]
    pub utc_offset: Option<String>,
    /// MQTT broker for Home Assistant: mqtt://[user[:password]@]host[:port] or mqtts://…
    /// [default: MQTT off].
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// MQTT user name.
    #[arg(long, value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// File whose first line is the MQTT password (or set CYNCD_MQTT_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM CA certificate to trust for mqtts:// [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// MQTT client id [default: cyncd].
    #[arg(long, value_name = "ID")]
    pub mqtt_client_id: Option<String>,
    /// Topic prefix for states and commands [default: cync].
    #[arg(long, value_name = "TOPIC")]
    pub mqtt_base_topic: Option<String>,
    /// Home Assistant discovery prefix [default: homeassistant].
    #[arg(long, value_name = "TOPIC")]
    pub mqtt_discovery_prefix: Option<String>,
    /// The web page's address as people reach it, for each device's link in Home Assistant
    /// [default: http://<--http>/ when that is a definite address].
    #[arg(long, value_name = "URL")]
    pub mqtt_page_url: Option<String>,
    /// File whose first line is the HTTP API token [default: api-token in the state directory,
    /// generated at the first start]. API clients send it as `Authorization: Bearer <token>`;
    /// the web page asks for it once.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Serve the HTTP API without a token: refused unless --http is a loopback address.
    #[arg(long)]
    pub http_no_auth: bool,
    /// A host name the web page is reached by (besides IP addresses, localhost and this
    /// machine's name), e.g. cyncd.lan; repeat for more. Other names are refused (DNS
    /// rebinding).
    #[arg(long = "http-host", value_name = "NAME")]
    pub http_hosts: Vec<String>,
    /// The exact address of a reverse proxy that signs people in itself, e.g. Home Assistant's
    /// ingress gateway 172.30.32.2 (the add-on sets it); repeat for more. Its requests that
    /// carry X-Ingress-Path need no API token; everyone else's still do.
    #[arg(long = "http-trusted-proxy", value_name = "ADDR")]
    pub http_trusted_proxies: Vec<std::net::IpAddr>,
    /// Most HTTP connections at once [default: 256].
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Seconds for a request head to arrive (also the keep-alive idle time) [default: 10].
    #[arg(long, value_name = "SECS")]
    pub http_header_timeout_secs: Option<f64>,
    /// Seconds for a request body to arrive after its head [default: 30].
    #[arg(long, value_name = "SECS")]
    pub http_request_timeout_secs: Option<f64>,
    /// Close an HTTP connection on which nothing moved for this many seconds [default: 120].
    #[arg(long, value_name = "SECS")]
    pub http_idle_timeout_secs: Option<f64>,
    /// Base URL of the Cync account API for the page's setup screen
    /// [default: https://api.gelighting.com/v2/].
    #[arg(long, value_name = "URL")]
    pub account_api_base: Option<String>,
    /// Relay mode: also relay every device connection to the cloud at this IP:PORT, so the
    /// Cync app and voice assistants keep working (docs/relay.md) [default: off].
    #[arg(long, value_name = "IP:PORT")]
    pub relay: Option<String>,
    /// Which bridges are relayed: all, none, or bridge ids separated by commas [default: all].
    #[arg(long, value_name = "LIST")]
    pub relay_bridges: Option<String>,
    /// Accept only the upstream certificate with this SHA-256 fingerprint [default: off, no
    /// check, as the devices do].
    #[arg(long, value_name = "SHA256")]
    pub relay_verify: Option<String>,
    /// Capture every device connection's traffic into this directory (created mode 0700),
    /// one file per connection in the format `cyncd decode` reads, auth codes masked
    /// [default: no capture]. See docs/captures.md.
    #[arg(long, value_name = "DIR")]
    pub capture: Option<PathBuf>,
    /// Keep the devices' auth codes in the capture files (they are masked otherwise).
    #[arg(long)]
    pub capture_secrets: bool,
    /// End a capture file and start the connection's next one past this size, in bytes
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub capture_max_file_bytes: Option<u64>,
    /// Most bytes of capture files in the directory; the oldest are deleted past it
    /// [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub capture_max_total_bytes: Option<u64>,
    /// Most capture files in the directory; the oldest are deleted past it [default: 1000].
    #[arg(long, value_name = "N")]
    pub capture_max_files: Option<usize>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or filter, e.g. info, debug, cyncd=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl Args {
    /// The effective configuration: defaults, then the file (or the add-on's options), then
    /// flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        self.config_noting(&mut Vec::new())
    }

    /// As [`Args::config`], adding to `notes` where parts of it came from (logged at start).
    pub fn config_noting(&self, notes: &mut Vec<String>) -> anyhow::Result<Config> {
        let mut c = match (&self.options_json, &self.config) {
            (Some(path), _) => addon_config(path, notes)?,
            (None, Some(path)) => Config::load(path)?,
            (None, None) => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.http {
            c.http = v;
        }
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        c.plain |= self.plain;
        if self.cert.is_some() {
            c.cert = self.cert.clone();
            c.key = self.key.clone();
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = self.heartbeat_secs {
            c.heartbeat_secs = v;
        }
        if let Some(v) = self.silence_multiple {
            c.silence_multiple = v;
        }
        if let Some(v) = self.threads {
            c.threads = v;
        }
        c.tls_encrypt_then_mac |= self.tls_encrypt_then_mac;
        if let Some(v) = self.max_packet {
            c.max_packet = v;
        }
        if let Some(v) = self.write_timeout_secs {
            c.write_timeout_secs = v;
        }
        if let Some(v) = self.handshake_timeout_secs {
            c.handshake_timeout_secs = v;
        }
        if self.no_discover_mesh {
            c.discover_mesh = false;
        }
        if let Some(v) = self.hello_timeout_secs {
            c.hello_timeout_secs = v;
        }
        if let Some(v) = self.max_connections_per_ip {
            c.max_connections_per_ip = v;
        }
        c.limit_loopback |= self.limit_loopback;
        if let Some(v) = self.max_devices_per_bridge {
            c.max_devices_per_bridge = v;
        }
        if let Some(v) = self.max_devices_per_home {
            c.max_devices_per_home = v;
        }
        c.refuse_unknown_bridges |= self.refuse_unknown_bridges;
        if self.no_first_use {
            c.device_auth.first_use = false;
        }
        if let Some(v) = &self.frame_escaping {
            c.frame_escaping = v.clone();
        }
        if let Some(v) = &self.utc_offset {
            c.utc_offset = Some(v.clone());
        }
        if let Some(v) = &self.http_token_file {
            c.http_token_file = Some(v.clone());
        }
        c.http_no_auth |= self.http_no_auth;
        c.http_hosts.extend(self.http_hosts.iter().cloned());
        for ip in &self.http_trusted_proxies {
            if !c.http_trusted_proxies.contains(ip) {
                c.http_trusted_proxies.push(*ip);
            }
        }
        if let Some(v) = self.http_max_connections {
            c.http_max_connections = v;
        }
        if let Some(v) = self.http_header_timeout_secs {
            c.http_header_timeout_secs = v;
        }
        if let Some(v) = self.http_request_timeout_secs {
            c.http_request_timeout_secs = v;
        }
        if let Some(v) = self.http_idle_timeout_secs {
            c.http_idle_timeout_secs = v;
        }
        if let Some(v) = &self.mqtt {
            c.mqtt.url = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_username {
            c.mqtt.username = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_password_file {
            c.mqtt.password_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_ca_file {
            c.mqtt.ca_file = Some(v.clone());
        }
        if let Some(v) = &self.mqtt_client_id {
            c.mqtt.client_id = v.clone();
        }
        if let Some(v) = &self.mqtt_base_topic {
            c.mqtt.base_topic = v.clone();
        }
        if let Some(v) = &self.mqtt_discovery_prefix {
            c.mqtt.discovery_prefix = v.clone();
        }
        if let Some(v) = &self.mqtt_page_url {
            c.mqtt.page_url = Some(v.clone());
        }
        if let Some(v) = &self.account_api_base {
            c.account.api_base = v.clone();
        }
        if let Some(v) = &self.relay {
            c.relay.upstream = Some(v.clone());
        }
        if let Some(v) = &self.relay_bridges {
            c.relay.bridges = crate::config::RelayBridges::parse(v);
        }
        if let Some(v) = &self.relay_verify {
            c.relay.verify = v.clone();
        }
        if let Some(v) = &self.capture {
            c.capture.dir = Some(v.clone());
        }
        c.capture.secrets |= self.capture_secrets;
        if let Some(v) = self.capture_max_file_bytes {
            c.capture.max_file_bytes = v;
        }
        if let Some(v) = self.capture_max_total_bytes {
            c.capture.max_total_bytes = v;
        }
        if let Some(v) = self.capture_max_files {
            c.capture.max_files = v;
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

/// The configuration from the add-on's options file, with the broker from the Supervisor when
/// the options name none.
fn addon_config(path: &std::path::Path, notes: &mut Vec<String>) -> anyhow::Result<Config> {
    use crate::config::options::{Options, SUPERVISOR_TOKEN_ENV, SUPERVISOR_URL, SupervisorMqtt};
    let options = Options::load(path).map_err(anyhow::Error::msg)?;
    let state_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut supervisor = None;
    if options.wants_supervisor_mqtt() {
        match std::env::var(SUPERVISOR_TOKEN_ENV) {
            Ok(token) if !token.is_empty() => {
                let base = std::env::var("CYNCD_SUPERVISOR_URL")
                    .unwrap_or_else(|_| SUPERVISOR_URL.to_string());
                match SupervisorMqtt::fetch(&base, &token, Duration::from_secs(10)) {
                    Ok(s) => {
                        notes.push(format!(
                            "MQTT broker from the Supervisor's MQTT service: {}:{}",
                            s.host, s.port
                        ));
                        supervisor = Some(s);
                    }
                    Err(e) => notes.push(format!(
                        "no MQTT broker: {e}; install the Mosquitto broker add-on or set mqtt_url"
                    )),
                }
            }
            _ => notes.push(format!(
                "no MQTT broker: mqtt_url is empty and {SUPERVISOR_TOKEN_ENV} is not set (not run by the Supervisor)"
            )),
        }
    }
    let config = options
        .to_config(state_dir, supervisor.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    notes.push(format!("add-on options read from {}", path.display()));
    Ok(config)
}

/// A running controller.
#[derive(Debug)]
pub struct Running {
    /// Where devices connect.
    pub devices: SocketAddr,
    /// Where the HTTP API is.
    pub http: SocketAddr,
    /// The HTTP API token and its file; `None` in token-less mode (`http_no_auth`).
    pub http_token: Option<crate::frontends::http::guard::TokenFile>,
    /// Shared state.
    pub ctx: Arc<Context>,
    /// Cancel to shut down.
    pub cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, closes every session and waits up to [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.ctx.registry.cancel_all();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("shutdown: some connections did not close in time");
        }
        // Every record of the connections that closed is written before this returns.
        if let Some(captures) = self.ctx.captures.clone() {
            let close = tokio::task::spawn_blocking(move || captures.close());
            if tokio::time::timeout(SHUTDOWN_GRACE, close).await.is_err() {
                warn!("shutdown: the capture files were not all written in time");
            }
        }
    }
}

/// Starts the device server and the HTTP API (the caller has set up logging).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // The homes first: a homes file that cannot be read stops the start with what to do,
    // before anything listens.
    let (homes, notes) = crate::homes::Homes::load(&config)?;
    let tls = if config.plain {
        None
    } else {
        let files = crate::devices::tls::ensure_certificate(
            &config.state_dir,
            config.cert.as_deref(),
            config.key.as_deref(),
        )?;
        Some((
            crate::devices::tls::acceptor(&files, config.tls_encrypt_then_mac)?,
            files,
        ))
    };
    let devices = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening for devices on {}", config.listen))?;
    let http = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("serving HTTP on {}", config.http))?;
    let http_token = if config.http_no_auth {
        warn!(addr = %config.http, "the HTTP API is served without a token (http_no_auth)");
        None
    } else {
        let file = crate::frontends::http::guard::load_or_create(
            config.http_token_file.as_deref(),
            &config.state_dir,
        )?;
        if file.generated {
            info!(file = %file.path.display(), "generated the HTTP API token");
        }
        Some(file)
    };
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut prom);
    crate::devices::server::register_labels(&metrics);
    let mqtt_metrics = crate::frontends::mqtt::MqttMetrics::new(&mut prom);
    let http_metrics = crate::frontends::http::server::HttpMetrics::new(&mut prom);
    let capture_metrics = crate::devices::capture::CaptureMetrics::new(&mut prom);
    let captures = match crate::devices::capture::Settings::of(&config.capture) {
        Some(settings) => {
            let dir = settings.dir.clone();
            let captures = crate::devices::capture::Captures::start(settings, capture_metrics)
                .with_context(|| format!("capture directory {}", dir.display()))?;
            info!(dir = %dir.display(), secrets = captures.secrets(), "capturing every device connection");
            if captures.secrets() {
                warn!(dir = %dir.display(), "the capture files keep the devices' auth codes (capture secrets): treat them as passwords");
            }
            Some(captures)
        }
        None => None,
    };
    let cert_path = tls.as_ref().map(|(_, f)| f.cert.clone());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = Registry::with_limits(crate::devices::registry::Limits::of(&config));
    registry.set_named(&homes);
    let auth = Arc::new(
        crate::devices::auth::AuthStore::open(&config.state_dir, config.device_auth.first_use)
            .context("device auth pins")?,
    );
    crate::commands::pin_codes(&auth, &config, &homes);
    let canary = Arc::new(crate::commands::canary::Canary::new(
        config.canary.policy().map_err(anyhow::Error::msg)?,
        config.canary.slo().map_err(anyhow::Error::msg)?,
        crate::commands::canary::CanaryMetrics::new(&mut prom),
    ));
    restore_routing(&canary, &config);
    // Each transport hands the other the commands whose connection it does not own.
    let (legacy, legacy_inbox) = crate::commands::legacy::Legacy::channel();
    let commands = crate::commands::reliable::Commands::start(
        config.delivery(),
        registry.clone(),
        metrics.clone(),
        canary.clone(),
        legacy.clone(),
        cancel.clone(),
        &tracker,
    );
    legacy.start(
        legacy_inbox,
        Duration::from_millis(config.canary.legacy_timeout_ms),
        config.delivery(),
        config.canary.shadow_log_every,
        registry.clone(),
        commands.clone(),
        canary.clone(),
        crate::commands::legacy::LegacyMetrics::new(&mut prom, &metrics),
        cancel.clone(),
        &tracker,
    );
    for note in &notes {
        info!("{note}");
    }
    for (home, code, names) in homes.unknown_types() {
        registry.unknown_type(home, code, &names.join(", "));
    }
    let relay = crate::devices::relay::RelayClient::from_config(&config)
        .context("relay mode: the upstream TLS client")?;
    if let Some(r) = &relay {
        warn!(upstream = %r.addr, bridges = ?config.relay.bridges, "relay mode: device connections are also relayed to the cloud, which sees their traffic again");
    }
    let ctx = Arc::new(Context {
        config,
        homes: crate::homes::HomesCell::new(homes),
        registry,
        metrics,
        tls: tls.map(|(a, _)| a),
        commands,
        legacy,
        canary,
        offset: crate::config::OffsetCache::default(),
        auth: auth.clone(),
        log_limits: crate::logging::LogLimits::default(),
        relay,
        captures,
    });
    tracker.spawn(crate::devices::auth::save_pins(auth, cancel.clone()));
    // Ends the registry's holds and fresh waits when they are due.
    tracker.spawn(ctx.registry.clone().run_timers(cancel.clone()));
    crate::devices::effects::load(&ctx.config.state_dir, &ctx.registry);
    tracker.spawn(crate::devices::effects::keep(
        ctx.registry.clone(),
        ctx.config.state_dir.clone(),
        cancel.clone(),
    ));
    tracker.spawn(crate::commands::canary::evaluate_slos(
        ctx.clone(),
        cancel.clone(),
    ));
    let running = Running {
        devices: devices.local_addr()?,
        http: http.local_addr()?,
        http_token: http_token.clone(),
        ctx: ctx.clone(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    };
    info!(config = %serde_json::to_string(&ctx.config).unwrap_or_default(), "effective configuration");
    match &cert_path {
        Some(cert) => {
            info!(addr = %running.devices, cert = %cert.display(), "listening for devices (TLS)")
        }
        None => info!(addr = %running.devices, "listening for devices (plain TCP, no TLS)"),
    }
    info!(addr = %running.http, "serving the web page and the HTTP API");
    if !ctx.config.http_trusted_proxies.is_empty() {
        let proxies: Vec<String> = ctx
            .config
            .http_trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        info!(
            proxies = %proxies.join(", "),
            "HTTP requests from these proxies with X-Ingress-Path are signed in by the proxy (http_trusted_proxies)"
        );
    }
    tracker.spawn(crate::devices::server::serve(
        devices,
        ctx.clone(),
        cancel.clone(),
        tracker.clone(),
    ));
    crate::frontends::mqtt::start(ctx.clone(), mqtt_metrics, cancel.clone(), &tracker)?;
    let auth = match &http_token {
        Some(file) => Auth::Token(Token::new(&file.token)),
        None => Auth::Open,
    };
    let limits = http_limits(&ctx.config);
    let api = Api {
        guard: Guard::new(
            auth,
            &ctx.config.http_hosts,
            Duration::from_secs_f64(ctx.config.http_request_timeout_secs),
        )
        .trusting(&ctx.config.http_trusted_proxies),
        ctx,
        metrics: Arc::new(prom),
    };
    tracker.spawn(crate::frontends::http::server::serve(
        http,
        crate::frontends::http::router(api),
        limits,
        http_metrics,
        cancel.clone(),
        tracker.clone(),
    ));
    Ok(running)
}

/// The HTTP server's bounds. Its connection cap stays within a quarter of the open-file limit,
/// so that however the HTTP port is flooded, the rest stays for device connections.
fn http_limits(config: &Config) -> Limits {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let share = usize::try_from(files / 4).unwrap_or(usize::MAX).max(1);
    if share < config.http_max_connections {
        warn!(
            http_max_connections = config.http_max_connections,
            open_file_limit = files,
            used = share,
            "HTTP connections capped lower than configured, to leave file descriptors for devices"
        );
    }
    Limits {
        max_connections: config.http_max_connections.min(share),
        header_timeout: Duration::from_secs_f64(config.http_header_timeout_secs),
        idle_timeout: Duration::from_secs_f64(config.http_idle_timeout_secs),
    }
}

/// Starts the canary from the routing kept in the state directory, when the configuration's
/// routing is the one it was kept for (see [`crate::commands::routing_file`]).
fn restore_routing(canary: &crate::commands::canary::Canary, config: &Config) {
    use crate::commands::routing_file::{Restore, Routing, RoutingFile};
    let file = RoutingFile::new(&config.state_dir, Routing::of_config(&config.canary));
    let path = file.path().display().to_string();
    match canary.persist(file) {
        Restore::Nothing => {}
        Restore::Saved(policy, latched) => info!(
            file = %path,
            mode = policy.mode.name(),
            percent = policy.percent,
            kill = policy.kill,
            latched = latched.is_some(),
            "routing restored from the last run (edit [canary] in the configuration to override it)"
        ),
        Restore::ConfigChanged => info!(
            file = %path,
            "the configuration's [canary] routing changed since the last run: it applies, and any rollback latch is lifted"
        ),
        Restore::Unreadable(why) => warn!(
            file = %path,
            error = %why,
            "the saved routing could not be read: the configuration's routing applies"
        ),
    }
}

/// Runs `cyncd serve` until SIGINT or SIGTERM.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    let config = args.config_noting(&mut notes)?;
    crate::logging::init(config.log_format, &config.log_level)?;
    for note in notes {
        info!("{note}");
    }
    raise_file_limit(
        config
            .max_connections
            .saturating_add(config.http_max_connections),
    );
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        let plain = config.plain;
        let running = start(config).await?;
        let token = match &running.http_token {
            Some(file) => format!(
                "API token in {} (the page asks for it once; API clients send Authorization: Bearer <token>)",
                file.path.display()
            ),
            None => "no API token (loopback only)".to_string(),
        };
        // One write, errors ignored: whoever started us may stop reading after the first line.
        let _ = writeln!(
            std::io::stdout(),
            "cyncd: devices on {} ({}), HTTP on http://{} (/api/devices, /api/connections, /metrics)\ncyncd: web page http://{}/ ; {token}",
            running.devices,
            if plain { "plain TCP" } else { "TLS" },
            running.http,
            running.http,
        );
        let mut routing = running.ctx.config.canary.clone();
        while signals.recv().await == Signal::Reload {
            reload(args, &running.ctx, &mut routing);
        }
        info!("shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })
}

/// Each connection is a file descriptor: raise the soft limit towards the hard one so the
/// connection caps (devices and HTTP), not the OS default of 1,024, are what limit them.
fn raise_file_limit(max_connections: usize) {
    let want = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want.saturating_sub(256) => warn!(
            limit = got,
            max_connections,
            "the open-file limit is below the connection cap; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// SIGHUP: re-reads the homes file (a `cyncd account export` or `import` ran), and the
/// configuration file, applying what changed in its `[canary]` routing (mode, percent, kill)
/// since the file was last read, without a restart; other keys take effect at the next start.
/// An unchanged file changes nothing — in particular it does not lift a rollback latch
/// (editing the percentage or mode does, as a person's decision). The routing file in the state
/// directory then records the new configuration routing, so the next start keeps what is in
/// force now.
fn reload(args: &Args, ctx: &Context, last: &mut crate::config::CanaryConfig) {
    match ctx.reload_homes() {
        Ok(notes) => {
            for note in notes {
                info!("SIGHUP: {note}");
            }
        }
        Err(e) => warn!(error = %e, "SIGHUP: homes file not reloaded; the homes in use are kept"),
    }
    let loaded = match args.config() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "SIGHUP: configuration not reloaded");
            return;
        }
    };
    let c = loaded.canary;
    let update = routing_changes(last, &c);
    *last = c;
    if update == crate::commands::canary::Update::default() {
        info!("SIGHUP: routing unchanged in the configuration file");
        return;
    }
    match crate::commands::canary::apply_routing(ctx, &update) {
        Ok((policy, _)) => {
            ctx.canary
                .reloaded(crate::commands::routing_file::Routing::of_config(last));
            info!(
                mode = policy.mode.name(),
                percent = policy.percent,
                kill = policy.kill,
                "SIGHUP: routing reloaded (other settings apply at the next start)"
            )
        }
        Err(e) => warn!(error = %e, "SIGHUP: routing not reloaded"),
    }
}

/// The routing fields that differ between two versions of the `[canary]` section.
fn routing_changes(
    old: &crate::config::CanaryConfig,
    new: &crate::config::CanaryConfig,
) -> crate::commands::canary::Update {
    crate::commands::canary::Update {
        mode: (new.mode != old.mode).then(|| new.mode.clone()),
        percent: (new.percent != old.percent).then_some(new.percent),
        kill: (new.kill != old.kill).then_some(new.kill),
        drain: false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// SIGINT, SIGTERM and SIGHUP, listened for from creation on: installed before the server says
/// it is ready, so a signal sent right after that line is never lost to the default action.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::canary::{Canary, CanaryMetrics, Update};
    use crate::config::CanaryConfig;

    #[test]
    fn the_capture_flags_set_the_capture_section() {
        let args = Args {
            capture: Some(PathBuf::from("/tmp/caps")),
            capture_secrets: true,
            capture_max_file_bytes: Some(2048),
            capture_max_total_bytes: Some(8192),
            capture_max_files: Some(7),
            ..Args::default()
        };
        let c = args.config().map(|c| c.capture).map_err(|e| e.to_string());
        assert_eq!(
            c,
            Ok(crate::config::CaptureConfig {
                dir: Some(PathBuf::from("/tmp/caps")),
                secrets: true,
                max_file_bytes: 2048,
                max_total_bytes: 8192,
                max_files: 7,
            })
        );
        // A directory bound below two files is refused with why.
        let small = Args {
            capture_max_total_bytes: Some(3000),
            ..args
        };
        let e = small.config().map(|_| ()).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("max_total_bytes must be at least twice")),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_file_keeps_a_rollback_latch_and_an_edited_one_lifts_it() {
        let file = CanaryConfig {
            mode: "canary".into(),
            percent: 10.0,
            ..CanaryConfig::default()
        };
        assert_eq!(routing_changes(&file, &file), Update::default());
        let mut slo = file.slo().unwrap_or_default();
        slo.min_events = 5;
        let canary = Canary::new(
            file.policy().unwrap_or(cync_proto::canary::Policy {
                mode: cync_proto::canary::Mode::Canary,
                percent: 10.0,
                kill: false,
            }),
            slo,
            CanaryMetrics::default(),
        );
        for _ in 0..20 {
            canary.command(
                cync_proto::canary::Transport::Reliable,
                cync_proto::canary::CommandSample {
                    applied: false,
                    superseded: false,
                    queue_full: false,
                    latency: Duration::ZERO,
                },
            );
        }
        assert!(canary.evaluate().is_some(), "rolled back");
        // SIGHUP with the same file: nothing to apply, the latch stays.
        assert_eq!(routing_changes(&file, &file), Update::default());
        assert!(canary.latched().is_some());
        // The percentage edited in the file: a person's decision, the latch lifts.
        let edited = CanaryConfig {
            percent: 5.0,
            ..file.clone()
        };
        let update = routing_changes(&file, &edited);
        assert_eq!(update.percent, Some(5.0));
        assert!(update.mode.is_none() && update.kill.is_none());
        assert!(canary.update(&update).is_ok());
        assert!(canary.latched().is_none());
    }
}
