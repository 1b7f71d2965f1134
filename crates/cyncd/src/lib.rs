//! The cyncd daemon and its command line: everything above the pure protocol crate.
//!
//! Layers, each importing only the ones below it:
//!
//! - [`cli`]: `decode`, `encode`, `set`/`toggle`, `doctor`, `sim`/`demo`;
//! - [`serve`]: `cyncd serve`, the wiring of everything below into one process;
//! - [`frontends`]: the HTTP API, the web page and its live stream, MQTT for Home Assistant;
//! - [`commands`]: the reliable and legacy transports, canary routing and SLOs, and the one way
//!   every front end commands a device or group;
//! - [`devices`]: TLS, the accept loop and connection tasks, the device registry;
//! - [`homes`]: the user's homes, names, types and rooms (the homes file, the Cync account
//!   client and export, `cync_mesh.yaml` import), merged with the configuration;
//! - [`config`], [`metrics`], [`logging`], [`state`] (files in the state directory): used by all.
//!
//! `crates/cyncd/tests/layers.rs` checks the rule on the sources.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod devices;
pub mod frontends;
pub mod homes;
pub mod logging;
pub mod metrics;
pub mod serve;
pub mod state;
