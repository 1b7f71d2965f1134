//! The HTTP API: health, Prometheus metrics, devices and connections.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/devices` | `[{id, home, mesh_id, name, type, online, on, brightness, color_temp, rgb, bridges, last_seen, firmware}]` |
//! | `GET /api/devices/{id}` | one device; `id` is `home:mesh_id`, or a bare mesh id when one home has it |
//! | `GET /api/connections` | `[{conn_id, peer, home, since, last_packet, packets_in, packets_out, errors, firmware, mesh}]` |
//!
//! | `POST /api/devices/{id}/state` | body any of `{"on", "brightness", "color_temp", "rgb", "effect", "fan_speed"}`; answers `{command_id, outcome, attempts, latency_ms, commands}` when done, or 202 `{command_id}` with `?wait=false` |
//! | `POST /api/devices/{id}/toggle` | the opposite of the registry's on/off, as an absolute command |
//! | `POST /api/groups/{id}/state` | as for a device; `id` is `home:group_id` or a group id from the configuration |
//! | `GET /api/trace/{command_id}` | `{command_id, events: [{at, event, …}]}` |
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad id or body; nothing is sent), 404 (unknown)
//! or 409 (ambiguous).

use crate::registry::Lookup;
use crate::server::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// State the handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    /// The server context.
    pub ctx: Arc<Context>,
    /// The metrics registry to render.
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// The router.
pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/connections", get(connections))
        .with_state(api.clone())
        .merge(command_routes(api))
}

async fn metrics(State(api): State<Api>) -> Response {
    let body = crate::metrics::render(&api.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn devices(State(api): State<Api>) -> Response {
    off_loop(move || serde_json::to_vec(&api.ctx.registry.devices(&api.ctx.config))).await
}

async fn device(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.ctx.registry.device(&api.ctx.config, &id) {
        Ok(view) => Json(view).into_response(),
        Err(e) => lookup_error(e),
    }
}

async fn connections(State(api): State<Api>) -> Response {
    off_loop(move || serde_json::to_vec(&api.ctx.registry.connections())).await
}

/// Builds a (possibly large) JSON list on a blocking thread: at 10,000 connections the copy and
/// serialisation take milliseconds, which the event loop serving devices must not spend.
async fn off_loop<F>(build: F) -> Response
where
    F: FnOnce() -> serde_json::Result<Vec<u8>> + Send + 'static,
{
    match tokio::task::spawn_blocking(build).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not build the list",
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The body of `POST /api/devices/{id}/state` and `POST /api/groups/{id}/state`.
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// On or off.
    pub on: Option<bool>,
    /// 0–100.
    pub brightness: Option<u8>,
    /// 0–100 (warm to cool white).
    pub color_temp: Option<u8>,
    /// `[r, g, b]`, each 0–255.
    pub rgb: Option<[u8; 3]>,
    /// A factory effect name.
    pub effect: Option<String>,
    /// 0–100.
    pub fan_speed: Option<u8>,
}

impl StateBody {
    /// The actions, in the order they are sent, or why the body is not acceptable.
    pub fn actions(&self) -> Result<Vec<(&'static str, cync_proto::Action)>, String> {
        use cync_proto::Action;
        let mut out = Vec::new();
        let range = |name: &str, v: u8| {
            if v <= 100 {
                Ok(v)
            } else {
                Err(format!("{name} must be 0-100, got {v}"))
            }
        };
        let colours = [
            self.color_temp.is_some(),
            self.rgb.is_some(),
            self.effect.is_some(),
        ];
        if colours.iter().filter(|x| **x).count() > 1 {
            return Err("give at most one of color_temp, rgb and effect".into());
        }
        if let Some(on) = self.on {
            out.push(("on", Action::Power(on)));
        }
        if let Some(b) = self.brightness {
            out.push(("brightness", Action::Brightness(range("brightness", b)?)));
        }
        if let Some(t) = self.color_temp {
            out.push(("color_temp", Action::ColorTemp(range("color_temp", t)?)));
        }
        if let Some(rgb) = self.rgb {
            out.push(("rgb", Action::Rgb(rgb)));
        }
        if let Some(name) = &self.effect {
            let effect = cync_proto::Effect::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = cync_proto::Effect::ALL.iter().map(|e| e.name()).collect();
                format!("unknown effect {name:?}; one of: {}", names.join(", "))
            })?;
            out.push(("effect", Action::Effect(effect)));
        }
        if let Some(f) = self.fan_speed {
            out.push(("fan_speed", Action::FanSpeed(range("fan_speed", f)?)));
        }
        if out.is_empty() {
            return Err(
                "nothing to do: give on, brightness, color_temp, rgb, effect or fan_speed".into(),
            );
        }
        Ok(out)
    }
}

/// `?wait=false` answers 202 at once.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct WaitQuery {
    /// Wait for the outcome (default true).
    #[serde(default = "yes")]
    pub wait: bool,
}

fn yes() -> bool {
    true
}

/// Routes for commands and traces.
pub fn command_routes(api: Api) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route("/api/devices/{id}/state", post(device_state))
        .route("/api/devices/{id}/toggle", post(device_toggle))
        .route("/api/groups/{id}/state", post(group_state))
        .route("/api/trace/{id}", get(trace))
        .with_state(api)
}

async fn device_state(
    State(api): State<Api>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
    body: axum::body::Bytes,
) -> Response {
    match parse_body(&body) {
        Ok(actions) => command_device(&api, &id, |_| actions, q.wait).await,
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn device_toggle(
    State(api): State<Api>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> Response {
    // Resolved now, against the registry: the wire only ever carries absolute state.
    let toggle = |on: bool| vec![("on", cync_proto::Action::Power(!on))];
    command_device(&api, &id, toggle, q.wait).await
}

/// Resolves a device id and runs the actions `actions(currently on)` returns on it.
async fn command_device(
    api: &Api,
    id: &str,
    actions: impl FnOnce(bool) -> Vec<(&'static str, cync_proto::Action)>,
    wait: bool,
) -> Response {
    let (home, mesh) = match api.ctx.registry.resolve(id) {
        Ok(k) => k,
        Err(e) => return lookup_error(e),
    };
    let on = api.ctx.registry.status(&home, mesh).is_some_and(|s| s.on);
    let bridges = api.ctx.registry.bridges_for(&home, mesh);
    let target = cync_proto::Target::Device(mesh);
    run_commands(api, &home, target, bridges, actions(on), wait).await
}

async fn group_state(
    State(api): State<Api>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
    body: axum::body::Bytes,
) -> Response {
    let actions = match parse_body(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let config = &api.ctx.config;
    let (home_filter, gid) = match id.split_once(':') {
        Some((h, g)) => (Some(h), g),
        None => (None, id.as_str()),
    };
    let Ok(gid) = gid.parse::<u16>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "group id must be home:group_id or a group id",
        );
    };
    let homes: Vec<&str> = config
        .homes
        .iter()
        .filter(|h| home_filter.is_none_or(|f| f == h.name))
        .filter(|h| h.groups.iter().any(|g| g.id == gid))
        .map(|h| h.name.as_str())
        .collect();
    let home = match homes.as_slice() {
        [home] => (*home).to_string(),
        [] => return error(StatusCode::NOT_FOUND, "no such group in the configuration"),
        _ => {
            return error(
                StatusCode::CONFLICT,
                "several homes have this group id: use home:group_id",
            );
        }
    };
    let bridges = api.ctx.registry.home_bridges(&home);
    run_commands(
        &api,
        &home,
        cync_proto::Target::Group(gid),
        bridges,
        actions,
        q.wait,
    )
    .await
}

fn parse_body(body: &[u8]) -> Result<Vec<(&'static str, cync_proto::Action)>, String> {
    let parsed: StateBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    parsed.actions()
}

fn lookup_error(e: Lookup) -> Response {
    match e {
        Lookup::BadId => error(
            StatusCode::BAD_REQUEST,
            "device id must be home:mesh_id or a mesh id",
        ),
        Lookup::NotFound => error(StatusCode::NOT_FOUND, "no such device"),
        Lookup::Ambiguous => error(
            StatusCode::CONFLICT,
            "several homes have this mesh id: use home:mesh_id",
        ),
    }
}

async fn run_commands(
    api: &Api,
    home: &str,
    target: cync_proto::Target,
    bridges: Vec<cync_proto::ConnId>,
    actions: Vec<(&'static str, cync_proto::Action)>,
    wait: bool,
) -> Response {
    use crate::commands::Completion;
    let mut pending = Vec::new();
    let mut done: Vec<(&'static str, Completion)> = Vec::new();
    for (attribute, action) in actions {
        let id = api.ctx.commands.new_id();
        let req = cync_proto::delivery::Request {
            id,
            home: home.to_string(),
            target,
            action,
            bridges: bridges.clone(),
        };
        match api.ctx.commands.submit(req, wait) {
            Ok(rx) => pending.push((attribute, id, rx)),
            Err(c) => done.push((attribute, c)),
        }
    }
    if !wait {
        let ids: Vec<String> = pending.iter().map(|(_, id, _)| id.to_string()).collect();
        let first = ids.first().cloned().unwrap_or_default();
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "command_id": first, "command_ids": ids })),
        )
            .into_response();
    }
    let limit = std::time::Duration::from_millis(
        api.ctx.config.command_deadline_ms.saturating_mul(2) + 1000,
    );
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
    // The answer describes the whole request: the first command's id, the worst outcome.
    let worst = done
        .iter()
        .map(|(_, c)| c)
        .max_by_key(|c| (c.outcome != "applied", c.latency_ms as u64))
        .cloned();
    let Some(summary) = worst else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no command was submitted",
        );
    };
    let commands: Vec<serde_json::Value> = done
        .iter()
        .map(|(attribute, c)| {
            serde_json::json!({
                "attribute": attribute,
                "command_id": c.command_id,
                "outcome": c.outcome,
                "attempts": c.attempts,
                "latency_ms": c.latency_ms,
            })
        })
        .collect();
    let first_id = done
        .first()
        .map(|(_, c)| c.command_id.clone())
        .unwrap_or_default();
    Json(serde_json::json!({
        "command_id": first_id,
        "outcome": summary.outcome,
        "attempts": summary.attempts,
        "latency_ms": summary.latency_ms,
        "commands": commands,
    }))
    .into_response()
}

async fn trace(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(command) = cync_proto::delivery::CommandId::parse(&id) else {
        return error(StatusCode::BAD_REQUEST, "a command id is 16 hex digits");
    };
    match api.ctx.commands.trace(command) {
        Some(events) => {
            Json(serde_json::json!({ "command_id": id, "events": events })).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no trace for this command (unknown, or aged out)",
        ),
    }
}
