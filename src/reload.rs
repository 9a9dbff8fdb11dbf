//! Live reload: watch the config file's directory, the certificate files'
//! directories and SIGHUP; parse, validate, load the files the config names,
//! build one snapshot, publish it with one store.
//!
//! A config that fails to load changes nothing: the running generation keeps
//! serving and every problem is logged with its file, line and key. A
//! certificate file replaced under a running config is checked the same
//! way: a bad one is refused and the previous certificate keeps serving.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use switchyard_admin::Refusal;
use switchyard_certs::{load_pair, CertResolver, LoadedCert};
use switchyard_config::Config;
use switchyard_proxy::{HealthRegistry, SharedSnapshot, Snapshot};
use toml_edit::DocumentMut;

use crate::assets::{log_cert, Assets};
use crate::error_chain;

/// Editors and deploy tools save in several steps; wait this long after the
/// last event before reading the files.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This generation is now serving.
    Applied(u64),
    /// Nothing changed; this generation keeps serving.
    Unchanged(u64),
    /// Refused, for these reasons; the current generation keeps serving.
    Rejected(Vec<String>),
}

/// The last reload, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    /// When it happened.
    pub at: SystemTime,
    /// What started it.
    pub trigger: String,
    /// The generation it applied, or why it was refused.
    pub result: Result<u64, Vec<String>>,
}

impl State {
    fn record(&mut self, trigger: &str, result: Result<u64, Vec<String>>) {
        metrics::counter!(
            "switchyard_config_reloads_total",
            "result" => if result.is_ok() { "applied" } else { "rejected" }
        )
        .increment(1);
        if let Ok(now) = SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            metrics::gauge!("switchyard_config_last_reload_timestamp_seconds")
                .set(now.as_secs_f64());
        }
        self.last_reload = Some(LastReload {
            at: SystemTime::now(),
            trigger: trigger.to_string(),
            result,
        });
    }
}

/// Writes `bytes` to `path` (or the file it links to) atomically
/// (temporary file in the same directory, fsync, rename), keeping the
/// file's permissions.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // A symlinked config is updated where it lives; the link stays a link.
    let resolved = std::fs::canonicalize(path)?;
    let path = resolved.as_path();
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.switchyard-tmp"));
    let permissions = std::fs::metadata(path).map(|m| m.permissions()).ok();
    {
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(p) = permissions {
            f.set_permissions(p)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// What generation 1 is served with, handed to the [`Reloader`].
pub struct Serving {
    /// The published snapshot.
    pub snapshot: SharedSnapshot,
    /// Backend health, carried from one generation to the next.
    pub health: Arc<HealthRegistry>,
    /// Present when the process has an HTTPS listener.
    pub resolver: Option<Arc<CertResolver>>,
    /// The certificates in the resolver, in config order.
    pub certs: Vec<LoadedCert>,
}

/// Owns the config file, the published snapshot and the served certificates.
pub struct Reloader {
    path: PathBuf,
    snapshot: SharedSnapshot,
    /// Backend health, carried from one generation to the next.
    health: Arc<HealthRegistry>,
    /// Present when the process has an HTTPS listener.
    resolver: Option<Arc<CertResolver>>,
    early_hup: Arc<AtomicBool>,
    state: Mutex<State>,
}

struct State {
    /// The config the process started with: its listeners are the ones bound.
    boot: Config,
    /// The config being served.
    current: Config,
    /// A valid config refused only because a file it names could not be
    /// used; retried on every later event until it loads or the text changes.
    pending: Option<Config>,
    /// Text of the file as last applied or refused, to skip no-op events.
    last_text: String,
    /// Text of the config serving (the base for admin changes).
    applied_text: String,
    /// When the last reload happened and how it ended.
    last_reload: Option<LastReload>,
    generation: u64,
    /// The certificates being served, in `current.tls.certificates` order.
    certs: Vec<LoadedCert>,
    /// Certificate file contents already refused, so each bad version is
    /// logged once.
    refused: HashMap<PathBuf, (Vec<u8>, Vec<u8>)>,
}

impl Reloader {
    /// A controller for `path`, whose content `text` (valid, as `boot`) is
    /// being served as generation 1 by `serving`.
    pub fn new(
        path: PathBuf,
        boot: Config,
        text: String,
        serving: Serving,
        early_hup: Arc<AtomicBool>,
    ) -> Self {
        Reloader {
            path,
            snapshot: serving.snapshot,
            health: serving.health,
            resolver: serving.resolver,
            early_hup,
            state: Mutex::new(State {
                current: boot.clone(),
                boot,
                pending: None,
                applied_text: text.clone(),
                last_text: text,
                last_reload: None,
                generation: 1,
                certs: serving.certs,
                refused: HashMap::new(),
            }),
        }
    }

    /// Looks at the config file and the certificate files and applies what
    /// changed and is valid.
    pub fn reload(&self, trigger: &str) -> Outcome {
        let started = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            tracing::error!("reload state is poisoned; reloads are disabled");
            return Outcome::Rejected(vec!["reload state is poisoned".into()]);
        };
        let file = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    %file, %trigger, generation = state.generation, error = %e,
                    "config reload failed: cannot read the file; still serving the current generation"
                );
                let errors = vec![format!("cannot read {file}: {e}")];
                state.record(trigger, Err(errors.clone()));
                return Outcome::Rejected(errors);
            }
        };
        if state.last_text == text {
            if let Some(config) = state.pending.take() {
                return self.apply(&mut state, config, text, trigger, started);
            }
            // Certificate files replaced under the served config are
            // picked up whatever the config file on disk says.
            self.check_certificates(&mut state);
            // A file already refused (by the watcher, perhaps a moment
            // before) is refused again when a reload is asked for, so the
            // caller learns why it is not served instead of "unchanged";
            // the watcher's own repeats stay quiet.
            let asked = matches!(trigger, "admin API" | "SIGHUP");
            if !(asked && text != state.applied_text) {
                if trigger == "SIGHUP" {
                    tracing::info!(%file, generation = state.generation, "SIGHUP: config file unchanged; nothing to apply");
                }
                return Outcome::Unchanged(state.generation);
            }
        }
        state.last_text = text.clone();
        state.pending = None;
        match Config::parse(&text, &file) {
            Ok(config) => self.apply(&mut state, config, text, trigger, started),
            Err(diags) => {
                for d in &diags.0 {
                    tracing::error!(%trigger, "{d}");
                }
                tracing::error!(
                    %file, %trigger, generation = state.generation, problems = diags.0.len(),
                    "config reload rejected; still serving the current generation"
                );
                let errors: Vec<String> = diags.0.iter().map(|d| d.to_string()).collect();
                state.record(trigger, Err(errors.clone()));
                Outcome::Rejected(errors)
            }
        }
    }

    /// Loads the files `config` names and, if all are good, serves it.
    fn apply(
        &self,
        state: &mut State,
        config: Config,
        text: String,
        trigger: &str,
        started: Instant,
    ) -> Outcome {
        let file = self.path.display().to_string();
        let assets = match Assets::load(&config) {
            Ok(a) => a,
            Err(errors) => {
                for e in &errors {
                    tracing::error!(%trigger, "{}", error_chain(e));
                }
                tracing::error!(
                    %file, %trigger, generation = state.generation, problems = errors.len(),
                    "config reload rejected: files it names cannot be used; still serving the current generation"
                );
                state.pending = Some(config);
                let errors: Vec<String> = errors.iter().map(|e| error_chain(e)).collect();
                state.record(trigger, Err(errors.clone()));
                return Outcome::Rejected(errors);
            }
        };
        let generation = self.install(state, config, text, assets, trigger, started);
        Outcome::Applied(generation)
    }

    /// Serves `config` (valid, with its files loaded) as the next generation.
    fn install(
        &self,
        state: &mut State,
        config: Config,
        text: String,
        assets: Assets,
        trigger: &str,
        started: Instant,
    ) -> u64 {
        let file = self.path.display().to_string();
        for change in state.boot.restart_required(&config) {
            tracing::warn!(%file, "restart required: {change}; the running value is kept");
        }
        let generation = state.generation + 1;
        let previous = self.snapshot.swap(Arc::new(Snapshot::build(
            &config,
            generation,
            &assets.cas,
            &self.health,
        )));
        // Requests still holding the old generation keep its state alive;
        // what only it referred to is forgotten once it is dropped here.
        drop(previous);
        self.health.prune();
        if let Some(resolver) = &self.resolver {
            let changed = assets.certs.len() != state.certs.len()
                || assets
                    .certs
                    .iter()
                    .zip(&state.certs)
                    .any(|(new, old)| new.info != old.info);
            if changed {
                for cert in &assets.certs {
                    log_cert(cert, "certificate loaded");
                }
            }
            resolver.set_static(assets.certs.clone());
        }
        state.certs = assets.certs;
        state.refused.clear();
        state.generation = generation;
        tracing::info!(
            %file, %trigger, generation,
            routes = config.routes.len(), services = config.services.len(),
            certificates = state.certs.len(),
            took_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "config applied"
        );
        state.current = config;
        state.applied_text = text;
        state.record(trigger, Ok(generation));
        generation
    }

    /// Changes the config the way `edit` says: validated like the file,
    /// written back to it (comments and layout kept, atomically), then
    /// served. `if_match` must name the generation serving, if given.
    /// Nothing is applied unless the file was written.
    pub fn edit(
        &self,
        if_match: Option<u64>,
        trigger: &str,
        edit: impl FnOnce(&mut DocumentMut, &Config) -> Result<(), Refusal>,
    ) -> Result<u64, Refusal> {
        let started = Instant::now();
        let mut state = self
            .state
            .lock()
            .map_err(|_| Refusal::new(500, "reload state is poisoned"))?;
        if let Some(expected) = if_match {
            if expected != state.generation {
                return Err(Refusal::new(
                    409,
                    format!(
                        "the change was based on generation {expected}, but generation {} is serving",
                        state.generation
                    ),
                ));
            }
        }
        let mut doc: DocumentMut = state
            .applied_text
            .parse()
            .map_err(|e| Refusal::new(500, format!("the serving config does not parse: {e}")))?;
        edit(&mut doc, &state.current)?;
        let text = doc.to_string();
        let file = self.path.display().to_string();
        let config = Config::parse(&text, &file).map_err(|diags| Refusal {
            status: 400,
            reason: "the change makes the config invalid".into(),
            details: diags.0.iter().map(|d| d.to_string()).collect(),
        })?;
        let assets = Assets::load(&config).map_err(|errors| Refusal {
            status: 400,
            reason: "files the config names cannot be used".into(),
            details: errors.iter().map(|e| error_chain(e)).collect(),
        })?;
        write_atomically(&self.path, text.as_bytes()).map_err(|e| {
            Refusal::new(
                500,
                format!("cannot write {file}: {e}; nothing was changed"),
            )
        })?;
        // The watcher will see this write; the same text is then a no-op.
        state.last_text = text.clone();
        state.pending = None;
        Ok(self.install(&mut state, config, text, assets, trigger, started))
    }

    /// The generation serving and the last reload's outcome.
    pub fn summary(&self) -> (u64, Option<LastReload>) {
        match self.state.lock() {
            Ok(s) => (s.generation, s.last_reload.clone()),
            Err(_) => (0, None),
        }
    }

    /// Swaps in certificate files that changed under the running config.
    fn check_certificates(&self, state: &mut State) {
        let Some(resolver) = &self.resolver else {
            return;
        };
        let now = SystemTime::now();
        let mut swapped = false;
        let State {
            current,
            certs,
            refused,
            ..
        } = state;
        for (files, served) in current.tls.certificates.iter().zip(certs.iter_mut()) {
            let (Ok(cert_pem), Ok(key_pem)) =
                (std::fs::read(&files.cert), std::fs::read(&files.key))
            else {
                // Mid-replacement, or removed: keep serving what is loaded.
                continue;
            };
            if served.source.0 == cert_pem && served.source.1 == key_pem {
                continue;
            }
            let contents = (cert_pem, key_pem);
            if refused.get(&files.cert) == Some(&contents) {
                continue;
            }
            match load_pair(files, now) {
                Ok(new) if new.source == contents => {
                    log_cert(&new, "certificate file changed; new certificate serving");
                    *served = new;
                    refused.remove(&files.cert);
                    swapped = true;
                }
                // The files changed again while being read: the next event
                // brings the final version.
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(
                        file = %files.cert.display(),
                        serial = %served.info.serial,
                        "certificate refused, still serving the previous one: {}",
                        error_chain(&e)
                    );
                    refused.insert(files.cert.clone(), contents);
                }
            }
        }
        if swapped {
            resolver.set_static(certs.clone());
        }
    }

    /// The files whose changes matter: the config file and the
    /// certificate files of the served and the pending config.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        if let Ok(state) = self.state.lock() {
            for config in std::iter::once(&state.current).chain(state.pending.as_ref()) {
                for pair in &config.tls.certificates {
                    files.push(pair.cert.clone());
                    files.push(pair.key.clone());
                }
            }
        }
        files
    }

    async fn watch(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Editors replace files (new inode), and orchestrators swap
        // symlinked directories: watch directories, compare contents. Only
        // events that can concern the files wake the loop: a log written
        // next to the config must not have it and every certificate read
        // again after each line.
        let names = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = names.clone();
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                // A poisoned lock errs on the side of looking.
                let concerns = seen.lock().map_or(true, |names| {
                    event.paths.iter().any(|p| concerns_watched(p, &names))
                });
                if concerns {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch files; reload with SIGHUP");
                    None
                }
            };
        let mut watching = BTreeSet::new();
        self.watch_new_dirs(&mut watcher, &mut watching, &names);
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
        // A config refused just now for files it names that are not there
        // yet is kept pending: watch for those files as well.
        self.watch_new_dirs(&mut watcher, &mut watching, &names);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = rx.recv() => {
                    // Let the writer finish, then take the files as they are.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("file change");
                }
                Some(()) = recv_hup(&mut hup) => {
                    self.early_hup.store(false, Ordering::Release);
                    self.reload("SIGHUP");
                }
            }
            self.watch_new_dirs(&mut watcher, &mut watching, &names);
        }
    }

    /// Watches the directories of the files that matter not watched yet,
    /// and makes `names` their names.
    fn watch_new_dirs(
        &self,
        watcher: &mut Option<RecommendedWatcher>,
        watching: &mut BTreeSet<PathBuf>,
        names: &Mutex<Names>,
    ) {
        let Some(w) = watcher.as_mut() else {
            return;
        };
        let files = self.watched_files();
        if let Ok(mut names) = names.lock() {
            *names = files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
                .collect();
        }
        let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
        for dir in dirs {
            if watching.contains(&dir) {
                continue;
            }
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::error!(
                    dir = %dir.display(), error = %e,
                    "cannot watch this directory; changes in it need a SIGHUP"
                );
            }
            // Tried once either way, so a failure is logged once.
            watching.insert(dir);
        }
    }
}

/// The names of the files whose changes matter.
type Names = BTreeSet<std::ffi::OsString>;

/// Whether a change to `path`, in a watched directory, can concern the
/// watched files: one of them (by name: written, replaced, renamed over,
/// removed), or a directory or symlink, through which they may resolve
/// (Kubernetes swaps the `..data` link to a new directory of files).
/// Anything else there (a log, an editor's swap file) does not.
fn concerns_watched(path: &Path, names: &Names) -> bool {
    if path.file_name().is_some_and(|n| names.contains(n)) {
        return true;
    }
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() || m.file_type().is_symlink())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs a shared [`Reloader`]'s watch loop.
pub struct ReloadService(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.watch(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_files_and_links_or_directories_concern_the_watch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let names: Names = ["switchyard.toml", "cert.pem"].map(Into::into).into();
        std::fs::write(d.join("switchyard.toml"), "").expect("write");
        std::fs::write(d.join("switchyard.log"), "").expect("write");
        std::fs::create_dir(d.join("..2026_11_23")).expect("dir");
        std::os::unix::fs::symlink("..2026_11_23", d.join("..data")).expect("link");

        assert!(concerns_watched(&d.join("switchyard.toml"), &names));
        // Removed or renamed away: known by its name.
        assert!(concerns_watched(&d.join("cert.pem"), &names));
        assert!(concerns_watched(&d.join("..data"), &names));
        assert!(concerns_watched(&d.join("..2026_11_23"), &names));
        assert!(!concerns_watched(&d.join("switchyard.log"), &names));
        assert!(!concerns_watched(&d.join(".switchyard.toml.swp"), &names));
        assert!(!concerns_watched(&d.join("gone.tmp"), &names));
    }
}
