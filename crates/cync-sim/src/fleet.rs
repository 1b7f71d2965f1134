//! Running a fleet: one tokio task per simulated bridge (no thread per device), each with its
//! own connection, reconnecting with backoff whenever the server closes it.

use crate::bridge::{Bridge, BridgeSpec, Out, garbage};
use crate::chaos::{Chaos, Fate, Fault};
use crate::mesh::{Home, Kind, SimDevice};
use cync_proto::{ConnId, Framer, Packet};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Most delayed messages a bridge holds; further ones are sent at once.
pub const MAX_DELAYED: usize = 1024;
/// Mesh ids per home (status records carry a 1-byte id).
pub const MAX_DEVICES_PER_HOME: usize = 250;
/// How long a bridge waits for the server's answer to one of its packets (0x28, 0xC8, 0xD8,
/// 0x48, 0x88, or the 0x7B of its own 0x73) before counting an ACK gap. The cloud answers in
/// about 43 ms (p99 under 250 ms, PROTOCOL.md §11.2).
pub const ACK_DEADLINE: Duration = Duration::from_secs(3);
/// Answers a bridge waits for at once; beyond, the oldest is given up and counted as a gap.
pub const MAX_AWAITED: usize = 1024;

/// How to build and run a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The server's device address, `HOST:PORT`.
    pub server: String,
    /// Number of Wi-Fi bridges (connections).
    pub bridges: usize,
    /// Mesh devices per bridge (the bridge's own device included).
    pub devices_per_bridge: usize,
    /// Homes; `None` = as few as fit 250 devices each.
    pub homes: Option<usize>,
    /// Faults to inject.
    pub chaos: Chaos,
    /// Seed for every random choice (printed, so a run can be replayed).
    pub seed: u64,
    /// Plain TCP instead of TLS.
    pub plain: bool,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Delay from the hello ACK to the device-firmware report.
    pub firmware_delay: Duration,
    /// First bridge id (bridge i gets `id_base + i`).
    pub id_base: u32,
    /// Ramp: at most this many connection attempts in flight at once.
    pub max_connecting: usize,
    /// Connect through this in-memory network instead of TCP (plain, no TLS): for tests that
    /// run the server and the fleet in one runtime under a paused clock.
    pub memory: Option<MemoryNet>,
    /// Homes laid out by hand (devices by mesh id and type code, bridges and their reach)
    /// instead of `bridges` × `devices_per_bridge`.
    pub layout: Option<Vec<HomeLayout>>,
}

/// A home laid out by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeLayout {
    /// Name.
    pub name: String,
    /// Devices: (mesh id, Cync type code); each plays the behaviour its type has.
    pub devices: Vec<(u16, u8)>,
    /// Its Wi-Fi bridges.
    pub bridges: Vec<BridgeLayout>,
}

/// A bridge of a [`HomeLayout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeLayout {
    /// Its id (hello bytes 6–9).
    pub id: u32,
    /// Its own mesh id.
    pub own: u16,
    /// The mesh ids it reaches besides its own.
    pub reach: Vec<u16>,
}

/// An in-memory network: each connection is a [`tokio::io::duplex`] pair whose server half is
/// handed to whoever holds the [`MemoryListener`].
#[derive(Debug, Clone)]
pub struct MemoryNet {
    tx: mpsc::Sender<(DuplexStream, SocketAddr)>,
    next_port: Arc<std::sync::atomic::AtomicU16>,
}

/// The server side of a [`MemoryNet`].
#[derive(Debug)]
pub struct MemoryListener {
    rx: mpsc::Receiver<(DuplexStream, SocketAddr)>,
}

/// Bytes buffered in each direction of an in-memory connection.
pub const MEMORY_BUFFER: usize = 64 * 1024;

impl MemoryNet {
    /// A network and its listener (at most 1,024 connections waiting to be accepted).
    pub fn new() -> (Self, MemoryListener) {
        let (tx, rx) = mpsc::channel(1024);
        (
            Self {
                tx,
                next_port: Arc::new(std::sync::atomic::AtomicU16::new(1)),
            },
            MemoryListener { rx },
        )
    }

    async fn connect(&self) -> Option<DuplexStream> {
        let (client, server) = tokio::io::duplex(MEMORY_BUFFER);
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let peer = SocketAddr::from(([10, 0, 0, 1], port));
        self.tx.send((server, peer)).await.ok()?;
        Some(client)
    }
}

impl MemoryListener {
    /// The next connection's server half and a made-up peer address; `None` when every
    /// [`MemoryNet`] handle is gone.
    pub async fn accept(&mut self) -> Option<(DuplexStream, SocketAddr)> {
        self.rx.recv().await
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            server: "127.0.0.1:23779".into(),
            bridges: 2,
            devices_per_bridge: 6,
            homes: None,
            chaos: Chaos::none(),
            seed: 1,
            plain: false,
            heartbeat: Duration::from_secs(20),
            firmware_delay: Duration::from_secs(2),
            id_base: 0x5100_0000,
            max_connecting: 200,
            memory: None,
            layout: None,
        }
    }
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful connections (first and re-).
    pub connects: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Connections lost or closed.
    pub disconnects: AtomicU64,
    /// Bridges connected now.
    pub connected: AtomicU64,
    /// Packets received from the server.
    pub packets_in: AtomicU64,
    /// Writes of whole packets to the server.
    pub packets_out: AtomicU64,
    /// Commands received.
    pub commands: AtomicU64,
    /// Commands applied by a device.
    pub applied: AtomicU64,
    /// Device packets that needed an answer from the server (see [`ACK_DEADLINE`]).
    pub acks_expected: AtomicU64,
    /// Answers received for them.
    pub acks_received: AtomicU64,
    /// Answers that did not come within [`ACK_DEADLINE`] while the connection was up: ACK gaps.
    pub ack_gaps: AtomicU64,
    /// Answers received that answer nothing the bridge sent (a second answer to one packet).
    pub acks_unexpected: AtomicU64,
    /// Answers still awaited when a connection ended (not gaps: the connection is gone).
    pub acks_lost_at_close: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    fn fault(&self, f: Fault) {
        let mut faults = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *faults.entry(f.name()).or_default() += 1;
    }
}

/// A summary for people.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Seed of the run.
    pub seed: u64,
    /// Bridges.
    pub bridges: usize,
    /// Mesh devices.
    pub devices: usize,
    /// Bridges connected now.
    pub connected: u64,
    /// Successful connections.
    pub connects: u64,
    /// Failed attempts.
    pub connect_failures: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Commands received.
    pub commands: u64,
    /// Commands applied.
    pub applied: u64,
    /// Device packets that needed an answer.
    pub acks_expected: u64,
    /// Answers received for them.
    pub acks_received: u64,
    /// Answers that did not come within the deadline while connected.
    pub ack_gaps: u64,
    /// Answers to nothing (a packet answered twice).
    pub acks_unexpected: u64,
    /// Answers still awaited when a connection ended.
    pub acks_lost_at_close: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    /// The homes and their devices.
    pub homes: Vec<Arc<Home>>,
    /// Counters.
    pub stats: Arc<Stats>,
    bridges: usize,
    config: FleetConfig,
    cancel: CancellationToken,
    tracker: TaskTracker,
    storm: watch::Sender<u64>,
}

/// Why a fleet cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Too many devices for the homes.
    #[error(
        "{0} devices per home exceed the {MAX_DEVICES_PER_HOME} a 1-byte mesh id allows: use more homes"
    )]
    TooManyDevices(usize),
    /// Nothing to simulate.
    #[error("a fleet needs at least one bridge and one device per bridge")]
    Empty,
    /// TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
}

impl Fleet {
    /// Builds the homes and bridges and starts every bridge.
    pub fn start(config: FleetConfig) -> Result<Self, FleetError> {
        let (homes, specs) = build(&config)?;
        let bridges = specs.len();
        let connector = if config.plain {
            None
        } else {
            Some(Arc::new(connector()?))
        };
        let stats = Arc::new(Stats::default());
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (storm, _) = watch::channel(0u64);
        let ramp = Arc::new(tokio::sync::Semaphore::new(config.max_connecting.max(1)));
        for (i, spec) in specs.into_iter().enumerate() {
            let ctx = BridgeCtx {
                server: config.server.clone(),
                memory: config.memory.clone(),
                chaos: config.chaos.clone(),
                heartbeat: config.heartbeat,
                firmware_delay: config.firmware_delay,
                connector: connector.clone(),
                stats: stats.clone(),
                cancel: cancel.clone(),
                storm: storm.subscribe(),
                ramp: ramp.clone(),
                rng: fastrand::Rng::with_seed(
                    config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64),
                ),
                awaited: Mutex::default(),
            };
            tracker.spawn(run_bridge(Bridge::new(spec), ctx));
        }
        if let Some(every) = config.chaos.storm_every {
            let storm = storm.clone();
            let cancel = cancel.clone();
            let stats = stats.clone();
            tracker.spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {
                            stats.fault(Fault::Storm);
                            storm.send_modify(|n| *n += 1);
                        }
                    }
                }
            });
        }
        tracker.close();
        Ok(Self {
            homes,
            stats,
            bridges,
            config,
            cancel,
            tracker,
            storm,
        })
    }

    /// Every device, with its device-side truth.
    pub fn devices(&self) -> Vec<SimDevice> {
        self.homes
            .iter()
            .flat_map(|h| h.devices().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// One device by home and mesh id.
    pub fn device(&self, home: &str, id: u16) -> Option<SimDevice> {
        self.homes
            .iter()
            .find(|h| h.name == home)?
            .devices()
            .get(&id)
            .cloned()
    }

    /// Makes every bridge drop its connection and reconnect, all at once.
    pub fn storm(&self) {
        self.stats.fault(Fault::Storm);
        self.storm.send_modify(|n| *n += 1);
    }

    /// The counters now.
    pub fn summary(&self) -> Summary {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            seed: self.config.seed,
            bridges: self.bridges,
            devices: self.homes.iter().map(|h| h.devices().len()).sum(),
            connected: get(&s.connected),
            connects: get(&s.connects),
            connect_failures: get(&s.connect_failures),
            disconnects: get(&s.disconnects),
            packets_in: get(&s.packets_in),
            packets_out: get(&s.packets_out),
            commands: get(&s.commands),
            applied: get(&s.applied),
            acks_expected: get(&s.acks_expected),
            acks_received: get(&s.acks_received),
            ack_gaps: get(&s.ack_gaps),
            acks_unexpected: get(&s.acks_unexpected),
            acks_lost_at_close: get(&s.acks_lost_at_close),
            faults: s
                .faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Stops every bridge and waits for them.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

/// Homes and bridges from a hand-made layout; a bridge's reach is its own id first.
fn build_layout(layout: &[HomeLayout]) -> (Vec<Arc<Home>>, Vec<BridgeSpec>) {
    let mut homes = Vec::new();
    let mut specs = Vec::new();
    for h in layout {
        let devices = h
            .devices
            .iter()
            .map(|(id, code)| SimDevice::typed(*id, &h.name, *code))
            .collect();
        let home = Home::new(&h.name, devices);
        for b in &h.bridges {
            let mut reach = vec![b.own];
            reach.extend(b.reach.iter().filter(|r| **r != b.own));
            specs.push(BridgeSpec {
                conn_id: ConnId(b.id.to_be_bytes()),
                auth: auth_code(b.id),
                home: home.clone(),
                own: b.own,
                reach,
                firmware: "11158".into(),
            });
        }
        homes.push(home);
    }
    (homes, specs)
}

/// A bridge's made-up 16-character auth code, stable per id.
fn auth_code(id: u32) -> [u8; 16] {
    let mut auth = [b'0'; 16];
    for (slot, c) in auth
        .iter_mut()
        .zip(format!("{:016x}", u64::from(id).wrapping_mul(0x2545_f491_4f6c_dd1d)).bytes())
    {
        *slot = c;
    }
    auth
}

/// The TLS client real devices are: TLS 1.2, the RSA-key-exchange CBC suites, no certificate
/// check.
pub fn connector() -> Result<SslConnector, openssl::error::ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list("AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA")?;
    Ok(b.build())
}

/// Lays out homes, devices and bridges: bridges are dealt to homes in turn; bridge k of a home
/// owns mesh ids `k·M+1 …`, the first being the Wi-Fi device itself, and also reaches the first
/// device of the next bridge of its home, so several bridges report one device. Kinds cycle
/// through every kind.
pub fn build(config: &FleetConfig) -> Result<(Vec<Arc<Home>>, Vec<BridgeSpec>), FleetError> {
    if let Some(layout) = &config.layout {
        return Ok(build_layout(layout));
    }
    let m = config.devices_per_bridge;
    if config.bridges == 0 || m == 0 {
        return Err(FleetError::Empty);
    }
    let homes = config
        .homes
        .unwrap_or_else(|| (config.bridges * m).div_ceil(MAX_DEVICES_PER_HOME))
        .clamp(1, config.bridges);
    let per_home = config.bridges.div_ceil(homes);
    if per_home * m > MAX_DEVICES_PER_HOME {
        return Err(FleetError::TooManyDevices(per_home * m));
    }
    let mut home_devices: Vec<Vec<SimDevice>> = vec![Vec::new(); homes];
    let mut layout = Vec::new();
    let mut kind = 0usize;
    for b in 0..config.bridges {
        let h = b % homes;
        let k = b / homes;
        let name = format!("home{h}");
        let ids: Vec<u16> = (0..m)
            .map(|j| u16::try_from(k * m + j + 1).unwrap_or(u16::MAX))
            .collect();
        for (j, id) in ids.iter().enumerate() {
            // The Wi-Fi device of each bridge is a plug or a bulb; behind it, every kind.
            let pick =
                |list: &[Kind], i: usize| list.get(i % list.len()).copied().unwrap_or(Kind::Plug);
            let kd = if j == 0 {
                pick(&[Kind::Plug, Kind::Rgb, Kind::TunableWhite], b)
            } else {
                pick(&Kind::ALL, kind)
            };
            kind += 1;
            if let Some(list) = home_devices.get_mut(h) {
                list.push(SimDevice::new(*id, &name, kd));
            }
        }
        layout.push((h, k, ids));
    }
    let home_arcs: Vec<Arc<Home>> = home_devices
        .into_iter()
        .enumerate()
        .map(|(h, devices)| Home::new(&format!("home{h}"), devices))
        .collect();
    let bridges_in = |h: usize| config.bridges / homes + usize::from(h < config.bridges % homes);
    let mut specs = Vec::new();
    for (b, (h, k, ids)) in layout.into_iter().enumerate() {
        let mut reach = ids.clone();
        let next = (k + 1) % bridges_in(h).max(1);
        if next != k {
            reach.push(u16::try_from(next * m + 1).unwrap_or(u16::MAX));
        }
        let id = config
            .id_base
            .wrapping_add(u32::try_from(b).unwrap_or(u32::MAX));
        let auth = auth_code(id);
        let Some(home) = home_arcs.get(h).cloned() else {
            continue;
        };
        specs.push(BridgeSpec {
            conn_id: ConnId(id.to_be_bytes()),
            auth,
            home,
            own: ids.first().copied().unwrap_or(1),
            reach,
            firmware: "11158".into(),
        });
    }
    Ok((home_arcs, specs))
}

struct BridgeCtx {
    server: String,
    memory: Option<MemoryNet>,
    chaos: Chaos,
    heartbeat: Duration,
    firmware_delay: Duration,
    connector: Option<Arc<SslConnector>>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    storm: watch::Receiver<u64>,
    ramp: Arc<tokio::sync::Semaphore>,
    rng: fastrand::Rng,
    /// The answers this bridge waits for on its current connection.
    awaited: Mutex<Awaited>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum End {
    Cancelled,
    Lost,
}

async fn run_bridge(mut bridge: Bridge, mut ctx: BridgeCtx) {
    let mut backoff = Duration::from_millis(100);
    let mut changes = bridge.spec.home.subscribe();
    loop {
        let stream = {
            let Ok(_permit) = ctx.ramp.acquire().await else {
                return;
            };
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                s = connect(&ctx) => s,
            }
        };
        match stream {
            Some(mut stream) => {
                ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
                ctx.stats.connected.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                let end = session(&mut bridge, &mut ctx, &mut stream, &mut changes).await;
                ctx.stats.connected.fetch_sub(1, Ordering::Relaxed);
                {
                    let mut awaited = ctx
                        .awaited
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let left = u64::try_from(awaited.queue.len()).unwrap_or(u64::MAX);
                    awaited.queue.clear();
                    if !matches!(end, End::Cancelled) {
                        ctx.stats
                            .acks_lost_at_close
                            .fetch_add(left, Ordering::Relaxed);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), stream.shutdown()).await;
                if let End::Cancelled = end {
                    return;
                }
                ctx.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                ctx.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Exponential backoff with full jitter, 100 ms to 5 s.
        let wait = Duration::from_millis(
            ctx.rng
                .u64(0..=u64::try_from(backoff.as_millis()).unwrap_or(5000)),
        );
        backoff = (backoff * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn connect(ctx: &BridgeCtx) -> Option<Box<dyn Stream>> {
    if let Some(net) = &ctx.memory {
        return Some(Box::new(net.connect().await?));
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&ctx.server))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let Some(connector) = &ctx.connector else {
        return Some(Box::new(tcp));
    };
    let ssl = connector
        .configure()
        .ok()?
        .into_ssl("cm.gelighting.com")
        .ok()?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).ok()?;
    tokio::time::timeout(Duration::from_secs(30), Pin::new(&mut tls).connect())
        .await
        .ok()?
        .ok()?;
    Some(Box::new(tls))
}

/// The answers a bridge waits for, in the order its packets went out.
#[derive(Debug, Default)]
struct Awaited {
    /// (answer type, `[5:12]` echoed by a 0x7B, sent at).
    queue: std::collections::VecDeque<(u8, Option<[u8; 7]>, Instant)>,
    /// `[5:12]` of the bridge's last answered 0x73s, to recognise a second 0x7B for one.
    answered: std::collections::VecDeque<[u8; 7]>,
}

impl Awaited {
    /// Records the answers `bytes` (whole packets) call for.
    fn sent(&mut self, mut bytes: &[u8], stats: &Stats) {
        let now = Instant::now();
        while let Some([kind, _, _, hi, lo]) = bytes.first_chunk::<5>().copied() {
            let size = 5 + usize::from(u16::from_be_bytes([hi, lo]));
            let Some(packet) = bytes.get(..size) else {
                break;
            };
            bytes = bytes.get(size..).unwrap_or_default();
            if Packet::decode(packet).is_err() {
                continue;
            }
            let answer = match kind {
                0x23 => 0x28,
                0xc3 => 0xc8,
                0xd3 => 0xd8,
                0x43 => 0x48,
                0x83 => 0x88,
                0x73 => 0x7b,
                _ => continue,
            };
            let echo = (kind == 0x73)
                .then(|| packet.get(5..12).and_then(|k| <[u8; 7]>::try_from(k).ok()))
                .flatten();
            if self.queue.len() >= MAX_AWAITED {
                self.queue.pop_front();
                stats.ack_gaps.fetch_add(1, Ordering::Relaxed);
            }
            self.queue.push_back((answer, echo, now));
            stats.acks_expected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A packet from the server: an answer takes the oldest packet of the bridge's it fits.
    fn received(&mut self, packet: &[u8], stats: &Stats) {
        let kind = packet.first().copied().unwrap_or_default();
        if !matches!(kind, 0x28 | 0xc8 | 0xd8 | 0x48 | 0x88 | 0x7b) {
            return;
        }
        let echo = packet.get(5..12).and_then(|k| <[u8; 7]>::try_from(k).ok());
        let fits = |(answer, want, _): &(u8, Option<[u8; 7]>, Instant)| {
            *answer == kind && (kind != 0x7b || *want == echo)
        };
        match self.queue.iter().position(fits) {
            Some(i) => {
                if let Some((_, Some(key), _)) = self.queue.remove(i) {
                    if self.answered.len() >= 64 {
                        self.answered.pop_front();
                    }
                    self.answered.push_back(key);
                }
                stats.acks_received.fetch_add(1, Ordering::Relaxed);
            }
            // A 0x7B that echoes none of the bridge's 0x73s is the server's own business (the
            // cloud relays some for reports); one that echoes an answered 0x73 is a second
            // answer.
            None if kind == 0x7b => {
                if echo.is_some_and(|e| self.answered.contains(&e)) {
                    stats.acks_unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.acks_unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts the answers overdue at `now` as gaps and forgets them.
    fn expire(&mut self, now: Instant, stats: &Stats) {
        while self
            .queue
            .front()
            .is_some_and(|(_, _, at)| now >= *at + ACK_DEADLINE)
        {
            self.queue.pop_front();
            stats.ack_gaps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the oldest awaited answer is overdue.
    fn deadline(&self) -> Option<Instant> {
        self.queue.front().map(|(_, _, at)| *at + ACK_DEADLINE)
    }
}

async fn send(stream: &mut Box<dyn Stream>, bytes: &[u8], ctx: &BridgeCtx) -> std::io::Result<()> {
    ctx.awaited
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .sent(bytes, &ctx.stats);
    if ctx.chaos.byte_at_a_time {
        for b in bytes {
            stream.write_all(std::slice::from_ref(b)).await?;
            stream.flush().await?;
        }
    } else {
        stream.write_all(bytes).await?;
    }
    ctx.stats.packets_out.fetch_add(1, Ordering::Relaxed);
    stream.flush().await
}

async fn session(
    bridge: &mut Bridge,
    ctx: &mut BridgeCtx,
    stream: &mut Box<dyn Stream>,
    changes: &mut broadcast::Receiver<crate::mesh::Change>,
) -> End {
    let mut storm = ctx.storm.clone();
    storm.mark_unchanged();
    if send(stream, &bridge.hello(), ctx).await.is_err() {
        return End::Lost;
    }
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 4096];
    let mut delayed: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut order = 0u64;
    let start = Instant::now();
    // Heartbeats start at a random phase so a fleet does not beat in unison.
    let phase = Duration::from_millis(
        ctx.rng
            .u64(0..=u64::try_from(ctx.heartbeat.as_millis()).unwrap_or(1000)),
    );
    let mut next_beat = start + phase;
    let mut firmware_at: Option<Instant> = None;
    let mut greeted = false;
    let mut stalled_until: Option<Instant> = None;
    loop {
        let next_delayed = delayed.peek().map(|Reverse((t, _, _))| *t);
        let overdue = ctx
            .awaited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .deadline();
        let wake = [
            Some(next_beat),
            firmware_at,
            next_delayed,
            stalled_until,
            overdue,
        ]
        .into_iter()
        .flatten()
        .min();
        let reading = stalled_until.is_none();
        tokio::select! {
            _ = ctx.cancel.cancelled() => return End::Cancelled,
            _ = storm.changed() => return End::Lost,
            () = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                ctx.awaited
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .expire(now, &ctx.stats);
                if stalled_until.is_some_and(|t| now >= t) {
                    stalled_until = None;
                }
                if now >= next_beat {
                    next_beat = now + ctx.heartbeat;
                    if send(stream, &[0xd3, 0, 0, 0, 0], ctx).await.is_err() { return End::Lost; }
                    if ctx.chaos.garbage_now(&mut ctx.rng) {
                        ctx.stats.fault(Fault::Garbage);
                        let junk = garbage(&mut ctx.rng);
                        if send(stream, &junk, ctx).await.is_err() { return End::Lost; }
                    }
                }
                if firmware_at.is_some_and(|t| now >= t) {
                    firmware_at = None;
                    let fw = bridge.firmware_report(true);
                    if send(stream, &fw, ctx).await.is_err() { return End::Lost; }
                }
                while delayed.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
                    if let Some(Reverse((_, _, bytes))) = delayed.pop() {
                        if send(stream, &bytes, ctx).await.is_err() { return End::Lost; }
                    }
                }
            }
            change = changes.recv() => {
                if let Ok(change) = change {
                    if let Some(out) = bridge.on_change(change) {
                        if emit(out, ctx, stream, &mut delayed, &mut order).await.is_err() { return End::Lost; }
                    }
                }
            }
            read = stream.read(&mut buf), if reading => {
                let n = match read { Ok(0) | Err(_) => return End::Lost, Ok(n) => n };
                let mut input = buf.get(..n).unwrap_or_default();
                let mut packets = Vec::new();
                while !input.is_empty() {
                    let taken = framer.push(input);
                    input = input.get(taken..).unwrap_or_default();
                    while let Some(next) = framer.next_packet() {
                        match next {
                            Ok(p) => packets.push(p.to_vec()),
                            Err(_) => return End::Lost,
                        }
                    }
                    if taken == 0 { break; }
                }
                for bytes in packets {
                    ctx.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                    ctx.awaited
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .received(&bytes, &ctx.stats);
                    let Ok(packet) = Packet::decode(&bytes) else { continue };
                    if !greeted && matches!(packet, Packet::HelloAck(_)) {
                        greeted = true;
                        for msg in bridge.after_hello() {
                            if send(stream, &msg, ctx).await.is_err() { return End::Lost; }
                        }
                        firmware_at = Some(Instant::now() + ctx.firmware_delay);
                        continue;
                    }
                    let reaction = bridge.on_packet(&packet, &ctx.chaos, &mut ctx.rng);
                    if let Some(fate) = reaction.fate {
                        ctx.stats.commands.fetch_add(1, Ordering::Relaxed);
                        match fate {
                            Fate::Reset => {
                                ctx.stats.fault(Fault::Reset);
                                debug!(bridge = %bridge.spec.conn_id, "chaos: reset mid-command");
                                return End::Lost;
                            }
                            Fate::Ignore => ctx.stats.fault(Fault::Ignored),
                            Fate::Reject => ctx.stats.fault(Fault::Rejected),
                            Fate::Apply => {}
                        }
                        if ctx.chaos.stall_now(&mut ctx.rng) {
                            ctx.stats.fault(Fault::Stalled);
                            stalled_until = Some(Instant::now() + ctx.chaos.stall_for);
                        }
                    }
                    if reaction.applied {
                        ctx.stats.applied.fetch_add(1, Ordering::Relaxed);
                    }
                    for out in reaction.out {
                        if emit(out, ctx, stream, &mut delayed, &mut order).await.is_err() { return End::Lost; }
                    }
                }
            }
        }
    }
}

/// Sends (or schedules, or drops, or doubles) one message as chaos plans it.
async fn emit(
    out: Out,
    ctx: &mut BridgeCtx,
    stream: &mut Box<dyn Stream>,
    delayed: &mut BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    order: &mut u64,
) -> std::io::Result<()> {
    let Some(message) = out.message else {
        return send(stream, &out.bytes, ctx).await;
    };
    let plan = ctx.chaos.plan(message, &mut ctx.rng);
    if !plan.send {
        ctx.stats.fault(Fault::Dropped(message));
        return Ok(());
    }
    if plan.copies > 1 {
        ctx.stats.fault(Fault::Duplicated(message));
    }
    for _ in 0..plan.copies {
        if plan.delay.is_zero() || delayed.len() >= MAX_DELAYED {
            send(stream, &out.bytes, ctx).await?;
        } else {
            ctx.stats.fault(Fault::Delayed(message));
            *order += 1;
            delayed.push(Reverse((
                Instant::now() + plan.delay,
                *order,
                out.bytes.clone(),
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awaited_answers_count_gaps_and_second_answers() {
        let stats = Stats::default();
        let mut a = Awaited::default();
        let result = [
            0x73, 0, 0, 0, 0x13, 1, 2, 3, 4, 0, 2, 0, 0x7e, 1, 0, 0, 0, 0xf9, 0xd0, 1, 0, 0, 0xd1,
            0x7e,
        ];
        // A heartbeat, a ping and a result in one write; an unknown type needs nothing.
        let mut write = vec![0xd3, 0, 0, 0, 0, 0x43, 0, 0, 0, 7, 1, 2, 3, 4, 1, 1, 6];
        write.extend_from_slice(&result);
        write.extend_from_slice(&[0x99, 0, 0, 0, 1, 0]);
        a.sent(&write, &stats);
        assert_eq!(stats.acks_expected.load(Ordering::Relaxed), 3);
        a.received(&[0x48, 0, 0, 0, 3, 1, 1, 0], &stats);
        a.received(&[0x7b, 0, 0, 0, 7, 1, 2, 3, 4, 0, 2, 0], &stats);
        // A 0x7B for a 0x73 the bridge never sent is the server's business; a second one for
        // an answered 0x73, or an answer to nothing, is counted.
        a.received(&[0x7b, 0, 0, 0, 7, 9, 9, 9, 9, 0, 2, 0], &stats);
        assert_eq!(stats.acks_unexpected.load(Ordering::Relaxed), 0);
        a.received(&[0x7b, 0, 0, 0, 7, 1, 2, 3, 4, 0, 2, 0], &stats);
        a.received(&[0x88, 0, 0, 0, 3, 0, 1, 0], &stats);
        assert_eq!(stats.acks_unexpected.load(Ordering::Relaxed), 2);
        assert_eq!(stats.acks_received.load(Ordering::Relaxed), 2);
        // The heartbeat's answer never came: a gap once the deadline passes, not before.
        let now = Instant::now();
        a.expire(now, &stats);
        assert_eq!(stats.ack_gaps.load(Ordering::Relaxed), 0);
        a.expire(now + ACK_DEADLINE, &stats);
        assert_eq!(stats.ack_gaps.load(Ordering::Relaxed), 1);
        assert!(a.deadline().is_none());
    }

    #[test]
    fn layout_spreads_devices_and_overlaps_bridges() {
        let config = FleetConfig {
            bridges: 4,
            devices_per_bridge: 3,
            homes: Some(2),
            ..FleetConfig::default()
        };
        let (homes, specs) = build(&config).unwrap();
        assert_eq!(homes.len(), 2);
        assert_eq!(homes[0].devices().len(), 6);
        // Bridge 0 (home0, k=0) owns 1..=3 and reaches bridge 2's first device (4).
        assert_eq!(specs[0].reach, [1, 2, 3, 4]);
        assert_eq!(specs[2].reach, [4, 5, 6, 1]);
        assert_eq!(specs[0].own, 1);
        let ids: std::collections::HashSet<ConnId> = specs.iter().map(|s| s.conn_id).collect();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn too_many_devices_per_home_is_refused() {
        let config = FleetConfig {
            bridges: 100,
            devices_per_bridge: 10,
            homes: Some(1),
            ..FleetConfig::default()
        };
        assert!(matches!(
            build(&config),
            Err(FleetError::TooManyDevices(1000))
        ));
        let auto = FleetConfig {
            bridges: 10_000,
            devices_per_bridge: 2,
            homes: None,
            ..FleetConfig::default()
        };
        let (homes, specs) = build(&auto).unwrap();
        assert_eq!(specs.len(), 10_000);
        assert!(
            homes
                .iter()
                .all(|h| h.devices().len() <= MAX_DEVICES_PER_HOME)
        );
    }
}
