//! Front ends: how people and Home Assistant see and command the devices.
//!
//! Owns: the HTTP API ([`http`]), the web page ([`web`]) and its live event stream ([`live`]),
//! and the MQTT bridge to Home Assistant ([`mqtt`]). Each reads the registry and commands
//! through [`crate::commands::control`], never a transport directly.
//!
//! May import `commands`, `devices`, `config`, `metrics` and `logging`; must not import `cli`
//! or `serve`.

pub mod http;
pub mod live;
pub mod mqtt;
pub mod web;
