//! `cyncd doctor`: checks a setup the way a person would debug it, one line per check with ✓ or
//! ✗ and, on ✗, the fix. It reads the same configuration as `cyncd serve` (same options), asks
//! a DNS server what it answers for the devices' names, connects to the device port, checks the
//! certificate, the state directory, the MQTT broker and Home Assistant, and asks the running
//! server which devices are connected. The exit status is non-zero when a check fails.
//!
//! Checks that do not apply (MQTT not configured, plain TCP) print `–` and do not fail.

mod dns;
mod net;

use super::http::Client;
use crate::config::Config;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// The names Cync devices resolve to find the cloud.
pub const DEVICE_NAMES: [&str; 2] = ["cm.gelighting.com", "cm-sec.gelighting.com"];
/// The port Cync devices connect to.
pub const DEVICE_PORT: u16 = 23779;

/// Check a setup: DNS, device port, certificate, state directory, MQTT broker, Home Assistant,
/// connected devices and the clock.
///
/// Give it the options you give `cyncd serve` (--config FILE, --options-json FILE, --state-dir,
/// --mqtt …) so it checks that setup. Run it as the user the service runs as (or root) so it
/// can read the state directory and the API token.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "doctor")]
pub struct Args {
    #[command(flatten)]
    serve: crate::serve::Args,
    /// The running server's HTTP API [default: http://<the configuration's http address>].
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// File whose first line is the API token [default: api-token in the state directory].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The DNS server to ask for the devices' names, IP or IP:PORT [default: the first
    /// nameserver in /etc/resolv.conf]. Ask the one your router hands the devices.
    #[arg(long, value_name = "IP[:PORT]", value_parser = resolver)]
    resolver: Option<SocketAddr>,
    /// An address devices should reach this host at; repeat for more [default: every
    /// non-loopback IPv4 address of this host].
    #[arg(long = "address", value_name = "IP")]
    addresses: Vec<Ipv4Addr>,
    /// The port devices connect to on those addresses [default: 23779].
    #[arg(long, value_name = "PORT", default_value_t = DEVICE_PORT)]
    device_port: u16,
    /// Print the checks as one JSON object instead of lines.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each network answer.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    timeout: f64,
}

fn resolver(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("expected IP or IP:PORT, got {text}"))
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// ✓
    Pass,
    /// ✗
    Fail,
    /// – (does not apply to this setup)
    Skip,
}

/// One check: what was found and, when it failed, what to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }

    /// The check as one line: `✓ name: detail`, `✗ name: detail — fix: …`, `– name: detail`.
    pub fn line(&self) -> String {
        match (self.status, &self.fix) {
            (Status::Pass, _) => format!("✓ {}: {}", self.name, self.detail),
            (Status::Skip, _) => format!("– {}: {}", self.name, self.detail),
            (Status::Fail, Some(fix)) => format!("✗ {}: {} — fix: {fix}", self.name, self.detail),
            (Status::Fail, None) => format!("✗ {}: {}", self.name, self.detail),
        }
    }
}

/// Runs `cyncd doctor`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let mut checks = Vec::new();
    let config = match args.serve.config() {
        Ok(c) => {
            let from = match (&args.serve.options_json, &args.serve.config) {
                (Some(f), _) | (None, Some(f)) => format!("loaded from {}", f.display()),
                (None, None) => "no file: defaults and options".to_string(),
            };
            checks.push(Check::pass("configuration", from));
            c
        }
        Err(e) => {
            checks.push(Check::fail(
                "configuration",
                format!("{e:#}"),
                "correct the file (examples/cyncd.toml lists every key); the checks below use the defaults",
            ));
            Config::default()
        }
    };

    let explicit = !args.addresses.is_empty();
    let here = if explicit {
        args.addresses.clone()
    } else {
        net::local_ipv4()
    };
    let resolver = args.resolver.or_else(|| {
        std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| dns::nameserver(&t))
    });
    for name in DEVICE_NAMES {
        checks.push(check_dns(name, resolver, &here, timeout));
    }
    let (cert_check, cert_der) = check_certificate(&config);
    checks.push(check_port(
        &config,
        &here,
        args.device_port,
        timeout,
        cert_der.as_deref(),
    ));
    checks.push(cert_check);
    checks.push(check_state_dir(&config));

    let api = args.api.clone().unwrap_or_else(|| {
        let addr = match config.http.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.http.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), config.http.port())
            }
            _ => config.http,
        };
        format!("http://{addr}")
    });
    let client = Client::new(
        &api,
        args.token_file.as_deref(),
        std::slice::from_ref(&config.state_dir),
    )
    .map(|mut c| {
        c.timeout = timeout;
        c
    });
    let metrics = client
        .as_ref()
        .ok()
        .and_then(|c| c.get("/metrics").ok())
        .filter(|a| a.status == 200)
        .and_then(|a| a.json.as_str().map(str::to_string));
    checks.push(match &client {
        Ok(c) => check_devices(c, &api, metrics.as_deref()),
        Err(e) => Check::fail(
            "devices connected",
            format!("{e:#}"),
            "give --api http://HOST:PORT and --token-file FILE",
        ),
    });
    let (broker, ha_retained) = check_broker(&config, metrics.as_deref(), timeout);
    checks.push(broker);
    checks.push(check_home_assistant(
        &config,
        metrics.as_deref(),
        ha_retained,
    ));
    checks.push(check_clock(&config));

    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if args.json {
        let out = serde_json::json!({ "ok": failed == 0, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} checks failed",
        checks.iter().filter(|c| c.status != Status::Skip).count()
    );
    Ok(())
}

fn show(ips: &[Ipv4Addr]) -> String {
    if ips.is_empty() {
        return "none found".into();
    }
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The devices' name resolves, at the resolver, to addresses of this host only.
fn check_dns(
    name: &str,
    resolver: Option<SocketAddr>,
    here: &[Ipv4Addr],
    timeout: Duration,
) -> Check {
    let title = format!("DNS {name}");
    let target = here.first().map_or_else(
        || "this host's LAN address".to_string(),
        ToString::to_string,
    );
    let record_fix = format!(
        "on the DNS server the devices use (your router, Pi-hole, AdGuard Home…), answer {name} \
         with {target}, then power-cycle the devices (docs/dns.md)"
    );
    let Some(resolver) = resolver else {
        return Check::fail(
            title,
            "no DNS server to ask (/etc/resolv.conf names none)",
            "give --resolver IP (the DNS server your router hands the devices)",
        );
    };
    match dns::lookup_a(resolver, name, timeout) {
        Err(e) => Check::fail(
            title,
            format!("asking {resolver}: {e}"),
            "give --resolver IP with the DNS server your router hands the devices",
        ),
        Ok(dns::Lookup::NoAddress) => Check::fail(
            title,
            format!("{resolver} has no address for it"),
            record_fix,
        ),
        Ok(dns::Lookup::Addresses(ips)) => {
            let elsewhere: Vec<Ipv4Addr> = ips
                .iter()
                .filter(|ip| !here.contains(ip))
                .copied()
                .collect();
            if here.is_empty() {
                Check::fail(
                    title,
                    format!(
                        "{resolver} answers {}; this host's addresses are unknown",
                        show(&ips)
                    ),
                    "give --address IP with the address devices should reach this host at",
                )
            } else if elsewhere.is_empty() {
                Check::pass(
                    title,
                    format!("{resolver} answers {} (this host)", show(&ips)),
                )
            } else {
                Check::fail(
                    title,
                    format!(
                        "{resolver} answers {}, and {} is not this host ({})",
                        show(&ips),
                        show(&elsewhere),
                        show(here)
                    ),
                    record_fix,
                )
            }
        }
    }
}

/// The certificate and key files: readable, a pair, the key private to its owner. Returns the
/// certificate (DER) for the port check to compare with what the server serves.
fn check_certificate(config: &Config) -> (Check, Option<Vec<u8>>) {
    const NAME: &str = "certificate";
    if config.plain {
        return (
            Check::skip(NAME, "devices are served plain TCP (plain = true): no TLS"),
            None,
        );
    }
    let (cert, key, own) = match (&config.cert, &config.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), true),
        _ => (
            config.state_dir.join("cert.pem"),
            config.state_dir.join("key.pem"),
            false,
        ),
    };
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let (cert_pem, key_pem) = match (read(&cert), read(&key)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) => {
            let fix = if own {
                "check the cert and key paths and that the service's user can read them".to_string()
            } else {
                format!(
                    "start cyncd serve once: it generates both in {} (or run doctor as the service's user)",
                    config.state_dir.display()
                )
            };
            return (Check::fail(NAME, e, fix), None);
        }
    };
    let parsed = openssl::x509::X509::from_pem(&cert_pem).and_then(|c| {
        let k = openssl::pkey::PKey::private_key_from_pem(&key_pem)?;
        Ok((c, k))
    });
    let (x509, pkey) = match parsed {
        Ok(pair) => pair,
        Err(e) => {
            return (
                Check::fail(
                    NAME,
                    format!("{} or {} is not PEM: {e}", cert.display(), key.display()),
                    "replace them with a PEM certificate and key (or delete both to have new ones generated)",
                ),
                None,
            );
        }
    };
    let matches = x509
        .public_key()
        .map(|public| public.public_eq(&pkey))
        .unwrap_or(false);
    if !matches {
        return (
            Check::fail(
                NAME,
                format!("{} does not belong to {}", key.display(), cert.display()),
                "use the key the certificate was made for (or delete both to have new ones generated)",
            ),
            None,
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&key) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return (
                    Check::fail(
                        NAME,
                        format!("{} is readable by others (mode {mode:o})", key.display()),
                        format!("chmod 600 {}", key.display()),
                    ),
                    None,
                );
            }
        }
    }
    let der = x509.to_der().ok();
    let until = x509.not_after().to_string();
    (
        Check::pass(
            NAME,
            format!(
                "{} and {} are a pair, valid until {until}",
                cert.display(),
                key.display()
            ),
        ),
        der,
    )
}

/// The device port answers on the addresses devices reach (TLS with our certificate, unless
/// plain).
fn check_port(
    config: &Config,
    here: &[Ipv4Addr],
    port: u16,
    timeout: Duration,
    cert: Option<&[u8]>,
) -> Check {
    let name = "device port";
    let listen = config.listen;
    let targets: Vec<Ipv4Addr> = match listen.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => {
            if here.contains(&ip) {
                vec![ip]
            } else {
                return Check::fail(
                    name,
                    format!(
                        "cyncd listens on {listen}, which devices cannot reach (this host: {})",
                        show(here)
                    ),
                    format!("listen = \"0.0.0.0:{DEVICE_PORT}\" in the configuration"),
                );
            }
        }
        _ => here.to_vec(),
    };
    if targets.is_empty() {
        return Check::fail(
            name,
            "this host's addresses are unknown",
            "give --address IP with the address devices should reach this host at",
        );
    }
    let mut problems = Vec::new();
    for ip in &targets {
        let addr = SocketAddr::new((*ip).into(), port);
        if let Err(e) = probe(addr, config.plain, timeout, cert) {
            problems.push(format!("{addr}: {e}"));
        }
    }
    let shown = targets
        .iter()
        .map(|ip| format!("{ip}:{port}"))
        .collect::<Vec<_>>()
        .join(", ");
    if problems.is_empty() {
        let how = if config.plain {
            "accepts plain TCP"
        } else {
            "answers TLS with the configured certificate"
        };
        return Check::pass(name, format!("{shown} {how}"));
    }
    let fix = if listen.port() == port {
        format!("start cyncd (systemctl start cyncd) and allow TCP {port} in this host's firewall")
    } else {
        format!(
            "devices connect to {port} but cyncd listens on {listen}: listen = \"0.0.0.0:{DEVICE_PORT}\", or forward {port} to {}",
            listen.port()
        )
    };
    Check::fail(name, problems.join("; "), fix)
}

/// Connects to `addr`; over TLS, completes a handshake and compares the served certificate.
fn probe(
    addr: SocketAddr,
    plain: bool,
    timeout: Duration,
    cert: Option<&[u8]>,
) -> Result<(), String> {
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    if plain {
        return Ok(());
    }
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(|e| e.to_string())?;
    // Devices do not verify the certificate; the comparison below is what matters here.
    builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let connector = builder.build();
    let configured = connector
        .configure()
        .map_err(|e| e.to_string())?
        .verify_hostname(false)
        .use_server_name_indication(true);
    let stream = configured
        .connect(DEVICE_NAMES[0], tcp)
        .map_err(|e| format!("no TLS handshake ({e})"))?;
    let served = stream
        .ssl()
        .peer_certificate()
        .and_then(|c| c.to_der().ok());
    match (cert, served) {
        (Some(want), Some(got)) if want != got.as_slice() => {
            Err("serves a different certificate than the configured one (another program on the port, or an old cyncd?)".into())
        }
        _ => Ok(()),
    }
}

/// The state directory can be written (or created).
fn check_state_dir(config: &Config) -> Check {
    let name = "state directory";
    let dir = &config.state_dir;
    if !dir.exists() {
        return match std::fs::create_dir_all(dir).and_then(|()| std::fs::remove_dir(dir)) {
            Ok(()) => Check::pass(
                name,
                format!("{} will be created at the first start", dir.display()),
            ),
            Err(e) => Check::fail(
                name,
                format!(
                    "{} does not exist and cannot be created: {e}",
                    dir.display()
                ),
                format!(
                    "mkdir -p {0} and give it to the service's user (the systemd unit's StateDirectory does this)",
                    dir.display()
                ),
            ),
        };
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"x").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => Check::pass(name, format!("{} is writable", dir.display())),
        Err(e) => Check::fail(
            name,
            format!("{} is not writable: {e}", dir.display()),
            format!(
                "give {} to the user cyncd runs as, or run doctor as that user",
                dir.display()
            ),
        ),
    }
}

/// Value of a metric sample without labels (`name value`) in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The running server answers, and at least one device is connected to it.
fn check_devices(client: &Client, api: &str, metrics: Option<&str>) -> Check {
    let name = "devices connected";
    let answer = match client.get("/api/connections") {
        Ok(a) => a,
        Err(e) => {
            return Check::fail(
                name,
                format!("cyncd does not answer at {api}: {e:#}"),
                "start it (cyncd serve, or systemctl start cyncd), or give --api with its HTTP address",
            );
        }
    };
    let list = match answer.ok() {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                name,
                format!("{api}: {e:#}"),
                "give --token-file with the server's api-token file (in its state directory)",
            );
        }
    };
    let connections = list.as_array().cloned().unwrap_or_default();
    if connections.is_empty() {
        let earlier = metrics
            .and_then(|m| sample(m, "cyncd_hellos_total"))
            .unwrap_or(0.0);
        let detail = if earlier > 0.0 {
            format!("none now ({earlier} hello(s) since cyncd started)")
        } else {
            "no device has connected since cyncd started".to_string()
        };
        return Check::fail(
            name,
            detail,
            "once the DNS lines above pass, switch the devices off and on (10 s at the breaker or plug) so they look the name up again (docs/dns.md)",
        );
    }
    let shown: Vec<String> = connections
        .iter()
        .take(5)
        .map(|c| {
            format!(
                "{} from {}",
                c.get("conn_id").and_then(|v| v.as_str()).unwrap_or("?"),
                c.get("peer").and_then(|v| v.as_str()).unwrap_or("?")
            )
        })
        .collect();
    let more = connections.len().saturating_sub(shown.len());
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Check::pass(
        name,
        format!(
            "{} Wi-Fi device(s) connected: {}{tail}",
            connections.len(),
            shown.join(", ")
        ),
    )
}

/// The broker accepts a connection with the configured credentials, and cyncd itself is
/// connected to it. Also reports whether Home Assistant's status topic holds a retained
/// `online`.
fn check_broker(config: &Config, metrics: Option<&str>, timeout: Duration) -> (Check, bool) {
    let name = "MQTT broker";
    let Some(url) = &config.mqtt.url else {
        return (
            Check::skip(
                name,
                "MQTT is off (no broker URL): Home Assistant does not see the devices",
            ),
            false,
        );
    };
    let broker = match crate::config::Broker::parse(url) {
        Ok(b) => b,
        Err(e) => return (Check::fail(name, e, "correct [mqtt] url"), false),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return (Check::fail(name, e.to_string(), "retry"), false),
    };
    let probe = runtime.block_on(mqtt_probe(config, &broker, timeout));
    match probe {
        Err(e) => (
            Check::fail(
                name,
                format!("{broker}: {e}"),
                "check that the broker runs and that [mqtt] url, username and password_file are right",
            ),
            false,
        ),
        Ok(retained) => {
            let cyncd_connected = metrics.and_then(|m| sample(m, "cyncd_mqtt_connected"));
            if cyncd_connected == Some(0.0) {
                return (
                    Check::fail(
                        name,
                        format!(
                            "{broker} accepts these credentials, but the running cyncd is not connected to it"
                        ),
                        "restart cyncd after fixing the configuration it runs with, and read its log (MQTT lines)",
                    ),
                    retained,
                );
            }
            let user = config
                .mqtt
                .username
                .clone()
                .or_else(|| broker.username.clone())
                .map_or_else(|| "anonymously".to_string(), |u| format!("as {u}"));
            (
                Check::pass(name, format!("{broker} accepts a connection {user}")),
                retained,
            )
        }
    }
}

/// Connects as its own client, subscribes to Home Assistant's status topic and to a private
/// echo topic, publishes to the echo topic and waits for it: a retained status arrives before
/// the echo. Returns whether the status was a retained `online`.
async fn mqtt_probe(
    config: &Config,
    broker: &crate::config::Broker,
    timeout: Duration,
) -> anyhow::Result<bool> {
    use rumqttc::{Event, Packet, QoS};
    let id = format!("cyncd-doctor-{}", std::process::id());
    let mut options = crate::frontends::mqtt::broker_options(&config.mqtt, broker, &id)?;
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let status_topic = format!("{}/status", config.mqtt.discovery_prefix);
    let echo = format!("{}/doctor/{id}", config.mqtt.base_topic);
    let mut retained_online = false;
    let work = async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client
                        .subscribe_many([
                            rumqttc::SubscribeFilter::new(status_topic.clone(), QoS::AtMostOnce),
                            rumqttc::SubscribeFilter::new(echo.clone(), QoS::AtMostOnce),
                        ])
                        .await?;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(echo.clone(), QoS::AtMostOnce, false, b"ping".to_vec())
                        .await?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == status_topic => {
                    retained_online |= p.retain && p.payload.as_ref() == b"online";
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == echo => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("no answer within {} s", timeout.as_secs_f64()),
    }
    let _ = client.disconnect().await;
    Ok(retained_online)
}

/// Home Assistant announced itself on its status topic since cyncd started (or the topic holds
/// a retained `online`).
fn check_home_assistant(config: &Config, metrics: Option<&str>, retained: bool) -> Check {
    let name = "Home Assistant";
    if config.mqtt.url.is_none() {
        return Check::skip(name, "MQTT is off");
    }
    let topic = format!("{}/status", config.mqtt.discovery_prefix);
    let births = metrics
        .and_then(|m| sample(m, "cyncd_mqtt_ha_births_total"))
        .unwrap_or(0.0);
    if births > 0.0 {
        return Check::pass(
            name,
            format!("announced itself on {topic} {births} time(s) since cyncd started"),
        );
    }
    if retained {
        return Check::pass(name, format!("{topic} holds a retained online"));
    }
    Check::fail(
        name,
        format!("no online on {topic} since cyncd started"),
        "make Home Assistant's MQTT integration use this broker, with its birth message on; it announces itself when it starts, so restart Home Assistant (or reload the MQTT integration) once cyncd runs",
    )
}

/// The clock is set, and the UTC offset the devices get.
fn check_clock(config: &Config) -> Check {
    let name = "clock";
    let now = chrono::Utc::now();
    if now.timestamp() < 1_704_067_200 {
        return Check::fail(
            name,
            format!("the clock says {}", now.format("%Y-%m-%d %H:%M UTC")),
            "set the clock (timedatectl set-ntp true): devices get their local time from cyncd",
        );
    }
    let minutes = config.offset_minutes();
    let sign = if minutes < 0 { '-' } else { '+' };
    let abs = minutes.unsigned_abs();
    let source = if config.utc_offset.is_some() {
        "from utc_offset in the configuration"
    } else if minutes == 0 {
        "from the system's time zone — set utc_offset if you are not on UTC; containers often are"
    } else {
        "from the system's time zone"
    };
    Check::pass(
        name,
        format!(
            "{}; devices get UTC{sign}{:02}:{:02} ({source})",
            now.format("%Y-%m-%d %H:%M UTC"),
            abs / 60,
            abs % 60
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_mark_and_the_fix() {
        assert_eq!(Check::pass("a", "fine").line(), "✓ a: fine");
        assert_eq!(
            Check::fail("b", "broken", "mend it").line(),
            "✗ b: broken — fix: mend it"
        );
        assert_eq!(Check::skip("c", "off").line(), "– c: off");
    }

    #[test]
    fn metric_samples_are_read_by_exact_name() {
        let text = "# HELP x\ncyncd_mqtt_connected 1\ncyncd_mqtt_connects_total 3\n";
        assert_eq!(sample(text, "cyncd_mqtt_connected"), Some(1.0));
        assert_eq!(sample(text, "cyncd_mqtt_connects_total"), Some(3.0));
        assert_eq!(sample(text, "cyncd_mqtt"), None);
    }

    #[test]
    fn resolvers_take_a_port_or_default_to_53() {
        assert_eq!(resolver("10.0.0.1"), Ok("10.0.0.1:53".parse().unwrap()));
        assert_eq!(
            resolver("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert!(resolver("dns.lan").is_err());
    }

    #[test]
    fn a_key_readable_by_others_fails() {
        let dir = std::env::temp_dir().join(format!("cyncd-doctor-cert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = crate::devices::tls::ensure_certificate(&dir, None, None).unwrap();
        let config = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        let (check, der) = check_certificate(&config);
        assert_eq!(check.status, Status::Pass, "{}", check.line());
        assert!(der.is_some());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (check, _) = check_certificate(&config);
        assert_eq!(check.status, Status::Fail);
        assert!(check.line().contains("chmod 600"), "{}", check.line());
        let missing = Config {
            state_dir: dir.join("nothing"),
            ..Config::default()
        };
        assert_eq!(check_certificate(&missing).0.status, Status::Fail);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
