//! The Home Assistant add-on's options (`/data/options.json`, written by the Supervisor from
//! the add-on's `config.yaml` schema) mapped onto the configuration, so the add-on runs
//! `cyncd serve --options-json /data/options.json` with no script in between.
//!
//! Order: defaults, then the TOML file named by `config_file` (homes, devices, groups and every
//! other key), then the options, then command-line flags. Unknown options are refused, naming
//! them. With no `mqtt_url`, the add-on's broker comes from the Supervisor's MQTT service (see
//! [`SupervisorMqtt`]), which the caller looks up.

use super::Config;
use serde::Deserialize;
use std::path::Path;

/// Where the add-on's page is served: the `ingress_port` of its `config.yaml`, on every
/// interface of the add-on's container (the Supervisor's ingress proxy connects from outside
/// it).
pub const ADDON_HTTP: &str = "0.0.0.0:8099";

/// The Supervisor's ingress gateway: every request Home Assistant's ingress forwards to an
/// add-on comes from this address, after Home Assistant signed the person in. The add-on
/// trusts it (`http_trusted_proxies`), so the page inside Home Assistant needs no API token.
pub const INGRESS_GATEWAY: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 32, 2));

/// The options file as the Supervisor writes it. Empty strings count as unset (the add-on UI
/// leaves optional text fields empty).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// A TOML configuration file read first (homes, devices, groups, advanced keys), e.g.
    /// `/config/cyncd.toml` in the add-on's configuration folder; a relative path is read next
    /// to the options file.
    pub config_file: Option<String>,
    /// `trace`, `debug`, `info`, `warn`, `error`, or a tracing filter.
    pub log_level: Option<String>,
    /// `pretty` or `json`.
    pub log_format: Option<String>,
    /// The UTC offset sent to devices, e.g. `-06:00` (default: the time zone Home Assistant
    /// gives the add-on).
    pub utc_offset: Option<String>,
    /// The broker, `mqtt://host:port` or `mqtts://…`; empty: the Supervisor's MQTT service.
    pub mqtt_url: Option<String>,
    /// Broker user (with `mqtt_url`).
    pub mqtt_username: Option<String>,
    /// Broker password (with `mqtt_url`). Never logged.
    pub mqtt_password: Option<String>,
    /// Topic prefix for states and commands.
    pub mqtt_base_topic: Option<String>,
    /// Home Assistant's discovery prefix.
    pub mqtt_discovery_prefix: Option<String>,
    /// Ask bridges for their mesh after they connect.
    pub discover_mesh: Option<bool>,
}

/// The broker the Supervisor hands an add-on that declares `services: mqtt:want` (the
/// Mosquitto add-on's, usually), from `GET http://supervisor/services/mqtt`:
/// `{"result": "ok", "data": {"host", "port", "ssl", "username", "password", "protocol"}}`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct SupervisorMqtt {
    /// Host name, e.g. `core-mosquitto`.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS.
    #[serde(default)]
    pub ssl: bool,
    /// User.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for SupervisorMqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorMqtt")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ssl", &self.ssl)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl SupervisorMqtt {
    /// Reads the Supervisor's answer.
    pub fn from_answer(body: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Answer {
            result: String,
            #[serde(default)]
            message: Option<String>,
            data: Option<SupervisorMqtt>,
        }
        let answer: Answer = serde_json::from_str(body)
            .map_err(|e| format!("unexpected answer from the Supervisor: {e}"))?;
        match (answer.result.as_str(), answer.data) {
            ("ok", Some(data)) => Ok(data),
            _ => Err(answer
                .message
                .unwrap_or_else(|| "the Supervisor has no MQTT service".into())),
        }
    }
}

/// Where the Supervisor answers add-ons (`CYNCD_SUPERVISOR_URL` overrides it, for tests).
pub const SUPERVISOR_URL: &str = "http://supervisor";
/// The environment variable through which the Supervisor gives an add-on its API token.
pub const SUPERVISOR_TOKEN_ENV: &str = "SUPERVISOR_TOKEN";
/// Largest Supervisor answer read.
const MAX_SUPERVISOR_ANSWER: u64 = 64 * 1024;

impl SupervisorMqtt {
    /// Asks the Supervisor at `base` (`http://host[:port]`) for its MQTT service with the add-on's
    /// `token`: one blocking HTTP/1.1 GET, bounded by `timeout` and [`MAX_SUPERVISOR_ANSWER`].
    pub fn fetch(base: &str, token: &str, timeout: std::time::Duration) -> Result<Self, String> {
        use std::io::{Read as _, Write as _};
        use std::net::ToSocketAddrs as _;
        let host = base
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| format!("the Supervisor URL must be http://HOST[:PORT], got {base}"))?;
        let with_port = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let fail = |e: std::io::Error| format!("asking {base}/services/mqtt: {e}");
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
        stream.set_read_timeout(Some(timeout)).map_err(fail)?;
        stream.set_write_timeout(Some(timeout)).map_err(fail)?;
        let request = format!(
            "GET /services/mqtt HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).map_err(fail)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_SUPERVISOR_ANSWER)
            .read_to_end(&mut answer)
            .map_err(fail)?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{base}/services/mqtt: malformed HTTP answer"))?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        match Self::from_answer(body) {
            Ok(s) => Ok(s),
            Err(e) => Err(format!("{base}/services/mqtt answered {status}: {e}")),
        }
    }
}

impl Options {
    /// Reads and parses an options file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: {e} (the add-on's options are config_file, log_level, log_format, \
                 utc_offset, mqtt_url, mqtt_username, mqtt_password, mqtt_base_topic, \
                 mqtt_discovery_prefix, discover_mesh)",
                path.display()
            )
        })
    }

    /// Whether the broker should come from the Supervisor.
    pub fn wants_supervisor_mqtt(&self) -> bool {
        set(&self.mqtt_url).is_none()
    }

    /// The configuration: the `config_file` (or the defaults) with the options on top. The
    /// add-on's own defaults: state in `state_dir` (the add-on's `/data`), devices on
    /// 0.0.0.0:23779, the page on [`ADDON_HTTP`], and [`INGRESS_GATEWAY`] added to
    /// `http_trusted_proxies`.
    pub fn to_config(
        &self,
        state_dir: &Path,
        supervisor_mqtt: Option<&SupervisorMqtt>,
    ) -> Result<Config, String> {
        let mut c = Config {
            state_dir: state_dir.to_path_buf(),
            http: ADDON_HTTP.parse().map_err(|e| format!("{e}"))?,
            ..Config::default()
        };
        if let Some(file) = set(&self.config_file) {
            // A relative path is read next to the options file.
            let path = state_dir.join(file);
            let loaded = Config::load(&path).map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                format!("config_file {text}")
            })?;
            // The file's own state_dir and http win over the add-on's defaults only when set
            // to something else than the plain defaults.
            let defaults = Config::default();
            c = Config {
                state_dir: if loaded.state_dir == defaults.state_dir {
                    c.state_dir
                } else {
                    loaded.state_dir.clone()
                },
                http: if loaded.http == defaults.http {
                    c.http
                } else {
                    loaded.http
                },
                ..loaded
            };
        }
        if let Some(v) = set(&self.log_level) {
            c.log_level = v.to_string();
        }
        if let Some(v) = set(&self.log_format) {
            c.log_format = match v {
                "pretty" => super::LogFormat::Pretty,
                "json" => super::LogFormat::Json,
                other => return Err(format!("log_format must be pretty or json, got {other:?}")),
            };
        }
        if let Some(v) = set(&self.utc_offset) {
            c.utc_offset = Some(v.to_string());
        }
        if let Some(v) = self.discover_mesh {
            c.discover_mesh = v;
        }
        if let Some(url) = set(&self.mqtt_url) {
            c.mqtt.url = Some(url.to_string());
            c.mqtt.username = set(&self.mqtt_username).map(str::to_string);
            c.mqtt.password = set(&self.mqtt_password).map(str::to_string);
        } else if let Some(s) = supervisor_mqtt {
            let scheme = if s.ssl { "mqtts" } else { "mqtt" };
            let host = if s.host.contains(':') {
                format!("[{}]", s.host)
            } else {
                s.host.clone()
            };
            c.mqtt.url = Some(format!("{scheme}://{host}:{}", s.port));
            c.mqtt.username = s.username.clone().filter(|u| !u.is_empty());
            c.mqtt.password = s.password.clone().filter(|p| !p.is_empty());
        }
        if let Some(v) = set(&self.mqtt_base_topic) {
            c.mqtt.base_topic = v.to_string();
        }
        if let Some(v) = set(&self.mqtt_discovery_prefix) {
            c.mqtt.discovery_prefix = v.to_string();
        }
        if !c.http_trusted_proxies.contains(&INGRESS_GATEWAY) {
            c.http_trusted_proxies.push(INGRESS_GATEWAY);
        }
        Ok(c)
    }
}

/// A non-empty, trimmed option.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_onto_the_configuration() {
        let o: Options = serde_json::from_str(
            r#"{"log_level": "debug", "utc_offset": "-06:00", "mqtt_url": "mqtt://broker.lan:1884",
                "mqtt_username": "cyncd", "mqtt_password": "pw", "mqtt_base_topic": "",
                "discover_mesh": false}"#,
        )
        .unwrap();
        let c = o.to_config(Path::new("/data"), None).unwrap();
        c.validate().unwrap();
        assert_eq!(c.state_dir, Path::new("/data"));
        assert_eq!(c.http.to_string(), ADDON_HTTP);
        assert_eq!(c.listen.to_string(), "0.0.0.0:23779");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.offset_minutes(), -360);
        assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://broker.lan:1884"));
        assert_eq!(c.mqtt.password.as_deref(), Some("pw"));
        assert_eq!(
            c.mqtt.base_topic, "cync",
            "an empty option keeps the default"
        );
        assert!(!c.discover_mesh);
        assert!(!o.wants_supervisor_mqtt());
        assert_eq!(c.http_trusted_proxies, [INGRESS_GATEWAY]);
        assert!(
            Config::default().http_trusted_proxies.is_empty(),
            "no proxy is trusted outside the add-on"
        );
    }

    #[test]
    fn without_a_url_the_supervisor_broker_is_used() {
        let o: Options = serde_json::from_str(r#"{"mqtt_url": ""}"#).unwrap();
        assert!(o.wants_supervisor_mqtt());
        let s = SupervisorMqtt::from_answer(
            r#"{"result": "ok", "data": {"addon": "core_mosquitto", "host": "core-mosquitto",
                "port": 1883, "ssl": false, "protocol": "3.1.1", "username": "addons",
                "password": "secret"}}"#,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        let c = o.to_config(Path::new("/data"), Some(&s)).unwrap();
        assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://core-mosquitto:1883"));
        assert_eq!(c.mqtt.username.as_deref(), Some("addons"));
        assert_eq!(c.mqtt.password.as_deref(), Some("secret"));
        let none = o.to_config(Path::new("/data"), None).unwrap();
        assert_eq!(none.mqtt.url, None);
        let err =
            SupervisorMqtt::from_answer(r#"{"result": "error", "message": "No mqtt service"}"#)
                .unwrap_err();
        assert_eq!(err, "No mqtt service");
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let err = serde_json::from_str::<Options>(r#"{"mqtt_host": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt_host"), "{err}");
        let o: Options = serde_json::from_str(r#"{"log_format": "xml"}"#).unwrap();
        assert!(o.to_config(Path::new("/data"), None).is_err());
    }
}
