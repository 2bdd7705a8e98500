//! TLS on the client and peer URLs, with etcd's options: certificate and key files, client
//! certificate authentication against a trusted CA, self-signed certificates (`--auto-tls`),
//! the TLS 1.2 cipher suites (`--cipher-suites`) and the protocol versions
//! (`--tls-min-version`, `--tls-max-version`).
//!
//! Certificates, keys and trusted CA files are read again when they change (a renewed
//! certificate is served to the next connection, as etcd does), so a rotation needs no
//! restart. A file that cannot be read or parsed at that point keeps the previous contents
//! and is logged.
//!
//! The listeners hand their accepted connections here ([`Acceptor`]); the handshake runs in
//! a task of its own per connection, so a slow or silent client never holds up the others.
//! Dialing peers goes through a [`Dialer`], which speaks TLS to `https://` peer URLs.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One side's TLS settings (the client URLs or the peer URLs), as the flags give them.
#[derive(Debug, Clone, Default)]
pub struct Side {
    /// Which flags these are, for messages: "" for the client side, "peer-" for peers.
    pub flag_prefix: &'static str,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    /// Generate a self-signed certificate when no files are given.
    pub auto_tls: bool,
}

/// What both sides share: cipher suites and protocol versions.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// etcd's (Go's) names of the TLS 1.2 cipher suites to allow; empty for the defaults.
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` or `TLS1.3`; `None` for TLS 1.2.
    pub min_version: Option<String>,
    /// `TLS1.2` or `TLS1.3`; `None` for TLS 1.3.
    pub max_version: Option<String>,
}

/// A TLS setting that cannot work, phrased so the operator knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{0}cert-file and --{0}key-file must be given together")]
    HalfKeyPair(&'static str),
    #[error(
        "{url} is an https URL but no certificate is configured: give --{prefix}cert-file and --{prefix}key-file, or --{prefix}auto-tls"
    )]
    NoCertificate { url: String, prefix: &'static str },
    #[error("--{0}client-cert-auth needs --{0}trusted-ca-file (the CA that signs the certificates to accept)")]
    NoTrustedCa(&'static str),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: String },
    #[error("{path} holds no PEM certificate")]
    NoCertInFile { path: PathBuf },
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownCipherSuite(String),
    #[error(
        "TLS cipher suite {0:?} is not supported: only AEAD suites with forward secrecy are offered (ECDHE with AES-GCM or ChaCha20-Poly1305)"
    )]
    UnsupportedCipherSuite(String),
    #[error("--cipher-suites cannot be used with --tls-min-version=TLS1.3: TLS 1.3 cipher suites are not configurable")]
    CipherSuitesWithTls13,
    #[error("unsupported TLS version {0:?}: expected TLS1.2 or TLS1.3")]
    BadVersion(String),
    #[error("--tls-min-version {min} is above --tls-max-version {max}")]
    VersionOrder { min: String, max: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trusted CA: {0}")]
    Verifier(String),
    #[error("generating a self-signed certificate in {dir}: {err}")]
    AutoTls { dir: PathBuf, err: String },
}

impl Side {
    fn has_files(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The certificate and key to serve: the given files, or a self-signed pair under
    /// `auto_dir` when `--auto-tls` is on and no files are given (kept across restarts, as
    /// etcd keeps its fixtures). `None` when this side has no certificate at all.
    pub fn key_pair(&self, auto_dir: &Path, hosts: &[String]) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
            (None, None) if self.auto_tls => self_signed(auto_dir, hosts).map(Some),
            (None, None) => Ok(None),
            _ => Err(TlsError::HalfKeyPair(self.flag_prefix)),
        }
    }

    /// Checks the flags alone (files are read later): a half key pair, or client
    /// certificate authentication without a CA to check against.
    pub fn check(&self) -> Result<(), TlsError> {
        if self.has_files() && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err(TlsError::HalfKeyPair(self.flag_prefix));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(TlsError::NoTrustedCa(self.flag_prefix));
        }
        Ok(())
    }

    /// Whether URLs of this side may use https (a certificate or auto TLS is configured).
    pub fn enabled(&self) -> bool {
        self.has_files() || self.auto_tls
    }
}

impl Policy {
    /// Checks the suites and versions alone, so a bad value is refused even when no URL
    /// uses TLS yet.
    pub fn check(&self) -> Result<(), TlsError> {
        self.versions()?;
        self.provider()?;
        Ok(())
    }

    fn versions(&self) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
        fn parse(v: &str) -> Result<u8, TlsError> {
            match v {
                "TLS1.2" => Ok(2),
                "TLS1.3" => Ok(3),
                other => Err(TlsError::BadVersion(other.to_string())),
            }
        }
        let min = self.min_version.as_deref().map(parse).transpose()?.unwrap_or(2);
        let max = self.max_version.as_deref().map(parse).transpose()?.unwrap_or(3);
        if min > max {
            return Err(TlsError::VersionOrder {
                min: self.min_version.clone().unwrap_or_default(),
                max: self.max_version.clone().unwrap_or_default(),
            });
        }
        if min == 3 && !self.cipher_suites.is_empty() {
            return Err(TlsError::CipherSuitesWithTls13);
        }
        let mut out = Vec::new();
        if min <= 2 {
            out.push(&rustls::version::TLS12);
        }
        if max >= 3 {
            out.push(&rustls::version::TLS13);
        }
        Ok(out)
    }

    /// The crypto provider with the TLS 1.2 suites narrowed to `--cipher-suites`. TLS 1.3
    /// suites stay as they are: Go (and so etcd) does not let them be configured either.
    fn provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return Ok(Arc::new(provider));
        }
        let mut wanted = Vec::new();
        for name in &self.cipher_suites {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            wanted.push(rustls_suite_name(name)?);
        }
        provider.cipher_suites.retain(|s| {
            let n = format!("{:?}", s.suite());
            n.starts_with("TLS13_") || wanted.contains(&n)
        });
        Ok(Arc::new(provider))
    }
}

/// Maps Go's name of a cipher suite (what etcd's `--cipher-suites` takes) to rustls's.
fn rustls_suite_name(go: &str) -> Result<String, TlsError> {
    const AEAD_ECDHE: &[&str] = &[
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ];
    // Suites Go knows that rustls does not implement (CBC, RSA key exchange, 3DES, RC4).
    const GO_ONLY: &[&str] = &[
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    ];
    match go {
        g if AEAD_ECDHE.contains(&g) => Ok(g.to_string()),
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            Ok("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".into())
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            Ok("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".into())
        }
        // TLS 1.3 suites are always on; naming them changes nothing (as in Go).
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            Ok(format!("TLS13_{}", &go[4..]))
        }
        g if GO_ONLY.contains(&g) => Err(TlsError::UnsupportedCipherSuite(g.to_string())),
        g => Err(TlsError::UnknownCipherSuite(g.to_string())),
    }
}

/// When a file last changed, to notice a renewed certificate.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A certificate and key read from files, read again when either file changes.
struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl fmt::Debug for ReloadingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingKey")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingKey {
    fn open(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<ReloadingKey, TlsError> {
        let (cs, ks) = (stamp(cert), stamp(key));
        let loaded = load_key_pair(cert, key, &provider)?;
        Ok(ReloadingKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new((cs, ks, Arc::new(loaded))),
        })
    }

    /// The certificate to present now: the files' current contents if they changed and
    /// still make a valid pair, else the last good one.
    fn get(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock().expect("certificate lock");
        let (cs, ks) = (stamp(&self.cert), stamp(&self.key));
        if (cs, ks) != (cur.0, cur.1) {
            match load_key_pair(&self.cert, &self.key, &self.provider) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "reloaded TLS certificate");
                    *cur = (cs, ks, Arc::new(k));
                }
                // Keep serving the previous pair; a rotation may be half written.
                Err(e) => tracing::warn!(error = %e, "keeping the previous TLS certificate"),
            }
        }
        cur.2.clone()
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How a verifier is made from a trusted CA file.
type BuildVerifier<V> = dyn Fn(&Path) -> Result<Arc<V>, TlsError> + Send + Sync;

/// A verifier of the other end's certificate against a trusted CA file, made again when the
/// file changes (a CA rotation needs no restart; a file that cannot be read keeps the
/// previous verifier).
struct ReloadingCa<V: ?Sized> {
    path: PathBuf,
    build: Box<BuildVerifier<V>>,
    current: Mutex<(Stamp, Arc<V>)>,
}

impl<V: ?Sized> fmt::Debug for ReloadingCa<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCa").field("path", &self.path).finish()
    }
}

impl<V: ?Sized> ReloadingCa<V> {
    fn open(path: &Path, build: Box<BuildVerifier<V>>) -> Result<ReloadingCa<V>, TlsError> {
        let stamp = stamp(path);
        let verifier = build(path)?;
        Ok(ReloadingCa {
            path: path.to_path_buf(),
            build,
            current: Mutex::new((stamp, verifier)),
        })
    }

    fn get(&self) -> Arc<V> {
        let mut cur = self.current.lock().expect("trusted CA lock");
        let now = stamp(&self.path);
        if now != cur.0 {
            match (self.build)(&self.path) {
                Ok(v) => {
                    tracing::info!(ca = %self.path.display(), "reloaded trusted CA");
                    *cur = (now, v);
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous trusted CA"),
            }
        }
        cur.1.clone()
    }
}

impl ClientCertVerifier for ReloadingCa<dyn ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: they would have to outlive a reload. A client with one certificate sends
    /// it whatever the hints say (Go's and rustls's clients do).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

impl ServerCertVerifier for ReloadingCa<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

fn read_err(path: &Path, err: impl fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        err: err.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertInFile {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e))?;
    Ok(CertifiedKey::from_der(chain, key_der, provider)?)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| read_err(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// A self-signed certificate for `hosts` under `dir` (`cert.pem`, `key.pem`), made once and
/// kept, as etcd's `--auto-tls` does.
fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let fail = |err: String| TlsError::AutoTls {
        dir: dir.to_path_buf(),
        err,
    };
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    // The key first and private: a crash between the two writes leaves no usable pair, so
    // the next start makes a new one.
    write_private(&key, made.signing_key.serialize_pem().as_bytes()).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::warn!(dir = %dir.display(), "generated a self-signed certificate (--auto-tls); clients cannot verify it");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The server side of one listener kind: certificate (reloaded on change), optional client
/// certificate verification, suites and versions.
pub fn server_config(side: &Side, policy: &Policy, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    side.check()?;
    let provider = policy.provider()?;
    let resolver = Arc::new(ReloadingKey::open(cert, key, provider.clone())?);
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&policy.versions()?)?;
    let builder = match (&side.trusted_ca_file, side.client_cert_auth) {
        (Some(ca), true) => {
            let build = move |path: &Path| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
                WebPkiClientVerifier::builder_with_provider(load_roots(path)?, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))
            };
            builder.with_client_cert_verifier(Arc::new(ReloadingCa::open(ca, Box::new(build))?))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // gRPC over HTTP/2, and HTTP/1.1 for /health, /metrics and /version.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How this member dials its peers: plain TCP for `http://` peer URLs, TLS for `https://`
/// ones (presenting the peer certificate, checking the peer's against the peer CA).
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").field("tls", &self.tls.is_some()).finish()
    }
}

impl Dialer {
    /// Plain TCP only: an `https://` URL cannot be dialed.
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    /// A dialer for a member's peer side. With `--peer-auto-tls` and no trusted CA, the
    /// peers' self-signed certificates cannot be checked and are accepted as they come
    /// (etcd does the same); with a CA, they must be signed by it.
    pub fn new(side: &Side, policy: &Policy, key_pair: Option<(&Path, &Path)>) -> Result<Dialer, TlsError> {
        side.check()?;
        let provider = policy.provider()?;
        let builder =
            ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&policy.versions()?)?;
        let verifier: Arc<dyn ServerCertVerifier> = match &side.trusted_ca_file {
            Some(ca) => {
                let provider = provider.clone();
                let build = move |path: &Path| -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
                    let v: Arc<dyn ServerCertVerifier> =
                        WebPkiServerVerifier::builder_with_provider(load_roots(path)?, provider.clone())
                            .build()
                            .map_err(|e| TlsError::Verifier(e.to_string()))?;
                    Ok(v)
                };
                Arc::new(ReloadingCa::open(ca, Box::new(build))?)
            }
            None => Arc::new(AnyServerCert {
                algorithms: provider.signature_verification_algorithms,
            }),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match key_pair {
            Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(ReloadingKey::open(cert, key, provider)?)),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Dialer {
            tls: Some(Arc::new(config)),
        })
    }

    /// Connects to `host:port`, with TLS when `tls` is asked for; Nagle off either way.
    pub async fn connect(&self, host: &str, port: u16, tls: bool) -> io::Result<Conn> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Conn::Plain(tcp));
        }
        let config = self.tls.clone().ok_or_else(|| {
            io::Error::other(format!(
                "https://{host}:{port} needs peer TLS: give --peer-cert-file and --peer-key-file (or --peer-auto-tls)"
            ))
        })?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Conn::ClientTls(Box::new(s)))
    }
}

/// Accepts any server certificate (for `--peer-auto-tls` without a CA), still checking
/// that the server holds the certificate's key.
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connection, plain or TLS, as the servers and the peer client see it.
pub enum Conn {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What a server knows about a connection: addresses, and the client's certificate chain
/// when it presented one over TLS.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    pub client_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::ServerTls(s) => s.get_ref().0,
            Conn::ClientTls(s) => s.get_ref().0,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let client_certs = match self {
            Conn::ServerTls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
            _ => None,
        };
        ConnInfo {
            remote_addr: self.tcp().peer_addr().ok(),
            local_addr: self.tcp().local_addr().ok(),
            client_certs,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::ServerTls(s) => s.is_write_vectored(),
            Conn::ClientTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` until `stop`, with TLS when `tls` is given, and yields
/// them ready to serve. Handshakes run concurrently; one that fails is dropped and logged
/// (as etcd logs a rejected connection), one that takes longer than [`HANDSHAKE_TIMEOUT`]
/// is dropped quietly.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep listening.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(Conn::ServerTls(Box::new(s)))).await;
                    }
                    // etcd's warning for the same event: a wrong certificate, or a
                    // client that does not speak TLS.
                    Ok(Err(e)) => tracing::warn!(remote_addr = %remote, error = %e, "rejected connection"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The subject CN of a DER certificate (the user a client certificate names when auth is on).
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_cipher_suite_names_map_to_what_rustls_offers() {
        let p = Policy {
            cipher_suites: vec![
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(),
            ],
            ..Default::default()
        };
        let names: Vec<String> = p
            .provider()
            .unwrap()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(names.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()));
        assert!(names.contains(&"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".to_string()));
        assert!(!names.contains(&"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_string()));
        assert_eq!(names.iter().filter(|n| n.starts_with("TLS13_")).count(), 3);
        let bad = |s: &str| {
            Policy {
                cipher_suites: vec![s.into()],
                ..Default::default()
            }
            .provider()
            .unwrap_err()
            .to_string()
        };
        assert!(bad("TLS_RSA_WITH_AES_128_CBC_SHA").contains("not supported"));
        assert_eq!(bad("TLS_NOPE"), "unexpected TLS cipher suite \"TLS_NOPE\"");
    }

    #[test]
    fn versions_follow_etcds_flags() {
        let v = |min: Option<&str>, max: Option<&str>, suites: bool| {
            Policy {
                cipher_suites: if suites {
                    vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]
                } else {
                    vec![]
                },
                min_version: min.map(String::from),
                max_version: max.map(String::from),
            }
            .versions()
            .map(|v| v.iter().map(|v| format!("{:?}", v.version)).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
        };
        assert_eq!(v(None, None, false).unwrap(), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(v(Some("TLS1.3"), None, false).unwrap(), ["TLSv1_3"]);
        assert_eq!(v(None, Some("TLS1.2"), true).unwrap(), ["TLSv1_2"]);
        assert!(v(Some("TLS1.3"), None, true).unwrap_err().contains("not configurable"));
        assert!(v(Some("TLS1.1"), None, false).unwrap_err().contains("TLS1.2 or TLS1.3"));
        assert!(v(Some("TLS1.3"), Some("TLS1.2"), false).unwrap_err().contains("above"));
    }

    #[test]
    fn client_cert_auth_needs_a_ca_and_pairs_are_whole() {
        let side = Side {
            flag_prefix: "peer-",
            client_cert_auth: true,
            auto_tls: true,
            ..Default::default()
        };
        assert_eq!(
            side.check().unwrap_err().to_string(),
            "--peer-client-cert-auth needs --peer-trusted-ca-file (the CA that signs the certificates to accept)"
        );
        let half = Side {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            half.check().unwrap_err().to_string(),
            "--cert-file and --key-file must be given together"
        );
    }

    #[test]
    fn auto_tls_makes_a_pair_once_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let side = Side {
            auto_tls: true,
            ..Default::default()
        };
        let (c, k) = side.key_pair(dir.path(), &["127.0.0.1".into()]).unwrap().unwrap();
        let first = std::fs::read(&c).unwrap();
        let config = server_config(&side, &Policy::default(), &c, &k).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        let again = side.key_pair(dir.path(), &["127.0.0.1".into()]).unwrap().unwrap();
        assert_eq!((again.0.clone(), std::fs::read(&again.0).unwrap()), (c, first));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
