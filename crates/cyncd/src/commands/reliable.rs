//! The command service: the async shell around the sans-IO [`Dispatcher`].
//!
//! One task owns the dispatcher. Submissions arrive on a bounded channel (full: the command
//! ends `queue_full` at once); events from connection tasks (written, 0x7B, result, status,
//! connection lost) arrive on another bounded channel, sent with `try_send` so a busy service
//! never blocks a connection's reader (a dropped event is counted, and the command it concerned
//! falls back on its timers). Transmits go to each connection's bounded write queue; a full
//! queue means the device stopped reading (`backpressure`).
//!
//! Every command's events are kept in a bounded ring for `GET /api/trace/{id}` and logged at
//! info with its `command_id`, so one grep tells the whole story.
//!
//! Each outcome is also counted on the bridge the command was last handed to
//! ([`crate::devices::registry::ConnStats::count_outcome`]), for the per-bridge view of the web page and
//! `GET /api/connections`; commands never handed to a bridge (superseded while queued, no
//! bridge at all) count on none.
//!
//! The service is also where a command without a connection waits, whichever transport will
//! carry it (the rule is in [`super::transport`]): it writes only on connections the reliable
//! transport owns. When the connection chosen for an attempt belongs to legacy, the command is
//! handed to the legacy transport unwritten, with its waiter, deadline and attempts; legacy
//! hands back the commands it could not write. A bridge that connects wakes the commands
//! waiting for it. A 0x7B that answers none of its commands is counted
//! (`tcp_comm_unmatched_answers_total{transport="reliable"}`).

use super::canary::Canary;
use super::legacy::{Legacy, LegacyEvent};
use super::transport::{Latest, Moving};
use crate::devices::link::{ConnCommand, ConnEvent};
use crate::devices::registry::{Registry, Settled};
use crate::metrics::Metrics;
use cync_proto::ConnId;
use cync_proto::canary::Transport;
use cync_proto::delivery::{
    CommandId, DeliveryConfig, Dispatcher, Outcome, Output, Request, TraceEvent,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Submissions waiting for the service.
pub const SUBMIT_QUEUE: usize = 4096;
/// Connection events waiting for the service.
pub const EVENT_QUEUE: usize = 65_536;
/// Commands whose traces are kept (oldest dropped first).
pub const TRACE_COMMANDS: usize = 10_000;
/// Events kept per command trace.
pub const TRACE_EVENTS: usize = 64;

/// A command's result as the API returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Completion {
    /// The command id.
    pub command_id: String,
    /// `applied`, `rejected`, `no_ack`, `failed`, `superseded`, `queue_full`, `backpressure`.
    pub outcome: &'static str,
    /// Attempts made.
    pub attempts: u8,
    /// Submit → outcome.
    pub latency_ms: f64,
}

impl Completion {
    /// A command refused at once because its transport's queue is full.
    pub fn refused(id: CommandId) -> Self {
        Self {
            command_id: id.to_string(),
            outcome: Outcome::QueueFull.name(),
            attempts: 0,
            latency_ms: 0.0,
        }
    }
}

/// A channel for a command's outcome when the caller waits for it, or nothing.
pub fn waiter(
    wait: bool,
) -> (
    Option<oneshot::Sender<Completion>>,
    Option<oneshot::Receiver<Completion>>,
) {
    if wait {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

/// One trace event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceRecord {
    /// Wall-clock time, RFC 3339.
    pub at: String,
    /// Event name.
    pub event: &'static str,
    /// Details, flattened into the event object.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

enum Msg {
    Submit {
        req: Request,
        reply: Option<oneshot::Sender<Completion>>,
    },
    /// A command legacy could not write; `gone` is the bridge that failed it.
    Adopt {
        moving: Moving,
        gone: Option<ConnId>,
    },
}

/// Handle to the command service.
#[derive(Debug, Clone)]
pub struct Commands {
    submit: mpsc::Sender<Msg>,
    events: mpsc::Sender<ConnEvent>,
    traces: Arc<Mutex<Traces>>,
    counter: Arc<AtomicU64>,
    dropped_events: Arc<AtomicU64>,
    sizes: Arc<Mutex<cync_proto::delivery::Sizes>>,
    done: Arc<tokio::sync::watch::Sender<u64>>,
    latest: Arc<Latest>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Submit { req, .. } => write!(f, "Submit({})", req.id),
            Msg::Adopt { moving, .. } => write!(f, "Adopt({})", moving.req.id),
        }
    }
}

#[derive(Debug, Default)]
struct Traces {
    map: HashMap<CommandId, Vec<TraceRecord>>,
    order: VecDeque<CommandId>,
}

impl Commands {
    /// Starts the service task; `legacy` takes the commands whose connection it owns.
    pub fn start(
        config: DeliveryConfig,
        registry: Registry,
        metrics: Metrics,
        canary: Arc<Canary>,
        legacy: Legacy,
        cancel: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (submit, submit_rx) = mpsc::channel(SUBMIT_QUEUE);
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let handle = Self {
            submit,
            events,
            traces: Arc::default(),
            counter: Arc::default(),
            dropped_events: Arc::default(),
            sizes: Arc::default(),
            done: Arc::new(tokio::sync::watch::Sender::new(0)),
            latest: Arc::default(),
        };
        let service = Service {
            dispatcher: Dispatcher::new(config),
            registry,
            metrics,
            canary,
            legacy,
            latest: handle.latest.clone(),
            waiters: HashMap::new(),
            start: Instant::now(),
            traces: handle.traces.clone(),
            sizes: handle.sizes.clone(),
            last_sent: None,
            done: handle.done.clone(),
            via: HashMap::new(),
        };
        tracker.spawn(service.run(submit_rx, events_rx, cancel));
        handle
    }

    /// A new time-sortable command id: Unix milliseconds, then a counter.
    pub fn new_id(&self) -> CommandId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xfffff;
        CommandId((u64::try_from(ms).unwrap_or(0) << 20) | n)
    }

    /// Submits a command; the receiver yields its completion (`None` when nobody waits).
    pub fn submit(
        &self,
        req: Request,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Completion>>, Completion> {
        let id = req.id;
        let (tx, rx) = waiter(wait);
        match self.submit.try_send(Msg::Submit { req, reply: tx }) {
            Ok(()) => Ok(rx),
            Err(_) => Err(Completion::refused(id)),
        }
    }

    /// Takes back a command legacy could not write (its connection ended first, or its bridge
    /// was gone); it waits for a connection like any other. Gives it back when the service's
    /// queue is full (boxed: the refusal is rare and a command is large).
    pub fn adopt(&self, moving: Moving, gone: Option<ConnId>) -> Result<(), Box<Moving>> {
        match self.submit.try_reserve() {
            Ok(permit) => {
                permit.send(Msg::Adopt { moving, gone });
                Ok(())
            }
            Err(_) => Err(Box::new(moving)),
        }
    }

    /// The newest command per target and attribute, noted by the front door
    /// ([`super::control::submit`]) for both transports.
    pub fn latest(&self) -> &Latest {
        &self.latest
    }

    /// Reports a connection event without ever waiting (a full queue drops it and counts).
    pub fn event(&self, event: ConnEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped on a full queue.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// Adds an event to a command's trace (for the legacy transport, which shares the ring).
    pub fn trace_event(&self, id: CommandId, event: &'static str, detail: &[(&str, String)]) {
        push_event(&self.traces, id, event, detail);
    }

    /// A command's trace, oldest event first.
    pub fn trace(&self, id: CommandId) -> Option<Vec<TraceRecord>> {
        self.traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .get(&id)
            .cloned()
    }

    /// A receiver that sees every later command outcome (for live views and tests).
    pub fn watch_done(&self) -> tokio::sync::watch::Receiver<u64> {
        self.done.subscribe()
    }

    /// Resolves once the service has stopped (the server is shutting down): long-lived
    /// answers such as the web page's event stream end then, so shutdown does not wait on them.
    pub async fn stopped(&self) {
        self.submit.closed().await;
    }

    /// The dispatcher's structure sizes as of its last step.
    pub fn sizes(&self) -> cync_proto::delivery::Sizes {
        *self
            .sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Service {
    dispatcher: Dispatcher,
    registry: Registry,
    metrics: Metrics,
    canary: Arc<Canary>,
    /// Takes the commands whose chosen connection legacy owns.
    legacy: Legacy,
    latest: Arc<Latest>,
    waiters: HashMap<CommandId, oneshot::Sender<Completion>>,
    start: Instant,
    traces: Arc<Mutex<Traces>>,
    sizes: Arc<Mutex<cync_proto::delivery::Sizes>>,
    /// The packet just written (hex, bridge, the connection's owner), for the trace's `sent`
    /// event.
    last_sent: Option<(CommandId, String, ConnId, Transport)>,
    done: Arc<tokio::sync::watch::Sender<u64>>,
    /// The bridge each live command was last handed to; an entry lives from its first transmit
    /// to its outcome, so it is bounded by the dispatcher's own bound on live commands.
    via: HashMap<CommandId, ConnId>,
}

impl Service {
    async fn run(
        mut self,
        mut submit: mpsc::Receiver<Msg>,
        mut events: mpsc::Receiver<ConnEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            let deadline = self.dispatcher.next_deadline().map(|d| self.start + d);
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = submit.recv() => {
                    let now = self.now();
                    match msg {
                        None => break,
                        Some(Msg::Submit { req, reply }) => {
                            if let Some(reply) = reply {
                                self.waiters.insert(req.id, reply);
                            }
                            self.dispatcher.submit(req, now);
                        }
                        Some(Msg::Adopt { moving, gone }) => self.adopt(moving, gone, now),
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else { break };
                    self.event(event);
                    self.drive();
                    // Drain what else is waiting before acting: one pass per burst.
                    while let Ok(event) = events.try_recv() {
                        self.event(event);
                        self.drive();
                    }
                }
                () = sleep => {
                    let now = self.now();
                    self.dispatcher.on_timeout(now);
                }
            }
            self.drive();
        }
        // Shutdown: whoever waits learns the command did not finish.
        for (id, waiter) in self.waiters.drain() {
            let _ = waiter.send(Completion {
                command_id: id.to_string(),
                outcome: Outcome::Failed.name(),
                attempts: 0,
                latency_ms: 0.0,
            });
        }
    }

    fn now(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    fn event(&mut self, event: ConnEvent) {
        let now = self.now();
        match event {
            ConnEvent::Sent {
                command,
                attempt,
                conn,
                owner,
                msg,
                seq,
                hex,
            } => {
                info!(command_id = %command, attempt, msg_id = %msg, seq = seq.0, hex = %hex, "command sent");
                self.last_sent = Some((command, hex, conn, owner));
                self.dispatcher.sent(command, attempt, msg, seq, now);
            }
            ConnEvent::SendFailed { command, attempt } => {
                self.dispatcher.send_failed(command, attempt, now);
            }
            ConnEvent::Unsent { command, attempt } => {
                self.dispatcher.unreachable(command, attempt, now);
            }
            ConnEvent::Ack { conn, msg } => {
                if !self.dispatcher.ack(conn, msg, now) {
                    self.metrics.unmatched_answer(Transport::Reliable);
                }
            }
            ConnEvent::Result { conn, seq, code } => self.dispatcher.result(conn, seq, code, now),
            ConnEvent::Status { home, status } => self.dispatcher.status(&home, &status, now),
            ConnEvent::Connected(conn) => self.dispatcher.connected(conn, now),
            ConnEvent::Lost(conn) => self.dispatcher.connection_lost(conn, now),
        }
    }

    /// A command legacy gives back: it waits here for a connection, unless a newer command
    /// for its target and attribute came since (then it is superseded: it would undo it).
    fn adopt(&mut self, moving: Moving, gone: Option<ConnId>, now: Duration) {
        let id = moving.req.id;
        let (moved, reply) = moving.into_moved(self.start);
        if let Some(reply) = reply {
            self.waiters.insert(id, reply);
        }
        if self.latest.newer(&moved.req) {
            self.record(id, &TraceEvent::Done(Outcome::Superseded));
            let latency = now.saturating_sub(moved.submitted);
            self.complete(id, Outcome::Superseded, moved.attempts, latency);
            self.done.send_modify(|n| *n = n.wrapping_add(1));
            return;
        }
        self.dispatcher.adopt(moved, gone, now);
    }

    /// Hands attempt `attempt` of `command` to legacy, which owns the connection `conn` chosen
    /// for it. A full legacy queue counts as a full write queue (the command moves to another
    /// bridge, or ends `backpressure`).
    fn hand_to_legacy(&mut self, command: CommandId, attempt: u8, conn: ConnId, shadow: bool) {
        let now = self.now();
        let Some(permit) = self.legacy.reserve() else {
            self.metrics.queue_full.inc();
            warn!(command_id = %command, conn_id = %conn, "legacy queue full: cannot hand the command over");
            self.dispatcher.send_failed(command, attempt, now);
            return;
        };
        let Some(moved) = self.dispatcher.hand_off(command, attempt, now) else {
            return;
        };
        self.via.remove(&command);
        let reply = self.waiters.remove(&command);
        info!(command_id = %command, conn_id = %conn, "command handed to legacy, which owns the connection");
        push_event(
            &self.traces,
            command,
            "moved",
            &[("to", "legacy".into()), ("bridge", conn.to_string())],
        );
        let mut moving = Moving::from_moved(moved, self.start, reply);
        // Legacy writes once, on the connection chosen here.
        moving.req.bridges = vec![conn];
        permit.send(LegacyEvent::Adopt {
            moving,
            conn,
            shadow,
        });
    }

    /// Carries out everything the dispatcher asked for.
    fn drive(&mut self) {
        let mut finished = false;
        while let Some(out) = self.dispatcher.poll() {
            match out {
                Output::Transmit {
                    conn,
                    command,
                    attempt,
                    target,
                    action,
                } => {
                    let writer = match self.registry.writer(conn) {
                        Some((route, _)) if route.transport == Transport::Legacy => {
                            self.hand_to_legacy(command, attempt, conn, route.shadow);
                            continue;
                        }
                        writer => writer,
                    };
                    self.via.insert(command, conn);
                    let sent = writer.map(|(_, w)| {
                        w.try_send(ConnCommand::Send {
                            command,
                            attempt,
                            target,
                            action,
                        })
                    });
                    match sent {
                        Some(Ok(())) => {}
                        Some(Err(mpsc::error::TrySendError::Full(_))) => {
                            self.metrics.queue_full.inc();
                            warn!(command_id = %command, conn_id = %conn, "write queue full: the bridge stopped reading");
                            let now = self.now();
                            self.dispatcher.send_failed(command, attempt, now);
                        }
                        _ => {
                            // The bridge is between connections: retry after a backoff.
                            let now = self.now();
                            self.dispatcher.unreachable(command, attempt, now);
                        }
                    }
                }
                Output::Done {
                    command,
                    outcome,
                    attempts,
                    latency,
                } => {
                    self.complete(command, outcome, attempts, latency);
                    finished = true;
                }
                Output::Trace { command, event, .. } => {
                    if let TraceEvent::Ack { rtt, .. } = &event {
                        self.metrics.ack_rtt.observe(rtt.as_secs_f64());
                    }
                    if let TraceEvent::Retry { reason, .. } = &event {
                        self.metrics.retransmit(reason);
                        info!(command_id = %command, reason, "command retry");
                    }
                    self.record(command, &event);
                }
            }
        }
        let sizes = self.dispatcher.sizes();
        self.metrics
            .in_flight
            .set(i64::try_from(sizes.in_flight).unwrap_or(i64::MAX));
        self.metrics
            .send_queue
            .set(i64::try_from(sizes.queued).unwrap_or(i64::MAX));
        *self
            .sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sizes;
        // Announced after the sizes are current, so a watcher sees them.
        if finished {
            self.done.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Counts, reports and announces a command's outcome; its devices' state learns it.
    fn complete(&mut self, command: CommandId, outcome: Outcome, attempts: u8, latency: Duration) {
        self.registry
            .settle(command, settled(outcome), Instant::now());
        self.metrics
            .commands
            .get_or_create(&[("outcome", outcome.name())])
            .inc();
        self.metrics.command_latency.observe(latency.as_secs_f64());
        if outcome == Outcome::NoAck {
            self.metrics.ack_timeouts.inc();
        }
        self.canary.command(
            Transport::Reliable,
            cync_proto::canary::CommandSample {
                applied: outcome == Outcome::Applied,
                superseded: outcome == Outcome::Superseded,
                queue_full: matches!(outcome, Outcome::QueueFull | Outcome::Backpressure),
                latency,
            },
        );
        if let Some(conn) = self.via.remove(&command) {
            if let Some(stats) = self.registry.conn_stats(conn) {
                stats.count_outcome(outcome);
            }
        }
        let completion = Completion {
            command_id: command.to_string(),
            outcome: outcome.name(),
            attempts,
            latency_ms: latency.as_secs_f64() * 1000.0,
        };
        info!(command_id = %command, outcome = outcome.name(), attempts, latency_ms = completion.latency_ms, "command done");
        if let Some(w) = self.waiters.remove(&command) {
            let _ = w.send(completion);
        }
    }

    fn record(&mut self, command: CommandId, event: &TraceEvent) {
        let (name, mut detail) = describe(event);
        if name == "sent" {
            if let Some((id, hex, conn, owner)) = self.last_sent.take() {
                if id == command {
                    detail.insert("hex".into(), serde_json::Value::String(hex));
                    detail.insert("bridge".into(), serde_json::Value::from(conn.to_string()));
                    detail.insert("owner".into(), serde_json::Value::from(owner.name()));
                    detail.insert("transport".into(), serde_json::Value::from("reliable"));
                }
            }
        }
        let record = TraceRecord {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            event: name,
            detail,
        };
        push_trace(&self.traces, command, record);
    }
}

/// What an outcome says about the state of the command's devices: `applied` is the device's
/// word (an `f9` result, or a report showing it); superseded and refused-at-the-door commands
/// were never sent; anything else may have been carried out after all (a group's members act
/// even when the bridge's `f9` result is lost and its bare `0x7B` reads as a refusal).
pub fn settled(outcome: Outcome) -> Settled {
    match outcome {
        Outcome::Applied => Settled::Applied,
        Outcome::Superseded | Outcome::QueueFull => Settled::NotApplied,
        Outcome::Rejected | Outcome::NoAck | Outcome::Failed | Outcome::Backpressure => {
            Settled::Unknown
        }
    }
}

/// Appends an event with text details to a command's trace.
fn push_event(
    traces: &Mutex<Traces>,
    command: CommandId,
    event: &'static str,
    detail: &[(&str, String)],
) {
    let record = TraceRecord {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        event,
        detail: detail
            .iter()
            .map(|(k, v)| ((*k).to_string(), serde_json::Value::String(v.clone())))
            .collect(),
    };
    push_trace(traces, command, record);
}

/// Appends to a command's trace: at most [`TRACE_COMMANDS`] commands (oldest forgotten first),
/// [`TRACE_EVENTS`] events each (later ones dropped).
fn push_trace(traces: &Mutex<Traces>, command: CommandId, record: TraceRecord) {
    let mut traces = traces
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !traces.map.contains_key(&command) {
        if traces.order.len() >= TRACE_COMMANDS {
            if let Some(old) = traces.order.pop_front() {
                traces.map.remove(&old);
            }
        }
        traces.order.push_back(command);
    }
    let list = traces.map.entry(command).or_default();
    if list.len() < TRACE_EVENTS {
        list.push(record);
    }
}

fn describe(event: &TraceEvent) -> (&'static str, serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let mut d = serde_json::Map::new();
    let name = match event {
        TraceEvent::Submitted => "submitted",
        TraceEvent::Queued { ahead } => {
            d.insert("ahead".into(), json!(ahead));
            "queued"
        }
        TraceEvent::Attempt { attempt, conn, rto } => {
            d.insert("attempt".into(), json!(attempt));
            d.insert("bridge".into(), json!(conn.to_string()));
            d.insert("rto_ms".into(), json!(rto.as_millis()));
            "attempt"
        }
        TraceEvent::Sent { attempt, msg, seq } => {
            d.insert("attempt".into(), json!(attempt));
            d.insert("msg_id".into(), json!(msg.to_string()));
            d.insert("seq".into(), json!(seq.0));
            "sent"
        }
        TraceEvent::Ack { attempt, rtt } => {
            d.insert("attempt".into(), json!(attempt));
            d.insert("rtt_ms".into(), json!(rtt.as_secs_f64() * 1000.0));
            "ack"
        }
        TraceEvent::Result { attempt, code } => {
            d.insert("attempt".into(), json!(attempt));
            d.insert("code".into(), json!(code));
            "result"
        }
        TraceEvent::Confirmed => "status_report",
        TraceEvent::Retry {
            attempt,
            backoff,
            reason,
        } => {
            d.insert("attempt".into(), json!(attempt));
            d.insert("backoff_ms".into(), json!(backoff.as_millis()));
            d.insert("reason".into(), json!(reason));
            "retry"
        }
        TraceEvent::Late { what } => {
            d.insert("what".into(), json!(what));
            "late"
        }
        TraceEvent::Done(outcome) => {
            d.insert("outcome".into(), json!(outcome.name()));
            "outcome"
        }
    };
    (name, d)
}
