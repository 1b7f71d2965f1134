//! MQTT for Home Assistant: discovery, retained states, availability and commands.
//!
//! Off until a broker URL is configured. Two tasks:
//!
//! - the *link* polls rumqttc's event loop, reconnects with its own capped exponential backoff
//!   (0.5 s doubling to 30 s, full jitter), reports "connected" through a `watch` (never lost,
//!   never blocks) and forwards incoming messages through a bounded queue
//!   ([`INCOMING_QUEUE`]; a full queue drops the message and counts it in
//!   `cyncd_mqtt_dropped_total`). Incoming packets up to [`MAX_INCOMING_PACKET`] are read
//!   (rumqttc drops the whole session on a larger one, so the limit is far above any sane
//!   message); a message over [`MAX_COMMAND_PAYLOAD`] is dropped there, logged by its size and
//!   counted in `cyncd_mqtt_oversize_total`, and never queued;
//! - the *bridge* turns registry changes into retained messages and commands into the command
//!   service. On every (re)connect (the broker may have restarted empty) it re-publishes
//!   everything. Home Assistant's birth messages are debounced ([`BIRTH_DEBOUNCE`]: a burst is
//!   one re-publication) and re-publish states and availability only — discovery is retained
//!   by the broker and was not lost while this session stayed up. Otherwise a topic is
//!   published only when its payload changed (it keeps a 64-bit hash per topic, one per entity
//!   topic, so the map is bounded by the device table).
//!   Registry changes are coalesced: at most one scan per [`SCAN_INTERVAL`], and never more
//!   often than [`SCAN_DUTY`] times the last scan's own duration, so a large home's scans
//!   cannot take more than about 5% of the event loop that also serves the devices.
//!
//! Commands (`<base>/<entity>/set`) are checked against the device type and submitted with
//! their outcome awaited; at most [`MAX_COMMANDS_IN_FLIGHT`] at once (more are refused, logged
//! and counted as `busy`). An applied command's new state is in the registry by its outcome
//! (for a group, every member's that can carry it out: [`crate::devices::registry`]) and
//! published by the next scan (outcomes that are ready together in one scan); any other outcome
//! re-publishes the true state so Home Assistant does not show what did not happen.
//!
//! Entities are announced for the devices the homes (the configuration over the homes file)
//! name or a bridge's mesh listing named ([`crate::devices::registry::Registry::listed`]); a report from an id no bridge lists
//! creates nothing in Home Assistant. Every topic ever published is remembered in
//! `mqtt-entities.json` in the state directory with the home and the device, group or bridge
//! it belongs to (at most [`MAX_REMEMBERED_TOPICS`]; further ones are not remembered, with a
//! warning; written whole through a temporary file and a rename, mode 0600), so stale entities
//! are removed (empty retained payloads): at once, a discovery topic its owner no longer has
//! (an entity that changed shape: cleared before the new one is published, so each unique id
//! is retained under one discovery topic); at the next start, those only the configuration
//! wanted and it no longer names, and those of a home that no longer exists (and no scan
//! wants); at any time, any not wanted for [`STALE_AFTER`]. A device whose type is not known
//! (yet) keeps the entities it had rather than becoming a placeholder light. Payloads quoted in
//! logs are cut to [`LOG_PREVIEW`] bytes, with their length.

pub mod ha;

use crate::commands::Context;
use crate::commands::control;
use crate::config::Broker;
use crate::config::DEFAULT_HOME;
use crate::devices::registry::DeviceView;
use cync_proto::catalog::{DeviceType, Kind};
use ha::{Shape, Topics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Transport};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Incoming messages waiting for the bridge task.
pub const INCOMING_QUEUE: usize = 256;
/// Commands from MQTT awaiting their outcome at once.
pub const MAX_COMMANDS_IN_FLIGHT: usize = 64;
/// Shortest time between two registry scans.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Scans wait at least this many times as long as the last scan took.
pub const SCAN_DUTY: u32 = 20;
/// Most Wi-Fi bridges remembered after they disconnect (oldest forgotten first).
pub const MAX_BRIDGES_REMEMBERED: usize = 4096;
/// Requests queued towards rumqttc's event loop.
const REQUEST_QUEUE: usize = 1024;
/// First and last reconnect delays.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// How long shutdown waits for `offline` to reach the broker.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Largest incoming MQTT packet read. rumqttc ends the session on a larger one (its last will
/// would then say `offline`), so this is far above any command; [`MAX_COMMAND_PAYLOAD`] is the
/// real limit.
pub const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024;
/// Largest incoming message handled; larger ones are dropped (commands are under 200 bytes).
pub const MAX_COMMAND_PAYLOAD: usize = 4096;
/// Home Assistant's birth messages within this window after the first cause one re-publication.
pub const BIRTH_DEBOUNCE: Duration = Duration::from_secs(2);
/// Most retained topics remembered in `mqtt-entities.json`.
pub const MAX_REMEMBERED_TOPICS: usize = 100_000;
/// A remembered entity not wanted for this long is removed from Home Assistant.
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 86_400);
/// How often remembered entities are written out (when changed) and swept for stale ones.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// Bytes of a payload or topic quoted in a log line.
pub const LOG_PREVIEW: usize = 64;
/// Environment variable with the broker password.
pub const PASSWORD_ENV: &str = "CYNCD_MQTT_PASSWORD";

/// MQTT metrics.
#[derive(Debug, Clone)]
pub struct MqttMetrics {
    /// `cyncd_mqtt_connected`: 1 while connected to the broker.
    pub connected: Gauge,
    /// `cyncd_mqtt_connects_total`: successful connections (the first and every reconnect).
    pub connects: Counter,
    /// `cyncd_mqtt_connect_failures_total`.
    pub connect_failures: Counter,
    /// `cyncd_mqtt_published_total`.
    pub published: Counter,
    /// `cyncd_mqtt_dropped_total`: incoming messages dropped by a full queue.
    pub dropped: Counter,
    /// `cyncd_mqtt_oversize_total`: incoming messages over [`MAX_COMMAND_PAYLOAD`], dropped.
    pub oversize: Counter,
    /// `cyncd_mqtt_commands_total{outcome}`: `applied`, `not_applied`, `invalid`, `busy`,
    /// `unknown_entity`.
    pub commands: Family<[(&'static str, &'static str); 1], Counter>,
    /// `cyncd_mqtt_scan_seconds`: one pass over the registry (states compared, changes sent).
    pub scan_seconds: Histogram,
    /// `cyncd_mqtt_ha_births_total`: Home Assistant's `online` on its status topic (it sends one
    /// when it or its MQTT integration starts); `cyncd doctor` reads it.
    pub ha_births: Counter,
}

impl Default for MqttMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            connects: Counter::default(),
            connect_failures: Counter::default(),
            published: Counter::default(),
            dropped: Counter::default(),
            oversize: Counter::default(),
            commands: Family::default(),
            scan_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 14)),
            ha_births: Counter::default(),
        }
    }
}

impl MqttMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("cyncd_mqtt");
        r.register(
            "connected",
            "1 while connected to the MQTT broker",
            m.connected.clone(),
        );
        r.register(
            "connects",
            "Connections to the MQTT broker",
            m.connects.clone(),
        );
        r.register(
            "connect_failures",
            "Failed MQTT connection attempts",
            m.connect_failures.clone(),
        );
        r.register("published", "MQTT messages published", m.published.clone());
        r.register(
            "dropped",
            "Incoming MQTT messages dropped by a full queue",
            m.dropped.clone(),
        );
        r.register(
            "oversize",
            "Incoming MQTT messages dropped for their size",
            m.oversize.clone(),
        );
        r.register(
            "commands",
            "Commands received over MQTT, by outcome",
            m.commands.clone(),
        );
        r.register(
            "ha_births",
            "Home Assistant birth messages seen on its status topic",
            m.ha_births.clone(),
        );
        r.register(
            "scan_seconds",
            "One pass of the registry for MQTT",
            m.scan_seconds.clone(),
        );
        for outcome in [
            "applied",
            "not_applied",
            "invalid",
            "busy",
            "unknown_entity",
        ] {
            let _ = m.commands.get_or_create(&[("outcome", outcome)]);
        }
        m
    }

    fn command(&self, outcome: &'static str) {
        self.commands.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// The broker password: the password file, else the environment, else the configuration,
/// else the URL's.
fn password(config: &crate::config::MqttConfig, broker: &Broker) -> anyhow::Result<Option<String>> {
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("reading the MQTT password file {}: {e}", path.display())
        })?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Some(p));
    }
    Ok(config.password.clone().or_else(|| broker.password.clone()))
}

fn options(ctx: &Context, broker: &Broker) -> anyhow::Result<MqttOptions> {
    let mut o = broker_options(&ctx.config.mqtt, broker, &ctx.config.mqtt.client_id)?;
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_INCOMING_PACKET, 256 * 1024);
    o.set_request_channel_capacity(REQUEST_QUEUE);
    let topics = topics(ctx);
    o.set_last_will(LastWill::new(
        topics.availability(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// The options to reach `broker` as `client_id` with the configured credentials and TLS (also
/// used by `cyncd doctor` to check them).
pub fn broker_options(
    config: &crate::config::MqttConfig,
    broker: &Broker,
    client_id: &str,
) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    let user = config.username.clone().or_else(|| broker.username.clone());
    let pass = password(config, broker)?;
    match (user, pass) {
        (Some(u), p) => {
            o.set_credentials(u, p.unwrap_or_default());
        }
        (None, Some(_)) => anyhow::bail!("an MQTT password needs a user name"),
        (None, None) => {}
    }
    if broker.tls {
        let mut b = native_tls::TlsConnector::builder();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("reading the MQTT CA file {}: {e}", ca.display()))?;
            let cert = native_tls::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("the MQTT CA file {}: {e}", ca.display()))?;
            b.add_root_certificate(cert);
        }
        let connector = b.build()?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::NativeConnector(connector),
        ));
    }
    Ok(o)
}

/// The web page's address as Home Assistant links to it (`configuration_url`): `[mqtt]
/// page_url`, else `http://<http address>/` when that is a definite address (the first of
/// `http_hosts` instead of a wildcard one); none when neither says where people reach it.
pub fn page_url(config: &crate::config::Config) -> Option<String> {
    if let Some(url) = config.mqtt.page_url.as_deref().filter(|u| !u.is_empty()) {
        return Some(if url.ends_with('/') {
            url.to_string()
        } else {
            format!("{url}/")
        });
    }
    let port = config.http.port();
    if port == 0 {
        return None;
    }
    let host = if config.http.ip().is_unspecified() {
        config.http_hosts.first()?.clone()
    } else {
        match config.http.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        }
    };
    Some(format!("http://{host}:{port}/"))
}

fn topics(ctx: &Context) -> Topics {
    Topics {
        base: ctx.config.mqtt.base_topic.clone(),
        prefix: ctx.config.mqtt.discovery_prefix.clone(),
    }
}

/// Starts MQTT when a broker is configured. Returns `None` when MQTT is off.
pub fn start(
    ctx: Arc<Context>,
    metrics: MqttMetrics,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Option<Broker>> {
    let Some(url) = ctx.config.mqtt.url.clone() else {
        return Ok(None);
    };
    let broker = Broker::parse(&url).map_err(|e| anyhow::anyhow!(e))?;
    let options = options(&ctx, &broker)?;
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (link_tx, link_rx) = watch::channel(Link::Down);
    let (msg_tx, msg_rx) = mpsc::channel(INCOMING_QUEUE);
    let stop_link = CancellationToken::new();
    let link_done = tracker.spawn(link(
        eventloop,
        broker.clone(),
        link_tx,
        msg_tx,
        metrics.clone(),
        stop_link.clone(),
    ));
    let state_file = ctx.config.state_dir.join("mqtt-entities.json");
    let page = page_url(&ctx.config);
    let bridge = Bridge {
        topics: topics(&ctx),
        ctx,
        client,
        metrics,
        published: HashMap::new(),
        entities: HashMap::new(),
        bridges_seen: BTreeMap::new(),
        warned: HashSet::new(),
        connected: false,
        cleaned: false,
        memory: Memory::load(state_file),
        scanned: HashMap::new(),
        page,
        birth: None,
        births: 0,
        slots: Arc::new(Semaphore::new(MAX_COMMANDS_IN_FLIGHT)),
    };
    info!(broker = %broker, "MQTT enabled");
    tracker.spawn(async move {
        bridge.run(link_rx, msg_rx, cancel).await;
        // Give the link a moment to deliver `offline` and the DISCONNECT, then stop it.
        if tokio::time::timeout(SHUTDOWN_FLUSH, link_done)
            .await
            .is_err()
        {
            debug!("MQTT: the broker did not take the goodbye in time");
        }
        stop_link.cancel();
    });
    Ok(Some(broker))
}

/// The link's state, as the bridge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    /// Connected; the number counts connections so every reconnect is seen.
    Up(u64),
}

async fn link(
    mut eventloop: EventLoop,
    broker: Broker,
    link: watch::Sender<Link>,
    messages: mpsc::Sender<rumqttc::Publish>,
    metrics: MqttMetrics,
    stop: CancellationToken,
) {
    let mut delay = BACKOFF.0;
    let mut connects = 0u64;
    let mut failures = 0u64;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connects += 1;
                failures = 0;
                delay = BACKOFF.0;
                metrics.connects.inc();
                metrics.connected.set(1);
                info!(broker = %broker, "MQTT connected");
                link.send_replace(Link::Up(connects));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.payload.len() > MAX_COMMAND_PAYLOAD {
                    metrics.oversize.inc();
                    warn!(topic = %preview(p.topic.as_bytes()), bytes = p.payload.len(), "MQTT message dropped: larger than any command");
                } else if messages.try_send(p).is_err() {
                    metrics.dropped.inc();
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                metrics.connected.set(0);
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                metrics.connected.set(0);
                metrics.connect_failures.inc();
                link.send_replace(Link::Down);
                failures += 1;
                let wait = Duration::from_millis(fastrand::u64(
                    (delay.as_millis() as u64 / 2)..=(delay.as_millis() as u64),
                ));
                // The first failure in a row is a warning; the rest repeat at debug level.
                if failures == 1 {
                    warn!(broker = %broker, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection lost or refused; retrying");
                } else {
                    debug!(broker = %broker, error = %e, failures, retry_in_ms = wait.as_millis() as u64, "MQTT still unreachable");
                }
                delay = (delay * 2).min(BACKOFF.1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// What an object id commands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entity {
    Device { home: String, mesh: u16 },
    Outlet { home: String, mesh: u16, outlet: u8 },
    Group { home: String, gid: u16 },
}

/// A Wi-Fi bridge as Home Assistant is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenBridge {
    connected: bool,
    firmware: Option<String>,
    devices: usize,
    /// Its own mesh device (home, mesh id), once known.
    own: Option<(String, u16)>,
}

struct Bridge {
    ctx: Arc<Context>,
    client: AsyncClient,
    topics: Topics,
    metrics: MqttMetrics,
    /// Topic → hash of the payload last published.
    published: HashMap<String, u64>,
    /// Object id → what its `/set` commands.
    entities: HashMap<String, Entity>,
    bridges_seen: BTreeMap<String, SeenBridge>,
    /// Devices already warned about (unknown type).
    warned: HashSet<String>,
    connected: bool,
    cleaned: bool,
    /// Every topic ever published, in the state directory.
    memory: Memory,
    /// Topics the last scan wanted, and why.
    scanned: HashMap<String, Wanted>,
    /// The web page's address for `configuration_url`, when known.
    page: Option<String>,
    /// When the pending re-publication for Home Assistant's birth is due.
    birth: Option<Instant>,
    /// Birth messages folded into it.
    births: u64,
    slots: Arc<Semaphore>,
}

/// A command's end, reported back to the bridge task.
struct Done {
    object: String,
    entity: Entity,
    applied: bool,
}

/// At most [`LOG_PREVIEW`] bytes of `bytes` for a log line, with the length when cut.
pub fn preview(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(bytes.get(..LOG_PREVIEW).unwrap_or(bytes));
    if bytes.len() > LOG_PREVIEW {
        format!("{head}… ({} bytes)", bytes.len())
    } else {
        head.into_owned()
    }
}

fn hash(payload: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

impl Bridge {
    async fn run(
        mut self,
        mut link: watch::Receiver<Link>,
        mut messages: mpsc::Receiver<rumqttc::Publish>,
        cancel: CancellationToken,
    ) {
        let mut changes = self.ctx.registry.watch();
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(MAX_COMMANDS_IN_FLIGHT);
        let mut next_scan: Option<Instant> = None;
        let mut last_scan = Instant::now();
        let mut gap = SCAN_INTERVAL;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let scan_at = next_scan.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let birth_at = self
                .birth
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(birth_at), if self.birth.is_some() => {
                    self.birth = None;
                    self.on_birth().await;
                }
                _ = housekeeping.tick() => {
                    if self.connected && self.cleaned {
                        self.sweep(false).await;
                    }
                    self.memory.save();
                }
                changed = link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = *link.borrow_and_update();
                    match state {
                        Link::Up(_) => self.on_connect().await,
                        Link::Down => self.connected = false,
                    }
                }
                Some(message) = messages.recv() => {
                    self.on_message(message, &done_tx).await;
                }
                Some(done) = done_rx.recv() => {
                    // Published at the next turn, with any other outcome that is ready by then
                    // (a burst of commands is one scan, not one each).
                    self.on_done(done);
                    next_scan = Some(Instant::now());
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if next_scan.is_none() {
                        next_scan = Some((last_scan + gap).max(Instant::now()));
                    }
                }
                () = tokio::time::sleep_until(scan_at), if next_scan.is_some() => {
                    next_scan = None;
                    gap = self.timed_scan().await;
                    last_scan = Instant::now();
                }
            }
        }
        if self.connected {
            let _ = self
                .client
                .publish(
                    self.topics.availability(),
                    QoS::AtLeastOnce,
                    true,
                    "offline",
                )
                .await;
            let _ = self.client.disconnect().await;
        }
        self.note_scanned(unix_now());
        self.memory.save();
    }

    async fn on_connect(&mut self) {
        self.connected = true;
        // Everything is published again below; a pending birth re-publication is part of it.
        self.birth = None;
        let subscribed = self
            .client
            .subscribe_many([
                rumqttc::SubscribeFilter::new(self.topics.set_filter(), QoS::AtLeastOnce),
                rumqttc::SubscribeFilter::new(self.topics.ha_status(), QoS::AtLeastOnce),
            ])
            .await;
        if let Err(e) = subscribed {
            warn!(error = %e, "MQTT subscribe failed");
        }
        self.put(self.topics.availability(), b"online".to_vec(), true)
            .await;
        if !self.cleaned {
            self.cleaned = true;
            self.sweep(true).await;
        }
        self.resync().await;
    }

    /// Home Assistant came online (after [`BIRTH_DEBOUNCE`]): states and availability again.
    /// Discovery is not: the broker retains it, and a broker that lost it dropped this session
    /// too, whose reconnect publishes everything.
    async fn on_birth(&mut self) {
        let births = std::mem::take(&mut self.births);
        self.put(self.topics.availability(), b"online".to_vec(), true)
            .await;
        let prefix = format!("{}/", self.topics.prefix);
        // Attributes are not needed to show a state: the broker keeps them.
        self.published
            .retain(|topic, _| topic.starts_with(&prefix) || topic.ends_with("/attributes"));
        let before = self.metrics.published.get();
        self.scan().await;
        info!(
            births,
            published = self.metrics.published.get() - before,
            "Home Assistant came online: states and availability published again"
        );
    }

    /// Forgets what was published and publishes everything again.
    async fn resync(&mut self) {
        self.published.clear();
        self.scan().await;
        info!(
            topics = self.published.len(),
            "MQTT: discovery, states and availability published"
        );
    }

    async fn on_message(&mut self, message: rumqttc::Publish, done: &mpsc::Sender<Done>) {
        if message.topic == self.topics.ha_status() {
            if message.payload.as_ref() == b"online" {
                self.births += 1;
                self.metrics.ha_births.inc();
                if self.birth.is_none() {
                    self.birth = Some(Instant::now() + BIRTH_DEBOUNCE);
                }
            }
            return;
        }
        let Some(object) = self.topics.object_of_set(&message.topic) else {
            return;
        };
        let object = object.to_string();
        let Some(entity) = self.entities.get(&object).cloned() else {
            warn!(topic = %preview(message.topic.as_bytes()), "MQTT command for an unknown entity");
            self.metrics.command("unknown_entity");
            return;
        };
        let resolved = match &entity {
            Entity::Device { home, mesh } => control::device_in(&self.ctx, home, *mesh),
            Entity::Outlet { home, mesh, outlet } => {
                match control::outlet_in(&self.ctx, home, *mesh, *outlet) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(topic = %message.topic, error = %e, "MQTT command refused");
                        self.metrics.command("invalid");
                        self.republish(&object).await;
                        return;
                    }
                }
            }
            Entity::Group { home, gid } => control::group_in(&self.ctx, home, *gid),
        };
        let shape = self.shape_of(&entity, &resolved);
        let steps = ha::parse_command(&message.payload, shape, resolved.on).and_then(|steps| {
            control::check(&resolved, &steps)
                .map(|()| steps)
                .map_err(|e| e.to_string())
        });
        let steps = match steps {
            Ok(s) => s,
            Err(e) => {
                warn!(topic = %message.topic, payload = %preview(&message.payload), error = %preview(e.as_bytes()), "MQTT command refused");
                self.metrics.command("invalid");
                self.republish(&object).await;
                return;
            }
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            warn!(topic = %message.topic, "MQTT command refused: {MAX_COMMANDS_IN_FLIGHT} commands already in flight");
            self.metrics.command("busy");
            self.republish(&object).await;
            return;
        };
        let ctx = self.ctx.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let outcome = control::submit(&ctx, &resolved, steps, true).await;
            let (applied, summary) = match &outcome {
                control::Submitted::Done(list) => (
                    !list.is_empty() && list.iter().all(|(_, c)| c.outcome == "applied"),
                    list.iter()
                        .map(|(a, c)| format!("{a}={} ({})", c.outcome, c.command_id))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                control::Submitted::Accepted(_) => (false, String::new()),
            };
            if applied {
                debug!(entity = %object, commands = %summary, "MQTT command applied");
            } else {
                warn!(entity = %object, commands = %summary, "MQTT command not applied");
            }
            let _ = done
                .send(Done {
                    object,
                    entity,
                    applied,
                })
                .await;
            drop(slot);
        });
    }

    fn on_done(&mut self, done: Done) {
        if !done.applied {
            self.metrics.command("not_applied");
            // The next scan publishes the true state even when it did not change.
            self.published.remove(&self.topics.state(&done.object));
            return;
        }
        self.metrics.command("applied");
        if let Entity::Group { .. } = done.entity {
            self.published.remove(&self.topics.state(&done.object));
        }
    }

    /// Publishes an entity's true state again, even when unchanged.
    async fn republish(&mut self, object: &str) {
        self.published.remove(&self.topics.state(object));
        self.scan().await;
    }

    fn shape_of(&self, entity: &Entity, resolved: &control::Resolved) -> Shape {
        match entity {
            Entity::Device { .. } => Shape::of(resolved.device_type),
            Entity::Outlet { .. } => Shape::Switch,
            Entity::Group { home, gid } => ha::group_shape(&self.member_types(home, *gid)),
        }
    }

    fn member_types(&self, home: &str, gid: u16) -> Vec<DeviceType> {
        self.ctx
            .homes
            .get()
            .group_members(home, gid)
            .iter()
            .map(|m| control::type_of(&self.ctx, home, *m))
            .collect()
    }

    /// Publishes `payload` on `topic` (retained) unless the same payload was published last.
    async fn put(&mut self, topic: String, payload: Vec<u8>, force: bool) {
        // cyncd's own availability is no entity's: never remembered, never cleared.
        if !payload.is_empty() && topic != self.topics.availability() {
            self.memory.remember(&topic, self.scanned.get(&topic));
        }
        let h = hash(&payload);
        if !force && self.published.get(&topic) == Some(&h) {
            return;
        }
        if !self.connected {
            return;
        }
        match self
            .client
            .publish(topic.clone(), QoS::AtLeastOnce, true, payload)
            .await
        {
            Ok(()) => {
                self.metrics.published.inc();
                self.published.insert(topic, h);
            }
            Err(e) => {
                // The event loop is gone (shutting down); the next connect re-publishes all.
                debug!(error = %e, "MQTT publish not queued");
                self.connected = false;
            }
        }
    }

    async fn put_json(&mut self, topic: String, value: &serde_json::Value) {
        let payload = serde_json::to_vec(value).unwrap_or_default();
        self.put(topic, payload, false).await;
    }

    /// Every device view Home Assistant should know: the registry's devices that the homes
    /// (configuration or homes file) name or a bridge listed, including the named ones no
    /// bridge reported yet (offline until they report). Hidden devices are not among them.
    fn views(&self) -> Vec<DeviceView> {
        let registry = &self.ctx.registry;
        let homes = self.ctx.homes.get();
        let mut views = registry.devices(&homes);
        views.retain(|v| {
            homes.device(&v.home, v.mesh_id).is_some() || registry.listed(&v.home, v.mesh_id)
        });
        views
    }

    /// Scans, and returns how long to wait before the next one.
    async fn timed_scan(&mut self) -> Duration {
        let started = Instant::now();
        self.scan().await;
        let took = started.elapsed();
        self.metrics.scan_seconds.observe(took.as_secs_f64());
        (took * SCAN_DUTY).max(SCAN_INTERVAL)
    }

    /// Brings every retained topic up to date with the registry.
    async fn scan(&mut self) {
        if !self.connected {
            return;
        }
        self.scanned.clear();
        self.refresh_bridges();
        let homes = self.ctx.homes.get();
        let page = self.page.clone();
        let views = self.views();
        // A bridge whose own device Home Assistant is not shown (hidden) stays a device of
        // its own.
        let visible: HashSet<(&str, u16)> =
            views.iter().map(|v| (v.home.as_str(), v.mesh_id)).collect();
        for b in self.bridges_seen.values_mut() {
            if b.own
                .as_ref()
                .is_some_and(|(h, m)| !visible.contains(&(h.as_str(), *m)))
            {
                b.own = None;
            }
        }
        drop(visible);
        let mut by_key: HashMap<(String, u16), DeviceView> = HashMap::new();
        // Device blocks by (home, mesh id), for the bridges that are those devices.
        let mut blocks: HashMap<(String, u16), serde_json::Value> = HashMap::new();
        let owns: Vec<(String, u16)> = self
            .bridges_seen
            .values()
            .filter_map(|b| b.own.clone())
            .collect();
        let bridges_own: HashSet<(&str, u16)> =
            owns.iter().map(|(h, m)| (h.as_str(), *m)).collect();
        for view in views {
            let t = DeviceType::of(view.type_code);
            let object = ha::device_object(&view.home, view.mesh_id);
            if !t.known {
                match view.type_code {
                    // Reported once per (home, code), with a request to tell us.
                    Some(code) => {
                        self.ctx.registry.unknown_type(&view.home, code, &view.name);
                    }
                    None if self.warned.len() < crate::devices::registry::MAX_DEVICES
                        && self.warned.insert(object.clone()) =>
                    {
                        warn!(device = %view.id, "device type not known: shown as an on/off light (import the Cync account with `cyncd account export` or `cyncd account import`, or set its type in the configuration)");
                    }
                    None => {}
                }
            }
            let shape = Shape::of(t);
            let shown = view.clone();
            let (home, mesh) = (view.home.clone(), view.mesh_id);
            let links = ha::Links {
                via: self.via(&view),
                page: page.clone(),
                wifi_mac: homes.device(&home, mesh).and_then(|d| d.wifi_mac.clone()),
            };
            let block = ha::device_block(&view, &t, &links);
            if bridges_own.contains(&(home.as_str(), mesh)) {
                blocks.insert((home.clone(), mesh), block.clone());
            }
            // Entities only the homes name (no bridge listed them) go when the homes drop them.
            let wanted = Wanted {
                configured_only: !self.ctx.registry.listed_by_bridge(&home, mesh),
                home: Some(Arc::from(home.as_str())),
                owner: Arc::from(object.as_str()),
            };
            let entities: BTreeSet<String> = shape
                .objects(&home, mesh)
                .iter()
                .map(|(component, entity)| self.topics.discovery(component, entity))
                .collect();
            for (_, entity) in shape.objects(&home, mesh) {
                self.scanned
                    .insert(self.topics.state(&entity), wanted.clone());
            }
            for topic in [
                self.topics.state(&object),
                self.topics.entity_availability(&object),
                self.topics.attributes(&object),
            ] {
                self.scanned.insert(topic, wanted.clone());
            }
            // A device whose type is not known yet does not replace the entities a known type
            // gave it before (at the last start, say): they stay until its type is known.
            let placeholder = !t.known && view.type_code.is_none();
            let keep_old = self
                .place_discovery(&object, &entities, placeholder, &wanted)
                .await;
            let attributes = self.topics.attributes(&object);
            let extras = |mut discovery: serde_json::Value, class: Option<&str>| {
                ha::set_key(
                    &mut discovery,
                    "json_attributes_topic",
                    serde_json::json!(attributes),
                );
                if let Some(class) = class {
                    ha::set_key(&mut discovery, "device_class", serde_json::json!(class));
                }
                discovery
            };
            match shape {
                Shape::Outlets(_) => {
                    for o in view.outlets.iter().flatten() {
                        let outlet = ha::outlet_object(&home, mesh, o.outlet);
                        let on = o.on;
                        let discovery = extras(
                            ha::outlet_discovery(
                                &self.topics,
                                &view,
                                o.outlet,
                                &o.name,
                                block.clone(),
                            ),
                            Some("outlet"),
                        );
                        self.entities.insert(
                            outlet.clone(),
                            Entity::Outlet {
                                home: home.clone(),
                                mesh,
                                outlet: o.outlet,
                            },
                        );
                        if !keep_old {
                            self.put_json(self.topics.discovery("switch", &outlet), &discovery)
                                .await;
                        }
                        self.put_json(self.topics.state(&outlet), &ha::outlet_state(on))
                            .await;
                    }
                }
                Shape::Readings => {
                    let state = ha::readings_state(&view);
                    let unit = state.get("unit").and_then(serde_json::Value::as_str);
                    for (reading, (_, object)) in
                        ha::READINGS.iter().zip(shape.objects(&home, mesh))
                    {
                        let discovery = extras(
                            ha::reading_discovery(
                                &self.topics,
                                &view,
                                *reading,
                                unit,
                                block.clone(),
                            ),
                            None,
                        );
                        if !keep_old {
                            self.put_json(self.topics.discovery("sensor", &object), &discovery)
                                .await;
                        }
                    }
                    self.put_json(self.topics.state(&object), &state).await;
                }
                Shape::Presence => {
                    let discovery =
                        extras(ha::presence_discovery(&self.topics, &view, block), None);
                    if !keep_old {
                        self.put_json(self.topics.discovery("binary_sensor", &object), &discovery)
                            .await;
                    }
                    self.put_json(self.topics.state(&object), &ha::device_state(&view, shape))
                        .await;
                }
                Shape::Light(_) | Shape::Switch | Shape::Fan => {
                    let class = match t.kind {
                        Kind::Plug if shape == Shape::Switch => Some("outlet"),
                        Kind::Switch => Some("switch"),
                        _ => None,
                    };
                    let discovery = extras(
                        ha::discovery(&self.topics, &object, shape, block, true),
                        class,
                    );
                    self.entities
                        .insert(object.clone(), Entity::Device { home, mesh });
                    if !keep_old {
                        self.put_json(
                            self.topics.discovery(shape.component(), &object),
                            &discovery,
                        )
                        .await;
                    }
                    self.put_json(self.topics.state(&object), &ha::device_state(&shown, shape))
                        .await;
                }
            }
            let available = if view.online && view.reachable {
                "online"
            } else {
                "offline"
            };
            self.put(
                self.topics.entity_availability(&object),
                available.as_bytes().to_vec(),
                false,
            )
            .await;
            self.put_json(self.topics.attributes(&object), &ha::attributes(&shown))
                .await;
            by_key.insert((view.home.clone(), view.mesh_id), shown);
        }
        let groups: Vec<(String, crate::homes::Group)> = homes
            .homes()
            .iter()
            .flat_map(|h| h.groups.iter().map(|g| (h.name.clone(), g.clone())))
            .collect();
        drop(homes);
        for (home, group) in groups {
            let object = ha::group_object(&home, group.id);
            let types = self.member_types(&home, group.id);
            let shape = ha::group_shape(&types);
            let members: Vec<&DeviceView> = group
                .members
                .iter()
                .filter_map(|m| by_key.get(&(home.clone(), *m)))
                .collect();
            let state = ha::group_state(&members, shape);
            // A group command goes out through any bridge of the home: it can be carried out
            // while a bridge that reaches a member is connected.
            let reachable = members.iter().any(|m| m.reachable);
            let wanted = Wanted {
                configured_only: true,
                home: Some(Arc::from(home.as_str())),
                owner: Arc::from(object.as_str()),
            };
            let discovery_topic = self.topics.discovery(shape.component(), &object);
            for topic in [
                self.topics.state(&object),
                self.topics.entity_availability(&object),
            ] {
                self.scanned.insert(topic, wanted.clone());
            }
            // As for a device: a shape that rests on a member of unknown type does not
            // replace the entity the group had.
            let keep = BTreeSet::from([discovery_topic.clone()]);
            let placeholder = types.iter().any(|t| !t.known && t.code.is_none());
            let keep_old = self
                .place_discovery(&object, &keep, placeholder, &wanted)
                .await;
            let discovery = ha::discovery(
                &self.topics,
                &object,
                shape,
                ha::group_block(&home, group.id, &group.name, group.room),
                true,
            );
            self.entities.insert(
                object.clone(),
                Entity::Group {
                    home: home.clone(),
                    gid: group.id,
                },
            );
            if !keep_old {
                self.put_json(discovery_topic, &discovery).await;
            }
            self.put_json(self.topics.state(&object), &state).await;
            let available = if reachable { "online" } else { "offline" };
            self.put(
                self.topics.entity_availability(&object),
                available.as_bytes().to_vec(),
                false,
            )
            .await;
        }
        self.publish_bridges(&blocks).await;
    }

    /// The identifier of the device `view` is reached through: the own mesh device of its
    /// first bridge that is not the device itself (a bridge is one device in Home Assistant),
    /// or that bridge while its own device is not known.
    fn via(&self, view: &DeviceView) -> Option<String> {
        for conn in &view.bridges {
            let own = self.bridges_seen.get(conn).and_then(|b| b.own.clone());
            match own {
                Some((home, mesh)) if home == view.home && mesh == view.mesh_id => {}
                Some((home, mesh)) => return Some(ha::device_identifier(&home, mesh)),
                None => return Some(format!("cyncd_{}", ha::bridge_object(conn))),
            }
        }
        None
    }

    /// Brings the bridges Home Assistant is told about up to date: the homes' and the
    /// connected ones, each with its own mesh device when known.
    fn refresh_bridges(&mut self) {
        for seen in self.bridges_seen.values_mut() {
            seen.connected = false;
        }
        let homes = self.ctx.homes.get();
        for home in homes.homes() {
            for b in &home.bridges {
                self.bridges_seen
                    .entry(b.to_string())
                    .or_insert(SeenBridge {
                        connected: false,
                        firmware: None,
                        devices: 0,
                        own: None,
                    });
            }
            for d in &home.devices {
                if let Some(b) = d.bridge {
                    if let Some(seen) = self.bridges_seen.get_mut(&b.to_string()) {
                        seen.own = Some((home.name.clone(), d.id));
                    }
                }
            }
        }
        for c in self.ctx.registry.connections_named(&homes) {
            let entry = self
                .bridges_seen
                .entry(c.conn_id.clone())
                .or_insert(SeenBridge {
                    connected: true,
                    firmware: None,
                    devices: 0,
                    own: None,
                });
            entry.connected = true;
            if let Some(fw) = c.firmware.get("device") {
                entry.firmware = Some(fw.clone());
            }
            entry.devices = c.mesh.len();
            if let Some((home, mesh)) = c.device.as_deref().and_then(|d| d.rsplit_once(':')) {
                if let Ok(mesh) = mesh.parse() {
                    entry.own = Some((home.to_string(), mesh));
                }
            }
        }
        // Bound: forget the disconnected ones beyond the limit.
        let excess = self
            .bridges_seen
            .len()
            .saturating_sub(MAX_BRIDGES_REMEMBERED);
        if excess > 0 {
            let gone: Vec<String> = self
                .bridges_seen
                .iter()
                .filter(|(_, s)| !s.connected)
                .map(|(k, _)| k.clone())
                .take(excess)
                .collect();
            for k in gone {
                self.bridges_seen.remove(&k);
            }
        }
    }

    /// Publishes each bridge's diagnostic entities, on its own mesh device when Home Assistant
    /// knows that device (`blocks`), else on a device of the bridge's own.
    async fn publish_bridges(&mut self, blocks: &HashMap<(String, u16), serde_json::Value>) {
        let list: Vec<(String, SeenBridge)> = self
            .bridges_seen
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (conn, seen) in list {
            let object = ha::bridge_object(&conn);
            let wanted = Wanted {
                configured_only: false,
                home: None,
                owner: Arc::from(object.as_str()),
            };
            self.scanned
                .insert(self.topics.state(&object), wanted.clone());
            let block = seen
                .own
                .as_ref()
                .and_then(|key| blocks.get(key))
                .cloned()
                .unwrap_or_else(|| ha::bridge_block(&conn));
            let entities = ha::bridge_discovery(&self.topics, &conn, &block);
            let topics: BTreeSet<String> = entities
                .iter()
                .map(|(component, entity, _)| self.topics.discovery(component, entity))
                .collect();
            for topic in &topics {
                self.scanned.insert(topic.clone(), wanted.clone());
            }
            self.retire(&object, &topics).await;
            for (component, entity, discovery) in entities {
                self.put_json(self.topics.discovery(component, &entity), &discovery)
                    .await;
            }
            let state = ha::bridge_state(seen.connected, seen.firmware.as_deref(), seen.devices);
            self.put_json(self.topics.state(&object), &state).await;
        }
    }

    /// Clears the discovery topics `owner` had and no longer has (an entity that changed
    /// shape, a plug whose outlets became known), before the new ones are published: each
    /// unique id stays under exactly one discovery topic.
    /// Marks `entities` as the discovery topics `object` wants, clearing the ones of its old
    /// shape first (one entity per unique id). A `placeholder` shape (it rests on a device of
    /// unknown type) does not replace a shape remembered from before: those topics stay wanted
    /// until the type is known. True when the remembered shape was kept.
    async fn place_discovery(
        &mut self,
        object: &str,
        entities: &BTreeSet<String>,
        placeholder: bool,
        wanted: &Wanted,
    ) -> bool {
        let remembered = self
            .memory
            .discovery_of(object)
            .filter(|old| !old.is_empty() && *old != entities)
            .cloned();
        match remembered {
            Some(old) if placeholder => {
                for topic in old {
                    self.scanned.insert(topic, wanted.clone());
                }
                true
            }
            _ => {
                for topic in entities {
                    self.scanned.insert(topic.clone(), wanted.clone());
                }
                self.retire(object, entities).await;
                false
            }
        }
    }

    async fn retire(&mut self, owner: &str, keep: &BTreeSet<String>) {
        let gone = self.memory.retire(owner, keep);
        for topic in gone {
            info!(topic = %topic, "MQTT: entity changed shape; its old discovery removed");
            self.put(topic.clone(), Vec::new(), true).await;
            self.published.remove(&topic);
        }
    }

    /// The discovery, state and availability topics of the homes' entities.
    fn config_topics(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let homes = self.ctx.homes.get();
        for home in homes.homes() {
            for d in home.devices.iter().filter(|d| d.enabled) {
                let object = ha::device_object(&home.name, d.id);
                let shape = Shape::of(DeviceType::of(d.kind));
                for (component, entity) in shape.objects(&home.name, d.id) {
                    out.insert(self.topics.discovery(component, &entity));
                    out.insert(self.topics.state(&entity));
                }
                // A device whose type only its bridge tells keeps what it had.
                if d.kind.is_none() {
                    out.extend(
                        self.memory
                            .discovery_of(&object)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                out.insert(self.topics.state(&object));
                out.insert(self.topics.entity_availability(&object));
                out.insert(self.topics.attributes(&object));
            }
            for g in &home.groups {
                let object = ha::group_object(&home.name, g.id);
                let types = self.member_types(&home.name, g.id);
                let shape = ha::group_shape(&types);
                out.insert(self.topics.discovery(shape.component(), &object));
                if types.iter().any(|t| !t.known && t.code.is_none()) {
                    out.extend(
                        self.memory
                            .discovery_of(&object)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                out.insert(self.topics.state(&object));
                out.insert(self.topics.entity_availability(&object));
            }
        }
        out
    }

    /// Marks the last scan's topics as wanted at `now`.
    fn note_scanned(&mut self, now: u64) {
        for (topic, wanted) in &self.scanned {
            self.memory.wanted(topic, wanted.configured_only, now);
        }
    }

    /// The homes entities may belong to: the homes' names, and [`DEFAULT_HOME`] while no
    /// home is named (a bridge no home lists is in it).
    fn known_homes(&self) -> HashSet<String> {
        let homes = self.ctx.homes.get();
        let mut known: HashSet<String> = homes.homes().iter().map(|h| h.name.clone()).collect();
        if known.is_empty() {
            known.insert(DEFAULT_HOME.to_string());
        }
        known
    }

    /// Clears remembered topics that are stale: those of a home that no longer exists (renamed,
    /// or `default` once homes are named) and no scan wants; at the start (`starting`), those
    /// only the configuration wanted and it no longer names; at any time, those not wanted
    /// for [`STALE_AFTER`]. The last scan's topics are marked as wanted now first.
    async fn sweep(&mut self, starting: bool) {
        let now = unix_now();
        let current = self.config_topics();
        let known = self.known_homes();
        let slugs: Vec<String> = known.iter().map(|h| format!("{}_", ha::slug(h))).collect();
        let own = self.topics.availability();
        self.note_scanned(now);
        let stale = self.memory.stale(|topic, entry| {
            let wanted =
                current.contains(topic) || self.scanned.contains_key(topic) || topic == own;
            let home_gone = match &entry.home {
                Some(home) => !known.contains(home),
                // Files of older versions say no home: the object id starts with its slug.
                None => object_of(topic).is_some_and(|object| {
                    !object.starts_with("bridge_") && !slugs.iter().any(|s| object.starts_with(s))
                }),
            };
            !wanted
                && (home_gone
                    || (starting && entry.configured_only)
                    || now.saturating_sub(entry.seen) > STALE_AFTER.as_secs())
        });
        for topic in &stale {
            self.put(topic.clone(), Vec::new(), true).await;
            self.published.remove(topic);
        }
        if !stale.is_empty() {
            info!(
                topics = stale.len(),
                "MQTT: removed entities no longer configured or listed by a bridge"
            );
        }
        // The configuration's entities are wanted now, published or not yet.
        for topic in &current {
            self.memory
                .wanted(topic, !self.scanned.contains_key(topic), now);
        }
        self.memory.save();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The object id in a discovery topic (`…/cyncd/<object>/config`) or another of cyncd's
/// topics (`<base>/<object>/<kind>`).
fn object_of(topic: &str) -> Option<&str> {
    if let Some(rest) = topic.strip_suffix("/config") {
        let (before, object) = rest.rsplit_once('/')?;
        return before.ends_with("/cyncd").then_some(object);
    }
    topic.rsplit('/').nth(1)
}

/// The object id of a discovery topic, when it is one.
fn discovery_object(topic: &str) -> Option<&str> {
    topic
        .ends_with("/config")
        .then(|| object_of(topic))
        .flatten()
}

/// Why a scan wants a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    /// Only the configuration wants it (no bridge listed the device).
    configured_only: bool,
    /// The home of its device or group (none for a Wi-Fi bridge's).
    home: Option<Arc<str>>,
    /// The object id of the device, group or bridge it belongs to.
    owner: Arc<str>,
}

/// One remembered topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Remembered {
    /// Only the configuration wanted it (no bridge listed the device) when last wanted.
    configured_only: bool,
    /// Unix seconds when last wanted.
    seen: u64,
    /// The home of its device or group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    home: Option<String>,
    /// The object id of the device, group or bridge it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

impl Remembered {
    /// Its owner: as recorded, else (older files) a discovery topic's own object id.
    fn owner_of<'a>(&'a self, topic: &'a str) -> Option<&'a str> {
        self.owner.as_deref().or_else(|| discovery_object(topic))
    }
}

/// `mqtt-entities.json`: every retained topic cyncd published, so that stale ones can be
/// cleared later, even after a restart. Bounded by [`MAX_REMEMBERED_TOPICS`]. Written whole
/// (a temporary file and a rename), readable only by cyncd's user (0600).
struct Memory {
    file: PathBuf,
    topics: BTreeMap<String, Remembered>,
    /// Owner → its remembered discovery topics (an index of `topics`).
    owners: HashMap<String, BTreeSet<String>>,
    dirty: bool,
    warned_full: bool,
}

/// The file's shape.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemoryFile {
    topics: BTreeMap<String, Remembered>,
}

/// Largest `mqtt-entities.json` read (far above [`MAX_REMEMBERED_TOPICS`] topics).
const MEMORY_FILE_LIMIT: u64 = 64 * 1024 * 1024;

impl Memory {
    /// Reads the file; an older file (a list of the configuration's topics) counts as topics
    /// only the configuration wanted. An unreadable file is logged and counts as empty.
    fn load(file: PathBuf) -> Self {
        let bytes = match crate::state::read_bounded(&file, MEMORY_FILE_LIMIT) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(e) => {
                warn!(file = %file.display(), error = %e, "could not read the MQTT entities; entities published before will not be removed when stale");
                Vec::new()
            }
        };
        let topics = if let Ok(f) = serde_json::from_slice::<MemoryFile>(&bytes) {
            f.topics
        } else if let Ok(list) = serde_json::from_slice::<Vec<String>>(&bytes) {
            list.into_iter()
                .map(|t| {
                    let entry = Remembered {
                        configured_only: true,
                        seen: unix_now(),
                        home: None,
                        owner: None,
                    };
                    (t, entry)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut topics = topics;
        while topics.len() > MAX_REMEMBERED_TOPICS {
            topics.pop_last();
        }
        let mut owners: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (topic, entry) in &topics {
            if let (Some(owner), Some(_)) = (entry.owner_of(topic), discovery_object(topic)) {
                owners
                    .entry(owner.to_string())
                    .or_default()
                    .insert(topic.clone());
            }
        }
        Self {
            file,
            topics,
            owners,
            dirty: false,
            warned_full: false,
        }
    }

    /// Notes a published topic, wanted now.
    fn remember(&mut self, topic: &str, wanted: Option<&Wanted>) {
        if let Some(e) = self.topics.get_mut(topic) {
            // Entries of older files learn their home and owner.
            if let Some(w) = wanted {
                if e.home.as_deref() != w.home.as_deref() || e.owner.as_deref() != Some(&*w.owner) {
                    e.home = w.home.as_deref().map(str::to_string);
                    e.owner = Some(w.owner.to_string());
                    self.dirty = true;
                    if discovery_object(topic).is_some() {
                        for set in self.owners.values_mut() {
                            set.remove(topic);
                        }
                        self.owners
                            .entry(w.owner.to_string())
                            .or_default()
                            .insert(topic.to_string());
                    }
                }
            }
            return;
        }
        if self.topics.len() >= MAX_REMEMBERED_TOPICS {
            if !self.warned_full {
                self.warned_full = true;
                warn!(
                    limit = MAX_REMEMBERED_TOPICS,
                    "MQTT: too many entities to remember; later ones will not be removed when stale"
                );
            }
            return;
        }
        let entry = Remembered {
            configured_only: wanted.is_some_and(|w| w.configured_only),
            seen: unix_now(),
            home: wanted.and_then(|w| w.home.as_deref().map(str::to_string)),
            owner: wanted.map(|w| w.owner.to_string()),
        };
        if let (Some(owner), Some(_)) = (entry.owner_of(topic), discovery_object(topic)) {
            self.owners
                .entry(owner.to_string())
                .or_default()
                .insert(topic.to_string());
        }
        self.topics.insert(topic.to_string(), entry);
        self.dirty = true;
    }

    /// The remembered discovery topics of `owner`.
    fn discovery_of(&self, owner: &str) -> Option<&BTreeSet<String>> {
        self.owners.get(owner)
    }

    /// Forgets and returns the discovery topics of `owner` that are not in `keep`.
    fn retire(&mut self, owner: &str, keep: &BTreeSet<String>) -> Vec<String> {
        let Some(set) = self.owners.get_mut(owner) else {
            return Vec::new();
        };
        let gone: Vec<String> = set.difference(keep).cloned().collect();
        for topic in &gone {
            set.remove(topic);
            self.topics.remove(topic);
        }
        if set.is_empty() {
            self.owners.remove(owner);
        }
        if !gone.is_empty() {
            self.dirty = true;
        }
        gone
    }

    /// Marks a remembered topic wanted at `now`. The file is rewritten for a changed flag, or
    /// when the time moved by more than an hour (not for every scan).
    fn wanted(&mut self, topic: &str, configured_only: bool, now: u64) {
        if let Some(e) = self.topics.get_mut(topic) {
            if e.configured_only != configured_only || now.saturating_sub(e.seen) > 3600 {
                self.dirty = true;
            }
            e.configured_only = configured_only;
            e.seen = now;
        }
    }

    /// Removes and returns the topics `stale` picks.
    fn stale(&mut self, stale: impl Fn(&str, &Remembered) -> bool) -> Vec<String> {
        let gone: Vec<String> = self
            .topics
            .iter()
            .filter(|(t, e)| stale(t, e))
            .map(|(t, _)| t.clone())
            .collect();
        for t in &gone {
            if let Some(e) = self.topics.remove(t) {
                if let Some(owner) = e.owner_of(t) {
                    if let Some(set) = self.owners.get_mut(owner) {
                        set.remove(t);
                        if set.is_empty() {
                            self.owners.remove(owner);
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.dirty = true;
        }
        gone
    }

    /// Writes the file when something changed: whole, through a temporary file and a rename,
    /// mode 0600.
    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let body = serde_json::to_vec(&MemoryFile {
            topics: self.topics.clone(),
        })
        .unwrap_or_default();
        if let Err(e) = crate::state::write_atomic(&self.file, &body, 0o600) {
            error!(file = %self.file.display(), error = %e, "could not remember the MQTT entities; stale entities will stay in Home Assistant");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn remembered_entities_are_private_whole_and_known_by_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cyncd-mqtt-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mqtt-entities.json");
        let light = "homeassistant/light/cyncd/lab_1/config";
        let switch = "homeassistant/switch/cyncd/lab_1/config";
        // An older file: a list of topics, readable by anyone.
        std::fs::write(&file, serde_json::to_vec(&[light]).unwrap()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut memory = Memory::load(file.clone());
        assert_eq!(
            memory.discovery_of("lab_1"),
            Some(&BTreeSet::from([light.to_string()]))
        );
        let wanted = Wanted {
            configured_only: false,
            home: Some("lab".into()),
            owner: "lab_1".into(),
        };
        memory.remember(switch, Some(&wanted));
        memory.remember("cync/lab_1/state", Some(&wanted));
        // The device became a switch: its light goes, nothing else of it.
        assert_eq!(
            memory.retire("lab_1", &BTreeSet::from([switch.to_string()])),
            [light.to_string()]
        );
        assert!(
            memory
                .retire("lab_1", &BTreeSet::from([switch.to_string()]))
                .is_empty()
        );
        memory.save();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Memory::load(file.clone());
        assert_eq!(again.topics.len(), 2);
        assert_eq!(again.topics[switch].home.as_deref(), Some("lab"));
        assert_eq!(again.topics[switch].owner.as_deref(), Some("lab_1"));
        assert_eq!(
            again.discovery_of("lab_1"),
            Some(&BTreeSet::from([switch.to_string()]))
        );
        assert_eq!(object_of("cync/lab_1/state"), Some("lab_1"));
        assert_eq!(object_of(light), Some("lab_1"));
        assert_eq!(discovery_object("cync/lab_1/state"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_page_url_comes_from_the_configuration_or_the_http_address() {
        let mut config = crate::config::Config {
            http: "127.0.0.1:8080".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(page_url(&config).as_deref(), Some("http://127.0.0.1:8080/"));
        config.http = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(page_url(&config), None);
        config.http_hosts = vec!["cyncd.lan".into()];
        assert_eq!(page_url(&config).as_deref(), Some("http://cyncd.lan:8080/"));
        config.mqtt.page_url = Some("https://cync.example".into());
        assert_eq!(page_url(&config).as_deref(), Some("https://cync.example/"));
    }

    #[test]
    fn the_password_file_wins_and_only_its_first_line_counts() {
        let dir = std::env::temp_dir().join(format!("cyncd-mqtt-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let broker = Broker::parse("mqtt://u:fromurl@h").unwrap();
        let mut config = crate::config::MqttConfig {
            password: Some("fromconfig".into()),
            password_file: Some(file),
            ..Default::default()
        };
        if std::env::var_os(PASSWORD_ENV).is_none() {
            assert_eq!(
                password(&config, &broker).unwrap().as_deref(),
                Some("s3cret")
            );
            config.password_file = None;
            assert_eq!(
                password(&config, &broker).unwrap().as_deref(),
                Some("fromconfig")
            );
            config.password = None;
            assert_eq!(
                password(&config, &broker).unwrap().as_deref(),
                Some("fromurl")
            );
        }
        config.password_file = Some(dir.join("missing"));
        let e = password(&config, &broker).unwrap_err().to_string();
        assert!(e.contains("password file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
