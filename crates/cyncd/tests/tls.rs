//! The device TLS layer over real sockets: the captured device ClientHellos get a ServerHello with a
//! suite they offered, OpenSSL clients limited to each shape's suites complete a handshake and
//! exchange bytes, and bad clients fail with a bounded label without stopping the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use cync_proto::capture;
use cyncd::devices::tls::{self, FAILURE_REASONS, TlsFiles};
use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_openssl::SslStream;

/// Upper bound for any single step, so a hang fails the test instead of stalling it.
const STEP: Duration = Duration::from_secs(20);
/// The first bytes a device sends inside TLS: a 0xD3 heartbeat, echoed by the test server.
const PING: [u8; 5] = [0xd3, 0x00, 0x00, 0x00, 0x00];
/// The four RSA-key-exchange CBC suites every device shape offers, by OpenSSL name.
const RSA_CBC: [&str; 4] = ["AES256-SHA256", "AES128-SHA256", "AES256-SHA", "AES128-SHA"];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "cyncd-tls-it-{}-{unique}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An acceptor over a freshly generated certificate, as the daemon builds it on first start.
fn server_acceptor(name: &str) -> (SslAcceptor, TempDir) {
    let dir = TempDir::new(name);
    let files: TlsFiles = tls::ensure_certificate(&dir.0, None, None).unwrap();
    assert!(files.generated);
    (tls::acceptor(&files, false).unwrap(), dir)
}

fn captures_file() -> PathBuf {
    match std::env::var_os("CYNC_CAPTURES") {
        Some(dir) => PathBuf::from(dir).join("tls-client-hellos.txt"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/captures/tls-client-hellos.txt"),
    }
}

/// One captured ClientHello record per shape, keyed by record size (88, 114, 144 bytes).
fn hello_shapes() -> BTreeMap<usize, Vec<u8>> {
    let path = captures_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut shapes: BTreeMap<usize, (usize, Vec<u8>)> = BTreeMap::new();
    let mut total = 0;
    for record in capture::parse(&text) {
        let record = record.unwrap();
        total += 1;
        let len = record.bytes.len();
        shapes.entry(len).or_insert((0, record.bytes)).0 += 1;
    }
    let counts: Vec<(usize, usize)> = shapes.iter().map(|(len, (n, _))| (*len, *n)).collect();
    // PROTOCOL.md §2.1: 54 ClientHellos, all in these three shapes.
    assert_eq!(total, 54);
    assert_eq!(counts, [(88, 14), (114, 4), (144, 36)]);
    shapes
        .into_iter()
        .map(|(len, (_, bytes))| (len, bytes))
        .collect()
}

/// The cipher suites a ClientHello record offers, as wire bytes (two per suite).
///
/// Layout: record header (type 0x16, version, length: 5 B), handshake header (type 0x01,
/// length: 4 B), client_version (2 B), random (32 B), session_id (1 B length + id),
/// cipher_suites (2 B length + suites).
fn offered_suites(hello: &[u8]) -> Vec<u8> {
    assert_eq!(hello[0], 0x16, "handshake record");
    assert_eq!(hello[5], 0x01, "ClientHello");
    assert_eq!(&hello[9..11], [0x03, 0x03], "client_version TLS 1.2");
    let session_id_len = usize::from(hello[43]);
    let at = 44 + session_id_len;
    let len = usize::from(u16::from_be_bytes([hello[at], hello[at + 1]]));
    hello[at + 2..at + 2 + len].to_vec()
}

fn suite_ids(suites: &[u8]) -> Vec<u16> {
    suites
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect()
}

/// OpenSSL's names for the offered suites it implements, in the client's order.
fn openssl_names(suites: &[u8]) -> Vec<String> {
    let ctx = SslConnector::builder(SslMethod::tls_client())
        .unwrap()
        .build();
    let ssl = Ssl::new(ctx.context()).unwrap();
    let lists = ssl.bytes_to_cipher_list(suites, false).unwrap();
    lists.suites.iter().map(|c| c.name().to_string()).collect()
}

/// Reads one whole TLS record (5-byte header plus body).
async fn read_record(tcp: &mut TcpStream) -> Vec<u8> {
    let mut record = vec![0u8; 5];
    tcp.read_exact(&mut record).await.unwrap();
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + len, 0);
    tcp.read_exact(&mut record[5..]).await.unwrap();
    record
}

/// Accepts one connection and runs `tls::accept` on it; on success echoes [`PING`] and returns
/// the negotiated suite name.
async fn accept_one(
    listener: &TcpListener,
    acceptor: &SslAcceptor,
) -> Result<String, tls::TlsError> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut stream = tls::accept(acceptor, tcp).await?;
    let cipher = stream.ssl().current_cipher().unwrap().name().to_string();
    let mut buf = [0u8; PING.len()];
    stream.read_exact(&mut buf).await.unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
    Ok(cipher)
}

/// A full TLS 1.2 handshake from an OpenSSL client offering `ciphers`, then a PING round trip;
/// returns the suite the client saw negotiated.
async fn openssl_client(addr: std::net::SocketAddr, ciphers: &str) -> Result<String, String> {
    let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
    connector.set_verify(SslVerifyMode::NONE);
    connector
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .unwrap();
    connector.set_cipher_list(ciphers).unwrap();
    // Like the devices, accept SHA-1 suites whatever the system default level.
    connector.set_security_level(1);
    let config = connector.build().configure().unwrap();
    let ssl = config.into_ssl("cm.gelighting.com").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let cipher = stream.ssl().current_cipher().unwrap().name().to_string();
    assert_eq!(stream.ssl().version_str(), "TLSv1.2");
    stream.write_all(&PING).await.unwrap();
    let mut echo = [0u8; PING.len()];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, PING);
    Ok(cipher)
}

#[tokio::test]
async fn captured_client_hellos_get_a_server_hello_with_an_offered_suite() {
    let (acceptor, _dir) = server_acceptor("hello");
    for (size, hello) in hello_shapes() {
        let offered = suite_ids(&offered_suites(&hello));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tls::accept(&acceptor, tcp).await.map(|_| ())
        });

        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        let record = timeout(STEP, read_record(&mut tcp)).await.unwrap();
        // ServerHello: record type 0x16 version 0x0303, handshake type 2, server_version 0x0303,
        // random (32 B), session_id (1 B length + id), cipher_suite (2 B).
        assert_eq!(record[0], 0x16, "{size} B shape: handshake record");
        assert_eq!(
            &record[1..3],
            [0x03, 0x03],
            "{size} B shape: record version"
        );
        assert_eq!(record[5], 0x02, "{size} B shape: ServerHello");
        assert_eq!(
            &record[9..11],
            [0x03, 0x03],
            "{size} B shape: server_version"
        );
        let at = 44 + usize::from(record[43]);
        let chosen = u16::from_be_bytes([record[at], record[at + 1]]);
        assert!(
            offered.contains(&chosen),
            "{size} B shape: chose {chosen:#06x}, offered {offered:04x?}"
        );
        println!("{size} B ClientHello: ServerHello chose {chosen:#06x}");
        // The server has sent its Certificate and waits for a key exchange that never comes.
        drop(tcp);
        let err = timeout(STEP, server).await.unwrap().unwrap().unwrap_err();
        assert_eq!(tls::failure_reason(&err), "peer_closed", "{err}");
    }
}

#[tokio::test]
async fn openssl_clients_with_each_shapes_suites_complete_a_handshake() {
    let (acceptor, _dir) = server_acceptor("handshake");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (results, mut rx) = mpsc::channel(1);
    let server = tokio::spawn(async move {
        loop {
            let result = accept_one(&listener, &acceptor).await;
            if results.send(result).await.is_err() {
                break;
            }
        }
    });

    let mut cases: Vec<(String, String)> = Vec::new();
    for (size, hello) in hello_shapes() {
        let names = openssl_names(&offered_suites(&hello));
        for suite in RSA_CBC {
            assert!(
                names.iter().any(|n| n == suite),
                "{size} B shape lacks {suite}"
            );
        }
        cases.push((format!("{size} B shape"), names.join(":")));
    }
    // Each device suite alone, and the AES-CCM fallback for clients without CBC.
    for suite in RSA_CBC.into_iter().chain(["AES256-CCM"]) {
        cases.push((suite.to_string(), suite.to_string()));
    }

    for (case, ciphers) in cases {
        let client = timeout(STEP, openssl_client(addr, &ciphers))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{case} ({ciphers}): {e}"));
        let server = timeout(STEP, rx.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(client, server, "{case}");
        println!("{case}: negotiated {client} (offered {ciphers})");
        if !ciphers.contains(':') {
            assert_eq!(client, ciphers, "{case}");
        } else {
            // Server preference picks the first of the four suites every device offers.
            assert_eq!(client, "AES256-SHA256", "{case}");
        }
    }
    server.abort();
}

#[tokio::test]
async fn bad_clients_fail_with_a_bounded_label_and_the_server_keeps_accepting() {
    let (acceptor, _dir) = server_acceptor("bad");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (results, mut rx) = mpsc::channel(1);
    let server = tokio::spawn(async move {
        loop {
            let result = accept_one(&listener, &acceptor)
                .await
                .map_err(|e| (tls::failure_reason(&e), e.to_string()));
            if results.send(result).await.is_err() {
                break;
            }
        }
    });
    let mut next = async || timeout(STEP, rx.recv()).await.unwrap().unwrap();

    // Plain bytes instead of a TLS record.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x41; 100]).await.unwrap();
    let (reason, message) = next().await.unwrap_err();
    println!("garbage: {reason}: {message}");
    assert!(FAILURE_REASONS.contains(&reason));
    assert_eq!(reason, "wrong_version", "{message}");
    assert!(message.contains("wrong version number"), "{message}");
    drop(tcp);

    // Connect and close before sending anything.
    drop(TcpStream::connect(addr).await.unwrap());
    let (reason, message) = next().await.unwrap_err();
    println!("closed: {reason}: {message}");
    assert_eq!(reason, "peer_closed", "{message}");

    // A client offering nothing the server serves.
    let client = timeout(STEP, openssl_client(addr, "CAMELLIA128-SHA"))
        .await
        .unwrap();
    assert!(client.is_err());
    let (reason, message) = next().await.unwrap_err();
    println!("no shared cipher: {reason}: {message}");
    assert_eq!(reason, "no_shared_cipher", "{message}");

    // And the server still completes the next handshake.
    let client = timeout(STEP, openssl_client(addr, "AES128-SHA"))
        .await
        .unwrap();
    assert_eq!(client.unwrap(), "AES128-SHA");
    assert_eq!(next().await.unwrap(), "AES128-SHA");
    server.abort();
}
