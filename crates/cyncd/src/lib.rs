//! The cyncd daemon and its command line: everything above the pure protocol crate.
//!
//! - [`decode`] and [`encode`]: the lab tools over the wire format.
//! - [`tls`]: the TLS acceptor real devices can use, and the per-install certificate.
#![forbid(unsafe_code)]

pub mod decode;
pub mod encode;
pub mod tls;
