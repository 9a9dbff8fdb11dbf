//! The SNI resolver: a prebuilt name -> certificate map behind an `ArcSwap`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{CertInfo, LoadedCert};

/// Which certificate serves which name; immutable once built.
#[derive(Debug, Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`: `*.example.com` is `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    infos: Vec<CertInfo>,
}

impl CertTable {
    /// Builds the table. When two certificates cover the same name, the
    /// first one listed serves it.
    pub fn build(certs: &[LoadedCert]) -> CertTable {
        let mut table = CertTable::default();
        for cert in certs {
            for name in &cert.info.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.to_string()),
                    None => table.exact.entry(name.clone()),
                };
                map.or_insert_with(|| cert.key.clone());
            }
            if cert.info.default && table.default.is_none() {
                table.default = Some(cert.key.clone());
            }
            table.infos.push(cert.info.clone());
        }
        table
    }

    /// The certificate for `sni` (lower case): an exact name, then a
    /// wildcard covering its first label, then the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(key) = self.exact.get(name) {
                return Some(key);
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key);
                }
            }
        }
        self.default.as_ref()
    }

    /// What is loaded, in configuration order.
    pub fn infos(&self) -> &[CertInfo] {
        &self.infos
    }
}

/// The resolver the HTTPS listener asks on every handshake.
///
/// It serves two sources: static certificates from the config (which win
/// where both cover a name) and managed ones (ACME, or temporary ones
/// while an order is pending), one per host.
#[derive(Debug, Default)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    unmatched: AtomicU64,
    sources: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    statics: Vec<LoadedCert>,
    managed: BTreeMap<String, LoadedCert>,
}

impl CertResolver {
    /// A resolver serving the static certificates `statics`.
    pub fn new(statics: Vec<LoadedCert>) -> CertResolver {
        let resolver = CertResolver::default();
        resolver.set_static(statics);
        resolver
    }

    /// Replaces the static certificates; from the next handshake on, they
    /// serve (handshakes in progress and established connections keep what
    /// they have).
    pub fn set_static(&self, certs: Vec<LoadedCert>) {
        self.update(|s| s.statics = certs);
    }

    /// Serves `cert` for `host` (an ACME or temporary certificate).
    pub fn set_managed(&self, host: &str, cert: LoadedCert) {
        self.update(|s| {
            s.managed.insert(host.to_string(), cert);
        });
    }

    /// Whether a static certificate covers `host` (so it is not ordered).
    pub fn covers_statically(&self, host: &str) -> bool {
        let Ok(sources) = self.sources.lock() else {
            return false;
        };
        let parent = host.split_once('.').map(|(_, p)| format!("*.{p}"));
        sources.statics.iter().any(|c| {
            c.info
                .names
                .iter()
                .any(|n| n == host || Some(n) == parent.as_ref())
        })
    }

    fn update(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = match self.sources.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut sources);
        let all: Vec<LoadedCert> = sources
            .statics
            .iter()
            .chain(sources.managed.values())
            .cloned()
            .collect();
        self.table.store(Arc::new(CertTable::build(&all)));
    }

    /// The table being served.
    pub fn table(&self) -> Arc<CertTable> {
        self.table.load_full()
    }

    /// Handshakes refused because no certificate covered the name and no
    /// default was set.
    pub fn unmatched(&self) -> u64 {
        self.unmatched.load(Ordering::Relaxed)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let found = match hello.server_name() {
            Some(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                table.lookup(Some(&name.to_ascii_lowercase())).cloned()
            }
            name => table.lookup(name).cloned(),
        };
        if found.is_none() {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}
