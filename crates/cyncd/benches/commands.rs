//! Command delivery throughput and latency: commands submitted to the command service of an
//! in-process `cyncd` server, carried over real TLS to simulated bridges and devices (also in
//! this process), until each ends `applied` (or otherwise). Closed loop: one worker per group of
//! devices, each device one command at a time (so none is superseded), 64 workers.
//!
//! Run with `cargo bench -p cyncd --bench commands [-- --commands N]`. Scenarios: 100 and
//! 1,000 devices, clean and with 20% of 0x7B dropped by the devices. Server, simulator and load
//! share one process and the machine's two cores. Results are printed and written to
//! `target/commands-bench.json`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use cync_proto::delivery::Request;
use cync_proto::{Action, Target};
use cync_sim::{Chaos, Fleet, FleetConfig};
use cyncd::config::{Config, Home};
use std::time::Duration;
use tokio::time::Instant;

const WORKERS: usize = 64;

struct Scenario {
    devices: usize,
    chaos: &'static str,
}

#[derive(serde::Serialize)]
struct Result {
    devices: usize,
    chaos: &'static str,
    commands: usize,
    applied: usize,
    other: std::collections::BTreeMap<String, usize>,
    seconds: f64,
    commands_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run(s: &Scenario, commands: usize) -> Result {
    let per_bridge = 10;
    let fleet_config = FleetConfig {
        bridges: s.devices / per_bridge,
        devices_per_bridge: per_bridge,
        homes: None,
        seed: 42,
        chaos: Chaos::parse(s.chaos).unwrap(),
        heartbeat: Duration::from_secs(20),
        firmware_delay: Duration::from_millis(100),
        id_base: 0x4000_0000,
        ..FleetConfig::default()
    };
    // The server's homes mirror the simulator's, so mesh ids of different homes stay apart.
    let (homes, specs) = cync_sim::fleet::build(&fleet_config).unwrap();
    let state = std::env::temp_dir().join(format!("cyncd-bench-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.clone(),
        homes: homes
            .iter()
            .map(|h| Home {
                name: h.name.clone(),
                bridges: specs
                    .iter()
                    .filter(|b| b.home.name == h.name)
                    .map(|b| b.conn_id.to_string())
                    .collect(),
                devices: vec![],
                groups: vec![],
            })
            .collect(),
        ..Config::default()
    };
    let server = cyncd::serve::start(config).await.unwrap();
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        ..fleet_config
    })
    .unwrap();
    // Ready when every device is known.
    let mut changes = server.ctx.registry.watch();
    while server.ctx.registry.device_count() < s.devices {
        tokio::time::timeout(Duration::from_secs(60), changes.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let devices: Vec<(String, u16)> = server
        .ctx
        .registry
        .devices(&server.ctx.homes.get())
        .into_iter()
        .map(|d| (d.home, d.mesh_id))
        .collect();
    let per_worker = commands / WORKERS;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<(String, u16)> = devices.iter().skip(w).step_by(WORKERS).cloned().collect();
        let ctx = server.ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..per_worker {
                let (home, mesh) = &mine[i % mine.len()];
                let req = Request {
                    id: ctx.commands.new_id(),
                    home: home.clone(),
                    target: Target::Device(*mesh),
                    action: Action::Power(i % 2 == 0),
                    bridges: ctx.registry.bridges_for(home, *mesh),
                    outlet: None,
                };
                let rx = ctx.commands.submit(req, true).unwrap().unwrap();
                let done = rx.await.unwrap();
                out.push((done.outcome, done.latency_ms));
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut other = std::collections::BTreeMap::new();
    for t in tasks {
        for (outcome, ms) in t.await.unwrap() {
            if outcome == "applied" {
                latencies.push(ms);
            } else {
                *other.entry(outcome.to_string()).or_insert(0) += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let total = per_worker * WORKERS;
    fleet.stop().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
    Result {
        devices: s.devices,
        chaos: s.chaos,
        commands: total,
        applied: latencies.len(),
        other,
        seconds,
        commands_per_s: total as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let commands = args
        .iter()
        .position(|a| a == "--commands")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scenarios = [
        Scenario {
            devices: 100,
            chaos: "none",
        },
        Scenario {
            devices: 100,
            chaos: "drop_ack=0.2",
        },
        Scenario {
            devices: 1000,
            chaos: "none",
        },
        Scenario {
            devices: 1000,
            chaos: "drop_ack=0.2",
        },
    ];
    let mut results = Vec::new();
    println!(
        "{:>8} {:>14} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}  other",
        "devices", "chaos", "commands", "applied", "cmds/s", "p50 ms", "p99 ms", "max ms"
    );
    for s in &scenarios {
        let r = runtime.block_on(run(s, commands));
        println!(
            "{:>8} {:>14} {:>9} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}  {:?}",
            r.devices,
            r.chaos,
            r.commands,
            r.applied,
            r.commands_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.other
        );
        results.push(r);
    }
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/commands-bench.json");
    let _ = std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap());
    println!(
        "(server, simulator and load in one process on this machine's 2 cores; JSON in {})",
        out.display()
    );
}
