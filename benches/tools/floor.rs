//! The floor for the load comparison: the smallest pingora proxy that does
//! the same plain forwarding as Switchyard (one upstream, keep-alive, no
//! routing, no header rewriting). What it costs is what the framework
//! costs; the gap to Switchyard is what Switchyard adds.
//!
//! `pingora-floor LISTEN UPSTREAM [TLS_LISTEN CERT KEY]`

use std::net::SocketAddr;

use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Floor {
    upstream: SocketAddr,
}

impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 2 && args.len() != 5 {
        eprintln!("usage: pingora-floor LISTEN UPSTREAM [TLS_LISTEN CERT KEY]");
        std::process::exit(2);
    }
    let Ok(upstream) = args[1].parse::<SocketAddr>() else {
        eprintln!("pingora-floor: UPSTREAM must be IP:PORT");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Floor { upstream });
    proxy.add_tcp(&args[0]);
    if args.len() == 5 {
        let Ok(mut tls) = TlsSettings::intermediate(&args[3], &args[4]) else {
            eprintln!("pingora-floor: bad TLS files");
            std::process::exit(2);
        };
        tls.enable_h2();
        proxy.add_tls_with_settings(&args[2], None, tls);
    }
    server.add_service(proxy);
    server.run_forever();
}
