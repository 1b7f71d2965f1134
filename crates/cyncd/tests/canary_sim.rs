//! Canary routing under a paused clock: the server's connection tasks, both transports, the SLO
//! evaluator and the simulated bridges run in one runtime and talk over in-memory streams, so
//! hours of traffic pass in a moment of real time and the production rules (5 min / 1 h at
//! 14.4×, 30 min / 6 h at 6×) are tested as configured. Also which transport writes on which
//! connection while the routing flips, drains and bridges reconnect, and hand-driven devices
//! for the legacy transport's attribution of 0x7Bs.
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
use cync_proto::delivery::CommandId;
use cync_sim::chaos::Chaos;
use cync_sim::mesh::ALL_GROUP;
use cync_sim::{Fleet, FleetConfig, MemoryNet};
use cyncd::commands::Context;
use cyncd::commands::control;
use cyncd::commands::reliable::Completion;
use cyncd::config::Config;
use cyncd::serve::Running;
use std::collections::BTreeMap;
use std::sync::Arc;
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
        (rollback.slo.as_str(), rollback.rule.as_str()),
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

/// One command, waited for; its target (`None` for the group of all the bridge's devices).
async fn command(ctx: Arc<Context>, id: u32, mesh: Option<u16>, on: bool) -> Completion {
    let home = format!("b{id:08x}");
    let resolved = match mesh {
        Some(mesh) => control::device_in(&ctx, &home, mesh),
        None => control::group_in(&ctx, &home, ALL_GROUP),
    };
    let steps = vec![("on", cync_proto::Action::Power(on))];
    match control::submit(&ctx, &resolved, steps, true).await {
        control::Submitted::Done(mut list) => list.remove(0).1,
        control::Submitted::Accepted(_) => unreachable!("waited"),
    }
}

/// Steady device and group commands while the routing flips reliable → legacy → shadow →
/// canary 50% → reliable, each with a drain, and bridges drop and reconnect at random with
/// commands in flight; 10 seeds. Every write is by the owner of its connection (legacy: zero
/// message ids; reliable: never), every command ends once by its deadline with an outcome its
/// last writer can give, and no device changes more often than it was commanded.
#[tokio::test(start_paused = true)]
async fn routing_flips_drains_and_reconnects_never_let_a_transport_write_on_a_connection_it_does_not_own()
 {
    let deadline_ms = 5000.0;
    for seed in 0..10u64 {
        let base = 0x7500_0000 + u32::try_from(seed).unwrap() * 0x100;
        let ids: Vec<u32> = (base..base + 4).collect();
        let mut config = canary_config("sim-owner", "reliable", 0.0, &ids);
        for home in &mut config.homes {
            home.groups.push(cyncd::config::GroupConfig {
                id: ALL_GROUP,
                name: "All".into(),
                members: (1..=DEVICES as u16).collect(),
                room: None,
            });
        }
        // Slow answers, so drains and reconnects catch commands in flight.
        let chaos = Chaos::parse("delay_ack=5-80,delay_result=5-80,delay_report=5-80").unwrap();
        let bridges: Vec<(u32, Chaos)> = ids.iter().map(|id| (*id, chaos.clone())).collect();
        let (server, fleets) = start_all(config, &bridges, seed).await;
        let mut rng = fastrand::Rng::with_seed(seed);

        // Steady commands (devices and groups, on and off) while the routing flips with drains
        // and bridges reconnect at random.
        let start = Instant::now();
        let flips = [
            (
                Duration::from_secs(3),
                r#"{"mode": "legacy", "drain": true}"#,
            ),
            (
                Duration::from_secs(7),
                r#"{"mode": "shadow", "drain": true}"#,
            ),
            (
                Duration::from_secs(11),
                r#"{"mode": "canary", "percent": 50, "drain": true}"#,
            ),
            (
                Duration::from_secs(15),
                r#"{"mode": "reliable", "drain": true}"#,
            ),
        ];
        let mut next_flip = 0;
        let mut sent = Vec::new();
        let mut asked: BTreeMap<(u32, u16), usize> = BTreeMap::new();
        let mut send = |rng: &mut fastrand::Rng, id: u32| {
            let mesh = (rng.u8(..5) != 0).then(|| rng.u16(1..=DEVICES as u16));
            for m in mesh.map_or(1..=DEVICES as u16, |m| m..=m) {
                *asked.entry((id, m)).or_default() += 1;
            }
            let ctx = server.ctx.clone();
            let on = rng.bool();
            sent.push(tokio::spawn(async move {
                (command(ctx, id, mesh, on).await, mesh)
            }));
        };
        // Lets spawned commands reach the wire (answers take 5–80 ms) before a disruption.
        let in_flight = || tokio::time::sleep(Duration::from_millis(2));
        while start.elapsed() < Duration::from_secs(19) {
            if let Some((at, body)) = flips.get(next_flip) {
                if start.elapsed() >= *at {
                    for id in &ids {
                        send(&mut rng, *id);
                    }
                    in_flight().await;
                    let update: cyncd::commands::canary::Update =
                        serde_json::from_str(body).unwrap();
                    cyncd::commands::canary::apply_routing(&server.ctx, &update).unwrap();
                    // And more at once, while the drained connections close.
                    for id in &ids {
                        send(&mut rng, *id);
                    }
                    next_flip += 1;
                }
            }
            let id = rng.usize(..ids.len());
            send(&mut rng, ids[id]);
            if rng.u8(..6) == 0 {
                // A bridge drops its connection with a command in flight, and reconnects.
                in_flight().await;
                fleets[id].storm();
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(50..250))).await;
        }
        // Outcomes by the transport that wrote the command last.
        let mut outcomes = BTreeMap::<(String, &str), usize>::new();
        let mut writes = BTreeMap::<(String, bool), usize>::new();
        let mut events = BTreeMap::<String, usize>::new();
        for task in sent {
            let (done, mesh) = task.await.unwrap();
            assert!(
                done.latency_ms <= deadline_ms,
                "seed {seed}: {done:?} for {mesh:?}"
            );
            let id = CommandId::parse(&done.command_id).unwrap();
            let trace = server.ctx.commands.trace(id).unwrap();
            let writer = trace
                .iter()
                .rev()
                .find(|e| e.event == "sent")
                .map_or("none", |e| e.detail["transport"].as_str().unwrap())
                .to_string();
            // Healthy devices: what reliable writes is applied (or superseded after it moved
            // on), what legacy writes is applied unless its connection went first (legacy
            // never resends), and a command never written was superseded by a newer one.
            let allowed: &[&str] = match writer.as_str() {
                "reliable" => &["applied", "superseded"],
                "legacy" => &["applied", "no_ack"],
                _ => &["superseded"],
            };
            assert!(
                allowed.contains(&done.outcome),
                "seed {seed}: {writer} {done:?}: {trace:#?}"
            );
            *outcomes.entry((writer, done.outcome)).or_default() += 1;
            let ends: Vec<_> = trace.iter().filter(|e| e.event == "outcome").collect();
            assert_eq!(ends.len(), 1, "seed {seed}: {trace:#?}");
            assert_eq!(
                ends[0].detail["outcome"], done.outcome,
                "seed {seed}: {trace:#?}"
            );
            for e in trace
                .iter()
                .filter(|e| matches!(e.event, "moved" | "retry"))
            {
                let what = e.detail.get("reason").or(e.detail.get("to")).unwrap();
                *events
                    .entry(format!("{} {}", e.event, what.as_str().unwrap()))
                    .or_default() += 1;
            }
            for write in trace.iter().filter(|e| e.event == "sent") {
                let owner = write.detail["owner"].as_str().unwrap();
                let zero = write.detail["msg_id"] == "000000";
                // The writer is always the connection's owner, and legacy (only) writes zero ids.
                assert_eq!(write.detail["transport"], owner, "seed {seed}: {trace:#?}");
                assert_eq!(zero, owner == "legacy", "seed {seed}: {trace:#?}");
                *writes.entry((owner.to_string(), zero)).or_default() += 1;
            }
        }
        eprintln!("seed {seed}: outcomes {outcomes:?}, writes {writes:?}, {events:?}");
        // Both transports carried commands, and most commands got through the disruption.
        assert!(
            writes.contains_key(&("legacy".into(), true))
                && writes.contains_key(&("reliable".into(), false)),
            "seed {seed}: {writes:?}"
        );
        let (_, metrics) = get(&server, "/metrics").await;
        for transport in ["legacy", "reliable"] {
            let line = format!("tcp_comm_unmatched_answers_total{{transport=\"{transport}\"}} 0");
            assert!(metrics.contains(&line), "seed {seed}: {metrics}");
        }
        for f in &fleets {
            f.stop().await;
        }
        // No device applied more changes than it was sent commands.
        for (id, f) in ids.iter().zip(&fleets) {
            for d in f.devices() {
                let mut changes = 0;
                let mut last: Option<&str> = None;
                for a in d.applied_commands.iter().filter(|a| a.attribute == "on") {
                    if last != Some(a.value.as_str()) {
                        changes += 1;
                    }
                    last = Some(a.value.as_str());
                }
                let commands = asked.get(&(*id, d.id)).copied().unwrap_or(0);
                assert!(
                    changes <= commands,
                    "seed {seed}: device {} of {id:08x}: {changes} changes for {commands} commands: {:?}",
                    d.id,
                    d.applied_commands
                );
            }
        }
        server.shutdown().await;
    }
}

/// A device driven by hand over an in-memory stream, after its hello and the server's 0x28.
async fn raw_device(server: &Running, id: u32) -> tokio::io::DuplexStream {
    let (mut device, stream) = tokio::io::duplex(64 * 1024);
    let ctx = server.ctx.clone();
    let cancel = server.cancel.child_token();
    tokio::spawn(async move {
        let peer = "10.0.0.9:4000".parse().unwrap();
        cyncd::devices::server::run_connection(stream, peer, &ctx, cancel).await;
    });
    write(&mut device, &hello(id.to_be_bytes())).await;
    assert_eq!(read_n(&mut device, 7).await, hex("28 00 00 00 02 00 00"));
    device
}

/// The next command packet (0x73) the server writes; its message id.
async fn next_command(device: &mut tokio::io::DuplexStream) -> [u8; 3] {
    let packet = read_packets(device, 1, |p| p[0] == 0x73).await.remove(0);
    [packet[9], packet[10], packet[11]]
}

/// The next command packet (0x73) the server writes, whole.
async fn next_command_packet(device: &mut tokio::io::DuplexStream) -> Vec<u8> {
    read_packets(device, 1, |p| p[0] == 0x73).await.remove(0)
}

/// The device's `f9` result with `code` for the command packet `command` (its seq and opcode),
/// under the device's own message id, as in the cloud trace.
fn result(id: u32, command: &[u8], code: u8) -> Vec<u8> {
    let (seq, opcode) = (command[13], command[18]);
    let frame = [
        0x7e,
        seq,
        0,
        0,
        0,
        0xf9,
        opcode,
        1,
        0,
        code,
        opcode.wrapping_add(1).wrapping_add(code),
        0x7e,
    ];
    [
        &[0x73, 0, 0, 0, 0x13][..],
        &id.to_be_bytes(),
        &[0, 2, 0],
        &frame,
    ]
    .concat()
}

/// The device's 0x7B echoing `msg`.
fn ack(id: u32, msg: [u8; 3]) -> Vec<u8> {
    [&[0x7b, 0, 0, 0, 7][..], &id.to_be_bytes(), &msg].concat()
}

/// A power command for mesh device 5 behind bridge `id`, waited for.
fn power(server: &Running, id: u32) -> tokio::task::JoinHandle<Completion> {
    let resolved = control::Resolved {
        home: cyncd::config::DEFAULT_HOME.into(),
        target: cync_proto::Target::Device(5),
        bridges: vec![ConnId(id.to_be_bytes())],
        device_type: cync_proto::catalog::DeviceType::unknown(None),
        on: false,
        outlet: None,
    };
    let ctx = server.ctx.clone();
    tokio::spawn(async move {
        let steps = vec![("on", cync_proto::Action::Power(true))];
        match control::submit(&ctx, &resolved, steps, true).await {
            control::Submitted::Done(mut list) => list.remove(0).1,
            control::Submitted::Accepted(_) => unreachable!("waited"),
        }
    })
}

fn unmatched(server: &Running, transport: &'static str) -> u64 {
    server
        .ctx
        .metrics
        .unmatched_answers
        .get_or_create(&[("transport", transport)])
        .get()
}

#[tokio::test(start_paused = true)]
async fn legacy_credits_a_0x7b_only_to_a_command_it_wrote_on_that_connection() {
    let mut config = canary_config("sim-legacy-fifo", "legacy", 0.0, &[]);
    config.discover_mesh = false;
    let server = start(config).await;
    let id = 0x7600_0000;
    let mut device = raw_device(&server, id).await;
    let mut pending = power(&server, id);
    assert_eq!(next_command(&mut device).await, [0, 0, 0]);
    // A 0x7B echoing another id answers no legacy command: counted, not credited. (The clock
    // only moves once every task is idle, so 500 ms later the server has handled it.)
    write(&mut device, &ack(id, [0x12, 0x34, 0])).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut pending)
            .await
            .is_err(),
        "credited to the command"
    );
    assert_eq!(unmatched(&server, "legacy"), 1);
    // Its own 0x7B (all-zero id) is: with no result after it, a refusal, 500 ms later (not the
    // 2 s of a command nothing answered).
    write(&mut device, &ack(id, [0, 0, 0])).await;
    let done = pending.await.unwrap();
    assert_eq!((done.outcome, done.attempts), ("rejected", 1), "{done:?}");
    assert!(done.latency_ms < 1600.0, "{done:?}");
    // A zero-id 0x7B with nothing written is counted too.
    write(&mut device, &ack(id, [0, 0, 0])).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(unmatched(&server, "legacy"), 2);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_legacy_command_its_connection_never_wrote_waits_for_the_next_owner() {
    let mut config = canary_config("sim-legacy-back", "legacy", 0.0, &[]);
    config.discover_mesh = false;
    let server = start(config).await;
    let id = 0x7600_0001;
    let mut old = raw_device(&server, id).await;
    assert!(on_transport(&server, id, "legacy"));
    // Routing goes to reliable with a drain, and a command is sent before the drained
    // connection has closed: legacy takes it, finds the connection gone, and gives it back.
    let update = cyncd::commands::canary::Update {
        mode: Some("reliable".into()),
        drain: true,
        ..Default::default()
    };
    cyncd::commands::canary::apply_routing(&server.ctx, &update).unwrap();
    // (Submitted in this task, before the drained connection's task runs.)
    let bridges = [ConnId(id.to_be_bytes())];
    let (route, bridges) = control::transport_for(&server.ctx, &bridges);
    assert_eq!(route.transport, Transport::Legacy);
    let req = cync_proto::delivery::Request {
        id: server.ctx.commands.new_id(),
        home: cyncd::config::DEFAULT_HOME.into(),
        target: cync_proto::Target::Device(5),
        action: cync_proto::Action::Power(true),
        bridges,
        outlet: None,
    };
    let pending = server.ctx.legacy.submit(req, false, true).unwrap().unwrap();
    expect_closed(&mut old, Duration::from_secs(5)).await;
    // The bridge reconnects, now on the reliable transport, which writes the command once.
    let mut device = raw_device(&server, id).await;
    assert!(on_transport(&server, id, "reliable"));
    let msg = next_command(&mut device).await;
    assert_ne!(msg, [0, 0, 0]);
    write(&mut device, &ack(id, msg)).await;
    let done = pending.await.unwrap();
    // A bare 0x7B: the reliable transport's reading is a refusal.
    assert_eq!((done.outcome, done.attempts), ("rejected", 1), "{done:?}");
    let trace = server
        .ctx
        .commands
        .trace(CommandId::parse(&done.command_id).unwrap())
        .unwrap();
    let events: Vec<&str> = trace.iter().map(|e| e.event).collect();
    assert!(events.contains(&"moved"), "{trace:#?}");
    let moved = trace.iter().find(|e| e.event == "moved").unwrap();
    assert_eq!(moved.detail["to"], "reliable");
    let writes: Vec<_> = trace.iter().filter(|e| e.event == "sent").collect();
    assert_eq!(writes.len(), 1, "{trace:#?}");
    assert_eq!(writes[0].detail["owner"], "reliable");
    // A legacy-style 0x7B on a reliable connection answers none of its commands: counted.
    assert_eq!(unmatched(&server, "reliable"), 0);
    write(&mut device, &ack(id, [0, 0, 0])).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(unmatched(&server, "reliable"), 1);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_bridge_reconnecting_over_a_live_connection_ends_what_legacy_wrote_on_the_old_one() {
    let mut config = canary_config("sim-legacy-replaced", "legacy", 0.0, &[]);
    config.discover_mesh = false;
    let server = start(config).await;
    let id = 0x7600_0002;
    // Written on the first connection, never answered there.
    let mut old = raw_device(&server, id).await;
    let first = power(&server, id);
    assert_eq!(next_command(&mut old).await, [0, 0, 0]);
    // The bridge comes back on a new connection while the old one still looks open.
    let mut device = raw_device(&server, id).await;
    // The 0x7B on the new connection is the new command's, not the old one's.
    let second = power(&server, id);
    let packet = next_command_packet(&mut device).await;
    assert_eq!(packet[9..12], [0, 0, 0]);
    write(&mut device, &ack(id, [0, 0, 0])).await;
    write(&mut device, &result(id, &packet, 0)).await;
    let second = second.await.unwrap();
    assert_eq!(
        (second.outcome, second.attempts),
        ("applied", 1),
        "{second:?}"
    );
    assert!(second.latency_ms < 100.0, "{second:?}");
    // The old one's answer can no longer come: it ended when its connection did.
    let first = first.await.unwrap();
    assert_eq!((first.outcome, first.attempts), ("no_ack", 1), "{first:?}");
    assert!(first.latency_ms < 100.0, "{first:?}");
    expect_closed(&mut old, Duration::from_secs(5)).await;
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn legacy_reads_the_result_in_either_order_and_a_bare_0x7b_as_a_refusal() {
    let mut config = canary_config("sim-legacy-results", "legacy", 0.0, &[]);
    config.discover_mesh = false;
    let server = start(config).await;
    let id = 0x7600_0003;
    let mut device = raw_device(&server, id).await;
    // The 0x7B, then a successful result: applied at once.
    let pending = power(&server, id);
    let packet = next_command_packet(&mut device).await;
    write(&mut device, &ack(id, [0, 0, 0])).await;
    write(&mut device, &result(id, &packet, 0)).await;
    let done = pending.await.unwrap();
    assert_eq!(done.outcome, "applied", "{done:?}");
    assert!(done.latency_ms < 100.0, "{done:?}");
    // The result first, then the 0x7B (one segment, as devices often send them): applied.
    let pending = power(&server, id);
    let packet = next_command_packet(&mut device).await;
    write(
        &mut device,
        &[result(id, &packet, 0), ack(id, [0, 0, 0])].concat(),
    )
    .await;
    let done = pending.await.unwrap();
    assert_eq!(done.outcome, "applied", "{done:?}");
    assert!(done.latency_ms < 100.0, "{done:?}");
    // A failing result: rejected at once.
    let pending = power(&server, id);
    let packet = next_command_packet(&mut device).await;
    write(&mut device, &ack(id, [0, 0, 0])).await;
    write(&mut device, &result(id, &packet, 1)).await;
    let done = pending.await.unwrap();
    assert_eq!(done.outcome, "rejected", "{done:?}");
    assert!(done.latency_ms < 100.0, "{done:?}");
    // A bare 0x7B: rejected once the result is overdue.
    let pending = power(&server, id);
    next_command_packet(&mut device).await;
    write(&mut device, &ack(id, [0, 0, 0])).await;
    let done = pending.await.unwrap();
    assert_eq!(done.outcome, "rejected", "{done:?}");
    assert!((500.0..1000.0).contains(&done.latency_ms), "{done:?}");
    server.shutdown().await;
}
