//! The device server: the accept loop and one task per connection.
//!
//! Each connection task owns its socket and a sans-IO [`Session`]: bytes read go into the
//! session, the answers it queues are written in one write per read (coalesced, in arrival
//! order), and its events update the registry. Nothing the task waits on is another
//! connection: the registry is touched only on status events, with short critical sections.
//!
//! A connection is a device only once its hello is admitted: the session holds the hello until
//! this task decides ([`Conn::decide`]): the bridge must be known when `refuse_unknown_bridges`
//! is set, and its auth code must match the bridge's pin ([`super::auth`]), a first-use pin
//! being made only then. A refused hello is never answered and never registered, so it cannot
//! replace a live session; it is counted and logged (rate-limited).
//!
//! Ownership: the route decided at the hello names the one transport that writes on the
//! connection and hears its 0x7Bs and results (see [`super::link`]); a command from the other
//! one is refused unwritten. The end of a connection ([`ConnEvent::Lost`]) is announced before
//! a connection that replaces it is registered, so no transport takes an answer on the new
//! connection for a command written on the old one.
//!
//! Bounds: at most `max_connections` connections (a semaphore; one over the cap is accepted and
//! closed at once, and counted) and `max_connections_per_ip` from one address (loopback exempt
//! unless `limit_loopback`; refused the same way); one read buffer of `max_packet` bytes and
//! the session's framer per connection; a connection without an admitted hello closes after
//! `hello_timeout_secs`; a write that stalls for `write_timeout_secs` closes the connection
//! (the device stopped reading). Every line a peer's input causes goes through the log rate
//! limits ([`crate::logging::LogLimits`]).

use super::Host;
use super::auth::Check;
use super::capture::{Capture, Dir};
use super::link::{ConnCommand, ConnEvent, WRITE_QUEUE};
use super::registry::{ConnStats, Registration};
use super::relay::{Link, UpEvent};
use crate::homes::{Listed, MeshMatch};
use crate::logging::{PeerLog, corr_id, redacted_hex};
use cync_proto::canary::{Route, Transport};
use cync_proto::catalog::DeviceType;
use cync_proto::relay::Answer;
use cync_proto::session::{CloseReason, Event, Session, SessionConfig, Step};
use cync_proto::{AuthCode, ConnId, DecodeError, LocalTime, Packet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

/// Bytes read from a connection at a time.
pub const READ_BUFFER: usize = 512;

/// Every `reason` of `cyncd_connections_closed_total`: the connection task's own endings, the
/// session's close reasons and a failed TLS handshake.
pub const CLOSE_REASONS: [&str; 11] = [
    "peer_closed",
    "read_error",
    "write_error",
    "write_stalled",
    "silent",
    "oversize",
    "app_connection",
    "replaced_or_shutdown",
    "shutdown",
    "tls_failure",
    "upstream_lost",
];

/// Every `reason` of `tcp_comm_decode_errors_total`: [`error_label`]'s, an oversize header and a
/// bad inner-frame checksum.
pub const DECODE_ERROR_REASONS: [&str; 7] = [
    "truncated",
    "length_mismatch",
    "reserved_bytes",
    "bad_size",
    "auth_length",
    "oversize",
    "bad_checksum",
];

/// Creates every known label of the connection metrics at zero, so each family is in
/// `/metrics` from the start (a label missing from the lists still counts, from its first use).
pub fn register_labels(metrics: &crate::metrics::Metrics) {
    for reason in CLOSE_REASONS {
        let _ = metrics
            .connections_closed
            .get_or_create(&[("reason", reason)]);
    }
    for reason in DECODE_ERROR_REASONS {
        let _ = metrics.decode_errors.get_or_create(&[("reason", reason)]);
    }
    for reason in super::tls::FAILURE_REASONS.into_iter().chain(["timeout"]) {
        let _ = metrics.tls_failures.get_or_create(&[("reason", reason)]);
    }
}

/// Accepts device connections until `cancel` fires, then waits for the connection tasks on
/// `tracker`.
pub async fn serve<H: Host>(
    listener: TcpListener,
    ctx: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(ctx.config().max_connections));
    let per_ip = Arc::new(PerIp::default());
    // Lines the accept loop writes are caused by peers too.
    let mut log = PeerLog::default();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if log.allow(ctx.log_limits()) {
                        warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_ip.take(peer.ip(), ctx.config()) else {
            ctx.metrics().refused("per_ip_cap");
            if log.allow(ctx.log_limits()) {
                warn!(%peer, cap = ctx.config().max_connections_per_ip, "connection refused: too many from this address");
            }
            drop(tcp);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics().connections_refused.inc();
            debug!(%peer, "connection refused: at the connection cap");
            drop(tcp);
            continue;
        };
        ctx.metrics().connections_accepted.inc();
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let cancel = cancel.child_token();
        tracker.spawn(async move {
            ctx.metrics().connections_open.inc();
            let reason = accept_and_run(tcp, peer, &ctx, cancel).await;
            ctx.metrics().connections_open.dec();
            ctx.metrics().closed(reason);
            drop(permit);
            drop(slot);
        });
    }
}

/// Open device connections per address, for `max_connections_per_ip`. An address is present
/// only while it has connections, so the map holds at most `max_connections` entries.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerIp`], given back on drop.
struct IpSlot {
    map: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A slot for a connection from `ip`, unless the address is at its cap.
    fn take(self: &Arc<Self>, ip: IpAddr, config: &crate::config::Config) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let cap = if ip.is_loopback() && !config.limit_loopback {
            usize::MAX
        } else {
            config.max_connections_per_ip
        };
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .map
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Why a hello was refused.
#[derive(Debug, Clone, Copy)]
enum HelloRefusal {
    /// Its code (`cyncd_device_auth_failures_total`).
    Auth(super::auth::Refusal),
    /// No home lists the bridge and `refuse_unknown_bridges` is set.
    UnknownBridge,
}

async fn accept_and_run<H: Host>(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<H>,
    cancel: CancellationToken,
) -> &'static str {
    let Some(acceptor) = ctx.tls() else {
        return run_connection(tcp, peer, ctx, cancel).await;
    };
    let limit = Duration::from_secs(ctx.config().handshake_timeout_secs);
    let handshake = tokio::select! {
        _ = cancel.cancelled() => return "shutdown",
        r = tokio::time::timeout(limit, super::tls::accept(acceptor, tcp)) => r,
    };
    match handshake {
        Ok(Ok(stream)) => {
            ctx.metrics().handshakes.inc();
            run_connection(stream, peer, ctx, cancel).await
        }
        Ok(Err(e)) => {
            let reason = super::tls::failure_reason(&e);
            ctx.metrics()
                .tls_failures
                .get_or_create(&[("reason", reason)])
                .inc();
            debug!(%peer, reason, error = %e, "TLS handshake failed");
            "tls_failure"
        }
        Err(_) => {
            ctx.metrics()
                .tls_failures
                .get_or_create(&[("reason", "timeout")])
                .inc();
            debug!(%peer, "TLS handshake timed out");
            "tls_failure"
        }
    }
}

/// Runs one device connection to its end and returns why it ended (a metric label).
pub async fn run_connection<S, H>(
    mut stream: S,
    peer: SocketAddr,
    ctx: &Arc<H>,
    cancel: CancellationToken,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Host,
{
    // A debug-level span: entering a span on every poll of every connection costs CPU, so at
    // info level the lifecycle events carry `peer` and `conn_id` themselves.
    let span = tracing::debug_span!("conn", %peer, conn_id = tracing::field::Empty);
    async move {
        debug!(%peer, "connected");
        let mut conn = Conn::new(peer, ctx.clone(), cancel.clone());
        let reason = conn.run(&mut stream).await;
        // Nothing more is written here: the bridge is away from now on.
        conn.queue.close();
        if let Some(registration) = conn.registration.take() {
            let id = registration.conn();
            // Commands waiting on this bridge move elsewhere now, not at their timeout. A
            // newer connection with the same id already announced this one's end.
            if registration.release() {
                conn.lost(id);
            }
        }
        // Queued commands that were never written.
        while let Ok(queued) = conn.queue.try_recv() {
            conn.unsent(queued);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        // Only a device (an admitted hello) gets a line; what else closed was logged, limited,
        // when it was refused.
        if conn.session.conn_id().is_some() && ctx.log_limits().lifecycle() {
            info!(%peer, reason, conn_id = conn.id_text(), "disconnected");
        } else {
            debug!(%peer, reason, conn_id = conn.id_text(), "disconnected");
        }
        ctx.log_limits().report_pending();
        reason
    }
    .instrument(span)
    .await
}

/// A command written into the transmit buffer, reported to its transport once flushed.
type Written = (Transport, ConnEvent);

struct Conn<H> {
    peer: SocketAddr,
    ctx: Arc<H>,
    cancel: CancellationToken,
    session: Session,
    start: Instant,
    stats: Arc<ConnStats>,
    registration: Option<Registration>,
    home: String,
    dropped_reported: u64,
    drops_reported: u64,
    writer: mpsc::Sender<ConnCommand>,
    queue: mpsc::Receiver<ConnCommand>,
    /// Decided at the hello.
    route: Option<Route>,
    /// The last sensor report (a thermostat's), applied again once the mesh listing tells
    /// which device and home the connection is.
    sensors: Option<cync_proto::SensorReport>,
    /// This connection's limit on the warnings its peer causes.
    log: PeerLog,
    /// Relay mode is configured: device bytes are framed here, packet by packet, so each can
    /// be routed (see [`super::relay`]).
    relay_mode: Option<cync_proto::Framer>,
    /// The relay, once the hello of a relayed bridge is admitted.
    relay: Option<Link>,
    /// Bytes for the device not yet written, in stream order (relay mode: cyncd's and the
    /// cloud's interleaved as they were decided).
    out: Vec<u8>,
    /// The admitted hello's bytes, for the relay.
    hello_bytes: Option<Vec<u8>>,
    /// The packet being handled answers the cloud: its 0x7B/result events are not cyncd's.
    foreign: bool,
    /// A phone-app connection relayed untouched (relay mode), and when it last sent.
    app: Option<Instant>,
    /// Where this connection's reads and writes are recorded, when capture is on.
    capture: Option<Capture>,
}

impl<H: Host> Conn<H> {
    fn new(peer: SocketAddr, ctx: Arc<H>, cancel: CancellationToken) -> Self {
        let c = ctx.config();
        let config = SessionConfig {
            max_packet: c.max_packet,
            heartbeat: c.heartbeat(),
            silence_multiple: c.silence_multiple,
            discover_mesh: c.discover_mesh,
            hello_timeout: Duration::from_secs(c.hello_timeout_secs),
            frame_escaping: c.frame_escaping(),
            ..SessionConfig::default()
        };
        let start = Instant::now();
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let relay_mode = c
            .relay
            .upstream_addr()
            .map(|_| cync_proto::Framer::new(c.max_packet));
        Self {
            peer,
            session: Session::new(config, Duration::ZERO, fastrand::u16(..)),
            capture: ctx.capture().map(|c| c.open(peer)),
            ctx,
            cancel,
            start,
            stats: Arc::default(),
            registration: None,
            home: crate::config::DEFAULT_HOME.to_string(),
            dropped_reported: 0,
            drops_reported: 0,
            writer,
            queue,
            route: None,
            sensors: None,
            log: PeerLog::default(),
            relay_mode,
            relay: None,
            out: Vec::new(),
            hello_bytes: None,
            foreign: false,
            app: None,
        }
    }

    /// Whether a warning this peer caused may be written now (see [`crate::logging`]).
    fn may_warn(&mut self) -> bool {
        self.log.allow(self.ctx.log_limits())
    }

    /// Decides on a hello the session holds: admitted when the bridge is allowed and its code
    /// matches its pin (pinning it on first use, the last check); otherwise refused before
    /// anything is answered or registered, counted and logged.
    fn decide(&mut self, now: Duration, local: LocalTime, steps: &mut Vec<Step>) {
        let Some(hello) = self.session.pending_hello() else {
            return;
        };
        let conn = hello.conn_id;
        let auth = hello.auth.clone();
        match self.verdict(conn, &auth) {
            Ok(()) => self.session.admit(now, local, steps),
            Err(refusal) => {
                self.session.refuse(steps);
                let reason = match refusal {
                    HelloRefusal::Auth(r) => {
                        self.ctx
                            .metrics()
                            .auth_failures
                            .get_or_create(&[("reason", r.label())])
                            .inc();
                        r.label()
                    }
                    HelloRefusal::UnknownBridge => {
                        self.ctx.metrics().refused("unknown_bridge");
                        "unknown_bridge"
                    }
                };
                if self.may_warn() {
                    warn!(peer = %self.peer, conn_id = %conn, reason, "hello refused");
                }
            }
        }
    }

    fn verdict(&self, conn: ConnId, auth: &AuthCode) -> Result<(), HelloRefusal> {
        let config = self.ctx.config();
        if config.refuse_unknown_bridges && self.ctx.homes().home_of_bridge(conn).is_none() {
            return Err(HelloRefusal::UnknownBridge);
        }
        let store = self.ctx.auth();
        match store.check(conn, auth).map_err(HelloRefusal::Auth)? {
            Check::Known(_) => Ok(()),
            Check::New => {
                store.pin(conn, auth).map_err(HelloRefusal::Auth)?;
                if self.ctx.log_limits().lifecycle() {
                    info!(peer = %self.peer, conn_id = %conn, "new bridge: auth code pinned on first use");
                }
                Ok(())
            }
        }
    }

    /// A device's answer to a command goes to the transport that owns this connection.
    fn answer(&self, event: ConnEvent) {
        let owner = if self.is_legacy() {
            Transport::Legacy
        } else {
            Transport::Reliable
        };
        self.ctx.deliver(owner, event);
    }

    fn is_legacy(&self) -> bool {
        self.route.is_some_and(|r| r.transport == Transport::Legacy)
    }

    /// Announces the end of the connection `id` to both transports: the owner's commands on it
    /// end or move, and the other may hold commands waiting for it.
    fn lost(&self, id: cync_proto::ConnId) {
        self.ctx.deliver(Transport::Reliable, ConnEvent::Lost(id));
        self.ctx.deliver(Transport::Legacy, ConnEvent::Lost(id));
    }

    fn id_text(&self) -> String {
        self.session
            .conn_id()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    fn local_time(&self) -> LocalTime {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let offset = self.ctx.offset().get(self.ctx.config(), unix);
        LocalTime::from_unix(i64::try_from(unix).unwrap_or(0), offset)
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S) -> &'static str {
        // A small read buffer: device packets are mostly 5–145 bytes, and a larger one (the
        // 1,024-byte 0xAB) simply takes a few reads — the framer joins them. At 10,000
        // connections every byte here is 10 kB of memory.
        let mut buf = vec![0u8; READ_BUFFER];
        let mut steps = Vec::new();
        // One cancellation future and one timer for the whole connection: creating them anew
        // on every packet costs a lock each.
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            // Re-arm only when the deadline comes earlier than the armed one. Every packet
            // pushes the silence deadline later; the armed timer then fires early, finds
            // nothing due, and is re-armed: once per silence period instead of per packet.
            let deadline = match self.app {
                // A relayed phone app: only its silence (the session never sees it).
                Some(last) => {
                    Some(last + self.ctx.config().heartbeat() * self.ctx.config().silence_multiple)
                }
                None => self.session.next_deadline().map(|d| self.start + d),
            };
            match (deadline, armed) {
                (Some(at), Some(current)) if at >= current => {}
                (Some(at), _) => {
                    sleep.as_mut().reset(at);
                    armed = Some(at);
                }
                (None, _) => armed = None,
            }
            tokio::select! {
                _ = &mut cancelled => return "replaced_or_shutdown",
                Some(command) = self.queue.recv() => {
                    if self.cancel.is_cancelled() {
                        // Drained or replaced: nothing more is written here.
                        self.unsent(command);
                        return "replaced_or_shutdown";
                    }
                    let sent = self.write_command(command);
                    if let Err(reason) = self.flush(stream).await {
                        for (owner, written) in sent {
                            if let ConnEvent::Sent { command, attempt, .. } = written {
                                self.ctx.deliver(owner, ConnEvent::Unsent { command, attempt });
                            }
                        }
                        return reason;
                    }
                    for (owner, event) in sent {
                        self.ctx.deliver(owner, event);
                    }
                }
                read = stream.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return "peer_closed",
                        Ok(n) => n,
                        Err(e) => {
                            debug!(error = %e, "read failed");
                            return "read_error";
                        }
                    };
                    let read_at = Instant::now();
                    let now = read_at.duration_since(self.start);
                    let local = self.local_time();
                    steps.clear();
                    let data = buf.get(..n).unwrap_or_default();
                    let relayed = self.relay_mode.is_some();
                    if relayed {
                        if let Err(reason) = self.receive_relayed(data, now, local, &mut steps) {
                            return reason;
                        }
                    } else {
                        self.session.receive(data, now, local, &mut steps);
                        self.decide(now, local, &mut steps);
                    }
                    if let Some(capture) = &self.capture {
                        // After the verdict, so an admitted hello names the file at once.
                        if let Some(conn) = self.session.conn_id() {
                            capture.bridge(conn);
                        }
                        capture.record(Dir::DeviceToCyncd, SystemTime::now(), data);
                    }
                    if !relayed {
                        for step in &steps {
                            self.log_step(step);
                            self.sensor_report(step);
                        }
                    }
                    if let Err(reason) = self.flush(stream).await {
                        return reason;
                    }
                    let elapsed = read_at.elapsed().as_secs_f64();
                    for step in steps.iter().filter(|s| !s.sent.is_empty()) {
                        let kind = step.bytes.first().copied().unwrap_or_default();
                        self.ctx.metrics().of_type(kind).latency.observe(elapsed);
                    }
                    if !relayed {
                        self.drain_events();
                    }
                }
                Some(event) = next_upstream(&mut self.relay) => {
                    self.on_upstream(event);
                    // Whatever else the cloud sent goes in the same write.
                    for _ in 0..64 {
                        let Some(event) = self.relay.as_mut().and_then(Link::try_next) else {
                            break;
                        };
                        self.on_upstream(event);
                    }
                    if let Err(reason) = self.flush(stream).await {
                        return reason;
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    if let Some(last) = self.app {
                        let silence = self.ctx.config().heartbeat() * self.ctx.config().silence_multiple;
                        if Instant::now() >= last + silence {
                            return "silent";
                        }
                        continue;
                    }
                    let now = Instant::now().duration_since(self.start);
                    self.avoid_cloud(now);
                    for p in self.session.on_timeout(now) {
                        let corr = if tracing::enabled!(tracing::Level::DEBUG) { corr_id() } else { String::new() };
                        self.log_out(&p, &corr);
                    }
                    if let Err(reason) = self.flush(stream).await {
                        return reason;
                    }
                }
            }
            if self.app.is_some() && self.relay.as_ref().is_some_and(|l| l.state() == "down") {
                // Nothing answers an app but the cloud: without it, the app should reconnect.
                return "upstream_lost";
            }
            if let Some(reason) = self.session.close_reason() {
                match reason {
                    CloseReason::Framing(e) => {
                        self.ctx.metrics().decode_error("oversize");
                        if self.may_warn() {
                            warn!(peer = %self.peer, error = %e, "closing: oversize packet header");
                        }
                    }
                    CloseReason::NoHello
                    | CloseReason::SecondHello
                    | CloseReason::HelloTimeout
                    | CloseReason::Unverified => {
                        self.ctx.metrics().refused(reason.label());
                        if self.may_warn() {
                            warn!(peer = %self.peer, conn_id = self.id_text(), reason = reason.label(), "closing: no acceptable hello");
                        }
                    }
                    CloseReason::Silent | CloseReason::AppConnection | CloseReason::Refused => {}
                }
                return reason.label();
            }
        }
    }

    /// A queued command that will not be written: its owner learns at once.
    fn unsent(&self, queued: ConnCommand) {
        let (command, attempt) = queued.id();
        self.ctx
            .deliver(queued.owner(), ConnEvent::Unsent { command, attempt });
    }

    /// Builds queued commands into the transmit buffer (this one and any others waiting, so
    /// they go out in one write) and returns the events to report once written.
    fn write_command(&mut self, first: ConnCommand) -> Vec<Written> {
        self.avoid_cloud(Instant::now().duration_since(self.start));
        let mut events = Vec::new();
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            let owner = queued.owner();
            let (command, attempt) = queued.id();
            next = self.queue.try_recv().ok();
            if self.route.map(|r| r.transport) != Some(owner) {
                // Only the owner writes here (and before the hello, nobody): the other
                // transport learns it was not written and takes it elsewhere.
                self.ctx
                    .deliver(owner, ConnEvent::Unsent { command, attempt });
                continue;
            }
            let built = match queued {
                ConnCommand::Send { target, action, .. } => {
                    self.session.send_command(target, action)
                }
                ConnCommand::SendLegacy { target, action, .. } => {
                    self.session.send_command_legacy(target, action)
                }
            };
            match (built, self.session.conn_id()) {
                (Some(Ok((msg, seq, packet))), Some(conn)) => {
                    let hex = self.logged(&packet);
                    let sent = ConnEvent::Sent {
                        command,
                        attempt,
                        conn,
                        owner,
                        msg,
                        seq,
                        hex,
                    };
                    events.push((owner, sent));
                }
                _ => self
                    .ctx
                    .deliver(owner, ConnEvent::Unsent { command, attempt }),
            }
        }
        events
    }

    /// Logs an outgoing command packet and returns its (redacted) hex.
    fn logged(&self, packet: &Packet) -> String {
        let corr = if tracing::enabled!(tracing::Level::DEBUG) {
            corr_id()
        } else {
            String::new()
        };
        self.log_out(packet, &corr);
        redacted_hex(&packet.to_bytes())
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), &'static str> {
        let out = if self.relay.is_none() && self.out.is_empty() {
            self.session.take_transmit()
        } else {
            self.stage_local();
            std::mem::take(&mut self.out)
        };
        if out.is_empty() {
            return Ok(());
        }
        let limit = Duration::from_secs(self.ctx.config().write_timeout_secs);
        let written = tokio::time::timeout(limit, stream.write_all(&out)).await;
        match written {
            Ok(Ok(())) => {
                if let Some(capture) = &self.capture {
                    capture.record_vec(Dir::CyncdToDevice, SystemTime::now(), out);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                Err("write_error")
            }
            Err(_) => {
                if self.may_warn() {
                    warn!(peer = %self.peer, "closing: the device stopped reading");
                }
                Err("write_stalled")
            }
        }
    }

    fn log_step(&mut self, step: &Step) {
        // Correlation ids only cost something when packets are logged.
        let corr = if tracing::enabled!(tracing::Level::DEBUG) {
            corr_id()
        } else {
            String::new()
        };
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.stats
            .last_packet_ms
            .store(u64::try_from(ms).unwrap_or(0), Ordering::Relaxed);
        let transport = self.route.map(|r| r.transport);
        match &step.packet {
            Ok(p) => {
                let bad = p.frame().is_some_and(|f| !f.checksum_ok())
                    || matches!(p.body(), Some(cync_proto::Body::Malformed(_)));
                if let Some(t) = transport {
                    self.ctx.packet(t, bad);
                }
                let counters = self.ctx.metrics().of_type(p.kind());
                if bad {
                    counters.recv_bad.inc();
                } else {
                    counters.recv_ok.inc();
                }
                debug!(
                    corr_id = %corr,
                    dir = "in",
                    r#type = p.kind(),
                    name = p.name(),
                    msg_id = p.msg_id().map(|m| m.to_string()),
                    seq = p.frame().map(|f| f.seq),
                    detail = %p.summary(),
                    hex = %redacted_hex(&step.bytes),
                    "packet"
                );
            }
            Err(e) => {
                if let Some(t) = transport {
                    self.ctx.packet(t, true);
                }
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                let kind = step.bytes.first().copied().unwrap_or_default();
                self.ctx.metrics().of_type(kind).recv_error.inc();
                self.ctx.metrics().decode_error(error_label(e));
                if self.may_warn() {
                    // At most the first 64 bytes: the line must stay smaller than the input.
                    let shown = step.bytes.get(..64).unwrap_or(&step.bytes);
                    warn!(corr_id = %corr, peer = %self.peer, dir = "in", r#type = kind, len = step.bytes.len(), error = %e, hex = %redacted_hex(shown), "undecodable packet");
                }
            }
        }
        for p in &step.sent {
            self.log_out(p, &corr);
        }
    }

    fn log_out(&self, p: &Packet, corr: &str) {
        self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics().of_type(p.kind()).sent.inc();
        debug!(
            corr_id = %corr,
            dir = "out",
            r#type = p.kind(),
            name = p.name(),
            msg_id = p.msg_id().map(|m| m.to_string()),
            seq = p.frame().map(|f| f.seq),
            hex = %redacted_hex(&p.to_bytes()),
            "packet"
        );
    }

    /// The home of this bridge from its mesh listing, when no home lists the bridge: moves the
    /// connection (and the devices it reported) there, or says why it stays.
    fn find_home(&mut self, conn: ConnId, own_type: Option<u8>, ids: &[u16]) {
        let homes = self.ctx.homes();
        let listed = homes.home_of_bridge(conn);
        match (homes.match_mesh(own_type, ids), listed) {
            (MeshMatch::One(home), None) => {
                if let Some(from) = self.ctx.registry().rehome(conn, home) {
                    if self.ctx.log_limits().lifecycle() {
                        info!(conn_id = %conn, home, from = %from, "bridge home found from its mesh listing");
                    }
                    self.home = home.to_string();
                }
            }
            // Peer-caused (any bridge can send any listing): rate-limited like other warnings.
            (MeshMatch::One(home), Some((listed, how))) if home != listed && self.may_warn() => {
                warn!(conn_id = %conn, home = listed, matches = home, "bridge listed in {listed:?} ({}) has a mesh that matches {home:?}; it stays in {listed:?} (the listing decides)", match how {
                    Listed::Configuration => "configuration",
                    Listed::Account => "account",
                });
            }
            (MeshMatch::Several(candidates), None) if self.may_warn() => {
                warn!(conn_id = %conn, home = %self.home, candidates = ?candidates, "bridge mesh matches several homes equally; it stays in {:?}. Add \"{conn}\" to the bridges of the right home in the configuration", self.home);
            }
            _ => {}
        }
    }

    /// A thermostat's sensor report (a 0x43 entry or its 0xAB) goes to the registry.
    fn sensor_report(&mut self, step: &Step) {
        let Ok(packet) = &step.packet else { return };
        if !matches!(packet.kind(), 0x43 | 0xab) {
            return;
        }
        let (Some(report), Some(conn)) = (packet.sensors(), self.session.conn_id()) else {
            return;
        };
        debug!(conn_id = %conn, sensors = report.sensors.len(), "sensor report");
        self.ctx
            .registry()
            .sensors(&self.ctx.homes(), &self.home, conn, &report);
        self.sensors = Some(report);
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Hello(conn) => {
                    let homes = self.ctx.homes();
                    self.home = self
                        .ctx
                        .registry()
                        .learned_home(conn)
                        // Learned from its mesh: still a home open to it, and not listed elsewhere.
                        .filter(|h| homes.home(h).is_some_and(|h| !h.closed))
                        .filter(|_| homes.home_of_bridge(conn).is_none())
                        .unwrap_or_else(|| homes.home_at_hello(conn).to_string());
                    tracing::Span::current().record("conn_id", tracing::field::display(conn));
                    self.ctx.metrics().hellos.inc();
                    let route = self.ctx.route(conn);
                    self.route = Some(route);
                    // The legacy transport never recognised repeated packets.
                    self.session
                        .set_dedup(route.transport == Transport::Reliable);
                    if self.ctx.log_limits().lifecycle() {
                        info!(peer = %self.peer, conn_id = %conn, home = %self.home, "hello");
                        info!(peer = %self.peer, conn_id = %conn, transport = route.transport.name(), shadow = route.shadow, "routed");
                    }
                    // One hello per session (a second one closes it), so a registration here is
                    // this connection's first.
                    if self.ctx.registry().is_connected(conn) {
                        // The session this one replaces ends before anything of this one can
                        // be written (its own end, if it comes first, announces it again:
                        // harmless, nothing is on this connection yet).
                        self.lost(conn);
                    }
                    self.registration = Some(self.ctx.registry().register(
                        conn,
                        self.peer,
                        &self.home,
                        self.stats.clone(),
                        self.cancel.clone(),
                        Some(self.writer.clone()),
                        route,
                    ));
                    // Commands waiting for this bridge go now, through its owner.
                    self.ctx
                        .deliver(Transport::Reliable, ConnEvent::Connected(conn));
                    self.start_relay(conn);
                }
                Event::AppConnection(conn) => {
                    if self.ctx.log_limits().lifecycle() {
                        info!(peer = %self.peer, conn_id = %conn, "phone-app connection: not served, closing");
                    }
                }
                Event::Status(status, source) => {
                    if let Some(conn) = self.session.conn_id() {
                        let applied = self.ctx.registry().apply(
                            &self.home,
                            conn,
                            status,
                            source,
                            Instant::now(),
                        );
                        if let Err(refusal) = applied {
                            // Not this bridge's to report: it confirms no command either.
                            self.ctx
                                .metrics()
                                .statuses_refused
                                .get_or_create(&[("reason", refusal.label())])
                                .inc();
                            if self.may_warn() {
                                warn!(peer = %self.peer, conn_id = %conn, home = %self.home, mesh_id = status.id.0, reason = refusal.label(), "status refused");
                            }
                            continue;
                        }
                        let event = ConnEvent::Status {
                            home: self.home.clone(),
                            status,
                        };
                        // Reports confirm commands of either transport (the shadow's too).
                        if self.route.is_some_and(|r| r.shadow) {
                            self.ctx.deliver(Transport::Legacy, event.clone());
                        }
                        self.ctx.deliver(Transport::Reliable, event);
                    }
                }
                Event::Firmware(fw) => {
                    if let Some(conn) = self.session.conn_id() {
                        let kind = match fw.kind {
                            cync_proto::FirmwareKind::Device => "device",
                            cync_proto::FirmwareKind::Network => "network",
                        };
                        let version = fw.version();
                        if self.ctx.registry().firmware(conn, kind, version.clone())
                            && self.ctx.log_limits().lifecycle()
                        {
                            info!(peer = %self.peer, conn_id = %conn, kind, version = %version, "firmware");
                        }
                    }
                }
                Event::MeshLearned {
                    device_type,
                    devices,
                } => {
                    if let Some(conn) = self.session.conn_id() {
                        let ids: Vec<u16> = devices.iter().map(|d| d.id.0).collect();
                        if self.ctx.log_limits().lifecycle() {
                            info!(peer = %self.peer, conn_id = %conn, devices = ?ids, device_type, "mesh learned");
                        }
                        self.find_home(conn, device_type, &ids);
                        self.ctx
                            .registry()
                            .learn_mesh(conn, &self.home, device_type, &ids);
                        if let Some(report) = &self.sensors {
                            // Now the registry knows the bridge's own device and home.
                            self.ctx.registry().sensors(
                                &self.ctx.homes(),
                                &self.home,
                                conn,
                                report,
                            );
                        }
                        if let Some(code) =
                            device_type.filter(|c| !DeviceType::of(Some(*c)).is_known())
                        {
                            let what = format!("the Wi-Fi device {conn}");
                            self.ctx.registry().unknown_type(&self.home, code, &what);
                        }
                    }
                }
                Event::DecodeError(_) => {}
                Event::BadChecksum(kind) => {
                    self.ctx.metrics().decode_error("bad_checksum");
                    if self.may_warn() {
                        warn!(peer = %self.peer, r#type = kind, "inner frame checksum mismatch");
                    }
                }
                // An answer to the cloud's request is never credited to a command of cyncd's.
                Event::DataAck(_) | Event::CommandResult { .. } if self.foreign => {}
                Event::DataAck(msg) => {
                    if let Some(conn) = self.session.conn_id() {
                        self.answer(ConnEvent::Ack { conn, msg });
                    }
                }
                Event::CommandResult { seq, code, .. } => {
                    if let Some(conn) = self.session.conn_id() {
                        self.answer(ConnEvent::Result { conn, seq, code });
                    }
                }
                Event::AnnounceReplied => {}
            }
        }
        let drops = self.session.idempotent_drops();
        if drops > self.drops_reported {
            self.ctx
                .metrics()
                .idempotent_drops
                .inc_by(drops - self.drops_reported);
            self.drops_reported = drops;
        }
        let dropped = self.session.dropped_events();
        if dropped > self.dropped_reported {
            self.ctx
                .metrics()
                .events_dropped
                .inc_by(dropped - self.dropped_reported);
            self.dropped_reported = dropped;
        }
    }
}

/// The next event from a relay's upstream task; never, without a relay.
async fn next_upstream(relay: &mut Option<Link>) -> Option<UpEvent> {
    match relay {
        Some(link) => link.next().await,
        None => std::future::pending().await,
    }
}

/// Relay mode (see [`super::relay`] and [`cync_proto::relay`]).
impl<H: Host> Conn<H> {
    /// Frames a read into whole packets and handles each: routed by the relay (once there is
    /// one), then handled by the session as in normal mode.
    fn receive_relayed(
        &mut self,
        mut data: &[u8],
        now: Duration,
        local: LocalTime,
        steps: &mut Vec<Step>,
    ) -> Result<(), &'static str> {
        loop {
            let Some(framer) = self.relay_mode.as_mut() else {
                return Ok(());
            };
            let taken = framer.push(data);
            data = data.get(taken..).unwrap_or_default();
            let mut packets = Vec::new();
            while let Some(next) = framer.next_packet() {
                match next {
                    Ok(p) => packets.push(p.to_vec()),
                    Err(e) => {
                        self.ctx.metrics().decode_error("oversize");
                        if self.may_warn() {
                            warn!(peer = %self.peer, error = %e, "closing: oversize packet header");
                        }
                        return Err("oversize");
                    }
                }
            }
            for packet in packets {
                self.relayed_packet(&packet, now, local, steps);
                if self.session.close_reason().is_some() {
                    return Ok(());
                }
            }
            if data.is_empty() || taken == 0 {
                return Ok(());
            }
        }
    }

    /// One whole device packet in relay mode.
    fn relayed_packet(
        &mut self,
        packet: &[u8],
        now: Duration,
        local: LocalTime,
        steps: &mut Vec<Step>,
    ) {
        if self.app.is_some() || (packet.first() == Some(&0x13) && self.start_app(packet)) {
            self.pipe_app(packet, now);
            return;
        }
        let answer = match self.relay.as_mut() {
            Some(link) => {
                let verdict = link.core.from_device(packet, now);
                if verdict.up {
                    link.send_up(packet.to_vec(), 1);
                }
                link.report(verdict.kept, verdict.dropped, "up");
                debug!(dir = "up", r#type = packet.first().copied().unwrap_or_default(), up = verdict.up, kept = verdict.kept.map(|k| k.label()), dropped = verdict.dropped.map(|d| d.label()), hex = %redacted_hex(packet), "relay");
                verdict.answer
            }
            None => Answer::None,
        };
        if answer == Answer::Cloud && matches!(packet.first(), Some(0x7b | 0xab)) {
            // The device acknowledging the cloud: nothing to answer, no state, not cyncd's.
            self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let first = steps.len();
        self.session.receive(packet, now, local, steps);
        self.decide(now, local, steps);
        for step in steps.get(first..).unwrap_or_default() {
            self.log_step(step);
            self.sensor_report(step);
            if matches!(step.packet, Ok(Packet::Hello(_))) && !step.sent.is_empty() {
                self.hello_bytes = Some(step.bytes.clone());
            }
        }
        self.foreign = answer == Answer::Cloud;
        self.drain_events();
        self.foreign = false;
    }

    /// Starts relaying bridge `conn` when relay mode is on and the bridge is chosen.
    fn start_relay(&mut self, conn: ConnId) {
        let Some(client) = self.ctx.relay() else {
            return;
        };
        if self.relay_mode.is_none() || !self.ctx.config().relay.relays(conn) {
            return;
        }
        let mut link = Link::start(
            client.clone(),
            conn,
            self.ctx.metrics().clone(),
            self.cancel.clone(),
            self.stats.clone(),
            cync_proto::relay::Relay::new(),
            self.capture.clone(),
        );
        if let Some(hello) = self.hello_bytes.take() {
            let verdict = link
                .core
                .from_device(&hello, Instant::now().duration_since(self.start));
            link.report(verdict.kept, verdict.dropped, "up");
        }
        if self.ctx.log_limits().lifecycle() {
            info!(peer = %self.peer, conn_id = %conn, upstream = %client.addr, "relaying to the upstream");
        }
        self.relay = Some(link);
        self.ctx.registry().touch();
    }

    /// A connection whose first packet is a phone app's `0x13`: relayed untouched when relay
    /// mode relays anything, instead of being closed. Returns whether it is.
    fn start_app(&mut self, first: &[u8]) -> bool {
        if self.relay.is_some() || self.session.conn_id().is_some() {
            return false;
        }
        let Some(client) = self.ctx.relay() else {
            return false;
        };
        if !self.ctx.config().relay.relays_apps() {
            return false;
        }
        let id = ConnId::read(first, 6).unwrap_or_default();
        let link = Link::start(
            client.clone(),
            id,
            self.ctx.metrics().clone(),
            self.cancel.clone(),
            self.stats.clone(),
            cync_proto::relay::Relay::app(),
            self.capture.clone(),
        );
        if self.ctx.log_limits().lifecycle() {
            info!(peer = %self.peer, app_id = %id, upstream = %client.addr, "phone-app connection: relayed to the upstream");
        }
        self.relay = Some(link);
        self.app = Some(Instant::now());
        true
    }

    /// One packet of a relayed phone app: up, untouched.
    fn pipe_app(&mut self, packet: &[u8], now: Duration) {
        self.app = Some(Instant::now());
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        if let Some(link) = self.relay.as_mut() {
            let verdict = link.core.from_device(packet, now);
            if verdict.up {
                link.send_up(packet.to_vec(), 1);
            }
            link.report(verdict.kept, verdict.dropped, "up");
            debug!(dir = "up", app = true, r#type = packet.first().copied().unwrap_or_default(), up = verdict.up, hex = %redacted_hex(packet), "relay");
        }
    }

    /// What the upstream task reports.
    fn on_upstream(&mut self, event: UpEvent) {
        match event {
            UpEvent::Connected(epoch) => {
                if let Some(link) = self.relay.as_mut() {
                    link.connected(epoch);
                }
                if self.ctx.log_limits().lifecycle() {
                    info!(peer = %self.peer, conn_id = self.id_text(), epoch, "relay: upstream connected");
                }
                self.ctx.registry().touch();
            }
            UpEvent::Lost(reason) => {
                let was_up = self.relay.as_ref().is_some_and(|l| l.state() == "up");
                if let Some(link) = self.relay.as_mut() {
                    link.lost();
                }
                // Caused by the upstream, not the device, but it repeats as fast as the backoff
                // allows: limited like a peer's warnings.
                if self.may_warn() {
                    warn!(peer = %self.peer, conn_id = self.id_text(), reason, "relay: upstream {}; cyncd answers the device and retries", if was_up { "lost" } else { "unreachable" });
                }
                if was_up {
                    self.ctx.registry().touch();
                }
            }
            UpEvent::Packet(bytes) => {
                // What cyncd wrote before this packet goes before it.
                self.stage_local();
                let now = Instant::now().duration_since(self.start);
                let Some(link) = self.relay.as_mut() else {
                    return;
                };
                let verdict = link.core.from_cloud(&bytes, now);
                link.report(verdict.kept, None, "down");
                debug!(dir = "down", r#type = bytes.first().copied().unwrap_or_default(), down = verdict.down, kept = verdict.kept.map(|k| k.label()), hex = %redacted_hex(&bytes), "relay");
                if verdict.down {
                    self.ctx.metrics().relay.relayed("down", 1, bytes.len());
                    self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    self.expect_cloud_command(&bytes);
                    self.out.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// A command of the cloud's on its way to the device: the registry expects what it asks
    /// for, so the report showing it applies as for one of cyncd's own commands — also while
    /// the hold after cyncd's last command to that device lasts.
    fn expect_cloud_command(&self, bytes: &[u8]) {
        if bytes.first() != Some(&0x73) {
            return;
        }
        let Ok(packet) = Packet::decode(bytes) else {
            return;
        };
        let Some((cync_proto::command::Target::Device(mesh), action)) =
            packet.frame().and_then(cync_proto::Action::from_frame)
        else {
            return;
        };
        let id = CLOUD_COMMANDS.fetch_add(1, Ordering::Relaxed) | CLOUD_COMMAND_BIT;
        let now = Instant::now();
        self.ctx.registry().expect(
            cync_proto::delivery::CommandId(id),
            &self.home,
            &[(mesh, 1)],
            action,
            None,
            now,
            now + CLOUD_COMMAND_EXPECTED,
        );
    }

    /// Moves what the session wrote into the outgoing bytes, recording its requests with the
    /// relay (their answers are cyncd's).
    fn stage_local(&mut self) {
        let local = self.session.take_transmit();
        if local.is_empty() {
            return;
        }
        if let Some(link) = self.relay.as_mut() {
            link.core
                .local_to_device(&local, Instant::now().duration_since(self.start));
            link.report(None, None, "up");
        }
        self.out.extend_from_slice(&local);
    }

    /// Keeps the session's next seqs and message ids clear of the cloud's.
    fn avoid_cloud(&mut self, now: Duration) {
        if let Some(link) = self.relay.as_mut() {
            self.session.set_avoid(link.core.avoid(now));
        }
    }
}

/// Ids of the cloud's commands seen passing through the relay, as the registry's expectations
/// know them: the top bit set, so they never meet cyncd's own (Unix milliseconds << 20).
static CLOUD_COMMANDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const CLOUD_COMMAND_BIT: u64 = 1 << 63;
/// How long the registry expects the report of a cloud command (the cloud trace: 78–1,015 ms).
const CLOUD_COMMAND_EXPECTED: Duration = Duration::from_secs(5);

/// A bounded metric label for a decode error.
pub fn error_label(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Truncated(_) => "truncated",
        DecodeError::LengthMismatch { .. } => "length_mismatch",
        DecodeError::Reserved(_) => "reserved_bytes",
        DecodeError::BadSize { .. } => "bad_size",
        DecodeError::AuthLength { .. } => "auth_length",
    }
}
