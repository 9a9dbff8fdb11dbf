//! A throwaway certificate authority and TLS clients for the tests.
//!
//! Every key here is generated at test time; nothing is committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

static SERIAL: AtomicU64 = AtomicU64::new(1000);

/// A test CA that issues leaf certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// Chain PEM (the leaf only).
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
    /// The leaf, DER: what a client sees.
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// A rustls server config serving this leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            KeyPair::from_pem(&self.key_pem)
                .expect("key")
                .serialize_der(),
        )
        .expect("key der");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .expect("server config");
        Arc::new(config)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchyard test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now, with a
    /// serial number no other leaf in this run has.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::SeqCst)));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Trust store holding only this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("add CA");
        roots
    }

    /// Writes the CA certificate into `dir` as `NAME`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

/// Accepts any server certificate, so tests can look at what was served.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a test client connects.
pub struct ClientSpec<'a> {
    /// SNI to send; `None` sends none.
    pub sni: Option<&'a str>,
    /// Verify against these roots; `None` accepts any certificate.
    pub roots: Option<RootCertStore>,
    /// Protocol versions offered.
    pub versions: &'a [&'static rustls::SupportedProtocolVersion],
    /// ALPN protocols offered.
    pub alpn: &'a [&'a [u8]],
}

impl Default for ClientSpec<'_> {
    fn default() -> Self {
        ClientSpec {
            sni: None,
            roots: None,
            versions: rustls::DEFAULT_VERSIONS,
            alpn: &[],
        }
    }
}

/// Opens a TLS connection to `addr` as `spec` says.
pub async fn tls_connect(
    addr: SocketAddr,
    spec: ClientSpec<'_>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_after(addr, spec, b"").await
}

/// Like [`tls_connect`], sending `prefix` (a PROXY header, say) first.
pub async fn tls_connect_after(
    addr: SocketAddr,
    spec: ClientSpec<'_>,
    prefix: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(spec.versions)
        .expect("versions");
    let mut config = match spec.roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth(),
    };
    config.alpn_protocols = spec.alpn.iter().map(|p| p.to_vec()).collect();
    // An IP address as the server name makes rustls send no SNI.
    let name = match spec.sni {
        Some(sni) => ServerName::try_from(sni.to_string()).expect("server name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let mut tcp = TcpStream::connect(addr).await?;
    if !prefix.is_empty() {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(prefix).await?;
    }
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate was served")
        .clone()
        .into_owned()
}
