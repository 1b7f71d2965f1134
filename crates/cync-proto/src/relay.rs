//! Relay mode, sans I/O: one device connection relayed to the cloud while cyncd keeps
//! controlling it locally.
//!
//! In relay mode a device connection has two writers towards the device — cyncd (its answers,
//! its mesh requests, the commands people give it) and the cloud (its commands) — and the
//! device's packets have two readers. One [`Relay`] per relayed connection decides, packet by
//! whole packet (the framer's, never split or merged), what goes where. The owner feeds it
//! every packet the device sends ([`Relay::from_device`]), every packet the cloud sends
//! ([`Relay::from_cloud`]) and every byte cyncd writes to the device ([`Relay::local_to_device`]),
//! in the order they cross the device's stream, and tells it when the upstream connects or
//! drops. Time is passed in.
//!
//! # Who answers the device
//!
//! cyncd answers every device packet itself, at once, whether the upstream is up, down or
//! reconnecting: `0x23`→`0x28`, `0xC3`→`0xC8`, `0xD3`→`0xD8`, `0x43`→`0x48`, `0x83`→`0x88` and a
//! device `0x73`→`0x7B`, exactly as in normal mode. The cloud's answers to device packets (those
//! same six types) are consumed here and never reach the device ([`Kept::CloudAnswer`]). So a
//! device gets exactly one answer per packet, and an upstream that drops, refuses or answers
//! late can never leave a heartbeat or a report unanswered. The cloud's `0x78` notices (cyncd
//! never sends one) pass to the device.
//!
//! # What goes up
//!
//! Everything the device sends goes up untouched, except:
//! - the device's answers to cyncd's own requests — the `0x7B` of a local command, its `f9`
//!   result, the `0xAB` answer to cyncd's `0xA3`, and mesh-info pages only cyncd asked for —
//!   which go to cyncd alone ([`Kept::LocalAnswer`]);
//! - the hello, which is sent first on every new upstream connection
//!   ([`Relay::upstream_connected`], followed by the device's last `0xC3`), never in the middle
//!   of one;
//! - while the upstream is connecting for the first time, packets wait in a bounded buffer
//!   ([`PENDING_PACKETS`], [`PENDING_BYTES`]; full: the newest is dropped) and follow the hello;
//!   while it is down after a failure they are dropped ([`Dropped::UpstreamDown`]) — the cloud
//!   learns the state again from the next reports.
//!
//! Everything the cloud sends goes down untouched, except its answers (above).
//!
//! # Message ids and seqs: who a device answer belongs to
//!
//! The device answers a `0x73` with a `0x7B` echoing its `[5:12]` and an `f9` result carrying
//! its seq and opcode; an `0xA3` with an `0xAB` echoing `[5:12]`. The cloud's packets keep their
//! ids and seqs; cyncd's must not be mistaken for them, and the rules are:
//! 1. **Avoidance.** cyncd picks its seqs and message ids around the cloud's
//!    ([`Relay::avoid`]): no seq the cloud used in the last [`ANSWER_TTL`], none of the
//!    [`AVOID_AHEAD`] seqs after the cloud's last one (the cloud counts up by one per command),
//!    before the cloud has sent anything none below [`LOW_SEQS`] (where the cloud's and legacy
//!    counters start), and no message id the cloud used with the device's own id in that
//!    window.
//! 2. **Write order.** The relay is the only writer on the device's stream, so it records every
//!    request written to the device, with its writer, in a ledger, in stream order. A device
//!    answer goes to the writer of the oldest unanswered request it matches — a `0x7B` or `0xAB`
//!    by the 7 bytes `[5:12]`, an `f9` result by seq and opcode — so even ids that do collide
//!    (the cloud sent one cyncd had already used) are told apart by order, as the device
//!    answers in order. A repeated answer (a device that sends one twice) goes where the first
//!    went.
//! 3. **Unattributable answers go up.** An answer that matches no request in the ledger (it
//!    expired after [`ANSWER_TTL`], or was evicted from a full ledger) goes to the cloud, as
//!    it would without cyncd, and is never credited to a local command.
//!
//! What the rules cannot do: when both writers have a request with the same seq and opcode
//! outstanding (which avoidance makes take 32 cloud commands within [`ANSWER_TTL`]) and the
//! device loses its answer to the older one, the answer to the newer one is credited to the
//! older one's writer.
//!
//! Mesh-info pages (`f9 52`) are listings, not results: they go up when the cloud asked for one
//! within [`ANSWER_TTL`] (or nobody did), and cyncd's session reads them when it asked.
//!
//! # Bounds
//!
//! The ledger holds at most [`LEDGER`] requests (full: the oldest is evicted and counted);
//! entries expire after [`ANSWER_TTL`]. At most [`CLOUD_IDS`] recent cloud seqs and message ids
//! are remembered. The pending buffer is bounded as above; the hello and `0xC3` kept for replay
//! are one packet each.

use crate::frame::{Body, Direction};
use crate::ids::{ConnId, MsgId};
use std::collections::VecDeque;
use std::time::Duration;

/// How long a request written to the device keeps its answers routed to its writer, and how
/// long the cloud's seqs and message ids are avoided.
pub const ANSWER_TTL: Duration = Duration::from_secs(10);
/// Requests remembered in the ledger (cyncd's and the cloud's); the oldest is evicted first.
pub const LEDGER: usize = 256;
/// Recent cloud seqs and message ids remembered for avoidance.
pub const CLOUD_IDS: usize = 64;
/// Seqs after the cloud's last one that cyncd does not use.
pub const AVOID_AHEAD: u8 = 32;
/// Seqs cyncd avoids before the cloud has sent any: `0..LOW_SEQS`.
pub const LOW_SEQS: u8 = 0x80;
/// Device packets held while the first upstream connection is being made.
pub const PENDING_PACKETS: usize = 64;
/// Bytes held while the first upstream connection is being made.
pub const PENDING_BYTES: usize = 16 * 1024;

/// Who wrote a request to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// cyncd: its session's requests and the commands people give it.
    Local,
    /// The upstream cloud.
    Cloud,
}

/// What a device packet is, as far as answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not an answer to a request (a report, a heartbeat, a hello…): state for everyone.
    None,
    /// An answer to cyncd's request: cyncd's session handles it.
    Local,
    /// An answer to the cloud's request (or one nobody in the ledger asked for): cyncd must not
    /// credit it to any of its commands.
    Cloud,
}

/// Why a packet was deliberately not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A device answer to cyncd's own request: cyncd's alone.
    LocalAnswer,
    /// The cloud's answer to a device packet cyncd already answered.
    CloudAnswer,
    /// The device's hello: sent first on every upstream connection instead.
    Hello,
}

impl Kept {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::LocalAnswer => "local_answer",
            Self::CloudAnswer => "cloud_answer",
            Self::Hello => "hello",
        }
    }
}

/// Why a packet that should have gone up did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The upstream is down (after a failure; it is being retried).
    UpstreamDown,
    /// The buffer for the first connection is full.
    PendingFull,
}

impl Dropped {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::UpstreamDown => "upstream_down",
            Self::PendingFull => "pending_full",
        }
    }
}

/// What to do with one device packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromDevice {
    /// Forward it to the upstream now.
    pub up: bool,
    /// It waits for the upstream's first connection (sent after the hello).
    pub pending: bool,
    /// Not forwarded by rule.
    pub kept: Option<Kept>,
    /// Not forwarded although it should have been.
    pub dropped: Option<Dropped>,
    /// Whose answer it is.
    pub answer: Answer,
}

/// What to do with one cloud packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromCloud {
    /// Write it to the device.
    pub down: bool,
    /// Not forwarded by rule.
    pub kept: Option<Kept>,
    /// It reuses a request key or seq that cyncd has outstanding (resolved by write order).
    pub collision: bool,
}

/// The upstream's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The first connection is being made: device packets wait.
    Connecting,
    /// Connected: device packets go up.
    Up,
    /// Lost or failed, being retried: device packets are dropped.
    Down,
}

impl Upstream {
    /// A stable label for the API, the page and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// A set of seqs (one bit per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqSet([u64; 4]);

impl SeqSet {
    /// The empty set.
    pub const EMPTY: Self = Self([0; 4]);

    /// Adds `seq`.
    pub fn insert(&mut self, seq: u8) {
        let (word, bit) = (usize::from(seq / 64), seq % 64);
        if let Some(w) = self.0.get_mut(word) {
            *w |= 1 << bit;
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u8) -> bool {
        let (word, bit) = (usize::from(seq / 64), seq % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Number of seqs in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// Seqs and message ids cyncd must not use on a relayed connection ([`Relay::avoid`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Avoid {
    /// Seqs not to use.
    pub seqs: SeqSet,
    /// Message ids not to use with the device's own id.
    pub msgs: Vec<MsgId>,
}

/// One request written to the device.
#[derive(Debug, Clone, Copy)]
struct Written {
    owner: Owner,
    /// `[5:12]`: what the `0x7B`/`0xAB` echoes.
    key: [u8; 7],
    /// Seq and opcode of a request frame (`f8`), for matching its `f9` result.
    request: Option<(u8, u8)>,
    at: Duration,
    acked: bool,
    answered: bool,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Ledger entries evicted while unanswered because the ledger was full.
    pub evicted: u64,
    /// Requests whose key or seq was outstanding for the other writer when written.
    pub collisions: u64,
    /// Device answers that matched no request and went up by default.
    pub unattributed: u64,
}

/// One relayed connection's routing state. See the module documentation.
#[derive(Debug)]
pub struct Relay {
    /// A phone-app connection: everything passes both ways, nothing is answered or kept.
    transparent: bool,
    state: Upstream,
    conn: Option<ConnId>,
    hello: Option<Vec<u8>>,
    time_request: Option<Vec<u8>>,
    pending: Vec<u8>,
    pending_packets: usize,
    /// The pending packets hold the `0xC3` (so it is not replayed twice).
    pending_time_request: bool,
    ledger: VecDeque<Written>,
    /// Recent cloud seqs and when.
    cloud_seqs: VecDeque<(u8, Duration)>,
    cloud_last_seq: Option<(u8, Duration)>,
    /// Recent cloud message ids used with the device's own id, and when.
    cloud_msgs: VecDeque<(MsgId, Duration)>,
    cloud_mesh_until: Option<Duration>,
    local_mesh_until: Option<Duration>,
    counters: RelayCounters,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay {
    /// A relay whose upstream is connecting for the first time.
    pub fn new() -> Self {
        Self {
            transparent: false,
            state: Upstream::Connecting,
            conn: None,
            hello: None,
            time_request: None,
            pending: Vec::new(),
            pending_packets: 0,
            pending_time_request: false,
            ledger: VecDeque::new(),
            cloud_seqs: VecDeque::new(),
            cloud_last_seq: None,
            cloud_msgs: VecDeque::new(),
            cloud_mesh_until: None,
            local_mesh_until: None,
            counters: RelayCounters::default(),
        }
    }

    /// A relay for a phone-app connection (its first packet a `0x13`): cyncd does not serve
    /// apps, so every packet passes untouched both ways; the `0x13` is sent first on every
    /// upstream connection, as a device's hello is.
    pub fn app() -> Self {
        Self {
            transparent: true,
            ..Self::new()
        }
    }

    /// The upstream's state.
    pub fn state(&self) -> Upstream {
        self.state
    }

    /// The counters so far.
    pub fn counters(&self) -> RelayCounters {
        self.counters
    }

    /// Requests in the ledger.
    pub fn ledger_len(&self) -> usize {
        self.ledger.len()
    }

    /// The upstream connected: returns the bytes to send on it first — the device's hello, its
    /// last `0xC3`, then whatever waited for the first connection.
    pub fn upstream_connected(&mut self) -> Vec<u8> {
        self.state = Upstream::Up;
        let mut out = Vec::new();
        if let Some(hello) = &self.hello {
            out.extend_from_slice(hello);
            if let Some(c3) = self
                .time_request
                .as_ref()
                .filter(|_| !self.pending_time_request)
            {
                out.extend_from_slice(c3);
            }
        }
        out.append(&mut self.pending);
        self.pending_packets = 0;
        self.pending_time_request = false;
        out
    }

    /// The upstream dropped or a connection attempt failed: returns how many waiting packets
    /// were dropped. The cloud's requests stay in the ledger, so their late answers are never
    /// credited to cyncd.
    pub fn upstream_lost(&mut self) -> usize {
        self.state = Upstream::Down;
        self.cloud_mesh_until = None;
        self.pending.clear();
        self.pending_time_request = false;
        std::mem::take(&mut self.pending_packets)
    }

    /// What cyncd must avoid for its next requests (see the module documentation).
    pub fn avoid(&mut self, now: Duration) -> Avoid {
        self.expire(now);
        let mut seqs = SeqSet::EMPTY;
        for (s, _) in &self.cloud_seqs {
            seqs.insert(*s);
        }
        match self.cloud_last_seq {
            Some((last, _)) => {
                for i in 1..=AVOID_AHEAD {
                    seqs.insert(last.wrapping_add(i));
                }
            }
            // Nothing from the cloud yet: its counter most likely starts low (the cloud's
            // first commands carry 0x1E–0x27, legacy counters start at 1), so cyncd starts high.
            None => {
                for s in 0..LOW_SEQS {
                    seqs.insert(s);
                }
            }
        }
        // Seqs cyncd already has outstanding are the session's own business; the cloud's
        // outstanding ones are in `cloud_seqs` (they expire no sooner than the ledger).
        Avoid {
            seqs,
            msgs: self.cloud_msgs.iter().map(|(m, _)| *m).collect(),
        }
    }

    /// Routes one whole packet the device sent.
    pub fn from_device(&mut self, bytes: &[u8], now: Duration) -> FromDevice {
        self.expire(now);
        let kind = bytes.first().copied().unwrap_or_default();
        let (forward, answer) = match kind {
            // A device's 0x23, or an app's first 0x13.
            0x13 | 0x23
                if (kind == 0x23) != self.transparent
                    && (!self.transparent || self.hello.is_none()) =>
            {
                if self.hello.is_none() {
                    self.conn = ConnId::read(bytes, 6);
                    self.hello = Some(bytes.to_vec());
                }
                return FromDevice {
                    up: false,
                    pending: false,
                    kept: Some(Kept::Hello),
                    dropped: None,
                    answer: Answer::None,
                };
            }
            _ if self.transparent => (true, Answer::None),
            0xc3 => {
                self.time_request = Some(bytes.to_vec());
                (true, Answer::None)
            }
            0x7b => {
                let owner = key(bytes).and_then(|k| self.take_ack(k, false));
                self.attributed(owner)
            }
            0xab => {
                let owner = key(bytes).and_then(|k| self.take_ack(k, true));
                self.attributed(owner)
            }
            0x73 => self.device_data(bytes, now),
            _ => (true, Answer::None),
        };
        if !forward {
            return FromDevice {
                up: false,
                pending: false,
                kept: Some(Kept::LocalAnswer),
                dropped: None,
                answer,
            };
        }
        let (up, pending, dropped) = match self.state {
            Upstream::Up => (true, false, None),
            Upstream::Down => (false, false, Some(Dropped::UpstreamDown)),
            Upstream::Connecting => {
                if self.pending_packets < PENDING_PACKETS
                    && self.pending.len() + bytes.len() <= PENDING_BYTES
                {
                    self.pending.extend_from_slice(bytes);
                    self.pending_packets += 1;
                    self.pending_time_request |= kind == 0xc3;
                    (false, true, None)
                } else {
                    (false, false, Some(Dropped::PendingFull))
                }
            }
        };
        FromDevice {
            up,
            pending,
            kept: None,
            dropped,
            answer,
        }
    }

    /// An answer's route from its owner: cyncd's stay local; the cloud's, and those nobody
    /// asked for, go up.
    fn attributed(&mut self, owner: Option<Owner>) -> (bool, Answer) {
        match owner {
            Some(Owner::Local) => (false, Answer::Local),
            Some(Owner::Cloud) => (true, Answer::Cloud),
            None => {
                self.counters.unattributed += 1;
                (true, Answer::Cloud)
            }
        }
    }

    fn device_data(&mut self, bytes: &[u8], now: Duration) -> (bool, Answer) {
        let body = Body::decode(bytes.get(12..).unwrap_or_default());
        let Some(frame) = body.frame().filter(|f| f.dir == Direction::Response) else {
            // Not a result (a report frame, or undecodable): state, for everyone.
            return (true, Answer::None);
        };
        if frame.opcode == 0x52 {
            // A mesh-info page (or its 1-byte result): a listing for whoever asked.
            let cloud = self.cloud_mesh_until.is_some_and(|t| now < t);
            let local = self.local_mesh_until.is_some_and(|t| now < t);
            return match (cloud, local) {
                (_, false) => (true, Answer::None),
                (true, true) => (true, Answer::Local),
                (false, true) => (false, Answer::Local),
            };
        }
        let owner = self.take_result(frame.seq, frame.opcode);
        self.attributed(owner)
    }

    /// Routes one whole packet the cloud sent.
    pub fn from_cloud(&mut self, bytes: &[u8], now: Duration) -> FromCloud {
        self.expire(now);
        let kind = bytes.first().copied().unwrap_or_default();
        match kind {
            _ if self.transparent => FromCloud {
                down: true,
                kept: None,
                collision: false,
            },
            // Answers to device packets: cyncd answered those already.
            0x28 | 0xc8 | 0xd8 | 0x48 | 0x88 | 0x7b => FromCloud {
                down: false,
                kept: Some(Kept::CloudAnswer),
                collision: false,
            },
            0x73 | 0xa3 => {
                let collision = self.record(Owner::Cloud, bytes, now);
                FromCloud {
                    down: true,
                    kept: None,
                    collision,
                }
            }
            _ => FromCloud {
                down: true,
                kept: None,
                collision: false,
            },
        }
    }

    /// Records what cyncd writes to the device (whole packets, as many as `bytes` holds, in
    /// order): its requests enter the ledger. Returns how many of them collided with a
    /// request of the cloud's still outstanding.
    pub fn local_to_device(&mut self, mut bytes: &[u8], now: Duration) -> usize {
        self.expire(now);
        let mut collisions = 0;
        while let Some([kind, _, _, hi, lo]) = bytes.first_chunk::<5>().copied() {
            let size = crate::HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
            let Some(packet) = bytes.get(..size) else {
                break;
            };
            if matches!(kind, 0x73 | 0xa3) && self.record(Owner::Local, packet, now) {
                collisions += 1;
            }
            bytes = bytes.get(size..).unwrap_or_default();
        }
        collisions
    }

    /// Adds a request to the ledger; true when it collides with the other writer's
    /// outstanding one.
    fn record(&mut self, owner: Owner, packet: &[u8], now: Duration) -> bool {
        let Some(k) = key(packet) else {
            return false;
        };
        let request = if packet.first() == Some(&0x73) {
            Body::decode(packet.get(12..).unwrap_or_default())
                .frame()
                .filter(|f| f.dir == Direction::Request)
                .map(|f| (f.seq, f.opcode))
        } else {
            None
        };
        if let Some((seq, opcode)) = request {
            if opcode == 0x52 {
                match owner {
                    Owner::Cloud => self.cloud_mesh_until = Some(now + ANSWER_TTL),
                    Owner::Local => self.local_mesh_until = Some(now + ANSWER_TTL),
                }
            }
            if owner == Owner::Cloud {
                remember(&mut self.cloud_seqs, seq, now);
                self.cloud_last_seq = Some((seq, now));
            }
        }
        if owner == Owner::Cloud && self.conn.is_some_and(|c| k[..4] == c.0) {
            remember(&mut self.cloud_msgs, MsgId([k[4], k[5], k[6]]), now);
        }
        let collision = self.ledger.iter().any(|w| {
            w.owner != owner
                && ((w.key == k && !w.acked)
                    || (request.is_some() && w.request == request && !w.answered))
        });
        if collision {
            self.counters.collisions += 1;
        }
        if self.ledger.len() >= LEDGER {
            if let Some(old) = self.ledger.pop_front() {
                if !(old.acked && (old.answered || old.request.is_none())) {
                    self.counters.evicted += 1;
                }
            }
        }
        self.ledger.push_back(Written {
            owner,
            key: k,
            request,
            at: now,
            acked: false,
            answered: false,
        });
        collision
    }

    /// The writer of the oldest unacknowledged request with this key (a `0x7B` answers a
    /// `0x73`, an `0xAB` an `0xA3`); a repeat goes where the last acknowledged one went.
    fn take_ack(&mut self, k: [u8; 7], announce: bool) -> Option<Owner> {
        let fits = |w: &Written| w.key == k && (w.request.is_none() || !announce);
        if let Some(w) = self.ledger.iter_mut().find(|w| fits(w) && !w.acked) {
            w.acked = true;
            return Some(w.owner);
        }
        self.ledger.iter().rev().find(|w| fits(w)).map(|w| w.owner)
    }

    /// The writer of the oldest unanswered request with this seq and opcode; a repeat goes
    /// where the last answered one went.
    fn take_result(&mut self, seq: u8, opcode: u8) -> Option<Owner> {
        let want = Some((seq, opcode));
        if let Some(w) = self
            .ledger
            .iter_mut()
            .find(|w| w.request == want && !w.answered)
        {
            w.answered = true;
            return Some(w.owner);
        }
        self.ledger
            .iter()
            .rev()
            .find(|w| w.request == want)
            .map(|w| w.owner)
    }

    fn expire(&mut self, now: Duration) {
        while self
            .ledger
            .front()
            .is_some_and(|w| now >= w.at + ANSWER_TTL)
        {
            self.ledger.pop_front();
        }
        while self
            .cloud_seqs
            .front()
            .is_some_and(|(_, at)| now >= *at + ANSWER_TTL)
        {
            self.cloud_seqs.pop_front();
        }
        while self
            .cloud_msgs
            .front()
            .is_some_and(|(_, at)| now >= *at + ANSWER_TTL)
        {
            self.cloud_msgs.pop_front();
        }
        if self
            .cloud_last_seq
            .is_some_and(|(_, at)| now >= at + ANSWER_TTL)
        {
            self.cloud_last_seq = None;
        }
    }
}

fn remember<T: PartialEq>(list: &mut VecDeque<(T, Duration)>, value: T, now: Duration) {
    list.retain(|(v, _)| *v != value);
    if list.len() >= CLOUD_IDS {
        list.pop_front();
    }
    list.push_back((value, now));
}

/// `[5:12]` of an id-carrying packet.
fn key(bytes: &[u8]) -> Option<[u8; 7]> {
    bytes.get(5..12)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{self, Action, SeqCounter, Target};
    use crate::ids::Seq;
    use crate::packet::Packet;
    use crate::reply;
    use crate::test_util::hex;

    const DEV: ConnId = ConnId([0x37, 0x96, 0x24, 0x69]);
    const APP: ConnId = ConnId([0x2d, 0xe4, 0xb5, 0xd2]);
    const HELLO: &str = "23 00 00 00 1a 03 37 96 24 69 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c";
    const MS: Duration = Duration::from_millis(1);

    fn up() -> Relay {
        let mut r = Relay::new();
        r.from_device(&hex(HELLO), Duration::ZERO);
        r.upstream_connected();
        r
    }

    fn cmd(conn: ConnId, msg: [u8; 3], seq: u8, on: bool) -> Vec<u8> {
        command::command(
            conn,
            MsgId(msg),
            Seq(seq),
            Target::Device(5),
            Action::Power(on),
        )
        .unwrap()
        .to_bytes()
    }

    /// The device's `f9` result for a power command with `seq`, sent with `conn` at `[5:9]`.
    fn result(conn: ConnId, seq: u8) -> Vec<u8> {
        let mut f = crate::Frame::new(seq, Direction::Response, 0xd0, vec![0]);
        f.checksum = f.computed_checksum();
        Packet::Data(crate::Data {
            conn_id: conn,
            msg_id: MsgId([0, 2, 0]),
            body: Body::Frame(f),
        })
        .to_bytes()
    }

    fn ack(conn: ConnId, msg: [u8; 3]) -> Vec<u8> {
        reply::data_ack(conn, MsgId(msg)).to_bytes()
    }

    #[test]
    fn device_state_goes_up_and_cloud_answers_are_consumed() {
        let mut r = up();
        for p in [
            "d3 00 00 00 00",
            "c3 00 00 00 01 0c",
            "43 00 00 00 07 37 96 24 69 01 01 06",
            "83 00 00 00 25 37 96 24 69 00 05 00 7e 21 00 00 00 fa db 13 00 34 22 11 05 00 05 00 db 11 02 01 01 64 00 00 00 00 00 00 b3 7e",
        ] {
            let v = r.from_device(&hex(p), MS);
            assert!(v.up && v.kept.is_none() && v.dropped.is_none(), "{p}");
            assert_eq!(v.answer, Answer::None, "{p}");
        }
        for p in [
            "28 00 00 00 02 00 00",
            "c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 2d fd a8",
            "d8 00 00 00 00",
            "48 00 00 00 03 01 01 00",
            "88 00 00 00 03 00 05 00",
            // The app's relayed 0x7B for the 0x83 (cloud-trace).
            "7b 00 00 00 07 2d e4 b5 d2 00 05 00",
        ] {
            let v = r.from_cloud(&hex(p), MS);
            assert_eq!((v.down, v.kept), (false, Some(Kept::CloudAnswer)), "{p}");
        }
        // A 0x78 notice passes: cyncd never sends one.
        assert!(
            r.from_cloud(&hex("78 00 00 00 07 2d e4 b5 d2 00 02 0a"), MS)
                .down
        );
    }

    #[test]
    fn the_hello_is_replayed_first_on_every_connection() {
        let mut r = Relay::new();
        let v = r.from_device(&hex(HELLO), Duration::ZERO);
        assert_eq!((v.up, v.kept), (false, Some(Kept::Hello)));
        // Packets before the first connection wait, and follow the hello and the 0xC3.
        let c3 = hex("c3 00 00 00 01 0c");
        let beat = hex("d3 00 00 00 00");
        assert!(r.from_device(&c3, MS).pending);
        assert!(r.from_device(&beat, MS).pending);
        assert_eq!(
            r.upstream_connected(),
            [hex(HELLO), c3.clone(), beat.clone()].concat()
        );
        // Down: nothing waits, nothing goes.
        assert_eq!(r.upstream_lost(), 0);
        let v = r.from_device(&beat, MS);
        assert_eq!((v.up, v.dropped), (false, Some(Dropped::UpstreamDown)));
        // Reconnected: the hello and the 0xC3 again, nothing else.
        assert_eq!(r.upstream_connected(), [hex(HELLO), c3].concat());
        assert!(r.from_device(&beat, MS).up);
    }

    #[test]
    fn the_first_connection_buffer_is_bounded() {
        let mut r = Relay::new();
        r.from_device(&hex(HELLO), Duration::ZERO);
        let beat = hex("d3 00 00 00 00");
        for _ in 0..PENDING_PACKETS {
            assert!(r.from_device(&beat, MS).pending);
        }
        let v = r.from_device(&beat, MS);
        assert_eq!(v.dropped, Some(Dropped::PendingFull));
        assert_eq!(r.upstream_lost(), PENDING_PACKETS);
        assert_eq!(r.upstream_connected(), hex(HELLO));
    }

    #[test]
    fn answers_to_local_commands_stay_local_and_cloud_ones_go_up() {
        let mut r = up();
        // cyncd's command (device id, its own msg and seq) and the cloud's (app id).
        let local = cmd(DEV, [0x40, 0x01, 0], 3, true);
        let cloud = cmd(APP, [0x15, 0x37, 0], 0x21, false);
        assert_eq!(r.local_to_device(&local, MS), 0);
        let v = r.from_cloud(&cloud, MS);
        assert!(v.down && !v.collision);
        // The device answers both, in order.
        let v = r.from_device(&ack(DEV, [0x40, 0x01, 0]), 2 * MS);
        assert_eq!(
            (v.up, v.kept, v.answer),
            (false, Some(Kept::LocalAnswer), Answer::Local)
        );
        let v = r.from_device(&result(DEV, 3), 2 * MS);
        assert_eq!((v.up, v.answer), (false, Answer::Local));
        let v = r.from_device(&ack(APP, [0x15, 0x37, 0]), 3 * MS);
        assert_eq!((v.up, v.kept, v.answer), (true, None, Answer::Cloud));
        let v = r.from_device(&result(APP, 0x21), 3 * MS);
        assert_eq!((v.up, v.answer), (true, Answer::Cloud));
        // Repeats go where the first copy went.
        assert_eq!(r.from_device(&result(DEV, 3), 4 * MS).answer, Answer::Local);
        assert!(!r.from_device(&ack(DEV, [0x40, 0x01, 0]), 4 * MS).up);
        assert_eq!(
            r.from_device(&result(APP, 0x21), 4 * MS).answer,
            Answer::Cloud
        );
        assert_eq!(r.counters().unattributed, 0);
    }

    #[test]
    fn colliding_ids_are_told_apart_by_write_order() {
        // Both writers use the device's own id and the same message id and seq (two cyncds,
        // or a cloud that counts where cyncd does): the device answers in order.
        for local_first in [true, false] {
            let mut r = up();
            let local = cmd(DEV, [0, 1, 0], 1, true);
            let cloud = cmd(DEV, [0, 1, 0], 1, true);
            let first_owner = if local_first {
                assert_eq!(r.local_to_device(&local, MS), 0);
                assert!(r.from_cloud(&cloud, MS).collision);
                Answer::Local
            } else {
                assert!(!r.from_cloud(&cloud, MS).collision);
                assert_eq!(r.local_to_device(&local, MS), 1);
                Answer::Cloud
            };
            let second_owner = if local_first {
                Answer::Cloud
            } else {
                Answer::Local
            };
            let a1 = r.from_device(&ack(DEV, [0, 1, 0]), 2 * MS);
            let r1 = r.from_device(&result(DEV, 1), 2 * MS);
            let a2 = r.from_device(&ack(DEV, [0, 1, 0]), 3 * MS);
            let r2 = r.from_device(&result(DEV, 1), 3 * MS);
            assert_eq!((a1.answer, r1.answer), (first_owner, first_owner));
            assert_eq!((a2.answer, r2.answer), (second_owner, second_owner));
            // Only the cloud's answers went up.
            assert_eq!(a1.up, first_owner == Answer::Cloud);
            assert_eq!(a2.up, second_owner == Answer::Cloud);
            assert_eq!(r.counters().collisions, 1);
        }
    }

    #[test]
    fn local_commands_avoid_the_clouds_seqs_and_ids() {
        let mut r = up();
        r.from_cloud(&cmd(DEV, [0, 7, 0], 1, true), MS);
        r.from_cloud(&cmd(DEV, [0, 8, 0], 2, true), MS);
        let avoid = r.avoid(MS);
        // The cloud's seqs, and the next ones it will use.
        assert!(avoid.seqs.contains(1) && avoid.seqs.contains(2));
        assert!((3..=2 + AVOID_AHEAD).all(|s| avoid.seqs.contains(s)));
        assert!(!avoid.seqs.contains(3 + AVOID_AHEAD));
        assert_eq!(avoid.msgs, [MsgId([0, 7, 0]), MsgId([0, 8, 0])]);
        // A counter honouring it never lands on them.
        let mut seqs = SeqCounter::new();
        seqs.set_avoid(avoid.seqs);
        let mut got = Vec::new();
        for _ in 0..400 {
            got.push(seqs.next_seq().0);
        }
        assert!(got.iter().all(|s| !avoid.seqs.contains(*s)));
        // Ids the cloud used with another id (the app's session) are no concern.
        r.from_cloud(&cmd(APP, [0, 9, 0], 40, true), MS);
        assert!(!r.avoid(MS).msgs.contains(&MsgId([0, 9, 0])));
        // After the window, only the low seqs the cloud starts with.
        let later = r.avoid(MS + ANSWER_TTL);
        assert_eq!(later.seqs.len(), usize::from(LOW_SEQS));
        assert!(later.seqs.contains(0) && !later.seqs.contains(LOW_SEQS));
        assert!(later.msgs.is_empty());
        // Before the cloud sent anything, likewise.
        assert_eq!(up().avoid(MS).seqs, later.seqs);
    }

    #[test]
    fn answers_nobody_asked_for_go_up_and_are_never_local() {
        let mut r = up();
        let v = r.from_device(&ack(DEV, [9, 9, 0]), MS);
        assert_eq!((v.up, v.answer), (true, Answer::Cloud));
        let v = r.from_device(&result(DEV, 9), MS);
        assert_eq!((v.up, v.answer), (true, Answer::Cloud));
        assert_eq!(r.counters().unattributed, 2);
        // An expired local request's late answer is not local any more either.
        r.local_to_device(&cmd(DEV, [0, 1, 0], 4, true), MS);
        let v = r.from_device(&result(DEV, 4), MS + ANSWER_TTL);
        assert_eq!(v.answer, Answer::Cloud);
    }

    #[test]
    fn a_full_ledger_evicts_the_oldest() {
        let mut r = up();
        for i in 0..=LEDGER {
            let i = u16::try_from(i).unwrap().to_be_bytes();
            r.local_to_device(&cmd(DEV, [i[0], i[1], 0], 3, true), MS);
        }
        assert_eq!(r.ledger_len(), LEDGER);
        assert_eq!(r.counters().evicted, 1);
        // The evicted one's answer is nobody's; the next one's is still cyncd's.
        assert_eq!(
            r.from_device(&ack(DEV, [0, 0, 0]), MS).answer,
            Answer::Cloud
        );
        assert_eq!(
            r.from_device(&ack(DEV, [0, 1, 0]), MS).answer,
            Answer::Local
        );
    }

    #[test]
    fn announce_replies_follow_their_announce() {
        let mut r = up();
        let local = command::announce(DEV, MsgId([0x33, 0x01, 0])).to_bytes();
        let cloud = command::announce(APP, MsgId([0x15, 0x2b, 0])).to_bytes();
        r.local_to_device(&local, MS);
        assert!(r.from_cloud(&cloud, MS).down);
        let ab = |conn: ConnId, msg: [u8; 3]| {
            let mut p = vec![0xab, 0, 0, 0, 7];
            p.extend_from_slice(&conn.0);
            p.extend_from_slice(&msg);
            p
        };
        let v = r.from_device(&ab(DEV, [0x33, 1, 0]), MS);
        assert_eq!((v.up, v.answer), (false, Answer::Local));
        let v = r.from_device(&ab(APP, [0x15, 0x2b, 0]), MS);
        assert_eq!((v.up, v.answer), (true, Answer::Cloud));
    }

    #[test]
    fn mesh_pages_go_to_whoever_asked() {
        let page = hex(
            "73 00 00 00 78 37 96 24 69 00 00 00 7e 1f 00 00 00 f9 52 66 00 04 00 00 00 04 00 \
             05 00 44 01 00 00 44 01 00 00 00 00 64 00 00 00 00 00 00 00 00 00 00 00 \
             07 00 00 01 00 00 00 01 01 00 00 00 64 00 00 00 64 00 00 00 00 00 00 00 \
             03 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 \
             02 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 f2 7e",
        );
        let local_req =
            command::mesh_info_request(DEV, MsgId([0x40, 0, 0]), command::MESH_REQUEST_SEQ)
                .to_bytes();
        let cloud_req =
            command::mesh_info_request(APP, MsgId([0x15, 0x2c, 0]), command::MESH_REQUEST_SEQ)
                .to_bytes();
        // Nobody asked: up, as without cyncd.
        let mut r = up();
        assert!(r.from_device(&page, MS).up);
        // Only cyncd asked: cyncd's alone.
        let mut r = up();
        r.local_to_device(&local_req, MS);
        let v = r.from_device(&page, MS);
        assert_eq!((v.up, v.answer), (false, Answer::Local));
        // Both asked: both read it.
        r.from_cloud(&cloud_req, MS);
        let v = r.from_device(&page, MS);
        assert_eq!((v.up, v.answer), (true, Answer::Local));
        // Only the cloud asked.
        let mut r = up();
        r.from_cloud(&cloud_req, MS);
        assert!(r.from_device(&page, MS).up);
    }

    #[test]
    fn cloud_answers_while_down_are_dropped_not_credited() {
        let mut r = up();
        r.from_cloud(&cmd(APP, [0x15, 0x37, 0], 0x21, true), MS);
        r.upstream_lost();
        let v = r.from_device(&result(APP, 0x21), MS);
        assert_eq!(
            (v.up, v.dropped, v.answer),
            (false, Some(Dropped::UpstreamDown), Answer::Cloud)
        );
    }

    #[test]
    fn an_app_connection_passes_untouched_both_ways() {
        let mut r = Relay::app();
        let app_hello = hex(&HELLO.replacen("23", "13", 1));
        let v = r.from_device(&app_hello, Duration::ZERO);
        assert_eq!((v.up, v.kept), (false, Some(Kept::Hello)));
        assert_eq!(r.upstream_connected(), app_hello);
        // Its announce and commands go up, the cloud's answers (0x18, 0x7B, 0xA8…) come down.
        let announce = command::announce(DEV, MsgId([0x15, 0x2b, 0])).to_bytes();
        assert!(r.from_device(&announce, MS).up);
        assert!(r.from_device(&cmd(DEV, [0x15, 0x37, 0], 0x21, true), MS).up);
        assert!(r.from_device(&ack(DEV, [0, 5, 0]), MS).up);
        for p in [
            "18 00 00 00 02 00 00",
            "7b 00 00 00 07 2d e4 b5 d2 00 05 00",
            "a8 00 00 00 08 37 96 24 69 15 2b 0a 00",
            "d8 00 00 00 00",
        ] {
            assert!(r.from_cloud(&hex(p), MS).down, "{p}");
        }
        assert_eq!(r.ledger_len(), 0);
    }

    #[test]
    fn garbage_never_panics_and_goes_up() {
        let mut r = up();
        for p in [
            vec![0x73, 0, 0, 0, 0],
            vec![0x7b, 0, 0, 0, 1, 1],
            vec![0x99, 0, 0, 0, 3, 1, 2, 3],
            vec![0xab],
            Vec::new(),
        ] {
            let _ = r.from_device(&p, MS);
            let _ = r.from_cloud(&p, MS);
            let _ = r.local_to_device(&p, MS);
        }
        assert!(r.from_device(&[0x99, 0, 0, 0, 1, 7], MS).up);
    }
}
