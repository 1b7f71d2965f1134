//! The web page in a real headless Chromium, driven over the W3C WebDriver protocol by Debian's
//! `chromedriver`, with a simulated household (rooms, lights, plugs, a fan, a thermostat):
//!
//! - the household view at 360, 390, 1280 and 1920 CSS pixels wide: no element sticks out of
//!   its card (each control's box within its card's, and no text wider than its box:
//!   `scrollWidth <= clientWidth`), every control at least 44 px both ways, no sideways
//!   scrolling; screenshots of each width in `target/web-artifacts/`;
//! - a click on a device's switch changes that device in the simulator's truth, and the page
//!   shows the new state within a second of that change; a colour swatch, a slider and a room's
//!   group command reach the devices;
//! - the Operations view: bridges named by their devices, the command trace, the canary panel.
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
use cync_sim::{BridgeLayout, Fleet, FleetConfig, HomeLayout};
use cyncd::config::{DeviceConfig, GroupConfig, Home};
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

/// The household the browser test plays: (mesh id, Cync type, name, room).
const HOUSEHOLD: [(u16, u8, &str, Option<&str>); 12] = [
    (1, 30, "Floor Lamp", Some("Living Room")),
    (2, 5, "Reading Light", Some("Living Room")),
    (3, 81, "Ceiling Fan", Some("Living Room")),
    (4, 71, "TV Backlight", Some("Living Room")),
    (5, 5, "Pendant Lights", Some("Kitchen")),
    (6, 55, "Under-cabinet Lights", Some("Kitchen")),
    (7, 68, "Coffee Maker", Some("Kitchen")),
    (8, 30, "Bedside Lamp", Some("Bedroom")),
    (10, 67, "Patio Outlets", Some("Patio")),
    (11, 51, "Porch Light", Some("Patio")),
    (9, 224, "Hallway Thermostat", None),
    (12, 55, "Stairs", None),
];
/// The rooms (groups of the home) and the group of every device.
const ROOMS: [(u16, &str); 4] = [
    (32770, "Living Room"),
    (32771, "Kitchen"),
    (32772, "Bedroom"),
    (32773, "Patio"),
];
/// The simulator's group of all devices, shown as a group that is not a room.
const WHOLE_HOME: u16 = 0x8001;
/// The bridges: the floor lamp and the coffee maker reach the mesh; the thermostat is on Wi-Fi.
const BRIDGES: [(u32, u16); 3] = [(0x6400_0001, 1), (0x6400_0007, 7), (0x6400_0009, 9)];

/// The simulator's layout of [`HOUSEHOLD`] and the configuration naming it.
fn household() -> (Vec<HomeLayout>, Home) {
    let mesh: Vec<u16> = HOUSEHOLD
        .iter()
        .map(|d| d.0)
        .filter(|id| *id != 9)
        .collect();
    let layout = HomeLayout {
        name: "Maple Street".into(),
        devices: HOUSEHOLD.iter().map(|d| (d.0, d.1)).collect(),
        bridges: BRIDGES
            .iter()
            .map(|(id, own)| BridgeLayout {
                id: *id,
                own: *own,
                reach: if *own == 9 { vec![] } else { mesh.clone() },
            })
            .collect(),
    };
    let home = Home {
        name: "Maple Street".into(),
        bridges: BRIDGES.iter().map(|(id, _)| format!("{id:08x}")).collect(),
        devices: HOUSEHOLD
            .iter()
            .map(|(id, kind, name, _)| DeviceConfig {
                id: *id,
                name: Some((*name).into()),
                kind: Some(*kind),
                room: None,
                enabled: None,
            })
            .collect(),
        groups: ROOMS
            .iter()
            .map(|(gid, room)| GroupConfig {
                id: *gid,
                name: (*room).into(),
                members: HOUSEHOLD
                    .iter()
                    .filter(|d| d.3 == Some(*room))
                    .map(|d| d.0)
                    .collect(),
                room: None,
            })
            .chain([GroupConfig {
                id: WHOLE_HOME,
                name: "Whole home".into(),
                members: HOUSEHOLD.iter().map(|d| d.0).collect(),
                room: Some(false),
            }])
            .collect(),
    };
    (vec![layout], home)
}

/// The widths the household view must fit, as (width, height, phone).
const VIEWPORTS: [(u32, u32, bool); 4] = [
    (360, 740, true),
    (390, 844, true),
    (1280, 800, false),
    (1920, 1080, false),
];

/// Every visible element of each card, room head, group chip and the header against its box
/// (a control's box within its container's; text no wider than its own box), every control at
/// least 44×44 px, and no sideways scrolling. Returns the problems found.
const FIT: &str = r#"
const problems = [];
const label = (e) => {
  const card = e.closest('[data-device]');
  const cls = typeof e.className === 'string' && e.className ? '.' + e.className.trim().split(/\s+/).join('.') : '';
  return `${card ? card.dataset.device + ' ' : ''}${e.tagName.toLowerCase()}${cls} "${(e.textContent || e.getAttribute('aria-label') || '').trim().slice(0, 40)}"`;
};
const shown = (e) => {
  if (e.closest('[hidden]')) return false;
  const s = getComputedStyle(e);
  return s.display !== 'none' && s.visibility !== 'hidden' && e.getClientRects().length > 0;
};
const scope = document.querySelector(arguments[0]);
const boxes = [...scope.querySelectorAll('article.card, .room-head, .group-chip, .sheet-head, .sheet-section, .sheet-row')];
if (arguments[0] !== '#sheet') boxes.push(document.querySelector('.top'));
let checked = 0;
for (const box of boxes) {
  if (!shown(box)) continue;
  const b = box.getBoundingClientRect();
  for (const e of box.querySelectorAll('*')) {
    if (!(e instanceof HTMLElement) || !shown(e)) continue;
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    checked += 1;
    if (r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5) {
      problems.push(`${label(e)} [${Math.round(r.left)},${Math.round(r.top)},${Math.round(r.right)},${Math.round(r.bottom)}] sticks out of ${label(box)} [${Math.round(b.left)},${Math.round(b.top)},${Math.round(b.right)},${Math.round(b.bottom)}]`);
    }
    if (getComputedStyle(e).display !== 'inline' && e.scrollWidth > e.clientWidth) {
      problems.push(`${label(e)} is cut: ${e.scrollWidth} px of text in ${e.clientWidth} px`);
    }
  }
}
const controls = [...scope.querySelectorAll('button, input, select, .custom-colour')];
if (arguments[0] !== '#sheet') controls.push(...document.querySelectorAll('.tabs a'));
for (const e of controls) {
  if (!shown(e) || e.closest('.custom-colour') && e.tagName === 'INPUT' || e.classList.contains('link')) continue;
  const r = e.getBoundingClientRect();
  if (r.width < 44 || r.height < 44) problems.push(`${label(e)} is ${Math.round(r.width)}×${Math.round(r.height)} px, under 44×44`);
}
if (document.documentElement.scrollWidth > window.innerWidth) {
  problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px in ${window.innerWidth}`);
}
return {problems, checked, boxes: boxes.length};
"#;

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

    // A controller and a simulated household: 3 bridges, 12 named devices in 4 rooms.
    let (layout, home) = household();
    let mut cfg = config("web-browser");
    cfg.homes = vec![home];
    let server = start(cfg).await;
    let fleet = Fleet::start(FleetConfig {
        server: server.devices.to_string(),
        heartbeat: Duration::from_secs(5),
        firmware_delay: Duration::from_millis(50),
        layout: Some(layout),
        seed: 77,
        ..FleetConfig::default()
    })
    .unwrap();
    until(&server, || {
        server.ctx.registry.device_count() == 12 && server.ctx.registry.connection_count() == 3
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
    page.viewport(1280, 800, false).await;
    page.screenshot(&artifacts.join("login-1280x800.png")).await;
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

    // Loaded and live: the household by room, by name, with the controls each type has.
    let summary = page
        .until(
            "the page shows the household",
            r#"
            const cards = document.querySelectorAll('#view-home article.card[data-device]');
            if (document.querySelector('#live').dataset.state !== 'live' || cards.length !== 12) return null;
            if (document.querySelectorAll('#view-home article.card[data-online="true"]').length !== 12) return null;
            const card = (id) => document.querySelector(`article.card[data-device="Maple Street:${id}"]`);
            const controls = (id) => Array.from(card(id).querySelectorAll('[data-ctl]:not([data-ctl="open"]):not([data-ctl="state"])'))
              .map((e) => e.dataset.ctl);
            const rooms = Array.from(document.querySelectorAll('#view-home .room')).map((r) =>
              [r.dataset.room, Array.from(r.querySelectorAll('article.card .name')).map((n) => n.textContent)]);
            return {
              title: document.querySelector('.home-title').textContent,
              rooms,
              groups: Array.from(document.querySelectorAll('.group-chip .group-name')).map((g) => g.textContent),
              hexIds: document.querySelector('#view-home').textContent.match(/\b[0-9a-f]{8}\b|#[0-9a-f]{6}\b/gi),
              rgb: controls(1), white: controls(2), fan: controls(3), strip: controls(4), dimmer: controls(6),
              plug: controls(7), outlets: controls(10), thermostat: controls(9),
              readings: card(9).querySelector('.readings').textContent,
              count: document.querySelector('[data-room="Living Room"] .count').textContent,
            };
            "#,
        )
        .await;
    assert_eq!(summary["title"], "Maple Street", "{summary}");
    assert_eq!(
        summary["rooms"],
        json!([
            [
                "Living Room",
                ["Ceiling Fan", "Floor Lamp", "Reading Light", "TV Backlight"]
            ],
            [
                "Kitchen",
                ["Coffee Maker", "Pendant Lights", "Under-cabinet Lights"]
            ],
            ["Bedroom", ["Bedside Lamp"]],
            ["Patio", ["Patio Outlets", "Porch Light"]],
            ["Other", ["Hallway Thermostat", "Stairs"]],
        ]),
        "{summary}"
    );
    assert_eq!(summary["groups"], json!(["Whole home"]));
    assert_eq!(
        summary["hexIds"],
        Value::Null,
        "no hex ids or colour codes: {summary}"
    );
    // Controls fit each type: the colour and white of lights behind a swatch of their colour.
    assert_eq!(
        summary["rgb"],
        json!(["power", "brightness", "colour"]),
        "{summary}"
    );
    assert_eq!(summary["white"], json!(["power", "brightness", "colour"]));
    assert_eq!(summary["strip"], json!(["power", "brightness", "colour"]));
    assert_eq!(summary["dimmer"], json!(["power", "brightness"]));
    assert_eq!(summary["plug"], json!(["power"]));
    assert_eq!(summary["outlets"], json!(["outlet", "outlet"]));
    assert_eq!(summary["thermostat"], json!(["readings"]));
    assert_eq!(summary["fan"], json!(["power", "fan"]), "{summary}");
    assert!(
        summary["readings"].as_str().unwrap().contains("71.6 °F"),
        "{summary}"
    );
    assert_eq!(summary["count"], "0 of 4 on", "{summary}");

    // A lived-in state: some lights on in colours and whites, the fan at medium, a plug on.
    for (id, body) in [
        (
            1,
            json!({"on": true, "brightness": 90, "rgb": [255, 120, 0]}),
        ),
        (2, json!({"on": true, "brightness": 70, "color_temp": 20})),
        (3, json!({"on": true, "fan_speed": 50})),
        (
            4,
            json!({"on": true, "brightness": 60, "rgb": [140, 50, 255]}),
        ),
        (5, json!({"on": true, "brightness": 80, "color_temp": 60})),
        (7, json!({"on": true})),
        (10, json!({"outlet": 1, "on": true})),
    ] {
        let (status, answer) = post(
            &server,
            &format!("/api/devices/Maple%20Street:{id}/state"),
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{id}: {answer}");
    }
    page.until(
        "the page shows the lived-in state",
        r#"const card = (id) => document.querySelector(`article.card[data-device="Maple Street:${id}"]`);
           const text = (id) => card(id).querySelector('[data-ctl="state"]').textContent;
           return text(1) === '90 % · Orange'
             && text(2) === '70 % · Warm white'
             && card(2).querySelector('[data-ctl="colour"]').getAttribute('aria-label') === 'Reading Light colour: Warm white, 3000 K'
             && text(3) === 'Medium'
             && card(3).querySelector('[data-ctl="fan"]').getAttribute('aria-valuetext') === 'Medium'
             && card(10).querySelector('[data-ctl="state"]').textContent === 'Left outlet on · Right outlet off'
             && document.querySelector('[data-room="Living Room"] .count').textContent === '4 of 4 on';"#,
    )
    .await;
    // Colour is shown as colour: the swatch and the icon are the light's orange (the icon fades
    // to it).
    page.until(
        "the floor lamp's colour",
        r#"const card = document.querySelector('article.card[data-device="Maple Street:1"]');
           const want = 'rgb(255, 120, 0)';
           return getComputedStyle(card.querySelector('[data-ctl="colour"] .swatch')).backgroundColor === want
             && getComputedStyle(card.querySelector('.icon')).backgroundColor === want;"#,
    )
    .await;

    // Every width: nothing sticks out of its card, nothing is cut, every target is finger
    // sized, no sideways scrolling.
    for (width, height, phone) in VIEWPORTS {
        page.viewport(width, height, phone).await;
        let fit = page.script_args(FIT, json!(["#view-home"])).await;
        assert!(
            fit["checked"].as_u64().unwrap() > 200,
            "the check saw too little: {fit}"
        );
        assert_eq!(fit["problems"], json!([]), "at {width}×{height}: {fit}");
        page.screenshot(&artifacts.join(format!("household-{width}x{height}.png")))
            .await;
        page.full_screenshot(&artifacts.join(format!("household-{width}-full.png")))
            .await;
    }

    // Dark colours, same layout.
    page.cdp(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    )
    .await;
    page.viewport(390, 844, true).await;
    page.until(
        "dark colours",
        r#"return getComputedStyle(document.body).backgroundColor === 'rgb(17, 20, 23)';"#,
    )
    .await;
    let fit = page.script_args(FIT, json!(["#view-home"])).await;
    assert_eq!(fit["problems"], json!([]), "dark: {fit}");
    page.screenshot(&artifacts.join("household-dark-390x844.png"))
        .await;
    page.cdp(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
    )
    .await;

    // The colour sheet, opened by a tap on the swatch on a phone and by the keyboard (Enter on
    // the lamp's name) on a desktop: a swatch turns the floor lamp red, and its card says so.
    for (width, height, phone) in [(390, 844, true), (1280, 800, false)] {
        page.viewport(width, height, phone).await;
        page.script("window.scrollTo(0, 0);").await;
        let opener = if phone { "colour" } else { "open" };
        let opener_css =
            format!(r#"article.card[data-device="Maple Street:1"] [data-ctl="{opener}"]"#);
        if phone {
            page.click(&page.find(&opener_css).await).await;
        } else {
            page.script_args(
                "document.querySelector(arguments[0]).focus();",
                json!([opener_css]),
            )
            .await;
            page.keys("\u{E007}").await;
        }
        let sheet = page
            .until(
                "the sheet opens",
                r#"const s = document.querySelector('#sheet');
                   if (!s.open) return null;
                   return {
                     title: s.querySelector('h2').textContent,
                     sections: Array.from(s.querySelectorAll('.sheet-section h3')).map((h) => h.textContent),
                     controls: Array.from(s.querySelectorAll('[data-ctl="kelvin"], [data-rgb], [data-kelvin], [data-ctl="rgb-custom"], [data-ctl="effect"]')).map((e) => e.dataset.ctl || e.getAttribute('aria-label')),
                     focused: document.activeElement && document.activeElement.closest('#sheet') !== null,
                   };"#,
            )
            .await;
        assert_eq!(sheet["title"], "Floor Lamp");
        assert_eq!(
            sheet["sections"],
            json!(["Brightness", "White", "Colour", "Effect", "About"]),
            "{sheet}"
        );
        assert!(
            sheet["focused"].as_bool().unwrap(),
            "focus moves into the sheet"
        );
        let controls = sheet["controls"].as_array().unwrap();
        for want in [
            "kelvin",
            "Red",
            "Blue",
            "Warm white, 2700 K",
            "rgb-custom",
            "effect",
        ] {
            assert!(controls.contains(&json!(want)), "{want}: {sheet}");
        }
        let fit = page.script_args(FIT, json!(["#sheet"])).await;
        assert_eq!(
            fit["problems"],
            json!([]),
            "the sheet at {width}×{height}: {fit}"
        );
        if width == 390 {
            page.click(&page.find(r##"#sheet [data-rgb="#ff0000"]"##).await)
                .await;
            let deadline = Instant::now() + Duration::from_secs(10);
            while fleet.device("Maple Street", 1).unwrap().rgb != [255, 0, 0] {
                assert!(Instant::now() < deadline, "the colour never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            page.until(
                "the sheet shows red",
                r##"return document.querySelector('#sheet [data-rgb="#ff0000"]').getAttribute('aria-pressed') === 'true'
                     && document.querySelector('article.card[data-device="Maple Street:1"] [data-ctl="state"]').textContent === '90 % · Red';"##,
            )
            .await;
        }
        page.screenshot(&artifacts.join(format!("sheet-{width}x{height}.png")))
            .await;
        // Escape closes it and gives the focus back to what opened it.
        page.keys("\u{E00C}").await;
        page.until(
            "the sheet closes",
            &format!(
                r#"return !document.querySelector('#sheet').open
                     && document.activeElement.dataset.ctl === '{opener}';"#
            ),
        )
        .await;
    }

    // A click on the coffee maker's switch changes the device; the page follows.
    page.script("window.scrollTo(0, 0);").await;
    let before = fleet.device("Maple Street", 7).unwrap().on;
    let toggle = page
        .find(r#"article.card[data-device="Maple Street:7"] button.switch"#)
        .await;
    let clicked = Instant::now();
    page.click(&toggle).await;
    let deadline = clicked + Duration::from_secs(10);
    while fleet.device("Maple Street", 7).unwrap().on == before {
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
            r#"const c = document.querySelector('article.card[data-device="Maple Street:7"]');
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

    // The outcome is shown under the card; its details are the command's trace, in the
    // Operations view.
    let last = page
        .until(
            "the card shows the command's outcome",
            r#"const p = document.querySelector('article.card [data-last="device:Maple Street:7"]');
               return p && p.querySelector('[data-command]') ? p.textContent : null;"#,
        )
        .await;
    assert!(last.as_str().unwrap().starts_with("Done in "), "{last}");
    let link = page
        .find(r#"article.card [data-last="device:Maple Street:7"] [data-command]"#)
        .await;
    page.click(&link).await;
    let events = page
        .until(
            "the trace view lists the command's events",
            r#"const rows = document.querySelectorAll('#trace-table tbody tr');
               if (document.querySelector('#view-operations').hidden || !document.querySelector('#view-home').hidden) return null;
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
    assert_eq!(
        page.script("return window.location.hash;").await,
        json!("#trace")
    );
    page.screenshot(&artifacts.join("operations-trace-1280x800.png"))
        .await;

    // The bridges, named by their own devices; the canary panel with the server's routing.
    let bridges = page
        .until(
            "the bridges are named",
            r#"const names = Array.from(document.querySelectorAll('article.bridge h3')).map((h) => h.textContent);
               return names.length === 3 ? names : null;"#,
        )
        .await;
    assert_eq!(
        bridges,
        json!(["Coffee Maker", "Floor Lamp", "Hallway Thermostat"])
    );
    page.until(
        "the canary panel shows the routing",
        r#"const e = document.querySelector('[data-canary="routing"]'); return e && e.textContent.includes('reliable') && e.textContent;"#,
    )
    .await;
    page.until(
        "the decode errors panel",
        r#"return document.querySelector('[data-decode="none"]') !== null;"#,
    )
    .await;

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

    // Back home through the tab, by keyboard: a slider, then the whole home's group.
    let tab = page.find(r#".tabs a[data-tab="home"]"#).await;
    page.click(&tab).await;
    page.until(
        "the home view is back",
        r#"return !document.querySelector('#view-home').hidden && document.querySelector('#view-operations').hidden;"#,
    )
    .await;
    page.script(
        r#"const i = document.querySelector('article.card[data-device="Maple Street:6"] [data-ctl="brightness"]');
           i.value = 40; i.dispatchEvent(new Event('input')); i.dispatchEvent(new Event('change'));"#,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.device("Maple Street", 6).unwrap().brightness != 40 {
        assert!(Instant::now() < deadline, "the brightness never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    page.script("window.scrollTo({top: 0, behavior: 'instant'});")
        .await;
    let all_on = page
        .find(r#".group-chip[data-group="Maple Street:32769"] [data-action="group-on"]"#)
        .await;
    page.click(&all_on).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet
        .devices()
        .iter()
        .filter(|d| d.kind != cync_sim::Kind::Thermostat)
        .all(|d| d.on)
    {
        assert!(
            Instant::now() < deadline,
            "the group command never reached every device"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    page.until(
        "every room shows its devices on",
        r#"return Array.from(document.querySelectorAll('.count')).map((c) => c.textContent).join('|')
             === '4 of 4 on|3 of 3 on|1 of 1 on|2 of 2 on|1 of 1 on';"#,
    )
    .await;
    // The per-bridge outcome counters reach the bridges panel.
    page.until(
        "a bridge shows its applied commands",
        r#"return Array.from(document.querySelectorAll('article.bridge .commands')).some((e) => /applied [1-9]/.test(e.textContent));"#,
    )
    .await;
    page.viewport(1280, 800, false).await;
    page.script("window.scrollTo(0, 0);").await;
    page.screenshot(&artifacts.join("household-all-on-1280x800.png"))
        .await;
    page.script("window.location.hash = '#operations';").await;
    page.until(
        "operations",
        r#"return !document.querySelector('#view-operations').hidden;"#,
    )
    .await;
    page.screenshot(&artifacts.join("operations-1280x800.png"))
        .await;
    page.viewport(390, 844, true).await;
    page.screenshot(&artifacts.join("operations-390x844.png"))
        .await;
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
    page.viewport(1280, 800, false).await;
    page.goto(&format!("http://{}/#token={token}", server.http))
        .await;
    // The home view says where names come from; its link opens the Set up view.
    page.until(
        "the hint to set up",
        r#"return !document.querySelector('#setup-hint').hidden;"#,
    )
    .await;
    page.click(&page.find("#setup-hint a").await).await;
    page.until(
        "the setup screen offers the e-mail step",
        r#"return !document.querySelector('#setup-email').hidden
             && document.querySelector('#setup-status').textContent.includes('No homes file yet')
             && !document.querySelector('#view-setup').hidden
             && document.querySelector('#view-home').hidden;"#,
    )
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
    page.screenshot(&artifacts.join("setup-preview-1280x800.png"))
        .await;
    page.click(&page.find("#setup-save").await).await;
    page.until(
        "saved",
        r#"return document.querySelector('#setup-message').textContent.startsWith('Saved: 2 home(s), 8 device(s), 4 room(s)');"#,
    )
    .await;
    // The page now shows the devices by room, named, with their outlets and readings.
    page.click(&page.find(r#".tabs a[data-tab="home"]"#).await)
        .await;
    let shown = page
        .until(
            "the devices by room",
            r#"const room = (home, name) => document.querySelector(`.home[data-home="${home}"] [data-room="${name}"]`);
               const kitchen = room('Maple Street', 'Kitchen');
               const patio = room('Maple Street', 'Patio');
               const living = room('Maple Street', 'Living Room');
               if (!kitchen || !patio || !living) return null;
               const names = (r) => Array.from(r.querySelectorAll('article.card .name')).map((h) => h.textContent);
               const plug = patio.querySelector('article.card');
               const thermostat = document.querySelector('article.card[data-device="Maple Street:9"]');
               return {
                 kitchen: names(kitchen), patio: names(patio), living: names(living),
                 porch: names(room('Lake Cabin', 'Porch')),
                 outlets: Array.from(plug.querySelectorAll('.outlet')).map((o) => o.textContent),
                 state: plug.querySelector('[data-ctl="state"]').textContent,
                 plugSwitches: plug.querySelectorAll('.outlet .switch').length,
                 thermostatSwitches: thermostat.querySelectorAll('.switch').length,
                 readings: thermostat.querySelector('.readings').textContent,
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
    assert_eq!(shown["state"], "Not seen yet", "{shown}");
    assert_eq!(shown["count"], "0 of 2 on, 2 not seen yet", "{shown}");
    // The thermostat's sheet tells what it is.
    page.click(
        &page
            .find(r#"article.card[data-device="Maple Street:9"] [data-ctl="open"]"#)
            .await,
    )
    .await;
    let about = page
        .until(
            "the thermostat's sheet",
            r#"const s = document.querySelector('#sheet');
               return s.open ? s.querySelector('[data-ctl="details"]').textContent : null;"#,
        )
        .await;
    assert!(
        about.as_str().unwrap().contains("ProductThermostat")
            && about.as_str().unwrap().contains("RoomLiving Room"),
        "{about}"
    );
    page.keys("\u{E00C}").await;
    page.until(
        "the sheet closes",
        r#"return !document.querySelector('#sheet').open;"#,
    )
    .await;
    // Two homes, outlets and a thermostat fit too.
    for (width, height, phone) in [(1280, 800, false), (390, 844, true)] {
        page.viewport(width, height, phone).await;
        page.script("window.scrollTo(0, 0);").await;
        let fit = page.script_args(FIT, json!(["#view-home"])).await;
        assert_eq!(fit["problems"], json!([]), "at {width}×{height}: {fit}");
        page.screenshot(&artifacts.join(format!("setup-saved-{width}x{height}.png")))
            .await;
    }
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
        self.script_args(body, json!([])).await
    }

    /// Runs `body` with `arguments` set to `args`.
    async fn script_args(&self, body: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": args })),
        )
        .await
    }

    /// A Chrome DevTools Protocol command, through chromedriver.
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// Makes the page `width`×`height` CSS pixels (a phone: touch-sized, at 2 device pixels per
    /// CSS pixel), and waits until it has laid itself out at that width.
    async fn viewport(&self, width: u32, height: u32, phone: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width, "height": height, "mobile": phone,
                "deviceScaleFactor": if phone { 2 } else { 1 },
            }),
        )
        .await;
        self.until(
            "the new viewport",
            &format!("return window.innerWidth === {width} && window.innerHeight === {height};"),
        )
        .await;
    }

    /// Presses and releases one key (a WebDriver key code such as `\u{E00C}`, Escape).
    async fn keys(&self, key: &str) {
        self.command(
            "POST",
            "/actions",
            Some(
                json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
            ),
        )
        .await;
        self.command("DELETE", "/actions", None).await;
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

    /// The whole page, beyond the viewport.
    async fn full_screenshot(&self, path: &Path) {
        let size = self
            .script("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];")
            .await;
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}}),
            )
            .await;
        let bytes = base64(shot["data"].as_str().unwrap());
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
