//! Switchyard's certificates: loading and checking certificate files, and
//! the lock-free SNI resolver the HTTPS listener asks on every handshake.
//!
//! Everything about a certificate is checked here, when it is loaded: the
//! chain parses, the key matches the leaf, it is valid now, and which host
//! names it covers. The handshake path ([`CertResolver`]) only looks names
//! up in a prebuilt map behind an `ArcSwap`, so swapping certificates never
//! blocks or slows a handshake. This crate returns rustls types only and
//! never imports pingora. ACME issuance and renewal ([`AcmeManager`]) and
//! the HTTP-01 answers ([`ChallengeStore`]) live here too.
//!
//! Start with [`load_pair`], then [`CertTable`] and [`CertResolver`].

mod acme;
mod acme_http;
mod error;
mod load;
mod resolver;

pub use acme::{
    temporary_cert, write_private, AcmeManager, ChallengeStore, HostStatus, OrderError,
};
pub use acme_http::{parse_retry_after, CaRefusal};
pub use error::CertError;
pub use load::{load_ca_file, load_pair, CertInfo, LoadedCert};
pub use resolver::{CertResolver, CertTable};
