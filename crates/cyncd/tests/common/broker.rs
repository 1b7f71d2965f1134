//! A private Mosquitto broker per test and a Home Assistant stand-in (a real MQTT client that
//! records every message), shared by the MQTT tests and the homes acceptance test. Without the
//! `mosquitto` binary a test says so and skips — except under CI (`CI` set), where it fails.

use super::temp_dir;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(15);

/// A private mosquitto: no persistence, anonymous, loopback only.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

pub fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Mosquitto {
    /// Starts a broker on `port` (a free one when `None`); `None` when mosquitto is missing.
    pub async fn start(port: Option<u16>) -> Option<Self> {
        Self::start_with(port, "").await
    }

    /// As [`Mosquitto::start`], with more configuration lines (another listener, say).
    pub async fn start_with(port: Option<u16>, extra: &str) -> Option<Self> {
        let Some(bin) = mosquitto_binary() else {
            let test = std::thread::current()
                .name()
                .unwrap_or("an MQTT test")
                .to_string();
            super::skip(
                &test,
                "mosquitto is not installed (apt-get install mosquitto)",
            );
            return None;
        };
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let dir = temp_dir("mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\npersistence false\nlog_dest none\nlistener {port} 127.0.0.1\nallow_anonymous true\n{extra}"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Self { child, port, dir };
        // Ready when it accepts connections.
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(broker)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What Home Assistant would see: the latest payload per topic (empty retained payloads
/// remove the topic) and how many messages each topic got.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub latest: BTreeMap<String, Vec<u8>>,
    pub count: BTreeMap<String, usize>,
    /// Every message in arrival order: (topic, empty payload), at most [`MAX_ORDER`].
    pub order: Vec<(String, bool)>,
}

/// Messages [`Seen::order`] keeps (later ones are not recorded there).
pub const MAX_ORDER: usize = 200_000;

impl Seen {
    pub fn json(&self, topic: &str) -> Option<Value> {
        self.latest
            .get(topic)
            .and_then(|p| serde_json::from_slice(p).ok())
    }
    pub fn text(&self, topic: &str) -> Option<String> {
        self.latest
            .get(topic)
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }
    pub fn count(&self, topic: &str) -> usize {
        self.count.get(topic).copied().unwrap_or(0)
    }
}

/// A Home Assistant stand-in: a real MQTT client subscribed to everything, re-subscribing
/// after every reconnect.
pub struct Ha {
    pub client: AsyncClient,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
}

impl Ha {
    pub async fn connect(port: u16) -> Self {
        let mut o = MqttOptions::new(format!("ha-{}", fastrand::u32(..)), "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, changed) = watch::channel(0u64);
        let (sub, record) = (client.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.subscribe("homeassistant/#", QoS::AtLeastOnce).await;
                        let _ = sub.subscribe("cync/#", QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        {
                            let mut s = record.lock().unwrap();
                            *s.count.entry(p.topic.clone()).or_default() += 1;
                            if s.order.len() < MAX_ORDER {
                                s.order.push((p.topic.clone(), p.payload.is_empty()));
                            }
                            if p.payload.is_empty() {
                                s.latest.remove(&p.topic);
                            } else {
                                s.latest.insert(p.topic.clone(), p.payload.to_vec());
                            }
                        }
                        tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            seen,
            changed,
        }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `check` holds for what was seen, failing after [`WAIT`] with `what`.
    pub async fn until(&mut self, what: &str, mut check: impl FnMut(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if check(&self.seen.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, self.changed.changed())
                .await
                .is_err()
            {
                panic!("not seen within {WAIT:?}: {what}");
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
}
