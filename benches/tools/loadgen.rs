//! Load tools the stock generators lack, for the load comparison.
//!
//! - `loadgen latency URL RATE SECONDS CONNECTIONS`: sends GETs at a fixed
//!   total rate (open loop: a late response does not delay the next
//!   request's schedule) and prints `{"p50_us":..,"p99_us":..,"sent":..,"errors":..}`.
//!   Latency counts from the moment the request is sent (the timer wakes
//!   up to a millisecond late, which would otherwise swamp the numbers).
//! - `loadgen idle-tls ADDR SNI COUNT HOLD_SECONDS`: opens COUNT TLS
//!   connections (no verification), completes each handshake, holds them
//!   idle for HOLD_SECONDS and prints `{"open":..}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

fn usage() -> ! {
    eprintln!(
        "usage: loadgen latency URL RATE SECONDS CONNECTIONS\n       loadgen idle-tls ADDR SNI COUNT HOLD_SECONDS"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("latency") => {
            let url: hyper::Uri = arg(&args, 1);
            latency(url, arg(&args, 2), arg(&args, 3), arg(&args, 4)).await
        }
        Some("idle-tls") => {
            idle_tls(arg(&args, 1), arg(&args, 2), arg(&args, 3), arg(&args, 4)).await
        }
        _ => usage(),
    }
}

async fn latency(url: hyper::Uri, rate: u64, seconds: u64, connections: u64) {
    let authority = url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| usage());
    let total = rate * seconds;
    let start = Instant::now() + Duration::from_millis(200);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (url, authority, next, errors) =
            (url.clone(), authority.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let Ok(tcp) = tokio::net::TcpStream::connect(&authority).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return samples;
            };
            let _ = tcp.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await
            else {
                errors.fetch_add(1, Ordering::Relaxed);
                return samples;
            };
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return samples;
                }
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let req = hyper::Request::get(url.clone())
                    .header("host", authority.as_str())
                    .body(Empty::new());
                let ok = match req {
                    Ok(req) => match sender.send_request(req).await {
                        Ok(resp) => resp.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    samples.push(sent.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return samples;
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            all.extend(s);
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0
        } else {
            all[((all.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "{{\"p50_us\":{},\"p99_us\":{},\"sent\":{},\"errors\":{}}}",
        pct(0.50),
        pct(0.99),
        all.len(),
        errors.load(Ordering::Relaxed)
    );
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn idle_tls(addr: String, sni: String, count: usize, hold: u64) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| usage())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni).unwrap_or_else(|_| usage());
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        if let Ok(tls) = connector.connect(name.clone(), tcp).await {
            open.push(tls);
        }
    }
    println!("{{\"open\":{}}}", open.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
}
