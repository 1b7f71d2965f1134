//! The simulator's HTTP view of device-side truth: `GET /sim/devices` →
//! `[{id, home, kind, on, brightness, color_temp, rgb, effect, applied_commands}]`, and
//! `GET /sim/summary`.

use crate::fleet::Fleet;
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use std::sync::Arc;

/// The router.
pub fn router(fleet: Arc<Fleet>) -> axum::Router {
    axum::Router::new()
        .route("/sim/devices", get(devices))
        .route("/sim/summary", get(summary))
        .with_state(fleet)
}

async fn devices(State(fleet): State<Arc<Fleet>>) -> Json<Vec<crate::mesh::SimDevice>> {
    Json(fleet.devices())
}

async fn summary(State(fleet): State<Arc<Fleet>>) -> Json<crate::fleet::Summary> {
    Json(fleet.summary())
}
