//! What every HTTP request passes before a handler sees it: the `Host` check, the cross-site
//! checks, the API token, and the body's size and deadline.
//!
//! In order (the first that fails answers, and nothing is sent to any device):
//!
//! 0. A request from an address in `http_trusted_proxies` (exactly; Home Assistant's ingress
//!    gateway in the add-on) that carries [`INGRESS_HEADER`] was signed in by that proxy: it
//!    skips the `Host` check (the proxy forwards the browser's own `Host`, e.g.
//!    `homeassistant.local:8123`) and the token, not the cross-site checks. Any other request,
//!    including one from the proxy's address without the header, goes through every check.
//! 1. `Host` must be an IP address, `localhost` (or a name under `.localhost`), this machine's
//!    host name (also under `.local`) or a name in `http_hosts`; otherwise 403. A web page
//!    that rebinds its own DNS name to cyncd's address still sends its own name, so it is
//!    refused (DNS rebinding).
//! 2. `POST`, `PUT`, `PATCH` and `DELETE` are refused (403) when `Sec-Fetch-Site` says
//!    `cross-site` or `same-site`, or `Origin` is not this server (for a proxied request: its
//!    `Host` or `X-Forwarded-Host`); those with a body (all but
//!    `DELETE`, which carries none) need `Content-Type: application/json` (415 otherwise: a
//!    cross-site form or `fetch` without a CORS preflight cannot send it).
//! 3. The token: `Authorization: Bearer <token>` or the page's session cookie ([`COOKIE`],
//!    `HttpOnly; SameSite=Strict`, set by `POST /api/session`). Open without it: `GET
//!    /healthz`, the page's static files (they hold no data), `POST /api/session` itself, and
//!    `GET /metrics` from a loopback peer. Otherwise 401 with `WWW-Authenticate: Bearer`.
//!    Token-less mode ([`Auth::Open`]) exists only on a loopback listen address, by option.
//! 4. A body is read whole before the handler runs: at most [`MAX_BODY`] bytes (413 beyond;
//!    a `Content-Length` over it is refused before a byte of the body is read) and within the
//!    request timeout (408, and the connection closes).
//!
//! Tokens are compared as SHA-256 digests with a constant-time comparison, so timing does not
//! tell how much of a guess was right.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (every API body is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// The token file in the state directory.
pub const TOKEN_FILE: &str = "api-token";
/// The page's session cookie.
pub const COOKIE: &str = "cyncd_session";
/// How long the session cookie lasts, in seconds (a year: it is revoked by changing the token).
const COOKIE_MAX_AGE: u64 = 365 * 86_400;
/// Shortest token accepted from `http_token_file`.
const MIN_TOKEN_LEN: usize = 16;
/// The header Home Assistant's ingress adds to each request it forwards to an add-on (the
/// path prefix the page is shown under); with a trusted proxy's address it marks a request the
/// proxy has signed in.
pub const INGRESS_HEADER: &str = "x-ingress-path";
/// Paths served without the token.
const OPEN_PATHS: [&str; 5] = ["/", "/app.js", "/style.css", "/favicon.svg", "/healthz"];

/// The peer of a request's connection, set by the HTTP server on every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// How a request got past the token check; set on every request the guard lets through
/// (`GET /api/session` tells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An open path without credentials.
    Anonymous,
    /// The token or the page's cookie.
    Token,
    /// Forwarded by a trusted proxy (Home Assistant's ingress).
    Proxy,
    /// Token-less mode ([`Auth::Open`]).
    Open,
}

impl Access {
    /// The name `GET /api/session` answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Token => "token",
            Self::Proxy => "proxy",
            Self::Open => "none",
        }
    }
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// A bearer token (or the page's cookie) on every call but the open ones.
    Token(Token),
    /// No token (loopback listen address only, by explicit option).
    Open,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "Auth::Token(<redacted>)",
            Self::Open => "Auth::Open",
        })
    }
}

/// The API token, kept only as digests.
#[derive(Clone)]
pub struct Token {
    bearer: [u8; 32],
    cookie: [u8; 32],
    /// The cookie's value (a digest of the token, so a leaked cookie is not the token).
    cookie_value: String,
}

impl Token {
    /// From the token's text.
    pub fn new(token: &str) -> Self {
        let cookie_value = hex(&openssl::sha::sha256(
            format!("cyncd session v1\n{token}").as_bytes(),
        ));
        Self {
            bearer: openssl::sha::sha256(token.as_bytes()),
            cookie: openssl::sha::sha256(cookie_value.as_bytes()),
            cookie_value,
        }
    }

    fn bearer_ok(&self, presented: &str) -> bool {
        openssl::memcmp::eq(&openssl::sha::sha256(presented.as_bytes()), &self.bearer)
    }

    fn cookie_ok(&self, presented: &str) -> bool {
        openssl::memcmp::eq(&openssl::sha::sha256(presented.as_bytes()), &self.cookie)
    }
}

/// Where the token came from.
#[derive(Clone)]
pub struct TokenFile {
    /// The file.
    pub path: PathBuf,
    /// The token's text (for `cyncd demo`'s login link and tests; never logged).
    pub token: String,
    /// Created at this start.
    pub generated: bool,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .field("generated", &self.generated)
            .finish()
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading failed.
    #[error("reading the HTTP token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is too short or has characters a header cannot carry.
    #[error(
        "the HTTP token in {0} must be at least {MIN_TOKEN_LEN} printable characters without spaces"
    )]
    Invalid(PathBuf),
    /// Writing the generated token failed.
    #[error("writing the HTTP token to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads the token from `file`, or from `api-token` in `state_dir`, generating that one (32
/// random bytes as hex, mode 0600) when it does not exist.
pub fn load_or_create(file: Option<&Path>, state_dir: &Path) -> Result<TokenFile, TokenError> {
    let (path, may_create) = match file {
        Some(f) => (f.to_path_buf(), false),
        None => (state_dir.join(TOKEN_FILE), true),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.lines().next().unwrap_or_default().trim().to_string();
            if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(TokenError::Invalid(path));
            }
            warn_if_readable(&path);
            Ok(TokenFile {
                path,
                token,
                generated: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            let mut bytes = [0u8; 32];
            openssl::rand::rand_bytes(&mut bytes).map_err(|e| TokenError::Read {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            let token = hex(&bytes);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .map_err(|source| TokenError::Read {
                        path: state_dir.to_path_buf(),
                        source,
                    })?;
            }
            crate::state::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600).map_err(
                |source| TokenError::Write {
                    path: path.clone(),
                    source,
                },
            )?;
            Ok(TokenFile {
                path,
                token,
                generated: true,
            })
        }
        Err(source) => Err(TokenError::Read { path, source }),
    }
}

/// A token others can read is not a secret: say so (the file is the user's to fix).
fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the HTTP token file is readable by other users; chmod 600 it");
            }
        }
    }
}

/// The checks' settings, shared by every request.
#[derive(Debug, Clone)]
pub struct Guard {
    auth: Auth,
    /// Host names answered besides IP addresses and localhost, lower case.
    hosts: Arc<Vec<String>>,
    /// Proxies whose ingress requests need no token (`http_trusted_proxies`).
    trusted_proxies: Arc<Vec<IpAddr>>,
    request_timeout: Duration,
}

impl Guard {
    /// `names` are the configured host names; this machine's name is added.
    pub fn new(auth: Auth, names: &[String], request_timeout: Duration) -> Self {
        let mut hosts: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if let Some(name) = system_hostname() {
            hosts.push(format!("{name}.local"));
            hosts.push(name);
        }
        Self {
            auth,
            hosts: Arc::new(hosts),
            trusted_proxies: Arc::default(),
            request_timeout,
        }
    }

    /// Trusts these exact proxy addresses' ingress requests (`http_trusted_proxies`).
    pub fn trusting(mut self, proxies: &[IpAddr]) -> Self {
        self.trusted_proxies = Arc::new(proxies.iter().map(|ip| ip.to_canonical()).collect());
        self
    }

    /// Whether the request came through a trusted proxy's ingress: from one of its addresses
    /// (an IPv4 address also as `::ffff:a.b.c.d`, as a dual-stack listener sees it) and with
    /// [`INGRESS_HEADER`].
    fn proxied(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.contains(&ip.to_canonical()))
            && headers
                .get(INGRESS_HEADER)
                .is_some_and(|v| !v.as_bytes().is_empty())
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let name = host_name(host).to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| h == name)
    }

    /// How the request is authenticated, if it is.
    fn access(&self, headers: &HeaderMap) -> Option<Access> {
        match &self.auth {
            Auth::Open => Some(Access::Open),
            Auth::Token(_) => self.authenticated(headers).then_some(Access::Token),
        }
    }

    fn authenticated(&self, headers: &HeaderMap) -> bool {
        let Auth::Token(token) = &self.auth else {
            return true;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .any(|t| token.bearer_ok(t));
        bearer
            || headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(name, value)| name == COOKIE && token.cookie_ok(value))
    }
}

/// The middleware: runs the checks, then the handler.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
    let proxied = guard.proxied(peer, &parts.headers);
    if !proxied && !guard.host_ok(&parts.headers) {
        let shown = parts
            .headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "this server does not answer to the host name {:?}; use its IP address, or add the name to http_hosts (--http-host)",
                shorten(&shown)
            ),
        );
    }
    let writes = matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes {
        if let Some(why) = cross_site(&parts.headers, proxied) {
            return refuse(StatusCode::FORBIDDEN, why);
        }
        if parts.method != Method::DELETE && !json_content(&parts.headers) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as Content-Type: application/json",
            );
        }
    }
    let path = parts.uri.path();
    let open = (parts.method == Method::GET && OPEN_PATHS.contains(&path))
        || (parts.method == Method::POST && path == "/api/session")
        || (parts.method == Method::GET
            && path == "/metrics"
            && parts
                .extensions
                .get::<Peer>()
                .is_some_and(|p| p.0.ip().is_loopback()));
    let access = if proxied {
        Some(Access::Proxy)
    } else {
        guard.access(&parts.headers)
    };
    if !open && access.is_none() {
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "this needs the API token: Authorization: Bearer <token> (the token is in api-token in cyncd's state directory)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cyncd\""),
        );
        return response;
    }
    parts.extensions.insert(access.unwrap_or(Access::Anonymous));
    let body = if writes {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return closing(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {MAX_BODY} bytes"),
            ));
        }
        match tokio::time::timeout(guard.request_timeout, axum::body::to_bytes(body, MAX_BODY))
            .await
        {
            Ok(Ok(bytes)) => Body::from(bytes),
            Ok(Err(_)) => {
                return closing(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is over {MAX_BODY} bytes (or was cut)"),
                ));
            }
            Err(_) => {
                return closing(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                ));
            }
        }
    } else {
        body
    };
    next.run(Request::from_parts(parts, body)).await
}

/// Why a writing request looks cross-site, if it does. `Origin` must name the `Host` the
/// request was sent to; a proxied request's may also name its `X-Forwarded-Host` (the name the
/// browser used when a proxy in front of Home Assistant changed `Host`).
fn cross_site(headers: &HeaderMap, proxied: bool) -> Option<&'static str> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
        return Some("cross-site request refused");
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let forwarded = proxied
        .then(|| headers.get("x-forwarded-host"))
        .flatten()
        .and_then(|h| h.to_str().ok());
    let same = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| {
            o.eq_ignore_ascii_case(host) || forwarded.is_some_and(|f| o.eq_ignore_ascii_case(f))
        });
    (!same).then_some("cross-origin request refused")
}

fn json_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The host part of a `Host` header (`[v6]:port`, `name:port`, `name`).
fn host_name(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// This machine's host name, lower case, when the system tells it.
fn system_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty() && name != "localhost").then_some(name)
}

/// A JSON error answer; its message is shortened so that no answer echoes much of its input.
pub fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": shorten(message) })),
    )
        .into_response()
}

/// At most [`MAX_ECHO`] characters of `text`, and how long it was when cut.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX_ECHO).collect();
    format!("{head}… ({} bytes)", text.len())
}

/// Longest error message an answer carries (messages quote the input they refuse).
pub const MAX_ECHO: usize = 200;

/// Marks an answer as the connection's last (its request body was not read whole).
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `POST /api/session` with `{"token": "…"}`: sets the page's session cookie.
pub async fn login(State(guard): State<Guard>, body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Login {
        token: String,
    }
    let Auth::Token(token) = &guard.auth else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "expected {\"token\": \"…\"}");
    };
    if !token.bearer_ok(login.token.trim()) {
        return refuse(StatusCode::UNAUTHORIZED, "wrong token");
    }
    session_cookie(&token.cookie_value, COOKIE_MAX_AGE)
}

/// `DELETE /api/session`: forgets the cookie.
pub async fn logout() -> Response {
    session_cookie("", 0)
}

/// `GET /api/session`: 200 when the request is authenticated (the guard let it through), with
/// how: `token` (the token or the cookie), `proxy` (a trusted proxy's ingress) or `none`
/// (token-less mode).
pub async fn whoami(access: Option<axum::Extension<Access>>) -> Response {
    let auth = access.map_or(Access::Anonymous, |a| a.0);
    axum::Json(serde_json::json!({ "authenticated": true, "auth": auth.name() })).into_response()
}

fn session_cookie(value: &str, max_age: u64) -> Response {
    let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts() {
        let guard = Guard::new(Auth::Open, &["Cyncd.LAN".into()], Duration::from_secs(1));
        for ok in [
            "127.0.0.1:8080",
            "192.168.1.5",
            "[::1]:8080",
            "localhost:8080",
            "app.localhost",
            "cyncd.lan:80",
            "cyncd.lan.",
        ] {
            assert!(guard.host_ok(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "attacker.test",
            "attacker.test:8080",
            "",
            "127.0.0.1.attacker.test",
        ] {
            assert!(!guard.host_ok(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(!guard.host_ok(&HeaderMap::new()));
    }

    #[test]
    fn cross_site_requests() {
        let host = ("host", "127.0.0.1:8080");
        assert!(cross_site(&headers(&[host]), false).is_none());
        assert!(
            cross_site(
                &headers(&[host, ("origin", "http://127.0.0.1:8080")]),
                false
            )
            .is_none()
        );
        assert!(cross_site(&headers(&[host, ("sec-fetch-site", "same-origin")]), false).is_none());
        assert!(cross_site(&headers(&[host, ("origin", "http://attacker.test")]), false).is_some());
        assert!(cross_site(&headers(&[host, ("origin", "null")]), false).is_some());
        assert!(cross_site(&headers(&[host, ("sec-fetch-site", "cross-site")]), false).is_some());
        assert!(cross_site(&headers(&[host, ("sec-fetch-site", "same-site")]), false).is_some());
        assert!(json_content(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(!json_content(&headers(&[("content-type", "text/plain")])));
        assert!(!json_content(&HeaderMap::new()));
    }

    #[test]
    fn a_trusted_proxy_is_recognised_only_by_its_exact_address_and_the_ingress_header() {
        let trusted: IpAddr = "172.30.32.2".parse().unwrap();
        let guard = Guard::new(
            Auth::Token(Token::new("0123456789abcdef0123")),
            &[],
            Duration::from_secs(1),
        )
        .trusting(&[trusted]);
        let ingress = headers(&[("x-ingress-path", "/api/hassio_ingress/abc")]);
        assert!(guard.proxied(Some(trusted), &ingress));
        // As a dual-stack listener sees an IPv4 peer.
        assert!(guard.proxied(Some("::ffff:172.30.32.2".parse().unwrap()), &ingress));
        assert!(!guard.proxied(Some("172.30.32.1".parse().unwrap()), &ingress));
        assert!(!guard.proxied(Some("172.30.32.3".parse().unwrap()), &ingress));
        assert!(!guard.proxied(None, &ingress));
        assert!(!guard.proxied(Some(trusted), &HeaderMap::new()));
        assert!(!guard.proxied(Some(trusted), &headers(&[("x-ingress-path", "")])));
        // Nothing is trusted by default.
        let plain = Guard::new(Auth::Open, &[], Duration::from_secs(1));
        assert!(!plain.proxied(Some(trusted), &ingress));
        // A proxied write may name the browser's host in X-Forwarded-Host; nobody else's may.
        let forwarded = headers(&[
            ("host", "172.30.33.4:8099"),
            ("origin", "https://ha.example.net"),
            ("x-forwarded-host", "ha.example.net"),
        ]);
        assert!(cross_site(&forwarded, true).is_none());
        assert!(cross_site(&forwarded, false).is_some());
        let mut cross = forwarded.clone();
        cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&cross, true).is_some());
    }

    #[test]
    fn tokens_and_cookies() {
        let token = Token::new("0123456789abcdef0123");
        let guard = Guard::new(Auth::Token(token.clone()), &[], Duration::from_secs(1));
        assert!(guard.authenticated(&headers(&[(
            "authorization",
            "Bearer 0123456789abcdef0123"
        )])));
        assert!(!guard.authenticated(&headers(&[("authorization", "Bearer 0123456789abcdef012")])));
        assert!(!guard.authenticated(&HeaderMap::new()));
        let cookie = format!("a=b; {COOKIE}={}", token.cookie_value);
        assert!(guard.authenticated(&headers(&[("cookie", &cookie)])));
        // The token itself is not a valid cookie, nor the cookie a bearer token.
        assert!(!guard.authenticated(&headers(&[(
            "cookie",
            &format!("{COOKIE}=0123456789abcdef0123")
        )])));
        assert!(!guard.authenticated(&headers(&[(
            "authorization",
            &format!("Bearer {}", token.cookie_value)
        )])));
    }

    #[test]
    fn echoes_are_short() {
        let long = "A".repeat(2_000_000);
        let shown = shorten(&long);
        assert!(shown.len() < MAX_ECHO + 40, "{}", shown.len());
        assert!(shown.ends_with("(2000000 bytes)"), "{shown}");
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn a_token_is_generated_once_with_mode_600_and_a_bad_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("cyncd-token-{}", fastrand::u64(..)));
        let first = load_or_create(None, &dir).unwrap();
        assert!(first.generated);
        assert_eq!(first.token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create(None, &dir).unwrap();
        assert!(!again.generated);
        assert!(!format!("{again:?}").contains(&again.token));
        assert_eq!(again.token, first.token);
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(matches!(
            load_or_create(Some(&short), &dir),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            load_or_create(Some(&dir.join("missing")), &dir),
            Err(TokenError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
