//! Server assembly: one pingora `Server` with the proxy service, the reload
//! controller and the shutdown watcher.

use std::convert::Infallible;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use switchyard_config::Config;
use switchyard_proxy::{InFlight, Proxy, Snapshot};

use crate::reload::Reloader;

/// Runs the proxy until it is told to stop; only returns on a startup error.
pub fn run(config_path: PathBuf, config: Config, text: String) -> anyhow::Result<Infallible> {
    // A port in use would otherwise be retried silently for 30 s.
    TcpListener::bind(config.listen.http)
        .with_context(|| format!("listen.http {} is not available", config.listen.http))?;

    let config_path = std::path::absolute(&config_path)
        .with_context(|| format!("cannot resolve {}", config_path.display()))?;
    // Until the reload controller listens for SIGHUP, a SIGHUP must not kill
    // the process (its default action); the flag hands it over.
    let early_hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hup.clone())
        .context("cannot install the SIGHUP handler")?;

    let grace = config.server.grace_period;
    let mut conf = ServerConf {
        threads: config
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // Whole seconds; the shutdown watcher below ends sooner once idle.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Keyed by the listener, so two instances on one machine never share it.
    conf.upgrade_sock = format!(
        "{}/switchyard-{}.upgrade.sock",
        std::env::temp_dir().display(),
        config.listen.http.to_string().replace([':', '[', ']'], "_")
    );
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(&config, 1)));
    let in_flight = InFlight::default();
    let listen = config.listen.http;
    tracing::info!(
        generation = 1,
        file = %config_path.display(),
        routes = config.routes.len(),
        services = config.services.len(),
        "config loaded"
    );

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(snapshot.clone(), in_flight.clone()),
        "switchyard proxy",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);

    let reloader = Reloader::new(config_path, config, text, snapshot, early_hup);
    server.add_service(background_service("config reload", reloader));
    server.add_service(background_service(
        "shutdown",
        ShutdownWatcher { in_flight, grace },
    ));
    tracing::info!(http = %listen, "switchyard listening");

    server.run(RunArgs::default());
    std::process::exit(0)
}

/// Ends a graceful shutdown as soon as the last in-flight request is done,
/// rather than always sleeping through the whole grace period.
struct ShutdownWatcher {
    in_flight: InFlight,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for ShutdownWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let started = Instant::now();
        tracing::info!(
            in_flight = self.in_flight.count(),
            grace_period = ?self.grace,
            "shutting down: no new connections; waiting for in-flight requests"
        );
        // Give connections that were accepted just before the signal a
        // moment to present their request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        loop {
            let left = self.in_flight.count();
            if left == 0 {
                tracing::info!(elapsed = ?started.elapsed(), "all requests done; exiting");
                std::process::exit(0);
            }
            if started.elapsed() >= self.grace {
                tracing::warn!(
                    in_flight = left,
                    "grace period over; cutting off the requests still in flight"
                );
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
