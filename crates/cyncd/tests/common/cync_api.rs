//! A local stand-in for the Cync account API, serving the shapes `CLOUD-API.md` documents (the
//! real service cannot be reached from a test machine): the one-time code, the login, the home
//! list and each home's properties, and the errors — `4031021` (expired token), `4041009` (no
//! properties), an error body with HTTP 200 — plus a server that never answers and one that
//! closes every connection at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The account the fake serves.
pub const EMAIL: &str = "owner@example.com";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";
/// The one-time code it "e-mails".
pub const CODE: &str = "472913";
/// The access token it hands out.
pub const TOKEN: &str = "fake-access-token-7d2f";
/// The user id.
pub const USER: u64 = 8_675_309;

/// What the fake does.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// As documented.
    Normal,
    /// The home list answers `4031021` with HTTP 403.
    Expired,
    /// The home list answers HTTP 200 with an error body.
    ErrorIn200,
    /// The login answer lacks `access_token`.
    NoAccessToken,
    /// Never answers.
    Silent,
}

/// The fake's state: what it serves and what it was asked.
#[derive(Debug)]
pub struct Fake {
    pub mode: Mode,
    /// The home list.
    pub homes: Vec<Value>,
    /// Home id → properties (`None`: 4041009).
    pub properties: HashMap<u64, Option<Value>>,
    /// Every request: (method, path, body).
    pub requests: Vec<(String, String, String)>,
}

/// A running fake.
pub struct CyncApi {
    /// Its base URL, `http://127.0.0.1:PORT/v2/`.
    pub base: String,
    pub state: Arc<Mutex<Fake>>,
}

fn cync_error(status: StatusCode, code: u64, msg: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "msg": msg, "code": code } })),
    )
        .into_response()
}

impl CyncApi {
    /// Starts the fake on 127.0.0.1 with `homes` and `properties`.
    pub async fn start(homes: Vec<Value>, properties: HashMap<u64, Option<Value>>) -> Self {
        let state = Arc::new(Mutex::new(Fake {
            mode: Mode::Normal,
            homes,
            properties,
            requests: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/v2/two_factor/email/verifycode", post(verifycode))
            .route("/v2/user_auth/two_factor", post(two_factor))
            .route("/v2/user/{user}/subscribe/devices", get(subscribe))
            .route("/v2/product/{product}/device/{id}/property", get(property))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}/v2/"),
            state,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().requests.clone()
    }
}

async fn silent_if(state: &Arc<Mutex<Fake>>) {
    let silent = state.lock().unwrap().mode == Mode::Silent;
    if silent {
        std::future::pending::<()>().await;
    }
}

fn record(state: &Arc<Mutex<Fake>>, method: &str, path: &str, body: &str) {
    state
        .lock()
        .unwrap()
        .requests
        .push((method.into(), path.into(), body.into()));
}

async fn verifycode(State(state): State<Arc<Mutex<Fake>>>, body: String) -> Response {
    record(&state, "POST", "two_factor/email/verifycode", &body);
    silent_if(&state).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    if v["corp_id"] != "1007d2ad150c4000" || v["local_lang"] != "en-us" {
        return cync_error(StatusCode::BAD_REQUEST, 4000001, "bad request");
    }
    if v["email"] != EMAIL {
        return cync_error(StatusCode::BAD_REQUEST, 4041011, "User not exist");
    }
    StatusCode::OK.into_response()
}

async fn two_factor(State(state): State<Arc<Mutex<Fake>>>, body: String) -> Response {
    record(&state, "POST", "user_auth/two_factor", &body);
    silent_if(&state).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let resource_ok = v["resource"]
        .as_str()
        .is_some_and(|r| r.len() == 16 && r.chars().all(|c| c.is_ascii_lowercase()));
    if v["email"] != EMAIL || v["password"] != PASSWORD || !resource_ok {
        return cync_error(StatusCode::BAD_REQUEST, 4001007, "Password error");
    }
    if v["two_factor"] != CODE {
        return cync_error(StatusCode::BAD_REQUEST, 4001014, "Verification code error");
    }
    if state.lock().unwrap().mode == Mode::NoAccessToken {
        return Json(json!({ "refresh_token": "r", "user_id": USER, "expire_in": 604800 }))
            .into_response();
    }
    Json(json!({
        "access_token": TOKEN,
        "refresh_token": "fake-refresh",
        "user_id": USER,
        "expire_in": 604800,
        "authorize": "0123456789abcdef",
    }))
    .into_response()
}

async fn subscribe(
    State(state): State<Arc<Mutex<Fake>>>,
    Path(user): Path<u64>,
    headers: HeaderMap,
) -> Response {
    record(&state, "GET", &format!("user/{user}/subscribe/devices"), "");
    silent_if(&state).await;
    let mode = state.lock().unwrap().mode.clone();
    match mode {
        Mode::Expired => {
            return cync_error(StatusCode::FORBIDDEN, 4031021, "Access-Token Expired");
        }
        Mode::ErrorIn200 => {
            return cync_error(StatusCode::OK, 5000001, "Service temporarily unavailable");
        }
        _ => {}
    }
    if headers.get("Access-Token").and_then(|v| v.to_str().ok()) != Some(TOKEN) || user != USER {
        return cync_error(StatusCode::FORBIDDEN, 4031021, "Access-Token Expired");
    }
    Json(Value::Array(state.lock().unwrap().homes.clone())).into_response()
}

async fn property(
    State(state): State<Arc<Mutex<Fake>>>,
    Path((product, id)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    record(
        &state,
        "GET",
        &format!("product/{product}/device/{id}/property"),
        "",
    );
    silent_if(&state).await;
    if headers.get("Access-Token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return cync_error(StatusCode::FORBIDDEN, 4031021, "Access-Token Expired");
    }
    match state.lock().unwrap().properties.get(&id) {
        Some(Some(p)) => Json(p.clone()).into_response(),
        _ => cync_error(StatusCode::NOT_FOUND, 4041009, "device property not exist"),
    }
}

/// A listener that accepts every connection and closes it at once; its base URL.
pub async fn closing() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    format!("http://{addr}/v2/")
}

/// A base URL where nothing listens.
pub fn nowhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v2/")
}

/// A home-list entry of a home.
pub fn home(id: u64, name: &str) -> Value {
    json!({"id": id, "product_id": "1eb01d", "name": name, "mac": "", "access_key": 777,
           "source": 5, "is_online": false, "authorize_code": "hm7f0000deadbeef"})
}

/// A home-list entry of a Wi-Fi device (the real list mixes them in).
pub fn wifi_device(id: u64, authorize_code: &str) -> Value {
    json!({"id": id, "product_id": "1eb01c", "name": "", "mac": "A4C1380D1E30", "source": 1,
           "access_key": 777, "authorize_code": authorize_code, "firmware_version": 10315})
}

/// A realistic account: a main home with rooms, a subgroup, a dual outdoor plug (one entry per
/// outlet) and a thermostat; a cabin; an empty unnamed home; and a named home without
/// properties (4041009). Returns (home list, properties).
pub fn account() -> (Vec<Value>, HashMap<u64, Option<Value>>) {
    let main = 1_103_542_211_u64;
    let cabin = 1_103_542_299_u64;
    let homes = vec![
        home(main, "Maple Street"),
        wifi_device(1_862_155_454, "a1b2c3d4e5f60718"),
        home(cabin, "Lake Cabin"),
        home(1_103_542_300, ""),
        home(1_103_542_301, "Old Apartment"),
    ];
    let d = |home: u64, mesh: u64| home * 1000 + mesh;
    let main_props = json!({
        "bulbsArray": [
            {"displayName": "Kitchen Pendant", "deviceID": d(main, 1), "deviceType": 137,
             "mac": "A4C1380D1E2F", "wifiMac": "A4C1380D1E30", "firmwareVersion": "1.0.340",
             "switchID": 1_862_155_454_u64, "showOnHome": true},
            {"displayName": "Counter Strip", "deviceID": d(main, 2), "deviceType": 71,
             "mac": "A4C1380D1E31", "firmwareVersion": "3.0.204"},
            {"displayName": "Ceiling Fan", "deviceID": d(main, 3), "deviceType": 81,
             "mac": "A4C1380D1E32"},
            {"displayName": "String Lights", "deviceID": main * 1_000_000 + 1006,
             "deviceType": 67, "mac": "A4C1380D1E33"},
            {"displayName": "Fountain", "deviceID": main * 1_000_000 + 2006,
             "deviceType": 67, "mac": "A4C1380D1E33"},
            {"displayName": "Hallway Thermostat", "deviceID": d(main, 9), "deviceType": 224,
             "mac": "A4C1380D1E34", "hvacSystem": {"type": "heatpump"},
             "thermostatSensors": [{"name": "Bedroom"}]},
            {"deviceID": d(main, 12), "mac": "A4C1380D1E35"}
        ],
        "groupsArray": [
            {"displayName": "Kitchen", "groupID": 32769, "isSubgroup": false,
             "deviceIDArray": [1, 2], "subgroupIDArray": [32772]},
            {"displayName": "Patio", "groupID": 32770, "isSubgroup": false,
             "deviceIDArray": [1006, 2006]},
            {"displayName": "Living Room", "groupID": 32771, "isSubgroup": false,
             "deviceIDArray": [3, 9]},
            {"displayName": "Kitchen Lights", "groupID": 32772, "isSubgroup": true,
             "deviceIDArray": [1, 2]}
        ],
        "lightShows": []
    });
    let cabin_props = json!({
        "bulbsArray": [
            {"displayName": "Porch Light", "deviceID": d(cabin, 1), "deviceType": 68,
             "mac": "786DEB28EAA4"},
            {"displayName": "Reading Lamp", "deviceID": d(cabin, 2), "deviceType": 5,
             "mac": "786DEB28EAA5"}
        ],
        "groupsArray": [
            {"displayName": "Porch", "groupID": 32769, "isSubgroup": false, "deviceIDArray": [1]}
        ]
    });
    let properties = HashMap::from([
        (main, Some(main_props)),
        (cabin, Some(cabin_props)),
        (
            1_103_542_300,
            Some(json!({"bulbsArray": [], "groupsArray": []})),
        ),
        (1_103_542_301, None),
    ]);
    (homes, properties)
}
