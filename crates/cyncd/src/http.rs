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
//! Errors are JSON `{"error": "..."}` with 400 (bad id), 404 (unknown) or 409 (ambiguous).

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
        .with_state(api)
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
    Json(api.ctx.registry.devices(&api.ctx.config)).into_response()
}

async fn device(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.ctx.registry.device(&api.ctx.config, &id) {
        Ok(view) => Json(view).into_response(),
        Err(Lookup::BadId) => error(
            StatusCode::BAD_REQUEST,
            "device id must be home:mesh_id or a mesh id",
        ),
        Err(Lookup::NotFound) => error(StatusCode::NOT_FOUND, "no such device"),
        Err(Lookup::Ambiguous) => error(
            StatusCode::CONFLICT,
            "several homes have this mesh id: use home:mesh_id",
        ),
    }
}

async fn connections(State(api): State<Api>) -> Response {
    Json(api.ctx.registry.connections()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
