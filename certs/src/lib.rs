//! Switchyard's certificates: the certificate store, the SNI resolver and
//! ACME issuance and renewal.
//!
//! This crate will own loading and checking certificates (chain, key match,
//! expiry, names), the lock-free resolver the TLS listener asks on every
//! handshake, the HTTP-01 challenge store and the ACME client. It returns
//! rustls types only and never imports pingora. Nothing lives here yet: the
//! plain HTTP listener is all the proxy serves so far.
