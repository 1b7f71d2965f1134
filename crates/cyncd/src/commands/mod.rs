//! Commands: getting what a person or Home Assistant asked for to the devices, with one
//! outcome each.
//!
//! Owns: the reliable transport ([`reliable`], the command service around the sans-IO
//! dispatcher), the legacy transport and its shadow ([`legacy`]), the interface both implement
//! ([`transport`]), routing between them with SLOs and rollback ([`canary`]), and the one way
//! every front end resolves, checks and submits a command ([`control`]). [`Context`] is what the
//! process shares; it implements the device layer's [`Host`], through which connection tasks
//! hand device answers to the transport that owns them. The rule that keeps each connection to
//! one transport across drains, reconnects and rollbacks is stated in [`transport`].
//!
//! May import `devices`, `config`, `metrics` and `logging`; must not import `frontends`, `cli`
//! or `serve`.

pub mod canary;
pub mod control;
pub mod legacy;
pub mod reliable;
pub mod transport;

use crate::config::{Config, OffsetCache};
use crate::devices::Host;
use crate::devices::link::ConnEvent;
use crate::devices::registry::Registry;
use crate::metrics::Metrics;
use cync_proto::ConnId;
use cync_proto::canary::{Route, Transport};
use openssl::ssl::SslAcceptor;
use std::sync::Arc;

/// What the whole process shares: built by `serve`, used by the connection tasks (as their
/// [`Host`]) and by every front end.
pub struct Context {
    /// Effective configuration.
    pub config: Config,
    /// Device registry.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Metrics,
    /// TLS acceptor; `None` serves plain TCP.
    pub tls: Option<SslAcceptor>,
    /// The command service (the reliable transport).
    pub commands: reliable::Commands,
    /// The legacy transport.
    pub legacy: legacy::Legacy,
    /// Routing between the two, SLOs and rollback.
    pub canary: Arc<canary::Canary>,
    /// The UTC offset sent in 0xC8, looked up at most once a minute.
    pub offset: OffsetCache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Host for Context {
    fn config(&self) -> &Config {
        &self.config
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn tls(&self) -> Option<&SslAcceptor> {
        self.tls.as_ref()
    }

    fn offset(&self) -> &OffsetCache {
        &self.offset
    }

    fn route(&self, conn: ConnId) -> Route {
        self.canary.route(conn)
    }

    fn packet(&self, transport: Transport, bad: bool) {
        self.canary.packet(transport, bad);
    }

    fn deliver(&self, to: Transport, event: ConnEvent) {
        match to {
            Transport::Reliable => self.commands.event(event),
            Transport::Legacy => self.legacy.device(event),
        }
    }
}
