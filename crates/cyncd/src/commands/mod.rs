//! Commands: getting what a person or Home Assistant asked for to the devices, with one
//! outcome each.
//!
//! Owns: the reliable transport ([`reliable`], the command service around the sans-IO
//! dispatcher), the legacy transport and its shadow ([`legacy`]), the interface both implement
//! ([`transport`]), routing between them with SLOs and rollback ([`canary`], kept across restarts
//! by [`routing_file`]), and the one way
//! every front end resolves, checks and submits a command ([`control`]). [`Context`] is what the
//! process shares; it implements the device layer's [`Host`], through which connection tasks
//! hand device answers to the transport that owns them. The rule that keeps each connection to
//! one transport across drains, reconnects and rollbacks is stated in [`transport`].
//!
//! May import `devices`, `config`, `homes`, `metrics` and `logging`; must not import `frontends`, `cli`
//! or `serve`.

pub mod canary;
pub mod control;
pub mod legacy;
pub mod reliable;
pub mod routing_file;
pub mod transport;

use crate::config::{Config, OffsetCache};
use crate::devices::Host;
use crate::devices::auth::{AuthStore, PinSource};
use crate::devices::link::ConnEvent;
use crate::devices::registry::Registry;
use crate::homes::{Homes, HomesCell};
use crate::logging::LogLimits;
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
    /// The homes (the configuration over the homes file); replaced whole when the page's setup
    /// screen saves a new export.
    pub homes: HomesCell,
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
    /// The bridges' auth-code pins.
    pub auth: Arc<AuthStore>,
    /// The limits on log lines peers cause.
    pub log_limits: LogLimits,
    /// Captures of the device connections, when on.
    pub captures: Option<crate::devices::capture::Captures>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Pins the auth codes the account gave (unless `[device_auth] account_codes = false`), then
/// the configuration's, which win for a bridge both name.
pub fn pin_codes(auth: &AuthStore, config: &Config, homes: &Homes) {
    if config.device_auth.account_codes {
        auth.import(PinSource::Account, homes.auth_codes());
    }
    auth.import(PinSource::Configured, config.device_auth.pins());
}

impl Context {
    /// Reads the homes file again and applies it (a new export was saved, or SIGHUP): the
    /// merged homes replace the old ones, the account's auth codes are pinned, connected
    /// bridges move to the homes they now belong to, and every front end is told to look
    /// again. Returns the notes for the log.
    pub fn reload_homes(&self) -> Result<Vec<String>, crate::homes::HomesError> {
        let (homes, mut notes) = Homes::load(&self.config)?;
        for (home, code, names) in homes.unknown_types() {
            self.registry.unknown_type(home, code, &names.join(", "));
        }
        pin_codes(&self.auth, &self.config, &homes);
        self.registry.set_named(&homes);
        for (conn, from, to) in self.registry.place_bridges(&homes) {
            notes.push(format!("bridge {conn} moved from home {from:?} to {to:?}"));
        }
        self.homes.set(homes);
        self.registry.touch();
        Ok(notes)
    }
}

impl Host for Context {
    fn config(&self) -> &Config {
        &self.config
    }

    fn homes(&self) -> Arc<Homes> {
        self.homes.get()
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

    fn auth(&self) -> &AuthStore {
        &self.auth
    }

    fn log_limits(&self) -> &LogLimits {
        &self.log_limits
    }

    fn capture(&self) -> Option<&crate::devices::capture::Captures> {
        self.captures.as_ref()
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
