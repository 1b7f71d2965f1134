//! Controlling devices and groups, for every front end (HTTP, MQTT, the web page): resolve the
//! target, check what it can do, submit one command per attribute to the command service and
//! wait for the outcomes.

use super::Context;
use super::reliable::Completion;
use super::transport::CommandTransport;
use crate::devices::registry::{Lookup, Settled};
use cync_proto::canary::{Route, Transport};
use cync_proto::catalog::DeviceType;
use cync_proto::delivery::{CommandId, Request};
use cync_proto::{Action, ConnId, Target};

/// One attribute's command: `on`, `brightness`, `color_temp`, `rgb`, `effect`, `fan_speed`.
pub type Step = (&'static str, Action);

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The id does not parse.
    #[error("device id must be home:mesh_id or a mesh id")]
    BadDeviceId,
    /// The group id does not parse.
    #[error("group id must be home:group_id or a group id")]
    BadGroupId,
    /// No such device.
    #[error("no such device")]
    NoDevice,
    /// No such group in the homes.
    #[error("no such group")]
    NoGroup,
    /// Several homes have the id.
    #[error("several homes have this id: use home:id")]
    Ambiguous,
    /// The device cannot do what was asked (nothing was sent).
    #[error("{0}")]
    Unsupported(String),
}

impl From<Lookup> for ControlError {
    fn from(e: Lookup) -> Self {
        match e {
            Lookup::BadId => Self::BadDeviceId,
            Lookup::NotFound => Self::NoDevice,
            Lookup::Ambiguous => Self::Ambiguous,
        }
    }
}

/// A resolved target, ready to command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Home.
    pub home: String,
    /// Device or group.
    pub target: Target,
    /// Bridges to send through, best first.
    pub bridges: Vec<ConnId>,
    /// The device's type (groups: the type table's unknown, which accepts everything).
    pub device_type: DeviceType,
    /// Whether the device (or the outlet) is on now (groups: false).
    pub on: bool,
    /// The outlet of a multi-outlet plug the commands switch (the target carries it).
    pub outlet: Option<u8>,
}

/// Resolves an API device id (`home:mesh_id` or a bare mesh id).
pub fn device(ctx: &Context, id: &str) -> Result<Resolved, ControlError> {
    let (home, mesh) = ctx.registry.resolve(&ctx.homes.get(), id)?;
    Ok(device_in(ctx, &home, mesh))
}

/// A known device by home and mesh id.
pub fn device_in(ctx: &Context, home: &str, mesh: u16) -> Resolved {
    Resolved {
        home: home.to_string(),
        target: Target::Device(mesh),
        bridges: ctx.registry.bridges_for(home, mesh),
        device_type: type_of(ctx, home, mesh),
        on: ctx.registry.status(home, mesh).is_some_and(|s| s.on),
        outlet: None,
    }
}

/// Resolves one outlet of a multi-outlet plug: an API device id and an outlet number.
pub fn outlet(ctx: &Context, id: &str, outlet: u8) -> Result<Resolved, ControlError> {
    let (home, mesh) = ctx.registry.resolve(&ctx.homes.get(), id)?;
    outlet_in(ctx, &home, mesh, outlet)
}

/// One outlet of a known device: its own target (the outlet as sub id after the device id,
/// [`cync_proto::catalog::outlet_target`]), its state from the outlet mask.
pub fn outlet_in(
    ctx: &Context,
    home: &str,
    mesh: u16,
    outlet: u8,
) -> Result<Resolved, ControlError> {
    let device_type = type_of(ctx, home, mesh);
    if outlet == 0 || outlet > device_type.outlets || device_type.outlets < 2 {
        return Err(ControlError::Unsupported(format!(
            "a {} ({}) has no outlet {outlet}; outlets exist only on multi-outlet plugs, numbered from 1",
            device_type.kind.name(),
            device_type.product
        )));
    }
    let target = cync_proto::catalog::outlet_target(mesh, outlet).ok_or_else(|| {
        ControlError::Unsupported(format!(
            "outlet commands need a mesh id below 256, and this plug is {mesh}"
        ))
    })?;
    let on = ctx
        .registry
        .status(home, mesh)
        .and_then(|s| device_type.outlet_on(&s, outlet))
        .unwrap_or(false);
    Ok(Resolved {
        home: home.to_string(),
        target,
        bridges: ctx.registry.bridges_for(home, mesh),
        device_type,
        on,
        outlet: Some(outlet),
    })
}

/// The device type of a device: the homes' `type` (configuration, then account) wins over the
/// one its bridge reported.
pub fn type_of(ctx: &Context, home: &str, mesh: u16) -> DeviceType {
    let named = ctx.homes.get().device(home, mesh).and_then(|d| d.kind);
    DeviceType::of(named.or_else(|| ctx.registry.device_type(home, mesh)))
}

/// Resolves a group id (`home:group_id`, or a group id one home has) from the homes.
pub fn group(ctx: &Context, id: &str) -> Result<Resolved, ControlError> {
    let (home_filter, gid) = match id.split_once(':') {
        Some((h, g)) => (Some(h), g),
        None => (None, id),
    };
    let gid: u16 = gid.parse().map_err(|_| ControlError::BadGroupId)?;
    let all = ctx.homes.get();
    let homes: Vec<&str> = all
        .homes()
        .iter()
        .filter(|h| home_filter.is_none_or(|f| f == h.name))
        .filter(|h| h.groups.iter().any(|g| g.id == gid))
        .map(|h| h.name.as_str())
        .collect();
    match homes.as_slice() {
        [home] => Ok(group_in(ctx, home, gid)),
        [] => Err(ControlError::NoGroup),
        _ => Err(ControlError::Ambiguous),
    }
}

/// A configured group by home and group id. Its bridges: the home's connected ones, then
/// those that reach its members while they are away (a group command waits for one to come
/// back, as a device command does).
pub fn group_in(ctx: &Context, home: &str, gid: u16) -> Resolved {
    let mut bridges = ctx.registry.home_bridges(home);
    let homes = ctx.homes.get();
    for member in homes.group_members(home, gid) {
        for bridge in ctx.registry.bridges_for(home, *member) {
            if !bridges.contains(&bridge) {
                bridges.push(bridge);
            }
        }
    }
    Resolved {
        home: home.to_string(),
        target: Target::Group(gid),
        bridges,
        device_type: DeviceType::unknown(None),
        on: false,
        outlet: None,
    }
}

/// Checks every step against the device type; nothing is sent when one does not fit. An
/// outlet only switches on and off.
pub fn check(resolved: &Resolved, steps: &[Step]) -> Result<(), ControlError> {
    let t = &resolved.device_type;
    if let Some(n) = resolved.outlet {
        if let Some((name, _)) = steps
            .iter()
            .find(|(_, a)| !matches!(a, cync_proto::Action::Power(_)))
        {
            return Err(ControlError::Unsupported(format!(
                "outlet {n} of a {} only switches on and off, not {name}",
                t.product
            )));
        }
        return Ok(());
    }
    let unsupported: Vec<&str> = steps
        .iter()
        .filter(|(_, action)| !t.supports(action))
        .map(|(name, _)| *name)
        .collect();
    if unsupported.is_empty() {
        return Ok(());
    }
    if !t.controllable() {
        return Err(ControlError::Unsupported(format!(
            "a {} ({}) takes no command from cyncd",
            t.kind.name(),
            t.product
        )));
    }
    Err(ControlError::Unsupported(format!(
        "a {} ({}) cannot do {}; it supports {}",
        t.kind.name(),
        t.product,
        unsupported.join(", "),
        t.capabilities().join(", ")
    )))
}

/// What [`submit`] did.
#[derive(Debug)]
pub enum Submitted {
    /// Every command ended (in step order).
    Done(Vec<(&'static str, Completion)>),
    /// Accepted without waiting: the command ids.
    Accepted(Vec<CommandId>),
}

/// Submits one command per step and, with `wait`, waits for every outcome (bounded by twice the
/// command deadline; a command that never reports counts as `failed`).
pub async fn submit(ctx: &Context, resolved: &Resolved, steps: Vec<Step>, wait: bool) -> Submitted {
    let mut pending = Vec::new();
    let mut done: Vec<(&'static str, Completion)> = Vec::new();
    let (route, bridges) = transport_for(ctx, &resolved.bridges);
    // How long a command's expectation may wait for its outcome (as long as the waiter below).
    let limit =
        std::time::Duration::from_millis(ctx.config.command_deadline_ms.saturating_mul(2) + 1000);
    for (attribute, action) in steps {
        let id = ctx.commands.new_id();
        let now = tokio::time::Instant::now();
        ctx.registry.expect(
            id,
            &resolved.home,
            &members(ctx, resolved, &action),
            action,
            resolved.outlet,
            now,
            now + limit,
        );
        let req = Request {
            id,
            home: resolved.home.clone(),
            target: resolved.target,
            action,
            bridges: bridges.clone(),
            outlet: resolved.outlet,
        };
        // Whichever transport takes it, a command that later changes transport must not
        // overtake this one.
        ctx.commands.latest().note(&req);
        let transport: &dyn CommandTransport = match route.transport {
            Transport::Legacy => &ctx.legacy,
            Transport::Reliable => &ctx.commands,
        };
        let submitted = transport.submit_command(req, route, wait);
        match submitted {
            Ok(rx) => pending.push((attribute, id, rx)),
            Err(c) => {
                ctx.registry
                    .settle(id, Settled::NotApplied, tokio::time::Instant::now());
                done.push((attribute, c));
            }
        }
    }
    if !wait {
        return Submitted::Accepted(pending.into_iter().map(|(_, id, _)| id).collect());
    }
    for (attribute, id, rx) in pending {
        let completion = match rx {
            Some(rx) => tokio::time::timeout(limit, rx)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        done.push((
            attribute,
            completion.unwrap_or(Completion {
                command_id: id.to_string(),
                outcome: "failed",
                attempts: 0,
                latency_ms: 0.0,
            }),
        ));
    }
    record(ctx, resolved, &done);
    Submitted::Done(done)
}

/// The devices a command changes, each with its type's outlet count: the device, or the
/// members of a group whose type can carry the action out. Brightness and fan speed are one
/// wire command (the brightness byte), so a group's brightness sets a fan's speed too.
fn members(ctx: &Context, resolved: &Resolved, action: &cync_proto::Action) -> Vec<(u16, u8)> {
    let home = &resolved.home;
    match resolved.target {
        Target::Device(id) => {
            // An outlet's target carries the outlet after the device id.
            let mesh = match resolved.outlet {
                Some(_) => u16::from(id.to_le_bytes()[0]),
                None => id,
            };
            vec![(mesh, type_of(ctx, home, mesh).outlets)]
        }
        Target::Group(gid) => ctx
            .homes
            .get()
            .group_members(home, gid)
            .iter()
            .map(|m| (*m, type_of(ctx, home, *m)))
            .filter(|(_, t)| match action {
                Action::Brightness(_) | Action::FanSpeed(_) => {
                    !t.known || t.brightness || t.fan_speeds > 0
                }
                _ => t.supports(action),
            })
            .map(|(m, t)| (m, t.outlets))
            .collect(),
    }
}

/// Notes a command's end on the devices it was for (the registry shows it with them).
fn record(ctx: &Context, resolved: &Resolved, done: &[(&'static str, Completion)]) {
    let Some(first) = done.first() else {
        return;
    };
    let outcome = done
        .iter()
        .map(|(_, c)| c.outcome)
        .find(|o| *o != "applied")
        .unwrap_or(first.1.outcome);
    let (members, group) = match resolved.target {
        // An outlet's target carries the outlet after the plug's one-byte id.
        Target::Device(id) if resolved.outlet.is_some() => (vec![id & 0xff], None),
        Target::Device(id) => (vec![id], None),
        Target::Group(gid) => (
            ctx.homes.get().group_members(&resolved.home, gid).to_vec(),
            Some(gid),
        ),
    };
    let last = crate::devices::registry::LastCommand {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        outcome,
        attributes: done.iter().map(|(a, _)| *a).collect(),
        group,
    };
    ctx.registry.commanded(&resolved.home, &members, &last);
}

/// The transport of a command: the one that owns its best bridge's connection (one stack owns
/// each connection), and the bridges that transport may use. With no connected bridge the
/// command service takes it: its queue is where a command waits for a connection, whichever
/// transport that connection turns out to belong to (see [`super::transport`]).
pub fn transport_for(ctx: &Context, bridges: &[ConnId]) -> (Route, Vec<ConnId>) {
    let routes = ctx.registry.routes(bridges);
    let Some(route) = routes.iter().find_map(|(_, r)| *r) else {
        return (
            Route {
                transport: Transport::Reliable,
                shadow: false,
            },
            bridges.to_vec(),
        );
    };
    let same: Vec<ConnId> = routes
        .iter()
        .filter(|(_, r)| r.is_none_or(|r| r.transport == route.transport))
        .map(|(b, _)| *b)
        .collect();
    (route, same)
}
