//! `cyncd sim` and `cyncd demo`: a simulated fleet against a server, and a server with a small
//! simulated home in one process.

use anyhow::Context as _;
use cync_sim::{Chaos, Fleet, FleetConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Run a fleet of simulated Cync bridges and mesh devices against a server.
///
/// Each bridge is a TLS client (plain with --plain) that speaks as real devices do, reconnects
/// with backoff, and answers commands; the devices record every command they apply. Stops after
/// --duration or on Ctrl-C and prints a summary. The seed is printed so a run can be replayed.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The server's device address.
    #[arg(long, default_value = "127.0.0.1:23779", value_name = "HOST:PORT")]
    server: String,
    /// Number of Wi-Fi bridges (connections).
    #[arg(long, default_value_t = 2, value_name = "N")]
    bridges: usize,
    /// Mesh devices behind each bridge (its own device included).
    #[arg(long, default_value_t = 6, value_name = "M")]
    devices_per_bridge: usize,
    /// Homes [default: as few as fit 250 devices each].
    #[arg(long, value_name = "H")]
    homes: Option<usize>,
    /// Chaos: a profile (none, lossy-ack, lossy-result, lossy-report, dup, slow, reject, stall,
    /// reset, storm, bytewise, garbage, mixed) or key=value pairs such as
    /// drop_ack=0.2,delay_report=10-200.
    #[arg(long, default_value = "none", value_name = "PROFILE")]
    chaos: String,
    /// Seed for every random choice [default: random, printed].
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Plain TCP instead of TLS.
    #[arg(long)]
    plain: bool,
    /// Serve the device-side truth at http://ADDR/sim/devices.
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Heartbeat period in seconds.
    #[arg(long, default_value_t = 20.0, value_name = "SECS")]
    heartbeat: f64,
    /// First bridge id, as 8 hex digits.
    #[arg(long, default_value = "51000000", value_name = "HEX")]
    id_base: String,
}

impl Args {
    fn fleet_config(&self) -> anyhow::Result<FleetConfig> {
        let chaos = Chaos::parse(&self.chaos).map_err(|e| anyhow::anyhow!("--chaos: {e}"))?;
        let id_base = u32::from_str_radix(self.id_base.trim_start_matches("0x"), 16)
            .context("--id-base: expected 8 hex digits")?;
        anyhow::ensure!(self.heartbeat > 0.0, "--heartbeat must be positive");
        Ok(FleetConfig {
            server: self.server.clone(),
            bridges: self.bridges,
            devices_per_bridge: self.devices_per_bridge,
            homes: self.homes,
            chaos,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
            plain: self.plain,
            heartbeat: Duration::from_secs_f64(self.heartbeat),
            id_base,
            ..FleetConfig::default()
        })
    }
}

/// Runs `cyncd sim`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let config = args.fleet_config()?;
    crate::logging::init(crate::config::LogFormat::Pretty, "warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut interrupts = Interrupts::install()?;
        println!(
            "cyncd sim: {} bridges × {} devices against {} ({}), chaos {:?}, seed {}",
            config.bridges,
            config.devices_per_bridge,
            config.server,
            if config.plain { "plain" } else { "TLS" },
            args.chaos,
            config.seed
        );
        let fleet = Arc::new(Fleet::start(config)?);
        if let Some(addr) = args.api {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--api {addr}"))?;
            println!("device truth at http://{}/sim/devices", listener.local_addr()?);
            let router = cync_sim::api::router(fleet.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
        let stop = interrupts.until(args.duration);
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        ticker.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticker.tick() => {
                    let s = fleet.summary();
                    println!("connected {}/{}, packets in {} out {}, commands {} applied {}", s.connected, s.bridges, s.packets_in, s.packets_out, s.commands, s.applied);
                    if s.connects == 0 && s.connect_failures > 0 {
                        println!("  no bridge has connected yet ({} attempts failed): is cyncd serve listening on {}?", s.connect_failures, args.server);
                    }
                }
            }
        }
        fleet.stop().await;
        let summary = fleet.summary();
        println!("{}", serde_json::to_string_pretty(&summary)?);
        anyhow::ensure!(
            summary.connects > 0 || summary.bridges == 0,
            "no bridge could connect to {} ({} attempts failed): is cyncd serve listening there{}?",
            args.server,
            summary.connect_failures,
            if args.plain { " with --plain" } else { " (over TLS; add --plain for a --plain server)" }
        );
        anyhow::Ok(())
    })
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from creation on, so a signal that comes while
/// the fleet is still starting is not lost to the default action (which would end the process
/// without its summary).
pub(crate) struct Interrupts {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves after `duration` seconds or at an interrupt, whichever comes first.
    pub(crate) async fn until(&mut self, duration: Option<f64>) {
        let timer = async {
            match duration {
                Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await,
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        tokio::select! {
            () = timer => {}
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            () = timer => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}

/// Start the controller and a small simulated home in one process, to see cyncd work without
/// hardware.
///
/// The home has 2 bridges and 12 mesh devices of every kind (plugs, dimmable, tunable-white
/// and RGB bulbs, a fan controller, switches), connected over TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address for the HTTP API, metrics and web page.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    http: SocketAddr,
    /// Address for device connections [default: a free port on 127.0.0.1].
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Publish the home to Home Assistant through this MQTT broker, e.g. mqtt://127.0.0.1:1883.
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
}

/// Runs `cyncd demo`.
pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    crate::logging::init(crate::config::LogFormat::Pretty, "info")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut interrupts = Interrupts::install()?;
        let state = std::env::temp_dir().join(format!("cyncd-demo-{}", std::process::id()));
        let config = crate::config::Config {
            listen: args.listen,
            http: args.http,
            state_dir: state.clone(),
            ..crate::config::Config::default()
        };
        let mut fleet_config = FleetConfig {
            bridges: 2,
            devices_per_bridge: 6,
            homes: Some(1),
            seed: fastrand::u64(..),
            heartbeat: Duration::from_secs(20),
            ..FleetConfig::default()
        };
        let mut config = crate::config::Config {
            homes: vec![demo_home(&fleet_config)?],
            ..config
        };
        config.mqtt.url.clone_from(&args.mqtt);
        config.validate()?;
        let running = crate::serve::start(config).await?;
        fleet_config.server = running.devices.to_string();
        let fleet = Fleet::start(fleet_config)?;
        let http = running.http;
        println!(
            "cyncd demo: a simulated home of 2 bridges and 12 devices is connecting to {}",
            running.devices
        );
        match &running.http_token {
            Some(token) => {
                println!("  web page:    http://{http}/#token={} (signs this browser in)", token.token);
                println!(
                    "  try:         cyncd set default:3 brightness 40 --api http://{http} --token-file {}",
                    token.path.display()
                );
            }
            None => {
                println!("  web page:    http://{http}/");
                println!("  try:         cyncd set default:3 brightness 40 --api http://{http}");
            }
        }
        println!("  devices:     http://{http}/api/devices (in a browser signed in by the link)");
        println!("  connections: http://{http}/api/connections");
        println!("  metrics:     http://{http}/metrics");
        if let Some(url) = &args.mqtt {
            println!(
                "  MQTT:        {url} (discovery under homeassistant/, states and commands under cync/)"
            );
        }
        println!("Ctrl-C to stop.");
        interrupts.until(args.duration).await;
        fleet.stop().await;
        running.shutdown().await;
        let _ = std::fs::remove_dir_all(&state);
        anyhow::Ok(())
    })
}

/// The configuration of a simulated home of one-home fleet: every device named and typed (the
/// bridges report only their own type), and the whole home as one group.
pub fn demo_home(fleet: &FleetConfig) -> anyhow::Result<crate::config::Home> {
    use cync_sim::mesh::Kind;
    let (homes, _) = cync_sim::fleet::build(fleet)?;
    let Some(home) = homes.first() else {
        anyhow::bail!("the simulated fleet has no home");
    };
    let devices: Vec<crate::config::DeviceConfig> = home
        .devices()
        .values()
        .map(|d| {
            let label = match d.kind {
                Kind::Plug => "Plug",
                Kind::Dimmable => "Dimmable bulb",
                Kind::TunableWhite => "White bulb",
                Kind::Rgb => "Colour bulb",
                Kind::Fan => "Fan",
                Kind::Switch => "Switch",
                Kind::DualPlug => "Outdoor plug",
                Kind::Thermostat => "Thermostat",
                Kind::Inert => "Sensor",
            };
            crate::config::DeviceConfig {
                id: d.id,
                name: Some(format!("{label} {}", d.id)),
                kind: Some(d.kind.type_code()),
                room: None,
                enabled: None,
            }
        })
        .collect();
    Ok(crate::config::Home {
        name: crate::config::DEFAULT_HOME.to_string(),
        bridges: Vec::new(),
        groups: vec![crate::config::GroupConfig {
            id: cync_sim::mesh::ALL_GROUP,
            name: "Whole home".into(),
            members: devices.iter().map(|d| d.id).collect(),
            room: None,
        }],
        devices,
    })
}
