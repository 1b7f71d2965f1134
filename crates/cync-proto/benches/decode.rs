//! Decode throughput over real traffic: every record of capture A (2,251 TCP reads, 2,380
//! packets) framed and decoded from raw bytes, plus each step alone for comparison in the same
//! run. Run with `cargo bench -p cync-proto --bench decode`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cync_proto::{Framer, Packet, capture};
use std::hint::black_box;
use std::path::PathBuf;

fn records() -> Vec<Vec<u8>> {
    let dir = std::env::var_os("CYNC_CAPTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures"),
        PathBuf::from,
    );
    let text = std::fs::read_to_string(dir.join("capture-a.txt")).expect("capture-a.txt");
    capture::parse(&text)
        .into_iter()
        .map(|r| r.unwrap().bytes)
        .collect()
}

fn packets(records: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in records {
        let mut framer = Framer::default();
        framer.push(r);
        while let Some(Ok(p)) = framer.next_packet() {
            out.push(p.to_vec());
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let records = records();
    let packets = packets(&records);
    let n = packets.len() as u64;
    let mut group = c.benchmark_group("capture-a");
    group.throughput(Throughput::Elements(n));
    group.bench_function("frame+decode", |b| {
        b.iter(|| {
            let mut framer = Framer::default();
            let mut decoded = 0usize;
            for r in &records {
                framer.push(black_box(r));
                while let Some(Ok(p)) = framer.next_packet() {
                    decoded += usize::from(Packet::decode(p).is_ok());
                }
            }
            assert_eq!(decoded, 2380);
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            for p in &packets {
                black_box(Packet::decode(black_box(p)).ok());
            }
        })
    });
    group.bench_function("frame", |b| {
        b.iter(|| {
            let mut framer = Framer::default();
            for r in &records {
                framer.push(black_box(r));
                while let Some(Ok(p)) = framer.next_packet() {
                    black_box(p);
                }
            }
        })
    });
    let decoded: Vec<Packet> = packets.iter().map(|p| Packet::decode(p).unwrap()).collect();
    group.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            out.clear();
            for p in &decoded {
                p.encode(&mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
