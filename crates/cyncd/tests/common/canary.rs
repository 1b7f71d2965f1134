//! Helpers for the canary tests (real sockets and paused clock alike): bridges chosen by
//! cohort, one home per bridge, rounds of commands through the transports.

use super::until;
use cync_proto::ConnId;
use cync_proto::canary::{Policy, Transport};
use cyncd::config::Home;
use cyncd::devices::registry::ConnectionView;
use cyncd::serve::Running;
use std::collections::BTreeMap;

/// Mesh devices per simulated bridge.
pub const DEVICES: usize = 3;

/// Connection ids of `n` bridges the policy puts on `transport`, searching up from `base`.
pub fn ids_on(policy: &Policy, transport: Transport, n: usize, base: u32) -> Vec<u32> {
    (base..)
        .filter(|id| policy.route(ConnId(id.to_be_bytes())).transport == transport)
        .take(n)
        .collect()
}

/// One home `b<id>` per bridge id.
pub fn homes(ids: &[u32]) -> Vec<Home> {
    ids.iter()
        .map(|id| Home {
            name: format!("b{id:08x}"),
            bridges: vec![format!("{id:08x}")],
            devices: Vec::new(),
            groups: Vec::new(),
        })
        .collect()
}

/// Waits until every bridge's `DEVICES` devices are reachable.
pub async fn all_connected(server: &Running, ids: &[u32]) {
    until(server, || {
        let devices = server.ctx.registry.devices(&server.ctx.homes.get());
        ids.iter().all(|id| {
            let home = format!("b{id:08x}");
            devices
                .iter()
                .filter(|d| d.home == home && d.reachable)
                .count()
                == DEVICES
        })
    })
    .await;
}

/// One power command to every device of the bridges `ids`, all at once, through the transport
/// that owns each bridge; outcomes by bridge.
pub async fn round(server: &Running, ids: &[u32], on: bool) -> BTreeMap<u32, Vec<&'static str>> {
    let mut handles = Vec::new();
    for id in ids {
        for mesh in 1..=DEVICES as u16 {
            let ctx = server.ctx.clone();
            let home = format!("b{id:08x}");
            let id = *id;
            handles.push(tokio::spawn(async move {
                let resolved = cyncd::commands::control::device_in(&ctx, &home, mesh);
                let steps = vec![("on", cync_proto::Action::Power(on))];
                match cyncd::commands::control::submit(&ctx, &resolved, steps, true).await {
                    cyncd::commands::control::Submitted::Done(list) => (id, list[0].1.outcome),
                    cyncd::commands::control::Submitted::Accepted(_) => (id, "accepted"),
                }
            }));
        }
    }
    let mut out: BTreeMap<u32, Vec<&'static str>> = BTreeMap::new();
    for h in handles {
        let (id, outcome) = h.await.unwrap();
        out.entry(id).or_default().push(outcome);
    }
    out
}

/// A bridge's connection, when connected.
pub fn connection(server: &Running, id: u32) -> Option<ConnectionView> {
    server
        .ctx
        .registry
        .connections()
        .into_iter()
        .find(|c| c.conn_id == format!("{id:08x}"))
}

/// Whether a bridge is connected on `transport` (`legacy`, `reliable`).
pub fn on_transport(server: &Running, id: u32, transport: &str) -> bool {
    connection(server, id).is_some_and(|c| c.transport == transport)
}
