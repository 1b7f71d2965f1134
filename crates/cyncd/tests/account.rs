//! `cyncd account` as a user runs it, against a local server that serves the Cync account API's
//! documented shapes: log in (e-mail, password file, the one-time code on stdin), export,
//! import a cync_mesh.yaml; and every failure — a wrong code, an expired login (4031021), an
//! error body with HTTP 200, an account without named homes, missing fields, a server that
//! never answers, one that closes, one that is not there — says what to do, writes nothing and
//! leaves the previous homes file as it was.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::cync_api::{self, CyncApi, Mode};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `cyncd account <args>` with `stdin`, off the runtime (the fake serves meanwhile).
async fn account(args: Vec<String>, stdin: &str) -> Output {
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyncd"))
            .arg("account")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn args(list: &[&str], state: &Path, api: &str) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.extend([
        "--state-dir".into(),
        state.display().to_string(),
        "--api-base".into(),
        api.into(),
        "--timeout".into(),
        "2".into(),
    ]);
    v
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let file = dir.join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    file
}

async fn login(state: &Path, api: &str, code: &str) -> Output {
    let pw = password_file(state.parent().unwrap(), cync_api::PASSWORD);
    let list = [
        "login",
        "--email",
        cync_api::EMAIL,
        "--password-file",
        pw.to_str().unwrap(),
    ];
    account(args(&list, state, api), &format!("{code}\n")).await
}

fn homes(state: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state.join("homes.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn login_then_export_writes_the_homes_file_and_keeps_the_previous() {
    let (list, props) = cync_api::account();
    let api = CyncApi::start(list, props).await;
    let state = common::temp_dir("account-export").join("state");
    let out = login(&state, &api.base, cync_api::CODE).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Logged in as owner@example.com"),
        "{}",
        text(&out)
    );
    let token = state.join("cync-account.json");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The password went to the login request and nowhere else.
    let cached = std::fs::read_to_string(&token).unwrap();
    assert!(!cached.contains(cync_api::PASSWORD));
    assert!(!text(&out).contains(cync_api::PASSWORD));
    let requests = api.requests();
    assert_eq!(requests[0].1, "two_factor/email/verifycode");
    assert!(requests[1].2.contains(cync_api::PASSWORD));
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.2.contains(cync_api::PASSWORD))
            .count(),
        1
    );

    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("2 home(s), 8 device(s), 4 room(s)"),
        "{shown}"
    );
    assert!(
        shown.contains("Old Apartment") && shown.contains("4041009"),
        "{shown}"
    );
    assert!(shown.contains("empty home(s) without a name"), "{shown}");
    let file = homes(&state);
    let main = &file["homes"][0];
    assert_eq!(main["name"], "Maple Street");
    let names: Vec<&str> = main["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Kitchen Pendant",
            "Counter Strip",
            "Ceiling Fan",
            "String Lights / Fountain",
            "Hallway Thermostat",
            "device 12"
        ]
    );
    let pendant = &main["devices"][0];
    assert_eq!(pendant["bridge"], "6efe3cbe");
    assert_eq!(pendant["auth_code"], "a1b2c3d4e5f60718");
    assert_eq!(
        main["devices"][3]["outlets"],
        serde_json::json!(["String Lights", "Fountain"])
    );
    assert_eq!(
        main["devices"][4]["extra"]["hvacSystem"]["type"],
        "heatpump"
    );
    let mode = std::fs::metadata(state.join("homes.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!state.join("homes.json.previous").exists());

    // The cached login is reused; a second export keeps the first as the previous version.
    let before = std::fs::read(state.join("homes.json")).unwrap();
    let logins = api.requests().len();
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !api.requests()[logins..]
            .iter()
            .any(|r| r.1.starts_with("user_auth"))
    );
    assert_eq!(
        std::fs::read(state.join("homes.json.previous")).unwrap(),
        before
    );
}

#[tokio::test]
async fn a_wrong_code_says_to_use_the_newest_and_caches_nothing() {
    let (list, props) = cync_api::account();
    let api = CyncApi::start(list, props).await;
    let state = common::temp_dir("account-code").join("state");
    let out = login(&state, &api.base, "000000").await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("Cync refused the login: Verification code error (code 4001014)"),
        "{shown}"
    );
    assert!(shown.contains("newest code"), "{shown}");
    assert!(!state.join("cync-account.json").exists());
    // The export then says to log in.
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(!out.status.success());
    assert!(text(&out).contains("cyncd account login"), "{}", text(&out));
}

/// Logs in, writes a first homes file, breaks the fake, and checks that the export fails with
/// `needle` in its message, writes nothing and leaves the file as it was.
async fn export_fails(name: &str, mode: Mode, needle: &str) {
    let (list, props) = cync_api::account();
    let api = CyncApi::start(list, props).await;
    let state = common::temp_dir(name).join("state");
    assert!(
        login(&state, &api.base, cync_api::CODE)
            .await
            .status
            .success()
    );
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read(state.join("homes.json")).unwrap();
    api.set_mode(mode);
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains(needle), "{needle:?} in {shown}");
    assert_eq!(std::fs::read(state.join("homes.json")).unwrap(), before);
    assert!(!state.join("homes.json.previous").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn an_expired_login_says_to_log_in_again() {
    export_fails(
        "account-expired",
        Mode::Expired,
        "expired (Cync error 4031021). Log in again: cyncd account login",
    )
    .await;
}

#[tokio::test]
async fn an_error_body_with_http_200_is_an_error() {
    export_fails(
        "account-200",
        Mode::ErrorIn200,
        "refused the request: Service temporarily unavailable (code 5000001)",
    )
    .await;
}

#[tokio::test]
async fn a_silent_server_times_out_naming_the_url() {
    let started = tokio::time::Instant::now();
    export_fails("account-silent", Mode::Silent, "did not answer within 2 s").await;
    // Two logins and exports, then one bounded wait.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn an_account_without_named_homes_writes_nothing() {
    let (list, mut props) = cync_api::account();
    let api = CyncApi::start(list.clone(), props.clone()).await;
    let state = common::temp_dir("account-empty").join("state");
    assert!(
        login(&state, &api.base, cync_api::CODE)
            .await
            .status
            .success()
    );
    assert!(
        account(args(&["export"], &state, &api.base), "")
            .await
            .status
            .success()
    );
    let before = std::fs::read(state.join("homes.json")).unwrap();
    for p in props.values_mut() {
        *p = None;
    }
    api.state.lock().unwrap().properties = props;
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown
            .contains("has no named home with devices. Add your devices to a home in the Cync app"),
        "{shown}"
    );
    assert_eq!(std::fs::read(state.join("homes.json")).unwrap(), before);
}

#[tokio::test]
async fn a_login_answer_without_a_token_is_explained() {
    let (list, props) = cync_api::account();
    let api = CyncApi::start(list, props).await;
    api.set_mode(Mode::NoAccessToken);
    let state = common::temp_dir("account-fields").join("state");
    let out = login(&state, &api.base, cync_api::CODE).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unexpected answer from the Cync API at http://127.0.0.1:"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("no access_token"), "{}", text(&out));
    assert!(!state.join("cync-account.json").exists());
}

#[tokio::test]
async fn closed_and_absent_servers_name_the_url_they_tried() {
    let state = common::temp_dir("account-net").join("state");
    let closing = cync_api::closing().await;
    let out = login(&state, &closing, cync_api::CODE).await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains(&format!(
            "the Cync API at {closing}two_factor/email/verifycode closed the connection without a complete answer"
        )),
        "{shown}"
    );
    let nowhere = cync_api::nowhere();
    let out = login(&state, &nowhere, cync_api::CODE).await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains(&format!(
            "could not reach the Cync API at {nowhere}two_factor/email/verifycode"
        )),
        "{shown}"
    );
    assert!(shown.contains("internet connection"), "{shown}");
    assert!(!state.join("homes.json").exists());
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[tokio::test]
async fn import_says_what_it_took_and_what_it_ignored() {
    let state = common::temp_dir("account-import").join("state");
    let yaml = data("cync_mesh.yaml");
    let list = [
        "import",
        yaml.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let out = account(list.iter().map(|s| s.to_string()).collect(), "").await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    for needle in [
        "3 home(s), 40 device(s) (1 hidden), 8 room(s)",
        "Taken:",
        "Kinds inferred:",
        "Hidden (enabled: false):",
        "Ignored:",
        "Kept in the homes file without being used:",
        "mqtt_url: mqtt://192.168.1.20:1883 (user \"cync\")",
        "Wrote ",
    ] {
        assert!(shown.contains(needle), "{needle:?} in {shown}");
    }
    // The broker password of the file is not printed.
    assert!(!shown.contains("hunter2"), "{shown}");
    let file = homes(&state);
    assert_eq!(file["homes"].as_array().unwrap().len(), 3);
    // A dry run writes nothing.
    let again = state.parent().unwrap().join("dry");
    let list = [
        "import",
        yaml.to_str().unwrap(),
        "--state-dir",
        again.to_str().unwrap(),
        "--dry-run",
    ];
    let out = account(list.iter().map(|s| s.to_string()).collect(), "").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!again.join("homes.json").exists());
    // Not an export: refused with the reason, nothing written.
    let bad = state.parent().unwrap().join("bad.yaml");
    std::fs::write(&bad, "mqtt_url: mqtt://x\n").unwrap();
    let list = [
        "import",
        bad.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let before = std::fs::read(state.join("homes.json")).unwrap();
    let out = account(list.iter().map(|s| s.to_string()).collect(), "").await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no `account data` section"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(state.join("homes.json")).unwrap(), before);
}

#[tokio::test]
async fn https_is_spoken_and_an_untrusted_certificate_refused() {
    // A TLS server with cyncd's own self-signed certificate: the client speaks TLS to an
    // https:// base and refuses a certificate no trusted authority signed.
    let dir = common::temp_dir("account-tls");
    let files = cyncd::devices::tls::ensure_certificate(&dir, None, None).unwrap();
    let acceptor = cyncd::devices::tls::acceptor(&files, false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshake_tx, mut handshake) = tokio::sync::mpsc::channel::<bool>(4);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
            let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
            let done = std::pin::Pin::new(&mut stream).accept().await.is_ok();
            let _ = handshake_tx.send(done).await;
        }
    });
    let state = dir.join("state");
    let out = login(
        &state,
        &format!("https://127.0.0.1:{}/v2/", addr.port()),
        "1",
    )
    .await;
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("TLS handshake"), "{shown}");
    assert!(shown.contains("certificate verify failed"), "{shown}");
    // The server saw a TLS ClientHello, and no finished handshake.
    assert_eq!(handshake.recv().await, Some(false));
}

#[tokio::test]
async fn an_oversize_answer_is_refused_unread() {
    let (mut list, props) = cync_api::account();
    // The home list padded past the 8 MiB bound.
    list.push(serde_json::json!({"id": 1, "source": 1, "pad": "x".repeat(9 << 20)}));
    let api = CyncApi::start(list, props).await;
    let state = common::temp_dir("account-large").join("state");
    assert!(
        login(&state, &api.base, cync_api::CODE)
            .await
            .status
            .success()
    );
    let out = account(args(&["export"], &state, &api.base), "").await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("answered more than 8388608 bytes"),
        "{}",
        text(&out)
    );
    assert!(!state.join("homes.json").exists());
}
