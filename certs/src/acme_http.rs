//! The HTTP client the ACME account talks through: the same HTTPS client
//! the protocol library would build, plus a record of the CA's last error
//! answer (status, problem detail, `Retry-After`), so failures wait as long
//! as the CA asks and name what the CA said even where the protocol library
//! drops it (a directory that answers 503, say).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// An error answer from the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRefusal {
    /// When the answer arrived.
    pub received: SystemTime,
    /// Its status line, such as "503 Service Unavailable".
    pub status: String,
    /// The problem document's `detail`, if any.
    pub detail: Option<String>,
    /// When the CA wants to be asked again (`Retry-After`).
    pub retry_at: Option<SystemTime>,
}

/// Error answers are read whole to record their detail; they are small.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// HTTPS to the CA, recording the last error answer.
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    last_refusal: Arc<Mutex<Option<CaRefusal>>>,
}

impl AcmeHttp {
    /// A client trusting `ca_root` only, or the system's roots without one.
    pub fn new(
        ca_root: Option<&Path>,
        last_refusal: Arc<Mutex<Option<CaRefusal>>>,
    ) -> Result<AcmeHttp, String> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_root {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let der = CertificateDer::from_pem_file(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(der)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                builder.with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
                )
            }
            None => builder
                .try_with_platform_verifier()
                .map_err(|e| format!("system trust store: {e}"))?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(AcmeHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            last_refusal,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        let slot = self.last_refusal.clone();
        Box::pin(async move {
            let rsp = fut
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = rsp.status();
            if !(status.is_client_error() || status.is_server_error()) {
                return Ok(BytesResponse::from(rsp));
            }
            let (parts, body) = rsp.into_parts();
            let body = Limited::new(body, MAX_ERROR_BODY)
                .collect()
                .await
                .map_err(instant_acme::Error::Other)?
                .to_bytes();
            let received = SystemTime::now();
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail")?.as_str().map(str::to_string));
            let refusal = CaRefusal {
                received,
                status: status.to_string(),
                detail,
                retry_at: parse_retry_after(&parts.headers, received),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(refusal);
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>`, as an instant.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return now.checked_add(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(value).ok().map(|at| at.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&headers("120"), now),
            Some(now + Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        assert_eq!(
            parse_retry_after(&headers(&date), now),
            Some(now + Duration::from_secs(3600))
        );
        // A date in the past means "now", never earlier.
        let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&headers(&past), now), Some(now));
        assert_eq!(parse_retry_after(&headers("soon"), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }
}
