//! The legacy transport: commands sent the way the controllers cyncd replaces send them, for
//! connections the canary routes to `legacy`, so the two can be compared on the same homes.
//!
//! Faithfully in what it writes: one write with a drain timeout
//! ([`crate::config::CanaryConfig::legacy_timeout_ms`], 2 s), no retry, no dedup, all-zero
//! message ids (so a 0x7B cannot be matched to its command: the oldest command written on that
//! connection takes it). Truthfully in what it reports: a 0x7B proves the packet arrived, and the
//! device's `f9` result for the command's seq (before or after the 0x7B, as devices send them in
//! either order) says what it did — code 0 `applied`, any other `rejected`. A bare 0x7B with no
//! result within [`RESULT_WAIT`] is a refusal (`rejected`), as it is for the reliable transport;
//! a result whose 0x7B never came counts by its code at the deadline; nothing at all is
//! `no_ack` (`failed` when the write did not happen in time). The controllers cyncd replaces
//! called every 0x7B `applied`; cyncd does not, so a refused command never reads as applied on
//! either transport, and the SLOs compare like with like.
//!
//! Ownership (the rule is in [`super::transport`]): legacy writes only on connections it owns.
//! Only a 0x7B echoing the all-zero id can answer a legacy command, and only one written on
//! that connection; any other 0x7B is counted
//! (`tcp_comm_unmatched_answers_total{transport="legacy"}`), never credited. A command the
//! command service hands over (its chosen connection is legacy's) is written once like any
//! other, keeping its deadline and attempt count, unless a newer command for its target and
//! attribute came since (`superseded`). A command not yet written when its connection ends, or
//! whose bridge is no longer on a legacy connection, goes back to the command service to wait
//! for a connection; one written on a connection that ends ends `no_ack` at once.
//!
//! **Shadow**: for connections routed with `shadow`, the same command is also given to a
//! passive reliable [`Dispatcher`]. Its transmissions are never written: its first attempt is
//! bound to the legacy write (same seq, and a private message id to which each 0x7B is given as
//! legacy attributes it), later attempts are suppressed (they count as sent and are never
//! answered); it is fed the same 0x7B, results and status reports.
//! When both have an outcome they are compared: a difference is counted
//! (`tcp_comm_shadow_diff_total{legacy, reliable}`) and logged (the first ten, then one in
//! `shadow_log_every`). A command legacy writes while the reliable transport would still hold it
//! back (an earlier command to the same device in flight), or one it would have superseded, is
//! not comparable and only counted (`tcp_comm_shadow_skipped_total`), as is one that goes back
//! to the command service. Commands handed over by the command service are not shadowed. No
//! device receives anything twice because of the shadow.
//!
//! Bounds: at most [`MAX_PENDING`] legacy commands in flight (more end `queue_full` at once);
//! the message queue holds [`QUEUE`] (a full queue drops connection events, counted, and
//! submissions end `queue_full`); shadow outcomes waiting for their pair are bounded by the
//! same [`MAX_PENDING`].

use super::canary::Canary;
use super::reliable::{Commands, Completion};
use super::transport::Moving;
use crate::devices::link::{ConnCommand, ConnEvent};
use crate::devices::registry::{Registry, Settled};
use cync_proto::canary::{CommandSample, Transport};
use cync_proto::delivery::{CommandId, DeliveryConfig, Dispatcher, Outcome, Output, Request};
use cync_proto::{ConnId, MsgId, Seq};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Legacy commands in flight at once.
pub const MAX_PENDING: usize = 4096;
/// Messages waiting for the service.
pub const QUEUE: usize = 16_384;
/// The message id every legacy command carries.
const ZERO_ID: MsgId = MsgId([0; 3]);

/// How long after its 0x7B a legacy command waits for the device's `f9` result before the bare
/// 0x7B reads as a refusal. Devices send the result with the 0x7B, often in the same TCP segment
/// (14–77 ms after the command in the cloud trace).
pub const RESULT_WAIT: Duration = Duration::from_millis(500);
/// The legacy outcome of a shadowed command that went back to the command service: its
/// shadow outcome is not compared.
const MOVED: &str = "moved";

/// What the legacy service hears.
#[derive(Debug)]
pub enum LegacyEvent {
    /// A command to send.
    Submit {
        /// The command.
        req: Request,
        /// Shadow it with the reliable dispatcher.
        shadow: bool,
        /// Who waits for the outcome.
        reply: Option<oneshot::Sender<Completion>>,
    },
    /// A command the command service hands over: the connection chosen for it is legacy's.
    Adopt {
        /// The command, with its waiter, deadline and attempts.
        moving: Moving,
        /// The connection to write it on.
        conn: ConnId,
        /// Whether that connection is shadowed.
        shadow: bool,
    },
    /// The connection wrote it.
    Written {
        /// The command.
        command: CommandId,
        /// The bridge.
        conn: ConnId,
        /// The transport owning the connection it was written on.
        owner: Transport,
        /// Its seq.
        seq: Seq,
        /// Its message id (all zero).
        msg: MsgId,
    },
    /// The command was not written.
    Unwritten {
        /// The command.
        command: CommandId,
        /// `true`: the connection's write queue stayed full for the drain timeout (the device
        /// stopped reading; the command fails). `false`: the connection ended or is not
        /// legacy's (the command goes back to the command service).
        stalled: bool,
    },
    /// What a legacy connection heard: a 0x7B, an `f9` result or a status report (the last two
    /// only matter to the shadow), or its end. Other [`ConnEvent`]s are ignored.
    Device(ConnEvent),
}

/// Legacy metrics.
#[derive(Debug, Clone)]
pub struct LegacyMetrics {
    /// `tcp_comm_legacy_commands_total{outcome}`.
    pub commands: Family<[(&'static str, &'static str); 1], Counter>,
    /// `tcp_comm_unmatched_answers_total{transport="legacy"}`.
    pub unmatched: Counter,
}

/// Every outcome the legacy transport reports.
pub const OUTCOMES: [&str; 6] = [
    "applied",
    "rejected",
    "no_ack",
    "failed",
    "queue_full",
    "superseded",
];

impl LegacyMetrics {
    /// Creates and registers the metrics; the count of unmatched answers is `metrics`'.
    pub fn new(
        registry: &mut prometheus_client::registry::Registry,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let m = Self {
            commands: Family::default(),
            unmatched: metrics
                .unmatched_answers
                .get_or_create(&[("transport", Transport::Legacy.name())])
                .clone(),
        };
        registry.sub_registry_with_prefix("tcp_comm").register(
            "legacy_commands",
            "Commands sent by the legacy transport, by outcome",
            m.commands.clone(),
        );
        for o in OUTCOMES {
            let _ = m.commands.get_or_create(&[("outcome", o)]);
        }
        m
    }
}

/// Handle to the legacy service.
#[derive(Debug, Clone)]
pub struct Legacy {
    tx: mpsc::Sender<LegacyEvent>,
    dropped: Arc<AtomicU64>,
}

/// The legacy service's queue, made before the service starts (the command service needs a
/// [`Legacy`] handle to hand commands over, and legacy one to [`Commands`] to hand them back).
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<LegacyEvent>);

impl Legacy {
    /// A handle and the queue its service will read ([`Legacy::start`]).
    pub fn channel() -> (Self, Inbox) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = Self {
            tx,
            dropped: Arc::default(),
        };
        (handle, Inbox(rx))
    }

    /// Starts the service on the queue of [`Legacy::channel`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        inbox: Inbox,
        timeout: Duration,
        delivery: DeliveryConfig,
        shadow_log_every: u64,
        registry: Registry,
        commands: Commands,
        canary: Arc<Canary>,
        metrics: LegacyMetrics,
        cancel: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) {
        let service = Service {
            timeout,
            deadline: delivery.deadline,
            registry,
            commands,
            canary,
            metrics,
            tx: self.tx.clone(),
            pending: HashMap::new(),
            written: HashMap::new(),
            shadow: Dispatcher::new(delivery),
            shadow_outcomes: HashMap::new(),
            legacy_outcomes: HashMap::new(),
            shadow_log_every: shadow_log_every.max(1),
            diffs: 0,
            shadow_ids: HashMap::new(),
            shadow_ready: HashSet::new(),
            unbound: HashSet::new(),
            next_shadow_id: 0,
            start: Instant::now(),
        };
        tracker.spawn(service.run(inbox.0, cancel));
    }

    /// A place in the queue, for the command service to hand a command over without losing it
    /// when the queue is full.
    pub(super) fn reserve(&self) -> Option<mpsc::Permit<'_, LegacyEvent>> {
        self.tx.try_reserve().ok()
    }

    /// Submits a command; the receiver yields its outcome.
    pub fn submit(
        &self,
        req: Request,
        shadow: bool,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Completion>>, Completion> {
        let id = req.id;
        let (reply, rx) = super::reliable::waiter(wait);
        match self.tx.try_send(LegacyEvent::Submit { req, shadow, reply }) {
            Ok(()) => Ok(rx),
            Err(_) => Err(Completion::refused(id)),
        }
    }

    /// Reports a connection event without waiting (a full queue drops it and counts).
    pub fn event(&self, event: LegacyEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a legacy connection reports: its writes, and what its device answered.
    pub fn device(&self, event: ConnEvent) {
        let event = match event {
            ConnEvent::Sent {
                command,
                conn,
                owner,
                seq,
                msg,
                ..
            } => LegacyEvent::Written {
                command,
                conn,
                owner,
                seq,
                msg,
            },
            ConnEvent::Unsent { command, .. } => LegacyEvent::Unwritten {
                command,
                stalled: false,
            },
            other => LegacyEvent::Device(other),
        };
        self.event(event);
    }

    /// Events dropped on a full queue.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

struct Pending {
    req: Request,
    conn: Option<ConnId>,
    submitted: Instant,
    /// The next timer: the write, then the 0x7B wait (never after `limit`).
    deadline: Instant,
    /// The command's own deadline, wherever it has been.
    limit: Instant,
    written: bool,
    /// The seq it was written with.
    seq: Option<Seq>,
    /// Its 0x7B came (it then waits [`RESULT_WAIT`] for its result).
    acked: bool,
    /// The device's `f9` result code, when it came before the 0x7B.
    result: Option<u8>,
    /// Attempts made (and whether one was written) before it reached legacy.
    attempts: u8,
    lost: u8,
    written_before: bool,
    reply: Option<oneshot::Sender<Completion>>,
    shadow: bool,
}

struct Service {
    timeout: Duration,
    /// A command's deadline from its submission (the command service's).
    deadline: Duration,
    registry: Registry,
    commands: Commands,
    canary: Arc<Canary>,
    metrics: LegacyMetrics,
    tx: mpsc::Sender<LegacyEvent>,
    pending: HashMap<CommandId, Pending>,
    /// Per connection, the commands written and awaiting a 0x7B, oldest first.
    written: HashMap<ConnId, VecDeque<CommandId>>,
    shadow: Dispatcher,
    /// Shadow outcomes waiting for the legacy one, and the reverse.
    shadow_outcomes: HashMap<CommandId, Outcome>,
    legacy_outcomes: HashMap<CommandId, &'static str>,
    shadow_log_every: u64,
    diffs: u64,
    /// The shadow's private message id per command.
    shadow_ids: HashMap<CommandId, MsgId>,
    /// Commands the shadow would send now (its first transmission, waiting for the legacy
    /// write to bind to).
    shadow_ready: HashSet<CommandId>,
    /// Commands legacy wrote while the shadow would still have held them back.
    unbound: HashSet<CommandId>,
    next_shadow_id: u16,
    start: Instant,
}

impl Service {
    async fn run(mut self, mut rx: mpsc::Receiver<LegacyEvent>, cancel: CancellationToken) {
        loop {
            let legacy_next = self.pending.values().map(|p| p.deadline).min();
            let shadow_next = self.shadow.next_deadline().map(|d| self.start + d);
            let next = match (legacy_next, shadow_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    self.event(event);
                }
                () = sleep => {
                    self.expire();
                    let now = self.now();
                    self.shadow.on_timeout(now);
                }
            }
            self.drive_shadow();
        }
        let ids: Vec<CommandId> = self.pending.keys().copied().collect();
        for id in ids {
            self.finish(id, "failed");
        }
    }

    fn now(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    fn event(&mut self, event: LegacyEvent) {
        let now = self.now();
        match event {
            LegacyEvent::Submit { req, shadow, reply } => self.submit(req, shadow, reply),
            LegacyEvent::Adopt {
                moving,
                conn,
                shadow,
            } => self.adopt(moving, conn, shadow),
            LegacyEvent::Written {
                command,
                conn,
                owner,
                seq,
                msg,
            } => {
                if let Some(p) = self.pending.get_mut(&command) {
                    p.written = true;
                    p.seq = Some(seq);
                    p.deadline = (Instant::now() + self.timeout).min(p.limit);
                    self.written.entry(conn).or_default().push_back(command);
                    self.commands.trace_event(
                        command,
                        "sent",
                        &[
                            ("transport", "legacy".into()),
                            ("bridge", conn.to_string()),
                            ("owner", owner.name().into()),
                            ("seq", seq.0.to_string()),
                            ("msg_id", msg.to_string()),
                        ],
                    );
                    if p.shadow {
                        if self.shadow_ready.remove(&command) {
                            // The wire id is all zero for every command; the shadow gets a
                            // private one, and each 0x7B is given to it the way legacy
                            // attributes it.
                            let private = self.shadow_id(command);
                            self.shadow.sent(command, 1, private, seq, now);
                        } else {
                            // The reliable transport would still hold this one back (its
                            // device has an earlier command in flight): not comparable.
                            bounded_insert(&mut self.unbound, command);
                        }
                    }
                }
            }
            LegacyEvent::Unwritten { command, stalled } => match self.pending.get(&command) {
                Some(p) if p.written => {}
                Some(_) if stalled => self.finish(command, "failed"),
                Some(p) => {
                    let gone = p.conn;
                    self.hand_back(command, gone);
                }
                None => {}
            },
            LegacyEvent::Device(ConnEvent::Ack { conn, msg }) => {
                // Legacy writes all-zero ids: only a 0x7B echoing one can answer a legacy
                // command, and the oldest written on this connection takes it.
                let taken = if msg == ZERO_ID {
                    self.written.get_mut(&conn).and_then(VecDeque::pop_front)
                } else {
                    None
                };
                match taken {
                    Some(command) => {
                        if let Some(private) = self.shadow_ids.get(&command).copied() {
                            let _ = self.shadow.ack(conn, private, now);
                        }
                        let result = self.pending.get(&command).and_then(|p| p.result);
                        match result {
                            Some(code) => self.finish(command, reading(code)),
                            None => {
                                if let Some(p) = self.pending.get_mut(&command) {
                                    p.acked = true;
                                    p.deadline = (Instant::now() + RESULT_WAIT).min(p.limit);
                                }
                            }
                        }
                    }
                    None => {
                        self.metrics.unmatched.inc();
                    }
                }
            }
            LegacyEvent::Device(ConnEvent::Result { conn, seq, code }) => {
                self.shadow.result(conn, seq, code, now);
                // The newest command written on that bridge with that seq (an older one could
                // only be from a connection before, whose seqs started over).
                let command = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.written && p.conn == Some(conn) && p.seq == Some(seq))
                    .max_by_key(|(_, p)| p.deadline)
                    .map(|(id, p)| (*id, p.acked));
                match command {
                    // Its 0x7B came first: the result ends it.
                    Some((id, true)) => self.finish(id, reading(code)),
                    // The 0x7B is still to come (and is credited to it, oldest first).
                    Some((id, false)) => {
                        if let Some(p) = self.pending.get_mut(&id) {
                            p.result = Some(code);
                        }
                    }
                    None => {}
                }
            }
            LegacyEvent::Device(ConnEvent::Status { home, status }) => {
                self.shadow.status(&home, &status, now);
            }
            LegacyEvent::Device(ConnEvent::Lost(conn)) => {
                self.shadow.connection_lost(conn, now);
                // Their 0x7B (or result) can no longer be read, and legacy never resends: what
                // had its result ends by it, the rest `no_ack`.
                let written: Vec<CommandId> = self
                    .written
                    .remove(&conn)
                    .map(Vec::from)
                    .unwrap_or_default();
                let acked: Vec<CommandId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.acked && p.conn == Some(conn))
                    .map(|(id, _)| *id)
                    .collect();
                for command in written.into_iter().chain(acked) {
                    let result = self.pending.get(&command).and_then(|p| p.result);
                    self.finish(command, result.map_or("no_ack", reading));
                }
            }
            LegacyEvent::Device(_) => {}
        }
    }

    fn submit(&mut self, req: Request, shadow: bool, reply: Option<oneshot::Sender<Completion>>) {
        let id = req.id;
        let now = Instant::now();
        if self.pending.len() >= MAX_PENDING {
            self.refuse(id, reply);
            return;
        }
        let conn = req.bridges.first().copied();
        self.commands.trace_event(
            id,
            "submitted",
            &[
                ("transport", "legacy".into()),
                ("shadow", shadow.to_string()),
            ],
        );
        if shadow {
            let mut shadow_req = req.clone();
            shadow_req.bridges = conn.into_iter().collect();
            self.shadow.submit(shadow_req, self.now());
        }
        let limit = now + self.deadline;
        self.pending.insert(
            id,
            Pending {
                req,
                conn,
                submitted: now,
                // Writing may take the drain timeout; the 0x7B wait starts once written.
                deadline: (now + self.timeout * 2).min(limit),
                limit,
                written: false,
                seq: None,
                acked: false,
                result: None,
                attempts: 0,
                lost: 0,
                written_before: false,
                reply,
                shadow,
            },
        );
        self.write(id);
    }

    /// A command handed over by the command service, for the connection `conn` it chose.
    fn adopt(&mut self, moving: Moving, conn: ConnId, shadow: bool) {
        let id = moving.req.id;
        let now = Instant::now();
        if self.pending.len() >= MAX_PENDING {
            self.refuse(id, moving.reply);
            return;
        }
        self.commands.trace_event(
            id,
            "adopted",
            &[
                ("transport", "legacy".into()),
                ("bridge", conn.to_string()),
                ("shadow", shadow.to_string()),
            ],
        );
        let superseded = self.commands.latest().newer(&moving.req);
        self.pending.insert(
            id,
            Pending {
                req: moving.req,
                conn: Some(conn),
                submitted: moving.submitted,
                deadline: (now + self.timeout * 2).min(moving.deadline),
                limit: moving.deadline,
                written: false,
                seq: None,
                acked: false,
                result: None,
                attempts: moving.attempts,
                lost: moving.lost,
                written_before: moving.written,
                reply: moving.reply,
                // Not comparable: it waited in the command service's queue first.
                shadow: false,
            },
        );
        if superseded {
            // A newer command for its target and attribute came since: it would undo it.
            self.finish(id, "superseded");
            return;
        }
        self.write(id);
    }

    /// Refuses a command at once: too many in flight.
    fn refuse(&mut self, id: CommandId, reply: Option<oneshot::Sender<Completion>>) {
        self.registry
            .settle(id, Settled::NotApplied, Instant::now());
        let _ = reply.map(|r| r.send(Completion::refused(id)));
        self.metrics
            .commands
            .get_or_create(&[("outcome", "queue_full")])
            .inc();
        self.canary.command(
            Transport::Legacy,
            CommandSample {
                applied: false,
                superseded: false,
                queue_full: true,
                latency: Duration::ZERO,
            },
        );
    }

    /// Writes a pending command once on its connection, when that connection is legacy's.
    fn write(&mut self, id: CommandId) {
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        let (target, action) = (p.req.target, p.req.action);
        let Some(conn) = p.conn else {
            self.finish(id, "failed");
            return;
        };
        let writer = match self.registry.writer(conn) {
            Some((route, writer)) if route.transport == Transport::Legacy => writer,
            // Now the reliable transport's: the command service writes it there.
            Some(_) => {
                self.hand_back(id, None);
                return;
            }
            // Away or closing: the command waits for a connection in the command service's
            // queue.
            None => {
                self.hand_back(id, Some(conn));
                return;
            }
        };
        let send = ConnCommand::SendLegacy {
            command: id,
            target,
            action,
        };
        match writer.try_send(send) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.hand_back(id, Some(conn)),
            Err(mpsc::error::TrySendError::Full(send)) => {
                // One write, given the drain timeout to get into the connection's queue.
                let tx = self.tx.clone();
                let timeout = self.timeout;
                tokio::spawn(async move {
                    let stalled = match tokio::time::timeout(timeout, writer.send(send)).await {
                        Ok(Ok(())) => return,
                        Ok(Err(_)) => false,
                        Err(_) => true,
                    };
                    let _ = tx
                        .send(LegacyEvent::Unwritten {
                            command: id,
                            stalled,
                        })
                        .await;
                });
            }
        }
    }

    /// Gives an unwritten command back to the command service (its connection ended, or its
    /// bridge is not on a legacy connection): it waits there for one, keeping its deadline.
    /// `gone` is the bridge that failed it.
    fn hand_back(&mut self, id: CommandId, gone: Option<ConnId>) {
        let Some(mut p) = self.pending.remove(&id) else {
            return;
        };
        if p.shadow {
            self.abandon_shadow(id);
            p.shadow = false;
        }
        let moving = Moving {
            req: p.req.clone(),
            submitted: p.submitted,
            deadline: p.limit,
            attempts: p.attempts,
            lost: p.lost,
            written: p.written_before,
            reply: p.reply.take(),
        };
        match self.commands.adopt(moving, gone) {
            Ok(()) => {
                info!(command_id = %id, "legacy could not write the command: it waits for a connection");
                let bridge = gone.map(|c| c.to_string()).unwrap_or_default();
                self.commands.trace_event(
                    id,
                    "moved",
                    &[("to", "reliable".into()), ("bridge", bridge)],
                );
            }
            Err(moving) => {
                p.reply = moving.reply;
                self.pending.insert(id, p);
                self.finish(id, "failed");
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<(CommandId, &'static str)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| {
                let outcome = match (p.acked, p.result) {
                    (_, Some(code)) => reading(code),
                    // A bare 0x7B: the device refused it.
                    (true, None) => "rejected",
                    (false, None) if p.written || p.written_before => "no_ack",
                    (false, None) => "failed",
                };
                (*id, outcome)
            })
            .collect();
        for (id, outcome) in due {
            self.finish(id, outcome);
        }
    }

    fn finish(&mut self, id: CommandId, outcome: &'static str) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if let Some(conn) = p.conn {
            if let Some(q) = self.written.get_mut(&conn) {
                q.retain(|c| *c != id);
                if q.is_empty() {
                    self.written.remove(&conn);
                }
            }
        }
        let latency = p.submitted.elapsed();
        // `applied` is the device's own result; a refusal or silence leaves it unknown (reports
        // that show it are still news of it), as on the reliable transport.
        let settled = match outcome {
            "applied" => Settled::Applied,
            "superseded" | "queue_full" => Settled::NotApplied,
            _ => Settled::Unknown,
        };
        self.registry.settle(id, settled, Instant::now());
        self.metrics
            .commands
            .get_or_create(&[("outcome", outcome)])
            .inc();
        self.canary.command(
            Transport::Legacy,
            CommandSample {
                applied: outcome == "applied",
                superseded: outcome == "superseded",
                queue_full: false,
                latency,
            },
        );
        let completion = Completion {
            command_id: id.to_string(),
            outcome,
            attempts: p.attempts.saturating_add(u8::from(p.written)),
            latency_ms: latency.as_secs_f64() * 1000.0,
        };
        info!(command_id = %id, transport = "legacy", outcome, latency_ms = completion.latency_ms, "command done");
        self.commands
            .trace_event(id, "outcome", &[("outcome", outcome.to_string())]);
        if let Some(reply) = p.reply {
            let _ = reply.send(completion);
        }
        if p.shadow {
            match self.shadow_outcomes.remove(&id) {
                Some(reliable) => self.compare(id, outcome, reliable),
                None if self.legacy_outcomes.len() < MAX_PENDING => {
                    self.legacy_outcomes.insert(id, outcome);
                }
                None => {}
            }
        }
    }

    /// Carries out what the shadow dispatcher asks for, without writing anything.
    fn drive_shadow(&mut self) {
        while let Some(out) = self.shadow.poll() {
            match out {
                Output::Transmit {
                    command, attempt, ..
                } => {
                    if attempt == 1 && !self.unbound.contains(&command) {
                        bounded_insert(&mut self.shadow_ready, command);
                    }
                    if attempt > 1 || self.unbound.contains(&command) {
                        // Suppressed: counts as sent, never answered.
                        let now = self.now();
                        let fake = MsgId([0xff, 0xff, attempt]);
                        self.shadow.sent(command, attempt, fake, Seq(0), now);
                    }
                    // The first attempt is bound to the legacy write when it happens.
                }
                Output::Done {
                    command, outcome, ..
                } => {
                    self.shadow_ids.remove(&command);
                    match self.legacy_outcomes.remove(&command) {
                        Some(legacy) => self.compare(command, legacy, outcome),
                        None if self.shadow_outcomes.len() < MAX_PENDING => {
                            self.shadow_outcomes.insert(command, outcome);
                        }
                        None => {}
                    }
                }
                Output::Trace { .. } => {}
            }
        }
    }

    /// The shadow's private message id for a command (bounded with the pending commands).
    fn shadow_id(&mut self, command: CommandId) -> MsgId {
        if self.shadow_ids.len() >= MAX_PENDING {
            self.shadow_ids.clear();
        }
        self.next_shadow_id = self.next_shadow_id.wrapping_add(1);
        let [hi, lo] = self.next_shadow_id.to_be_bytes();
        let id = MsgId([0xfe, hi, lo]);
        self.shadow_ids.insert(command, id);
        id
    }

    /// A shadowed command went back to the command service: its shadow outcome is not
    /// compared (counted as skipped when it comes).
    fn abandon_shadow(&mut self, id: CommandId) {
        match self.shadow_outcomes.remove(&id) {
            Some(reliable) => self.compare(id, MOVED, reliable),
            None if self.legacy_outcomes.len() < MAX_PENDING => {
                self.legacy_outcomes.insert(id, MOVED);
            }
            None => {}
        }
    }

    fn compare(&mut self, id: CommandId, legacy: &'static str, reliable: Outcome) {
        self.shadow_ready.remove(&id);
        let moved = legacy == MOVED;
        if self.unbound.remove(&id) || reliable == Outcome::Superseded || moved {
            self.canary.metrics.shadow_skipped.inc();
            return;
        }
        self.canary.metrics.shadow_compared.inc();
        if legacy == reliable.name() {
            return;
        }
        self.canary
            .metrics
            .shadow_diffs
            .get_or_create(&[("legacy", legacy), ("reliable", reliable.name())])
            .inc();
        self.diffs += 1;
        if self.diffs <= 10 || self.diffs % self.shadow_log_every == 0 {
            warn!(command_id = %id, legacy, reliable = reliable.name(), diffs = self.diffs, "shadow: the reliable transport would have decided differently");
        }
    }
}

/// Inserts into a set bounded by [`MAX_PENDING`] (cleared when full: the entries only matter
/// for commands still in flight, and at most `MAX_PENDING` are).
/// What a device's `f9` result code says of a command.
fn reading(code: u8) -> &'static str {
    if code == 0 { "applied" } else { "rejected" }
}

fn bounded_insert(set: &mut HashSet<CommandId>, id: CommandId) {
    if set.len() >= MAX_PENDING {
        set.clear();
    }
    set.insert(id);
}
