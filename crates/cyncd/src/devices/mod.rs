//! The device side: TLS, the accept loop, one task per device connection, and the registry of
//! what every device and connection is.
//!
//! Owns: sockets and TLS towards devices ([`tls`], [`server`]) and towards the upstream cloud
//! in relay mode ([`relay`]), the sans-IO session of each connection, who a device is
//! ([`auth`]: auth-code pins), device state and connections ([`registry`]; the effects lights
//! run are kept across restarts by [`effects`]), the messages exchanged with the command
//! transports ([`link`]), and the captures of each connection's traffic ([`capture`]).
//!
//! Must not import: `commands`, `frontends`, `cli` or `serve` (the layers above). What a
//! connection needs from above — the routing decision at a hello, the SLO feed, handing device
//! answers to the transport that owns them — goes through the [`Host`] trait defined here and
//! implemented by the `commands` layer.

pub mod auth;
pub mod capture;
pub mod effects;
pub mod link;
pub mod registry;
pub mod relay;
pub mod server;
pub mod tls;

use crate::config::{Config, OffsetCache};
use crate::homes::Homes;
use crate::logging::LogLimits;
use crate::metrics::Metrics;
use auth::AuthStore;
use cync_proto::ConnId;
use cync_proto::canary::{Route, Transport};
use link::ConnEvent;
use openssl::ssl::SslAcceptor;
use registry::Registry;

/// What every connection task needs from the process: the configuration, the registry, the
/// metrics, TLS, and a way to reach the transports above without importing them.
///
/// Connection tasks are generic over it, so the calls compile to direct calls.
pub trait Host: Send + Sync + 'static {
    /// Effective configuration.
    fn config(&self) -> &Config;
    /// The homes as they are now (the configuration over the homes file).
    fn homes(&self) -> std::sync::Arc<Homes>;
    /// Device registry.
    fn registry(&self) -> &Registry;
    /// Metrics.
    fn metrics(&self) -> &Metrics;
    /// TLS acceptor; `None` serves plain TCP.
    fn tls(&self) -> Option<&SslAcceptor>;
    /// The UTC offset sent in 0xC8.
    fn offset(&self) -> &OffsetCache;
    /// The bridges' auth-code pins.
    fn auth(&self) -> &AuthStore;
    /// The process-wide limits on log lines peers cause.
    fn log_limits(&self) -> &LogLimits;
    /// The captures, when `[capture]` has a directory.
    fn capture(&self) -> Option<&capture::Captures>;
    /// The transport a new connection gets, decided at its hello.
    fn route(&self, conn: ConnId) -> Route;
    /// A packet received on a connection of `transport`; `bad` when it did not decode (SLOs).
    fn packet(&self, transport: Transport, bad: bool);
    /// Hands an event to the transport `to` (never waits; a full queue drops and counts).
    fn deliver(&self, to: Transport, event: ConnEvent);
    /// The upstream of relay mode; `None` when relay mode is off.
    fn relay(&self) -> Option<&std::sync::Arc<relay::RelayClient>>;
}
