//! The web page in a real headless Chromium, driven over the W3C WebDriver protocol by Debian's
//! `chromedriver`: the page loads with a simulated home, a click on a device's toggle changes
//! that device in the simulator's truth, and the page shows the new state within a second of
//! that change; a phone-size viewport loads without sideways scrolling. Screenshots go to
//! `target/web-artifacts/`.
//!
//! Needs `/usr/bin/chromedriver` and `/usr/bin/chromium` (`apt-get install chromium
//! chromium-driver`; `.ci/run` installs them), or `CYNCD_CHROMEDRIVER` and `CYNCD_CHROMIUM`.
//! Without them the test writes why on one line of stderr (shown without `--nocapture`) and
//! passes, unless `CI` is set, where it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use cync_sim::{Fleet, FleetConfig};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Debian's chromedriver, or `$CYNCD_CHROMEDRIVER`.
fn chromedriver() -> PathBuf {
    std::env::var_os("CYNCD_CHROMEDRIVER")
        .map_or_else(|| "/usr/bin/chromedriver".into(), PathBuf::from)
}

/// Debian's chromium, or `$CYNCD_CHROMIUM`.
fn chromium() -> PathBuf {
    std::env::var_os("CYNCD_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}
/// The page must show a device's new state this soon after the device changed.
const SHOW_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_controls_a_simulated_home_in_chromium() {
    let (driver_path, browser_path) = (chromedriver(), chromium());
    if !driver_path.exists() || !browser_path.exists() {
        let missing = format!(
            "{} or {} is missing (apt-get install chromium chromium-driver)",
            driver_path.display(),
            browser_path.display()
        );
        skip("the_page_controls_a_simulated_home_in_chromium", &missing);
        return;
    }
    let started = Instant::now();
    let artifacts = artifacts();

    // A controller and the demo's simulated home: 2 bridges, 12 named and typed devices.
    let mut fleet_config = FleetConfig {
        bridges: 2,
        devices_per_bridge: 6,
        homes: Some(1),
        seed: 77,
        heartbeat: Duration::from_secs(5),
        firmware_delay: Duration::from_millis(50),
        id_base: 0x6400_0000,
        ..FleetConfig::default()
    };
    let mut cfg = config("web-browser");
    cfg.homes = vec![cyncd::cli::sim::demo_home(&fleet_config).unwrap()];
    let server = start(cfg).await;
    fleet_config.server = server.devices.to_string();
    let fleet = Fleet::start(fleet_config).unwrap();
    until(&server, || {
        server.ctx.registry.device_count() == 12 && server.ctx.registry.connection_count() == 2
    })
    .await;
    let url = format!("http://{}/", server.http);

    let driver = Driver::start().await;
    let page = driver.session(&["--window-size=1280,1000"], None).await;
    page.goto(&url).await;
    // Signed out: the page shows only its sign-in form. A wrong token is refused; the right one
    // sets an HttpOnly cookie the page's script cannot read.
    page.until(
        "the page asks for the token",
        r#"return !document.querySelector('#login').hidden && document.querySelector('#live').dataset.state === 'offline';"#,
    )
    .await;
    assert_eq!(
        page.script("return document.querySelectorAll('article.card[data-device]').length;")
            .await,
        json!(0)
    );
    page.screenshot(&artifacts.join("login.png")).await;
    let token = server.http_token.as_ref().unwrap().token.clone();
    let input = page.find("#login-token").await;
    page.type_text(&input, "not-the-token-at-all").await;
    page.click(&page.find("#login-form button").await).await;
    page.until(
        "the page says the token is wrong",
        r#"return document.querySelector('#login-error').textContent === 'Wrong token.';"#,
    )
    .await;
    page.type_text(&input, &token).await;
    page.click(&page.find("#login-form button").await).await;
    page.until(
        "the sign-in form goes away",
        r#"return document.querySelector('#login').hidden;"#,
    )
    .await;
    let cookie = page.command("GET", "/cookie/cyncd_session", None).await;
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_ne!(cookie["value"], json!(token), "the cookie is not the token");
    assert_eq!(page.script("return document.cookie;").await, json!(""));
    // Loaded and live: every device under the home's one group, both bridges.
    let summary = page
        .until(
            "the page shows the simulated home",
            r#"
            const cards = document.querySelectorAll('.group[data-group="default:32769"] article.card[data-device]');
            const bridges = document.querySelectorAll('article.bridge');
            if (document.querySelector('#live').dataset.state !== 'live' || cards.length !== 12 || bridges.length !== 2) return null;
            const card = (id) => document.querySelector(`article.card[data-device="default:${id}"]`);
            const controls = (id) => Array.from(card(id).querySelectorAll('[data-ctl], .switch, .fan button')).map((e) => e.dataset.ctl || e.className || e.textContent);
            return {
              group: document.querySelector('.group[data-group="default:32769"] h4').textContent,
              names: Array.from(cards).map((c) => c.querySelector('h5').textContent),
              plug: controls(1), dimmable: controls(2), white: controls(3), colour: controls(4), fan: controls(5),
            };
            "#,
        )
        .await;
    assert_eq!(summary["group"], "Whole home");
    assert!(
        summary["names"]
            .as_array()
            .unwrap()
            .contains(&json!("Plug 1")),
        "{summary}"
    );
    // Controls fit each type.
    assert_eq!(summary["plug"], json!(["switch"]), "{summary}");
    assert_eq!(summary["dimmable"], json!(["switch", "brightness"]));
    assert_eq!(summary["white"], json!(["switch", "brightness", "kelvin"]));
    assert_eq!(
        summary["colour"],
        json!(["switch", "brightness", "kelvin", "rgb", "effect"])
    );
    assert_eq!(
        summary["fan"],
        json!(["switch", "off", "low", "medium", "high", "max"]),
        "{summary}"
    );
    // The canary panel shows the server's routing: reliable for everyone by default.
    page.until(
        "the canary panel shows the routing",
        r#"const e = document.querySelector('[data-canary="routing"]'); return e && e.textContent.includes('reliable') && e.textContent;"#,
    )
    .await;
    page.screenshot(&artifacts.join("desktop.png")).await;

    // A canary with a rollback is shown; odd shapes do not break the panel. The page's fetch
    // is stubbed for these two paths only.
    let shown = page
        .script(
            r#"
            const real = window.fetch;
            const answers = {
              'api/canary': {mode: 'canary', percent: 10, kill: false, latched: true,
                              connections: {legacy: 7, reliable: 1}},
              'api/slo': {slos: [{name: 'command_success', cohort: 'canary', compliance: 0.9991,
                                   budget_remaining: 0.42, events: 1200}],
                           decisions: [{at: '2026-01-02T03:04:05Z', decision: 'rollback',
                                        reason: 'command_success broke rule "fast"'}, 'hold at 10 %'],
                           last_rollback: {at: '2026-01-02T03:04:05Z', slo: 'command_success',
                                           rule: 'fast', reason: 'burn 20.0×'}},
            };
            window.fetch = (path, options) => path in answers
              ? Promise.resolve(new Response(JSON.stringify(answers[path]), {status: 200}))
              : real(path, options);
            const text = () => document.querySelector('#canary-out').textContent;
            return loadCanary().then(() => {
              const good = text();
              answers['api/canary'] = ['unexpected'];
              answers['api/slo'] = {slos: 'unexpected', decisions: 7};
              return loadCanary().then(() => { window.fetch = real; return [good, text()]; });
            });
            "#,
        )
        .await;
    let good = shown[0].as_str().unwrap();
    for part in [
        "canary",
        "10 %",
        "command_success",
        "99.910 %",
        "42.000 %",
        "2026-01-02T03:04:05Z",
        "hold at 10 %",
        "7 legacy · 1 reliable",
        "latched until re-enabled",
        "burn 20.0×",
        "rollback: command_success broke rule",
    ] {
        assert!(good.contains(part), "{part} missing: {good}");
    }
    assert!(
        shown[1].as_str().unwrap().contains("no SLOs defined"),
        "{shown}"
    );
    page.script("return loadCanary();").await;

    // A click on Plug 1's toggle changes the device; the page follows.
    let before = fleet.device("home0", 1).unwrap().on;
    let shown = page
        .script(
            r#"return document.querySelector('article.card[data-device="default:1"]').dataset.on;"#,
        )
        .await;
    assert_eq!(shown, json!(before.to_string()));
    let toggle = page
        .find(r#"article.card[data-device="default:1"] button.switch"#)
        .await;
    let clicked = Instant::now();
    page.click(&toggle).await;
    let deadline = clicked + Duration::from_secs(10);
    while fleet.device("home0", 1).unwrap().on == before {
        assert!(
            Instant::now() < deadline,
            "the simulator never saw the command"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let changed = Instant::now();
    let want = (!before).to_string();
    page.until_within(
        "the page shows the plug's new state",
        &format!(
            r#"const c = document.querySelector('article.card[data-device="default:1"]');
               return c.dataset.on === '{want}' && c.querySelector('.switch').getAttribute('aria-checked') === '{want}';"#
        ),
        changed + SHOW_WITHIN,
    )
    .await;
    let shown_after = changed.elapsed();
    eprintln!(
        "click to simulator: {:?}; simulator to page: {shown_after:?}",
        changed - clicked
    );
    assert!(shown_after < SHOW_WITHIN, "{shown_after:?}");

    // The outcome is shown with its command id; clicking it shows the trace in order.
    let last = page
        .until(
            "the card shows the command's outcome",
            r#"const p = document.querySelector('[data-last="device:default:1"]');
               return p && p.querySelector('[data-command]') ? p.textContent : null;"#,
        )
        .await;
    assert!(last.as_str().unwrap().starts_with("applied in "), "{last}");
    let link = page
        .find(r#"[data-last="device:default:1"] [data-command]"#)
        .await;
    page.click(&link).await;
    let events = page
        .until(
            "the trace view lists the command's events",
            r#"const rows = document.querySelectorAll('#trace-table tbody tr');
               return rows.length > 0 ? Array.from(rows).map((r) => r.dataset.event) : null;"#,
        )
        .await;
    let events: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"submitted"), "{events:?}");
    // In order: sent before the outcome (late acks or reports may follow it).
    let at = |name: &str| events.iter().position(|e| *e == name);
    assert!(
        at("sent").is_some() && at("sent") < at("outcome"),
        "{events:?}"
    );
    page.script("document.querySelector('#trace').scrollIntoView();")
        .await;
    page.screenshot(&artifacts.join("desktop-trace.png")).await;

    // A slider: White bulb 3 to 40 %.
    page.script(
        r#"const i = document.querySelector('article.card[data-device="default:3"] [data-ctl="brightness"]');
           i.value = 40; i.dispatchEvent(new Event('input')); i.dispatchEvent(new Event('change'));"#,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.device("home0", 3).unwrap().brightness != 40 {
        assert!(Instant::now() < deadline, "the brightness never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The group: "All on" reaches every device, and the group's count follows. (Back to the
    // top first: chromedriver does not scroll an element out from under the sticky header.)
    page.script("window.scrollTo({top: 0, behavior: 'instant'});")
        .await;
    let all_on = page
        .find(r#"[data-group="default:32769"] [data-action="group-on"]"#)
        .await;
    page.click(&all_on).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet.devices().iter().all(|d| d.on) {
        assert!(
            Instant::now() < deadline,
            "the group command never reached every device"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    page.until(
        "the group shows every device on",
        r#"return document.querySelector('[data-group="default:32769"] .count').textContent === '12 devices, 12 on';"#,
    )
    .await;
    // The per-bridge outcome counters reach the bridges panel.
    page.until(
        "a bridge shows its applied commands",
        r#"return Array.from(document.querySelectorAll('article.bridge .commands')).some((e) => /applied [1-9]/.test(e.textContent));"#,
    )
    .await;
    page.script("window.scrollTo(0, 0);").await;
    page.screenshot(&artifacts.join("desktop-after.png")).await;
    page.close().await;

    // A phone: 390×844 CSS pixels, no sideways scrolling.
    let phone = driver
        .session(
            &[],
            Some(json!({"width": 390, "height": 844, "pixelRatio": 3.0})),
        )
        .await;
    // A fresh browser signs in through a login link (as `cyncd demo` prints); the token leaves
    // the address bar at once.
    phone.goto(&format!("{url}#token={token}")).await;
    let fit = phone
        .until(
            "the phone page shows the home",
            r#"if (document.querySelectorAll('article.card[data-device]').length !== 12) return null;
               return {width: window.innerWidth, scroll: document.documentElement.scrollWidth};"#,
        )
        .await;
    assert_eq!(fit["width"], 390, "{fit}");
    assert_eq!(
        phone.script("return window.location.hash;").await,
        json!("")
    );
    assert!(fit["scroll"].as_u64().unwrap() <= 390, "{fit}");
    phone.screenshot(&artifacts.join("phone.png")).await;
    phone
        .script("document.querySelector('#bridges').scrollIntoView();")
        .await;
    phone.screenshot(&artifacts.join("phone-bridges.png")).await;
    phone.close().await;
    drop(driver);

    fleet.stop().await;
    server.shutdown().await;
    eprintln!(
        "browser test took {:?}; screenshots in {}",
        started.elapsed(),
        artifacts.display()
    );
}

/// The setup screen against a local server of the Cync account API's shapes: e-mail, a wrong
/// code (refused, with what to do), the right code, the preview of homes and rooms, save; then
/// the page shows the devices by room with their names, the dual plug's two outlets and the
/// thermostat's readings, and the homes file is written — without the password anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_screen_exports_the_cync_account_in_chromium() {
    use common::cync_api::{self, CyncApi};
    let (driver_path, browser_path) = (chromedriver(), chromium());
    if !driver_path.exists() || !browser_path.exists() {
        let missing = format!(
            "{} or {} is missing (apt-get install chromium chromium-driver)",
            driver_path.display(),
            browser_path.display()
        );
        assert!(std::env::var_os("CI").is_none(), "CI is set but {missing}");
        eprintln!("skipping the browser test: {missing}");
        return;
    }
    let artifacts = artifacts();
    let (homes, properties) = cync_api::account();
    let api = CyncApi::start(homes, properties).await;
    let mut cfg = config("web-setup");
    cfg.account.api_base = api.base.clone();
    cfg.account.timeout_secs = 5;
    let state = cfg.state_dir.clone();
    let server = start(cfg).await;
    let token = server.http_token.as_ref().unwrap().token.clone();
    let driver = Driver::start().await;
    let page = driver.session(&["--window-size=1280,1000"], None).await;
    page.goto(&format!("http://{}/#token={token}", server.http))
        .await;
    page.until(
        "the setup screen offers the e-mail step",
        r#"return !document.querySelector('#setup-email').hidden
             && document.querySelector('#setup-status').textContent.includes('No homes file yet')
             && !document.querySelector('#setup-hint').hidden;"#,
    )
    .await;
    page.script("document.querySelector('#setup').scrollIntoView();")
        .await;
    let email = page.find("#setup-email-input").await;
    page.type_text(&email, cync_api::EMAIL).await;
    page.click(&page.find("#setup-email button").await).await;
    page.until(
        "Cync e-mails a code",
        r#"return document.querySelector('#setup-message').textContent.includes('e-mailed a code')
             && !document.querySelector('#setup-login').hidden;"#,
    )
    .await;
    // A wrong code: refused, with what to do; nothing cached.
    let password = page.find("#setup-password").await;
    let code = page.find("#setup-code").await;
    page.type_text(&password, cync_api::PASSWORD).await;
    page.type_text(&code, "000000").await;
    page.click(&page.find("#setup-login button").await).await;
    let refused = page
        .until(
            "the wrong code is refused",
            r#"const m = document.querySelector('#setup-message');
               return m.classList.contains('bad') && m.textContent;"#,
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(refused.contains("Verification code error"), "{refused}");
    assert!(refused.contains("newest code"), "{refused}");
    assert!(!state.join("cync-account.json").exists());
    assert_eq!(
        page.script("return document.querySelector('#setup-password').value;")
            .await,
        json!(""),
        "the password field is cleared once sent"
    );
    // The right code.
    page.script("document.querySelector('#setup-code').value = '';")
        .await;
    page.type_text(&password, cync_api::PASSWORD).await;
    page.type_text(&code, cync_api::CODE).await;
    page.click(&page.find("#setup-login button").await).await;
    page.until(
        "logged in",
        r#"return document.querySelector('#setup-status').textContent.includes('Logged in to Cync as owner@example.com')
             && !document.querySelector('[data-step="read"]').hidden;"#,
    )
    .await;
    page.click(&page.find("#setup-read").await).await;
    let preview = page
        .until(
            "the preview shows the homes and rooms",
            r#"const home = document.querySelector('#setup-preview [data-home="Maple Street"]');
               if (!home || document.querySelector('[data-step="save"]').hidden) return null;
               return {
                 rooms: Array.from(home.querySelectorAll('[data-room]')).map((r) => r.dataset.room),
                 kitchen: Array.from(home.querySelectorAll('[data-room="Kitchen"] li')).map((l) => l.textContent),
                 text: document.querySelector('#setup-preview').textContent,
               };"#,
        )
        .await;
    assert_eq!(
        preview["rooms"],
        json!(["Kitchen", "Patio", "Living Room", ""]),
        "{preview}"
    );
    assert_eq!(
        preview["kitchen"],
        json!([
            "Kitchen Pendant — Full Color A19 Bulb",
            "Counter Strip — Dynamic Effects Premium Light Strip 16 ft"
        ]),
        "{preview}"
    );
    assert!(
        preview["text"].as_str().unwrap().contains("Old Apartment"),
        "the note about the home without properties: {preview}"
    );
    assert!(
        !state.join("homes.json").exists(),
        "nothing saved before Save"
    );
    page.screenshot(&artifacts.join("setup-preview.png")).await;
    page.click(&page.find("#setup-save").await).await;
    page.until(
        "saved",
        r#"return document.querySelector('#setup-message').textContent.startsWith('Saved: 2 home(s), 8 device(s), 4 room(s)');"#,
    )
    .await;
    // The page now shows the devices by room, named, with their outlets and readings.
    let shown = page
        .until(
            "the devices by room",
            r#"const room = (home, name) => document.querySelector(`.home[data-home="${home}"] [data-room="${name}"]`);
               const kitchen = room('Maple Street', 'Kitchen');
               const patio = room('Maple Street', 'Patio');
               const living = room('Maple Street', 'Living Room');
               if (!kitchen || !patio || !living) return null;
               const names = (r) => Array.from(r.querySelectorAll('article.card h5')).map((h) => h.textContent);
               const plug = patio.querySelector('article.card');
               const thermostat = document.querySelector('article.card[data-device="Maple Street:9"]');
               return {
                 kitchen: names(kitchen), patio: names(patio), living: names(living),
                 porch: names(room('Lake Cabin', 'Porch')),
                 outlets: Array.from(plug.querySelectorAll('.outlet')).map((o) => o.textContent),
                 plugSwitches: plug.querySelectorAll('.outlet .switch').length,
                 thermostatSwitches: thermostat.querySelectorAll('.switch').length,
                 readings: thermostat.querySelector('.readings').textContent,
                 model: thermostat.querySelector('.sub').textContent,
                 count: kitchen.querySelector('.count').textContent,
               };"#,
        )
        .await;
    assert_eq!(
        shown["kitchen"],
        json!(["Counter Strip", "Kitchen Pendant"]),
        "{shown}"
    );
    assert_eq!(
        shown["patio"],
        json!(["String Lights / Fountain"]),
        "{shown}"
    );
    assert_eq!(
        shown["living"],
        json!(["Ceiling Fan", "Hallway Thermostat"]),
        "{shown}"
    );
    assert_eq!(shown["porch"], json!(["Porch Light"]), "{shown}");
    assert_eq!(
        shown["outlets"],
        json!(["String Lights", "Fountain"]),
        "{shown}"
    );
    assert_eq!(shown["plugSwitches"], 2, "{shown}");
    assert_eq!(
        shown["thermostatSwitches"], 0,
        "a thermostat has no switch: {shown}"
    );
    assert_eq!(shown["readings"], "no reading yet", "{shown}");
    assert_eq!(shown["count"], "2 devices, 0 on, 2 not seen yet", "{shown}");
    assert!(
        shown["model"].as_str().unwrap().contains("Thermostat"),
        "{shown}"
    );
    page.script("window.scrollTo(0, 0);").await;
    page.screenshot(&artifacts.join("setup-saved.png")).await;
    page.close().await;
    drop(driver);

    // The homes file and the cached login are written; the password is in neither, and went
    // to Cync in the two login requests only.
    let file: Value =
        serde_json::from_slice(&std::fs::read(state.join("homes.json")).unwrap()).unwrap();
    assert_eq!(file["homes"][0]["name"], "Maple Street");
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(cync_api::PASSWORD),
                "{}",
                path.display()
            );
        }
    }
    let with_password = api
        .requests()
        .iter()
        .filter(|r| r.2.contains(cync_api::PASSWORD))
        .map(|r| r.1.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        with_password,
        ["user_auth/two_factor", "user_auth/two_factor"]
    );
    server.shutdown().await;
}

/// `target/web-artifacts/` in the workspace, created.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/web-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// A running chromedriver; its sessions are deleted and the process killed on drop.
struct Driver {
    addr: SocketAddr,
    child: std::process::Child,
    sessions: Arc<Mutex<Vec<String>>>,
    /// Browser profiles to remove at the end.
    profiles: Mutex<Vec<PathBuf>>,
}

impl Driver {
    async fn start() -> Self {
        // A free port: bind, read, release (chromedriver binds it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let driver = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            sessions: Arc::default(),
            profiles: Mutex::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, status)) = driver.request("GET", "/status", None).await {
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<(u16, Value)> {
        let (addr, path) = (self.addr, path.to_string());
        tokio::task::spawn_blocking(move || http(addr, method, &path, body.as_ref()))
            .await
            .unwrap()
    }

    /// A new browser session with a fresh profile; `mobile` is a device-metrics object for
    /// Chromium's mobile emulation.
    async fn session(&self, args: &[&str], mobile: Option<Value>) -> Session<'_> {
        let profile = temp_dir("chromium-profile");
        self.profiles.lock().unwrap().push(profile.clone());
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut options = json!({ "binary": chromium(), "args": args });
        if let Some(metrics) = mobile {
            options["mobileEmulation"] = json!({ "deviceMetrics": metrics });
        }
        let (status, answer) = self
            .request(
                "POST",
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": options,
                    }}
                })),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "new session: {answer}");
        let id = answer["value"]["sessionId"].as_str().unwrap().to_string();
        self.sessions.lock().unwrap().push(id.clone());
        Session { driver: self, id }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium is chromedriver's child: end the sessions first so no browser is left behind.
        for id in self.sessions.lock().unwrap().drain(..) {
            let _ = http(self.addr, "DELETE", &format!("/session/{id}"), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.profiles.lock().unwrap().drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One browser window.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Session<'_> {
    /// Runs a WebDriver command and returns its `value`, failing on any WebDriver error.
    async fn command(&self, method: &'static str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        let (status, answer) = self.driver.request(method, &path, body).await.unwrap();
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, body: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": [] })),
        )
        .await
    }

    /// Runs `body` until it returns something other than null or false; fails after 15 s.
    async fn until(&self, what: &str, body: &str) -> Value {
        self.until_within(what, body, Instant::now() + Duration::from_secs(15))
            .await
    }

    /// As [`Session::until`], failing at `deadline`.
    async fn until_within(&self, what: &str, body: &str, deadline: Instant) -> Value {
        loop {
            let value = self.script(body).await;
            if !value.is_null() && value != false {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    /// Clears an input and types `text` into it.
    async fn type_text(&self, element: &str, text: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, element: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", None).await;
        let bytes = base64(png.as_str().unwrap());
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, bytes).unwrap();
    }

    async fn close(self) {
        self.command("DELETE", "", None).await;
        self.driver
            .sessions
            .lock()
            .unwrap()
            .retain(|s| *s != self.id);
    }
}

/// One HTTP/1.1 request with a JSON body, blocking; returns the status and the JSON answer.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // Read by Content-Length (or chunks): chromedriver keeps the connection open regardless.
    let mut response = Vec::new();
    let mut buf = [0u8; 16384];
    let (status, body) = loop {
        let n = tcp.read(&mut buf)?;
        response.extend_from_slice(&buf[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            if n == 0 {
                return Err(std::io::Error::other("closed before the head"));
            }
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let body = &response[end + 4..];
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let complete = match length {
            Some(len) => body.len() >= len,
            None if head.contains("transfer-encoding: chunked") => {
                body.windows(5).any(|w| w == b"0\r\n\r\n")
            }
            None => n == 0,
        };
        if complete {
            let body = if length.is_none() && head.contains("transfer-encoding: chunked") {
                dechunk(body)
            } else {
                body[..length.unwrap_or(body.len()).min(body.len())].to_vec()
            };
            break (status, body);
        }
        if n == 0 {
            return Err(std::io::Error::other("closed before the end of the body"));
        }
    };
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(std::io::Error::other)?
    };
    Ok((status, value))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < line + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[(line + 4 + size).min(raw.len())..];
    }
    out
}

/// Standard base64 (WebDriver's screenshots).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGk="), b"hi");
    assert_eq!(base64("YWJj"), b"abc");
}
