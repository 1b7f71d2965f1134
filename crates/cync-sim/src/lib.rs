//! Simulated Cync devices for tests, benchmarks and `cyncd sim`: Wi-Fi bridges that connect to a
//! server over TLS (or plain TCP) and speak as the real devices of the captures do, the
//! Bluetooth-mesh devices behind them, and seeded message-level chaos.
//!
//! - [`mesh`]: homes, mesh devices of every kind, and the device-side truth (every command each
//!   device applied).
//! - [`bridge`]: one bridge's protocol behaviour, sans I/O.
//! - [`chaos`]: seeded decisions to drop, delay, duplicate, reject, ignore, stall, reset.
//! - [`fleet`]: one task per bridge, reconnecting with backoff; counters and a summary.
//! - [`api`]: `GET /sim/devices` for the truth.
#![forbid(unsafe_code)]

pub mod api;
pub mod bridge;
pub mod chaos;
pub mod fleet;
pub mod mesh;

pub use chaos::Chaos;
pub use fleet::{BridgeLayout, Fleet, FleetConfig, HomeLayout, MemoryListener, MemoryNet, Summary};
pub use mesh::{Applied, Kind, SimDevice};
