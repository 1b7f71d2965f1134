//! A client of the Cync account API (`../shared/protocol/CLOUD-API.md`): ask for a one-time
//! code, log in with it, list the homes and read each home's devices and groups.
//!
//! JSON over HTTPS to `https://api.gelighting.com/v2/` ([`DEFAULT_BASE`]), or over plain HTTP
//! to another base (tests serve the documented shapes from a local server). One request per
//! connection (hyper's HTTP/1.1 client over tokio, TLS by OpenSSL with the system's roots and
//! the host name checked). Every request is bounded: [`Client::timeout`] for the whole exchange
//! and [`MAX_ANSWER`] bytes of answer. Errors say what failed, at which URL, and what to do.
//!
//! Errors come back as `{"error": {"msg", "code"}}`, with any HTTP status, 200 included:
//! `4031021` (the login expired: [`CloudError::Expired`]) and `4041009` (a home without
//! properties: [`Client::home`] answers `None`) have their own outcomes.
//!
//! The login ([`Token`]) is cached in the state directory ([`TOKEN_FILE`], mode 0600) and
//! reused until it expires. The password goes from the caller to the login request and nowhere
//! else: it is never stored, and never in a log line or an error.

use super::file::{self, FileError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

/// The real API.
pub const DEFAULT_BASE: &str = crate::config::DEFAULT_ACCOUNT_API;
/// The Cync app's corporate id (constant).
pub const CORP_ID: &str = "1007d2ad150c4000";
/// Largest answer read, in bytes (a home of a few hundred devices is well under 1 MiB).
pub const MAX_ANSWER: usize = 8 << 20;
/// Default time for one whole request (connect, TLS, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// The cached login in the state directory.
pub const TOKEN_FILE: &str = "cync-account.json";
/// Cync's error code for an expired access token.
pub const EXPIRED: u64 = 4_031_021;
/// Cync's error code for a home without properties (devices and groups).
pub const NO_PROPERTIES: u64 = 4_041_009;

/// An API client.
#[derive(Clone)]
pub struct Client {
    base: Base,
    /// Time allowed for one whole request.
    pub timeout: Duration,
    tls: Option<openssl::ssl::SslConnector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.text)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Base {
    https: bool,
    host: String,
    port: u16,
    /// Path prefix, ending with `/`.
    path: String,
    /// As given, for messages.
    text: String,
}

/// A login: what the API answered, and when it expires.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The account's e-mail.
    pub email: String,
    /// The account's user id.
    pub user_id: u64,
    /// Sent as `Access-Token`.
    pub access_token: String,
    /// Kept for a future refresh.
    pub refresh_token: String,
    /// Unix seconds at which the access token expires.
    pub expires_at: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("email", &self.email)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to the Cync API, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The base URL is not `http(s)://host[:port]/path/`.
    #[error("{0:?} is not an http:// or https:// base URL such as {DEFAULT_BASE}")]
    BadBase(String),
    /// No connection could be made.
    #[error(
        "could not reach the Cync API at {url}: {why}. Check this machine's internet connection and DNS (or --api-base)"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        why: String,
    },
    /// No complete answer within the time allowed.
    #[error(
        "the Cync API at {url} did not answer within {secs} s. Try again later (or allow more time with --timeout)"
    )]
    Timeout {
        /// The URL tried.
        url: String,
        /// Seconds allowed.
        secs: u64,
    },
    /// The connection ended without a complete answer.
    #[error(
        "the Cync API at {url} closed the connection without a complete answer ({why}). Try again later"
    )]
    Closed {
        /// The URL tried.
        url: String,
        /// Why.
        why: String,
    },
    /// The answer was larger than [`MAX_ANSWER`].
    #[error("the Cync API at {url} answered more than {MAX_ANSWER} bytes; not read")]
    TooLarge {
        /// The URL tried.
        url: String,
    },
    /// An HTTP error without a Cync error body.
    #[error(
        "the Cync API at {url} answered HTTP {status}. Try again later; if it persists, the service may have changed"
    )]
    Http {
        /// The URL tried.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// An answer that is not the documented shape.
    #[error("unexpected answer from the Cync API at {url}: {why}")]
    Shape {
        /// The URL tried.
        url: String,
        /// What is missing or wrong.
        why: String,
    },
    /// The login expired (`4031021`).
    #[error("the Cync login expired (Cync error {EXPIRED}). Log in again: cyncd account login")]
    Expired,
    /// No login cached.
    #[error("not logged in to the Cync account. Log in first: cyncd account login")]
    NoLogin,
    /// The login was refused: wrong e-mail, password or code.
    #[error(
        "Cync refused the login: {msg} (code {code}). Check the e-mail and password, and use the newest code from the e-mail: a code works once and expires after a few minutes. Ask for a new one with cyncd account login"
    )]
    Login {
        /// Cync's error code.
        code: u64,
        /// Cync's message.
        msg: String,
    },
    /// Another Cync error.
    #[error("the Cync API at {url} refused the request: {msg} (code {code})")]
    Refused {
        /// The URL tried.
        url: String,
        /// Cync's error code.
        code: u64,
        /// Cync's message.
        msg: String,
    },
    /// The cached login could not be read or written.
    #[error("{0}")]
    File(String),
}

impl From<FileError> for CloudError {
    fn from(e: FileError) -> Self {
        Self::File(e.to_string())
    }
}

/// Cync's error body.
fn cync_error(value: &Value) -> Option<(u64, String)> {
    let e = value.get("error")?;
    let code = e.get("code").and_then(Value::as_u64).unwrap_or(0);
    let msg = e
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Some((code, msg))
}

impl Client {
    /// A client of the API at `base` (e.g. [`DEFAULT_BASE`]).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, CloudError> {
        let bad = || CloudError::BadBase(base.to_string());
        let (https, rest) = if let Some(r) = base.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = base.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i..).unwrap_or("/"),
            ),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        let mut path = path.to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        let tls = if https {
            let connector =
                openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                    .map_err(|e| CloudError::Unreachable {
                        url: base.to_string(),
                        why: format!("TLS set-up failed: {e}"),
                    })?
                    .build();
            Some(connector)
        } else {
            None
        };
        Ok(Self {
            base: Base {
                https,
                host,
                port,
                path,
                text: base.to_string(),
            },
            timeout,
            tls,
        })
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.base.https { "https" } else { "http" };
        let host = if self.base.host.contains(':') {
            format!("[{}]", self.base.host)
        } else {
            self.base.host.clone()
        };
        format!(
            "{scheme}://{host}:{}{}{path}",
            self.base.port, self.base.path
        )
    }

    /// Step 1: asks Cync to e-mail a one-time code.
    pub async fn request_code(&self, email: &str) -> Result<(), CloudError> {
        let body = json!({ "corp_id": CORP_ID, "email": email, "local_lang": "en-us" });
        let path = "two_factor/email/verifycode";
        match self.call("POST", path, None, Some(&body)).await {
            Ok(_) => Ok(()),
            Err(CloudError::Refused { code, msg, .. }) => Err(CloudError::Login { code, msg }),
            Err(e) => Err(e),
        }
    }

    /// Step 2: logs in with the e-mail, the password and the one-time code. The password is
    /// only ever in this request's body.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        code: &str,
    ) -> Result<Token, CloudError> {
        let resource: String = (0..16).map(|_| fastrand::lowercase()).collect();
        let body = json!({
            "corp_id": CORP_ID,
            "email": email,
            "password": password,
            "two_factor": code.trim(),
            "resource": resource,
        });
        let path = "user_auth/two_factor";
        let answer = match self.call("POST", path, None, Some(&body)).await {
            Ok(a) => a,
            Err(CloudError::Refused { code, msg, .. }) => {
                return Err(CloudError::Login { code, msg });
            }
            Err(e) => return Err(e),
        };
        let url = self.url(path);
        let text = |field: &str| {
            answer
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| CloudError::Shape {
                    url: url.clone(),
                    why: format!("no {field} in the login answer"),
                })
        };
        let access_token = text("access_token")?;
        let refresh_token = answer
            .get("refresh_token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let user_id = answer
            .get("user_id")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or_else(|| CloudError::Shape {
                url: url.clone(),
                why: "no user_id in the login answer".into(),
            })?;
        // Without a lifetime, assume a day: the next call that finds it expired says so.
        let lifetime = answer
            .get("expire_in")
            .and_then(Value::as_i64)
            .filter(|s| *s > 0)
            .unwrap_or(86_400);
        Ok(Token {
            email: email.to_string(),
            user_id,
            access_token,
            refresh_token,
            expires_at: chrono::Utc::now().timestamp().saturating_add(lifetime),
        })
    }

    /// Step 3: the account's homes (and, on the real service, its Wi-Fi devices), as listed.
    pub async fn homes(&self, token: &Token) -> Result<Vec<Value>, CloudError> {
        let path = format!("user/{}/subscribe/devices", token.user_id);
        let answer = self.call("GET", &path, Some(token), None).await?;
        match answer {
            Value::Array(list) => Ok(list),
            _ => Err(CloudError::Shape {
                url: self.url(&path),
                why: "the home list is not a JSON array".into(),
            }),
        }
    }

    /// Step 4: one home's devices and groups; `None` when Cync says it has none (`4041009`).
    pub async fn home(
        &self,
        token: &Token,
        product_id: &str,
        id: u64,
    ) -> Result<Option<Value>, CloudError> {
        let product: String = product_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let path = format!("product/{product}/device/{id}/property");
        match self.call("GET", &path, Some(token), None).await {
            Ok(v @ Value::Object(_)) => Ok(Some(v)),
            Ok(_) => Err(CloudError::Shape {
                url: self.url(&path),
                why: "a home's properties are not a JSON object".into(),
            }),
            Err(CloudError::Refused { code, .. }) if code == NO_PROPERTIES => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One request with its whole exchange bounded by [`Client::timeout`]; a Cync error body
    /// (whatever the HTTP status) is an error.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&Token>,
        body: Option<&Value>,
    ) -> Result<Value, CloudError> {
        let url = self.url(path);
        let exchange = self.exchange(method, path, token, body, &url);
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(CloudError::Timeout {
                    url,
                    secs: self.timeout.as_secs().max(1),
                });
            }
        };
        let value: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Some(Value::Null)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if let Some((code, msg)) = value.as_ref().and_then(cync_error) {
            if code == EXPIRED {
                return Err(CloudError::Expired);
            }
            return Err(CloudError::Refused { url, code, msg });
        }
        if !(200..300).contains(&status) {
            return Err(CloudError::Http { url, status });
        }
        value.ok_or_else(|| CloudError::Shape {
            url,
            why: "the answer is not JSON".into(),
        })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        token: Option<&Token>,
        body: Option<&Value>,
        url: &str,
    ) -> Result<(u16, Bytes), CloudError> {
        let unreachable = |why: String| CloudError::Unreachable {
            url: url.to_string(),
            why,
        };
        let tcp = tokio::net::TcpStream::connect((self.base.host.as_str(), self.base.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base.path))
            .header(hyper::header::HOST, self.host_header())
            .header(
                hyper::header::USER_AGENT,
                concat!("cyncd/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(t) = token {
            request = request.header("Access-Token", t.access_token.as_str());
        }
        let payload = match body {
            Some(b) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| CloudError::BadBase(format!("{url}: {e}")))?;
        match &self.tls {
            None => send(hyper_util::rt::TokioIo::new(tcp), request, url).await,
            Some(connector) => {
                let ssl = connector
                    .configure()
                    .and_then(|c| c.into_ssl(&self.base.host))
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                let mut stream = tokio_openssl::SslStream::new(ssl, tcp)
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                Pin::new(&mut stream)
                    .connect()
                    .await
                    .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
                send(hyper_util::rt::TokioIo::new(stream), request, url).await
            }
        }
    }

    fn host_header(&self) -> String {
        let default = if self.base.https { 443 } else { 80 };
        let host = if self.base.host.contains(':') {
            format!("[{}]", self.base.host)
        } else {
            self.base.host.clone()
        };
        if self.base.port == default {
            host
        } else {
            format!("{host}:{}", self.base.port)
        }
    }
}

/// Sends one request on a fresh connection and reads the whole answer (bounded).
async fn send<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
    url: &str,
) -> Result<(u16, Bytes), CloudError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let closed = |e: &dyn std::fmt::Display| CloudError::Closed {
        url: url.to_string(),
        why: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| closed(&e))?;
    // The connection runs on its own until the answer is read and the sender dropped (or the
    // server closes it); it cannot outlive this request for long.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await.map_err(|e| closed(&e))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                CloudError::TooLarge {
                    url: url.to_string(),
                }
            } else {
                closed(&e)
            }
        })?
        .to_bytes();
    Ok((status, body))
}

impl Token {
    /// Whether it has expired (or expires within a minute) at unix second `now`.
    pub fn expired(&self, now: i64) -> bool {
        now.saturating_add(60) >= self.expires_at
    }

    /// When it expires, RFC 3339.
    pub fn expires(&self) -> String {
        chrono::DateTime::from_timestamp(self.expires_at, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    }

    /// The cached login of a state directory, when there is one.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, FileError> {
        let path = state_dir.join(TOKEN_FILE);
        let Some(bytes) = file::read_bounded(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FileError::Invalid {
                path,
                why: e.to_string(),
            })
    }

    /// The cached login, unless missing ([`CloudError::NoLogin`]) or expired
    /// ([`CloudError::Expired`]).
    pub fn current(state_dir: &Path) -> Result<Self, CloudError> {
        let token = Self::load(state_dir)?.ok_or(CloudError::NoLogin)?;
        if token.expired(chrono::Utc::now().timestamp()) {
            return Err(CloudError::Expired);
        }
        Ok(token)
    }

    /// Caches it (mode 0600, written whole).
    pub fn save(&self, state_dir: &Path) -> Result<(), FileError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        file::write_private(state_dir, TOKEN_FILE, &bytes, None)
    }

    /// Forgets the cached login; whether there was one.
    pub fn forget(state_dir: &Path) -> Result<bool, FileError> {
        let path = state_dir.join(TOKEN_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(FileError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base_urls() {
        let c = Client::new(DEFAULT_BASE, DEFAULT_TIMEOUT).unwrap();
        assert_eq!(
            c.url("user_auth/two_factor"),
            "https://api.gelighting.com:443/v2/user_auth/two_factor"
        );
        assert_eq!(c.host_header(), "api.gelighting.com");
        let c = Client::new("http://127.0.0.1:8123/v2", DEFAULT_TIMEOUT).unwrap();
        assert_eq!(c.url("x"), "http://127.0.0.1:8123/v2/x");
        assert_eq!(c.host_header(), "127.0.0.1:8123");
        let c = Client::new("http://[::1]:9/", DEFAULT_TIMEOUT).unwrap();
        assert_eq!(c.url("x"), "http://[::1]:9/x");
        for bad in [
            "ftp://x/",
            "http://",
            "https://user:pw@host/",
            "http://h:0/",
            "http://h:x/",
            "http://h/?q",
        ] {
            assert!(Client::new(bad, DEFAULT_TIMEOUT).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_cached_privately_and_expire() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "cyncd-token-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        assert_eq!(Token::current(&dir), Err(CloudError::NoLogin));
        let token = Token {
            email: "a@example.com".into(),
            user_id: 7,
            access_token: "secret-access".into(),
            refresh_token: "secret-refresh".into(),
            expires_at: chrono::Utc::now().timestamp() + 3600,
        };
        token.save(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Token::current(&dir).unwrap(), token);
        assert!(!format!("{token:?}").contains("secret"));
        let old = Token {
            expires_at: chrono::Utc::now().timestamp() - 1,
            ..token
        };
        old.save(&dir).unwrap();
        assert_eq!(Token::current(&dir), Err(CloudError::Expired));
        assert!(Token::forget(&dir).unwrap());
        assert!(!Token::forget(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cync_errors_are_read_from_any_body() {
        let v = json!({"error": {"msg": "Access-Token Expired", "code": 4031021}});
        assert_eq!(
            cync_error(&v),
            Some((EXPIRED, "Access-Token Expired".into()))
        );
        assert_eq!(
            cync_error(&json!({"error": {}})),
            Some((0, "no message".into()))
        );
        assert_eq!(cync_error(&json!([1])), None);
    }
}
