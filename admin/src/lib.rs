//! Switchyard's admin API: status, weight shifts, blue/green switches,
//! draining and metrics, on a listener of its own.
//!
//! This crate will define the `Control` trait it needs and serve it over
//! HTTP with authentication and an audit log; the binary implements the
//! trait. It never imports the proxy or certs crates. Nothing lives here
//! yet: configuration changes go through the config file and its live reload.
