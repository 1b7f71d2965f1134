//! TLS for device connections (TCP 23779): the per-install certificate and the OpenSSL acceptor.
//!
//! Real Cync devices are TLS 1.2 clients that do not validate the server certificate but offer only
//! static-RSA key exchange (AES-CBC, AES-CCM, Camellia, ARIA) or ECDSA suites; no ECDHE-RSA and no
//! GCM (PROTOCOL.md §2.1). rustls implements neither, so this module uses OpenSSL with an RSA
//! certificate and a cipher list that keeps the four RSA-key-exchange CBC suites every captured
//! ClientHello offers.
//!
//! Boundary: this module owns the certificate files and the handshake, nothing after it. It does
//! not listen, time out, log per connection or count metrics: the accept loop wraps [`accept`] in
//! its own timeout, logs the error and labels the metric with [`failure_reason`]. What flows inside
//! the TLS stream is the Cync protocol, which this module never looks at.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use openssl::rsa::Rsa;
use openssl::ssl::{self, ErrorCode, Ssl, SslAcceptor, SslMethod, SslOptions, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// The TLS 1.2 cipher list the acceptor offers, in server preference order.
///
/// Modern ECDHE AEAD suites come first for ordinary clients (tools, browsers); no device offers
/// them. Then the four RSA-key-exchange CBC suites that all three captured device ClientHello
/// shapes offer and that the legacy controllers serve to real devices, so every device gets
/// `AES256-SHA256`. The RSA AES-CCM suites come last: OpenSSL knows them and some devices offer
/// them, but no device has been seen to use them, so they only serve a client without CBC.
/// Names OpenSSL does not know are skipped by OpenSSL.
pub const CIPHER_LIST: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
     ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
     ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
     AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA:\
     AES256-CCM:AES128-CCM:AES256-CCM8:AES128-CCM8";

/// Every value [`failure_reason`] returns, for pre-registering metric labels.
pub const FAILURE_REASONS: [&str; 6] = [
    "no_shared_cipher",
    "wrong_version",
    "peer_closed",
    "io",
    "protocol",
    "other",
];

/// Names in the generated certificate: the subject CN and the DNS subjectAltNames, i.e. the cloud
/// host names devices resolve. Devices do not check them; they match what the cloud served.
const COMMON_NAME: &str = "*.xlink.cn";
const ALT_NAMES: [&str; 4] = [
    "*.xlink.cn",
    "cm.gelighting.com",
    "cm-sec.gelighting.com",
    "cm-ge.xlink.cn",
];
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const RSA_BITS: u32 = 2048;
const DAY_SECS: i64 = 24 * 60 * 60;
/// About ten years, so an install never has to renew.
const VALID_DAYS: i64 = 3650;

/// The certificate and private key the acceptor serves, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate: the leaf first, then any chain certificates.
    pub cert: PathBuf,
    /// PEM private key matching the leaf certificate.
    pub key: PathBuf,
    /// Whether this call generated the pair (first start) rather than reusing existing files.
    pub generated: bool,
}

/// Errors of the TLS layer: certificate files, acceptor setup and the handshake.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Only one of the certificate and key was given by the user.
    #[error("a TLS certificate and key must be given together: got the {given} but no {missing}")]
    Unpaired {
        /// The one that was given: "certificate" or "key".
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// A file or directory operation failed.
    #[error("cannot {action} {path}")]
    File {
        /// What was being done: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file does not hold a usable PEM certificate or key.
    #[error("{path} is not a valid PEM {what}")]
    Pem {
        /// The offending file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// OpenSSL's reason, if it gave one.
        #[source]
        source: Option<ErrorStack>,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key {key} does not match the certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The system clock cannot be expressed as a certificate validity time.
    #[error("the system clock is outside the range a certificate can carry")]
    Clock,
    /// OpenSSL failed to generate the key or certificate.
    #[error("cannot generate the TLS certificate")]
    Generate(#[source] ErrorStack),
    /// OpenSSL rejected the acceptor configuration.
    #[error("cannot configure the TLS acceptor")]
    Config(#[source] ErrorStack),
    /// OpenSSL could not create the per-connection session.
    #[error("cannot create a TLS session")]
    Session(#[source] ErrorStack),
    /// The handshake with the peer failed.
    ///
    /// The OpenSSL reason is part of the message (not only the source) because this error is
    /// logged once per connection with `%err`, not printed through an error chain.
    #[error("TLS handshake failed: {0}")]
    Handshake(ssl::Error),
}

/// Use the user's own cert/key when both given; otherwise reuse `<state_dir>/cert.pem` +
/// `<state_dir>/key.pem`, generating them on first start.
///
/// The user's files are only checked to exist here; [`acceptor`] parses them. A generated pair is
/// an RSA-2048 key and a self-signed certificate (see the module constants for its names), so
/// every install has its own key. The state directory is created with mode 0700 if missing, the
/// key written with mode 0600 and the certificate with 0644, each through a temporary file and a
/// rename so a crash never leaves half a key. If only one of the two state files exists (a crash
/// between the renames, or a deleted file), both are generated again: devices pin nothing.
pub fn ensure_certificate(
    state_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsFiles, TlsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            for path in [cert, key] {
                fs::metadata(path).map_err(|source| file_error("read", path, source))?;
            }
            return Ok(TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                generated: false,
            });
        }
        (Some(_), None) => {
            return Err(TlsError::Unpaired {
                given: "certificate",
                missing: "key",
            });
        }
        (None, Some(_)) => {
            return Err(TlsError::Unpaired {
                given: "key",
                missing: "certificate",
            });
        }
        (None, None) => {}
    }

    let cert = state_dir.join(CERT_FILE);
    let key = state_dir.join(KEY_FILE);
    let cert_exists = exists(&cert)?;
    let key_exists = exists(&key)?;
    if cert_exists && key_exists {
        return Ok(TlsFiles {
            cert,
            key,
            generated: false,
        });
    }
    if cert_exists || key_exists {
        tracing::warn!(
            dir = %state_dir.display(),
            "only one of {CERT_FILE} and {KEY_FILE} exists; generating a new pair"
        );
    }

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| file_error("create directory", state_dir, source))?;
    let (cert_pem, key_pem) = generate()?;
    // Key first: a crash before the certificate lands leaves a lone key, which the next start
    // replaces along with the certificate.
    write_atomic(&key, &key_pem, 0o600)?;
    write_atomic(&cert, &cert_pem, 0o644)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(TlsFiles {
        cert,
        key,
        generated: true,
    })
}

/// Builds the acceptor from PEM files.
///
/// TLS 1.2 and 1.3, the [`CIPHER_LIST`] in server preference order, security level 1 (so the SHA-1
/// CBC suites stay available where a distribution raises the default). Fails with an error naming
/// the file when a file is not valid PEM, and when the key does not match the certificate.
pub fn acceptor(files: &TlsFiles, encrypt_then_mac: bool) -> Result<SslAcceptor, TlsError> {
    let cert_pem =
        fs::read(&files.cert).map_err(|source| file_error("read", &files.cert, source))?;
    let key_pem = fs::read(&files.key).map_err(|source| file_error("read", &files.key, source))?;
    let pem_error = |path: &Path, what, source| TlsError::Pem {
        path: path.to_path_buf(),
        what,
        source,
    };
    let mut certs = X509::stack_from_pem(&cert_pem)
        .map_err(|e| pem_error(&files.cert, "certificate", Some(e)))?
        .into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| pem_error(&files.cert, "certificate", None))?;
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|e| pem_error(&files.key, "private key", Some(e)))?;
    // Checked here rather than left to OpenSSL, whose error on a mismatch names neither file.
    let public = leaf
        .public_key()
        .map_err(|e| pem_error(&files.cert, "certificate", Some(e)))?;
    if !public.public_eq(&key) {
        return Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    if key.id() != Id::RSA {
        tracing::warn!(
            key = %files.key.display(),
            "the TLS key is not RSA: devices that offer only RSA key exchange cannot connect"
        );
    }

    let mut builder =
        SslAcceptor::mozilla_intermediate(SslMethod::tls_server()).map_err(TlsError::Config)?;
    // mozilla_intermediate turns TLS 1.3 off; devices never offer it, other clients may.
    builder.clear_options(SslOptions::NO_TLSV1_3);
    if !encrypt_then_mac {
        // SSL_OP_NO_ENCRYPT_THEN_MAC (the crate names no constant for it). Devices offer
        // encrypt-then-MAC, but with it OpenSSL 3 cannot use its stitched AES-CBC-HMAC code and
        // copies MAC contexts for every record: measured at 8,000 devices, it cost a fifth of
        // the server's CPU and 20 MiB. The devices do not check the server's certificate, so
        // what TLS gives them is confidentiality against passive listeners, which
        // MAC-then-encrypt (with OpenSSL's constant-time CBC checks) provides as well.
        builder.set_options(SslOptions::from_bits_retain(1 << 19));
    }
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(TlsError::Config)?;
    builder
        .set_cipher_list(CIPHER_LIST)
        .map_err(TlsError::Config)?;
    builder.set_security_level(1);
    // Devices are idle between 20-second heartbeats: free the ~34 KiB of record buffers of an
    // idle connection instead of keeping them for its lifetime.
    builder.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    // Read whole TLS records (and whatever follows) in one system call instead of a header
    // read and a body read.
    builder.set_read_ahead(true);
    builder.set_certificate(&leaf).map_err(TlsError::Config)?;
    for chain in certs {
        builder
            .add_extra_chain_cert(chain)
            .map_err(TlsError::Config)?;
    }
    builder.set_private_key(&key).map_err(TlsError::Config)?;
    Ok(builder.build())
}

/// Runs the server handshake on an accepted TCP stream.
///
/// There is no timeout here: a peer that stops mid-handshake holds the future until the caller's
/// timeout drops it.
pub async fn accept(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
) -> Result<SslStream<TcpStream>, TlsError> {
    let ssl = Ssl::new(acceptor.context()).map_err(TlsError::Session)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(TlsError::Session)?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(TlsError::Handshake)?;
    Ok(stream)
}

/// A bounded metric label for a failed handshake: one of [`FAILURE_REASONS`].
///
/// `peer_closed` covers a peer that closed or reset the connection before finishing (scanners,
/// health checks, devices rebooting); `wrong_version` a record that is not TLS 1.x at all (plain
/// bytes, SSLv2, an unsupported version); `no_shared_cipher` a client offering nothing from
/// [`CIPHER_LIST`]; `protocol` any other TLS alert or violation; `io` other socket errors; `other`
/// everything that is not a handshake failure.
pub fn failure_reason(err: &TlsError) -> &'static str {
    let TlsError::Handshake(err) = err else {
        return "other";
    };
    if let Some(io) = err.io_error() {
        return match io.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "peer_closed",
            _ => "io",
        };
    }
    match err.code() {
        // SYSCALL without an io error is OpenSSL 1.1's EOF in the middle of a handshake.
        ErrorCode::ZERO_RETURN | ErrorCode::SYSCALL => "peer_closed",
        ErrorCode::SSL => err.ssl_error().map_or("other", stack_reason),
        _ => "other",
    }
}

/// Classifies an OpenSSL error stack by its reason strings, which are stable across OpenSSL 1.1
/// and 3 (the numeric reason codes are not all exported by openssl-sys).
fn stack_reason(stack: &ErrorStack) -> &'static str {
    let mut label = "other";
    for reason in stack.errors().iter().filter_map(|e| e.reason()) {
        let reason = reason.to_ascii_lowercase();
        if reason.contains("no shared cipher") || reason.contains("no ciphers available") {
            return "no_shared_cipher";
        }
        if reason.contains("wrong version number")
            || reason.contains("unsupported protocol")
            || reason.contains("unknown protocol")
            || reason.contains("version too low")
        {
            return "wrong_version";
        }
        // OpenSSL 3 reports an EOF mid-handshake as an SSL error rather than SYSCALL.
        if reason.contains("unexpected eof") {
            return "peer_closed";
        }
        label = "protocol";
    }
    label
}

/// Generates the key and the self-signed certificate, as PEM.
#[allow(
    clippy::useless_conversion,
    reason = "time_t is i64 here but 32 bits on some targets"
)]
fn generate() -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    // A clock before 1970 gives a certificate valid 1970–1980; devices do not check validity.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // `time_t` is 32 bits on some targets the daemon may run on (32-bit ARM): convert checked.
    let time = |secs: i64| {
        let secs = secs.try_into().map_err(|_| TlsError::Clock)?;
        Asn1Time::from_unix(secs).map_err(TlsError::Generate)
    };
    // Back-dated a day so a device whose clock lags still sees a valid certificate.
    let not_before = time(now.saturating_sub(DAY_SECS))?;
    let not_after = time(now.saturating_add(VALID_DAYS * DAY_SECS))?;
    certificate(&not_before, &not_after).map_err(TlsError::Generate)
}

fn certificate(
    not_before: &Asn1Time,
    not_after: &Asn1Time,
) -> Result<(Vec<u8>, Vec<u8>), ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(RSA_BITS)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, COMMON_NAME)?;
    let name = name.build();
    // A positive random serial below 2^127, within the 20 octets RFC 5280 allows.
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;

    let mut builder = X509::builder()?;
    builder.set_version(2)?; // X.509 v3
    builder.set_serial_number(&*serial.to_asn1_integer()?)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    builder.set_not_before(not_before)?;
    builder.set_not_after(not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()?,
    )?;
    builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let key_id = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(key_id)?;
    let mut alt_names = SubjectAlternativeName::new();
    for dns in ALT_NAMES {
        alt_names.dns(dns);
    }
    let alt_names = alt_names.build(&builder.x509v3_context(None, None))?;
    builder.append_extension(alt_names)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((builder.build().to_pem()?, key.private_key_to_pem_pkcs8()?))
}

/// Writes `bytes` to `path` through `.<name>.tmp` in the same directory and a rename, so `path`
/// holds either the old content or all of the new. The temporary file is created with `mode`
/// (before any byte is written) and exclusively, so it never follows a planted link. One daemon
/// per state directory is assumed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(file_error("remove", &tmp, source)),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(source) = written {
        // Best effort: a leftover is removed by the next attempt anyway.
        let _ = fs::remove_file(&tmp);
        return Err(file_error("write", &tmp, source));
    }
    fs::rename(&tmp, path).map_err(|source| file_error("rename into", path, source))?;
    // Make the rename itself durable; some filesystems refuse to sync a directory, which only
    // costs durability, so the result is ignored.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists()
        .map_err(|source| file_error("check", path, source))
}

fn file_error(action: &'static str, path: &Path, source: io::Error) -> TlsError {
    TlsError::File {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509NameRef;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "cyncd-tls-unit-{}-{unique}-{name}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn common_name(name: &X509NameRef) -> String {
        let entry = name.entries_by_nid(Nid::COMMONNAME).next().unwrap();
        entry.data().to_string().unwrap()
    }

    #[test]
    fn first_call_generates_private_files() {
        let tmp = TempDir::new("generate");
        let state = tmp.0.join("state").join("nested");
        let files = ensure_certificate(&state, None, None).unwrap();
        assert!(files.generated);
        assert_eq!(files.cert, state.join("cert.pem"));
        assert_eq!(files.key, state.join("key.pem"));
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&state), 0o700);
        // The certificate is public; only the umask may narrow 0644.
        assert_eq!(mode(&files.cert) & !0o644, 0);
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"]);
        acceptor(&files, false).unwrap();
    }

    #[test]
    fn second_call_reuses_the_files() {
        let tmp = TempDir::new("reuse");
        let first = ensure_certificate(&tmp.0, None, None).unwrap();
        let cert = fs::read(&first.cert).unwrap();
        let key = fs::read(&first.key).unwrap();
        let second = ensure_certificate(&tmp.0, None, None).unwrap();
        assert!(!second.generated);
        assert_eq!((&second.cert, &second.key), (&first.cert, &first.key));
        assert_eq!(fs::read(&second.cert).unwrap(), cert);
        assert_eq!(fs::read(&second.key).unwrap(), key);
    }

    #[test]
    fn each_install_gets_its_own_key() {
        let a = TempDir::new("install-a");
        let b = TempDir::new("install-b");
        let a = ensure_certificate(&a.0, None, None).unwrap();
        let b = ensure_certificate(&b.0, None, None).unwrap();
        assert_ne!(fs::read(&a.key).unwrap(), fs::read(&b.key).unwrap());
        let serial = |files: &TlsFiles| {
            let cert = X509::from_pem(&fs::read(&files.cert).unwrap()).unwrap();
            cert.serial_number().to_bn().unwrap()
        };
        assert_ne!(serial(&a), serial(&b));
    }

    #[test]
    fn a_lone_state_file_is_replaced_by_a_new_pair() {
        let tmp = TempDir::new("lone");
        let first = ensure_certificate(&tmp.0, None, None).unwrap();
        let key = fs::read(&first.key).unwrap();
        fs::remove_file(&first.cert).unwrap();
        let second = ensure_certificate(&tmp.0, None, None).unwrap();
        assert!(second.generated);
        assert_ne!(fs::read(&second.key).unwrap(), key);
        acceptor(&second, false).unwrap();
    }

    #[test]
    fn generated_certificate_names_and_shape() {
        let tmp = TempDir::new("names");
        let files = ensure_certificate(&tmp.0, None, None).unwrap();
        let cert = X509::from_pem(&fs::read(&files.cert).unwrap()).unwrap();
        assert_eq!(cert.version(), 2, "X.509 v3");
        assert_eq!(common_name(cert.subject_name()), "*.xlink.cn");
        assert_eq!(common_name(cert.issuer_name()), "*.xlink.cn");
        let sans: Vec<String> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .map(|name| name.dnsname().unwrap().to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "*.xlink.cn",
                "cm.gelighting.com",
                "cm-sec.gelighting.com",
                "cm-ge.xlink.cn"
            ]
        );
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        let public = cert.public_key().unwrap();
        assert_eq!(public.id(), Id::RSA);
        assert_eq!(public.bits(), 2048);
        assert!(cert.verify(&public).unwrap(), "self-signed");
        // Valid from about a day ago for about ten years.
        let now = Asn1Time::days_from_now(0).unwrap();
        let from = cert.not_before().diff(&now).unwrap();
        assert_eq!((from.days, from.secs / 60), (1, 0));
        let until = now.diff(cert.not_after()).unwrap();
        assert!((3649..=3650).contains(&until.days), "{until:?}");
        let key = PKey::private_key_from_pem(&fs::read(&files.key).unwrap()).unwrap();
        assert!(public.public_eq(&key));
    }

    #[test]
    fn user_pair_is_used_and_state_dir_untouched() {
        let own = TempDir::new("own");
        let own = ensure_certificate(&own.0, None, None).unwrap();
        let tmp = TempDir::new("user");
        let state = tmp.0.join("state");
        let files = ensure_certificate(&state, Some(&own.cert), Some(&own.key)).unwrap();
        assert_eq!(
            files,
            TlsFiles {
                cert: own.cert.clone(),
                key: own.key.clone(),
                generated: false
            }
        );
        assert!(!state.exists());
        acceptor(&files, false).unwrap();
    }

    #[test]
    fn one_of_two_is_an_error() {
        let tmp = TempDir::new("unpaired");
        let path = tmp.0.join("x.pem");
        let err = ensure_certificate(&tmp.0, Some(&path), None).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Unpaired {
                given: "certificate",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "a TLS certificate and key must be given together: got the certificate but no key"
        );
        let err = ensure_certificate(&tmp.0, None, Some(&path)).unwrap_err();
        assert!(matches!(err, TlsError::Unpaired { given: "key", .. }));
        assert!(!tmp.0.join("cert.pem").exists());
    }

    #[test]
    fn missing_user_file_names_the_file() {
        let tmp = TempDir::new("missing");
        let cert = tmp.0.join("nope-cert.pem");
        let key = tmp.0.join("nope-key.pem");
        let err = ensure_certificate(&tmp.0, Some(&cert), Some(&key)).unwrap_err();
        assert!(err.to_string().contains("nope-cert.pem"), "{err}");
    }

    #[test]
    fn garbage_pem_is_an_error_naming_the_file() {
        let tmp = TempDir::new("garbage");
        let good = ensure_certificate(&tmp.0.join("good"), None, None).unwrap();
        let garbage = tmp.0.join("garbage.pem");
        fs::write(&garbage, b"this is not PEM\n").unwrap();
        let truncated = tmp.0.join("truncated.pem");
        let pem = fs::read(&good.cert).unwrap();
        fs::write(&truncated, &pem[..pem.len() / 2]).unwrap();

        for bad in [&garbage, &truncated] {
            let files = TlsFiles {
                cert: bad.clone(),
                key: good.key.clone(),
                generated: false,
            };
            let err = acceptor(&files, false).err().unwrap();
            assert!(
                matches!(
                    &err,
                    TlsError::Pem {
                        what: "certificate",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(&*bad.to_string_lossy()), "{err}");
        }
        let files = TlsFiles {
            cert: good.cert.clone(),
            key: garbage.clone(),
            generated: false,
        };
        let err = acceptor(&files, false).err().unwrap();
        assert!(
            matches!(
                &err,
                TlsError::Pem {
                    what: "private key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_an_error() {
        let a = TempDir::new("mismatch-a");
        let b = TempDir::new("mismatch-b");
        let a = ensure_certificate(&a.0, None, None).unwrap();
        let b = ensure_certificate(&b.0, None, None).unwrap();
        let files = TlsFiles {
            cert: a.cert,
            key: b.key,
            generated: false,
        };
        let err = acceptor(&files, false).err().unwrap();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn non_handshake_errors_are_labelled_other() {
        let err = TlsError::Unpaired {
            given: "key",
            missing: "certificate",
        };
        assert_eq!(failure_reason(&err), "other");
        assert!(FAILURE_REASONS.contains(&failure_reason(&TlsError::Clock)));
    }
}
