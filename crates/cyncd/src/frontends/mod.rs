//! Front ends: how people and Home Assistant see and command the devices.
//!
//! Owns: the HTTP API ([`http`]), the web page ([`web`]) and its live event stream ([`live`]),
//! the page's setup screen for the Cync account ([`account`]), and the MQTT bridge to Home
//! Assistant ([`mqtt`]). Each reads the registry and commands
//! through [`crate::commands::control`], never a transport directly.
//!
//! May import `commands`, `devices`, `config`, `homes`, `metrics` and `logging`; must not import `cli`
//! or `serve`.

pub mod account;
pub mod http;
pub mod live;
pub mod mqtt;
pub mod web;
