//! Loading certificate files, with every check done up front.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use switchyard_config::CertificateFiles;

use crate::CertError;

/// What is known about a loaded certificate, for logs, the admin API and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The certificate chain file.
    pub cert_path: PathBuf,
    /// The private key file.
    pub key_path: PathBuf,
    /// DNS names the leaf covers (lower case; wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The leaf's serial number, lower-case hex.
    pub serial: String,
    /// Whether this is the certificate for clients without a matching SNI.
    pub default: bool,
}

impl CertInfo {
    /// Seconds since the Unix epoch at which the certificate expires.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A checked certificate, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Chain and signing key, as the TLS handshake uses them.
    pub key: Arc<CertifiedKey>,
    /// Facts about the leaf.
    pub info: CertInfo,
    /// The files' contents, to tell later whether they changed.
    pub source: (Vec<u8>, Vec<u8>),
}

/// Reads `files` and checks them as of `now`: the chain parses, the key
/// matches the leaf, the leaf is valid now and names at least one DNS host.
pub fn load_pair(files: &CertificateFiles, now: SystemTime) -> Result<LoadedCert, CertError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    check_pair(files, cert_pem, key_pem, now)
}

/// [`load_pair`] on contents already read.
pub(crate) fn check_pair(
    files: &CertificateFiles,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificatePem {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf_der) = chain.first() else {
        return Err(CertError::BadCertificatePem {
            path: files.cert.clone(),
            reason: "the file holds no certificate".into(),
        });
    };
    for (index, der) in chain.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate {
            path: files.cert.clone(),
            index,
            reason: e.to_string(),
        })?;
    }
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| CertError::BadCertificate {
        path: files.cert.clone(),
        index: 0,
        reason: e.to_string(),
    })?;

    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if now_unix >= not_after {
        return Err(CertError::Expired {
            path: files.cert.clone(),
            not_after,
        });
    }
    if now_unix < not_before {
        return Err(CertError::NotYetValid {
            path: files.cert.clone(),
            not_before,
        });
    }
    let names = dns_names(&leaf);
    if names.is_empty() {
        return Err(CertError::NoNames {
            path: files.cert.clone(),
        });
    }
    let serial = leaf
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();

    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKeyPem {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        CertError::UnsupportedKey {
            path: files.key.clone(),
            reason: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(CertError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }

    Ok(LoadedCert {
        key: Arc::new(certified),
        info: CertInfo {
            cert_path: files.cert.clone(),
            key_path: files.key.clone(),
            names,
            not_before: UNIX_EPOCH + Duration::from_secs(u64::try_from(not_before).unwrap_or(0)),
            not_after: UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
            serial,
            default: files.default,
        },
        source: (cert_pem, key_pem),
    })
}

/// The DNS names in the leaf's subject alternative names, lower case.
fn dns_names(leaf: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if !dns.is_empty() && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    names
}

/// Reads a PEM file of CA certificates to trust for upstream TLS.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificatePem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadCertificatePem {
            path: path.to_path_buf(),
            reason: "the file holds no certificate".into(),
        });
    }
    for (index, der) in certs.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate {
            path: path.to_path_buf(),
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn files() -> CertificateFiles {
        CertificateFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            default: false,
        }
    }

    fn make(names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn good_pair_loads_with_names() {
        let (cert, key) = make(&["Shop.example.com", "*.example.com"]);
        let loaded = check_pair(&files(), cert.into(), key.into(), SystemTime::now()).expect("ok");
        assert_eq!(loaded.info.names, vec!["shop.example.com", "*.example.com"]);
        assert!(!loaded.info.serial.is_empty());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (cert, _) = make(&["a.example.com"]);
        let (_, other_key) = make(&["a.example.com"]);
        let err = check_pair(&files(), cert.into(), other_key.into(), SystemTime::now())
            .expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            "k.pem is not the private key of the certificate in c.pem"
        );
    }

    #[test]
    fn expired_and_garbage_are_refused() {
        let (cert, key) = make(&["a.example.com"]);
        let far = SystemTime::now() + Duration::from_secs(5000 * 365 * 24 * 3600);
        let err = check_pair(&files(), cert.clone().into(), key.clone().into(), far)
            .expect_err("expired");
        assert!(matches!(err, CertError::Expired { .. }), "{err}");
        let err = check_pair(&files(), b"garbage".to_vec(), key.into(), SystemTime::now())
            .expect_err("garbage");
        assert!(
            err.to_string()
                .starts_with("c.pem: no valid PEM certificate"),
            "{err}"
        );
        let err = check_pair(&files(), cert.into(), b"nope".to_vec(), SystemTime::now())
            .expect_err("no key");
        assert!(
            err.to_string()
                .starts_with("k.pem: no valid PEM private key"),
            "{err}"
        );
    }
}
