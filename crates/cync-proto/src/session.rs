//! The per-connection session state machine, sans I/O.
//!
//! One [`Session`] per device connection. The owner feeds it the bytes it reads
//! ([`Session::receive`]) and fires its timers ([`Session::on_timeout`] at
//! [`Session::next_deadline`]); the session frames and decodes, answers as the cloud does, and
//! hands back what to write ([`Session::take_transmit`]), what happened ([`Session::poll_event`])
//! and when it must close ([`Session::close_reason`]). Time is passed in as a [`Duration`] since
//! any fixed origin, so tests drive it deterministically.
//!
//! Lifecycle (PROTOCOL.md §7):
//! 1. Device `0x23` → `0x28`. The hello's id names the connection, and its auth code is the one
//!    credential the protocol carries (§6.1), so the session does not decide alone: it holds the
//!    hello ([`Session::pending_hello`]) and everything after it until the owner, who keeps the
//!    credentials, calls [`Session::admit`] (answers `0x28`, then handles what was held) or
//!    [`Session::refuse`] (closes; nothing was answered). The first packet must be the hello, a
//!    second hello is a protocol error, and a connection without an admitted hello after
//!    `hello_timeout` is closed (each [`CloseReason`]).
//! 2. Every device packet gets its answer at once, in arrival order: `0xC3`→`0xC8` (local time
//!    passed in), `0xD3`→`0xD8`, `0x43`→`0x48`, `0x83`→`0x88`, and a device `0x73`→`0x7B`
//!    echoing `[5:12]` (the cloud relays such an ACK; sending it is harmless and tells the device
//!    its result arrived).
//! 3. `announce_delay` after the hello: `0xA3`; `mesh_delay` later: the mesh-info request
//!    `f8 52` (retried up to [`MESH_REQUEST_TRIES`] times). `f9 52` pages are collected until the
//!    announced total is reached, then answered with the mesh status ACK `f8 af`.
//! 4. A connection silent for `heartbeat × silence_multiple` is closed (devices send `0xD3`
//!    about every 20 s, and any other packet resets their idle timer too).
//!
//! Outgoing data-channel packets use the device's own id at `[5:9]` and a per-connection u16 BE
//! counter + `00` as message id, so every device `0x7B` can be matched to what it acknowledges.
//! The counter skips the all-zero id, which only legacy commands carry
//! ([`Session::send_command_legacy`]), so a `0x7B` echoing it answers nothing else. A `0x7B`
//! answering the session's own requests (the mesh-info request, the mesh ACK) is consumed here;
//! every other one is an [`Event::DataAck`] for whoever owns the connection's commands.
//! Message ids and command seqs never hold 0x7D/0x7E; for the bytes cyncd does not choose, the
//! configured [`FrameEscaping`] applies (see [`crate::command`]).

use crate::command::{self, FrameEscaping, MESH_ACK_SEQ, MESH_REQUEST_SEQ, SeqCounter};
use crate::frame::{Body, Direction};
use crate::framer::{Framer, FramerError};
use crate::ids::{ConnId, MsgId, Seq};
use crate::packet::{DecodeError, Hello, InfoBody, Packet};
use crate::reply::{self, LocalTime};
use crate::status::{DeviceStatus, Firmware, MeshPage};
use std::collections::VecDeque;
use std::time::Duration;

/// How many times the mesh-info request is sent before giving up.
pub const MESH_REQUEST_TRIES: u8 = 3;
/// Bytes held after a hello while it waits for the owner's verdict. The owner decides right
/// after the read that brought the hello, so this is one read's worth; more means the owner
/// keeps feeding an undecided session, which is closed ([`CloseReason::Unverified`]).
pub const MAX_HELD: usize = 8192;
/// Events kept for the owner before the oldest are dropped (the owner drains after every read,
/// so this only bounds a misbehaving owner).
pub const MAX_EVENTS: usize = 1024;
/// Message ids of the session's own requests whose `0x7B` is still awaited (the mesh-info
/// request and its retries, the mesh ACK); the oldest is forgotten first.
pub const OWN_REQUESTS: usize = 4;
/// Largest number of mesh records collected over the pages of one mesh-info answer.
pub const MAX_MESH_RECORDS: usize = 512;
/// Packets remembered for dropping repeats. A bridge sends about one packet per 20 s when idle
/// and at most ~12 per 2 s in the busiest burst of capture A (0x43 pings), so 64 entries cover
/// the whole window even then.
pub const DEDUP_ENTRIES: usize = 64;
/// How long a packet is remembered: repeats (a device resending, or the network duplicating)
/// arrive within milliseconds; a report legitimately identical to an earlier one is at least
/// a state change apart, and 0x83 reports carry a counter.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5);

/// Session timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest packet accepted (see [`Framer`]).
    pub max_packet: usize,
    /// Delay from the hello to the 0xA3.
    pub announce_delay: Duration,
    /// Delay from the 0xA3 to the mesh-info request, and between its retries.
    pub mesh_delay: Duration,
    /// The device's heartbeat cadence.
    pub heartbeat: Duration,
    /// Close after this many heartbeat periods without a packet.
    pub silence_multiple: u32,
    /// Ask the bridge for its mesh (0xA3 + `f8 52`); off for a passive session.
    pub discover_mesh: bool,
    /// Close a connection that has no admitted hello this long after it started.
    pub hello_timeout: Duration,
    /// What to do with a 0x7D/0x7E cyncd cannot keep out of a command frame.
    pub frame_escaping: FrameEscaping,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_packet: crate::DEFAULT_MAX_PACKET,
            announce_delay: Duration::from_millis(500),
            mesh_delay: Duration::from_millis(1500),
            heartbeat: Duration::from_secs(20),
            silence_multiple: 3,
            discover_mesh: true,
            hello_timeout: Duration::from_secs(5),
            frame_escaping: FrameEscaping::Avoid,
        }
    }
}

/// Where a status came from, which decides how much the registry trusts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The device's own 0x83 report, or its own (index 05) 0x43 record.
    Own,
    /// Another mesh node's 0x43 record about this device.
    Relayed,
    /// A mesh-info page.
    MeshInfo,
}

/// Something the owner should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The hello was admitted ([`Session::admit`]): the connection is the device `conn_id`.
    Hello(ConnId),
    /// A phone-app connection (0x13), which cyncd does not serve.
    AppConnection(ConnId),
    /// A device status.
    Status(DeviceStatus, Source),
    /// A firmware version report.
    Firmware(Firmware),
    /// The bridge's mesh, complete: every device it reaches, and the bridge's own device type.
    MeshLearned {
        /// The responding device's Cync type code (first record).
        device_type: Option<u8>,
        /// The devices in the mesh, bridge first.
        devices: Vec<DeviceStatus>,
    },
    /// The device acknowledged one of our 0x73 (its 0x7B echoed `[5:12]`).
    DataAck(MsgId),
    /// The device's `f9` result for a request: its seq, opcode and result byte.
    CommandResult {
        /// `frame[1]` of the request.
        seq: Seq,
        /// The request's opcode.
        opcode: u8,
        /// The result byte (`00` = done in every sample).
        code: u8,
    },
    /// The device answered the 0xA3.
    AnnounceReplied,
    /// Bytes that did not decode.
    DecodeError(DecodeError),
    /// An inner frame with a bad checksum (the packet is still answered).
    BadChecksum(u8),
}

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing arrived for `heartbeat × silence_multiple`.
    Silent,
    /// A header declared an oversize packet; the stream cannot be trusted after it.
    Framing(FramerError),
    /// A phone app, not a device.
    AppConnection,
    /// The first packet was not a hello.
    NoHello,
    /// A second hello on a connection that already has one.
    SecondHello,
    /// No admitted hello within `hello_timeout`.
    HelloTimeout,
    /// The owner refused the hello ([`Session::refuse`]).
    Refused,
    /// More than [`MAX_HELD`] bytes arrived while the hello waited for a verdict.
    Unverified,
}

impl CloseReason {
    /// A short stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::Framing(_) => "oversize",
            Self::AppConnection => "app_connection",
            Self::NoHello => "no_hello",
            Self::SecondHello => "second_hello",
            Self::HelloTimeout => "hello_timeout",
            Self::Refused => "refused",
            Self::Unverified => "unverified",
        }
    }

    /// Whether the peer broke the protocol (as opposed to going quiet or being refused).
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            Self::Framing(_) | Self::NoHello | Self::SecondHello | Self::Unverified
        )
    }
}

/// Where a connection is with its hello.
#[derive(Debug, Default)]
enum HelloState {
    /// Nothing yet: the next packet must be the hello.
    #[default]
    Waiting,
    /// A hello waits for the owner's verdict, with its raw bytes.
    Pending(Hello, Vec<u8>),
    /// Admitted.
    Admitted,
}

/// One packet handled: what arrived and what was answered.
#[derive(Debug)]
pub struct Step {
    /// The decoded packet, or why it did not decode.
    pub packet: Result<Packet, DecodeError>,
    /// Its raw bytes (for logs).
    pub bytes: Vec<u8>,
    /// The packets sent in answer (already in the transmit buffer).
    pub sent: Vec<Packet>,
}

/// The per-connection state machine. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    framer: Framer,
    conn_id: Option<ConnId>,
    hello: HelloState,
    /// Bytes read after a pending hello, handled once it is admitted.
    held: Vec<u8>,
    started: Duration,
    transmit: Vec<u8>,
    events: VecDeque<Event>,
    dropped_events: u64,
    last_rx: Duration,
    /// Next msg-id counter for packets we originate.
    next_msg: u16,
    /// Inner seqs for commands.
    seqs: SeqCounter,
    /// Recently seen 0x83/0x73 packets.
    dedup: crate::dedup::Dedup,
    /// Whether repeated packets are recognised (off for the legacy transport, which never did).
    dedup_on: bool,
    /// The last 0x43 with records, and when.
    last_info: Option<(u64, Duration)>,
    idempotent_drops: u64,
    announce_at: Option<Duration>,
    mesh_at: Option<Duration>,
    mesh_tries: u8,
    mesh_pages: Vec<DeviceStatus>,
    mesh_type: Option<u8>,
    mesh_done: bool,
    /// A mesh-info request is outstanding: only then are `f9 52` pages collected.
    mesh_open: bool,
    /// Our own requests' message ids, whose 0x7B is ours to consume.
    own_requests: VecDeque<MsgId>,
    /// Message ids not to use (the cloud's, on a relayed connection; see [`crate::relay`]).
    avoid_msgs: Vec<MsgId>,
    closed: Option<CloseReason>,
}

impl Session {
    /// A new session on a connection accepted at `now`. `first_msg` seeds the message-id counter
    /// (a random value avoids reusing ids across reconnects).
    pub fn new(config: SessionConfig, now: Duration, first_msg: u16) -> Self {
        Self {
            framer: Framer::new(config.max_packet),
            config,
            conn_id: None,
            hello: HelloState::Waiting,
            held: Vec::new(),
            started: now,
            transmit: Vec::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            last_rx: now,
            next_msg: first_msg,
            seqs: SeqCounter::new(),
            dedup: crate::dedup::Dedup::new(DEDUP_ENTRIES, DEDUP_WINDOW),
            dedup_on: true,
            last_info: None,
            idempotent_drops: 0,
            announce_at: None,
            mesh_at: None,
            mesh_tries: 0,
            mesh_pages: Vec::new(),
            mesh_type: None,
            mesh_done: false,
            mesh_open: false,
            own_requests: VecDeque::with_capacity(OWN_REQUESTS),
            avoid_msgs: Vec::new(),
            closed: None,
        }
    }

    /// The seqs and message ids the next requests must not use (on a relayed connection, the
    /// cloud's: [`crate::relay::Relay::avoid`]); replaces the previous ones.
    pub fn set_avoid(&mut self, avoid: crate::relay::Avoid) {
        self.seqs.set_avoid(avoid.seqs);
        self.avoid_msgs = avoid.msgs;
    }

    /// The device id from the hello, once admitted.
    pub fn conn_id(&self) -> Option<ConnId> {
        self.conn_id
    }

    /// The hello waiting for the owner's verdict: call [`Session::admit`] or
    /// [`Session::refuse`]. Nothing after it is handled until then.
    pub fn pending_hello(&self) -> Option<&Hello> {
        match &self.hello {
            HelloState::Pending(hello, _) => Some(hello),
            _ => None,
        }
    }

    /// Admits the pending hello: answers it with `0x28` (its [`Step`] goes to `steps`), raises
    /// [`Event::Hello`], and handles the bytes held since. Does nothing without a pending hello.
    pub fn admit(&mut self, now: Duration, local: LocalTime, steps: &mut Vec<Step>) {
        let HelloState::Pending(hello, bytes) = std::mem::take(&mut self.hello) else {
            return;
        };
        self.hello = HelloState::Admitted;
        let conn = hello.conn_id;
        self.conn_id = Some(conn);
        let packet = Packet::Hello(hello);
        let sent: Vec<Packet> = reply::answer(&packet, local).into_iter().collect();
        for p in &sent {
            p.encode(&mut self.transmit);
        }
        steps.push(Step {
            packet: Ok(packet),
            bytes,
            sent,
        });
        self.event(Event::Hello(conn));
        if self.config.discover_mesh {
            self.announce_at = Some(now + self.config.announce_delay);
        }
        let held = std::mem::take(&mut self.held);
        self.process(&held, now, local, steps);
    }

    /// Refuses the pending hello: nothing is answered and the session closes
    /// ([`CloseReason::Refused`]); the hello's [`Step`] goes to `steps`.
    pub fn refuse(&mut self, steps: &mut Vec<Step>) {
        if let HelloState::Pending(hello, bytes) = std::mem::take(&mut self.hello) {
            steps.push(Step {
                packet: Ok(Packet::Hello(hello)),
                bytes,
                sent: Vec::new(),
            });
        }
        self.held = Vec::new();
        self.closed = Some(CloseReason::Refused);
    }

    /// Why the session must close, once it must.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Events dropped because the owner did not drain them.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Feeds bytes read from the connection. Every whole packet is handled in order and
    /// reported in `steps`; its answers go to the transmit buffer.
    ///
    /// After a hello, handling stops: the rest is held until [`Session::admit`].
    pub fn receive(&mut self, data: &[u8], now: Duration, local: LocalTime, steps: &mut Vec<Step>) {
        if self.closed.is_some() {
            return;
        }
        self.last_rx = now;
        if self.pending_hello().is_some() {
            self.hold(data);
            return;
        }
        self.process(data, now, local, steps);
    }

    fn process(&mut self, mut data: &[u8], now: Duration, local: LocalTime, steps: &mut Vec<Step>) {
        loop {
            let taken = self.framer.push(data);
            data = data.get(taken..).unwrap_or_default();
            while let Some(next) = self.framer.next_packet() {
                match next {
                    Ok(bytes) => {
                        let bytes = bytes.to_vec();
                        if let Some(step) = self.handle(bytes, now, local) {
                            steps.push(step);
                        }
                    }
                    Err(error) => {
                        self.closed = Some(CloseReason::Framing(error));
                        return;
                    }
                }
                if self.closed.is_some() {
                    return;
                }
                if self.pending_hello().is_some() {
                    // Whole packets still in the framer wait there; the rest of this read here.
                    self.hold(data);
                    return;
                }
            }
            if data.is_empty() || taken == 0 {
                return;
            }
        }
    }

    fn hold(&mut self, data: &[u8]) {
        if self.held.len() + data.len() > MAX_HELD {
            self.held = Vec::new();
            self.closed = Some(CloseReason::Unverified);
            return;
        }
        self.held.extend_from_slice(data);
    }

    /// The next time [`Session::on_timeout`] must be called.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.closed.is_some() {
            return None;
        }
        let silence = self.last_rx + self.config.heartbeat * self.config.silence_multiple;
        let hello = (self.conn_id.is_none()).then(|| self.started + self.config.hello_timeout);
        [Some(silence), hello, self.announce_at, self.mesh_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers: the 0xA3, the mesh-info request, and the silence check. Returns the
    /// packets it queued for sending.
    pub fn on_timeout(&mut self, now: Duration) -> Vec<Packet> {
        let mut sent = Vec::new();
        if self.closed.is_some() {
            return sent;
        }
        if self.conn_id.is_none() && now >= self.started + self.config.hello_timeout {
            self.closed = Some(CloseReason::HelloTimeout);
            return sent;
        }
        if now >= self.last_rx + self.config.heartbeat * self.config.silence_multiple {
            self.closed = Some(CloseReason::Silent);
            return sent;
        }
        let Some(conn) = self.conn_id else {
            return sent;
        };
        if self.announce_at.is_some_and(|t| now >= t) {
            self.announce_at = None;
            let msg = self.next_msg_id();
            sent.push(command::announce(conn, msg));
            self.mesh_at = Some(now + self.config.mesh_delay);
        }
        if self.mesh_at.is_some_and(|t| now >= t) {
            self.mesh_tries += 1;
            self.mesh_at =
                (self.mesh_tries < MESH_REQUEST_TRIES).then(|| now + self.config.mesh_delay * 4);
            self.mesh_pages.clear();
            self.mesh_open = true;
            let msg = self.next_msg_id();
            self.own_request(msg);
            sent.push(command::mesh_info_request(conn, msg, MESH_REQUEST_SEQ));
        }
        for p in &sent {
            p.encode(&mut self.transmit);
        }
        sent
    }

    /// Queues a control command for `target` with a fresh message id and seq, under the
    /// configured [`FrameEscaping`]. `None` before the hello. The packet returned is what was
    /// sent (a colour may have been nudged, the frame stuffed).
    pub fn send_command(
        &mut self,
        target: command::Target,
        action: command::Action,
    ) -> Option<Result<(MsgId, Seq, Packet), command::CommandError>> {
        let conn = self.conn_id?;
        let msg = self.next_msg_id();
        Some(self.queue_command(conn, msg, target, action))
    }

    /// Queues a control command the way the legacy controllers did: an all-zero message id
    /// (their 0x7B cannot be told apart) and the next seq, under the same escaping policy.
    /// `None` before the hello.
    pub fn send_command_legacy(
        &mut self,
        target: command::Target,
        action: command::Action,
    ) -> Option<Result<(MsgId, Seq, Packet), command::CommandError>> {
        let conn = self.conn_id?;
        Some(self.queue_command(conn, MsgId([0; 3]), target, action))
    }

    fn queue_command(
        &mut self,
        conn: ConnId,
        msg: MsgId,
        target: command::Target,
        action: command::Action,
    ) -> Result<(MsgId, Seq, Packet), command::CommandError> {
        let escaping = self.config.frame_escaping;
        let built = command::build(conn, msg, &mut self.seqs, target, action, escaping)?;
        built.packet.encode(&mut self.transmit);
        Ok((msg, built.seq, built.packet))
    }

    /// Turns recognition of repeated packets on or off (the legacy transport had none: every
    /// copy is applied).
    pub fn set_dedup(&mut self, on: bool) {
        self.dedup_on = on;
    }

    /// Repeated packets acknowledged but not applied again.
    pub fn idempotent_drops(&self) -> u64 {
        self.idempotent_drops
    }

    /// Whether these bytes repeat a packet just seen: 0x83/0x73 within the window (both carry
    /// a counter, so a byte-identical copy is a duplicate); a 0x43 with records only when it
    /// repeats the previous one (records carry no counter, and a device can legitimately go
    /// back to an earlier state).
    fn repeated(&mut self, p: &Packet, bytes: &[u8], now: Duration) -> bool {
        if !self.dedup_on {
            return false;
        }
        match p {
            Packet::Report(_) | Packet::Data(_) => !self.dedup.first_seen(bytes, now),
            Packet::Info(i) if matches!(i.body, InfoBody::Records(_) | InfoBody::Entries(_)) => {
                let key = crate::dedup::fingerprint(bytes);
                let repeat = self
                    .last_info
                    .is_some_and(|(k, at)| k == key && now < at + DEDUP_WINDOW);
                self.last_info = Some((key, now));
                repeat
            }
            _ => false,
        }
    }

    /// Takes the bytes to write, in order; empty when there is nothing to send.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next message id: the counter, moved past zero and past values with a 0x7D/0x7E byte.
    fn next_msg_id(&mut self) -> MsgId {
        // The ids to avoid are few (at most `relay::CLOUD_IDS`), so this ends after at most
        // that many skips.
        for _ in 0..=self.avoid_msgs.len() {
            if self.next_msg == 0 {
                // 00 00 00 is the legacy commands' id.
                self.next_msg = 1;
            }
            let counter = command::clean_msg_counter(self.next_msg);
            self.next_msg = counter.wrapping_add(1);
            let msg = MsgId::from_counter(counter);
            if !self.avoid_msgs.contains(&msg) {
                return msg;
            }
        }
        let counter = command::clean_msg_counter(self.next_msg.max(1));
        self.next_msg = counter.wrapping_add(1);
        MsgId::from_counter(counter)
    }

    /// Remembers one of our own requests, whose 0x7B is not a command's.
    fn own_request(&mut self, msg: MsgId) {
        if self.own_requests.len() >= OWN_REQUESTS {
            self.own_requests.pop_front();
        }
        self.own_requests.push_back(msg);
    }

    fn event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            // Policy: drop the oldest; the count is exposed for metrics.
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    /// Handles one packet; `None` when it is a hello now held for the owner's verdict.
    fn handle(&mut self, bytes: Vec<u8>, now: Duration, local: LocalTime) -> Option<Step> {
        let packet = Packet::decode(&bytes);
        let mut sent = Vec::new();
        let admitted = matches!(self.hello, HelloState::Admitted);
        let violation = match &packet {
            Ok(Packet::Hello(_)) if admitted => Some(CloseReason::SecondHello),
            Ok(Packet::Hello(_) | Packet::AppHello(_)) => None,
            _ if !admitted => Some(CloseReason::NoHello),
            _ => None,
        };
        if violation.is_some() {
            // Not answered: the stream is not a device's, or not one that follows the protocol.
            self.closed = violation;
            return Some(Step {
                packet,
                bytes,
                sent,
            });
        }
        let packet = match packet {
            Ok(Packet::Hello(hello)) => {
                self.hello = HelloState::Pending(hello, bytes);
                return None;
            }
            other => other,
        };
        match &packet {
            Ok(p) => {
                if self.repeated(p, &bytes, now) {
                    self.idempotent_drops += 1;
                } else {
                    self.observe(p);
                }
                if self.closed.is_none() {
                    if let Some(answer) = reply::answer(p, local) {
                        answer.encode(&mut self.transmit);
                        sent.push(answer);
                    }
                    if let Some(ack) = self.mesh_ack(p) {
                        ack.encode(&mut self.transmit);
                        sent.push(ack);
                    }
                }
            }
            Err(e) => self.event(Event::DecodeError(e.clone())),
        }
        Some(Step {
            packet,
            bytes,
            sent,
        })
    }

    /// Updates state and raises events for one decoded packet.
    fn observe(&mut self, p: &Packet) {
        if let Some(Body::Frame(f)) = p.body() {
            if !f.checksum_ok() {
                self.event(Event::BadChecksum(p.kind()));
            }
        }
        match p {
            Packet::AppHello(h) => {
                self.event(Event::AppConnection(h.conn_id));
                self.closed = Some(CloseReason::AppConnection);
            }
            Packet::Report(_) => {
                for s in p.statuses() {
                    self.event(Event::Status(s, Source::Own));
                }
                if let Some(fw) = p.firmware() {
                    self.event(Event::Firmware(fw));
                }
            }
            Packet::Info(info) => {
                // Index 05 is the reporting device itself (PROTOCOL.md §6.6); any other index,
                // the 00 of a short entry included, is another node's state.
                let source = |index: u8| {
                    if index == 5 {
                        Source::Own
                    } else {
                        Source::Relayed
                    }
                };
                match &info.body {
                    InfoBody::Records(records) => {
                        for r in records {
                            self.event(Event::Status(r.status(), source(r.index())));
                        }
                    }
                    InfoBody::Entries(entries) => {
                        for e in entries {
                            if let Some(status) = e.status() {
                                self.event(Event::Status(status, source(e.tag)));
                            }
                        }
                    }
                    InfoBody::Ping | InfoBody::Tlv(_) | InfoBody::Opaque(_) => {}
                }
            }
            Packet::Data(d) => {
                let Some(frame) = d.body.frame() else { return };
                if frame.dir != Direction::Response {
                    return;
                }
                if frame.opcode == 0x52 {
                    self.collect_mesh(MeshPage::from_frame(frame));
                } else if let [code] = frame.payload.as_slice() {
                    self.event(Event::CommandResult {
                        seq: Seq(frame.seq),
                        opcode: frame.opcode,
                        code: *code,
                    });
                }
            }
            Packet::DataAck(ack) => match self.own_requests.iter().position(|m| *m == ack.msg_id) {
                Some(i) => {
                    self.own_requests.remove(i);
                }
                None => self.event(Event::DataAck(ack.msg_id)),
            },
            Packet::AnnounceReply(_) => self.event(Event::AnnounceReplied),
            _ => {}
        }
    }

    fn collect_mesh(&mut self, page: Option<MeshPage>) {
        // A 1-byte `f9 52` result (some firmware sends one first) is not a page. Pages nobody
        // asked for are ignored: a bridge's mesh listing decides which devices it speaks for.
        let Some(page) = page.filter(|_| self.mesh_open) else {
            return;
        };
        if self.mesh_type.is_none() {
            self.mesh_type = page.records.first().map(|r| r.device_type());
        }
        for r in &page.records {
            if self.mesh_pages.len() < MAX_MESH_RECORDS {
                self.mesh_pages.push(r.status());
            }
            self.event(Event::Status(r.status(), Source::MeshInfo));
        }
        if self.mesh_pages.len() >= usize::from(page.total) || page.records.is_empty() {
            self.mesh_done = true;
            self.mesh_open = false;
            self.mesh_at = None;
            let devices = std::mem::take(&mut self.mesh_pages);
            let device_type = self.mesh_type.take();
            self.event(Event::MeshLearned {
                device_type,
                devices,
            });
        }
    }

    /// The mesh status ACK, owed right after the page that completed a mesh-info answer.
    fn mesh_ack(&mut self, p: &Packet) -> Option<Packet> {
        let Packet::Data(d) = p else { return None };
        let frame = d.body.frame()?;
        if frame.dir != Direction::Response || frame.opcode != 0x52 || !self.mesh_done {
            return None;
        }
        self.mesh_done = false;
        let conn = self.conn_id?;
        let msg = self.next_msg_id();
        self.own_request(msg);
        Some(command::mesh_status_ack(conn, msg, MESH_ACK_SEQ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::hex;

    const HELLO: &str = "23 00 00 00 1a 03 32 5d 53 17 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c";
    const MS: Duration = Duration::from_millis(1);

    fn local() -> LocalTime {
        LocalTime::from_unix(1_762_417_245, -360)
    }

    /// Feeds bytes, admitting a hello that arrives.
    fn feed(s: &mut Session, bytes: &[u8], now: Duration) -> Vec<Step> {
        let mut steps = Vec::new();
        s.receive(bytes, now, local(), &mut steps);
        if s.pending_hello().is_some() {
            s.admit(now, local(), &mut steps);
        }
        steps
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn handshake_of_capture_a_is_answered_like_the_cloud() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0x1000);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        assert_eq!(s.take_transmit(), hex("28 00 00 00 02 00 00"));
        // §10.1: a 0x43 TLV and a 0x83 network-firmware report in one read.
        let read = hex(
            "43 00 00 00 1e 32 5d 53 17 01 01 06 c6 20 02 00 ab c5 20 02 00 04 c4 20 02 00 01 c3 20 02 00 05 c2 90 00 \
                        83 00 00 00 32 32 5d 53 17 00 01 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00 00 00 ea 00 00 00 86 01 00 30 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 c1 7e",
        );
        let steps = feed(&mut s, &read, 84 * MS);
        assert_eq!(steps.len(), 2);
        assert_eq!(
            s.take_transmit(),
            hex("48 00 00 00 03 01 01 00 88 00 00 00 03 00 01 00")
        );
        feed(&mut s, &hex("c3 00 00 00 01 0c"), 170 * MS);
        assert_eq!(
            s.take_transmit(),
            hex("c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 2d fd a8")
        );
        feed(&mut s, &hex("d3 00 00 00 00"), 300 * MS);
        assert_eq!(s.take_transmit(), hex("d8 00 00 00 00"));
        let ev = events(&mut s);
        assert_eq!(ev[0], Event::Hello(ConnId([0x32, 0x5d, 0x53, 0x17])));
        assert!(matches!(&ev[1], Event::Firmware(f) if f.raw == "0"));
    }

    #[test]
    fn announce_then_mesh_request_then_ack() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0x152b);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        s.take_transmit();
        assert_eq!(s.next_deadline(), Some(500 * MS));
        assert!(s.on_timeout(499 * MS).is_empty());
        s.on_timeout(500 * MS);
        assert_eq!(
            s.take_transmit(),
            hex("a3 00 00 00 07 32 5d 53 17 15 2b 00")
        );
        assert_eq!(s.next_deadline(), Some(2000 * MS));
        s.on_timeout(2000 * MS);
        assert_eq!(
            s.take_transmit(),
            hex(
                "73 00 00 00 18 32 5d 53 17 15 2c 00 7e 1f 00 00 00 f8 52 06 00 00 00 ff ff 00 00 56 7e"
            )
        );
        // The cloud-trace answer (4 devices in one page) and its 0x7B in one read.
        let answer = hex(
            "73 00 00 00 78 32 5d 53 17 00 00 00 7e 1f 00 00 00 f9 52 66 00 04 00 00 00 04 00 \
             05 00 44 01 00 00 44 01 00 00 00 00 64 00 00 00 00 00 00 00 00 00 00 00 \
             07 00 00 01 00 00 00 01 01 00 00 00 64 00 00 00 64 00 00 00 00 00 00 00 \
             03 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 \
             02 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 f2 7e \
             7b 00 00 00 07 32 5d 53 17 15 2c 00",
        );
        events(&mut s);
        feed(&mut s, &answer, 2050 * MS);
        assert_eq!(
            s.take_transmit(),
            hex("7b 00 00 00 07 32 5d 53 17 00 00 00 \
                 73 00 00 00 14 32 5d 53 17 15 2d 00 7e 1e 00 00 00 f8 af 02 00 af 01 61 7e")
        );
        let ev = events(&mut s);
        let learned = ev.iter().find_map(|e| match e {
            Event::MeshLearned {
                device_type,
                devices,
            } => Some((*device_type, devices.len())),
            _ => None,
        });
        assert_eq!(learned, Some((Some(0x44), 4)));
        // The 0x7B answers our own request: it is nobody's command's.
        assert!(!ev.iter().any(|e| matches!(e, Event::DataAck(_))), "{ev:?}");
        // No more mesh requests once learned; only the silence deadline remains.
        assert_eq!(s.next_deadline(), Some(2050 * MS + Duration::from_secs(60)));
    }

    #[test]
    fn mesh_request_is_retried_then_abandoned() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        let mut requests = 0;
        let mut now = Duration::ZERO;
        while let Some(t) = s.next_deadline() {
            now = t;
            requests += s
                .on_timeout(now)
                .iter()
                .filter(|p| matches!(p, Packet::Data(_)))
                .count();
            // Keep the device talking so silence does not end the test early.
            if now < Duration::from_secs(30) {
                feed(&mut s, &hex("d3 00 00 00 00"), now);
            }
        }
        assert_eq!(requests, usize::from(MESH_REQUEST_TRIES));
        assert_eq!(s.close_reason(), Some(CloseReason::Silent));
        assert!(now >= Duration::from_secs(60));
    }

    #[test]
    fn silence_closes_after_three_heartbeats() {
        let config = SessionConfig {
            discover_mesh: false,
            ..SessionConfig::default()
        };
        let mut s = Session::new(config, Duration::ZERO, 0);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        feed(&mut s, &hex("d3 00 00 00 00"), Duration::from_secs(20));
        assert_eq!(s.next_deadline(), Some(Duration::from_secs(80)));
        s.on_timeout(Duration::from_secs(79));
        assert_eq!(s.close_reason(), None);
        s.on_timeout(Duration::from_secs(80));
        assert_eq!(s.close_reason(), Some(CloseReason::Silent));
    }

    #[test]
    fn statuses_carry_their_source() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        s.take_transmit();
        events(&mut s);
        let read = hex(
            "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e \
                        43 00 00 00 2d 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00 \
                        06 00 10 50 01 18 0a 00 00 00 01 14 ee 00 00 00 00 00 00",
        );
        feed(&mut s, &read, Duration::ZERO);
        assert_eq!(
            s.take_transmit(),
            hex("88 00 00 00 03 00 09 00 48 00 00 00 03 01 01 00")
        );
        let sources: Vec<(u16, Source)> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Status(st, src) => Some((st.id.0, src)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sources,
            [
                (0xee, Source::Own),
                (0xee, Source::Own),
                (0x50, Source::Relayed)
            ]
        );
    }

    #[test]
    fn oversize_header_closes_and_garbage_is_reported() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        s.take_transmit();
        events(&mut s);
        let steps = feed(&mut s, &hex("d3 01 00 00 00"), Duration::ZERO);
        assert!(steps[0].packet.is_err());
        assert!(s.take_transmit().is_empty());
        assert!(matches!(events(&mut s)[..], [Event::DecodeError(_)]));
        feed(&mut s, &hex("43 00 00 ff ff 00"), Duration::ZERO);
        assert!(matches!(s.close_reason(), Some(CloseReason::Framing(_))));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn app_connections_are_closed_without_answer() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0);
        feed(
            &mut s,
            &hex(
                "13 00 00 00 1a 03 2d e4 b5 d2 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c",
            ),
            Duration::ZERO,
        );
        assert_eq!(s.close_reason(), Some(CloseReason::AppConnection));
        assert!(s.take_transmit().is_empty());
    }

    #[test]
    fn command_results_and_commands_sent() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0x1537);
        let power = command::Action::Power(true);
        assert!(
            s.send_command(command::Target::Device(5), power).is_none(),
            "not before the hello"
        );
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        s.take_transmit();
        let (msg, seq, _) = s
            .send_command(command::Target::Device(5), power)
            .unwrap()
            .unwrap();
        assert_eq!((msg, seq), (MsgId([0x15, 0x37, 0]), Seq(1)));
        assert_eq!(s.take_transmit()[9..12], [0x15, 0x37, 0]);
        feed(
            &mut s,
            &hex("73 00 00 00 13 32 5d 53 17 00 02 00 7e 01 00 00 00 f9 d0 01 00 00 d1 7e"),
            MS,
        );
        assert!(events(&mut s).contains(&Event::CommandResult {
            seq: Seq(1),
            opcode: 0xd0,
            code: 0
        }));
        assert_eq!(
            s.take_transmit(),
            hex("7b 00 00 00 07 32 5d 53 17 00 02 00")
        );
    }

    #[test]
    fn a_command_ack_reaches_the_owner_and_ours_do_not() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0x0100);
        feed(&mut s, &hex(HELLO), Duration::ZERO);
        events(&mut s);
        let (msg, _, _) = s
            .send_command(command::Target::Device(5), command::Action::Power(true))
            .and_then(Result::ok)
            .expect("after the hello");
        assert_eq!(msg, MsgId([1, 0, 0]));
        // The mesh-info request goes out with the next id; its 0x7B is the session's own.
        s.on_timeout(500 * MS);
        s.on_timeout(2000 * MS);
        feed(
            &mut s,
            &hex("7b 00 00 00 07 32 5d 53 17 01 02 00 7b 00 00 00 07 32 5d 53 17 01 00 00"),
            2010 * MS,
        );
        assert_eq!(events(&mut s), [Event::DataAck(MsgId([1, 0, 0]))]);
    }
}

#[cfg(test)]
mod type_tests {
    use super::*;

    use crate::catalog::{self, DeviceType};
    use crate::test_util::{hex, pycync};

    const HELLO: &str = "23 00 00 00 1a 03 32 5d 53 17 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c";

    /// A session with its hello admitted and the mesh-info request sent (pages are collected
    /// only while one is outstanding).
    fn session() -> Session {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0x152b);
        let mut steps = Vec::new();
        s.receive(
            &hex(HELLO),
            Duration::ZERO,
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        s.admit(Duration::ZERO, LocalTime::from_unix(0, 0), &mut steps);
        while let Some(at) = s.next_deadline().filter(|t| *t <= Duration::from_secs(2)) {
            s.on_timeout(at);
        }
        s.take_transmit();
        std::iter::from_fn(|| s.poll_event()).for_each(drop);
        s
    }

    fn feed(s: &mut Session, bytes: &[u8]) -> Vec<Event> {
        let mut steps = Vec::new();
        s.receive(
            bytes,
            Duration::from_millis(10),
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// The cloud-trace mesh-info answer (PROTOCOL.md §7.3) with the responding device's type
    /// byte `m2` set to `code` and the checksum made right again.
    fn mesh_answer(code: u8) -> Vec<u8> {
        let bytes = hex(
            "73 00 00 00 78 32 5d 53 17 00 00 00 7e 1f 00 00 00 f9 52 66 00 04 00 00 00 04 00 \
             05 00 44 01 00 00 44 01 00 00 00 00 64 00 00 00 00 00 00 00 00 00 00 00 \
             07 00 00 01 00 00 00 01 01 00 00 00 64 00 00 00 64 00 00 00 00 00 00 00 \
             03 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 \
             02 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 f2 7e",
        );
        let Ok(Packet::Data(mut d)) = Packet::decode(&bytes) else {
            panic!("the cloud-trace answer decodes")
        };
        let Body::Frame(f) = &mut d.body else {
            panic!("and holds a frame")
        };
        f.payload[8] = code;
        f.checksum = f.computed_checksum();
        Packet::Data(d).to_bytes()
    }

    #[test]
    fn every_catalogued_type_is_learned_from_a_mesh_page() {
        let lists = [
            catalog::ON_OFF,
            catalog::THERMOSTAT,
            catalog::SENSOR,
            catalog::REMOTE,
            catalog::CAMERA,
        ];
        let codes: Vec<u8> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        assert!(codes.len() > 140);
        for code in codes.iter().copied().chain([0x44, 250]) {
            let mut s = session();
            let learned = feed(&mut s, &mesh_answer(code))
                .into_iter()
                .find_map(|e| match e {
                    Event::MeshLearned { device_type, .. } => Some(device_type),
                    _ => None,
                });
            assert_eq!(learned, Some(Some(code)), "{code}");
            let t = DeviceType::of(Some(code));
            assert_eq!(t.is_known(), code != 250, "{code}");
            assert_eq!(t.code, Some(code));
        }
        // The plug of the cloud trace.
        assert_eq!(
            DeviceType::of(Some(0x44)).kind,
            catalog::Kind::Plug,
            "type 0x44 = 68"
        );
    }

    #[test]
    fn short_entries_report_state_and_thermostat_json_reports_none() {
        let mut s = session();
        let plug = feed(&mut s, &hex(pycync::OUTDOOR_PLUG_43));
        assert_eq!(s.take_transmit(), hex("48 00 00 00 03 01 01 00"));
        let statuses: Vec<(u16, bool, u8, Source)> = plug
            .into_iter()
            .filter_map(|e| match e {
                Event::Status(st, src) => Some((st.id.0, st.on, st.brightness, src)),
                _ => None,
            })
            .collect();
        // Index 00 is not the reporter's own 05.
        assert_eq!(statuses, [(6, true, 2, Source::Relayed)]);
        let thermostat = feed(&mut s, &hex(pycync::THERMOSTAT_43));
        assert_eq!(s.take_transmit(), hex("48 00 00 00 03 01 01 00"));
        assert!(
            !thermostat.iter().any(|e| matches!(e, Event::Status(..))),
            "{thermostat:?}"
        );
        assert!(
            !thermostat
                .iter()
                .any(|e| matches!(e, Event::DecodeError(_))),
            "{thermostat:?}"
        );
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;

    use crate::test_util::hex;

    /// A session that does not ask for the mesh, its hello admitted.
    fn quiet() -> Session {
        let mut s = Session::new(
            SessionConfig {
                discover_mesh: false,
                ..SessionConfig::default()
            },
            Duration::ZERO,
            0,
        );
        let mut steps = Vec::new();
        let local = LocalTime::from_unix(0, 0);
        s.receive(&hex(HELLO), Duration::ZERO, local, &mut steps);
        s.admit(Duration::ZERO, local, &mut steps);
        s.take_transmit();
        while s.poll_event().is_some() {}
        s
    }

    const HELLO: &str = "23 00 00 00 1a 03 38 e8 cf 46 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c";

    const REPORT: &str = "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e";

    #[test]
    fn without_dedup_every_copy_applies_and_legacy_sends_zero_ids() {
        let mut s = quiet();
        s.set_dedup(false);
        let report = hex(REPORT);
        let mut steps = Vec::new();
        s.receive(
            &[report.clone(), report].concat(),
            Duration::from_secs(1),
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        let statuses = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, Event::Status(..)))
            .count();
        assert_eq!((statuses, s.idempotent_drops()), (2, 0));
        let (msg, seq, packet) = s
            .send_command_legacy(command::Target::Device(5), command::Action::Power(true))
            .and_then(Result::ok)
            .expect("after the hello");
        assert_eq!(msg, MsgId([0; 3]));
        assert_eq!(packet.msg_id(), Some(MsgId([0; 3])));
        // Seqs still advance: results stay matchable.
        let (_, next, _) = s
            .send_command_legacy(command::Target::Device(5), command::Action::Power(false))
            .and_then(Result::ok)
            .expect("after the hello");
        assert_ne!(seq, next);
    }

    #[test]
    fn repeated_reports_are_acknowledged_but_not_applied_twice() {
        let mut s = quiet();
        let report = hex(REPORT);
        let mut steps = Vec::new();
        let now = Duration::from_secs(1);
        s.receive(
            &[report.clone(), report.clone()].concat(),
            now,
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        // Both answered…
        assert_eq!(
            s.take_transmit(),
            hex("88 00 00 00 03 00 09 00 88 00 00 00 03 00 09 00")
        );
        // …one applied.
        let statuses = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, Event::Status(..)))
            .count();
        assert_eq!(statuses, 1);
        assert_eq!(s.idempotent_drops(), 1);
        // After the window the same bytes count again.
        s.receive(
            &report,
            now + DEDUP_WINDOW,
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        assert!(std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, Event::Status(..))));
    }

    #[test]
    fn a_device_going_back_to_an_earlier_state_is_not_a_repeat() {
        let mut s = quiet();
        let on = hex(
            "43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00",
        );
        let off = hex(
            "43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 00 0a 0a ff ff ff 01 00 ee 00 00 00 00 00 00",
        );
        let mut steps = Vec::new();
        for (i, p) in [&on, &off, &on, &on].into_iter().enumerate() {
            s.receive(
                p,
                Duration::from_millis(100 * i as u64),
                LocalTime::from_unix(0, 0),
                &mut steps,
            );
        }
        let ons: Vec<bool> = std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                Event::Status(st, _) => Some(st.on),
                _ => None,
            })
            .collect();
        assert_eq!(ons, [true, false, true]);
        assert_eq!(s.idempotent_drops(), 1);
    }

    #[test]
    fn command_seqs_skip_the_mesh_seqs_and_wrap() {
        let mut s = Session::new(SessionConfig::default(), Duration::ZERO, 0xfffe);
        let mut steps = Vec::new();
        s.receive(
            &hex(HELLO),
            Duration::ZERO,
            LocalTime::from_unix(0, 0),
            &mut steps,
        );
        s.admit(Duration::ZERO, LocalTime::from_unix(0, 0), &mut steps);
        let mut seqs = Vec::new();
        let mut msgs = Vec::new();
        for _ in 0..300 {
            let (msg, seq, _) = s
                .send_command(command::Target::Device(5), command::Action::Power(true))
                .unwrap()
                .unwrap();
            seqs.push(seq.0);
            msgs.push(msg);
        }
        assert_eq!(seqs[0], 1);
        assert!(!seqs.contains(&0x1e) && !seqs.contains(&0x1f));
        assert!(!seqs.contains(&0x7d) && !seqs.contains(&0x7e));
        assert!(seqs.contains(&0), "wraps 255 → 0");
        // Message ids: u16 counter + 00, wrapping, past the legacy commands' all-zero id and
        // the values with a 7D/7E byte.
        assert_eq!(msgs[0], MsgId([0xff, 0xfe, 0]));
        assert_eq!(msgs[2], MsgId([0, 1, 0]));
        assert!(!msgs.contains(&MsgId([0; 3])));
        let after_7c = msgs.iter().position(|m| *m == MsgId([0, 0x7c, 0])).unwrap();
        assert_eq!(msgs[after_7c + 1], MsgId([0, 0x7f, 0]));
        assert!(
            msgs.iter()
                .all(|m| !m.0.contains(&0x7d) && !m.0.contains(&0x7e))
        );
    }

    #[test]
    fn the_configured_escaping_applies_to_commands() {
        let hello = "23 00 00 00 1a 03 32 5d 53 17 00 10 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 30 00 00 3c";
        let sent = |escaping: FrameEscaping, legacy: bool| {
            let config = SessionConfig {
                frame_escaping: escaping,
                discover_mesh: false,
                ..SessionConfig::default()
            };
            let mut s = Session::new(config, Duration::ZERO, 0x1234);
            let mut steps = Vec::new();
            s.receive(
                &hex(hello),
                Duration::ZERO,
                LocalTime::from_unix(0, 0),
                &mut steps,
            );
            s.admit(Duration::ZERO, LocalTime::from_unix(0, 0), &mut steps);
            s.take_transmit();
            let target = command::Target::Device(125);
            let action = command::Action::Rgb([126, 0, 0]);
            let (_, _, packet) = if legacy {
                s.send_command_legacy(target, action)
            } else {
                s.send_command(target, action)
            }
            .and_then(Result::ok)
            .expect("after the hello");
            let bytes = s.take_transmit();
            assert_eq!(bytes, packet.to_bytes());
            bytes
        };
        for legacy in [false, true] {
            // avoid: the colour nudged to 127, the unavoidable target stuffed.
            let avoid = sent(FrameEscaping::Avoid, legacy);
            assert!(avoid.windows(2).any(|w| w == [0x7d, 0x5d]));
            assert!(!avoid.windows(2).any(|w| w == [0x7d, 0x5e]));
            assert!(avoid.contains(&0x7f));
            // stuff: both stuffed.
            let stuff = sent(FrameEscaping::Stuff, legacy);
            assert!(stuff.windows(2).any(|w| w == [0x7d, 0x5d]));
            assert!(stuff.windows(2).any(|w| w == [0x7d, 0x5e]));
            // raw: both as they are, one frame byte each.
            let raw = sent(FrameEscaping::Raw, legacy);
            let inner = &raw[13..raw.len() - 1];
            assert_eq!(inner.iter().filter(|b| **b == 0x7d).count(), 1);
            assert_eq!(inner.iter().filter(|b| **b == 0x7e).count(), 1);
        }
    }
}

#[cfg(test)]
mod hello_tests {
    use super::*;

    use crate::test_util::hex;

    const HELLO: &str = "23 00 00 00 1a 03 32 5d 53 17 00 10 31 65 30 37 64 38 63 64 66 34 66 35 33 63 35 30 00 00 3c";
    const INFO: &str = "43 00 00 00 07 32 5d 53 17 01 01 06";

    fn local() -> LocalTime {
        LocalTime::from_unix(0, 0)
    }

    fn session() -> Session {
        Session::new(
            SessionConfig {
                discover_mesh: false,
                ..SessionConfig::default()
            },
            Duration::ZERO,
            0,
        )
    }

    #[test]
    fn a_hello_waits_for_the_owners_verdict_with_what_followed_it() {
        let mut s = session();
        let mut steps = Vec::new();
        // The device may send a 0x43 before the 0x28 (§6.1): one read holds both.
        s.receive(
            &[hex(HELLO), hex(INFO)].concat(),
            Duration::ZERO,
            local(),
            &mut steps,
        );
        assert!(steps.is_empty());
        assert!(s.take_transmit().is_empty(), "nothing answered yet");
        assert_eq!(s.poll_event(), None);
        assert_eq!(s.conn_id(), None);
        let hello = s.pending_hello().expect("pending");
        assert_eq!(hello.conn_id, ConnId([0x32, 0x5d, 0x53, 0x17]));
        assert_eq!(hello.auth.expose(), b"1e07d8cdf4f53c50");
        // More bytes before the verdict are held too, in order.
        s.receive(&hex("d3 00 00 00 00"), Duration::ZERO, local(), &mut steps);
        assert!(steps.is_empty());
        s.admit(Duration::ZERO, local(), &mut steps);
        assert_eq!(
            s.take_transmit(),
            hex("28 00 00 00 02 00 00 48 00 00 00 03 01 01 00 d8 00 00 00 00")
        );
        assert_eq!(steps.len(), 3);
        assert!(matches!(steps[0].packet, Ok(Packet::Hello(_))));
        assert_eq!(steps[0].sent, [Packet::HelloAck(crate::HelloAck([0, 0]))]);
        assert_eq!(
            s.poll_event(),
            Some(Event::Hello(ConnId([0x32, 0x5d, 0x53, 0x17])))
        );
        assert_eq!(s.conn_id(), Some(ConnId([0x32, 0x5d, 0x53, 0x17])));
    }

    #[test]
    fn a_refused_hello_is_never_answered_and_closes() {
        let mut s = session();
        let mut steps = Vec::new();
        s.receive(
            &[hex(HELLO), hex(INFO)].concat(),
            Duration::ZERO,
            local(),
            &mut steps,
        );
        s.refuse(&mut steps);
        assert_eq!(s.close_reason(), Some(CloseReason::Refused));
        assert!(s.take_transmit().is_empty());
        assert_eq!(s.poll_event(), None);
        assert_eq!(s.conn_id(), None);
        // The hello is reported (for logs and counters), nothing after it.
        assert_eq!(steps.len(), 1);
        s.receive(&hex("d3 00 00 00 00"), Duration::ZERO, local(), &mut steps);
        assert_eq!(steps.len(), 1);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn the_first_packet_must_be_the_hello() {
        for first in ["d3 00 00 00 00", INFO, "43 01 00 00 00"] {
            let mut s = session();
            let mut steps = Vec::new();
            s.receive(
                &[hex(first), hex(HELLO)].concat(),
                Duration::ZERO,
                local(),
                &mut steps,
            );
            assert_eq!(s.close_reason(), Some(CloseReason::NoHello), "{first}");
            assert!(s.take_transmit().is_empty());
            assert_eq!(s.pending_hello(), None);
            assert_eq!(steps.len(), 1);
        }
    }

    #[test]
    fn a_second_hello_is_a_protocol_error() {
        // Four hellos with different ids in one write: the first waits, then closes the rest.
        let mut read = Vec::new();
        for id in ["32 5d 53 17", "38 e8 cf 46", "25 e5 a6 9f", "60 b1 74 37"] {
            read.extend(hex(&HELLO.replace("32 5d 53 17", id)));
        }
        let mut s = session();
        let mut steps = Vec::new();
        s.receive(&read, Duration::ZERO, local(), &mut steps);
        assert_eq!(
            s.pending_hello().map(|h| h.conn_id),
            Some(ConnId([0x32, 0x5d, 0x53, 0x17]))
        );
        s.admit(Duration::ZERO, local(), &mut steps);
        assert_eq!(s.close_reason(), Some(CloseReason::SecondHello));
        assert_eq!(s.take_transmit(), hex("28 00 00 00 02 00 00"));
        let hellos: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(hellos, [Event::Hello(ConnId([0x32, 0x5d, 0x53, 0x17]))]);
        assert_eq!(s.conn_id(), Some(ConnId([0x32, 0x5d, 0x53, 0x17])));
    }

    #[test]
    fn a_connection_without_a_hello_closes_at_the_hello_deadline() {
        let mut s = session();
        assert_eq!(s.next_deadline(), Some(Duration::from_secs(5)));
        s.on_timeout(Duration::from_millis(4999));
        assert_eq!(s.close_reason(), None);
        s.on_timeout(Duration::from_secs(5));
        assert_eq!(s.close_reason(), Some(CloseReason::HelloTimeout));
        // An admitted hello lifts the deadline: only the silence one remains.
        let mut s = session();
        let mut steps = Vec::new();
        s.receive(&hex(HELLO), Duration::ZERO, local(), &mut steps);
        assert_eq!(s.next_deadline(), Some(Duration::from_secs(5)));
        s.admit(Duration::ZERO, local(), &mut steps);
        assert_eq!(s.next_deadline(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn an_undecided_session_holds_a_bounded_amount() {
        let mut s = session();
        let mut steps = Vec::new();
        s.receive(&hex(HELLO), Duration::ZERO, local(), &mut steps);
        let beat = hex("d3 00 00 00 00");
        for _ in 0..MAX_HELD / beat.len() {
            s.receive(&beat, Duration::ZERO, local(), &mut steps);
        }
        assert_eq!(s.close_reason(), None);
        s.receive(&beat, Duration::ZERO, local(), &mut steps);
        assert_eq!(s.close_reason(), Some(CloseReason::Unverified));
        assert!(s.take_transmit().is_empty());
    }

    #[test]
    fn mesh_pages_nobody_asked_for_are_ignored() {
        let mut s = session();
        let mut steps = Vec::new();
        s.receive(&hex(HELLO), Duration::ZERO, local(), &mut steps);
        s.admit(Duration::ZERO, local(), &mut steps);
        while s.poll_event().is_some() {}
        // The cloud-trace answer (§7.3), unsolicited here (discover_mesh is off).
        let page = hex(
            "73 00 00 00 78 32 5d 53 17 00 00 00 7e 1f 00 00 00 f9 52 66 00 04 00 00 00 04 00 \
             05 00 44 01 00 00 44 01 00 00 00 00 64 00 00 00 00 00 00 00 00 00 00 00 \
             07 00 00 01 00 00 00 01 01 00 00 00 64 00 00 00 64 00 00 00 00 00 00 00 \
             03 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 \
             02 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 32 00 00 00 00 00 00 00 f2 7e",
        );
        s.receive(&page, Duration::ZERO, local(), &mut steps);
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Status(..) | Event::MeshLearned { .. })),
            "{events:?}"
        );
    }
}
