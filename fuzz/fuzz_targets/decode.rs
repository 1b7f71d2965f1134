//! Fuzz target for the `cync-proto` codec.
//!
//! Feeds arbitrary bytes to [`cync_proto::check_invariants`], which streams them through the
//! bounded framer (checking it never buffers past its capacity and always makes progress),
//! decodes every framed packet and the raw input, and checks that each successfully decoded
//! packet re-encodes to exactly the same bytes and that its interpretation helpers do not panic.
//! Any panic is a bug in the codec.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cync_proto::check_invariants(data));
