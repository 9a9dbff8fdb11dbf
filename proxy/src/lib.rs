//! Switchyard's data path: routing, pools and the pingora proxy.
//!
//! This is the only crate that touches pingora request types. It owns the
//! compiled form of a config generation ([`Snapshot`]: router, services,
//! pools) and the [`Proxy`] that serves requests from it. It must not read
//! files, watch anything or parse configuration: the binary builds snapshots
//! from `switchyard-config` values and publishes them through a
//! [`SharedSnapshot`].
//!
//! Start reading at [`proxy`] (the request phases), then [`snapshot`].

pub mod access;
pub mod deadline;
pub mod guard;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod snapshot;
pub mod stats;

pub use health::{BackendReport, BackendState, HealthChecker, HealthRegistry};
pub use proxy::{ConnectionOpen, InFlight, Proxy, RequestCtx, SharedSnapshot};
pub use snapshot::{CaBundles, RouteTarget, Router, Snapshot};
pub use stats::{PoolStats, StatsSample};
