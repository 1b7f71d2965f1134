//! The HTTP API: health, Prometheus metrics, devices and connections, commands, the live event
//! stream and the web page.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the web page ([`super::web`]; also `/app.js`, `/style.css`, `/favicon.svg`) |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/devices` | `[{id, home, mesh_id, name, room, type, kind, model, sku, capabilities, fan_speed, outlets, sensors, online, on, brightness, color_temp, rgb, effect, bridges, reachable, last_seen, mac, firmware}]` |
//! | `GET /api/devices/{id}` | one device; `id` is `home:mesh_id`, or a bare mesh id when one home has it |
//! | `GET /api/connections` | `[{conn_id, peer, home, since, last_packet, packets_in, packets_out, errors, firmware, mesh, device, name, commands}]`; `device` is the bridge's own device (`home:mesh_id`) and `name` its name, when known; `commands` counts the outcomes of commands sent through that bridge; in relay mode `upstream` is the state of its connection to the cloud |
//! | `GET /api/events` | Server-Sent Events: `snapshot` then `update` events ([`super::live`]); 503 over the client cap |
//! | `POST /api/devices/{id}/state` | body any of `{"on", "brightness", "color_temp", "rgb", "effect", "fan_speed"}`, and `"outlet": n` to switch one outlet of a multi-outlet plug; answers `{command_id, outcome, attempts, latency_ms, commands}` when done, or 202 `{command_id}` with `?wait=false` |
//! | `POST /api/devices/{id}/toggle` | the opposite of the registry's on/off, as an absolute command |
//! | `POST /api/groups/{id}/state` | as for a device; `id` is `home:group_id` or a group id from the configuration |
//! | `GET /api/canary` | `{mode, percent, kill, latched, last_rollback, connections: {legacy, reliable}}` |
//! | `PUT /api/canary` | body any of `{mode, percent, kill, drain}`; answers as GET plus `drained` |
//! | `GET /api/slo` | `{mode, percent, latched, slos: [{name, cohort, target, compliance, budget_remaining, events, rules}], decisions, last_rollback}` |
//! | `GET /api/trace/{command_id}` | `{command_id, events: [{at, event, …}]}` |
//! | `DELETE /api/bridges/{id}/auth` | forgets the bridge's first-use auth pin and closes its connection: `{bridge, forgotten: true, source}`; 404 without a pin, 409 for a pin from the configuration |
//! | `POST /api/session` | body `{"token"}`: sets the page's session cookie (204), 401 for a wrong token |
//! | `GET /api/session` | `{authenticated, auth}` when the request carries the token or the cookie |
//! | `DELETE /api/session` | forgets the cookie |
//!
//! Every request first passes [`guard`] (host, cross-site, token, body size and deadline); the
//! server itself ([`server`]) bounds connections and their idle time.
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad id or body; nothing is sent), 404 (unknown,
//! including any unknown path) or 409 (ambiguous); messages quote at most
//! [`guard::MAX_ECHO`] characters of what they refuse.

pub mod guard;
pub mod server;

use crate::commands::Context;
use crate::commands::control::{self, ControlError};
use crate::devices::registry::Lookup;
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
    /// What every request passes first.
    pub guard: guard::Guard,
}

/// The router.
pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/devices", get(devices))
        .route("/api/devices/{id}", get(device))
        .route("/api/connections", get(connections))
        .route("/api/canary", get(canary_get).put(canary_put))
        .route("/api/slo", get(slo))
        .route(
            "/api/bridges/{id}/auth",
            axum::routing::delete(forget_bridge),
        )
        .with_state(api.clone())
        .merge(super::live::routes(api.ctx.clone()))
        .merge(super::account::routes(api.ctx.clone()))
        .merge(command_routes(api.clone()))
        .merge(super::web::routes())
        .merge(
            axum::Router::new()
                .route(
                    "/api/session",
                    get(guard::whoami).post(guard::login).delete(guard::logout),
                )
                .with_state(api.guard.clone()),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such path") })
        .layer(axum::middleware::from_fn_with_state(
            api.guard,
            guard::check,
        ))
}

async fn canary_get(State(api): State<Api>) -> Response {
    let (legacy, reliable) = api.ctx.registry.transport_counts();
    let mut status = api.ctx.canary.status();
    if let Some(obj) = status.as_object_mut() {
        obj.insert(
            "connections".into(),
            serde_json::json!({ "legacy": legacy, "reliable": reliable }),
        );
    }
    Json(status).into_response()
}

async fn canary_put(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let update: crate::commands::canary::Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid body: {e}; expected {{mode, percent, kill, drain}}"),
            );
        }
    };
    match crate::commands::canary::apply_routing(&api.ctx, &update) {
        Ok((_, drained)) => {
            let mut status = api.ctx.canary.status();
            if let Some(obj) = status.as_object_mut() {
                obj.insert("drained".into(), serde_json::json!(drained));
            }
            Json(status).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn forget_bridge(State(api): State<Api>, Path(id): Path<String>) -> Response {
    use crate::devices::auth::{Forgot, forget_bridge};
    let Some(conn) = cync_proto::ConnId::from_hex(&id) else {
        return error(StatusCode::BAD_REQUEST, "a bridge id is 8 hex digits");
    };
    match forget_bridge(&api.ctx.auth, &api.ctx.registry, conn) {
        Forgot::Removed => {
            Json(serde_json::json!({"bridge": conn.to_string(), "forgotten": true, "source": "first_use"}))
                .into_response()
        }
        Forgot::Unknown => error(StatusCode::NOT_FOUND, "this bridge has no auth pin"),
        Forgot::Kept(source) => error(
            StatusCode::CONFLICT,
            &format!(
                "this bridge's code is pinned by the {}; change it there",
                source.origin()
            ),
        ),
    }
}

async fn slo(State(api): State<Api>) -> Response {
    Json(api.ctx.canary.report()).into_response()
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
    off_loop(move || serde_json::to_vec(&api.ctx.registry.devices(&api.ctx.homes.get()))).await
}

async fn device(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.ctx.registry.device(&api.ctx.homes.get(), &id) {
        Ok(view) => Json(view).into_response(),
        Err(e) => lookup_error(e),
    }
}

async fn connections(State(api): State<Api>) -> Response {
    off_loop(move || serde_json::to_vec(&api.ctx.registry.connections_named(&api.ctx.homes.get())))
        .await
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
    guard::refuse(status, message)
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
    /// The outlet (1, 2, …) of a multi-outlet plug that `on` switches; devices only.
    pub outlet: Option<u8>,
}

impl StateBody {
    /// The actions, in the order they are sent, or why the body is not acceptable.
    pub fn actions(&self) -> Result<Vec<control::Step>, String> {
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
    let (steps, outlet) = match parse_body(&body) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match outlet {
        None => command_device(&api, &id, |_| steps, q.wait).await,
        Some(n) => match control::outlet(&api.ctx, &id, n) {
            Ok(resolved) => run_commands(&api, &resolved, steps, q.wait).await,
            Err(e) => control_error(&e),
        },
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

/// Resolves a device id and runs the steps `steps(currently on)` returns on it.
async fn command_device(
    api: &Api,
    id: &str,
    steps: impl FnOnce(bool) -> Vec<control::Step>,
    wait: bool,
) -> Response {
    let resolved = match control::device(&api.ctx, id) {
        Ok(r) => r,
        Err(e) => return control_error(&e),
    };
    let steps = steps(resolved.on);
    run_commands(api, &resolved, steps, wait).await
}

async fn group_state(
    State(api): State<Api>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
    body: axum::body::Bytes,
) -> Response {
    let steps = match parse_body(&body) {
        Ok((steps, None)) => steps,
        Ok((_, Some(_))) => {
            return error(
                StatusCode::BAD_REQUEST,
                "outlet is for a device's outlets, not a group",
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match control::group(&api.ctx, &id) {
        Ok(resolved) => run_commands(&api, &resolved, steps, q.wait).await,
        Err(e) => control_error(&e),
    }
}

/// The steps of a state body and the outlet they address, if any.
fn parse_body(body: &[u8]) -> Result<(Vec<control::Step>, Option<u8>), String> {
    let parsed: StateBody =
        serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    Ok((parsed.actions()?, parsed.outlet))
}

fn lookup_error(e: Lookup) -> Response {
    control_error(&e.into())
}

fn control_error(e: &ControlError) -> Response {
    let status = match e {
        ControlError::BadDeviceId | ControlError::BadGroupId | ControlError::Unsupported(_) => {
            StatusCode::BAD_REQUEST
        }
        ControlError::NoDevice | ControlError::NoGroup => StatusCode::NOT_FOUND,
        ControlError::Ambiguous => StatusCode::CONFLICT,
    };
    error(status, &e.to_string())
}

async fn run_commands(
    api: &Api,
    resolved: &control::Resolved,
    steps: Vec<control::Step>,
    wait: bool,
) -> Response {
    if let Err(e) = control::check(resolved, &steps) {
        return control_error(&e);
    }
    let done = match control::submit(&api.ctx, resolved, steps, wait).await {
        control::Submitted::Done(done) => done,
        control::Submitted::Accepted(ids) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let first = ids.first().cloned().unwrap_or_default();
            return (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "command_id": first, "command_ids": ids })),
            )
                .into_response();
        }
    };
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
