//! The command-line tools besides `serve`: lab tools over the wire format ([`decode`],
//! [`encode`]), clients of a running server ([`client`]: `set`, `toggle`, over [`http`];
//! [`devices`]: `devices forget`), the setup check ([`doctor`]), and the simulator ([`sim`]:
//! `sim`, `demo`).
//!
//! The top layer: may import anything below it, including `serve`.

pub mod client;
pub mod decode;
pub mod devices;
pub mod doctor;
pub mod encode;
pub mod http;
pub mod sim;
