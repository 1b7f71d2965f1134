//! Live state for the web page: `GET /api/events`, a Server-Sent Events stream.
//!
//! One hub task builds *frames* of the whole state (devices, connections) and publishes the
//! latest one on a `watch` channel; every client stream reads from it. The work per change is
//! therefore one build, whatever the number of clients, and a slow client only ever holds the
//! newest frame.
//!
//! Events, each a JSON object with a `seq` that grows by one per frame:
//! - `snapshot` — sent first on every connection, and again whenever a client missed a frame:
//!   `{seq, at, meta: {version, homes: [{name, groups: [{id, name, members, room}]}], effects, kelvin,
//!   fan_steps, fan_presets, heartbeat_secs, silence_multiple}, devices: [...], connections: [...]}`
//!   with devices and connections as in `GET /api/devices` and `GET /api/connections`.
//! - `update` — what changed since the previous frame: `{seq, at, devices: [changed devices],
//!   removed: [ids], connections: [all of them, when any changed], meta: {…, when new homes were
//!   saved}}`.
//!
//! Bounds and policies:
//! - Triggers: a registry change or a command outcome (both are `watch` channels, which already
//!   coalesce), a new client (so it gets its first snapshot), and every [`REFRESH`] for counters
//!   that change without a registry event (packets per heartbeat).
//! - Coalescing: at most one frame per [`MIN_INTERVAL`], or per [`BUILD_DUTY`] times the last
//!   frame's build time when that is longer (large homes); a burst of changes inside it becomes
//!   one frame. A frame with nothing changed is not sent to clients that are up to date.
//! - Clients: at most [`MAX_CLIENTS`] streams at once; beyond that `GET /api/events` answers 503
//!   with a JSON error and `Retry-After` (counted in `cyncd_web_clients_refused_total`; the open
//!   ones in `cyncd_web_clients`). Memory per client is one `Arc` of the latest frame.
//! - A keep-alive comment every [`KEEP_ALIVE`] so proxies and browsers keep the stream open and a
//!   vanished client is noticed.
//! - While no client listens, the hub builds nothing. Streams end when the command service stops
//!   (server shutdown), so shutdown never waits on an open page.

use crate::commands::Context;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// Most event streams open at once.
pub const MAX_CLIENTS: usize = 32;
/// Least time between two frames.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Frames are spaced at least this many times their own build time.
pub const BUILD_DUTY: u32 = 10;
/// A frame at least this often while clients listen, for counters that change silently.
pub const REFRESH: Duration = Duration::from_secs(5);
/// Keep-alive comment period.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting a dropped stream.
const RECONNECT: Duration = Duration::from_secs(2);

/// The routes: `GET /api/events`.
pub fn routes(ctx: Arc<Context>) -> axum::Router {
    axum::Router::new()
        .route("/api/events", get(events))
        .with_state(Arc::new(Live::new(ctx)))
}

/// The hub's shared half.
#[derive(Debug)]
struct Live {
    ctx: Arc<Context>,
    frames: watch::Sender<Arc<Frame>>,
    clients: Arc<Semaphore>,
    /// A client arrived: build a frame even when nothing changed.
    wake: Notify,
    hub: OnceLock<()>,
}

/// One published state.
#[derive(Debug, Default)]
struct Frame {
    seq: u64,
    /// The `snapshot` event's data.
    snapshot: String,
    /// The `update` event's data; `None` when nothing changed (a frame built for a new client).
    update: Option<String>,
}

impl Live {
    fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            frames: watch::Sender::new(Arc::default()),
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            wake: Notify::new(),
            hub: OnceLock::new(),
        }
    }

    /// Starts the hub the first time a client arrives (the handler runs on the runtime).
    fn ensure_hub(self: &Arc<Self>) {
        self.hub.get_or_init(|| {
            tokio::spawn(hub(self.clone()));
        });
    }
}

async fn events(State(live): State<Arc<Live>>) -> Response {
    let Ok(permit) = live.clients.clone().try_acquire_owned() else {
        live.ctx.metrics.web_refused.inc();
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "error": format!("too many live clients (at most {MAX_CLIENTS}); close another page"),
            })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    live.ensure_hub();
    let mut frames = live.frames.subscribe();
    // What is published now may be old (the hub sleeps while nobody listens): wait for the
    // frame the wake-up below produces, and start from its snapshot.
    frames.borrow_and_update();
    live.wake.notify_one();
    let client = Client {
        ctx: live.ctx.clone(),
        frames,
        sent: None,
        _slot: Slot::new(permit, live.ctx.metrics.web_clients.clone()),
    };
    let stream = futures_util::stream::unfold(client, |mut c| async move {
        let event = c.next().await?;
        Some((Ok::<_, Infallible>(event), c))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One client's stream.
struct Client {
    ctx: Arc<Context>,
    frames: watch::Receiver<Arc<Frame>>,
    /// The last frame sent.
    sent: Option<u64>,
    _slot: Slot,
}

impl Client {
    /// The next event, or `None` when the server is shutting down.
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                changed = self.frames.changed() => changed.ok()?,
                () = self.ctx.commands.stopped() => return None,
            }
            let frame = self.frames.borrow_and_update().clone();
            let follows = self.sent.is_some_and(|s| frame.seq == s.wrapping_add(1));
            self.sent = Some(frame.seq);
            if !follows {
                // First event, or frames were missed (a slow client): start over.
                return Some(
                    Event::default()
                        .event("snapshot")
                        .retry(RECONNECT)
                        .data(&frame.snapshot),
                );
            }
            if let Some(update) = &frame.update {
                return Some(Event::default().event("update").data(update));
            }
        }
    }
}

/// A client's place under the cap, shown in `cyncd_web_clients` while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Builds and publishes frames until the server shuts down.
async fn hub(live: Arc<Live>) {
    let ctx = live.ctx.clone();
    let mut registry = ctx.registry.watch();
    let mut done = ctx.commands.watch_done();
    let mut diff = Some(Diff::default());
    let mut last = Instant::now();
    let mut gap = MIN_INTERVAL;
    loop {
        let listened = live.frames.receiver_count() > 0;
        tokio::select! {
            () = ctx.commands.stopped() => return,
            () = live.wake.notified() => {}
            changed = registry.changed(), if listened => if changed.is_err() { return },
            changed = done.changed(), if listened => if changed.is_err() { return },
            () = tokio::time::sleep(REFRESH), if listened => {}
        }
        // Coalesce: whatever else happens until then goes into the same frame.
        tokio::select! {
            () = ctx.commands.stopped() => return,
            () = tokio::time::sleep_until(last + gap) => {}
        }
        registry.borrow_and_update();
        done.borrow_and_update();
        last = Instant::now();
        // At 10,000 devices a build takes milliseconds: not on the devices' event loop.
        let state = diff.take().unwrap_or_default();
        let ctx2 = ctx.clone();
        match tokio::task::spawn_blocking(move || {
            let mut state = state;
            let frame = state.next(&ctx2);
            (state, frame)
        })
        .await
        {
            Ok((state, frame)) => {
                diff = Some(state);
                live.frames.send_replace(Arc::new(frame));
                // A large home's frames take long to build: space them so building never
                // takes more than a tenth of a core.
                gap = (last.elapsed() * BUILD_DUTY).max(MIN_INTERVAL);
            }
            // Cannot happen short of a bug; start over with a full frame.
            Err(e) => tracing::warn!(error = %e, "live: building a frame failed"),
        }
    }
}

/// What the previous frame held, to tell what changed.
#[derive(Debug, Default)]
struct Diff {
    seq: u64,
    /// Device id → its JSON.
    devices: HashMap<String, String>,
    /// The connections' JSON.
    connections: String,
    /// The meta JSON (it changes when new homes are saved).
    meta: String,
}

impl Diff {
    fn next(&mut self, ctx: &Context) -> Frame {
        let meta = meta(ctx);
        let homes = ctx.homes.get();
        let devices = ctx.registry.devices(&homes);
        let connections = json(&ctx.registry.connections_named(&homes));
        let mut all = Vec::with_capacity(devices.len());
        let mut changed = Vec::new();
        let mut current = HashMap::with_capacity(devices.len());
        for d in &devices {
            let text = json(d);
            if self.devices.get(&d.id) != Some(&text) {
                changed.push(text.clone());
            }
            all.push(text.clone());
            current.insert(d.id.clone(), text);
        }
        let mut removed: Vec<&String> = self
            .devices
            .keys()
            .filter(|id| !current.contains_key(*id))
            .collect();
        removed.sort();
        let removed = json(&removed);
        let connections_changed = connections != self.connections;
        let meta_changed = meta != self.meta;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let snapshot = format!(
            r#"{{"seq":{seq},"at":"{at}","meta":{meta},"devices":[{}],"connections":{connections}}}"#,
            all.join(",")
        );
        let update =
            (!changed.is_empty() || removed != "[]" || connections_changed || meta_changed).then(
                || {
                    let mut u = format!(
                        r#"{{"seq":{seq},"at":"{at}","devices":[{}],"removed":{removed}"#,
                        changed.join(",")
                    );
                    if connections_changed {
                        let _ = write!(u, r#","connections":{connections}"#);
                    }
                    if meta_changed {
                        let _ = write!(u, r#","meta":{meta}"#);
                    }
                    u.push('}');
                    u
                },
            );
        self.devices = current;
        self.connections = connections;
        self.meta = meta;
        Frame {
            seq,
            snapshot,
            update,
        }
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serialising our own view types cannot fail (string keys, no custom serialisers).
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The part of the snapshot that only the configuration and the homes decide.
fn meta(ctx: &Context) -> String {
    use cync_proto::catalog::{DEFAULT_KELVIN, FAN_PRESETS, FAN_STEPS};
    let all = ctx.homes.get();
    let homes: Vec<serde_json::Value> = all
        .homes()
        .iter()
        .map(|h| {
            serde_json::json!({
                "name": h.name,
                "groups": h.groups.iter().map(|g| serde_json::json!({
                    "id": g.id,
                    "name": g.name,
                    "members": g.members,
                    "room": g.room,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let effects: Vec<&str> = cync_proto::Effect::ALL.iter().map(|e| e.name()).collect();
    json(&serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "homes": homes,
        "effects": effects,
        "kelvin": [DEFAULT_KELVIN.0, DEFAULT_KELVIN.1],
        "fan_steps": FAN_STEPS,
        "fan_presets": FAN_PRESETS,
        "heartbeat_secs": ctx.config.heartbeat_secs,
        "silence_multiple": ctx.config.silence_multiple,
    }))
}
