//! Replays the cargo-fuzz seed/minimised corpus (`fuzz/corpus/decode/`) through
//! [`cync_proto::check_invariants`] on stable Rust, so every input the fuzzer has kept stays a
//! regression test even when nobody runs the fuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    assert!(
        dir.is_dir(),
        "fuzz corpus directory {} is missing",
        dir.display()
    );

    let mut count = 0usize;
    for entry in fs::read_dir(&dir).expect("read fuzz corpus directory") {
        let path = entry.expect("read corpus entry").path();
        if !path.is_file() {
            continue;
        }
        let data = fs::read(&path).expect("read corpus file");
        let name = path.display().to_string();
        let outcome = std::panic::catch_unwind(|| cync_proto::check_invariants(&data));
        assert!(
            outcome.is_ok(),
            "check_invariants panicked on corpus file {name}"
        );
        count += 1;
    }
    assert!(
        count >= 50,
        "fuzz corpus in {} holds only {count} files (expected at least 50)",
        dir.display()
    );
}
