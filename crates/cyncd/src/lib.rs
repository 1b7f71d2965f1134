//! The cyncd daemon and its command line: everything above the pure protocol crate.
//!
//! - [`serve`]: the controller (device server + HTTP API), built from [`config`], [`tls`],
//!   [`server`] (accept loop and connection tasks), [`registry`], [`metrics`], [`http`] and
//!   [`logging`]; [`commands`] delivers commands reliably and [`control`] is the one way every
//!   front end commands a device or group; [`web`] is the page for people at `/`, kept live by
//!   [`live`] (Server-Sent Events).
//! - [`decode`] and [`encode`]: the lab tools over the wire format.
//! - [`mqtt`]: Home Assistant over MQTT (discovery, states, availability, commands).
//! - [`client`]: `cyncd set` and `cyncd toggle`, clients of a running server.
//! - [`sim`]: `cyncd sim` (a simulated fleet) and `cyncd demo`.
#![forbid(unsafe_code)]

pub mod canary;
pub mod client;
pub mod commands;
pub mod config;
pub mod control;
pub mod decode;
pub mod encode;
pub mod http;
pub mod legacy;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod registry;
pub mod serve;
pub mod server;
pub mod sim;
pub mod tls;
pub mod transport;
pub mod web;
