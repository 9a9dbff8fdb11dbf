//! Files a config refers to (certificates and upstream CA bundles), loaded
//! and checked together so a config is applied with all of them or none.

use std::time::{Duration, SystemTime};

use switchyard_certs::{load_ca_file, load_pair, CertError, LoadedCert};
use switchyard_config::Config;
use switchyard_proxy::CaBundles;

/// Certificates due to expire within this long are logged as warnings.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Everything a config's files provide.
pub struct Assets {
    /// The `[[tls.certificates]]`, in config order.
    pub certs: Vec<LoadedCert>,
    /// The pools' `ca` files.
    pub cas: CaBundles,
}

impl Assets {
    /// Loads and checks every file `config` names; every problem is returned.
    pub fn load(config: &Config) -> Result<Assets, Vec<CertError>> {
        let now = SystemTime::now();
        let mut errors = Vec::new();
        let mut certs = Vec::new();
        for files in &config.tls.certificates {
            match load_pair(files, now) {
                Ok(c) => certs.push(c),
                Err(e) => errors.push(e),
            }
        }
        let mut cas = CaBundles::new();
        let ca_paths = config
            .services
            .iter()
            .flat_map(|s| &s.pools)
            .filter_map(|p| p.tls.as_ref().and_then(|t| t.ca.as_ref()));
        for path in ca_paths {
            if cas.contains_key(path) {
                continue;
            }
            match load_ca_file(path) {
                Ok(ders) => {
                    cas.insert(path.clone(), ders.iter().map(|d| d.to_vec()).collect());
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Assets { certs, cas })
        } else {
            Err(errors)
        }
    }
}

/// Logs what a certificate covers and when it expires.
pub fn log_cert(cert: &LoadedCert, what: &str) {
    let info = &cert.info;
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let days_left = left.as_secs() / 86_400;
    let not_after = humantime::format_rfc3339_seconds(info.not_after);
    let names = info.names.join(",");
    if left < EXPIRY_WARNING {
        tracing::warn!(
            file = %info.cert_path.display(), %names, %not_after, days_left, serial = %info.serial,
            "{what}; it expires soon"
        );
    } else {
        tracing::info!(
            file = %info.cert_path.display(), %names, %not_after, days_left,
            serial = %info.serial, default = info.default,
            "{what}"
        );
    }
}
