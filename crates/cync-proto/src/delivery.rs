//! Reliable command delivery, sans I/O: per-device queues, attempts, retries, round-trip
//! estimation and one outcome per command.
//!
//! The owner feeds in what happens — a command submitted, a packet written, a `0x7B`, an `f9`
//! result, a status report, a connection lost, time passing — and takes out what to do:
//! [`Output::Transmit`] (send this command on that connection) and [`Output::Done`] (the
//! command's one outcome), plus [`Output::Trace`] events for the command's trace. Time is a
//! [`Duration`] since any fixed origin.
//!
//! Rules:
//! - One command per device (or group) in flight at a time, in submission order. A queued
//!   command is replaced by a newer one for the same attribute (`superseded`); a full device
//!   queue refuses the newcomer (`queue_full`).
//! - An attempt waits one retransmit timeout (RTO) for anything to come back. A `0x7B` proves
//!   the packet arrived; an `f9` result with code 0, or a status report showing the asked state,
//!   means `applied`; a non-zero result means `rejected`.
//! - Only when nothing at all came back is the command sent again: after a backoff with full
//!   jitter (base 250 ms, cap 2 s), at most `max_retries` times. A target keeps the bridge it
//!   last used while that connection lives, so its commands stay in order on one TCP stream: a
//!   slow bridge that catches up never applies an old command after a newer one went through
//!   another bridge. A retry moves to another bridge that reaches the device (the one with the
//!   best recent results) when the connection is lost or its write queue is full. A `0x7B` with no result by the time a result
//!   was due means the device refused (`rejected`), as devices answer unknown commands with a
//!   bare `0x7B`.
//! - The RTO adapts per bridge (SRTT/RTTVAR as in RFC 6298), floor 250 ms, cap 3 s.
//! - Every command ends by its deadline. Answers to earlier attempts count toward the command
//!   while it lives, and are recognised as late (never as another command's) for
//!   [`LATE_TTL`] after it ends.
//! - Commands can change owner: when the connection chosen for an attempt belongs to another
//!   owner, the owner takes the command out unwritten ([`Dispatcher::hand_off`], keeping its
//!   deadline and attempts in a [`Moved`]); a command another owner could not write comes in
//!   the same way ([`Dispatcher::adopt`]) and waits in its target's queue in submission order.
//!   A moving command never overtakes a newer one for the same attribute: it is superseded.
//! - A command waiting for a bridge to come back (its connection was lost, or the owner found
//!   none) is tried as soon as the owner reports that bridge connected
//!   ([`Dispatcher::connected`]), not at the end of its backoff.
//!
//! Bounds: `max_queue` commands per device queue, `max_active` commands in all (beyond:
//! `queue_full`), and [`MAX_LATE`] remembered answers (oldest dropped first).

use crate::command::{Action, Target};
use crate::ids::{ConnId, MsgId, Seq};
use crate::status::{ColorMode, DeviceStatus};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// How long the answers to a finished command are still recognised.
pub const LATE_TTL: Duration = Duration::from_secs(30);
/// Most (connection, message id) pairs remembered for late answers.
pub const MAX_LATE: usize = 16_384;
/// Most attempts of one command, whatever happens.
pub const MAX_ATTEMPTS: u8 = 8;
/// Most targets whose last bridge is remembered.
pub const MAX_STICKY: usize = 65_536;

/// A command's id: time-sortable (Unix milliseconds in the high bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl CommandId {
    /// Parses 16 hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok().map(Self))
            .flatten()
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The device did it.
    Applied,
    /// The device refused, or does not know the target.
    Rejected,
    /// Nothing came back from any attempt.
    NoAck,
    /// No bridge could carry it.
    Failed,
    /// A newer command for the same attribute replaced it while queued.
    Superseded,
    /// The device's queue (or the service) was full.
    QueueFull,
    /// The bridge stopped reading (its write queue is full).
    Backpressure,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 7] = [
        Self::Applied,
        Self::Rejected,
        Self::NoAck,
        Self::Failed,
        Self::Superseded,
        Self::QueueFull,
        Self::Backpressure,
    ];

    /// The snake-case name used in the API, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
            Self::NoAck => "no_ack",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::QueueFull => "queue_full",
            Self::Backpressure => "backpressure",
        }
    }
}

/// Tuning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryConfig {
    /// Submit → outcome, at most.
    pub deadline: Duration,
    /// Retries after the first attempt.
    pub max_retries: u8,
    /// Backoff base.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_cap: Duration,
    /// RTO floor.
    pub rto_min: Duration,
    /// RTO cap.
    pub rto_max: Duration,
    /// RTO before a bridge has a round-trip sample.
    pub rto_initial: Duration,
    /// Commands queued per device (or group).
    pub max_queue: usize,
    /// Commands alive at once.
    pub max_active: usize,
    /// Seed for the backoff jitter.
    pub seed: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            max_retries: 2,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(2),
            rto_min: Duration::from_millis(250),
            rto_max: Duration::from_secs(3),
            rto_initial: Duration::from_secs(1),
            max_queue: 16,
            max_active: 100_000,
            seed: 0x5eed,
        }
    }
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id.
    pub id: CommandId,
    /// The home of the target.
    pub home: String,
    /// Device or group.
    pub target: Target,
    /// What to do.
    pub action: Action,
    /// Bridges that reach the target, in the owner's order of preference.
    pub bridges: Vec<ConnId>,
    /// The outlet (1–8) of a multi-outlet plug this command switches; its target carries the
    /// outlet as a sub id ([`crate::catalog::outlet_target`]), and the device's status confirms
    /// it by that outlet's bit of the mask in its brightness byte (PROTOCOL.md §8).
    pub outlet: Option<u8>,
}

/// Something for the command's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// Accepted.
    Submitted,
    /// Waiting behind another command for the same target.
    Queued {
        /// Commands ahead.
        ahead: usize,
    },
    /// An attempt goes out on a bridge.
    Attempt {
        /// 1-based.
        attempt: u8,
        /// The bridge.
        conn: ConnId,
        /// Its RTO.
        rto: Duration,
    },
    /// The packet was written.
    Sent {
        /// Attempt.
        attempt: u8,
        /// Outer message id.
        msg: MsgId,
        /// Inner seq.
        seq: Seq,
    },
    /// The 0x7B arrived.
    Ack {
        /// For which attempt.
        attempt: u8,
        /// Round trip.
        rtt: Duration,
    },
    /// The `f9` result arrived.
    Result {
        /// For which attempt.
        attempt: u8,
        /// Result byte.
        code: u8,
    },
    /// A status report showing the asked state.
    Confirmed,
    /// Nothing came back in time; trying again.
    Retry {
        /// Next attempt number.
        attempt: u8,
        /// Backoff before it.
        backoff: Duration,
        /// Why.
        reason: &'static str,
    },
    /// An answer that came after the command ended.
    Late {
        /// `ack` or `result`.
        what: &'static str,
    },
    /// The outcome.
    Done(Outcome),
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this command on `conn`, then call [`Dispatcher::sent`] (or
    /// [`Dispatcher::send_failed`]).
    Transmit {
        /// The bridge.
        conn: ConnId,
        /// The command.
        command: CommandId,
        /// Attempt number.
        attempt: u8,
        /// Target.
        target: Target,
        /// Action.
        action: Action,
    },
    /// The command's one outcome.
    Done {
        /// The command.
        command: CommandId,
        /// Outcome.
        outcome: Outcome,
        /// Attempts made.
        attempts: u8,
        /// Submit → outcome.
        latency: Duration,
    },
    /// A trace event.
    Trace {
        /// The command.
        command: CommandId,
        /// At.
        at: Duration,
        /// What.
        event: TraceEvent,
    },
}

/// A command changing owner (see [`Dispatcher::hand_off`] and [`Dispatcher::adopt`]): what it
/// asks for and what it has used up, so its deadline and attempts follow it. Times are on the
/// clock origin of the dispatcher that produced it; owners with another origin translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The command.
    pub req: Request,
    /// When it was submitted.
    pub submitted: Duration,
    /// When it must have ended.
    pub deadline: Duration,
    /// Attempts made so far.
    pub attempts: u8,
    /// Of those, attempts whose connection was lost under them (they do not use up retries).
    pub lost: u8,
    /// Whether some attempt was written to a bridge.
    pub written: bool,
}

/// Sizes of every internal structure (all zero but `late` and `bridges` once quiet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    /// Commands alive.
    pub active: usize,
    /// Commands waiting in device queues.
    pub queued: usize,
    /// Attempts awaiting an answer.
    pub in_flight: usize,
    /// (connection, msg) and (connection, seq) routes of live attempts.
    pub routes: usize,
    /// Remembered answers of finished commands.
    pub late: usize,
}

type Key = (String, Target);

#[derive(Debug)]
struct Command {
    req: Request,
    submitted: Duration,
    deadline: Duration,
    attempts: u8,
    /// Bridges whose connection was lost or whose write queue was full during this command.
    gone: Vec<ConnId>,
    state: State,
    acked: bool,
    /// Some attempt was written to a bridge.
    written: bool,
    /// Attempts whose connection was lost under them (they do not use up the retries).
    lost: u8,
    /// Backing off because no connection could carry it: tried again as soon as one of its
    /// bridges connects.
    parked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Queued,
    /// Waiting for the owner to write it.
    Sending {
        conn: ConnId,
    },
    /// Written at `sent`, waiting for answers until `timer`.
    Waiting {
        conn: ConnId,
        sent: Duration,
        timer: Duration,
        msg: MsgId,
        seq: Seq,
    },
    /// Backing off until `at`.
    Backoff {
        at: Duration,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    score: f64,
}

/// The delivery state machine. See the module documentation.
#[derive(Debug)]
pub struct Dispatcher {
    config: DeliveryConfig,
    commands: HashMap<CommandId, Command>,
    queues: HashMap<Key, VecDeque<CommandId>>,
    /// Live attempt routes: (conn, msg) and (conn, seq) → (command, attempt).
    by_msg: HashMap<(ConnId, MsgId), (CommandId, u8)>,
    by_seq: HashMap<(ConnId, u8), (CommandId, u8)>,
    late: HashMap<(ConnId, MsgId), CommandId>,
    late_order: VecDeque<(Duration, ConnId, MsgId)>,
    bridges: HashMap<ConnId, Rtt>,
    /// The bridge each target last used.
    sticky: HashMap<Key, ConnId>,
    /// Live commands for an outlet: while there are none, a status looks up one queue only.
    outlet_commands: usize,
    rng: u64,
    out: VecDeque<Output>,
}

impl Dispatcher {
    /// An empty dispatcher.
    pub fn new(config: DeliveryConfig) -> Self {
        Self {
            rng: config.seed | 1,
            config,
            commands: HashMap::new(),
            queues: HashMap::new(),
            by_msg: HashMap::new(),
            by_seq: HashMap::new(),
            late: HashMap::new(),
            late_order: VecDeque::new(),
            bridges: HashMap::new(),
            sticky: HashMap::new(),
            outlet_commands: 0,
            out: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The next thing to do, oldest first.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Sizes of the internal structures.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            active: self.commands.len(),
            queued: self
                .queues
                .values()
                .map(|q| q.len().saturating_sub(1))
                .sum(),
            in_flight: self
                .commands
                .values()
                .filter(|c| matches!(c.state, State::Sending { .. } | State::Waiting { .. }))
                .count(),
            routes: self.by_msg.len() + self.by_seq.len(),
            late: self.late.len(),
        }
    }

    /// The retransmit timeout of a bridge now.
    pub fn rto(&self, conn: ConnId) -> Duration {
        let c = &self.config;
        match self
            .bridges
            .get(&conn)
            .and_then(|r| r.srtt.map(|s| (s, r.rttvar)))
        {
            None => c.rto_initial,
            Some((srtt, rttvar)) => {
                (srtt + (rttvar * 4).max(Duration::from_millis(10))).clamp(c.rto_min, c.rto_max)
            }
        }
    }

    /// Submits a command.
    pub fn submit(&mut self, req: Request, now: Duration) {
        let id = req.id;
        self.trace(id, now, TraceEvent::Submitted);
        if self.commands.len() >= self.config.max_active {
            self.done_now(id, now, now, 0, Outcome::QueueFull);
            return;
        }
        let key: Key = (req.home.clone(), req.target);
        let queue = self.queues.entry(key.clone()).or_default();
        // Coalesce: a queued (not yet sent) command for the same attribute is superseded.
        let wanted = attribute(&req.action);
        let mut superseded = Vec::new();
        for (i, other) in queue.iter().enumerate() {
            let queued = self
                .commands
                .get(other)
                .is_some_and(|c| c.state == State::Queued);
            let same = self
                .commands
                .get(other)
                .is_some_and(|c| attribute(&c.req.action) == wanted);
            if i > 0 && queued && same {
                superseded.push(*other);
            }
        }
        queue.retain(|c| !superseded.contains(c));
        let full = queue.len() >= self.config.max_queue;
        if !full {
            queue.push_back(id);
        }
        let ahead = queue.len().saturating_sub(1);
        for old in superseded {
            if let Some(c) = self.take(old) {
                self.done_now(old, c.submitted, now, c.attempts, Outcome::Superseded);
            }
        }
        if full {
            self.done_now(id, now, now, 0, Outcome::QueueFull);
            return;
        }
        let deadline = now + self.config.deadline;
        self.keep(
            id,
            Command {
                req,
                submitted: now,
                deadline,
                attempts: 0,
                gone: Vec::new(),
                state: State::Queued,
                acked: false,
                written: false,
                lost: 0,
                parked: false,
            },
        );
        if ahead > 0 {
            self.trace(id, now, TraceEvent::Queued { ahead });
        }
        self.pump(&key, now);
    }

    /// The owner wrote attempt `attempt` of `command` as message `msg` with seq `seq`.
    pub fn sent(&mut self, command: CommandId, attempt: u8, msg: MsgId, seq: Seq, now: Duration) {
        let rto_for = |d: &Self, conn| d.rto(conn);
        let Some(c) = self.commands.get(&command) else {
            return;
        };
        let State::Sending { conn } = c.state else {
            return;
        };
        if c.attempts != attempt {
            return;
        }
        let rto = rto_for(self, conn);
        let max_retries = self.config.max_retries;
        if let Some(c) = self.commands.get_mut(&command) {
            c.written = true;
            // The last attempt waits for an answer until the deadline: there is nothing left
            // to retry, and a slow device may still answer.
            let last =
                c.attempts.saturating_sub(c.lost) > max_retries || c.attempts >= MAX_ATTEMPTS;
            c.state = State::Waiting {
                conn,
                sent: now,
                timer: if last {
                    c.deadline
                } else {
                    (now + rto).min(c.deadline)
                },
                msg,
                seq,
            };
        }
        self.by_msg.insert((conn, msg), (command, attempt));
        self.by_seq.insert((conn, seq.0), (command, attempt));
        self.trace(command, now, TraceEvent::Sent { attempt, msg, seq });
    }

    /// The owner could not write the attempt: the bridge's write queue is full (or it is gone).
    pub fn send_failed(&mut self, command: CommandId, attempt: u8, now: Duration) {
        let Some(c) = self.commands.get_mut(&command) else {
            return;
        };
        let State::Sending { conn } = c.state else {
            return;
        };
        if c.attempts != attempt {
            return;
        }
        c.gone.push(conn);
        let others = c.req.bridges.iter().any(|b| !c.gone.contains(b));
        self.sticky.retain(|_, b| *b != conn);
        if others && c.attempts <= self.config.max_retries {
            c.state = State::Backoff { at: now };
            self.trace(
                command,
                now,
                TraceEvent::Retry {
                    attempt: attempt + 1,
                    backoff: Duration::ZERO,
                    reason: "backpressure",
                },
            );
            self.advance(now);
        } else {
            self.finish(command, now, Outcome::Backpressure);
        }
    }

    /// A `0x7B` on `conn` echoing message `msg`. Returns whether it answers one of this
    /// dispatcher's commands, live or recently ended (the owner counts those that do not).
    pub fn ack(&mut self, conn: ConnId, msg: MsgId, now: Duration) -> bool {
        let Some(&(command, attempt)) = self.by_msg.get(&(conn, msg)) else {
            let Some(&command) = self.late.get(&(conn, msg)) else {
                return false;
            };
            self.trace(command, now, TraceEvent::Late { what: "ack" });
            return true;
        };
        let Some(c) = self.commands.get_mut(&command) else {
            return false;
        };
        c.acked = true;
        let sent = match c.state {
            State::Waiting {
                conn: live, sent, ..
            } if live == conn && c.attempts == attempt => Some(sent),
            _ => None,
        };
        let rtt = sent.map(|s| now.saturating_sub(s));
        if let Some(rtt) = rtt {
            self.sample(conn, rtt);
            // The packet arrived: give the device a fresh RTO to answer with a result.
            let rto = self.rto(conn);
            if let Some(Command {
                state: State::Waiting { timer, .. },
                deadline,
                ..
            }) = self.commands.get_mut(&command)
            {
                *timer = (now + rto).min(*deadline);
            }
        }
        self.trace(
            command,
            now,
            TraceEvent::Ack {
                attempt,
                rtt: rtt.unwrap_or_default(),
            },
        );
        true
    }

    /// An `f9` result on `conn` for seq `seq`.
    pub fn result(&mut self, conn: ConnId, seq: Seq, code: u8, now: Duration) {
        let Some(&(command, attempt)) = self.by_seq.get(&(conn, seq.0)) else {
            return;
        };
        if !self.commands.contains_key(&command) {
            return;
        }
        if let Some(Command {
            state: State::Waiting {
                sent, conn: live, ..
            },
            ..
        }) = self.commands.get(&command)
        {
            if *live == conn {
                let rtt = now.saturating_sub(*sent);
                self.sample(conn, rtt);
            }
        }
        self.trace(command, now, TraceEvent::Result { attempt, code });
        self.score(conn, code == 0);
        self.finish(
            command,
            now,
            if code == 0 {
                Outcome::Applied
            } else {
                Outcome::Rejected
            },
        );
    }

    /// A status report for a device of `home`, from any bridge: it confirms the command waiting
    /// for that device, and those waiting for its outlets, when it shows what they asked for.
    pub fn status(&mut self, home: &str, status: &DeviceStatus, now: Duration) {
        self.confirm((home.to_string(), Target::Device(status.id.0)), status, now);
        if self.outlet_commands == 0 {
            return;
        }
        let Ok(id) = u8::try_from(status.id.0) else {
            return;
        };
        for outlet in 1..=8 {
            let target = Target::Device(u16::from_le_bytes([id, outlet]));
            self.confirm((home.to_string(), target), status, now);
        }
    }

    fn confirm(&mut self, key: Key, status: &DeviceStatus, now: Duration) {
        let Some(&command) = self.queues.get(&key).and_then(|q| q.front()) else {
            return;
        };
        let Some(c) = self.commands.get(&command) else {
            return;
        };
        let State::Waiting { sent, conn, .. } = c.state else {
            return;
        };
        let shown = match c.req.outlet {
            None => satisfies(&c.req.action, status),
            Some(outlet) => satisfies_outlet(&c.req.action, outlet, status),
        };
        if now < sent || !shown {
            return;
        }
        self.trace(command, now, TraceEvent::Confirmed);
        self.score(conn, true);
        self.finish(command, now, Outcome::Applied);
    }

    /// The owner found no connection for the attempt's bridge (it is reconnecting): back off
    /// and try again, there or through another bridge.
    pub fn unreachable(&mut self, command: CommandId, attempt: u8, now: Duration) {
        let live = self
            .commands
            .get(&command)
            .is_some_and(|c| c.attempts == attempt && matches!(c.state, State::Sending { .. }));
        if live {
            // Nothing was written: this try does not count against the retries.
            if let Some(c) = self.commands.get_mut(&command) {
                c.attempts = c.attempts.saturating_sub(1);
            }
            self.silent_attempt(command, now, "no_connection");
            self.advance(now);
        }
    }

    /// A bridge's connection ended: its unanswered attempts are retried elsewhere now.
    pub fn connection_lost(&mut self, conn: ConnId, now: Duration) {
        let hit: Vec<CommandId> = self
            .commands
            .iter()
            .filter(|(_, c)| match c.state {
                State::Sending { conn: live } | State::Waiting { conn: live, .. } => live == conn,
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in hit {
            self.silent_attempt(id, now, "connection_lost");
        }
        self.bridges.remove(&conn);
        self.sticky.retain(|_, b| *b != conn);
        self.advance(now);
    }

    /// A bridge connected (again): commands parked for want of a connection through it are
    /// tried now rather than at the end of their backoff, and it is no longer avoided.
    pub fn connected(&mut self, conn: ConnId, now: Duration) {
        for c in self.commands.values_mut() {
            if !c.req.bridges.contains(&conn) {
                continue;
            }
            c.gone.retain(|b| *b != conn);
            if let (true, State::Backoff { at }) = (c.parked, &mut c.state) {
                *at = (*at).min(now);
            }
        }
        self.advance(now);
    }

    /// The connection chosen for attempt `attempt` of `command` belongs to another owner: the
    /// command leaves, unwritten, with its deadline and attempts, and the next command for its
    /// target starts. Answers to its earlier attempts are still recognised as late. `None` when
    /// the command is not waiting to be written as that attempt.
    pub fn hand_off(&mut self, command: CommandId, attempt: u8, now: Duration) -> Option<Moved> {
        let c = self.commands.get(&command)?;
        if c.attempts != attempt || !matches!(c.state, State::Sending { .. }) {
            return None;
        }
        let c = self.forget(command, now)?;
        let key: Key = (c.req.home.clone(), c.req.target);
        self.pump(&key, now);
        // The attempt being handed over was not written here.
        let attempts = c.attempts.saturating_sub(1);
        Some(Moved {
            req: c.req,
            submitted: c.submitted,
            deadline: c.deadline,
            attempts,
            lost: c.lost.min(attempts),
            written: c.written,
        })
    }

    /// Takes in a command another owner could not write (its connection ended first, or its
    /// bridge was gone): it waits in its target's queue in submission order, keeping its
    /// deadline and attempts; `gone` is the bridge that failed it, avoided while another is
    /// left. It is superseded at once when its target has a newer command for the same
    /// attribute (so it never overtakes one), and supersedes older queued ones.
    pub fn adopt(&mut self, moved: Moved, gone: Option<ConnId>, now: Duration) {
        let Moved {
            req,
            submitted,
            deadline,
            attempts,
            lost,
            written,
        } = moved;
        let id = req.id;
        if now >= deadline {
            let outcome = if written {
                Outcome::NoAck
            } else {
                Outcome::Failed
            };
            // It ran out of time on its way here: it ended at its deadline.
            self.done_now(id, submitted, deadline, attempts, outcome);
            return;
        }
        if self.commands.contains_key(&id) {
            // Already here: a command is in one place at a time, with one outcome.
            return;
        }
        if self.commands.len() >= self.config.max_active {
            self.done_now(id, submitted, now, attempts, Outcome::QueueFull);
            return;
        }
        let key: Key = (req.home.clone(), req.target);
        let wanted = attribute(&req.action);
        let queue = self.queues.entry(key.clone()).or_default();
        let same: Vec<(CommandId, bool)> = queue
            .iter()
            .filter_map(|other| {
                let c = self.commands.get(other)?;
                (attribute(&c.req.action) == wanted).then_some((*other, c.state == State::Queued))
            })
            .collect();
        if same.iter().any(|(other, _)| *other > id) {
            self.done_now(id, submitted, now, attempts, Outcome::Superseded);
            return;
        }
        let older: Vec<CommandId> = same
            .iter()
            .filter(|(_, queued)| *queued)
            .map(|(other, _)| *other)
            .collect();
        queue.retain(|c| !older.contains(c));
        if queue.len() >= self.config.max_queue {
            self.done_now(id, submitted, now, attempts, Outcome::QueueFull);
        } else {
            // After the command in flight, before the queued ones submitted later.
            let in_flight = queue.front().is_some_and(|head| {
                self.commands
                    .get(head)
                    .is_some_and(|c| c.state != State::Queued)
            });
            let at = queue
                .iter()
                .enumerate()
                .skip(usize::from(in_flight))
                .find(|(_, other)| **other > id)
                .map_or(queue.len(), |(i, _)| i);
            queue.insert(at, id);
            self.keep(
                id,
                Command {
                    req,
                    submitted,
                    deadline,
                    attempts,
                    gone: gone.into_iter().collect(),
                    state: State::Queued,
                    acked: false,
                    written,
                    lost,
                    parked: false,
                },
            );
            if at > 0 {
                self.trace(id, now, TraceEvent::Queued { ahead: at });
            }
        }
        for old in older {
            if let Some(c) = self.take(old) {
                self.done_now(old, c.submitted, now, c.attempts, Outcome::Superseded);
            }
        }
        self.pump(&key, now);
    }

    /// When [`Dispatcher::on_timeout`] must be called next.
    pub fn next_deadline(&self) -> Option<Duration> {
        let timers = self.commands.values().map(|c| match c.state {
            State::Waiting { timer, .. } => timer.min(c.deadline),
            State::Backoff { at } => at.min(c.deadline),
            _ => c.deadline,
        });
        let late = self.late_order.front().map(|(t, _, _)| *t + LATE_TTL);
        timers.chain(late).min()
    }

    /// Fires due timers.
    pub fn on_timeout(&mut self, now: Duration) {
        let due: Vec<CommandId> = self
            .commands
            .iter()
            .filter(|(_, c)| match c.state {
                State::Waiting { timer, .. } => now >= timer,
                _ => now >= c.deadline,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(c) = self.commands.get(&id) else {
                continue;
            };
            if now >= c.deadline {
                let outcome = if c.acked {
                    Outcome::Rejected
                } else if c.written {
                    Outcome::NoAck
                } else {
                    Outcome::Failed
                };
                self.finish(id, now, outcome);
            } else if c.acked {
                // The packet arrived but no result or confirming report followed: refused.
                self.finish(id, now, Outcome::Rejected);
            } else {
                self.silent_attempt(id, now, "timeout");
            }
        }
        while let Some((at, conn, msg)) = self.late_order.front().copied() {
            if now < at + LATE_TTL {
                break;
            }
            self.late_order.pop_front();
            self.late.remove(&(conn, msg));
        }
        self.advance(now);
    }

    /// Nothing came back from the current attempt: back off and retry, or give up.
    fn silent_attempt(&mut self, id: CommandId, now: Duration, reason: &'static str) {
        let Some(c) = self.commands.get_mut(&id) else {
            return;
        };
        if let State::Sending { conn } | State::Waiting { conn, .. } = c.state {
            if reason == "connection_lost" {
                c.gone.push(conn);
                c.lost = c.lost.saturating_add(1);
            }
            self.score(conn, false);
        }
        let Some(c) = self.commands.get(&id) else {
            return;
        };
        // A connection lost under an attempt is the bridge's fault, not a sign the device did
        // not hear: such attempts do not use up the retries (the deadline still bounds them).
        let counted = c.attempts.saturating_sub(c.lost);
        if counted > self.config.max_retries || c.attempts >= MAX_ATTEMPTS {
            // Never written anywhere: no bridge could carry it.
            let outcome = if c.written {
                Outcome::NoAck
            } else {
                Outcome::Failed
            };
            self.finish(id, now, outcome);
            return;
        }
        let (attempts, deadline) = (c.attempts, c.deadline);
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1 << attempts.saturating_sub(1).min(8));
        let ceiling = exp.min(self.config.backoff_cap);
        let backoff =
            Duration::from_micros(self.random(u64::try_from(ceiling.as_micros()).unwrap_or(0)));
        let attempt = attempts + 1;
        let at = (now + backoff).min(deadline);
        let Some(c) = self.commands.get_mut(&id) else {
            return;
        };
        c.state = State::Backoff { at };
        c.parked = matches!(reason, "no_connection" | "connection_lost");
        self.trace(
            id,
            now,
            TraceEvent::Retry {
                attempt,
                backoff,
                reason,
            },
        );
    }

    /// Starts commands whose backoff ended and heads of idle queues.
    fn advance(&mut self, now: Duration) {
        let ready: Vec<CommandId> = self
            .commands
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Backoff { at } if now >= at))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.attempt(id, now);
        }
    }

    fn pump(&mut self, key: &Key, now: Duration) {
        let Some(&head) = self.queues.get(key).and_then(|q| q.front()) else {
            self.queues.remove(key);
            return;
        };
        if self
            .commands
            .get(&head)
            .is_some_and(|c| c.state == State::Queued)
        {
            self.attempt(head, now);
        }
    }

    /// Sends the next attempt through the best bridge.
    fn attempt(&mut self, id: CommandId, now: Duration) {
        let Some(c) = self.commands.get(&id) else {
            return;
        };
        let candidates: Vec<ConnId> = c.req.bridges.clone();
        let gone = c.gone.clone();
        let key: Key = (c.req.home.clone(), c.req.target);
        // Keep a target on the bridge it last used while that connection lives: one TCP stream
        // keeps its commands in order, so a slow bridge that catches up can never apply an old
        // command after a newer one sent elsewhere.
        let sticky = self
            .sticky
            .get(&key)
            .copied()
            .filter(|b| candidates.contains(b) && !gone.contains(b));
        // Otherwise the best recent results among bridges still connected for this command
        // (all of them again if every one was lost: they may have reconnected).
        let usable: Vec<(usize, ConnId)> = {
            let live: Vec<(usize, ConnId)> = candidates
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, b)| !gone.contains(b))
                .collect();
            if live.is_empty() {
                candidates.iter().copied().enumerate().collect()
            } else {
                live
            }
        };
        let best = usable
            .iter()
            .max_by(|(ia, a), (ib, b)| {
                let rank = |conn: &ConnId, i: usize| {
                    let score = self.bridges.get(conn).map_or(0.5, |r| r.score);
                    (score, std::cmp::Reverse(i))
                };
                rank(a, *ia)
                    .partial_cmp(&rank(b, *ib))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(_, conn)| *conn);
        let Some(conn) = sticky.or(best) else {
            self.finish(id, now, Outcome::Failed);
            return;
        };
        if self.sticky.len() >= MAX_STICKY && !self.sticky.contains_key(&key) {
            // Bound: forget an arbitrary target's bridge (it is chosen afresh next time).
            if let Some(k) = self.sticky.keys().next().cloned() {
                self.sticky.remove(&k);
            }
        }
        self.sticky.insert(key, conn);
        let rto = self.rto(conn);
        let Some(c) = self.commands.get_mut(&id) else {
            return;
        };
        c.attempts = c.attempts.saturating_add(1);
        c.parked = false;
        c.state = State::Sending { conn };
        let (attempt, target, action) = (c.attempts, c.req.target, c.req.action);
        self.trace(id, now, TraceEvent::Attempt { attempt, conn, rto });
        self.out.push_back(Output::Transmit {
            conn,
            command: id,
            attempt,
            target,
            action,
        });
    }

    fn finish(&mut self, id: CommandId, now: Duration, outcome: Outcome) {
        let Some(c) = self.forget(id, now) else {
            return;
        };
        let key: Key = (c.req.home.clone(), c.req.target);
        self.done_now(id, c.submitted, now, c.attempts, outcome);
        self.pump(&key, now);
    }

    /// Holds a command (and counts it when it switches an outlet).
    fn keep(&mut self, id: CommandId, c: Command) {
        self.outlet_commands += usize::from(c.req.outlet.is_some());
        if let Some(old) = self.commands.insert(id, c) {
            self.outlet_commands -= usize::from(old.req.outlet.is_some());
        }
    }

    /// Lets go of a command (the counterpart of [`Dispatcher::keep`]).
    fn take(&mut self, id: CommandId) -> Option<Command> {
        let c = self.commands.remove(&id)?;
        self.outlet_commands -= usize::from(c.req.outlet.is_some());
        Some(c)
    }

    /// Removes a command and its live routes and queue place; its message ids are remembered
    /// for late answers.
    fn forget(&mut self, id: CommandId, now: Duration) -> Option<Command> {
        let c = self.take(id)?;
        // Forget this command's live routes; remember its message ids for late answers.
        let mine: Vec<(ConnId, MsgId)> = self
            .by_msg
            .iter()
            .filter(|(_, (cmd, _))| *cmd == id)
            .map(|(k, _)| *k)
            .collect();
        for key in mine {
            self.by_msg.remove(&key);
            if self.late.len() >= MAX_LATE {
                if let Some((_, conn, msg)) = self.late_order.pop_front() {
                    self.late.remove(&(conn, msg));
                }
            }
            if self.late.insert(key, id).is_none() {
                self.late_order.push_back((now, key.0, key.1));
            }
        }
        self.by_seq.retain(|_, (cmd, _)| *cmd != id);
        let key: Key = (c.req.home.clone(), c.req.target);
        if let Some(q) = self.queues.get_mut(&key) {
            q.retain(|x| *x != id);
        }
        Some(c)
    }

    fn done_now(
        &mut self,
        command: CommandId,
        submitted: Duration,
        now: Duration,
        attempts: u8,
        outcome: Outcome,
    ) {
        self.trace(command, now, TraceEvent::Done(outcome));
        self.out.push_back(Output::Done {
            command,
            outcome,
            attempts,
            latency: now.saturating_sub(submitted),
        });
    }

    fn trace(&mut self, command: CommandId, at: Duration, event: TraceEvent) {
        self.out.push_back(Output::Trace { command, at, event });
    }

    fn sample(&mut self, conn: ConnId, rtt: Duration) {
        let r = self.bridges.entry(conn).or_insert(Rtt {
            score: 0.5,
            ..Rtt::default()
        });
        match r.srtt {
            None => {
                r.srtt = Some(rtt);
                r.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                r.rttvar = r.rttvar * 3 / 4 + diff / 4;
                r.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
    }

    fn score(&mut self, conn: ConnId, good: bool) {
        let r = self.bridges.entry(conn).or_insert(Rtt {
            score: 0.5,
            ..Rtt::default()
        });
        r.score = r.score * 0.8 + if good { 0.2 } else { 0.0 };
    }

    /// Uniform in 0..=max (xorshift; seeded, so runs replay).
    fn random(&mut self, max: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if max == 0 { 0 } else { self.rng % (max + 1) }
    }
}

/// Which attribute an action sets: a newer command for the same target and attribute supersedes
/// an older one still queued, or one changing owner.
pub fn attribute(action: &Action) -> &'static str {
    match action {
        Action::Power(_) => "on",
        Action::Brightness(_) | Action::FanSpeed(_) => "brightness",
        Action::ColorTemp(_) | Action::Rgb(_) | Action::Effect(_) => "color",
        Action::SwitchMode(_) => "switch_mode",
    }
}

/// Whether a reported status shows what the action asked for. A colour counts as shown in the
/// form the `avoid` escaping policy sends it too (125 as 124, 126 as 127).
pub fn satisfies(action: &Action, s: &DeviceStatus) -> bool {
    match *action {
        Action::Power(on) => s.on == on,
        Action::Brightness(b) | Action::FanSpeed(b) => s.brightness == b && (b == 0 || s.on),
        Action::ColorTemp(t) => s.mode() == ColorMode::White(t),
        Action::Rgb(rgb) => {
            s.mode() == ColorMode::Rgb && (s.rgb == rgb || s.rgb == crate::command::nudge_rgb(rgb))
        }
        Action::Effect(_) => s.mode() == ColorMode::Effect,
        Action::SwitchMode(_) => false,
    }
}

/// Whether a status shows what an outlet command asked for: only power, read from the outlet's
/// bit of the mask in the brightness byte, gated by the state byte (PROTOCOL.md §8).
pub fn satisfies_outlet(action: &Action, outlet: u8, s: &DeviceStatus) -> bool {
    match *action {
        Action::Power(on) => {
            crate::catalog::outlet_bit(s.brightness, outlet).is_some_and(|bit| on == (s.on && bit))
        }
        _ => false,
    }
}

/// The status a device shows once it carried out `action` from status `s`, as it then reports
/// it: power sets the state (a multi-outlet plug, `outlets` > 1, switches every outlet: the
/// brightness byte is the outlet mask, PROTOCOL.md §8); brightness and fan speed set the
/// brightness byte and switch on (off at 0); a white sets the temperature byte, a colour sets
/// it to 254 with the colour, an effect sets it to 129. `outlet` (1–8) switches that outlet's
/// bit of the mask only. A switch-mode command changes no status.
pub fn after(action: &Action, outlet: Option<u8>, outlets: u8, s: &DeviceStatus) -> DeviceStatus {
    let mut next = *s;
    match (*action, outlet) {
        (Action::Power(on), Some(n)) => {
            let mask = if s.on { s.brightness } else { 0 };
            if let Some(mask) = crate::catalog::outlet_mask(mask, n, on) {
                next.brightness = mask;
                next.on = mask != 0;
            }
        }
        (_, Some(_)) => {}
        (Action::Power(on), None) => {
            next.on = on;
            if outlets > 1 {
                next.brightness = if on {
                    u8::try_from((1u16 << outlets.min(8)) - 1).unwrap_or(u8::MAX)
                } else {
                    0
                };
            }
        }
        (Action::Brightness(b) | Action::FanSpeed(b), None) => {
            next.brightness = b;
            next.on = b > 0;
        }
        (Action::ColorTemp(t), None) => next.temperature = t,
        (Action::Rgb(rgb), None) => {
            next.temperature = 254;
            next.rgb = rgb;
        }
        (Action::Effect(_), None) => next.temperature = 129,
        (Action::SwitchMode(_), None) => {}
    }
    next
}

/// Groups the outputs of one call by kind, for tests.
pub fn drain(
    d: &mut Dispatcher,
) -> (
    Vec<Output>,
    Vec<Output>,
    BTreeMap<CommandId, Vec<TraceEvent>>,
) {
    let (mut tx, mut done, mut trace) = (
        Vec::new(),
        Vec::new(),
        BTreeMap::<CommandId, Vec<TraceEvent>>::new(),
    );
    while let Some(o) = d.poll() {
        match o {
            Output::Transmit { .. } => tx.push(o),
            Output::Done { .. } => done.push(o),
            Output::Trace { command, event, .. } => trace.entry(command).or_default().push(event),
        }
    }
    (tx, done, trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MeshId;

    const A: ConnId = ConnId([0xa; 4]);
    const B: ConnId = ConnId([0xb; 4]);
    const MS: Duration = Duration::from_millis(1);

    fn req(id: u64, device: u16, action: Action, bridges: &[ConnId]) -> Request {
        Request {
            id: CommandId(id),
            home: "h".into(),
            target: Target::Device(device),
            action,
            bridges: bridges.to_vec(),
            outlet: None,
        }
    }

    fn status(device: u16, on: bool, brightness: u8) -> DeviceStatus {
        DeviceStatus {
            id: MeshId(device),
            online: true,
            on,
            brightness,
            temperature: 20,
            rgb: [0; 3],
        }
    }

    #[test]
    fn the_status_after_an_action_shows_it() {
        use crate::command::Effect;
        let off = DeviceStatus {
            on: false,
            ..status(7, false, 40)
        };
        for action in [
            Action::Power(true),
            Action::Power(false),
            Action::Brightness(30),
            Action::Brightness(0),
            Action::FanSpeed(75),
            Action::ColorTemp(80),
            Action::Rgb([1, 2, 3]),
            Action::Effect(Effect::Rainbow),
        ] {
            let next = after(&action, None, 0, &off);
            assert!(satisfies(&action, &next), "{action:?}: {next:?}");
        }
        assert!(after(&Action::Brightness(30), None, 0, &off).on);
        // A two-outlet plug: power is every outlet; an outlet is its bit.
        let plug = after(&Action::Power(true), None, 2, &off);
        assert_eq!((plug.on, plug.brightness), (true, 0b11));
        let right_off = after(&Action::Power(false), Some(2), 2, &plug);
        assert_eq!((right_off.on, right_off.brightness), (true, 0b01));
        assert!(satisfies_outlet(&Action::Power(false), 2, &right_off));
        let left_off = after(&Action::Power(false), Some(1), 2, &right_off);
        assert_eq!((left_off.on, left_off.brightness), (false, 0));
        // From off, an outlet turns on alone (the stale mask of an off plug does not count).
        let one = after(
            &Action::Power(true),
            Some(1),
            2,
            &DeviceStatus {
                brightness: 3,
                ..off
            },
        );
        assert_eq!((one.on, one.brightness), (true, 0b01));
    }

    #[test]
    fn a_colour_is_satisfied_as_asked_or_as_nudged() {
        let shown = |rgb| DeviceStatus {
            temperature: 254,
            rgb,
            ..status(7, true, 50)
        };
        let asked = Action::Rgb([125, 126, 10]);
        assert!(satisfies(&asked, &shown([125, 126, 10])));
        assert!(satisfies(&asked, &shown([124, 127, 10])));
        assert!(!satisfies(&asked, &shown([124, 126, 10])));
        assert!(!satisfies(&asked, &shown([126, 127, 10])));
        // Other colours match exactly.
        assert!(!satisfies(&Action::Rgb([1, 2, 3]), &shown([1, 2, 4])));
    }

    /// The transmits and outcomes produced so far.
    type Sends = Vec<(ConnId, CommandId, u8)>;
    type Ends = Vec<(CommandId, Outcome, u8)>;

    fn take(d: &mut Dispatcher) -> (Sends, Ends) {
        let (tx, done, _) = drain(d);
        let tx = tx
            .into_iter()
            .map(|o| match o {
                Output::Transmit {
                    conn,
                    command,
                    attempt,
                    ..
                } => (conn, command, attempt),
                _ => unreachable!(),
            })
            .collect();
        let done = done
            .into_iter()
            .map(|o| match o {
                Output::Done {
                    command,
                    outcome,
                    attempts,
                    ..
                } => (command, outcome, attempts),
                _ => unreachable!(),
            })
            .collect();
        (tx, done)
    }

    fn msg(n: u16) -> MsgId {
        MsgId::from_counter(n)
    }

    /// Runs timers until `until`, in 1 ms steps where something is due.
    fn run_until(d: &mut Dispatcher, until: Duration) {
        while let Some(t) = d.next_deadline() {
            if t > until {
                break;
            }
            d.on_timeout(t);
        }
    }

    #[test]
    fn applied_by_result() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        assert_eq!(take(&mut d).0, [(A, CommandId(1), 1)]);
        d.sent(CommandId(1), 1, msg(1), Seq(0x21), MS);
        d.ack(A, msg(1), 20 * MS);
        d.result(A, Seq(0x21), 0, 30 * MS);
        let (tx, done) = take(&mut d);
        assert!(tx.is_empty());
        assert_eq!(done, [(CommandId(1), Outcome::Applied, 1)]);
        assert_eq!(
            d.sizes(),
            Sizes {
                late: 1,
                ..Sizes::default()
            }
        );
    }

    #[test]
    fn applied_by_status_report_when_the_result_is_lost() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Brightness(40), &[A]), Duration::ZERO);
        take(&mut d);
        d.sent(CommandId(1), 1, msg(1), Seq(3), MS);
        // A report of the old state does not count; the new one does.
        d.status("h", &status(5, true, 10), 50 * MS);
        assert!(take(&mut d).1.is_empty());
        d.status("h", &status(5, true, 40), 60 * MS);
        assert_eq!(take(&mut d).1, [(CommandId(1), Outcome::Applied, 1)]);
    }

    #[test]
    fn an_outlet_command_is_confirmed_by_its_bit_of_the_mask() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        // Right outlet (2) of the dual plug at mesh id 6 on: target 06 02.
        let target = crate::catalog::outlet_target(6, 2).unwrap();
        d.submit(
            Request {
                target,
                outlet: Some(2),
                ..req(1, 6, Action::Power(true), &[A])
            },
            Duration::ZERO,
        );
        take(&mut d);
        d.sent(CommandId(1), 1, msg(1), Seq(3), MS);
        // The plug on with only the left outlet (mask 1): not what was asked.
        d.status("h", &status(6, true, 1), 20 * MS);
        assert!(take(&mut d).1.is_empty());
        // pycync's outdoor-plug vector: state 1, mask 2 = right on.
        d.status("h", &status(6, true, 2), 30 * MS);
        assert_eq!(take(&mut d).1, [(CommandId(1), Outcome::Applied, 1)]);
        assert_eq!(d.outlet_commands, 0);
        // Outlet off is read through the state byte too.
        assert!(satisfies_outlet(
            &Action::Power(false),
            1,
            &status(6, false, 3)
        ));
        assert!(!satisfies_outlet(
            &Action::Power(false),
            1,
            &status(6, true, 3)
        ));
        assert!(!satisfies_outlet(
            &Action::Brightness(3),
            1,
            &status(6, true, 3)
        ));
        // A plain command for the device itself still confirms as before.
        d.submit(req(2, 6, Action::Power(false), &[A]), 40 * MS);
        take(&mut d);
        d.sent(CommandId(2), 1, msg(2), Seq(4), 41 * MS);
        d.status("h", &status(6, false, 0), 50 * MS);
        assert_eq!(take(&mut d).1, [(CommandId(2), Outcome::Applied, 1)]);
    }

    #[test]
    fn a_bare_ack_means_rejected_and_a_failing_result_too() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        d.submit(req(2, 6, Action::Power(true), &[A]), Duration::ZERO);
        take(&mut d);
        d.sent(CommandId(1), 1, msg(1), Seq(1), MS);
        d.sent(CommandId(2), 1, msg(2), Seq(2), MS);
        d.ack(A, msg(1), 10 * MS);
        d.result(A, Seq(2), 1, 10 * MS);
        run_until(&mut d, Duration::from_secs(10));
        let (tx, mut done) = take(&mut d);
        done.sort();
        assert!(tx.is_empty(), "an acknowledged command is never resent");
        assert_eq!(
            done,
            [
                (CommandId(1), Outcome::Rejected, 1),
                (CommandId(2), Outcome::Rejected, 1)
            ]
        );
    }

    #[test]
    fn silence_is_retried_with_backoff_then_no_ack_within_the_deadline() {
        let config = DeliveryConfig::default();
        let mut d = Dispatcher::new(config);
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        let mut sends = Vec::new();
        let mut now = Duration::ZERO;
        loop {
            let (tx, done) = take(&mut d);
            for (_, cmd, attempt) in tx {
                sends.push(now);
                d.sent(cmd, attempt, msg(u16::from(attempt)), Seq(attempt), now);
            }
            if let Some(&(_, outcome, attempts)) = done.first() {
                assert_eq!((outcome, attempts), (Outcome::NoAck, 3));
                break;
            }
            now = d.next_deadline().unwrap();
            d.on_timeout(now);
        }
        assert_eq!(sends.len(), 3);
        // Initial RTO 1 s, then backoffs of at most 250 ms and 500 ms.
        assert!(sends[1] >= Duration::from_secs(1) && sends[1] <= Duration::from_millis(1250));
        assert!(now <= config.deadline);
        assert_eq!(d.sizes().active, 0);
    }

    #[test]
    fn a_retry_stays_on_a_live_bridge_and_late_answers_still_count() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(false), &[A, B]), Duration::ZERO);
        let (tx, _) = take(&mut d);
        assert_eq!(tx[0].0, A);
        d.sent(CommandId(1), 1, msg(7), Seq(9), Duration::ZERO);
        // Silence: the retry goes over the same connection (order is kept on one stream)…
        run_until(&mut d, Duration::from_millis(1300));
        let (tx, _) = take(&mut d);
        assert_eq!(tx, [(A, CommandId(1), 2)]);
        d.sent(
            CommandId(1),
            2,
            msg(8),
            Seq(10),
            Duration::from_millis(1300),
        );
        // …until that connection is lost: then another bridge that reaches the device.
        d.connection_lost(A, Duration::from_millis(1310));
        run_until(&mut d, Duration::from_millis(2000));
        let (tx, _) = take(&mut d);
        assert_eq!(tx, [(B, CommandId(1), 3)]);
        d.sent(
            CommandId(1),
            3,
            msg(100),
            Seq(4),
            Duration::from_millis(2000),
        );
        // The next command for the device keeps to B.
        // The first attempt's result arrives late: it still completes the command.
        d.result(A, Seq(9), 0, Duration::from_millis(2100));
        assert_eq!(take(&mut d).1, [(CommandId(1), Outcome::Applied, 3)]);
        // Answers after the end are recognised as late, not as another command's.
        d.submit(
            req(2, 5, Action::Power(true), &[A, B]),
            Duration::from_millis(2200),
        );
        assert_eq!(take(&mut d).0, [(B, CommandId(2), 1)]);
        d.sent(
            CommandId(2),
            1,
            msg(8),
            Seq(10),
            Duration::from_millis(2200),
        );
        d.ack(A, msg(7), Duration::from_millis(2300));
        let (_, _, trace) = drain(&mut d);
        assert_eq!(trace[&CommandId(1)], [TraceEvent::Late { what: "ack" }]);
        d.ack(B, msg(8), Duration::from_millis(2400));
        let (_, _, trace) = drain(&mut d);
        assert!(matches!(
            trace[&CommandId(2)][..],
            [TraceEvent::Ack { attempt: 1, .. }]
        ));
    }

    #[test]
    fn message_ids_wrap_and_a_reused_id_belongs_to_the_new_command() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        // The connection's counter wraps from 0xffff to 0: both ids work.
        for (i, counter) in [0xffffu16, 0x0000].into_iter().enumerate() {
            let id = CommandId(i as u64);
            d.submit(
                req(i as u64, 5, Action::Power(i == 0), &[A]),
                Duration::ZERO,
            );
            take(&mut d);
            d.sent(id, 1, msg(counter), Seq(1), MS);
            d.ack(A, msg(counter), 2 * MS);
            d.result(A, Seq(1), 0, 3 * MS);
            assert_eq!(take(&mut d).1, [(id, Outcome::Applied, 1)]);
        }
        // 65,536 packets later the first id comes round again, for a new command: its answers
        // go to the new command, not to the finished one.
        d.submit(req(9, 5, Action::Power(true), &[A]), 10 * MS);
        take(&mut d);
        d.sent(CommandId(9), 1, msg(0xffff), Seq(2), 10 * MS);
        d.ack(A, msg(0xffff), 11 * MS);
        let (_, _, trace) = drain(&mut d);
        assert!(matches!(
            trace[&CommandId(9)][..],
            [TraceEvent::Sent { .. }, TraceEvent::Ack { attempt: 1, .. }]
        ));
        assert!(!trace.contains_key(&CommandId(0)));
    }

    #[test]
    fn queued_commands_are_superseded_and_a_full_queue_refuses() {
        let mut d = Dispatcher::new(DeliveryConfig {
            max_queue: 3,
            ..DeliveryConfig::default()
        });
        for i in 1..=3 {
            d.submit(
                req(i, 5, Action::Brightness(u8::try_from(i).unwrap()), &[A]),
                Duration::ZERO,
            );
        }
        // 1 is in flight, 2 was replaced by 3.
        let (tx, done) = take(&mut d);
        assert_eq!(tx, [(A, CommandId(1), 1)]);
        assert_eq!(done, [(CommandId(2), Outcome::Superseded, 0)]);
        d.submit(req(4, 5, Action::Power(true), &[A]), MS);
        d.submit(req(5, 5, Action::ColorTemp(3), &[A]), MS);
        assert_eq!(take(&mut d).1, [(CommandId(5), Outcome::QueueFull, 0)]);
        // Completing 1 starts 3, then 4, in order.
        d.sent(CommandId(1), 1, msg(1), Seq(1), MS);
        d.result(A, Seq(1), 0, 2 * MS);
        assert_eq!(take(&mut d).0, [(A, CommandId(3), 1)]);
    }

    #[test]
    fn no_bridge_fails_and_a_full_writer_is_backpressure() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[]), Duration::ZERO);
        assert_eq!(take(&mut d).1, [(CommandId(1), Outcome::Failed, 0)]);
        d.submit(req(2, 5, Action::Power(true), &[A]), Duration::ZERO);
        take(&mut d);
        d.send_failed(CommandId(2), 1, MS);
        assert_eq!(take(&mut d).1, [(CommandId(2), Outcome::Backpressure, 1)]);
    }

    #[test]
    fn a_lost_connection_moves_the_command_to_another_bridge() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[A, B]), Duration::ZERO);
        take(&mut d);
        d.sent(CommandId(1), 1, msg(1), Seq(1), MS);
        d.connection_lost(A, 10 * MS);
        run_until(&mut d, Duration::from_millis(300));
        let (tx, _) = take(&mut d);
        assert_eq!(tx, [(B, CommandId(1), 2)]);
    }

    #[test]
    fn a_handed_off_command_leaves_unwritten_and_the_next_one_starts() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        d.submit(req(2, 5, Action::Brightness(30), &[A]), MS);
        assert_eq!(take(&mut d).0, [(A, CommandId(1), 1)]);
        let moved = d.hand_off(CommandId(1), 1, 2 * MS).unwrap();
        assert_eq!(
            (moved.req.id, moved.attempts, moved.written, moved.deadline),
            (CommandId(1), 0, false, Duration::from_secs(5))
        );
        // No outcome here: its new owner decides it. The next command for the device starts.
        assert_eq!(take(&mut d), (vec![(A, CommandId(2), 1)], vec![]));
        assert_eq!(d.hand_off(CommandId(1), 1, 3 * MS), None);
        // Only a command waiting to be written can leave.
        d.sent(CommandId(2), 1, msg(2), Seq(2), 3 * MS);
        assert_eq!(d.hand_off(CommandId(2), 1, 4 * MS), None);
        assert_eq!(d.sizes().active, 1);
    }

    #[test]
    fn an_adopted_command_keeps_its_deadline_and_attempts() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        // Written once elsewhere, then its connection failed it: it avoids that bridge.
        let moved = Moved {
            req: req(1, 5, Action::Power(true), &[A, B]),
            submitted: Duration::ZERO,
            deadline: Duration::from_secs(5),
            attempts: 1,
            lost: 1,
            written: true,
        };
        d.adopt(moved, Some(A), Duration::from_secs(1));
        assert_eq!(take(&mut d).0, [(B, CommandId(1), 2)]);
        d.sent(CommandId(1), 2, msg(1), Seq(1), Duration::from_secs(1));
        run_until(&mut d, Duration::from_secs(6));
        let (_, done) = take(&mut d);
        let [(command, outcome, attempts)] = done[..] else {
            panic!("{done:?}")
        };
        assert_eq!((command, outcome), (CommandId(1), Outcome::NoAck));
        assert!(attempts >= 2);
        // Already past its deadline: it ends at once.
        let late = Moved {
            req: req(2, 5, Action::Power(true), &[A]),
            submitted: Duration::ZERO,
            deadline: Duration::from_secs(5),
            attempts: 0,
            lost: 0,
            written: false,
        };
        d.adopt(late, None, Duration::from_secs(7));
        assert_eq!(
            take(&mut d),
            (vec![], vec![(CommandId(2), Outcome::Failed, 0)])
        );
    }

    #[test]
    fn an_adopted_command_never_overtakes_a_newer_one() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        let moved = |id: u64, device: u16, action: Action| Moved {
            req: req(id, device, action, &[A]),
            submitted: Duration::ZERO,
            deadline: Duration::from_secs(5),
            attempts: 0,
            lost: 0,
            written: false,
        };
        // A newer command for the same attribute is in flight: the older one is superseded.
        d.submit(req(3, 6, Action::Power(false), &[A]), MS);
        take(&mut d);
        d.adopt(moved(2, 6, Action::Power(true)), None, 2 * MS);
        assert_eq!(take(&mut d).1, [(CommandId(2), Outcome::Superseded, 0)]);
        // Otherwise it takes its place in submission order, and supersedes an older queued one.
        d.submit(req(10, 7, Action::Power(true), &[A]), MS);
        d.submit(req(11, 7, Action::Brightness(20), &[A]), MS);
        d.submit(req(13, 7, Action::ColorTemp(40), &[A]), MS);
        take(&mut d);
        d.adopt(moved(12, 7, Action::Brightness(60)), None, 2 * MS);
        assert_eq!(take(&mut d).1, [(CommandId(11), Outcome::Superseded, 0)]);
        d.sent(CommandId(10), 1, msg(10), Seq(10), 3 * MS);
        d.result(A, Seq(10), 0, 4 * MS);
        assert_eq!(take(&mut d).0, [(A, CommandId(12), 1)]);
        d.sent(CommandId(12), 1, msg(12), Seq(12), 5 * MS);
        d.result(A, Seq(12), 0, 6 * MS);
        assert_eq!(take(&mut d).0, [(A, CommandId(13), 1)]);
    }

    #[test]
    fn a_parked_command_is_tried_when_its_bridge_connects() {
        let mut d = Dispatcher::new(DeliveryConfig {
            backoff_base: Duration::from_secs(2),
            ..DeliveryConfig::default()
        });
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        take(&mut d);
        // No connection: it backs off, without using up an attempt.
        d.unreachable(CommandId(1), 1, MS);
        take(&mut d);
        d.connected(B, 2 * MS);
        assert!(take(&mut d).0.is_empty(), "another bridge changes nothing");
        d.connected(A, 3 * MS);
        assert_eq!(take(&mut d).0, [(A, CommandId(1), 1)]);
    }

    #[test]
    fn an_ack_says_whether_it_answers_a_command() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        d.submit(req(1, 5, Action::Power(true), &[A]), Duration::ZERO);
        take(&mut d);
        d.sent(CommandId(1), 1, msg(1), Seq(1), MS);
        assert!(d.ack(A, msg(1), 2 * MS));
        assert!(!d.ack(A, msg(2), 2 * MS));
        assert!(!d.ack(B, msg(1), 2 * MS));
        d.result(A, Seq(1), 0, 3 * MS);
        // A late copy still belongs to it.
        assert!(d.ack(A, msg(1), 4 * MS));
    }

    #[test]
    fn rto_adapts_to_the_measured_round_trip() {
        let mut d = Dispatcher::new(DeliveryConfig::default());
        assert_eq!(d.rto(A), Duration::from_secs(1));
        for i in 0..20u16 {
            let t = Duration::from_secs(u64::from(i));
            d.submit(req(u64::from(i), 5, Action::Power(i % 2 == 0), &[A]), t);
            take(&mut d);
            d.sent(CommandId(u64::from(i)), 1, msg(i), Seq(1), t);
            d.ack(A, msg(i), t + 40 * MS);
            d.result(A, Seq(1), 0, t + 40 * MS);
        }
        // 40 ms round trips: the RTO falls to its floor.
        assert_eq!(d.rto(A), Duration::from_millis(250));
        for i in 0..10u16 {
            let t = Duration::from_secs(100 + u64::from(i));
            d.submit(req(100 + u64::from(i), 5, Action::Power(true), &[A]), t);
            take(&mut d);
            d.sent(CommandId(100 + u64::from(i)), 1, msg(i), Seq(1), t);
            d.result(A, Seq(1), 0, t + Duration::from_millis(900));
        }
        assert!(d.rto(A) > Duration::from_millis(900) && d.rto(A) <= Duration::from_secs(3));
    }

    /// A seeded xorshift for the random walk below.
    struct Walk(u64);

    impl Walk {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The owner's side of the walk: writes transmits (sometimes failing), records outcomes.
    struct Owner {
        wire: Vec<(ConnId, MsgId, Seq)>,
        counter: u16,
        outcomes: BTreeMap<CommandId, (Outcome, Duration)>,
        /// Commands handed to another owner, with the bridge they were handed over on.
        away: Vec<(Moved, ConnId)>,
    }

    impl Owner {
        fn pump(&mut self, d: &mut Dispatcher, walk: &mut Walk, now: Duration, seed: u64) {
            while let Some(o) = d.poll() {
                match o {
                    Output::Transmit {
                        conn,
                        command,
                        attempt,
                        ..
                    } => {
                        let fate = walk.next(8);
                        if fate == 0 {
                            d.send_failed(command, attempt, now);
                        } else if fate == 1 {
                            let moved = d.hand_off(command, attempt, now).unwrap();
                            assert!(moved.deadline >= now, "seed {seed}");
                            self.away.push((moved, conn));
                        } else {
                            self.counter = self.counter.wrapping_add(1);
                            let s = Seq(u8::try_from(self.counter % 256).unwrap());
                            self.wire.push((conn, msg(self.counter), s));
                            d.sent(command, attempt, msg(self.counter), s, now);
                        }
                    }
                    Output::Done {
                        command,
                        outcome,
                        latency,
                        ..
                    } => {
                        let first = self.outcomes.insert(command, (outcome, latency)).is_none();
                        assert!(first, "seed {seed}: two outcomes for {command}");
                    }
                    Output::Trace { .. } => {}
                }
            }
        }

        /// The other owner ends a command it took (by its deadline), or gives it back.
        fn elsewhere(&mut self, d: &mut Dispatcher, walk: &mut Walk, now: Duration, seed: u64) {
            if self.away.is_empty() {
                return;
            }
            let i = usize::try_from(walk.next(self.away.len() as u64)).unwrap();
            let (moved, conn) = self.away.swap_remove(i);
            if walk.next(2) == 0 {
                d.adopt(moved, Some(conn), now);
            } else {
                let end = now.min(moved.deadline);
                let first = self
                    .outcomes
                    .insert(moved.req.id, (Outcome::Applied, end - moved.submitted))
                    .is_none();
                assert!(first, "seed {seed}: two outcomes for {}", moved.req.id);
            }
        }
    }

    #[test]
    fn every_command_ends_exactly_once_by_its_deadline_whatever_happens() {
        // Seeded random walks of submissions, answers, losses and disconnects; timers fire at
        // their exact deadlines.
        for seed in 0..300u64 {
            let mut walk = Walk(seed.wrapping_mul(6_364_136_223_846_793_005) | 1);
            let config = DeliveryConfig {
                max_queue: 4,
                seed,
                ..DeliveryConfig::default()
            };
            let mut d = Dispatcher::new(config);
            let mut owner = Owner {
                wire: Vec::new(),
                counter: 0,
                outcomes: BTreeMap::new(),
                away: Vec::new(),
            };
            let mut submitted = 0usize;
            let mut now = Duration::ZERO;
            for step in 0..400u64 {
                let target = now + Duration::from_millis(walk.next(50));
                while let Some(t) = d.next_deadline().filter(|t| *t <= target) {
                    now = t;
                    d.on_timeout(now);
                    owner.pump(&mut d, &mut walk, now, seed);
                }
                now = target;
                let pick = |walk: &mut Walk, wire: &[(ConnId, MsgId, Seq)]| {
                    wire[usize::try_from(walk.next(wire.len() as u64)).unwrap()]
                };
                match walk.next(10) {
                    0..=2 if step < 300 => {
                        let action = if walk.next(2) == 0 {
                            Action::Power(walk.next(2) == 0)
                        } else {
                            Action::Brightness(u8::try_from(walk.next(101)).unwrap())
                        };
                        let device = u16::try_from(walk.next(3)).unwrap();
                        d.submit(req(step, device, action, &[A, B]), now);
                        submitted += 1;
                    }
                    3 if !owner.wire.is_empty() => {
                        let (c, m, _) = pick(&mut walk, &owner.wire);
                        d.ack(c, m, now);
                    }
                    4 if !owner.wire.is_empty() => {
                        let (c, _, s) = pick(&mut walk, &owner.wire);
                        d.result(c, s, u8::from(walk.next(10) == 0), now);
                    }
                    5 => {
                        let device = u16::try_from(walk.next(3)).unwrap();
                        let on = walk.next(2) == 0;
                        let b = u8::try_from(walk.next(101)).unwrap();
                        d.status("h", &status(device, on, b), now);
                    }
                    6 if walk.next(20) == 0 => {
                        d.connection_lost(if walk.next(2) == 0 { A } else { B }, now);
                    }
                    7 => owner.elsewhere(&mut d, &mut walk, now, seed),
                    8 if walk.next(10) == 0 => {
                        d.connected(if walk.next(2) == 0 { A } else { B }, now);
                    }
                    _ => {}
                }
                owner.pump(&mut d, &mut walk, now, seed);
            }
            loop {
                while !owner.away.is_empty() {
                    owner.elsewhere(&mut d, &mut walk, now, seed);
                    owner.pump(&mut d, &mut walk, now, seed);
                }
                let Some(t) = d.next_deadline() else { break };
                now = t;
                d.on_timeout(now);
                owner.pump(&mut d, &mut walk, now, seed);
            }
            assert_eq!(
                owner.outcomes.len(),
                submitted,
                "seed {seed}: every command ends"
            );
            for (outcome, latency) in owner.outcomes.values() {
                assert!(
                    *latency <= config.deadline,
                    "seed {seed}: {outcome:?} after {latency:?}"
                );
            }
            let sizes = d.sizes();
            assert_eq!(
                sizes,
                Sizes::default(),
                "seed {seed}: all drained, late answers expired"
            );
        }
    }
}
