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
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use metrics_exporter_prometheus::PrometheusBuilder;
use switchyard_admin::{AdminApi, AuditLog, Token};

use crate::rollout::{RolloutService, Rollouts};
use switchyard_certs::{AcmeManager, CertResolver, ChallengeStore};
use switchyard_config::AccessLogTarget;
use switchyard_config::{Config, TokenSource};
use switchyard_proxy::access::AccessLog;
use switchyard_proxy::deadline::HeadDeadline;
use switchyard_proxy::{HealthChecker, HealthRegistry, InFlight, Proxy, Snapshot};

use crate::assets::{log_cert, Assets};
use crate::control::Controller;
use crate::reload::{ReloadService, Reloader, Serving};

/// Read buffer per client connection when the listener reads PROXY protocol
/// headers (small reads, byte by byte for version 1). Without them the
/// connection is read unbuffered: rustls reads the socket into its own
/// record buffer and HTTP/1 reads heads and bodies into their own buffers,
/// so a buffer here would only sit idle. The framework's default (64 KiB,
/// allocated and zeroed at accept) makes every idle connection cost that
/// much: measured, 110 KiB per idle TLS connection at 64 KiB, 63 at 16 KiB,
/// 51 at 4 KiB, 47 unbuffered, with no throughput difference.
const PROXY_PROTOCOL_READ_BUFFER: usize = 4 * 1024;

/// Runs the proxy until it is told to stop; only returns on a startup error.
/// With `upgrade`, the listening sockets come from the running instance
/// (which hands them over on SIGQUIT) instead of being bound here.
pub fn run(
    config_path: PathBuf,
    config: Config,
    text: String,
    upgrade: bool,
) -> anyhow::Result<Infallible> {
    // A port in use would otherwise be retried silently for 30 s.
    let addrs = if upgrade {
        Vec::new()
    } else {
        vec![
            ("http", config.listen.http),
            ("https", config.listen.https),
            ("admin", config.listen.admin),
        ]
    };
    for (key, addr) in addrs {
        if let Some(addr) = addr {
            TcpListener::bind(addr)
                .with_context(|| format!("listen.{key} {addr} is not available"))?;
        }
    }
    // Before any metric handle is made: handles made earlier would be no-ops.
    // (The request duration histogram is Switchyard's own: see
    // `switchyard_proxy::metrics`.)
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let assets = match Assets::load(&config) {
        Ok(a) => a,
        Err(errors) => {
            for e in &errors {
                tracing::error!("{}", crate::error_chain(e));
            }
            anyhow::bail!("{} certificate or CA file(s) cannot be used", errors.len());
        }
    };
    for cert in &assets.certs {
        log_cert(cert, "certificate loaded");
    }

    let config_path = std::path::absolute(&config_path)
        .with_context(|| format!("cannot resolve {}", config_path.display()))?;
    // Until the reload controller listens for SIGHUP, a SIGHUP must not kill
    // the process (its default action); the flag hands it over.
    let early_hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hup.clone())
        .context("cannot install the SIGHUP handler")?;

    let grace = config.server.grace_period;
    let threads = config
        .server
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One worker has no one to steal work from or give it to: it runs the
    // single-threaded scheduler, which is cheaper per task switch.
    let work_stealing = threads > 1;
    tracing::info!(threads, work_stealing, "proxy workers");
    let mut conf = ServerConf {
        threads,
        work_stealing,
        // Whole seconds; the shutdown watcher below ends sooner once idle.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // Keyed by the listener, so two instances on one machine never share it.
    conf.upgrade_sock = format!(
        "{}/switchyard-{}.upgrade.sock",
        std::env::temp_dir().display(),
        config
            .listen
            .http
            .or(config.listen.https)
            .map(|a| a.to_string().replace([':', '[', ']'], "_"))
            .unwrap_or_default()
    );
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    if upgrade {
        tracing::info!(socket = %conf.upgrade_sock, "waiting for the running instance to hand over its sockets (send it SIGQUIT)");
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let health = Arc::new(HealthRegistry::default());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        &config,
        1,
        &assets.cas,
        &health,
    )));
    let in_flight = InFlight::default();
    let in_flight_drain = in_flight.clone();
    let challenges = Arc::new(ChallengeStore::default());
    tracing::info!(
        generation = 1,
        file = %config_path.display(),
        routes = config.routes.len(),
        services = config.services.len(),
        certificates = assets.certs.len(),
        "config loaded"
    );

    let access_log = match &config.server.access_log {
        None => None,
        Some(AccessLogTarget::Stdout) => Some(Arc::new(AccessLog::stdout())),
        Some(AccessLogTarget::File(path)) => {
            Some(Arc::new(AccessLog::file(path).with_context(|| {
                format!("cannot open the access log {}", path.display())
            })?))
        }
    };
    let app = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy::new(
            snapshot.clone(),
            in_flight.clone(),
            challenges.clone(),
            access_log,
        ),
    );
    let mut proxy = pingora::services::listening::Service::new(
        "switchyard proxy".into(),
        HeadDeadline::new(
            app,
            snapshot.clone(),
            config.listen.proxy_protocol,
            in_flight.clone(),
        ),
    );
    if let Some(http) = config.listen.http {
        proxy.add_listener(
            ListenerConfig::tcp(http.to_string()).l4_buffer(buffers(config.listen.proxy_protocol)),
        );
        tracing::info!(%http, "listening for HTTP");
    }
    // The resolver exists only with an HTTPS listener; certificates are
    // swapped into it on reload and when their files change.
    let resolver = match config.listen.https {
        None => None,
        Some(https) => {
            let resolver = Arc::new(CertResolver::new(assets.certs.clone()));
            let counter = metrics::counter!("switchyard_tls_handshakes_total");
            let mut tls =
                TlsSettings::with_callbacks(Box::new(crate::tls_log::HandshakeCounter(counter)))
                    .context("cannot set up the HTTPS listener")?;
            tls.set_cert_resolver(resolver.clone());
            tls.enable_h2();
            proxy.add_listener(
                ListenerConfig::tcp(https.to_string())
                    .tls(tls)
                    .l4_buffer(buffers(config.listen.proxy_protocol)),
            );
            tracing::info!(%https, "listening for HTTPS (HTTP/2 and HTTP/1.1)");
            Some(resolver)
        }
    };
    if config.listen.proxy_protocol {
        proxy.endpoints().set_pre_tls_callback(Arc::new(
            switchyard_proxy::proxy_protocol::BeforeTls {
                snapshot: snapshot.clone(),
            },
        ));
        tracing::info!("expecting a PROXY protocol header on every connection");
    }
    server.add_service(proxy);

    let mut acme_manager = None;
    if let (Some(acme), Some(resolver)) = (config.acme.clone(), resolver.clone()) {
        let manager = Arc::new(AcmeManager::new(acme, resolver, challenges));
        server.add_service(background_service("ACME", AcmeService(manager.clone())));
        acme_manager = Some(manager);
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(snapshot.clone()),
    ));
    let admin = config.listen.admin.map(|addr| (addr, config.admin.clone()));
    let audit = match &config.admin.audit_log {
        Some(path) => Some(Arc::new(AuditLog::open(path).with_context(|| {
            format!("cannot open the audit log {}", path.display())
        })?)),
        None => None,
    };
    let serving = Serving {
        snapshot: snapshot.clone(),
        health: health.clone(),
        resolver: resolver.clone(),
        certs: assets.certs,
    };
    let reloader = Arc::new(Reloader::new(config_path, config, text, serving, early_hup));
    server.add_service(background_service(
        "config reload",
        ReloadService(reloader.clone()),
    ));
    let rollouts = Arc::new(Rollouts::new(
        reloader.clone(),
        snapshot.clone(),
        audit.clone(),
    ));
    server.add_service(background_service(
        "rollouts",
        RolloutService(rollouts.clone()),
    ));
    if let Some((addr, settings)) = admin {
        let tokens = load_tokens(&settings)?;
        let controller = Controller {
            reloader,
            snapshot,
            health,
            rollouts,
            resolver: resolver.clone(),
            acme: acme_manager,
            started: std::time::SystemTime::now(),
            prometheus: prometheus.clone(),
        };
        let api = AdminApi::new(Arc::new(controller), tokens, audit.clone());
        let mut service =
            pingora::services::listening::Service::new("switchyard admin".into(), api);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
        tracing::info!(admin = %addr, "admin API listening");
    }
    server.add_service(background_service(
        "shutdown",
        ShutdownWatcher { in_flight, grace },
    ));
    if resolver.is_some() {
        server.add_service(background_service(
            "TLS handshake report",
            crate::tls_log::HandshakeReport,
        ));
    }

    // Once an upgrade or shutdown starts, answers close their connections.
    let mut phases = server.watch_execution_phase();
    let draining = in_flight_drain;
    std::thread::Builder::new()
        .name("phase-watch".into())
        .spawn(move || {
            use pingora::server::ExecutionPhase;
            while let Ok(phase) = phases.blocking_recv() {
                if matches!(
                    phase,
                    ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted
                ) {
                    draining.start_draining();
                }
            }
        })
        .context("cannot start the phase watcher")?;
    server.run(RunArgs::default());
    std::process::exit(0)
}

fn buffers(proxy_protocol: bool) -> L4BufferSettings {
    let read = if proxy_protocol {
        PROXY_PROTOCOL_READ_BUFFER
    } else {
        0
    };
    L4BufferSettings::new(read, DEFAULT_L4_WRITE_BUFFER_SIZE)
}

/// Reads each token's secret from its file or environment variable.
fn load_tokens(settings: &switchyard_config::Admin) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    for t in &settings.tokens {
        let secret = match &t.source {
            TokenSource::File(path) => std::fs::read_to_string(path).with_context(|| {
                format!("admin token {:?}: cannot read {}", t.name, path.display())
            })?,
            TokenSource::Env(var) => std::env::var(var).with_context(|| {
                format!(
                    "admin token {:?}: environment variable {var} is not set",
                    t.name
                )
            })?,
        };
        let secret = secret.trim().as_bytes().to_vec();
        anyhow::ensure!(
            secret.len() >= 16,
            "admin token {:?}: the secret must be at least 16 characters",
            t.name
        );
        tokens.push(Token {
            name: t.name.clone(),
            role: t.role,
            secret,
        });
    }
    Ok(tokens)
}

/// Runs the ACME manager until shutdown.
struct AcmeService(Arc<AcmeManager>);

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.0.clone().run() => {}
            _ = shutdown.changed() => {}
        }
    }
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
        // Connections accepted just before the signal get a moment to
        // start being served (and counted).
        tokio::time::sleep(Duration::from_millis(100)).await;
        loop {
            // Requests being served, and connections that may still bring
            // one: a connection accepted just before the signal is read for
            // up to a second, an idle keep-alive connection is closed then.
            let left = self.in_flight.count();
            let open = self.in_flight.connections();
            if left == 0 && open == 0 {
                tracing::info!(elapsed = ?started.elapsed(), "all requests done; exiting");
                std::process::exit(0);
            }
            if started.elapsed() >= self.grace {
                tracing::warn!(
                    in_flight = left,
                    connections = open,
                    "grace period over; cutting off the requests still in flight"
                );
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
