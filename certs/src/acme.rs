//! Automatic certificates over ACME (HTTP-01): issue on start, keep on
//! disk, renew early, back off on failure, never drop what is serving.
//!
//! One order per host. Until a host's certificate arrives it is served a
//! self-signed certificate named "Switchyard temporary certificate for
//! HOST"; every other host keeps its certificate. Orders run at most
//! [`CONCURRENT_ORDERS`] at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use switchyard_config::{Acme, CertificateFiles};

use crate::acme_http::{AcmeHttp, CaRefusal};
use crate::{load_pair, CertResolver, LoadedCert};

/// Orders in flight at once.
pub const CONCURRENT_ORDERS: usize = 4;
/// First retry delay after a failure; doubles with each failure in a row.
const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const RETRY_CAP: Duration = Duration::from_secs(3600);
/// Wait after a rate-limit error from the CA.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// Longest wait a CA's `Retry-After` can impose.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(24 * 3600);
/// Renewal information is asked again no sooner than this...
const ARI_POLL_MIN: Duration = Duration::from_secs(60);
/// ...and no later than this (RFC 9773 suggests daily at most).
const ARI_POLL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Renewals of one host are at least this far apart, whatever the settings.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(10);
/// A failing renewal this close to expiry is logged as an alert.
const EXPIRY_ALERT: Duration = Duration::from_secs(14 * 24 * 3600);
/// Lifetime of the temporary self-signed certificate.
const TEMPORARY_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// HTTP-01 key authorizations by token, served on the plain listener.
#[derive(Debug, Default)]
pub struct ChallengeStore {
    tokens: RwLock<HashMap<String, String>>,
}

impl ChallengeStore {
    /// The key authorization for `token`, while its order is open.
    pub fn get(&self, token: &str) -> Option<String> {
        self.tokens.read().ok()?.get(token).cloned()
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.to_string(), key_authorization.to_string());
        }
    }

    fn remove(&self, token: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.remove(token);
        }
    }
}

/// What the admin API and metrics read about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// End of validity of the certificate being served (not the temporary one).
    pub not_after: Option<SystemTime>,
    /// When an order was last tried.
    pub last_attempt: Option<SystemTime>,
    /// The error of the last attempt, if it failed.
    pub last_error: Option<String>,
    /// When the next order or renewal is due.
    pub next_attempt: Option<SystemTime>,
    /// Failed attempts in a row.
    pub failures: u32,
}

/// Gets and renews the `[acme]` hosts' certificates.
pub struct AcmeManager {
    config: Acme,
    resolver: Arc<CertResolver>,
    challenges: Arc<ChallengeStore>,
    account: tokio::sync::Mutex<Option<Account>>,
    status: Mutex<BTreeMap<String, HostStatus>>,
    last_refusal: Arc<Mutex<Option<CaRefusal>>>,
    /// Per host, the leaf to ask ACME Renewal Information about and when to
    /// ask again (only while the CA offers it).
    ari_polls: Mutex<BTreeMap<String, AriPoll>>,
}

/// When to ask the CA again whether a certificate should be renewed early.
#[derive(Debug, Clone)]
struct AriPoll {
    leaf: rustls::pki_types::CertificateDer<'static>,
    serial: String,
    issued: Option<SystemTime>,
    next: SystemTime,
}

impl AcmeManager {
    /// A manager putting certificates into `resolver` and challenge answers
    /// into `challenges`.
    pub fn new(config: Acme, resolver: Arc<CertResolver>, challenges: Arc<ChallengeStore>) -> Self {
        AcmeManager {
            config,
            resolver,
            challenges,
            account: tokio::sync::Mutex::new(None),
            status: Mutex::new(BTreeMap::new()),
            last_refusal: Arc::default(),
            ari_polls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Per host: certificate expiry, last attempt, last error, next attempt.
    pub fn status(&self) -> BTreeMap<String, HostStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn files(&self, host: &str) -> CertificateFiles {
        let dir = self.config.state_dir.join("certificates");
        CertificateFiles {
            cert: dir.join(format!("{host}.pem")),
            key: dir.join(format!("{host}.key")),
            default: false,
        }
    }

    fn update(&self, host: &str, f: impl FnOnce(&mut HostStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(s.entry(host.to_string()).or_default());
        }
    }

    /// Loads what is on disk, then orders and renews until the process ends.
    pub async fn run(self: Arc<Self>) {
        if let Err(e) = create_private_dirs(&self.config.state_dir) {
            tracing::error!(dir = %self.config.state_dir.display(), error = %e, "ACME state directory unusable; no certificates will be ordered");
            return;
        }
        let mut due: BTreeMap<String, SystemTime> = BTreeMap::new();
        for host in &self.config.hosts {
            if self.resolver.covers_statically(host) {
                tracing::info!(%host, "a static certificate covers this host; not ordering one");
                continue;
            }
            match load_pair(&self.files(host), SystemTime::now()) {
                Ok(cert) => {
                    let at = self.due(host, &cert, None).await;
                    tracing::info!(%host, serial = %cert.info.serial, not_after = %humantime::format_rfc3339_seconds(cert.info.not_after), renew_at = %humantime::format_rfc3339_seconds(at), "ACME certificate loaded from the state directory");
                    let not_after = cert.info.not_after;
                    self.resolver.set_managed(host, cert);
                    self.update(host, |s| {
                        s.not_after = Some(not_after);
                        s.next_attempt = Some(at);
                    });
                    due.insert(host.clone(), at);
                }
                Err(e) => {
                    if !matches!(e, crate::CertError::Read { .. }) {
                        tracing::warn!(%host, "stored certificate not usable, ordering a new one: {e}");
                    }
                    match temporary_cert(host) {
                        Ok(temp) => self.resolver.set_managed(host, temp),
                        Err(e) => {
                            tracing::error!(%host, "cannot make a temporary certificate: {e}")
                        }
                    }
                    self.update(host, |s| s.next_attempt = Some(SystemTime::now()));
                    due.insert(host.clone(), SystemTime::now());
                }
            }
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_ORDERS));
        loop {
            let Some(mut next) = due.values().min().copied() else {
                return;
            };
            if let Some(poll) = self.next_ari_poll() {
                next = next.min(poll);
            }
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            // Wake at least hourly, so a clock jump cannot delay renewals long.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            let now = SystemTime::now();
            for (host, poll) in self.ari_due(now) {
                let Some(at) = due.get(&host).copied() else {
                    continue;
                };
                if at <= now {
                    continue;
                }
                let at = self
                    .earlier_if_suggested(&host, poll.leaf, poll.issued, at, &poll.serial)
                    .await;
                self.update(&host, |s| s.next_attempt = Some(at));
                due.insert(host, at);
            }
            let ready: Vec<String> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(h, _)| h.clone())
                .collect();
            let mut tasks = tokio::task::JoinSet::new();
            for host in ready {
                let (me, sem) = (self.clone(), semaphore.clone());
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let at = me.attempt(&host).await;
                    (host, at)
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok((host, at)) = done {
                    due.insert(host, at);
                }
            }
        }
    }

    /// When `cert` should be renewed: [`Self::renewal_time`], or earlier
    /// inside the window the CA suggests through ACME Renewal Information
    /// (RFC 9773) when it offers it. Where the CA does, the host is polled
    /// again when the CA's `Retry-After` says, so a window the CA moves
    /// earlier (a revocation, say) is acted on.
    async fn due(&self, host: &str, cert: &LoadedCert, issued: Option<SystemTime>) -> SystemTime {
        let ours = self.renewal_time(cert, issued);
        let Some(leaf) = cert.key.cert.first().cloned() else {
            return ours;
        };
        self.earlier_if_suggested(host, leaf, issued, ours, cert.info.serial.as_str())
            .await
    }

    /// `ours`, or the CA's suggestion when it comes earlier; records when to
    /// poll again.
    async fn earlier_if_suggested(
        &self,
        host: &str,
        leaf: rustls::pki_types::CertificateDer<'static>,
        issued: Option<SystemTime>,
        ours: SystemTime,
        serial: &str,
    ) -> SystemTime {
        let suggestion = self.suggested_renewal(&leaf).await;
        if let Ok(mut polls) = self.ari_polls.lock() {
            match &suggestion {
                Some((_, poll_in)) => {
                    let next = SystemTime::now() + (*poll_in).clamp(ARI_POLL_MIN, ARI_POLL_MAX);
                    let serial = serial.to_string();
                    polls.insert(
                        host.to_string(),
                        AriPoll {
                            leaf,
                            serial,
                            issued,
                            next,
                        },
                    );
                }
                None => {
                    polls.remove(host);
                }
            }
        }
        match suggestion {
            Some((at, _)) if at < ours => {
                let at = match issued {
                    Some(issued) => at.max(issued + MIN_RENEWAL_GAP),
                    None => at,
                };
                tracing::info!(%host, %serial, renew_at = %humantime::format_rfc3339_seconds(at), "the CA suggests an earlier renewal");
                at
            }
            _ => ours,
        }
    }

    /// Hosts whose renewal information is due to be asked again.
    fn ari_due(&self, now: SystemTime) -> Vec<(String, AriPoll)> {
        self.ari_polls
            .lock()
            .map(|p| {
                p.iter()
                    .filter(|(_, poll)| poll.next <= now)
                    .map(|(h, poll)| (h.clone(), poll.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The earliest renewal-information poll.
    fn next_ari_poll(&self) -> Option<SystemTime> {
        self.ari_polls
            .lock()
            .ok()
            .and_then(|p| p.values().map(|poll| poll.next).min())
    }

    /// A time inside the CA's suggested renewal window, and when to ask
    /// again, if the CA offers renewal information.
    async fn suggested_renewal(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'static>,
    ) -> Option<(SystemTime, Duration)> {
        // Never create an account just to ask.
        if self.account.lock().await.is_none() && !self.account_path().exists() {
            return None;
        }
        let account = self.account().await.ok()?;
        let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, poll_in)) => {
                use rand::RngExt;
                let start = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(info.suggested_window.start.unix_timestamp()).ok()?,
                    );
                let end = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(info.suggested_window.end.unix_timestamp()).ok()?,
                    );
                let span = end.duration_since(start).ok()?;
                // A random point in the window spreads renewals, as RFC 9773 asks.
                let offset = rand::rng().random_range(0..=span.as_secs());
                Some((start + Duration::from_secs(offset), poll_in))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "renewal information not available");
                None
            }
        }
    }

    /// When `cert` should be renewed: with `renew_before` (or a third of its
    /// lifetime) left, never sooner than `MIN_RENEWAL_GAP` after `issued`.
    fn renewal_time(&self, cert: &LoadedCert, issued: Option<SystemTime>) -> SystemTime {
        let info = &cert.info;
        let lifetime = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        let before = self.config.renew_before.unwrap_or(lifetime / 3);
        let at = info
            .not_after
            .checked_sub(before)
            .unwrap_or(info.not_before);
        match issued {
            Some(issued) => at.max(issued + MIN_RENEWAL_GAP),
            None => at,
        }
    }

    /// One order for `host`; returns when the next one is due.
    async fn attempt(&self, host: &str) -> SystemTime {
        let started = SystemTime::now();
        self.update(host, |s| s.last_attempt = Some(started));
        tracing::info!(%host, "ordering a certificate");
        match self.order(host).await {
            Ok(cert) => {
                let at = self.due(host, &cert, Some(started)).await;
                tracing::info!(
                    %host, serial = %cert.info.serial,
                    not_after = %humantime::format_rfc3339_seconds(cert.info.not_after),
                    renew_at = %humantime::format_rfc3339_seconds(at),
                    "ACME certificate issued and serving"
                );
                let not_after = cert.info.not_after;
                self.resolver.set_managed(host, cert);
                self.update(host, |s| {
                    s.not_after = Some(not_after);
                    s.last_error = None;
                    s.failures = 0;
                    s.next_attempt = Some(at);
                });
                at
            }
            Err(e) => {
                let mut failures = 0;
                self.update(host, |s| {
                    s.failures += 1;
                    failures = s.failures;
                });
                let refusal = self.refusal_since(started);
                let asked = refusal.as_ref().and_then(|r| {
                    let at = r.retry_at?;
                    Some(at.duration_since(r.received).unwrap_or_default())
                });
                let wait = retry_wait(&e, failures, asked);
                let e = match refusal {
                    Some(r) => explain(e, &r),
                    None => e.to_string(),
                };
                let at = SystemTime::now() + wait;
                tracing::error!(
                    %host, failures, retry_in = ?wait,
                    ca_retry_after = asked.map(|d| d.as_secs()),
                    "certificate order failed; the current certificate keeps serving: {e}"
                );
                let not_after = self.status().get(host).and_then(|s| s.not_after);
                if let Some(left) = not_after.and_then(|n| n.duration_since(SystemTime::now()).ok())
                {
                    if left < EXPIRY_ALERT {
                        tracing::error!(
                            %host, days_left = left.as_secs() / 86_400,
                            "certificate expires soon and cannot be renewed: act before it lapses"
                        );
                    }
                }
                self.update(host, |s| {
                    s.last_error = Some(e);
                    s.next_attempt = Some(at);
                });
                at
            }
        }
    }

    async fn order(&self, host: &str) -> Result<LoadedCert, OrderError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(o) => o,
            Err(e) => {
                let e = OrderError::from(e);
                if matches!(e, OrderError::AccountGone(_)) {
                    // The CA forgot the account (a reset CA): make a new one next time.
                    *self.account.lock().await = None;
                    let _ = std::fs::remove_file(self.account_path());
                }
                return Err(e);
            }
        };
        let mut tokens = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(OrderError::Other(format!("authorization is {other:?}")));
                    }
                }
                let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    OrderError::Other("the CA offered no HTTP-01 challenge".into())
                })?;
                let key_authorization = challenge.key_authorization();
                self.challenges
                    .insert(&challenge.token, key_authorization.as_str());
                tokens.push(challenge.token.clone());
                challenge.set_ready().await?;
            }
            let policy = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(90));
            let status = order.poll_ready(&policy).await?;
            if status != OrderStatus::Ready {
                let detail = describe_failed_order(&mut order).await;
                return Err(OrderError::Other(format!("order is {status:?}{detail}")));
            }
            let key_pem = order.finalize().await?;
            let chain_pem = order.poll_certificate(&policy).await?;
            Ok((chain_pem, key_pem))
        }
        .await;
        for token in &tokens {
            self.challenges.remove(token);
        }
        let (chain_pem, key_pem) = result?;
        let files = self.files(host);
        write_private(&files.key, key_pem.as_bytes())
            .map_err(|e| OrderError::Store(files.key.clone(), e))?;
        write_private(&files.cert, chain_pem.as_bytes())
            .map_err(|e| OrderError::Store(files.cert.clone(), e))?;
        load_pair(&files, SystemTime::now()).map_err(|e| OrderError::Other(e.to_string()))
    }

    /// The CA's last error answer, if it came after `since`.
    fn refusal_since(&self, since: SystemTime) -> Option<CaRefusal> {
        let slot = self.last_refusal.lock().ok()?;
        slot.as_ref().filter(|r| r.received >= since).cloned()
    }

    fn account_path(&self) -> PathBuf {
        self.config.state_dir.join("account.json")
    }

    /// The ACME account: cached, else from `account.json`, else created.
    async fn account(&self) -> Result<Account, OrderError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let builder = || -> Result<_, OrderError> {
            let http = AcmeHttp::new(self.config.ca_root.as_deref(), self.last_refusal.clone())
                .map_err(OrderError::Other)?;
            Ok(Account::builder_with_http(Box::new(http)))
        };
        let path = self.account_path();
        let account = match std::fs::read(&path) {
            Ok(bytes) => {
                let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| OrderError::Other(format!("{}: {e}", path.display())))?;
                builder()?.from_credentials(credentials).await?
            }
            Err(_) => {
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec_pretty(&credentials)
                    .map_err(|e| OrderError::Other(e.to_string()))?;
                write_private(&path, &json).map_err(|e| OrderError::Store(path.clone(), e))?;
                tracing::info!(directory = %self.config.directory, "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }
}

async fn describe_failed_order(order: &mut instant_acme::Order) -> String {
    let mut detail = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                detail.push_str(&format!(
                    ": {}",
                    problem.detail.as_deref().unwrap_or("no detail")
                ));
            }
        }
    }
    detail
}

/// The wait before the next attempt after `failures` failures in a row:
/// exponential from [`RETRY_BASE`] to [`RETRY_CAP`], an hour after a
/// rate-limit error, and never shorter than the CA's `Retry-After` (itself
/// capped at a day, so a bad header cannot park renewals for good).
fn retry_wait(e: &OrderError, failures: u32, asked: Option<Duration>) -> Duration {
    let backoff = (RETRY_BASE * 2u32.pow(failures.saturating_sub(1).min(12))).min(RETRY_CAP);
    let own = match e {
        OrderError::RateLimited(_) => RATE_LIMIT_WAIT.max(backoff),
        _ => backoff,
    };
    match asked {
        // A CA that names its own wait is believed, even when it is shorter
        // than the generic rate-limit hour.
        Some(asked) => asked.min(RETRY_AFTER_CAP).max(backoff),
        None => own,
    }
}

/// The failure's text, naming the CA's own answer when the error does not
/// already carry it.
fn explain(e: OrderError, refusal: &CaRefusal) -> String {
    let text = e.to_string();
    let said = match &refusal.detail {
        Some(detail) if text.contains(detail.as_str()) => return text,
        Some(detail) => format!("{}: {detail}", refusal.status),
        None => refusal.status.clone(),
    };
    format!("{text} (the CA answered {said})")
}

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The CA refused for rate limits.
    #[error("rate limited by the CA: {0}")]
    RateLimited(String),
    /// The CA no longer knows the account.
    #[error("the CA does not know the account: {0}")]
    AccountGone(String),
    /// The CA answered with an error.
    #[error("the CA said: {0}")]
    Ca(String),
    /// A certificate or key could not be written.
    #[error("cannot write {0}: {1}")]
    Store(PathBuf, std::io::Error),
    /// Anything else (network, protocol, timeout).
    #[error("{0}")]
    Other(String),
}

impl From<instant_acme::Error> for OrderError {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => {
                let detail = format!(
                    "{} ({})",
                    problem.detail.as_deref().unwrap_or("no detail"),
                    problem.r#type.as_deref().unwrap_or("no type")
                );
                match problem.r#type.as_deref() {
                    Some("urn:ietf:params:acme:error:rateLimited") => {
                        OrderError::RateLimited(detail)
                    }
                    Some("urn:ietf:params:acme:error:accountDoesNotExist") => {
                        OrderError::AccountGone(detail)
                    }
                    _ => OrderError::Ca(detail),
                }
            }
            other => OrderError::Other(other.to_string()),
        }
    }
}

/// Creates `state_dir/certificates`; both readable by the owner only.
fn create_private_dirs(state_dir: &Path) -> std::io::Result<()> {
    let certs = state_dir.join("certificates");
    std::fs::create_dir_all(&certs)?;
    for dir in [state_dir, certs.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename),
/// readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A self-signed certificate for `host` to serve until the real one comes.
pub fn temporary_cert(host: &str) -> Result<LoadedCert, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Switchyard temporary certificate for {host}"),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + TEMPORARY_LIFETIME;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let files = CertificateFiles {
        cert: PathBuf::from(format!("(temporary certificate for {host})")),
        key: PathBuf::from(format!("(temporary key for {host})")),
        default: false,
    };
    crate::load::check_pair(
        &files,
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_back_off_and_honour_the_ca() {
        let other = OrderError::Other("connection refused".into());
        let limited = OrderError::RateLimited("too many".into());
        assert_eq!(retry_wait(&other, 1, None), RETRY_BASE);
        assert_eq!(retry_wait(&other, 3, None), RETRY_BASE * 4);
        assert_eq!(retry_wait(&other, 40, None), RETRY_CAP);
        assert_eq!(retry_wait(&limited, 1, None), RATE_LIMIT_WAIT);
        // The CA's wait wins over a shorter backoff, and over the hour.
        let asked = Duration::from_secs(600);
        assert_eq!(retry_wait(&other, 1, Some(asked)), asked);
        assert_eq!(retry_wait(&limited, 1, Some(asked)), asked);
        // Never shorter than our own backoff, never longer than a day.
        assert_eq!(retry_wait(&other, 5, Some(Duration::ZERO)), RETRY_BASE * 16);
        assert_eq!(
            retry_wait(&other, 1, Some(Duration::from_secs(10 * 86_400))),
            RETRY_AFTER_CAP
        );
    }
}
