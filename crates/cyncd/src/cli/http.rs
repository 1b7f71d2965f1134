//! A minimal blocking HTTP/1.1 client for the command-line tools that talk to a running server
//! (`set`, `toggle`, `doctor`): one request per connection, JSON in and out, the API token sent
//! as `Authorization: Bearer <token>` when one is found.
//!
//! Where the token comes from, first found wins: `--token-file FILE`; the `CYNCD_API_TOKEN`
//! environment variable; the file `api-token` in `--state-dir`, else in the default state
//! directory (`$XDG_STATE_HOME/cyncd`, else `~/.local/state/cyncd`), then in `/var/lib/cyncd`
//! (the systemd unit's and the container's). A server that needs no token ignores it.

use anyhow::{Context as _, bail};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest answer read, in bytes: a home's device list is far below it; anything larger is
/// refused rather than held in memory.
pub const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Where the server's HTTP API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The server's HTTP API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub api: String,
    /// File whose first line is the API token [default: $CYNCD_API_TOKEN, else api-token in
    /// --state-dir, the default state directory or /var/lib/cyncd].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The server's state directory, where its api-token is.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl ApiArgs {
    /// The client these arguments describe.
    pub fn client(&self) -> anyhow::Result<Client> {
        let dirs: Vec<PathBuf> = self.state_dir.iter().cloned().collect();
        Client::new(&self.api, self.token_file.as_deref(), &dirs)
    }
}

/// A server's HTTP API.
#[derive(Clone)]
pub struct Client {
    /// `host:port`.
    host: String,
    /// The bearer token, when one was found.
    token: Option<String>,
    /// Where it came from, for messages.
    pub token_source: Option<PathBuf>,
    /// Connect and read timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_source", &self.token_source)
            .finish()
    }
}

/// An answer: the status and the body parsed as JSON (the raw text when it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON, or `Value::String` of the text when it is not JSON.
    pub json: serde_json::Value,
}

impl Answer {
    /// The body, or an error naming the status and the server's reason unless it is 2xx.
    pub fn ok(self) -> anyhow::Result<serde_json::Value> {
        if (200..300).contains(&self.status) {
            return Ok(self.json);
        }
        let reason = match &self.json {
            serde_json::Value::String(text) => text.clone(),
            json => json
                .get("error")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| json.to_string(), str::to_string),
        };
        if self.status == 401 {
            bail!(
                "HTTP 401: {reason} (the server wants its API token: give --token-file FILE or \
                 set {TOKEN_ENV}; the server keeps it in api-token in its state directory)"
            );
        }
        bail!("HTTP {}: {reason}", self.status)
    }
}

impl Client {
    /// A client of `api` (`http://host:port`), with the token from `token_file`, else from an
    /// `api-token` file in one of `state_dirs`, else from the default places.
    pub fn new(
        api: &str,
        token_file: Option<&Path>,
        state_dirs: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let host = api
            .strip_prefix("http://")
            .context("--api must be an http:// URL such as http://127.0.0.1:8080")?
            .trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            bail!("--api must be http://HOST:PORT, without a path; got {api}");
        }
        let (token, token_source) = find_token(token_file, state_dirs)?;
        Ok(Self {
            host: host.to_string(),
            token,
            token_source,
            timeout: Duration::from_secs(60),
        })
    }

    /// Whether a token will be sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<Answer> {
        self.request("POST", path, Some(&body.to_string()))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.request("DELETE", path, None)
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Answer> {
        let addr = self
            .host
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .with_context(|| format!("connecting to http://{}", self.host))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.host
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if let Some(body) = body {
            stream.write_all(body.as_bytes())?;
        }
        let mut response = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut response)
            .with_context(|| format!("reading the answer of http://{}{path}", self.host))?;
        parse(&response)
    }
}

/// Parses a whole HTTP/1.1 answer (the server closed the connection after it).
fn parse(response: &[u8]) -> anyhow::Result<Answer> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP answer (no end of head)")?;
    let head = String::from_utf8_lossy(response.get(..split).unwrap_or_default());
    let mut payload = response.get(split + 4..).unwrap_or_default().to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        payload = dechunk(&payload).context("malformed chunked HTTP body")?;
    }
    let text = String::from_utf8_lossy(&payload);
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| serde_json::Value::String(text.trim().to_string()));
    Ok(Answer { status, json })
}

/// Joins the chunks of a chunked body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(body.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = body.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The token and the file it came from, if any.
fn find_token(
    explicit: Option<&Path>,
    state_dirs: &[PathBuf],
) -> anyhow::Result<(Option<String>, Option<PathBuf>)> {
    if let Some(path) = explicit {
        let token = read_token(path)
            .with_context(|| format!("reading the API token from {}", path.display()))?;
        return Ok((Some(token), Some(path.to_path_buf())));
    }
    if let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok((Some(token.trim().to_string()), None));
    }
    let defaults = [
        crate::config::Config::default().state_dir,
        PathBuf::from("/var/lib/cyncd"),
    ];
    for dir in state_dirs.iter().chain(&defaults) {
        let path = dir.join(TOKEN_FILE);
        if let Ok(token) = read_token(&path) {
            return Ok((Some(token), Some(path)));
        }
    }
    Ok((None, None))
}

/// The environment variable with the API token.
pub const TOKEN_ENV: &str = "CYNCD_API_TOKEN";

/// The name of the token file in a state directory.
pub use crate::frontends::http::guard::TOKEN_FILE;

/// The first line of a token file, trimmed; an empty one is an error.
fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        bail!("the file is empty");
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_plain_and_chunked() {
        let a = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n").unwrap();
        assert_eq!((a.status, a.json["a"].as_u64()), (200, Some(1)));
        let a = parse(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"err\r\n11\r\nor\": \"no device\"}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(a.status, 404);
        let err = a.ok().unwrap_err().to_string();
        assert_eq!(err, "HTTP 404: no device");
        let a = parse(b"HTTP/1.1 401 Unauthorized\r\n\r\nunauthorized").unwrap();
        assert!(a.ok().unwrap_err().to_string().contains("--token-file"));
        assert!(parse(b"HTTP/1.1 200").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn a_token_file_is_read_and_an_empty_one_refused() {
        let dir = std::env::temp_dir().join(format!("cyncd-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let c = Client::new("http://127.0.0.1:1", Some(&file), &[]).unwrap();
        assert!(c.has_token());
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(Client::new("http://127.0.0.1:1", Some(&file), &[]).is_err());
        assert!(Client::new("https://x", None, &[]).is_err());
        assert!(Client::new("http://x/api", None, &[]).is_err());
        // A state directory's api-token is found.
        std::fs::write(dir.join(TOKEN_FILE), "from-dir\n").unwrap();
        let c = Client::new("http://127.0.0.1:1", None, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(c.token_source, Some(dir.join(TOKEN_FILE)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
