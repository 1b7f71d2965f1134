//! Canary routing under a paused clock: the server's connection tasks, both transports, the SLO
//! evaluator and the simulated bridges run in one runtime and talk over in-memory streams, so
//! hours of traffic pass in a moment of real time and the production rules (5 min / 1 h at
//! 14.4×, 30 min / 6 h at 6×) are tested as configured.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::canary::*;
use common::*;
use cync_proto::ConnId;
use cync_proto::canary::{Mode, Policy, Transport};
use cync_sim::chaos::Chaos;
use cync_sim::{Fleet, FleetConfig, MemoryNet};
use cyncd::config::Config;
use cyncd::serve::Running;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

fn canary_config(name: &str, mode: &str, percent: f64, ids: &[u32]) -> Config {
    let mut c = config(name);
    c.plain = true;
    c.canary.mode = mode.into();
    c.canary.percent = percent;
    c.homes = homes(ids);
    c
}

/// The server plus one in-memory bridge per `(id, chaos)`, each with `DEVICES` devices.
async fn start_all(config: Config, bridges: &[(u32, Chaos)], seed: u64) -> (Running, Vec<Fleet>) {
    let server = start(config).await;
    let (net, mut listener) = MemoryNet::new();
    let ctx = server.ctx.clone();
    let cancel = server.cancel.clone();
    tokio::spawn(async move {
        while let Some((stream, peer)) = listener.accept().await {
            let ctx = ctx.clone();
            let cancel = cancel.child_token();
            tokio::spawn(async move {
                cyncd::devices::server::run_connection(stream, peer, &ctx, cancel).await;
            });
        }
    });
    let fleets = bridges
        .iter()
        .map(|(id, chaos)| {
            Fleet::start(FleetConfig {
                bridges: 1,
                devices_per_bridge: DEVICES,
                homes: Some(1),
                seed: seed ^ u64::from(*id),
                plain: true,
                heartbeat: Duration::from_secs(20),
                firmware_delay: Duration::from_millis(50),
                id_base: *id,
                chaos: chaos.clone(),
                memory: Some(net.clone()),
                ..FleetConfig::default()
            })
            .unwrap()
        })
        .collect();
    let ids: Vec<u32> = bridges.iter().map(|(id, _)| *id).collect();
    all_connected(&server, &ids).await;
    (server, fleets)
}

async fn stop(server: Running, fleets: Vec<Fleet>) {
    for f in &fleets {
        f.stop().await;
    }
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn faults_only_in_the_canary_roll_it_back_within_the_fast_rule_and_spare_the_control() {
    let policy = Policy {
        mode: Mode::Canary,
        percent: 50.0,
        kill: false,
    };
    let canary = ids_on(&policy, Transport::Reliable, 2, 0x7100_0000);
    let control = ids_on(&policy, Transport::Legacy, 2, 0x7100_0000);
    let all = [canary.clone(), control.clone()].concat();
    let config = canary_config("sim-rollback", "canary", 50.0, &all);
    // The production defaults: evaluation every 10 s, fast rule 5 min / 1 h at 14.4×.
    assert_eq!(config.canary.evaluate_secs, 10.0);
    let detection = Duration::from_secs(300 + 10);
    // The canary's devices refuse 5% of commands (50× the 0.1% budget); the control's none.
    let bridges: Vec<(u32, Chaos)> = canary
        .iter()
        .map(|id| (*id, Chaos::parse("reject=0.05").unwrap()))
        .chain(control.iter().map(|id| (*id, Chaos::none())))
        .collect();
    let (server, fleets) = start_all(config, &bridges, 11).await;
    for id in &canary {
        assert_eq!(connection(&server, *id).unwrap().transport, "reliable");
    }
    let control_since: Vec<String> = control
        .iter()
        .map(|id| connection(&server, *id).unwrap().since)
        .collect();

    let started = Instant::now();
    let mut control_outcomes = Vec::new();
    let mut on = true;
    // A command to every device every 2 s until the rollback.
    while server.ctx.canary.latched().is_none() {
        assert!(
            started.elapsed() <= detection,
            "no rollback within {detection:?}"
        );
        let outcomes = round(&server, &all, on).await;
        for id in &control {
            control_outcomes.extend(outcomes[id].iter().copied());
        }
        on = !on;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = started.elapsed();
    let rollback = server.ctx.canary.latched().unwrap();
    assert_eq!(
        (rollback.slo, rollback.rule.as_str()),
        ("command_success", "fast")
    );
    eprintln!("rolled back after {took:?} of traffic: {}", rollback.reason);
    assert_eq!(server.ctx.canary.policy().percent, 0.0);
    // The control cohort: every command applied, its connections never touched.
    assert!(control_outcomes.len() >= 2 * DEVICES);
    assert!(
        control_outcomes.iter().all(|o| *o == "applied"),
        "{control_outcomes:?}"
    );
    for (id, since) in control.iter().zip(&control_since) {
        assert_eq!(&connection(&server, *id).unwrap().since, since);
    }
    // The canary's bridges were drained and reconnect on legacy.
    until(&server, || {
        canary
            .iter()
            .all(|id| connection(&server, *id).is_some_and(|c| c.transport == "legacy"))
    })
    .await;
    stop(server, fleets).await;
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_never_rolls_back_over_ten_seeds_and_an_hour_each() {
    let policy = Policy {
        mode: Mode::Canary,
        percent: 50.0,
        kill: false,
    };
    for seed in 0..10u64 {
        let base = 0x7200_0000 + u32::try_from(seed).unwrap() * 0x1000;
        let canary = ids_on(&policy, Transport::Reliable, 2, base);
        let control = ids_on(&policy, Transport::Legacy, 2, base);
        let all = [canary.clone(), control.clone()].concat();
        // Both cohorts see the same trouble: slow answers, 5% of 0x7B lost (which legacy, with
        // no retry, turns into failures; the reliable transport retries).
        let chaos = Chaos::parse("delay_ack=5-80,delay_result=5-80,drop_ack=0.05").unwrap();
        let bridges: Vec<(u32, Chaos)> = all.iter().map(|id| (*id, chaos.clone())).collect();
        let config = canary_config("sim-healthy", "canary", 50.0, &all);
        let (server, fleets) = start_all(config, &bridges, seed).await;
        let mut canary_outcomes = BTreeMap::<&str, usize>::new();
        let mut on = true;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3600) {
            let outcomes = round(&server, &all, on).await;
            for id in &canary {
                for o in &outcomes[id] {
                    *canary_outcomes.entry(o).or_default() += 1;
                }
            }
            on = !on;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        assert!(
            server.ctx.canary.latched().is_none(),
            "seed {seed}: {}",
            server.ctx.canary.report()
        );
        let total: usize = canary_outcomes.values().sum();
        let applied = canary_outcomes.get("applied").copied().unwrap_or(0);
        // A round every 10 s plus its own duration: about 300 rounds in the hour.
        assert!(
            total >= 250 * 2 * DEVICES,
            "seed {seed}: {canary_outcomes:?}"
        );
        assert!(
            applied as f64 >= 0.999 * total as f64,
            "seed {seed}: {canary_outcomes:?}"
        );
        stop(server, fleets).await;
    }
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_applies_every_command_exactly_once() {
    let ids = [0x7300_0000u32, 0x7300_0001];
    let config = canary_config("sim-shadow", "shadow", 0.0, &ids);
    let bridges: Vec<(u32, Chaos)> = ids.iter().map(|id| (*id, Chaos::none())).collect();
    let (server, fleets) = start_all(config, &bridges, 3).await;
    let rounds = 20;
    for r in 0..rounds {
        let outcomes = round(&server, &ids, r % 2 == 0).await;
        assert!(outcomes.values().flatten().all(|o| *o == "applied"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for f in &fleets {
        for d in f.devices() {
            let power = d
                .applied_commands
                .iter()
                .filter(|a| a.attribute == "on")
                .count();
            assert_eq!(power, rounds, "device {}", d.id);
        }
    }
    // Let the shadow reach its own outcomes (its deadline is 5 s), then check it compared all.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "tcp_comm_shadow_compared_total {}",
            rounds * ids.len() * DEVICES
        )),
        "{metrics}"
    );
    // Every pair of outcomes is there from the start, at zero.
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("tcp_comm_shadow_diff_total{"))
            .all(|l| l.ends_with(" 0")),
        "{metrics}"
    );
    stop(server, fleets).await;
}

#[tokio::test(start_paused = true)]
async fn lowering_the_percentage_with_drain_moves_exactly_the_expected_connections() {
    let ids: Vec<u32> = (0x7400_0000..0x7400_0010).collect();
    let config = canary_config("sim-drain", "canary", 100.0, &ids);
    let bridges: Vec<(u32, Chaos)> = ids.iter().map(|id| (*id, Chaos::none())).collect();
    let (server, fleets) = start_all(config, &bridges, 4).await;
    let before: BTreeMap<u32, String> = ids
        .iter()
        .map(|id| (*id, connection(&server, *id).unwrap().since))
        .collect();
    let lowered = Policy {
        mode: Mode::Canary,
        percent: 25.0,
        kill: false,
    };
    let moving: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| lowered.route(ConnId(id.to_be_bytes())).transport == Transport::Legacy)
        .collect();
    assert!(!moving.is_empty() && moving.len() < ids.len());
    let update = cyncd::commands::canary::Update {
        percent: Some(25.0),
        drain: true,
        ..Default::default()
    };
    let (_, drained) = cyncd::commands::canary::apply_routing(&server.ctx, &update).unwrap();
    assert_eq!(drained, moving.len());
    until(&server, || {
        ids.iter().all(|id| {
            let want = if moving.contains(id) {
                "legacy"
            } else {
                "reliable"
            };
            connection(&server, *id).is_some_and(|c| c.transport == want)
        })
    })
    .await;
    for id in ids.iter().filter(|id| !moving.contains(id)) {
        assert_eq!(connection(&server, *id).unwrap().since, before[id]);
    }
    // Without drain, a lower percentage moves nobody until they reconnect.
    let update = cyncd::commands::canary::Update {
        percent: Some(0.0),
        ..Default::default()
    };
    assert_eq!(
        cyncd::commands::canary::apply_routing(&server.ctx, &update)
            .unwrap()
            .1,
        0
    );
    assert!(ids.iter().all(|id| connection(&server, *id).is_some()));
    stop(server, fleets).await;
}
