//! Live reload: watch the config file's directory and SIGHUP; parse,
//! validate, build one snapshot, publish it with one store.
//!
//! A file that fails to load changes nothing: the running generation keeps
//! serving and every problem is logged with its line and key.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use switchyard_config::Config;
use switchyard_proxy::{SharedSnapshot, Snapshot};

/// Editors and deploy tools save in several steps; wait this long after the
/// last event before reading the file.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Owns the config file and the published snapshot.
pub struct Reloader {
    path: PathBuf,
    snapshot: SharedSnapshot,
    early_hup: Arc<AtomicBool>,
    state: Mutex<State>,
}

struct State {
    /// The config the process started with: its listeners are the ones bound.
    boot: Config,
    /// Text of the file as last applied or rejected, to skip no-op events.
    last_text: Option<String>,
    generation: u64,
}

/// What one reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new generation is serving.
    Applied(u64),
    /// The file is the same as the last one seen.
    Unchanged,
    /// The file was refused; the current generation keeps serving.
    Rejected,
}

impl Reloader {
    /// A controller for `path`, whose content `text` (valid, as `boot`) is
    /// serving as generation 1 through `snapshot`.
    pub fn new(
        path: PathBuf,
        boot: Config,
        text: String,
        snapshot: SharedSnapshot,
        early_hup: Arc<AtomicBool>,
    ) -> Self {
        let last_text = Some(text);
        Reloader {
            path,
            snapshot,
            early_hup,
            state: Mutex::new(State {
                boot,
                last_text,
                generation: 1,
            }),
        }
    }

    /// Reads the file and applies it if it changed and is valid.
    pub fn reload(&self, trigger: &str) -> Outcome {
        let Ok(mut state) = self.state.lock() else {
            tracing::error!("reload state is poisoned; config reload disabled");
            return Outcome::Rejected;
        };
        let file = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    %file, %trigger, generation = state.generation, error = %e,
                    "config reload failed: cannot read the file; still serving the current generation"
                );
                return Outcome::Rejected;
            }
        };
        if state.last_text.as_deref() == Some(text.as_str()) {
            if trigger == "SIGHUP" {
                tracing::info!(%file, generation = state.generation, "SIGHUP: config file unchanged; nothing to apply");
            }
            return Outcome::Unchanged;
        }
        state.last_text = Some(text.clone());
        let config = match Config::parse(&text, &file) {
            Ok(c) => c,
            Err(diags) => {
                for d in &diags.0 {
                    tracing::error!(%trigger, "{d}");
                }
                tracing::error!(
                    %file, %trigger, generation = state.generation, problems = diags.0.len(),
                    "config reload rejected; still serving the current generation"
                );
                return Outcome::Rejected;
            }
        };
        for change in state.boot.restart_required(&config) {
            tracing::warn!(%file, "restart required: {change}; the running value is kept");
        }
        let generation = state.generation + 1;
        self.snapshot
            .store(Arc::new(Snapshot::build(&config, generation)));
        state.generation = generation;
        tracing::info!(
            %file, %trigger, generation,
            routes = config.routes.len(), services = config.services.len(),
            "config applied"
        );
        Outcome::Applied(generation)
    }

    async fn watch(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Editors replace the file (new inode), and orchestrators swap
        // symlinked directories: watch the directory, compare contents.
        let dir = self
            .path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch the config file; reload with SIGHUP");
                    None
                }
            };
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
                watcher = None;
            }
        }
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        // A change saved between the first load and the watch would be seen
        // by neither: look once more now that the watch is in place.
        self.reload("start");
        if self.early_hup.swap(false, Ordering::AcqRel) {
            self.reload("SIGHUP");
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = rx.recv() => {
                    // Let the writer finish, then take the file as it is.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("file change");
                }
                Some(()) = recv_hup(&mut hup) => {
                    self.early_hup.store(false, Ordering::Release);
                    self.reload("SIGHUP");
                }
            }
        }
        drop(watcher);
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.watch(shutdown).await;
    }
}
