//! The page's setup screen: the Cync account export, step by step, over JSON.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/account` | `{logged_in, email, expires, pending, api_base, homes_file: {present, source, written, homes, devices, rooms}}` |
//! | `POST /api/account/code` | body `{email}`: Cync e-mails a one-time code |
//! | `POST /api/account/login` | body `{email, password, code}`: logs in; the login is cached (0600) in the state directory |
//! | `POST /api/account/preview` | reads the account's homes with the cached login and holds them: `{homes: [{name, rooms: [{name, devices}], other, groups}], devices, rooms, notes}` |
//! | `POST /api/account/save` | writes what the preview held as the homes file (the previous kept) and applies it at once |
//! | `POST /api/account/logout` | forgets the cached login |
//!
//! The password goes from the form to the Cync API in the login request and nowhere else: it is
//! neither stored nor logged. One step runs at a time (another gets 409), and one preview is
//! held. Errors are `{"error": "…"}` saying what to do: 400 for what the person can correct
//! (a wrong code, an account without homes), 412 when a login is needed first, 502 when the
//! Cync API failed or could not be reached (with the URL tried), 409 when busy or nothing was
//! previewed, 500 when the file could not be written (the previous one is intact).

use crate::commands::Context;
use crate::homes::cloud::{Client, CloudError, Token};
use crate::homes::export::{self, Export, ExportError};
use crate::homes::file::HomesFile;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Longest e-mail, password and code accepted, in characters.
const MAX_FIELD: usize = 256;

struct Setup {
    ctx: Arc<Context>,
    /// One account step at a time.
    busy: Semaphore,
    /// The last preview, waiting to be saved.
    pending: Mutex<Option<Export>>,
}

/// The routes.
pub fn routes(ctx: Arc<Context>) -> axum::Router {
    let setup = Arc::new(Setup {
        ctx,
        busy: Semaphore::new(1),
        pending: Mutex::new(None),
    });
    axum::Router::new()
        .route("/api/account", get(status))
        .route("/api/account/code", post(code))
        .route("/api/account/login", post(login))
        .route("/api/account/preview", post(preview))
        .route("/api/account/save", post(save))
        .route("/api/account/logout", post(logout))
        .with_state(setup)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn cloud_error(e: &CloudError) -> Response {
    let status = match e {
        CloudError::Login { .. } => StatusCode::BAD_REQUEST,
        CloudError::Expired | CloudError::NoLogin => StatusCode::PRECONDITION_FAILED,
        CloudError::File(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    // The command-line hints become the page's.
    let text = e
        .to_string()
        .replace("cyncd account login", "log in again above")
        .replace(" (or --api-base)", "")
        .replace(" (or allow more time with --timeout)", "");
    error(status, &text)
}

impl Setup {
    fn client(&self) -> Result<Client, CloudError> {
        let a = &self.ctx.config.account;
        Client::new(&a.api_base, Duration::from_secs(a.timeout_secs))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Export>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn busy() -> Response {
    error(
        StatusCode::CONFLICT,
        "another account step is running; wait for it to finish",
    )
}

/// A form field, trimmed, or why it is not acceptable.
fn field(value: &str, name: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_FIELD {
        return Err(format!("{name} must be 1-{MAX_FIELD} characters"));
    }
    Ok(v.to_string())
}

fn email(value: &str) -> Result<String, String> {
    let e = field(value, "email")?;
    if !e.contains('@') || e.chars().any(char::is_whitespace) {
        return Err("that is not an e-mail address".into());
    }
    Ok(e)
}

async fn status(State(s): State<Arc<Setup>>) -> Response {
    let state_dir = &s.ctx.config.state_dir;
    let token = Token::load(state_dir).ok().flatten();
    let now = chrono::Utc::now().timestamp();
    let file = HomesFile::load(state_dir);
    let homes_file = match &file {
        Ok(Some(f)) => serde_json::json!({
            "present": true,
            "source": f.source,
            "written": f.written,
            "homes": f.homes.len(),
            "devices": f.device_count(),
            "rooms": f.room_count(),
        }),
        Ok(None) => serde_json::json!({ "present": false }),
        Err(e) => serde_json::json!({ "present": true, "error": e.to_string() }),
    };
    Json(serde_json::json!({
        "logged_in": token.as_ref().is_some_and(|t| !t.expired(now)),
        "email": token.as_ref().map(|t| t.email.clone()),
        "expires": token.as_ref().map(Token::expires),
        "pending": s.pending().is_some(),
        "api_base": s.ctx.config.account.api_base,
        "homes_file": homes_file,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    email: String,
}

async fn code(State(s): State<Arc<Setup>>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<CodeBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body must be {\"email\": \"…\"}");
    };
    let email = match email(&body.email) {
        Ok(e) => e,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let Ok(_permit) = s.busy.try_acquire() else {
        return busy();
    };
    let client = match s.client() {
        Ok(c) => c,
        Err(e) => return cloud_error(&e),
    };
    match client.request_code(&email).await {
        Ok(()) => {
            info!(email = %email, "account: one-time code requested");
            Json(serde_json::json!({ "sent": true, "email": email })).into_response()
        }
        Err(e) => {
            warn!(email = %email, error = %e, "account: code request failed");
            cloud_error(&e)
        }
    }
}

/// The login form. No `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
    code: String,
}

async fn login(State(s): State<Arc<Setup>>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<LoginBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"email\", \"password\", \"code\"}",
        );
    };
    let (email, code) = match (email(&body.email), field(&body.code, "code")) {
        (Ok(e), Ok(c)) => (e, c),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if body.password.is_empty() || body.password.chars().count() > MAX_FIELD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("password must be 1-{MAX_FIELD} characters"),
        );
    }
    let Ok(_permit) = s.busy.try_acquire() else {
        return busy();
    };
    let client = match s.client() {
        Ok(c) => c,
        Err(e) => return cloud_error(&e),
    };
    let token = match client.login(&email, &body.password, &code).await {
        Ok(t) => t,
        Err(e) => {
            warn!(email = %email, error = %e, "account: login failed");
            return cloud_error(&e);
        }
    };
    drop(body);
    if let Err(e) = token.save(&s.ctx.config.state_dir) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    info!(email = %email, expires = %token.expires(), "account: logged in");
    Json(serde_json::json!({ "email": email, "expires": token.expires() })).into_response()
}

async fn preview(State(s): State<Arc<Setup>>) -> Response {
    let Ok(_permit) = s.busy.try_acquire() else {
        return busy();
    };
    let token = match Token::current(&s.ctx.config.state_dir) {
        Ok(t) => t,
        Err(e) => return cloud_error(&e),
    };
    let client = match s.client() {
        Ok(c) => c,
        Err(e) => return cloud_error(&e),
    };
    match export::export(&client, &token).await {
        Ok(export) => {
            let preview = export.preview();
            info!(
                homes = export.file.homes.len(),
                devices = export.file.device_count(),
                "account: export read for preview"
            );
            *s.pending() = Some(export);
            Json(preview).into_response()
        }
        Err(ExportError::Cloud(e)) => {
            warn!(error = %e, "account: export failed");
            cloud_error(&e)
        }
        Err(e @ ExportError::NoHomes { .. }) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn save(State(s): State<Arc<Setup>>) -> Response {
    let Ok(_permit) = s.busy.try_acquire() else {
        return busy();
    };
    let Some(export) = s.pending().take() else {
        return error(
            StatusCode::CONFLICT,
            "nothing to save: read the account's homes (preview) first",
        );
    };
    let ctx = s.ctx.clone();
    let file = export.file.clone();
    // File writes and syncs block: off the event loop.
    let written = tokio::task::spawn_blocking(move || {
        let path = file.save(&ctx.config.state_dir)?;
        let notes = ctx.reload_homes()?;
        Ok::<_, anyhow::Error>((path, notes))
    })
    .await;
    match written {
        Ok(Ok((path, notes))) => {
            for note in &notes {
                info!("account: {note}");
            }
            info!(file = %path.display(), "account: homes saved and applied");
            Json(serde_json::json!({
                "saved": path.display().to_string(),
                "homes": export.file.homes.len(),
                "devices": export.file.device_count(),
                "rooms": export.file.room_count(),
                "notes": notes,
            }))
            .into_response()
        }
        Ok(Err(e)) => {
            *s.pending() = Some(export);
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("not saved: {e:#}; the homes file in use is unchanged"),
            )
        }
        Err(_) => {
            *s.pending() = Some(export);
            error(StatusCode::INTERNAL_SERVER_ERROR, "not saved")
        }
    }
}

async fn logout(State(s): State<Arc<Setup>>) -> Response {
    match Token::forget(&s.ctx.config.state_dir) {
        Ok(had) => Json(serde_json::json!({ "forgotten": had })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
