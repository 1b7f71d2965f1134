//! Prometheus metrics. The registry is created by the caller and passed in; every label value
//! comes from a fixed set (packet type names, error reasons), so cardinality is bounded.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The per-packet-type counters, resolved once so the hot path only touches atomics.
#[derive(Debug, Clone)]
pub struct TypeCounters {
    /// `tcp_comm_packet_recv_total{type, outcome="ok"}`.
    pub recv_ok: Counter,
    /// `…{outcome="bad_checksum"}`.
    pub recv_bad: Counter,
    /// `…{outcome="decode_error"}`.
    pub recv_error: Counter,
    /// `tcp_comm_packet_sent_total{type}`.
    pub sent: Counter,
    /// `tcp_comm_packet_latency_seconds{type}`.
    pub latency: Histogram,
}

/// Every metric cyncd exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Counters by type byte (unknown types share the `unknown` ones).
    by_type: std::sync::Arc<Vec<TypeCounters>>,
    /// `tcp_comm_packet_recv_total{type, outcome}`: outcome `ok`, `decode_error`, `bad_checksum`.
    pub packet_recv: Family<Labels2, Counter>,
    /// `tcp_comm_packet_sent_total{type}`.
    pub packet_sent: Family<Labels1, Counter>,
    /// `tcp_comm_packet_latency_seconds{type}`: device packet read → our reply written.
    pub packet_latency: Family<Labels1, Histogram, fn() -> Histogram>,
    /// `tcp_comm_packet_retransmit_total{reason}`.
    pub retransmits: Family<Labels1, Counter>,
    /// `tcp_comm_decode_errors_total{reason}`.
    pub decode_errors: Family<Labels1, Counter>,
    /// `cyncd_connections_open`.
    pub connections_open: Gauge,
    /// `cyncd_connections_accepted_total`.
    pub connections_accepted: Counter,
    /// `cyncd_connections_refused_total`: over the connection cap.
    pub connections_refused: Counter,
    /// `cyncd_connections_closed_total{reason}`.
    pub connections_closed: Family<Labels1, Counter>,
    /// `cyncd_tls_handshakes_total`: completed handshakes.
    pub handshakes: Counter,
    /// `cyncd_tls_failures_total{reason}`.
    pub tls_failures: Family<Labels1, Counter>,
    /// `cyncd_hellos_total`: hellos admitted.
    pub hellos: Counter,
    /// `cyncd_device_auth_failures_total{reason}`: hellos refused for their auth code.
    pub auth_failures: Family<Labels1, Counter>,
    /// `cyncd_device_refusals_total{reason}`: device connections refused or closed for
    /// breaking a rule other than the code (see [`DEVICE_REFUSALS`]).
    pub device_refusals: Family<Labels1, Counter>,
    /// `cyncd_statuses_refused_total{reason}`: device statuses not applied (see
    /// [`STATUS_REFUSALS`]).
    pub statuses_refused: Family<Labels1, Counter>,
    /// `cyncd_events_dropped_total`: session events dropped by a full queue.
    pub events_dropped: Counter,
    /// `cync_commands_total{outcome}`.
    pub commands: Family<Labels1, Counter>,
    /// `cync_command_latency_seconds`: submit → outcome.
    pub command_latency: Histogram,
    /// `tcp_comm_ack_rtt_seconds`: command written → its 0x7B.
    pub ack_rtt: Histogram,
    /// `tcp_comm_ack_timeout_total`: commands that ended with nothing back.
    pub ack_timeouts: Counter,
    /// `tcp_comm_idempotent_drop_total`: repeated packets acknowledged, not applied.
    pub idempotent_drops: Counter,
    /// `tcp_comm_send_queue_size`: commands waiting behind another for the same device.
    pub send_queue: Gauge,
    /// `tcp_comm_queue_full_total`: write queues found full.
    pub queue_full: Counter,
    /// `tcp_comm_unmatched_answers_total{transport}`: 0x7Bs on a connection of `transport`
    /// that answer none of its commands (counted, never credited to one).
    pub unmatched_answers: Family<Labels1, Counter>,
    /// `cync_commands_in_flight`.
    pub in_flight: Gauge,
    /// `cyncd_web_clients`: live event streams open (the web page).
    pub web_clients: Gauge,
    /// `cyncd_web_clients_refused_total`: event streams refused over the cap.
    pub web_refused: Counter,
    /// Relay mode (`tcp_comm_relay_*`).
    pub relay: RelayMetrics,
}

/// The relay-mode families (`tcp_comm_relay_*`); `direction` is `up` (device → cloud) or
/// `down` (cloud → device).
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// `tcp_comm_relay_packets_total{direction}`: packets forwarded.
    pub packets: Family<Labels1, Counter>,
    /// `tcp_comm_relay_bytes_total{direction}`: bytes forwarded.
    pub bytes: Family<Labels1, Counter>,
    /// `tcp_comm_relay_kept_total{direction, reason}`: packets not forwarded by rule.
    pub kept: Family<Labels2, Counter>,
    /// `tcp_comm_relay_dropped_total{direction, reason}`: packets that could not be forwarded.
    pub dropped: Family<Labels2, Counter>,
    /// `tcp_comm_relay_upstream_connects_total`.
    pub connects: Counter,
    /// `tcp_comm_relay_upstream_failures_total{reason}`.
    pub failures: Family<Labels1, Counter>,
    /// `tcp_comm_relay_upstreams{state}`: relayed connections by upstream state.
    pub upstreams: Family<Labels1, Gauge>,
    /// `tcp_comm_relay_collisions_total`: requests written while the other writer had one
    /// with the same id or seq outstanding (told apart by write order).
    pub collisions: Counter,
    /// `tcp_comm_relay_unattributed_total`: device answers no request in the ledger matches
    /// (sent up, never credited to cyncd).
    pub unattributed: Counter,
}

/// Every `(direction, reason)` of `tcp_comm_relay_kept_total`.
pub const RELAY_KEPT: [(&str, &str); 3] = [
    ("up", "local_answer"),
    ("up", "hello"),
    ("down", "cloud_answer"),
];
/// Every `(direction, reason)` of `tcp_comm_relay_dropped_total`.
pub const RELAY_DROPPED: [(&str, &str); 4] = [
    ("up", "upstream_down"),
    ("up", "pending_full"),
    ("up", "queue_full"),
    ("up", "stale"),
];
/// Every `reason` of `tcp_comm_relay_upstream_failures_total`.
pub const RELAY_FAILURES: [&str; 8] = [
    "connect",
    "tls",
    "fingerprint",
    "closed",
    "read",
    "write",
    "write_stalled",
    "oversize",
];
/// Every `state` of `tcp_comm_relay_upstreams`.
pub const RELAY_STATES: [&str; 3] = ["connecting", "up", "down"];

impl RelayMetrics {
    fn register(&self, tcp: &mut Registry) {
        tcp.register(
            "relay_packets",
            "Packets relayed, by direction",
            self.packets.clone(),
        );
        tcp.register(
            "relay_bytes",
            "Bytes relayed, by direction",
            self.bytes.clone(),
        );
        tcp.register(
            "relay_kept",
            "Packets not relayed by rule, by direction and reason",
            self.kept.clone(),
        );
        tcp.register(
            "relay_dropped",
            "Packets that could not be relayed, by direction and reason",
            self.dropped.clone(),
        );
        tcp.register(
            "relay_upstream_connects",
            "Upstream connections made",
            self.connects.clone(),
        );
        tcp.register(
            "relay_upstream_failures",
            "Upstream connections failed or lost, by reason",
            self.failures.clone(),
        );
        tcp.register(
            "relay_upstreams",
            "Relayed connections by upstream state",
            self.upstreams.clone(),
        );
        tcp.register(
            "relay_collisions",
            "Requests written while the other writer had the same id or seq outstanding",
            self.collisions.clone(),
        );
        tcp.register(
            "relay_unattributed",
            "Device answers that match no request (sent up, never credited locally)",
            self.unattributed.clone(),
        );
        for direction in ["up", "down"] {
            let _ = self.packets.get_or_create(&[("direction", direction)]);
            let _ = self.bytes.get_or_create(&[("direction", direction)]);
        }
        for (direction, reason) in RELAY_KEPT {
            let _ = self
                .kept
                .get_or_create(&[("direction", direction), ("reason", reason)]);
        }
        for (direction, reason) in RELAY_DROPPED {
            let _ = self
                .dropped
                .get_or_create(&[("direction", direction), ("reason", reason)]);
        }
        for reason in RELAY_FAILURES {
            let _ = self.failures.get_or_create(&[("reason", reason)]);
        }
        for state in RELAY_STATES {
            let _ = self.upstreams.get_or_create(&[("state", state)]);
        }
    }

    /// Counts packets relayed (`packets` of them in `bytes`).
    pub fn relayed(&self, direction: &'static str, packets: u64, bytes: usize) {
        self.packets
            .get_or_create(&[("direction", direction)])
            .inc_by(packets);
        self.bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Counts a packet kept by rule.
    pub fn kept(&self, direction: &'static str, reason: &'static str) {
        self.kept
            .get_or_create(&[("direction", direction), ("reason", reason)])
            .inc();
    }

    /// Counts packets that could not be relayed.
    pub fn dropped(&self, direction: &'static str, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&[("direction", direction), ("reason", reason)])
            .inc_by(n);
    }

    /// Counts an upstream failure.
    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&[("reason", reason)]).inc();
    }

    /// Moves one connection between upstream states (`None`: entering or leaving relay mode).
    pub fn state(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(from) = from {
            self.upstreams.get_or_create(&[("state", from)]).dec();
        }
        if let Some(to) = to {
            self.upstreams.get_or_create(&[("state", to)]).inc();
        }
    }
}

/// Labels of `cyncd_device_refusals_total`.
pub const DEVICE_REFUSALS: [&str; 6] = [
    "unknown_bridge",
    "per_ip_cap",
    "no_hello",
    "second_hello",
    "hello_timeout",
    "unverified",
];

/// Labels of `cyncd_statuses_refused_total`.
pub const STATUS_REFUSALS: [&str; 4] = ["unlisted", "bridge_cap", "home_cap", "table_full"];

/// Labels of `cyncd_device_auth_failures_total`.
pub const AUTH_FAILURES: [&str; 4] = ["empty", "mismatch", "unpinned", "store_full"];

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let packet_recv: Family<Labels2, Counter> = Family::default();
        let packet_sent: Family<Labels1, Counter> = Family::default();
        let packet_latency: Family<Labels1, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let by_type = (0..=255u8)
            .map(|b| {
                let name = cync_proto::PacketType::from_byte(b).map_or("unknown", |t| t.name());
                let recv = |outcome| {
                    packet_recv
                        .get_or_create(&[("type", name), ("outcome", outcome)])
                        .clone()
                };
                TypeCounters {
                    recv_ok: recv("ok"),
                    recv_bad: recv("bad_checksum"),
                    recv_error: recv("decode_error"),
                    sent: packet_sent.get_or_create(&[("type", name)]).clone(),
                    latency: packet_latency.get_or_create(&[("type", name)]).clone(),
                }
            })
            .collect();
        let m = Self {
            by_type: std::sync::Arc::new(by_type),
            packet_recv,
            packet_sent,
            packet_latency,
            retransmits: Family::default(),
            decode_errors: Family::default(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            connections_closed: Family::default(),
            handshakes: Counter::default(),
            tls_failures: Family::default(),
            hellos: Counter::default(),
            auth_failures: Family::default(),
            device_refusals: Family::default(),
            statuses_refused: Family::default(),
            events_dropped: Counter::default(),
            commands: Family::default(),
            // Placed around the round trips that matter: ~100 ms, 250 ms, 1.5 s and the 5 s
            // deadline.
            command_latency: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0,
            ]),
            ack_rtt: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            ack_timeouts: Counter::default(),
            idempotent_drops: Counter::default(),
            send_queue: Gauge::default(),
            queue_full: Counter::default(),
            unmatched_answers: Family::default(),
            in_flight: Gauge::default(),
            web_clients: Gauge::default(),
            web_refused: Counter::default(),
            relay: RelayMetrics::default(),
        };
        let tcp = registry.sub_registry_with_prefix("tcp_comm");
        tcp.register(
            "packet_recv",
            "Packets received from devices",
            m.packet_recv.clone(),
        );
        tcp.register(
            "packet_sent",
            "Packets sent to devices",
            m.packet_sent.clone(),
        );
        tcp.register(
            "packet_latency_seconds",
            "Device packet read to our reply written",
            m.packet_latency.clone(),
        );
        tcp.register(
            "packet_retransmit",
            "Packets sent again",
            m.retransmits.clone(),
        );
        tcp.register(
            "decode_errors",
            "Bytes from devices that did not decode",
            m.decode_errors.clone(),
        );
        tcp.register(
            "ack_rtt_seconds",
            "Command written to its 0x7B",
            m.ack_rtt.clone(),
        );
        tcp.register(
            "ack_timeout",
            "Commands that ended with nothing back",
            m.ack_timeouts.clone(),
        );
        tcp.register(
            "idempotent_drop",
            "Repeated packets acknowledged but not applied",
            m.idempotent_drops.clone(),
        );
        tcp.register(
            "send_queue_size",
            "Commands queued behind another for the same device",
            m.send_queue.clone(),
        );
        tcp.register(
            "queue_full",
            "Write queues found full",
            m.queue_full.clone(),
        );
        tcp.register(
            "unmatched_answers",
            "0x7Bs that answer no command of the transport owning the connection",
            m.unmatched_answers.clone(),
        );
        m.relay.register(tcp);
        let cync = registry.sub_registry_with_prefix("cync");
        cync.register("commands", "Commands by outcome", m.commands.clone());
        cync.register(
            "command_latency_seconds",
            "Command submit to outcome",
            m.command_latency.clone(),
        );
        cync.register(
            "commands_in_flight",
            "Commands awaiting an answer",
            m.in_flight.clone(),
        );
        // Every bounded label value exists from the start, so dashboards see zeros.
        for outcome in cync_proto::delivery::Outcome::ALL {
            let _ = m.commands.get_or_create(&[("outcome", outcome.name())]);
        }
        for transport in ["legacy", "reliable"] {
            let _ = m
                .unmatched_answers
                .get_or_create(&[("transport", transport)]);
        }
        for reason in [
            "timeout",
            "connection_lost",
            "backpressure",
            "no_connection",
        ] {
            let _ = m.retransmits.get_or_create(&[("reason", reason)]);
        }
        let own = registry.sub_registry_with_prefix("cyncd");
        own.register(
            "connections_open",
            "Device connections open",
            m.connections_open.clone(),
        );
        own.register(
            "connections_accepted",
            "Device connections accepted",
            m.connections_accepted.clone(),
        );
        own.register(
            "connections_refused",
            "Connections refused over the cap",
            m.connections_refused.clone(),
        );
        own.register(
            "connections_closed",
            "Connections closed, by reason",
            m.connections_closed.clone(),
        );
        own.register(
            "tls_handshakes",
            "Completed TLS handshakes",
            m.handshakes.clone(),
        );
        own.register(
            "tls_failures",
            "Failed TLS handshakes, by reason",
            m.tls_failures.clone(),
        );
        own.register("hellos", "Device hellos admitted", m.hellos.clone());
        own.register(
            "device_auth_failures",
            "Device hellos refused for their auth code, by reason",
            m.auth_failures.clone(),
        );
        own.register(
            "device_refusals",
            "Device connections refused or closed for breaking a rule, by reason",
            m.device_refusals.clone(),
        );
        own.register(
            "statuses_refused",
            "Device statuses not applied, by reason",
            m.statuses_refused.clone(),
        );
        for reason in AUTH_FAILURES {
            let _ = m.auth_failures.get_or_create(&[("reason", reason)]);
        }
        for reason in DEVICE_REFUSALS {
            let _ = m.device_refusals.get_or_create(&[("reason", reason)]);
        }
        for reason in STATUS_REFUSALS {
            let _ = m.statuses_refused.get_or_create(&[("reason", reason)]);
        }
        own.register(
            "events_dropped",
            "Session events dropped",
            m.events_dropped.clone(),
        );
        own.register(
            "web_clients",
            "Live event streams open",
            m.web_clients.clone(),
        );
        own.register(
            "web_clients_refused",
            "Live event streams refused over the cap",
            m.web_refused.clone(),
        );
        m
    }

    /// The counters of a packet type.
    pub fn of_type(&self, kind: u8) -> &TypeCounters {
        // 256 entries, one per byte value: never out of range.
        #[allow(clippy::indexing_slicing)]
        &self.by_type[usize::from(kind)]
    }

    /// Counts a decode error.
    pub fn decode_error(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a retransmission.
    pub fn retransmit(&self, reason: &'static str) {
        self.retransmits.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a device connection refused or closed for breaking a rule.
    pub fn refused(&self, reason: &'static str) {
        self.device_refusals
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a 0x7B that answers none of `transport`'s commands.
    pub fn unmatched_answer(&self, transport: cync_proto::canary::Transport) {
        self.unmatched_answers
            .get_or_create(&[("transport", transport.name())])
            .inc();
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// Renders the registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
