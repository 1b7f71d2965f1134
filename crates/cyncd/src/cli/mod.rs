//! The command-line tools besides `serve`: lab tools over the wire format ([`decode`],
//! [`encode`], [`replay`]), clients of a running server ([`client`]: `set`, `toggle`, over [`http`];
//! [`devices`]: `devices forget`), the setup check ([`doctor`]), the simulator ([`sim`]:
//! `sim`, `demo`), and the Cync account ([`account`]: `login`, `export`, `import`).
//!
//! The top layer: may import anything below it, including `serve`.

pub mod account;
pub mod client;
pub mod decode;
pub mod devices;
pub mod doctor;
pub mod encode;
pub mod http;
pub mod replay;
pub mod sim;
