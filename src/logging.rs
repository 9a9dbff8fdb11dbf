//! Log setup: `tracing` to standard error, human or JSON; the framework's
//! `log` records are bridged into the same stream.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::tls_log::QuietHandshakes;
use crate::LogFormat;

/// The default filter: `info`, but the TLS library's warnings, which are
/// about what a client sent (an IP address as the server name, a bad
/// alert) and come once per connection, are left out: any client could
/// otherwise write a warning line per connection (every client that sends
/// an IP address as its server name does). Failed handshakes are counted
/// and reported by [`crate::tls_log`].
const DEFAULT_FILTER: &str = "info,rustls=error";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter
/// ([`DEFAULT_FILTER`]).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` also installs the `log` bridge.
    let result = match format {
        LogFormat::Human => registry
            .with(fmt.with_target(false).with_filter(QuietHandshakes))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_filter(QuietHandshakes))
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("switchyard: logging is not available: {e}");
    }
}
