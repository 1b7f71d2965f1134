//! Relay mode, the I/O half: per relayed device connection, a TLS client connection to the
//! upstream cloud, owned by its own task.
//!
//! The device's connection task ([`super::server`]) stays the only writer on the device's
//! stream and keeps doing everything it does in normal mode (answering, learning state into the
//! registry, writing local commands); the sans-IO [`cync_proto::relay::Relay`] it holds decides,
//! packet by packet, what also goes up, what comes down and whose each device answer is (the
//! rules are in that module's documentation). This module moves the bytes between the
//! connection task and the upstream:
//!
//! - [`RelayClient`]: the upstream address and the OpenSSL connector, built once per process.
//!   Certificate verification is off by default (the devices do not verify either); with a
//!   pinned SHA-256 fingerprint, any other certificate fails the connection (`fingerprint`).
//! - [`Link`]: what the connection task holds — the sans-IO relay, the queue towards the
//!   upstream task and the events from it.
//! - The upstream task: connects (TCP + TLS, each within `handshake_timeout_secs`), frames the
//!   cloud's bytes with the same [`cync_proto::Framer`] as device bytes (whole packets only),
//!   writes what the connection task queues, and on any failure reconnects after a backoff
//!   with full jitter, from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`] (reset once a
//!   connection lived [`STABLE`]). It ends with the device connection.
//!
//! Queues and their policy when full:
//! - device → cloud ([`UP_QUEUE`] packets): the connection task never waits on the cloud; a
//!   packet that finds the queue full is dropped and counted
//!   (`tcp_comm_relay_dropped_total{direction="up",reason="queue_full"}`). Each packet carries
//!   the number of the upstream connection it was meant for, so nothing queued for a lost
//!   connection is written to the next one before its hello (`reason="stale"`).
//! - cloud → device ([`DOWN_QUEUE`] events): the upstream task waits for room, so it stops
//!   reading the cloud and TCP pushes back: no cloud packet is dropped or reordered. A device
//!   that stops reading is closed by the connection task's write timeout, as in normal mode.

use super::capture::{Capture, Dir};
use crate::metrics::Metrics;
use cync_proto::{ConnId, Framer};
use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Device packets waiting for the upstream task.
pub const UP_QUEUE: usize = 256;
/// Cloud packets (and connection events) waiting for the connection task.
pub const DOWN_QUEUE: usize = 256;
/// First reconnection delay (full jitter below it).
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An upstream connection that lived this long resets the backoff.
pub const STABLE: Duration = Duration::from_secs(10);
/// Bytes read from the upstream at a time (the framer joins longer packets, as on the device
/// side; every byte here is a kilobyte at a thousand relayed connections).
const READ_BUFFER: usize = 512;
/// The name sent in the TLS ClientHello (the cloud's, as the devices send it).
const SERVER_NAME: &str = "cm.gelighting.com";
/// Cipher suites offered upstream: modern ones first, then the devices' own four.
const CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
     ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
     AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA";

/// Where the upstream is and how to speak TLS to it, shared by every relayed connection.
pub struct RelayClient {
    /// The upstream's device endpoint.
    pub addr: SocketAddr,
    connector: SslConnector,
    pin: Option<[u8; 32]>,
    timeout: Duration,
    write_timeout: Duration,
    max_packet: usize,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("addr", &self.addr)
            .field("pinned", &self.pin.is_some())
            .finish_non_exhaustive()
    }
}

impl RelayClient {
    /// The client for the configuration's `[relay]`, when relay mode is on.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(addr) = config.relay.upstream_addr() else {
            return Ok(None);
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        // The devices do not check the cloud's certificate; a pin is checked after the
        // handshake, against the certificate itself.
        builder.set_verify(SslVerifyMode::NONE);
        builder.set_cipher_list(CIPHERS)?;
        // As for device connections: an idle connection gives its record buffers back (about
        // 34 KiB each), which matters at thousands of relayed connections.
        builder.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
        Ok(Some(Arc::new(Self {
            addr,
            connector: builder.build(),
            pin: config.relay.pin(),
            timeout: Duration::from_secs(config.handshake_timeout_secs),
            write_timeout: Duration::from_secs(config.write_timeout_secs),
            max_packet: config.max_packet,
        })))
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, &'static str> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| "connect")?
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        let ssl = self
            .connector
            .configure()
            .and_then(|c| c.verify_hostname(false).into_ssl(SERVER_NAME))
            .map_err(|_| "tls")?;
        let mut tls = SslStream::new(ssl, tcp).map_err(|_| "tls")?;
        tokio::time::timeout(self.timeout, Pin::new(&mut tls).connect())
            .await
            .map_err(|_| "tls")?
            .map_err(|_| "tls")?;
        if let Some(pin) = self.pin {
            let matches = tls
                .ssl()
                .peer_certificate()
                .and_then(|c| c.digest(MessageDigest::sha256()).ok())
                .is_some_and(|d| d[..] == pin[..]);
            if !matches {
                return Err("fingerprint");
            }
        }
        Ok(Box::new(tls))
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What the upstream task tells the connection task.
#[derive(Debug)]
pub enum UpEvent {
    /// Upstream connection number `n` is up: send the hello first.
    Connected(u64),
    /// A whole packet from the cloud.
    Packet(Vec<u8>),
    /// The connection (or an attempt) failed; a retry follows after a backoff.
    Lost(&'static str),
}

/// A relayed connection's side of the relay, held by its connection task.
#[derive(Debug)]
pub struct Link {
    /// The routing rules.
    pub core: cync_proto::relay::Relay,
    to_up: mpsc::Sender<(u64, Vec<u8>)>,
    events: mpsc::Receiver<UpEvent>,
    epoch: u64,
    cancel: CancellationToken,
    metrics: Metrics,
    stats: Arc<super::registry::ConnStats>,
    state: &'static str,
    reported: cync_proto::relay::RelayCounters,
}

impl Link {
    /// Starts the upstream task for bridge `conn` and returns the connection task's side.
    /// `cancel` ends the task (the connection's token: it ends with the connection).
    pub fn start(
        client: Arc<RelayClient>,
        conn: ConnId,
        metrics: Metrics,
        cancel: CancellationToken,
        stats: Arc<super::registry::ConnStats>,
        core: cync_proto::relay::Relay,
        capture: Option<Capture>,
    ) -> Self {
        let (to_up, up_rx) = mpsc::channel(UP_QUEUE);
        let (events_tx, events) = mpsc::channel(DOWN_QUEUE);
        let cancel = cancel.child_token();
        let task_metrics = metrics.clone();
        let task_cancel = cancel.clone();
        let side = Side {
            conn,
            up_rx,
            events: events_tx,
            cancel: task_cancel,
            metrics: task_metrics,
            capture,
        };
        tokio::spawn(upstream(client, side));
        let state = cync_proto::relay::Upstream::Connecting;
        metrics.relay.state(None, Some(state.label()));
        stats.set_upstream(Some(state));
        Self {
            core,
            to_up,
            events,
            epoch: 0,
            cancel,
            metrics,
            stats,
            state: state.label(),
            reported: cync_proto::relay::RelayCounters::default(),
        }
    }

    /// Counts what the relay decided about a packet going `direction`, and the relay's own
    /// counters since the last report.
    pub fn report(
        &mut self,
        kept: Option<cync_proto::relay::Kept>,
        dropped: Option<cync_proto::relay::Dropped>,
        direction: &'static str,
    ) {
        if let Some(k) = kept {
            self.metrics.relay.kept(direction, k.label());
        }
        if let Some(d) = dropped {
            self.metrics.relay.dropped(direction, d.label(), 1);
        }
        let now = self.core.counters();
        if now != self.reported {
            self.metrics
                .relay
                .collisions
                .inc_by(now.collisions.saturating_sub(self.reported.collisions));
            self.metrics
                .relay
                .unattributed
                .inc_by(now.unattributed.saturating_sub(self.reported.unattributed));
            self.reported = now;
        }
    }

    /// The next event from the upstream task.
    pub async fn next(&mut self) -> Option<UpEvent> {
        self.events.recv().await
    }

    /// The next event, if one is waiting.
    pub fn try_next(&mut self) -> Option<UpEvent> {
        self.events.try_recv().ok()
    }

    /// Sends bytes (whole packets) to the current upstream connection; false when they were
    /// dropped (queue full, task gone).
    pub fn send_up(&mut self, bytes: Vec<u8>, packets: u64) -> bool {
        let len = bytes.len();
        match self.to_up.try_send((self.epoch, bytes)) {
            Ok(()) => {
                self.metrics.relay.relayed("up", packets, len);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.relay.dropped("up", "queue_full", packets);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.relay.dropped("up", "upstream_down", packets);
                false
            }
        }
    }

    /// Upstream connection `epoch` is up: the bytes to send first go out.
    pub fn connected(&mut self, epoch: u64) {
        self.epoch = epoch;
        let first = self.core.upstream_connected();
        if !first.is_empty() {
            let packets = count_packets(&first);
            self.send_up(first, packets);
        }
        self.set_state(cync_proto::relay::Upstream::Up);
    }

    /// The upstream connection was lost or an attempt failed.
    pub fn lost(&mut self) {
        let dropped = self.core.upstream_lost();
        if dropped > 0 {
            self.metrics.relay.dropped(
                "up",
                "upstream_down",
                u64::try_from(dropped).unwrap_or(u64::MAX),
            );
        }
        self.set_state(cync_proto::relay::Upstream::Down);
    }

    fn set_state(&mut self, state: cync_proto::relay::Upstream) {
        self.stats.set_upstream(Some(state));
        let to = state.label();
        if to != self.state {
            self.metrics.relay.state(Some(self.state), Some(to));
            self.state = to;
        }
    }

    /// The upstream state's label (`connecting`, `up`, `down`).
    pub fn state(&self) -> &'static str {
        self.state
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.stats.set_upstream(None);
        self.metrics.relay.state(Some(self.state), None);
    }
}

/// What the upstream task owns.
struct Side {
    conn: ConnId,
    up_rx: mpsc::Receiver<(u64, Vec<u8>)>,
    events: mpsc::Sender<UpEvent>,
    cancel: CancellationToken,
    metrics: Metrics,
    /// The connection's capture (shared with its device side), when capture is on.
    capture: Option<Capture>,
}

/// The upstream task: connect, pump, reconnect with backoff, until `cancel` or the
/// connection task is gone.
async fn upstream(client: Arc<RelayClient>, mut side: Side) {
    let mut backoff = BACKOFF_MIN;
    let mut epoch = 0u64;
    loop {
        let attempt = tokio::select! {
            _ = side.cancel.cancelled() => return,
            a = client.connect() => a,
        };
        let failure = match attempt {
            Err(reason) => reason,
            Ok(mut stream) => {
                epoch += 1;
                side.metrics.relay.connects.inc();
                debug!(conn_id = %side.conn, upstream = %client.addr, epoch, "relay: upstream connected");
                if side.events.send(UpEvent::Connected(epoch)).await.is_err() {
                    return;
                }
                let started = Instant::now();
                let end = pump(&client, &mut *stream, epoch, &mut side).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                let Some(reason) = end else { return };
                if started.elapsed() >= STABLE {
                    backoff = BACKOFF_MIN;
                }
                reason
            }
        };
        side.metrics.relay.failure(failure);
        debug!(conn_id = %side.conn, upstream = %client.addr, reason = failure, "relay: upstream lost");
        if side.events.send(UpEvent::Lost(failure)).await.is_err() {
            return;
        }
        let wait = Duration::from_millis(fastrand::u64(
            u64::try_from(backoff.as_millis() / 2).unwrap_or(0)
                ..=u64::try_from(backoff.as_millis()).unwrap_or(30_000),
        ));
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = side.cancel.cancelled() => return,
                () = &mut sleep => break,
                item = side.up_rx.recv() => match item {
                    // Queued for a connection that is gone.
                    Some(_) => side.metrics.relay.dropped("up", "stale", 1),
                    None => return,
                },
            }
        }
    }
}

/// Moves packets both ways on one upstream connection; `None` when the relay must end
/// (cancelled, or the connection task is gone), else why the connection failed.
async fn pump(
    client: &RelayClient,
    stream: &mut dyn Stream,
    epoch: u64,
    side: &mut Side,
) -> Option<&'static str> {
    let mut framer = Framer::new(client.max_packet);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = side.cancel.cancelled() => return None,
            item = side.up_rx.recv() => {
                let (e, bytes) = item?;
                out.clear();
                if e == epoch {
                    out.extend_from_slice(&bytes);
                } else {
                    side.metrics.relay.dropped("up", "stale", 1);
                }
                // Whatever else is queued goes in the same write.
                while let Ok((e, more)) = side.up_rx.try_recv() {
                    if e == epoch {
                        out.extend_from_slice(&more);
                    } else {
                        side.metrics.relay.dropped("up", "stale", 1);
                    }
                    if out.len() >= 16 * 1024 {
                        break;
                    }
                }
                if out.is_empty() {
                    continue;
                }
                match tokio::time::timeout(client.write_timeout, stream.write_all(&out)).await {
                    Ok(Ok(())) => {
                        if let Some(capture) = &side.capture {
                            capture.record(Dir::CyncdToCloud, SystemTime::now(), &out);
                        }
                    }
                    Ok(Err(_)) => return Some("write"),
                    Err(_) => return Some("write_stalled"),
                }
            }
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return Some("closed"),
                    Ok(n) => n,
                    Err(_) => return Some("read"),
                };
                let mut input = buf.get(..n).unwrap_or_default();
                if let Some(capture) = &side.capture {
                    capture.record(Dir::CloudToCyncd, SystemTime::now(), input);
                }
                while !input.is_empty() {
                    let taken = framer.push(input);
                    input = input.get(taken..).unwrap_or_default();
                    while let Some(next) = framer.next_packet() {
                        let Ok(packet) = next else { return Some("oversize") };
                        // Waits for room: the cloud's packets are never dropped.
                        if side.events.send(UpEvent::Packet(packet.to_vec())).await.is_err() {
                            return None;
                        }
                    }
                    if taken == 0 {
                        break;
                    }
                }
            }
        }
    }
}

/// The whole packets in `bytes` (by their headers).
fn count_packets(mut bytes: &[u8]) -> u64 {
    let mut n = 0;
    while let Some([_, _, _, hi, lo]) = bytes.first_chunk::<5>().copied() {
        n += 1;
        let size = 5 + usize::from(u16::from_be_bytes([hi, lo]));
        bytes = bytes.get(size..).unwrap_or_default();
    }
    n
}

/// A certificate's SHA-256 fingerprint as `verify` takes it (`AB:CD:…`).
pub fn fingerprint(cert: &openssl::x509::X509Ref) -> Option<String> {
    let d = cert.digest(MessageDigest::sha256()).ok()?;
    Some(
        d.iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}
