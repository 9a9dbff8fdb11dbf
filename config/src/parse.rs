//! The walk over a TOML document: every key checked, every problem collected.
//!
//! The document is read with `toml_edit`, which keeps the byte span of every
//! key and value, so each problem is reported at its line. The walk never
//! stops at the first problem: it keeps going and returns all of them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Document, Item, TableLike, Value};

use crate::{
    AccessLogTarget, Acme, Admin, AdminToken, CertificateFiles, CheckKind, Cidr, Config,
    Diagnostic, Diagnostics, HealthCheck, HostMatch, Hsts, HttpCheck, HttpSettings, Listen,
    Outlier, Pool, RateLimit, Role, Rollout, RolloutState, Route, ServerSettings, Service, Sticky,
    Tls, TokenSource, UpstreamTls,
};

/// The longest duration any key accepts (1000 years).
const MAX_DURATION: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);
/// Default for `server.grace_period`.
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Default for `services.<name>.read_timeout` and `write_timeout`.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `services.<name>.connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Cookie holding a client's bucket when `sticky = true`.
const DEFAULT_STICKY_COOKIE: &str = "switchyard_bucket";
/// Largest share a pool may have; shares are relative, so this is plenty.
const MAX_SHARE: i64 = 1_000_000;

pub(crate) fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
    let mut w = Walk::new(text, file);
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.message().trim_end().to_string();
            w.error(e.span(), "", format!("invalid TOML: {message}"));
            return Err(Diagnostics(w.diags));
        }
    };
    let root = doc.as_table();
    w.known_keys(
        root,
        "",
        &[
            "listen", "server", "tls", "acme", "admin", "http", "routes", "services",
        ],
    );
    let listen = w.listen(root);
    let has_https = listen.as_ref().is_some_and(|l| l.https.is_some());
    let server = w.server(root);
    let acme = w.acme(root, listen.as_ref());
    let admin = w.admin(root, listen.as_ref());
    let tls = w.tls(
        root,
        listen.as_ref(),
        acme.as_ref().is_some_and(|a| a.is_some()),
    );
    let http = w.http(root);
    let services = w.services(root);
    let routes = w.routes(root, &services, has_https);
    w.diags.sort_by_key(|d| (d.line, d.column));
    match (listen, server, tls, acme, admin, http) {
        (Some(listen), Some(server), Some(tls), Some(acme), Some(admin), Some(http))
            if w.diags.is_empty() =>
        {
            Ok(Config {
                listen,
                server,
                tls,
                acme,
                admin,
                http,
                routes,
                services: services.into_values().collect(),
            })
        }
        _ => {
            // Defensive: a missing section always records a problem, so the
            // list is not empty here; keep the contract if that ever changes.
            if w.diags.is_empty() {
                w.error(None, "", "incomplete configuration");
            }
            Err(Diagnostics(w.diags))
        }
    }
}

/// State of one walk: the text (for line numbers) and what was found wrong.
struct Walk<'a> {
    file: &'a str,
    /// Directory that relative paths in the file are relative to.
    base_dir: &'a Path,
    line_starts: Vec<usize>,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl<'a> Walk<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Walk {
            file,
            base_dir: Path::new(file).parent().unwrap_or(Path::new("")),
            line_starts,
            text,
            diags: Vec::new(),
        }
    }

    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let (line, column) = position(&self.line_starts, self.text, span);
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Reports every key of `table` that is not in `allowed`.
    fn known_keys(&mut self, table: &dyn TableLike, path: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key) {
                let span = table.key(key).and_then(|k| k.span());
                let message = match allowed.iter().find(|k| looks_like(k, key)) {
                    Some(near) => format!("unknown key; did you mean `{near}`?"),
                    None => format!(
                        "unknown key; expected one of {}",
                        allowed
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.error(span, &join(path, key), message);
            }
        }
    }

    fn table<'d>(
        &mut self,
        item: &'d Item,
        span: Option<Range<usize>>,
        path: &str,
    ) -> Option<&'d dyn TableLike> {
        let table = item.as_table_like();
        if table.is_none() {
            self.error(
                item.span().or(span),
                path,
                format!("expected a table, found {}", item.type_name()),
            );
        }
        table
    }

    fn string<'d>(&mut self, item: &'d Item, path: &str) -> Option<&'d str> {
        let s = item.as_str();
        if s.is_none() {
            self.error(
                item.span(),
                path,
                format!("expected a string, found {}", item.type_name()),
            );
        }
        s
    }

    fn integer(&mut self, item: &Item, path: &str, range: Range<i64>) -> Option<i64> {
        let Some(n) = item.as_integer() else {
            self.error(
                item.span(),
                path,
                format!("expected an integer, found {}", item.type_name()),
            );
            return None;
        };
        if !range.contains(&n) {
            self.error(
                item.span(),
                path,
                format!(
                    "{n} is out of range; expected {} to {}",
                    range.start,
                    range.end - 1
                ),
            );
            return None;
        }
        Some(n)
    }

    fn duration(&mut self, item: &Item, path: &str) -> Option<Duration> {
        let raw = self.string(item, path)?;
        match humantime::parse_duration(raw) {
            // Deadlines are computed by adding durations to clocks; a
            // duration of ages would overflow them.
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    item.span(),
                    path,
                    format!("{raw:?} is too long; at most 1000 years"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    item.span(),
                    path,
                    format!(
                        "invalid duration {raw:?} ({e}); write it like \"500ms\", \"2s\" or \"1m\""
                    ),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, item: &Item, path: &str) -> Option<SocketAddr> {
        let raw = self.string(item, path)?;
        match raw.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    item.span(),
                    path,
                    format!(
                        "invalid address {raw:?}; expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\""
                    ),
                );
                None
            }
        }
    }

    fn listen(&mut self, root: &dyn TableLike) -> Option<Listen> {
        let Some(item) = root.get("listen") else {
            self.error(
                None,
                "listen",
                "missing [listen] table; add `[listen]` with `http = \"127.0.0.1:8080\"`",
            );
            return None;
        };
        let table = self.table(item, None, "listen")?;
        self.known_keys(
            table,
            "listen",
            &["http", "https", "admin", "proxy_protocol"],
        );
        let proxy_protocol = match table.get("proxy_protocol") {
            None => false,
            Some(v) => self.boolean(v, "listen.proxy_protocol")?,
        };
        let mut ok = true;
        let mut addr = |w: &mut Self, key: &str| match table.get(key) {
            None => None,
            Some(v) => {
                let parsed = w.socket_addr(v, &format!("listen.{key}"));
                ok &= parsed.is_some();
                parsed
            }
        };
        let http = addr(self, "http");
        let https = addr(self, "https");
        let admin = addr(self, "admin");
        if !ok {
            return None;
        }
        if http.is_none() && https.is_none() {
            self.error(
                item.span().or_else(|| first_key_span(table)),
                "listen",
                "no listener; set `http = \"IP:PORT\"`, `https = \"IP:PORT\"` or both",
            );
            return None;
        }
        let named = [("http", http), ("https", https), ("admin", admin)];
        for (i, (key, a)) in named.iter().enumerate() {
            if let Some((other, _)) = named[..i].iter().find(|(_, b)| a.is_some() && b == a) {
                self.error(
                    table.get(key).and_then(|v| v.span()),
                    &format!("listen.{key}"),
                    format!(
                        "{} is also listen.{other}; each listener needs its own address",
                        a.map(|a| a.to_string()).unwrap_or_default()
                    ),
                );
                return None;
            }
        }
        Some(Listen {
            http,
            https,
            admin,
            proxy_protocol,
        })
    }

    fn boolean(&mut self, item: &Item, path: &str) -> Option<bool> {
        let b = item.as_bool();
        if b.is_none() {
            self.error(
                item.span(),
                path,
                format!("expected true or false, found {}", item.type_name()),
            );
        }
        b
    }

    /// A file path; relative paths are relative to the config file.
    fn file_path(&mut self, item: &Item, path: &str) -> Option<PathBuf> {
        let raw = self.string(item, path)?;
        if raw.is_empty() {
            self.error(item.span(), path, "empty path");
            return None;
        }
        Some(self.base_dir.join(raw))
    }

    /// The `[admin]` table.
    fn admin(&mut self, root: &dyn TableLike, listen: Option<&Listen>) -> Option<Admin> {
        let mut admin = Admin::default();
        let mut ok = true;
        let item = root.get("admin");
        if let Some(item) = item {
            let table = self.table(item, None, "admin")?;
            self.known_keys(table, "admin", &["audit_log", "tokens"]);
            if let Some(v) = table.get("audit_log") {
                admin.audit_log = self.file_path(v, "admin.audit_log");
                ok &= admin.audit_log.is_some();
            }
            if let Some(tokens) = table.get("tokens") {
                let entries = self.table_array(
                    tokens,
                    table.key("tokens").and_then(|k| k.span()),
                    "admin.tokens",
                );
                for (i, (t, span)) in entries.into_iter().enumerate() {
                    let path = format!("admin.tokens[{i}]");
                    self.known_keys(t, &path, &["name", "role", "file", "env"]);
                    let anchor = span.or_else(|| first_key_span(t));
                    let name = match t.get("name") {
                        Some(v) => self.string(v, &format!("{path}.name")).map(str::to_string),
                        None => {
                            self.error(
                                anchor.clone(),
                                &format!("{path}.name"),
                                "missing key; a name for the audit log is required",
                            );
                            None
                        }
                    };
                    let role = match t
                        .get("role")
                        .map(|v| (v, self.string(v, &format!("{path}.role"))))
                    {
                        Some((_, Some("read"))) => Some(Role::Read),
                        Some((_, Some("write"))) => Some(Role::Write),
                        Some((v, Some(other))) => {
                            self.error(
                                v.span(),
                                &format!("{path}.role"),
                                format!("unknown role {other:?}; expected \"read\" or \"write\""),
                            );
                            None
                        }
                        Some((_, None)) => None,
                        None => {
                            self.error(
                                anchor.clone(),
                                &format!("{path}.role"),
                                "missing key; \"read\" or \"write\"",
                            );
                            None
                        }
                    };
                    let source = match (t.get("file"), t.get("env")) {
                        (Some(f), None) => self
                            .file_path(f, &format!("{path}.file"))
                            .map(TokenSource::File),
                        (None, Some(e)) => self
                            .string(e, &format!("{path}.env"))
                            .map(|e| TokenSource::Env(e.to_string())),
                        (Some(_), Some(e)) => {
                            self.error(
                                e.span(),
                                &format!("{path}.env"),
                                "give `file` or `env`, not both",
                            );
                            None
                        }
                        (None, None) => {
                            self.error(
                                anchor.clone(),
                                &path,
                                "missing `file` or `env`: where the token's secret is (never the secret itself)",
                            );
                            None
                        }
                    };
                    match (name, role, source) {
                        (Some(name), Some(role), Some(source)) => {
                            admin.tokens.push(AdminToken { name, role, source })
                        }
                        _ => ok = false,
                    }
                }
            }
        }
        if let Some(addr) = listen.and_then(|l| l.admin) {
            if !addr.ip().is_loopback() && admin.tokens.is_empty() && ok {
                let span = root
                    .get("listen")
                    .and_then(|l| l.as_table_like())
                    .and_then(|t| t.get("admin"))
                    .and_then(|v| v.span());
                self.error(
                    span,
                    "listen.admin",
                    format!("{addr} is not a loopback address: add `[[admin.tokens]]` so the admin API is not open to the network"),
                );
                ok = false;
            }
        }
        ok.then_some(admin)
    }

    /// The `[acme]` table: `Some(None)` when absent, `None` when invalid.
    fn acme(&mut self, root: &dyn TableLike, listen: Option<&Listen>) -> Option<Option<Acme>> {
        let Some(item) = root.get("acme") else {
            return Some(None);
        };
        let table = self.table(item, None, "acme")?;
        self.known_keys(
            table,
            "acme",
            &[
                "directory",
                "contact",
                "accept_terms",
                "state_dir",
                "ca_root",
                "hosts",
                "renew_before",
            ],
        );
        let anchor = item.span().or_else(|| first_key_span(table));
        let mut ok = true;
        let mut required = |w: &mut Self, key: &str, what: &str| {
            let v = table.get(key);
            if v.is_none() {
                w.error(
                    anchor.clone(),
                    &format!("acme.{key}"),
                    format!("missing key; {what}"),
                );
                ok = false;
            }
            v
        };
        let directory = required(self, "directory", "the CA's directory URL is required");
        let state_dir = required(
            self,
            "state_dir",
            "a directory for the account and certificates is required",
        );
        let hosts_item = required(self, "hosts", "list the host names to get certificates for");
        let terms = required(
            self,
            "accept_terms",
            "set `accept_terms = true` to agree to the CA's terms of service",
        );
        let directory = directory.and_then(|v| {
            let url = self.string(v, "acme.directory")?;
            if url.starts_with("https://") {
                Some(url.to_string())
            } else {
                self.error(
                    v.span(),
                    "acme.directory",
                    format!("{url:?} is not an https:// URL"),
                );
                None
            }
        });
        let state_dir = state_dir.and_then(|v| self.file_path(v, "acme.state_dir"));
        if let Some(v) = terms {
            match self.boolean(v, "acme.accept_terms") {
                Some(true) => {}
                Some(false) => {
                    self.error(
                        v.span(),
                        "acme.accept_terms",
                        "must be true: the CA issues no certificate without it",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        let ca_root = match table.get("ca_root") {
            None => None,
            Some(v) => {
                let p = self.file_path(v, "acme.ca_root");
                ok &= p.is_some();
                p
            }
        };
        let mut contact = Vec::new();
        if let Some(v) = table.get("contact") {
            match v.as_array() {
                Some(arr) => {
                    for (i, c) in arr.iter().enumerate() {
                        match c.as_str() {
                            Some(c) if c.starts_with("mailto:") => contact.push(c.to_string()),
                            _ => {
                                self.error(
                                    c.span(),
                                    &format!("acme.contact[{i}]"),
                                    "expected a \"mailto:...\" URL",
                                );
                                ok = false;
                            }
                        }
                    }
                }
                None => {
                    self.error(
                        v.span(),
                        "acme.contact",
                        "expected an array such as [\"mailto:ops@example.com\"]",
                    );
                    ok = false;
                }
            }
        }
        let mut hosts = Vec::new();
        if let Some(v) = hosts_item {
            match v.as_array() {
                Some(arr) if !arr.is_empty() => {
                    for (i, h) in arr.iter().enumerate() {
                        let key = format!("acme.hosts[{i}]");
                        match h.as_str().map(host_match) {
                            Some(Ok(HostMatch::Exact(name))) if !hosts.contains(&name) => {
                                hosts.push(name)
                            }
                            Some(Ok(HostMatch::Exact(name))) => {
                                self.error(h.span(), &key, format!("{name} is listed twice"));
                                ok = false;
                            }
                            Some(Ok(_)) => {
                                self.error(h.span(), &key, "wildcard names cannot be validated over HTTP-01; list each host");
                                ok = false;
                            }
                            Some(Err(msg)) => {
                                self.error(h.span(), &key, msg);
                                ok = false;
                            }
                            None => {
                                self.error(h.span(), &key, "expected a host name string");
                                ok = false;
                            }
                        }
                    }
                }
                _ => {
                    self.error(
                        v.span(),
                        "acme.hosts",
                        "expected a non-empty array of host names",
                    );
                    ok = false;
                }
            }
        }
        let renew_before = match table.get("renew_before") {
            None => None,
            Some(v) => {
                let d = self.duration(v, "acme.renew_before");
                ok &= d.is_some();
                d
            }
        };
        if let Some(listen) = listen {
            if listen.http.is_none() || listen.https.is_none() {
                self.error(
                    anchor.clone(),
                    "acme",
                    "ACME needs both listeners: `http` to answer HTTP-01 challenges and `https` to serve the certificates",
                );
                ok = false;
            }
        }
        match (ok, directory, state_dir) {
            (true, Some(directory), Some(state_dir)) => Some(Some(Acme {
                directory,
                contact,
                state_dir,
                ca_root,
                hosts,
                renew_before,
            })),
            _ => None,
        }
    }

    fn tls(&mut self, root: &dyn TableLike, listen: Option<&Listen>, acme: bool) -> Option<Tls> {
        let has_https = listen.is_some_and(|l| l.https.is_some());
        let mut tls = Tls::default();
        let Some(item) = root.get("tls") else {
            if has_https && !acme {
                self.error(
                    root.get("listen").and_then(|l| l.as_table_like()).and_then(|t| t.key("https")).and_then(|k| k.span()),
                    "listen.https",
                    "an HTTPS listener needs certificates; add `[[tls.certificates]]` with `cert` and `key`",
                );
                return None;
            }
            return Some(tls);
        };
        let table = self.table(item, None, "tls")?;
        self.known_keys(table, "tls", &["certificates", "hsts"]);
        let mut ok = true;
        if let Some(certs) = table.get("certificates") {
            let entries = self.table_array(
                certs,
                table.key("certificates").and_then(|k| k.span()),
                "tls.certificates",
            );
            let mut default_at: Option<usize> = None;
            for (i, (cert_table, span)) in entries.into_iter().enumerate() {
                let path = format!("tls.certificates[{i}]");
                self.known_keys(cert_table, &path, &["cert", "key", "default"]);
                let anchor = span.or_else(|| first_key_span(cert_table));
                let file = |w: &mut Self, key: &str, what: &str| match cert_table.get(key) {
                    Some(v) => w.file_path(v, &format!("{path}.{key}")),
                    None => {
                        w.error(
                            anchor.clone(),
                            &format!("{path}.{key}"),
                            format!("missing key; the {what} file (PEM) is required"),
                        );
                        None
                    }
                };
                let cert = file(self, "cert", "certificate chain");
                let key = file(self, "key", "private key");
                let default = match cert_table.get("default") {
                    None => Some(false),
                    Some(v) => self.boolean(v, &format!("{path}.default")),
                };
                if default == Some(true) {
                    if let Some(first) = default_at {
                        self.error(
                            cert_table.get("default").and_then(|v| v.span()),
                            &format!("{path}.default"),
                            format!("tls.certificates[{first}] is already the default; only one certificate may be"),
                        );
                        ok = false;
                    }
                    default_at = Some(i);
                }
                match (cert, key, default) {
                    (Some(cert), Some(key), Some(default)) => tls
                        .certificates
                        .push(CertificateFiles { cert, key, default }),
                    _ => ok = false,
                }
            }
        }
        if let Some(hsts_item) = table.get("hsts") {
            match self.table(
                hsts_item,
                table.key("hsts").and_then(|k| k.span()),
                "tls.hsts",
            ) {
                None => ok = false,
                Some(h) => {
                    self.known_keys(h, "tls.hsts", &["max_age", "include_subdomains", "preload"]);
                    let mut hsts = Hsts {
                        max_age: Duration::from_secs(365 * 24 * 3600),
                        include_subdomains: false,
                        preload: false,
                    };
                    if let Some(v) = h.get("max_age") {
                        match self.duration(v, "tls.hsts.max_age") {
                            Some(d) => hsts.max_age = d,
                            None => ok = false,
                        }
                    }
                    if let Some(v) = h.get("include_subdomains") {
                        match self.boolean(v, "tls.hsts.include_subdomains") {
                            Some(b) => hsts.include_subdomains = b,
                            None => ok = false,
                        }
                    }
                    if let Some(v) = h.get("preload") {
                        match self.boolean(v, "tls.hsts.preload") {
                            Some(b) => hsts.preload = b,
                            None => ok = false,
                        }
                    }
                    tls.hsts = Some(hsts);
                }
            }
        }
        if ok && has_https && tls.certificates.is_empty() && !acme {
            self.error(
                item.span().or_else(|| first_key_span(table)),
                "tls.certificates",
                "an HTTPS listener needs certificates; add `[[tls.certificates]]` with `cert` and `key`",
            );
            ok = false;
        }
        if ok && !has_https && (!tls.certificates.is_empty() || tls.hsts.is_some()) {
            self.error(
                item.span().or_else(|| first_key_span(table)),
                "tls",
                "TLS settings without an HTTPS listener; add `https = \"IP:PORT\"` to [listen]",
            );
            ok = false;
        }
        ok.then_some(tls)
    }

    /// The tables of an array of tables (`[[x]]`) or of an inline array of
    /// inline tables, each with its span.
    fn table_array<'d>(
        &mut self,
        item: &'d Item,
        key_span: Option<Range<usize>>,
        path: &str,
    ) -> Vec<(&'d dyn TableLike, Option<Range<usize>>)> {
        match item {
            Item::ArrayOfTables(aot) => aot
                .iter()
                .map(|t| (t as &dyn TableLike, t.span()))
                .collect(),
            Item::Value(Value::Array(array)) => {
                let mut entries = Vec::new();
                for (i, v) in array.iter().enumerate() {
                    match v.as_inline_table() {
                        Some(t) => entries.push((t as &dyn TableLike, v.span())),
                        None => self.error(
                            v.span(),
                            &format!("{path}[{i}]"),
                            format!("expected a table, found {}", v.type_name()),
                        ),
                    }
                }
                entries
            }
            other => {
                self.error(
                    other.span().or(key_span),
                    path,
                    format!(
                        "expected an array of tables (`[[{path}]]`), found {}",
                        other.type_name()
                    ),
                );
                Vec::new()
            }
        }
    }

    fn server(&mut self, root: &dyn TableLike) -> Option<ServerSettings> {
        let mut settings = ServerSettings {
            grace_period: DEFAULT_GRACE_PERIOD,
            threads: None,
            access_log: None,
        };
        let Some(item) = root.get("server") else {
            return Some(settings);
        };
        let table = self.table(item, None, "server")?;
        self.known_keys(table, "server", &["grace_period", "threads", "access_log"]);
        if let Some(v) = table.get("access_log") {
            settings.access_log = match v.as_str() {
                Some("stdout") => Some(AccessLogTarget::Stdout),
                Some("off") => None,
                _ => match self.file_path(v, "server.access_log") {
                    Some(p) => Some(AccessLogTarget::File(p)),
                    None => return None,
                },
            };
        }
        let mut ok = true;
        if let Some(v) = table.get("grace_period") {
            match self.duration(v, "server.grace_period") {
                Some(d) => settings.grace_period = d,
                None => ok = false,
            }
        }
        if let Some(v) = table.get("threads") {
            match self.integer(v, "server.threads", 1..1025) {
                Some(n) => settings.threads = usize::try_from(n).ok(),
                None => ok = false,
            }
        }
        ok.then_some(settings)
    }

    /// `[http]`: request limits and trusted proxies.
    fn http(&mut self, root: &dyn TableLike) -> Option<HttpSettings> {
        let mut settings = HttpSettings::default();
        let Some(item) = root.get("http") else {
            return Some(settings);
        };
        let table = self.table(item, None, "http")?;
        self.known_keys(
            table,
            "http",
            &[
                "max_header_bytes",
                "max_headers",
                "max_uri_bytes",
                "max_body_bytes",
                "trusted_proxies",
                "rate_limit",
                "header_timeout",
                "max_connections_per_client",
                "keepalive_timeout",
            ],
        );
        if let Some(v) = table.get("keepalive_timeout") {
            match self.duration(v, "http.keepalive_timeout") {
                Some(d) if d >= Duration::from_secs(1) => settings.keepalive_timeout = d,
                Some(_) => {
                    self.error(v.span(), "http.keepalive_timeout", "must be at least 1s");
                    return None;
                }
                None => return None,
            }
        }
        if let Some(v) = table.get("header_timeout") {
            match self.duration(v, "http.header_timeout") {
                Some(d) if d > Duration::ZERO => settings.header_timeout = d,
                Some(_) => {
                    self.error(v.span(), "http.header_timeout", "must be more than zero");
                    return None;
                }
                None => return None,
            }
        }
        if let Some(v) = table.get("rate_limit") {
            match self.rate_limit(v, "http.rate_limit") {
                Some(r) => settings.rate_limit = Some(r),
                None => return None,
            }
        }
        let mut ok = true;
        let mut size = |w: &mut Self, key: &str, range: Range<i64>| -> Option<usize> {
            let v = table.get(key)?;
            let n = w.integer(v, &join("http", key), range);
            ok &= n.is_some();
            usize::try_from(n?).ok()
        };
        if let Some(n) = size(self, "max_header_bytes", 1024..1024 * 1024 + 1) {
            settings.max_header_bytes = n;
        }
        if let Some(n) = size(self, "max_headers", 1..10_001) {
            settings.max_headers = n;
        }
        if let Some(n) = size(self, "max_connections_per_client", 1..1_000_001) {
            settings.max_connections_per_client = Some(n);
        }
        if let Some(n) = size(self, "max_uri_bytes", 64..1024 * 1024 + 1) {
            settings.max_uri_bytes = n;
        }
        if let Some(n) = size(self, "max_body_bytes", 0..i64::MAX) {
            settings.max_body_bytes = n as u64;
        }
        if let Some(v) = table.get("trusted_proxies") {
            let key = "http.trusted_proxies";
            match v.as_array() {
                None => {
                    self.error(
                        v.span(),
                        key,
                        "expected a list of networks, like [\"10.0.0.0/8\", \"::1\"]",
                    );
                    ok = false;
                }
                Some(list) => {
                    for (i, entry) in list.iter().enumerate() {
                        match entry.as_str().and_then(Cidr::parse) {
                            Some(c) => settings.trusted_proxies.push(c),
                            None => {
                                self.error(
                                    entry.span(),
                                    &format!("{key}[{i}]"),
                                    format!(
                                        "{entry} is not an address or network like \"10.0.0.0/8\""
                                    ),
                                );
                                ok = false;
                            }
                        }
                    }
                }
            }
        }
        ok.then_some(settings)
    }

    /// `{ requests_per_second = N, burst = M }`.
    fn rate_limit(&mut self, item: &Item, path: &str) -> Option<RateLimit> {
        let table = self.table(item, None, path)?;
        self.known_keys(table, path, &["requests_per_second", "burst"]);
        let Some(rate_item) = table.get("requests_per_second") else {
            self.error(
                item.span(),
                &join(path, "requests_per_second"),
                "missing key; for example `rate_limit = { requests_per_second = 50, burst = 100 }`",
            );
            return None;
        };
        let rate = self.float(rate_item, &join(path, "requests_per_second"), 0.001, 1e9);
        let burst = match table.get("burst") {
            None => rate.map(|r| r.ceil().max(1.0) as i64),
            Some(v) => self.integer(v, &join(path, "burst"), 1..1_000_000_001),
        };
        Some(RateLimit {
            requests_per_second: rate?,
            burst: u32::try_from(burst?).ok()?,
        })
    }

    fn services(&mut self, root: &dyn TableLike) -> BTreeMap<String, Service> {
        let mut services = BTreeMap::new();
        let Some(item) = root.get("services") else {
            return services;
        };
        let Some(table) = self.table(item, None, "services") else {
            return services;
        };
        for (name, item) in table.iter() {
            let path = join("services", name);
            let span = table.key(name).and_then(|k| k.span());
            if let Some(service) = self.service(name, item, span, &path) {
                services.insert(name.to_string(), service);
            }
        }
        services
    }

    fn service(
        &mut self,
        name: &str,
        item: &Item,
        span: Option<Range<usize>>,
        path: &str,
    ) -> Option<Service> {
        let table = self.table(item, span.clone(), path)?;
        self.known_keys(
            table,
            path,
            &[
                "split",
                "pools",
                "connect_timeout",
                "read_timeout",
                "write_timeout",
                "request_timeout",
                "health",
                "outlier",
                "slow_start",
                "sticky",
                "override_header",
                "override_cookie",
                "override_secret",
                "rollout",
            ],
        );
        let anchor = item.span().or(span);
        let sticky = match table.get("sticky") {
            None => Some(None),
            Some(v) => self.sticky(v, &join(path, "sticky")).map(Some),
        };
        let override_header = self.optional_name(table, path, "override_header", true);
        let override_cookie = self.optional_name(table, path, "override_cookie", false);
        let override_secret = match table.get("override_secret") {
            None => Some(None),
            Some(v) => {
                let key = join(path, "override_secret");
                match self.string(v, &key) {
                    Some("") => {
                        self.error(v.span(), &key, "must not be empty");
                        None
                    }
                    Some(secret) => {
                        if table.get("override_header").is_none()
                            && table.get("override_cookie").is_none()
                        {
                            self.error(
                                v.span(),
                                &key,
                                "a secret needs `override_header` or `override_cookie` to guard",
                            );
                            None
                        } else {
                            Some(Some(secret.to_string()))
                        }
                    }
                    None => None,
                }
            }
        };
        let mut extras_ok = true;
        let health = match table.get("health") {
            None => None,
            Some(v) => {
                let h = self.health_check(v, &join(path, "health"));
                extras_ok &= h.is_some();
                h
            }
        };
        let outlier = match table.get("outlier") {
            None => Some(Outlier::default()),
            Some(v) => {
                let o = self.outlier(v, &join(path, "outlier"));
                extras_ok &= o.is_some();
                o.flatten()
            }
        };
        let mut slow_start = None;
        if let Some(v) = table.get("slow_start") {
            let key = join(path, "slow_start");
            match self.duration(v, &key) {
                Some(d) if d > Duration::ZERO => slow_start = Some(d),
                Some(_) => {
                    self.error(
                        v.span(),
                        &key,
                        "must be more than zero (leave it out for none)",
                    );
                    extras_ok = false;
                }
                None => extras_ok = false,
            }
        }

        let mut connect_timeout = Some(DEFAULT_CONNECT_TIMEOUT);
        if let Some(v) = table.get("connect_timeout") {
            let key = join(path, "connect_timeout");
            connect_timeout = self.duration(v, &key);
            if connect_timeout == Some(Duration::ZERO) {
                self.error(v.span(), &key, "must be more than zero");
                connect_timeout = None;
            }
        }

        let io_timeout = |w: &mut Self, key: &str| -> Option<Duration> {
            let Some(v) = table.get(key) else {
                return Some(DEFAULT_IO_TIMEOUT);
            };
            let k = join(path, key);
            match w.duration(v, &k) {
                Some(d) if d > Duration::ZERO => Some(d),
                Some(_) => {
                    w.error(v.span(), &k, "must be more than zero");
                    None
                }
                None => None,
            }
        };
        let read_timeout = io_timeout(self, "read_timeout");
        let write_timeout = io_timeout(self, "write_timeout");
        let request_timeout = match table.get("request_timeout") {
            None => Some(None),
            Some(_) => io_timeout(self, "request_timeout").map(Some),
        };

        let pools_path = join(path, "pools");
        let mut pools: BTreeMap<String, (Pool, Option<Range<usize>>)> = BTreeMap::new();
        let mut pools_ok = true;
        match table.get("pools") {
            None => {
                self.error(
                    anchor.clone(),
                    &pools_path,
                    "missing key; a service needs at least one pool, e.g. \
                     `[services.NAME.pools.blue]` with `backends = [\"127.0.0.1:9001\"]`",
                );
                pools_ok = false;
            }
            Some(item) => match self.table(item, anchor.clone(), &pools_path) {
                None => pools_ok = false,
                Some(pt) => {
                    if pt.is_empty() {
                        self.error(
                            item.span().or(anchor.clone()),
                            &pools_path,
                            "a service needs at least one pool",
                        );
                        pools_ok = false;
                    }
                    for (pool_name, pool_item) in pt.iter() {
                        let pool_path = join(&pools_path, pool_name);
                        let key_span = pt.key(pool_name).and_then(|k| k.span());
                        match self.pool(pool_name, pool_item, key_span.clone(), &pool_path) {
                            Some(pool) => {
                                pools.insert(
                                    pool_name.to_string(),
                                    (pool, pool_item.span().or(key_span)),
                                );
                            }
                            None => pools_ok = false,
                        }
                    }
                }
            },
        }

        let split_ok = self.split(table, anchor, path, &mut pools, pools_ok);
        if !(pools_ok && split_ok) {
            return None;
        }
        let rollout = match table.get("rollout") {
            None => Some(None),
            Some(v) => self.rollout(v, &join(path, "rollout"), &pools).map(Some),
        };
        if !extras_ok {
            return None;
        }
        Some(Service {
            name: name.to_string(),
            pools: pools
                .into_values()
                .map(|(mut pool, _)| {
                    if pool.health.is_none() {
                        pool.health = health.clone();
                    }
                    pool
                })
                .collect(),
            connect_timeout: connect_timeout?,
            read_timeout: read_timeout?,
            write_timeout: write_timeout?,
            request_timeout: request_timeout?,
            outlier,
            slow_start,
            sticky: sticky?,
            override_header: override_header?,
            override_cookie: override_cookie?,
            override_secret: override_secret?,
            rollout: rollout?,
        })
    }

    /// An optional header or cookie name (`lower`: header names are
    /// compared in lower case).
    fn optional_name(
        &mut self,
        table: &dyn TableLike,
        path: &str,
        key: &str,
        lower: bool,
    ) -> Option<Option<String>> {
        let Some(v) = table.get(key) else {
            return Some(None);
        };
        let key = join(path, key);
        match self.string(v, &key) {
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(Some(if lower {
                    h.to_ascii_lowercase()
                } else {
                    h.to_string()
                }))
            }
            Some(h) => {
                self.error(v.span(), &key, format!("{h:?} is not a valid name"));
                None
            }
            None => None,
        }
    }

    fn float(&mut self, item: &Item, path: &str, min: f64, max: f64) -> Option<f64> {
        let n = match (item.as_float(), item.as_integer()) {
            (Some(f), _) => f,
            #[allow(clippy::cast_precision_loss)]
            (None, Some(i)) => i as f64,
            _ => {
                self.error(
                    item.span(),
                    path,
                    format!("expected a number, found {}", item.type_name()),
                );
                return None;
            }
        };
        if !(min..=max).contains(&n) {
            self.error(
                item.span(),
                path,
                format!("{n} is out of range; expected {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    /// `[services.NAME.rollout]`.
    fn rollout(
        &mut self,
        item: &Item,
        path: &str,
        pools: &BTreeMap<String, (Pool, Option<Range<usize>>)>,
    ) -> Option<Rollout> {
        let table = self.table(item, None, path)?;
        let mut keys = crate::ROLLOUT_SETTINGS.to_vec();
        keys.extend(["state", "step"]);
        self.known_keys(table, path, &keys);
        let mut ok = true;
        let pool = |w: &mut Self, key: &str| -> Option<String> {
            let k = join(path, key);
            let Some(v) = table.get(key) else {
                w.error(
                    item.span(),
                    &k,
                    format!(
                        "missing key; name the {} pool",
                        if key == "from" { "stable" } else { "canary" }
                    ),
                );
                return None;
            };
            let name = w.string(v, &k)?;
            if !pools.contains_key(name) {
                let known = pools
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                w.error(
                    v.span(),
                    &k,
                    format!("unknown pool; this service has {known}"),
                );
                return None;
            }
            Some(name.to_string())
        };
        let from = pool(self, "from");
        let to = pool(self, "to");
        if let (Some(f), Some(t)) = (&from, &to) {
            if f == t {
                self.error(
                    table.get("to").and_then(Item::span),
                    &join(path, "to"),
                    "the canary must be another pool than the stable one",
                );
                ok = false;
            }
        }
        let mut steps = Vec::new();
        let steps_key = join(path, "steps");
        match table.get("steps") {
            None => steps = vec![1, 5, 25, 50, 100],
            Some(v) => match v.as_array() {
                None => {
                    self.error(
                        v.span(),
                        &steps_key,
                        "expected a list of percentages, like [1, 5, 25, 50, 100]",
                    );
                    ok = false;
                }
                Some(list) => {
                    for (i, value) in list.iter().enumerate() {
                        let k = format!("{steps_key}[{i}]");
                        match value.as_integer() {
                            Some(n @ 1..=100) => {
                                let n = u32::try_from(n).unwrap_or(100);
                                if steps.last().is_some_and(|last| *last >= n) {
                                    self.error(value.span(), &k, "steps must rise");
                                    ok = false;
                                }
                                steps.push(n);
                            }
                            _ => {
                                self.error(
                                    value.span(),
                                    &k,
                                    "each step is a percentage from 1 to 100",
                                );
                                ok = false;
                            }
                        }
                    }
                    if ok && steps.last() != Some(&100) {
                        self.error(
                            v.span(),
                            &steps_key,
                            "the last step must be 100 (the canary takes all traffic)",
                        );
                        ok = false;
                    }
                }
            },
        }
        let duration =
            |w: &mut Self, key: &str, default: Option<Duration>| -> Option<Option<Duration>> {
                match table.get(key) {
                    None => Some(default),
                    Some(v) => {
                        let k = join(path, key);
                        match w.duration(v, &k) {
                            Some(d) if d > Duration::ZERO => Some(Some(d)),
                            Some(_) => {
                                w.error(v.span(), &k, "must be more than zero");
                                None
                            }
                            None => None,
                        }
                    }
                }
            };
        let step_duration = duration(self, "step_duration", Some(Duration::from_secs(120)));
        let max_p99 = duration(self, "max_p99", None);
        let integer = |w: &mut Self, key: &str, default: i64, range: Range<i64>| -> Option<i64> {
            match table.get(key) {
                None => Some(default),
                Some(v) => w.integer(v, &join(path, key), range),
            }
        };
        let min_requests = integer(self, "min_requests", 100, 1..1_000_000_000);
        let failures = integer(self, "failures_before_rollback", 1, 1..1000);
        let max_extensions = integer(self, "max_extensions", 3, 0..1000);
        let step = integer(self, "step", 0, 0..1000);
        let float = |w: &mut Self, key: &str, min: f64, max: f64| -> Option<Option<f64>> {
            match table.get(key) {
                None => Some(None),
                Some(v) => w.float(v, &join(path, key), min, max).map(Some),
            }
        };
        let max_error_rate = float(self, "max_error_rate", 0.0, 1.0);
        let max_p99_ratio = float(self, "max_p99_ratio", 1.0, 1000.0);
        let rollback_error_rate = float(self, "rollback_error_rate", 0.0, 1.0);
        let state = match table.get("state") {
            None => Some(RolloutState::Running),
            Some(v) => {
                let k = join(path, "state");
                match self.string(v, &k) {
                    Some(raw) => {
                        let parsed = RolloutState::parse(raw);
                        if parsed.is_none() {
                            self.error(
                                v.span(),
                                &k,
                                format!("unknown state {raw:?}; expected \"running\", \"paused\", \"complete\" or \"rolled_back\""),
                            );
                        }
                        parsed
                    }
                    None => None,
                }
            }
        };
        let step = usize::try_from(step?).ok()?;
        if ok && step >= steps.len() {
            self.error(
                table.get("step").and_then(Item::span),
                &join(path, "step"),
                format!("there are {} steps; `step` counts from 0", steps.len()),
            );
            ok = false;
        }
        let max_error_rate = max_error_rate?.unwrap_or(0.01);
        let rollout = Rollout {
            from: from?,
            to: to?,
            steps,
            step_duration: step_duration??,
            min_requests: u64::try_from(min_requests?).ok()?,
            max_error_rate,
            max_p99: max_p99?,
            max_p99_ratio: max_p99_ratio?,
            failures_before_rollback: u32::try_from(failures?).ok()?,
            max_extensions: u32::try_from(max_extensions?).ok()?,
            rollback_error_rate: rollback_error_rate?
                .unwrap_or_else(|| (max_error_rate * 5.0).clamp(0.05, 1.0)),
            state: state?,
            step,
        };
        ok.then_some(rollout)
    }

    /// `sticky = true`, or a table naming the header or cookie to use.
    fn sticky(&mut self, item: &Item, path: &str) -> Option<Sticky> {
        if let Some(on) = item.as_bool() {
            return on
                .then(|| Sticky::Cookie(DEFAULT_STICKY_COOKIE.to_string()))
                .or(Some(Sticky::Off));
        }
        let Some(table) = item.as_table_like() else {
            self.error(
                item.span(),
                path,
                "expected true, false or a table with `header` or `cookie`",
            );
            return None;
        };
        self.known_keys(table, path, &["header", "cookie"]);
        let name = |w: &mut Self, key: &str| -> Option<Option<String>> {
            match table.get(key) {
                None => Some(None),
                Some(v) => {
                    let k = join(path, key);
                    match w.string(v, &k) {
                        Some(n)
                            if !n.is_empty()
                                && n.bytes().all(|b| {
                                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
                                }) =>
                        {
                            Some(Some(n.to_string()))
                        }
                        Some(n) => {
                            w.error(v.span(), &k, format!("{n:?} is not a valid name"));
                            None
                        }
                        None => None,
                    }
                }
            }
        };
        match (name(self, "header")?, name(self, "cookie")?) {
            (Some(h), None) => Some(Sticky::Header(h.to_ascii_lowercase())),
            (None, Some(c)) => Some(Sticky::Cookie(c)),
            (None, None) => Some(Sticky::Cookie(DEFAULT_STICKY_COOKIE.to_string())),
            (Some(_), Some(_)) => {
                self.error(item.span(), path, "give `header` or `cookie`, not both");
                None
            }
        }
    }

    /// An active health check table (`[...health]`).
    fn health_check(&mut self, item: &Item, path: &str) -> Option<HealthCheck> {
        let table = self.table(item, None, path)?;
        self.known_keys(
            table,
            path,
            &[
                "type",
                "path",
                "method",
                "host",
                "expect_status",
                "interval",
                "timeout",
                "healthy_threshold",
                "unhealthy_threshold",
                "jitter",
            ],
        );
        let mut ok = true;
        let mut check = HealthCheck::default();
        let kind = match table.get("type") {
            None => Some("http"),
            Some(v) => self.string(v, &join(path, "type")),
        };
        let http = match kind {
            Some("http") => true,
            Some("tcp") => false,
            Some(other) => {
                self.error(
                    table.get("type").and_then(|v| v.span()),
                    &join(path, "type"),
                    format!("unknown check type {other:?}; expected \"http\" or \"tcp\""),
                );
                return None;
            }
            None => return None,
        };
        let mut http_check = HttpCheck::default();
        for key in ["path", "method", "host", "expect_status"] {
            if let (false, Some(v)) = (http, table.get(key)) {
                self.error(
                    v.span(),
                    &join(path, key),
                    "only for `type = \"http\"` checks",
                );
                ok = false;
            }
        }
        if let Some(v) = table.get("path") {
            let key = join(path, "path");
            match self.string(v, &key) {
                Some(p)
                    if p.starts_with('/')
                        && !p.bytes().any(|b| b.is_ascii_control() || b == b' ') =>
                {
                    http_check.path = p.to_string()
                }
                Some(p) => {
                    self.error(
                        v.span(),
                        &key,
                        format!("invalid path {p:?}: must start with '/' and have no spaces"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = table.get("method") {
            let key = join(path, "method");
            match self.string(v, &key) {
                Some(m @ ("GET" | "HEAD" | "OPTIONS")) => http_check.method = m.to_string(),
                Some(m) => {
                    self.error(
                        v.span(),
                        &key,
                        format!("unsupported method {m:?}; use \"GET\", \"HEAD\" or \"OPTIONS\""),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = table.get("host") {
            let key = join(path, "host");
            match self.string(v, &key).map(host_match) {
                Some(Ok(HostMatch::Exact(h))) => http_check.host = Some(h),
                Some(_) => {
                    self.error(
                        v.span(),
                        &key,
                        "expected a host name such as \"shop.internal\"",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(v) = table.get("expect_status") {
            let key = join(path, "expect_status");
            match v.as_array() {
                Some(arr) if !arr.is_empty() => {
                    let mut codes = Vec::new();
                    for (i, code) in arr.iter().enumerate() {
                        match code.as_integer() {
                            Some(c @ 100..=599) => codes.push(c as u16),
                            _ => {
                                self.error(
                                    code.span(),
                                    &format!("{key}[{i}]"),
                                    "expected an HTTP status code (100 to 599)",
                                );
                                ok = false;
                            }
                        }
                    }
                    http_check.expect_status = codes;
                }
                _ => {
                    self.error(
                        v.span(),
                        &key,
                        "expected a non-empty array of status codes, e.g. [200, 204]",
                    );
                    ok = false;
                }
            }
        }
        check.kind = if http {
            CheckKind::Http(http_check)
        } else {
            CheckKind::Tcp
        };
        let mut duration = |w: &mut Self, key: &str, slot: &mut Duration| {
            if let Some(v) = table.get(key) {
                let k = join(path, key);
                match w.duration(v, &k) {
                    Some(d) if d > Duration::ZERO || key == "jitter" => *slot = d,
                    Some(_) => {
                        w.error(v.span(), &k, "must be more than zero");
                        ok = false;
                    }
                    None => ok = false,
                }
            }
        };
        duration(self, "interval", &mut check.interval);
        duration(self, "timeout", &mut check.timeout);
        check.jitter = check.interval / 10;
        duration(self, "jitter", &mut check.jitter);
        for (key, slot) in [
            ("healthy_threshold", &mut check.healthy_threshold),
            ("unhealthy_threshold", &mut check.unhealthy_threshold),
        ] {
            if let Some(v) = table.get(key) {
                match self.integer(v, &join(path, key), 1..101) {
                    Some(n) => *slot = n as u32,
                    None => ok = false,
                }
            }
        }
        if ok && check.timeout > check.interval {
            self.error(
                table.get("timeout").and_then(|v| v.span()).or(item.span()),
                &join(path, "timeout"),
                format!(
                    "{} is longer than the interval ({}); a check must end before the next starts",
                    humantime::format_duration(check.timeout),
                    humantime::format_duration(check.interval)
                ),
            );
            ok = false;
        }
        ok.then_some(check)
    }

    /// Passive ejection settings; `Some(None)` when disabled.
    fn outlier(&mut self, item: &Item, path: &str) -> Option<Option<Outlier>> {
        let table = self.table(item, None, path)?;
        self.known_keys(
            table,
            path,
            &[
                "enabled",
                "consecutive_failures",
                "include_5xx",
                "base_ejection",
                "max_ejection",
                "max_ejected_percent",
            ],
        );
        let mut ok = true;
        let mut outlier = Outlier::default();
        let mut enabled = true;
        if let Some(v) = table.get("enabled") {
            match self.boolean(v, &join(path, "enabled")) {
                Some(b) => enabled = b,
                None => ok = false,
            }
        }
        if let Some(v) = table.get("include_5xx") {
            match self.boolean(v, &join(path, "include_5xx")) {
                Some(b) => outlier.include_5xx = b,
                None => ok = false,
            }
        }
        if let Some(v) = table.get("consecutive_failures") {
            match self.integer(v, &join(path, "consecutive_failures"), 1..1001) {
                Some(n) => outlier.consecutive_failures = n as u32,
                None => ok = false,
            }
        }
        if let Some(v) = table.get("max_ejected_percent") {
            match self.integer(v, &join(path, "max_ejected_percent"), 0..101) {
                Some(n) => outlier.max_ejected_percent = n as u32,
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("base_ejection", &mut outlier.base_ejection),
            ("max_ejection", &mut outlier.max_ejection),
        ] {
            if let Some(v) = table.get(key) {
                let k = join(path, key);
                match self.duration(v, &k) {
                    Some(d) if d > Duration::ZERO => *slot = d,
                    Some(_) => {
                        self.error(v.span(), &k, "must be more than zero");
                        ok = false;
                    }
                    None => ok = false,
                }
            }
        }
        if ok && outlier.max_ejection < outlier.base_ejection {
            self.error(
                table
                    .get("max_ejection")
                    .and_then(|v| v.span())
                    .or(item.span()),
                &join(path, "max_ejection"),
                "must not be shorter than base_ejection",
            );
            ok = false;
        }
        ok.then_some(enabled.then_some(outlier))
    }

    /// Applies `split` to `pools`; returns whether it was valid.
    fn split(
        &mut self,
        service: &dyn TableLike,
        anchor: Option<Range<usize>>,
        path: &str,
        pools: &mut BTreeMap<String, (Pool, Option<Range<usize>>)>,
        pools_ok: bool,
    ) -> bool {
        let split_path = join(path, "split");
        let Some(item) = service.get("split") else {
            if pools.len() == 1 {
                for (pool, _) in pools.values_mut() {
                    pool.share = 1;
                }
                return true;
            }
            if pools.len() > 1 {
                self.error(
                    anchor,
                    &split_path,
                    "missing key; a service with more than one pool needs a split, \
                     e.g. `split = { blue = 90, green = 10 }`",
                );
            }
            return false;
        };
        let Some(table) = self.table(item, None, &split_path) else {
            return false;
        };
        let mut ok = true;
        let mut total = 0;
        for (pool_name, share_item) in table.iter() {
            let key = join(&split_path, pool_name);
            let share = self.integer(share_item, &key, 0..MAX_SHARE + 1);
            match (share, pools.get_mut(pool_name)) {
                (Some(share), Some((pool, _))) => {
                    let share = u32::try_from(share).unwrap_or(0);
                    pool.share = share;
                    total += u64::from(share);
                }
                (_, None) => {
                    // With broken pools, an unknown name may be a symptom.
                    if pools_ok {
                        let known = pools
                            .keys()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let span = table.key(pool_name).and_then(|k| k.span());
                        self.error(
                            span,
                            &key,
                            format!("unknown pool; this service has {known}"),
                        );
                    }
                    ok = false;
                }
                (None, Some(_)) => ok = false,
            }
        }
        if ok && total == 0 {
            self.error(
                item.span(),
                &split_path,
                "every share is zero; at least one pool must get traffic",
            );
            ok = false;
        }
        if ok {
            for (name, (pool, span)) in pools.iter() {
                if pool.share > 0 && pool.backends.is_empty() {
                    self.error(
                        span.clone(),
                        &join(&join(path, "pools"), name),
                        format!(
                            "pool has a share of {} in `split` but no backends",
                            pool.share
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok
    }

    fn pool(
        &mut self,
        name: &str,
        item: &Item,
        span: Option<Range<usize>>,
        path: &str,
    ) -> Option<Pool> {
        let table = self.table(item, span.clone(), path)?;
        self.known_keys(
            table,
            path,
            &[
                "backends",
                "drain",
                "tls",
                "sni",
                "ca",
                "insecure_skip_verify",
                "health",
            ],
        );
        let tls = self.upstream_tls(table, path);
        let health = match table.get("health") {
            None => Some(None),
            Some(v) => self.health_check(v, &join(path, "health")).map(Some),
        };
        let key = join(path, "backends");
        let Some(backends_item) = table.get("backends") else {
            self.error(
                item.span().or(span),
                &key,
                "missing key; list the pool's backends, e.g. `backends = [\"127.0.0.1:9001\"]` \
                 (an empty list is allowed for an idle pool)",
            );
            return None;
        };
        let Some(array) = backends_item.as_array() else {
            self.error(
                backends_item.span(),
                &key,
                format!(
                    "expected an array of \"IP:PORT\" strings, found {}",
                    backends_item.type_name()
                ),
            );
            return None;
        };
        let mut ok = true;
        let mut backends: Vec<SocketAddr> = Vec::with_capacity(array.len());
        for (i, value) in array.iter().enumerate() {
            let elem_key = format!("{key}[{i}]");
            let item = Item::Value(value.clone());
            let Some(addr) = self.socket_addr_value(value, &item, &elem_key) else {
                ok = false;
                continue;
            };
            if backends.contains(&addr) {
                self.error(value.span(), &elem_key, format!("duplicate backend {addr}"));
                ok = false;
                continue;
            }
            backends.push(addr);
        }
        let mut drain = Vec::new();
        if let Some(v) = table.get("drain") {
            let key = join(path, "drain");
            match v.as_array() {
                Some(arr) => {
                    for (i, value) in arr.iter().enumerate() {
                        let elem_key = format!("{key}[{i}]");
                        let item = Item::Value(value.clone());
                        match self.socket_addr_value(value, &item, &elem_key) {
                            Some(addr) if backends.contains(&addr) => drain.push(addr),
                            Some(addr) => {
                                self.error(
                                    value.span(),
                                    &elem_key,
                                    format!("{addr} is not one of this pool's backends"),
                                );
                                ok = false;
                            }
                            None => ok = false,
                        }
                    }
                }
                None => {
                    self.error(v.span(), &key, "expected an array of backend addresses");
                    ok = false;
                }
            }
        }
        let tls = tls?;
        let health = health?;
        ok.then(|| Pool {
            name: name.to_string(),
            share: 0,
            backends,
            drain,
            tls,
            health,
        })
    }

    /// `tls`, `sni`, `ca` and `insecure_skip_verify` of a pool; `Some(None)`
    /// for plain-text backends, `None` when something is wrong.
    fn upstream_tls(&mut self, table: &dyn TableLike, path: &str) -> Option<Option<UpstreamTls>> {
        let enabled = match table.get("tls") {
            None => false,
            Some(v) => self.boolean(v, &join(path, "tls"))?,
        };
        let mut ok = true;
        let sni = match table.get("sni") {
            None => None,
            Some(v) => {
                let key = join(path, "sni");
                match self.string(v, &key) {
                    Some(raw) => match host_match(raw) {
                        Ok(HostMatch::Exact(name)) => Some(name),
                        _ => {
                            self.error(v.span(), &key, format!("invalid server name {raw:?}; expected a DNS name such as \"backend.internal\""));
                            ok = false;
                            None
                        }
                    },
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let ca = match table.get("ca") {
            None => None,
            Some(v) => {
                let p = self.file_path(v, &join(path, "ca"));
                ok &= p.is_some();
                p
            }
        };
        let skip_verify = match table.get("insecure_skip_verify") {
            None => false,
            Some(v) => match self.boolean(v, &join(path, "insecure_skip_verify")) {
                Some(b) => b,
                None => {
                    ok = false;
                    false
                }
            },
        };
        if !ok {
            return None;
        }
        if !enabled {
            for key in ["sni", "ca", "insecure_skip_verify"] {
                if let Some(v) = table.get(key) {
                    self.error(
                        v.span(),
                        &join(path, key),
                        "only meaningful with `tls = true`",
                    );
                    ok = false;
                }
            }
            return ok.then_some(None);
        }
        Some(Some(UpstreamTls {
            sni,
            ca,
            verify: !skip_verify,
        }))
    }

    /// `socket_addr` for an array element, whose span lives on the value.
    fn socket_addr_value(&mut self, value: &Value, item: &Item, path: &str) -> Option<SocketAddr> {
        let before = self.diags.len();
        let addr = self.socket_addr(item, path);
        // A cloned value loses its span; point the new problems at the original.
        for d in &mut self.diags[before..] {
            let (line, column) = position(&self.line_starts, self.text, value.span());
            d.line = line;
            d.column = column;
        }
        addr
    }

    fn routes(
        &mut self,
        root: &dyn TableLike,
        services: &BTreeMap<String, Service>,
        has_https: bool,
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let Some(item) = root.get("routes") else {
            return routes;
        };
        let entries = self.table_array(item, root.key("routes").and_then(|k| k.span()), "routes");
        let mut seen: HashMap<(HostMatch, String), usize> = HashMap::new();
        for (i, (table, span)) in entries.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            let anchor = span.or_else(|| first_key_span(table));
            self.known_keys(table, &path, &["host", "path", "service", "https_redirect"]);
            let https_redirect = match table.get("https_redirect") {
                None => Some(has_https),
                Some(v) => {
                    let key = format!("{path}.https_redirect");
                    match self.boolean(v, &key) {
                        Some(true) if !has_https => {
                            self.error(
                                v.span(),
                                &key,
                                "redirecting to HTTPS needs an HTTPS listener; add `https` to [listen]",
                            );
                            None
                        }
                        other => other,
                    }
                }
            };
            let host = match table.get("host") {
                None => Some(HostMatch::Any),
                Some(v) => {
                    let key = format!("{path}.host");
                    self.string(v, &key).and_then(|raw| match host_match(raw) {
                        Ok(h) => Some(h),
                        Err(msg) => {
                            self.error(v.span(), &key, msg);
                            None
                        }
                    })
                }
            };
            let route_path = match table.get("path") {
                None => Some("/".to_string()),
                Some(v) => {
                    let key = format!("{path}.path");
                    self.string(v, &key).and_then(|raw| match check_path(raw) {
                        Ok(()) => Some(raw.to_string()),
                        Err(msg) => {
                            self.error(v.span(), &key, msg);
                            None
                        }
                    })
                }
            };
            let service = match table.get("service") {
                None => {
                    self.error(
                        anchor.clone(),
                        &format!("{path}.service"),
                        "missing key; a route must name the service it sends traffic to",
                    );
                    None
                }
                Some(v) => {
                    let key = format!("{path}.service");
                    match self.string(v, &key) {
                        Some(name) if services.contains_key(name) => Some(name.to_string()),
                        Some(name) => {
                            // A service that failed validation was already reported.
                            let declared = root
                                .get("services")
                                .and_then(|s| s.as_table_like())
                                .is_some_and(|s| s.contains_key(name));
                            if !declared {
                                self.error(
                                    v.span(),
                                    &key,
                                    format!(
                                        "unknown service {name:?}; declare it as [services.{name}]"
                                    ),
                                );
                            }
                            None
                        }
                        None => None,
                    }
                }
            };
            let (Some(host), Some(route_path), Some(service), Some(https_redirect)) =
                (host, route_path, service, https_redirect)
            else {
                continue;
            };
            let identity = (host.clone(), route_path.clone());
            if let Some(first) = seen.get(&identity) {
                self.error(
                    anchor,
                    &path,
                    format!("same host and path as routes[{first}]; each host and path may be routed once"),
                );
                continue;
            }
            seen.insert(identity, i);
            routes.push(Route {
                host,
                path: route_path,
                service,
                https_redirect,
            });
        }
        routes
    }
}

fn position(line_starts: &[usize], text: &str, span: Option<Range<usize>>) -> (usize, usize) {
    let offset = span.map_or(0, |s| s.start.min(text.len()));
    let line_index = match line_starts.binary_search(&offset) {
        Ok(i) => i,
        Err(i) => i - 1,
    };
    let start = line_starts[line_index];
    let column = text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
    (line_index + 1, column)
}

/// Edit distance counting a swap of neighbours as one edit (optimal string
/// alignment), for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether `typed` is close enough to `known` to suggest it.
fn looks_like(known: &str, typed: &str) -> bool {
    let allowed = if known.len() <= 4 { 1 } else { 2 };
    edit_distance(known, typed) <= allowed
}

fn first_key_span(table: &dyn TableLike) -> Option<Range<usize>> {
    let (first, _) = table.iter().next()?;
    table.key(first).and_then(|k| k.span())
}

/// `path.key`, quoting keys that are not bare TOML keys.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Parses a route's `host`: a DNS name or `*.` + a DNS name.
pub(crate) fn host_match(raw: &str) -> Result<HostMatch, String> {
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.contains(':') {
        return Err(format!(
            "invalid host {raw:?}: leave out the port; a route matches the host on every listener"
        ));
    }
    if let Some(rest) = name.strip_prefix("*.").filter(|rest| !rest.contains('*')) {
        check_dns_name(rest).map_err(|why| format!("invalid host {raw:?}: {why}"))?;
        return Ok(HostMatch::Wildcard(rest.to_string()));
    }
    if name.contains('*') {
        return Err(format!(
            "invalid host {raw:?}: a wildcard must be the whole first label, as in \"*.example.com\""
        ));
    }
    check_dns_name(name).map_err(|why| format!("invalid host {raw:?}: {why}"))?;
    Ok(HostMatch::Exact(name.to_string()))
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed in a label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with '-'");
        }
    }
    Ok(())
}

fn check_path(raw: &str) -> Result<(), String> {
    if !raw.starts_with('/') {
        return Err(format!("invalid path {raw:?}: must start with '/'"));
    }
    if raw
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(format!(
            "invalid path {raw:?}: no spaces, control characters, '?' or '#' (a path prefix only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    const VALID: &str = r#"
[listen]
http = "127.0.0.1:8080"

[[routes]]
host = "Shop.Example.com"
path = "/"
service = "shop"

[[routes]]
host = "*.example.com"
service = "shop"

[services.shop]
split = { blue = 90, green = 10 }

[services.shop.pools.blue]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]

[services.shop.pools.green]
backends = ["127.0.0.1:9003"]
"#;

    #[test]
    fn valid_file_builds_the_model() {
        let config = parse(VALID, "t.toml").expect("valid");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(
            config.routes[0].host,
            HostMatch::Exact("shop.example.com".into())
        );
        assert_eq!(
            config.routes[1].host,
            HostMatch::Wildcard("example.com".into())
        );
        let shop = config.service("shop").expect("shop");
        let shares: Vec<_> = shop
            .pools
            .iter()
            .map(|p| (p.name.as_str(), p.share))
            .collect();
        assert_eq!(shares, vec![("blue", 90), ("green", 10)]);
        assert_eq!(config.server.grace_period, DEFAULT_GRACE_PERIOD);
    }

    #[test]
    fn every_problem_is_reported_with_line_and_key() {
        let text = r#"
[listen]
http = "localhost"
colour = "red"

[[routes]]
service = "nope"

[services.shop]
split = { blue = 0, red = 5 }

[services.shop.pools.blue]
backends = ["127.0.0.1:1", "127.0.0.1:1"]
wat = 1
"#;
        let errs = errors(text);
        assert_eq!(
            errs,
            vec![
                "t.toml:3:8: listen.http: invalid address \"localhost\"; expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                "t.toml:4:1: listen.colour: unknown key; expected one of `http`, `https`, `admin`, `proxy_protocol`",
                "t.toml:7:11: routes[0].service: unknown service \"nope\"; declare it as [services.nope]",
                "t.toml:13:28: services.shop.pools.blue.backends[1]: duplicate backend 127.0.0.1:1",
                "t.toml:14:1: services.shop.pools.blue.wat: unknown key; expected one of `backends`, `drain`, `tls`, `sni`, `ca`, `insecure_skip_verify`, `health`",
            ]
        );
    }

    #[test]
    fn split_cross_checks() {
        let base = |split: &str, green: &str| {
            format!(
                "[listen]\nhttp = \"127.0.0.1:1\"\n[services.s]\nsplit = {split}\n\
                 [services.s.pools.blue]\nbackends = [\"127.0.0.1:2\"]\n\
                 [services.s.pools.green]\nbackends = {green}\n"
            )
        };
        assert_eq!(
            errors(&base("{ blue = 0, green = 0 }", "[\"127.0.0.1:3\"]")),
            vec!["t.toml:4:9: services.s.split: every share is zero; at least one pool must get traffic"]
        );
        assert_eq!(
            errors(&base("{ blue = 1, green = 1 }", "[]")),
            vec!["t.toml:7:1: services.s.pools.green: pool has a share of 1 in `split` but no backends"]
        );
        assert_eq!(
            errors(&base("{ blue = 1, purple = 1 }", "[]")),
            vec!["t.toml:4:21: services.s.split.purple: unknown pool; this service has `blue`, `green`"]
        );
        assert_eq!(
            errors(&base("{ blue = -1 }", "[]")),
            vec!["t.toml:4:18: services.s.split.blue: -1 is out of range; expected 0 to 1000000"]
        );
        // A pool with no share and no backends is an idle pool: valid.
        assert!(errors(&base("{ blue = 1 }", "[]")).is_empty());
    }

    #[test]
    fn duplicate_routes_and_bad_hosts() {
        let text = r#"[listen]
http = "127.0.0.1:1"
[[routes]]
host = "a.example.com"
service = "s"
[[routes]]
host = "A.example.com"
path = "/"
service = "s"
[[routes]]
host = "a.*.com"
service = "s"
[[routes]]
path = "api"
service = "s"
[services.s.pools.p]
backends = ["127.0.0.1:2"]
"#;
        assert_eq!(
            errors(text),
            vec![
                "t.toml:6:1: routes[1]: same host and path as routes[0]; each host and path may be routed once",
                "t.toml:11:8: routes[2].host: invalid host \"a.*.com\": a wildcard must be the whole first label, as in \"*.example.com\"",
                "t.toml:14:8: routes[3].path: invalid path \"api\": must start with '/'",
            ]
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let errs = errors("[listen]\nhttp = \"127.0.0.1:1\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.toml:2:"), "{errs:?}");
        assert!(errs[0].contains("invalid TOML"), "{errs:?}");
    }

    #[test]
    fn split_required_with_two_pools() {
        let text = "[listen]\nhttp = \"127.0.0.1:1\"\n[services.s.pools.a]\nbackends = [\"127.0.0.1:2\"]\n[services.s.pools.b]\nbackends = [\"127.0.0.1:3\"]\n";
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("services.s.split: missing key"),
            "{errs:?}"
        );
    }

    #[test]
    fn rollout_settings_are_checked() {
        let base = "[listen]\nhttp = \"127.0.0.1:1\"\n[services.s]\nsplit = { a = 100, b = 0 }\n[services.s.pools.a]\nbackends = [\"127.0.0.1:2\"]\n[services.s.pools.b]\nbackends = [\"127.0.0.1:3\"]\n";
        let good = format!("{base}[services.s.rollout]\nfrom = \"a\"\nto = \"b\"\nsteps = [5, 50, 100]\nstep_duration = \"30s\"\nmax_p99 = \"250ms\"\nmax_p99_ratio = 1.5\nstep = 1\nstate = \"paused\"\n");
        let config = parse(&good, "f.toml").expect("valid");
        let r = config.services[0].rollout.clone().expect("rollout");
        assert_eq!(r.steps, vec![5, 50, 100]);
        assert_eq!(r.share(), 50);
        assert_eq!(r.state, RolloutState::Paused);
        assert_eq!(r.max_p99, Some(Duration::from_millis(250)));
        assert_eq!(r.min_requests, 100);
        assert!((r.rollback_error_rate - 0.05).abs() < 1e-9);

        let bad = format!("{base}[services.s.rollout]\nfrom = \"a\"\nto = \"c\"\nsteps = [50, 20]\nmax_error_rate = 2\nstate = \"done\"\n");
        let errs = errors(&bad);
        for needle in [
            "services.s.rollout.to: unknown pool; this service has `a`, `b`",
            "services.s.rollout.steps[1]: steps must rise",
            "services.s.rollout.max_error_rate: 2 is out of range",
            "services.s.rollout.state: unknown state \"done\"",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(needle)),
                "{needle}: {errs:?}"
            );
        }
        let same = format!("{base}[services.s.rollout]\nfrom = \"a\"\nto = \"a\"\n");
        assert!(errors(&same)
            .iter()
            .any(|e| e.contains("rollout.to: the canary must be another pool")));
        let ages = format!(
            "{base}[services.s.rollout]\nfrom = \"a\"\nto = \"b\"\nstep_duration = \"2000000y\"\n"
        );
        assert!(errors(&ages)
            .iter()
            .any(|e| e.contains("step_duration: \"2000000y\" is too long")));
        let secret = base.replace("split =", "override_secret = \"x\"\nsplit =");
        assert!(errors(&secret).iter().any(|e| e.contains(
            "services.s.override_secret: a secret needs `override_header` or `override_cookie`"
        )));
    }
}
