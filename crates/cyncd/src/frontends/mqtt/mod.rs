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
//! (for a group, every member's: [`crate::devices::registry`]) and published by the next scan;
//! any other outcome re-publishes the true state so Home Assistant does not show what did not
//! happen.
//!
//! Entities are announced for the devices the homes (the configuration over the homes file)
//! name or a bridge's mesh listing named ([`crate::devices::registry::Registry::listed`]); a report from an id no bridge lists
//! creates nothing in Home Assistant. Every topic ever published is remembered in
//! `mqtt-entities.json` in the state directory (at most [`MAX_REMEMBERED_TOPICS`]; further ones
//! are not remembered, with a warning), so stale entities are removed (empty retained
//! payloads): at the next start those only the configuration wanted and it no longer names, and
//! any not wanted for [`STALE_AFTER`]. Payloads quoted in logs are cut to
//! [`LOG_PREVIEW`] bytes, with their length.

pub mod ha;

use crate::commands::Context;
use crate::commands::control;
use crate::config::Broker;
use crate::devices::registry::DeviceView;
use cync_proto::catalog::DeviceType;
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
    /// Topics the last scan wanted → whether only the configuration wanted them.
    scanned: HashMap<String, bool>,
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
                    self.on_done(done);
                    gap = self.timed_scan().await;
                    last_scan = Instant::now();
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
        self.published.retain(|topic, _| topic.starts_with(&prefix));
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
        if !payload.is_empty() {
            let configured_only = self.scanned.get(&topic).copied().unwrap_or(false);
            self.memory.remember(&topic, configured_only);
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
        let views = self.views();
        let mut by_key: HashMap<(String, u16), DeviceView> = HashMap::new();
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
            let via = view.bridges.first().map(String::as_str);
            let block = ha::device_block(&view, &t, via);
            let (home, mesh) = (view.home.clone(), view.mesh_id);
            // Entities only the homes name (no bridge listed them) go when the homes drop them.
            let configured_only = !self.ctx.registry.listed_by_bridge(&home, mesh);
            for (component, entity) in shape.objects(&home, mesh) {
                self.scanned
                    .insert(self.topics.discovery(component, &entity), configured_only);
                self.scanned
                    .insert(self.topics.state(&entity), configured_only);
            }
            self.scanned
                .insert(self.topics.state(&object), configured_only);
            self.scanned
                .insert(self.topics.entity_availability(&object), configured_only);
            match shape {
                Shape::Outlets(_) => {
                    for o in view.outlets.iter().flatten() {
                        let outlet = ha::outlet_object(&home, mesh, o.outlet);
                        let on = o.on;
                        let discovery = ha::outlet_discovery(
                            &self.topics,
                            &view,
                            o.outlet,
                            &o.name,
                            block.clone(),
                        );
                        self.entities.insert(
                            outlet.clone(),
                            Entity::Outlet {
                                home: home.clone(),
                                mesh,
                                outlet: o.outlet,
                            },
                        );
                        self.put_json(self.topics.discovery("switch", &outlet), &discovery)
                            .await;
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
                        let discovery = ha::reading_discovery(
                            &self.topics,
                            &view,
                            *reading,
                            unit,
                            block.clone(),
                        );
                        self.put_json(self.topics.discovery("sensor", &object), &discovery)
                            .await;
                    }
                    self.put_json(self.topics.state(&object), &state).await;
                }
                Shape::Presence => {
                    let discovery = ha::presence_discovery(&self.topics, &view, block);
                    self.put_json(self.topics.discovery("binary_sensor", &object), &discovery)
                        .await;
                    self.put_json(self.topics.state(&object), &ha::device_state(&view, shape))
                        .await;
                }
                Shape::Light(_) | Shape::Switch | Shape::Fan => {
                    let discovery = ha::discovery(&self.topics, &object, shape, block, true);
                    self.entities
                        .insert(object.clone(), Entity::Device { home, mesh });
                    self.put_json(
                        self.topics.discovery(shape.component(), &object),
                        &discovery,
                    )
                    .await;
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
            by_key.insert((view.home.clone(), view.mesh_id), shown);
        }
        let groups: Vec<(String, crate::homes::Group)> = self
            .ctx
            .homes
            .get()
            .homes()
            .iter()
            .flat_map(|h| h.groups.iter().map(|g| (h.name.clone(), g.clone())))
            .collect();
        for (home, group) in groups {
            let object = ha::group_object(&home, group.id);
            let shape = ha::group_shape(&self.member_types(&home, group.id));
            let members: Vec<&DeviceView> = group
                .members
                .iter()
                .filter_map(|m| by_key.get(&(home.clone(), *m)))
                .collect();
            let state = ha::group_state(&members, shape);
            self.scanned
                .insert(self.topics.discovery(shape.component(), &object), true);
            self.scanned.insert(self.topics.state(&object), true);
            let discovery = ha::discovery(
                &self.topics,
                &object,
                shape,
                ha::group_block(&home, group.id, &group.name, group.room),
                false,
            );
            self.entities.insert(
                object.clone(),
                Entity::Group {
                    home: home.clone(),
                    gid: group.id,
                },
            );
            self.put_json(
                self.topics.discovery(shape.component(), &object),
                &discovery,
            )
            .await;
            self.put_json(self.topics.state(&object), &state).await;
        }
        self.scan_bridges().await;
    }

    async fn scan_bridges(&mut self) {
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
                    });
            }
        }
        for c in self.ctx.registry.connections() {
            let entry = self
                .bridges_seen
                .entry(c.conn_id.clone())
                .or_insert(SeenBridge {
                    connected: true,
                    firmware: None,
                    devices: 0,
                });
            entry.connected = true;
            if let Some(fw) = c.firmware.get("device") {
                entry.firmware = Some(fw.clone());
            }
            entry.devices = c.mesh.len();
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
        let list: Vec<(String, SeenBridge)> = self
            .bridges_seen
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (conn, seen) in list {
            self.scanned
                .insert(self.topics.state(&ha::bridge_object(&conn)), false);
            for (component, object, discovery) in ha::bridge_discovery(&self.topics, &conn) {
                self.scanned
                    .insert(self.topics.discovery(component, &object), false);
                self.put_json(self.topics.discovery(component, &object), &discovery)
                    .await;
            }
            let state = ha::bridge_state(seen.connected, seen.firmware.as_deref(), seen.devices);
            self.put_json(self.topics.state(&ha::bridge_object(&conn)), &state)
                .await;
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
                out.insert(self.topics.state(&object));
                out.insert(self.topics.entity_availability(&object));
            }
            for g in &home.groups {
                let object = ha::group_object(&home.name, g.id);
                let shape = ha::group_shape(&self.member_types(&home.name, g.id));
                out.insert(self.topics.discovery(shape.component(), &object));
                out.insert(self.topics.state(&object));
            }
        }
        out
    }

    /// Marks the last scan's topics as wanted at `now`.
    fn note_scanned(&mut self, now: u64) {
        for (topic, configured_only) in &self.scanned {
            self.memory.wanted(topic, *configured_only, now);
        }
    }

    /// Clears remembered topics that are stale: at the start (`starting`), those only the
    /// configuration wanted and it no longer names; at any time, those not wanted for
    /// [`STALE_AFTER`]. The last scan's topics are marked as wanted now first.
    async fn sweep(&mut self, starting: bool) {
        let now = unix_now();
        let current = self.config_topics();
        self.note_scanned(now);
        let stale = self.memory.stale(|topic, entry| {
            let wanted = current.contains(topic) || self.scanned.contains_key(topic);
            !wanted
                && ((starting && entry.configured_only)
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

/// One remembered topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Remembered {
    /// Only the configuration wanted it (no bridge listed the device) when last wanted.
    configured_only: bool,
    /// Unix seconds when last wanted.
    seen: u64,
}

/// `mqtt-entities.json`: every retained topic cyncd published, so that stale ones can be
/// cleared later, even after a restart. Bounded by [`MAX_REMEMBERED_TOPICS`].
struct Memory {
    file: PathBuf,
    topics: BTreeMap<String, Remembered>,
    dirty: bool,
    warned_full: bool,
}

/// The file's shape.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemoryFile {
    topics: BTreeMap<String, Remembered>,
}

impl Memory {
    /// Reads the file; an older file (a list of the configuration's topics) counts as topics
    /// only the configuration wanted.
    fn load(file: PathBuf) -> Self {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let topics = if let Ok(f) = serde_json::from_slice::<MemoryFile>(&bytes) {
            f.topics
        } else if let Ok(list) = serde_json::from_slice::<Vec<String>>(&bytes) {
            list.into_iter()
                .map(|t| {
                    let entry = Remembered {
                        configured_only: true,
                        seen: unix_now(),
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
        Self {
            file,
            topics,
            dirty: false,
            warned_full: false,
        }
    }

    /// Notes a published topic, wanted now.
    fn remember(&mut self, topic: &str, configured_only: bool) {
        if self.topics.contains_key(topic) {
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
        self.topics.insert(
            topic.to_string(),
            Remembered {
                configured_only,
                seen: unix_now(),
            },
        );
        self.dirty = true;
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
            self.topics.remove(t);
        }
        if !gone.is_empty() {
            self.dirty = true;
        }
        gone
    }

    /// Writes the file when something changed.
    fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let body = serde_json::to_vec(&MemoryFile {
            topics: self.topics.clone(),
        })
        .unwrap_or_default();
        let tmp = self.file.with_extension("json.tmp");
        let written = std::fs::create_dir_all(self.file.parent().unwrap_or(&self.file))
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = written {
            error!(file = %self.file.display(), error = %e, "could not remember the MQTT entities; stale entities will stay in Home Assistant");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
