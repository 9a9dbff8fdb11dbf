//! Header rewriting: hop-by-hop stripping, forwarded headers, request host.

use std::borrow::Cow;

use http::header::{
    HeaderName, CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-Proto`, built once.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`, built once.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `HTTP2-Settings`, which belongs to an `h2c` upgrade (never forwarded).
pub static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop headers (RFC 9110 section 7.6.1) that a proxy never forwards.
/// `Transfer-Encoding` is not here: the framework re-frames bodies itself.
static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// The names [`hop_by_hop_names_and`] looks for besides its callers' own:
/// [`HOP_BY_HOP`] and `Upgrade`.
const LISTED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "upgrade",
];

/// A set of name signatures (256 bits): a name whose signature is not in
/// the set is none of the names the set was made of; one whose signature is
/// in it is compared with them. Most names a message has (`Host`, `Date`,
/// `Content-Type`, ...) are ruled out by one bit test instead of a
/// comparison with every listed name.
#[derive(Clone, Copy)]
struct NameFilter([u64; 4]);

impl NameFilter {
    /// Length, first, middle and last byte of a (lower-case, non-empty)
    /// name, mixed so that no common header shares a listed name's
    /// signature (see the tests).
    const fn signature(name: &[u8]) -> u8 {
        let len = name.len();
        (len as u8) ^ name[0].wrapping_mul(19) ^ name[len / 2] ^ name[len - 1]
    }

    const fn of(names: &[&str]) -> Self {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < names.len() {
            let sig = Self::signature(names[i].as_bytes());
            bits[(sig >> 6) as usize] |= 1 << (sig & 63);
            i += 1;
        }
        NameFilter(bits)
    }

    const fn union(self, other: NameFilter) -> Self {
        let (a, b) = (self.0, other.0);
        NameFilter([a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]])
    }

    fn with(mut self, name: &HeaderName) -> Self {
        let sig = Self::signature(name.as_str().as_bytes());
        self.0[usize::from(sig >> 6)] |= 1 << (sig & 63);
        self
    }

    fn may_hold(&self, name: &HeaderName) -> bool {
        let sig = Self::signature(name.as_str().as_bytes());
        self.0[usize::from(sig >> 6)] & (1 << (sig & 63)) != 0
    }
}

/// [`LISTED`]'s signatures.
static LISTED_FILTER: NameFilter = NameFilter::of(&LISTED);

/// The names a request forwarded upstream loses besides the hop-by-hop set,
/// in the order that lets each case pass a prefix as the `also` of
/// [`hop_by_hop_names_and`] (see `Proxy::upstream_request_filter`).
pub static FORWARDING_NAMES: [&HeaderName; 8] = [
    &TRANSFER_ENCODING,
    &HTTP2_SETTINGS,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REQUEST_ID,
    &X_FORWARDED_FOR,
    &http::header::FORWARDED,
    &X_REAL_IP,
];

/// [`LISTED`] and [`FORWARDING_NAMES`] together: the signatures of every
/// name a prefix of [`FORWARDING_NAMES`] adds, made once.
static FORWARDING_FILTER: NameFilter = LISTED_FILTER.union(NameFilter::of(&[
    "transfer-encoding",
    "http2-settings",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
]));

/// Headers a `Connection` token may never remove: they frame the message or
/// route it, and dropping them would desynchronise or misroute the upstream;
/// and the chain of addresses a trusted balancer extends.
static PROTECTED: [HeaderName; 4] = [
    HOST,
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
    HeaderName::from_static("x-forwarded-for"),
];

/// Header names to remove: room for four inline, so the usual one or two
/// (`Connection`, `Keep-Alive`) cost no allocation.
pub type HeaderNames = smallvec::SmallVec<[HeaderName; 4]>;

/// Names of the headers to remove before forwarding a message with
/// `headers`: the fixed hop-by-hop set, `Upgrade` unless `upgrade` is kept,
/// and every header named in `Connection`.
///
/// One pass over the names the message has, compared with constant names
/// (no parsing, no allocation for up to four names): this runs
/// twice per proxied request.
pub fn hop_by_hop_names(headers: &HeaderMap, keep_upgrade: bool) -> HeaderNames {
    hop_by_hop_names_and(headers, keep_upgrade, &[])
}

/// [`hop_by_hop_names`], plus those of `also` the message has: the same
/// pass finds them, so a caller removes only headers that are there
/// (removing an absent one still hashes its name into both header maps).
pub fn hop_by_hop_names_and(
    headers: &HeaderMap,
    keep_upgrade: bool,
    also: &[&HeaderName],
) -> HeaderNames {
    let mut names = HeaderNames::new();
    let mut connection = false;
    let filter = if also.is_empty() {
        LISTED_FILTER
    } else if std::ptr::eq(also.as_ptr(), FORWARDING_NAMES.as_ptr()) {
        // A prefix of the forwarding names: made once.
        FORWARDING_FILTER
    } else {
        also.iter().fold(LISTED_FILTER, |f, name| f.with(name))
    };
    for name in headers.keys() {
        if !filter.may_hold(name) {
            continue;
        }
        if *name == CONNECTION {
            connection = true;
        }
        if HOP_BY_HOP.contains(name) || (!keep_upgrade && *name == UPGRADE) || also.contains(&name)
        {
            names.push(name.clone());
        }
    }
    if !connection {
        return names;
    }
    for value in headers.get_all(CONNECTION) {
        // The usual value (every nginx upstream sends it): names only a
        // header the pass above listed, so no parsing.
        if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.is_empty()
                || (keep_upgrade && token.eq_ignore_ascii_case("upgrade"))
                // Listed by the pass above when present (`keep-alive`, ...).
                || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str()))
                // Most tokens (`close`) name no header the message has:
                // looked up without building a name.
                || !headers.contains_key(token)
            {
                continue;
            }
            // `from_bytes` folds case; names already listed are skipped.
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            if PROTECTED.contains(&name) || names.contains(&name) {
                continue;
            }
            names.push(name);
        }
    }
    names
}

/// Whether a request asks for a WebSocket upgrade, the one upgrade passed
/// on: a single `Upgrade: websocket` with the `upgrade` connection option.
/// The caller checks the request is HTTP/1.1. Any other upgrade (`h2c`,
/// ...) is stripped and the request served as a plain one.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrade = headers.get_all(UPGRADE).iter();
    let websocket = match (upgrade.next(), upgrade.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// The client a request is from: the peer, or, when the peer is a trusted
/// proxy, the nearest address in `X-Forwarded-For` (right to left) that is
/// not itself a trusted proxy.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[switchyard_config::Cidr],
) -> std::net::IpAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            // Garbage in the chain: stop believing it here.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// The value of `X-Forwarded-For` to send upstream from a trusted proxy:
/// what it sent (every such header, in order) with `client` appended.
pub fn forwarded_for(headers: &HeaderMap, client: &str) -> String {
    let mut value = String::with_capacity(client.len() + 16);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(prior) = prior.to_str() {
            let prior = prior.trim();
            if !prior.is_empty() {
                value.push_str(prior);
                value.push_str(", ");
            }
        }
    }
    value.push_str(client);
    value
}

/// An address as a header value. IPv4, the common case, is written by hand:
/// the formatting machinery costs more than the rest of the header.
pub fn ip_value(ip: std::net::IpAddr) -> http::HeaderValue {
    let std::net::IpAddr::V4(v4) = ip else {
        return http::HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    };
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    http::HeaderValue::from_bytes(&buf[..len])
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// The host a request is for, from the request target's authority (absolute
/// form, HTTP/2 `:authority`) or else the `Host` header: lower case, without
/// port or trailing dot. Empty when the request names no host.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Cow<'a, str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(strip_port)
            .unwrap_or(""),
    };
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_name_filter_holds_every_listed_name_and_rules_out_common_ones() {
        // The list is the hop-by-hop set and `Upgrade`.
        let mut listed: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        listed.push(UPGRADE.as_str());
        listed.sort_unstable();
        let mut own = LISTED.to_vec();
        own.sort_unstable();
        assert_eq!(listed, own);
        // What the proxy passes: the filter made once holds them, as one
        // made for them would.
        let also = FORWARDING_NAMES;
        let filter = FORWARDING_FILTER;
        for name in HOP_BY_HOP.iter().chain([&UPGRADE]).chain(also) {
            assert!(filter.may_hold(name), "{name}");
            assert!(LISTED_FILTER.with(name).may_hold(name), "{name}");
        }
        assert_eq!(
            filter.0,
            also.iter().fold(LISTED_FILTER, |f, name| f.with(name)).0
        );
        // The names most messages carry cost one bit test.
        for common in [
            "host",
            "date",
            "server",
            "content-type",
            "content-length",
            "user-agent",
            "accept",
            "accept-encoding",
            "accept-language",
            "cache-control",
            "cookie",
            "set-cookie",
            "etag",
            "last-modified",
            "vary",
            "location",
            "referer",
            "origin",
            "authorization",
            "content-encoding",
            "expires",
            "age",
            "if-none-match",
            "if-modified-since",
            "strict-transport-security",
            "access-control-allow-origin",
            "sec-fetch-mode",
            "accept-ranges",
            "via",
            "priority",
        ] {
            let name = HeaderName::from_static(common);
            assert!(!filter.may_hold(&name), "{common}");
        }
    }

    #[test]
    fn names_sharing_a_listed_signature_are_still_compared() {
        // Same length, first, middle and last byte as `trailer`: let through
        // by the filter, and kept because it is not hop-by-hop.
        let lookalike = "txxixxr";
        assert_eq!(
            NameFilter::signature(lookalike.as_bytes()),
            NameFilter::signature(b"trailer")
        );
        let headers = map(&[("txxixxr", "1"), ("trailer", "x"), ("host", "a")]);
        let names = hop_by_hop_names(&headers, false);
        assert_eq!(names.as_slice(), &[TRAILER]);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret, host, X-Forwarded-For"),
            ("x-forwarded-for", "192.0.2.7"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("host", "a"),
            ("x-kept", "1"),
        ]);
        let mut names: Vec<String> = hop_by_hop_names(&h, false)
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names,
            vec!["connection", "keep-alive", "te", "upgrade", "x-secret"]
        );
    }

    #[test]
    fn a_keep_alive_connection_field_skips_only_itself() {
        // The lone `keep-alive` value, in any case: the names are the ones
        // the full parse would give.
        let h = map(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        assert_eq!(
            hop_by_hop_names(&h, false).as_slice(),
            &[CONNECTION, HeaderName::from_static("keep-alive")]
        );
        // A second `Connection` field is still read.
        let h = map(&[
            ("connection", "keep-alive"),
            ("connection", "X-Secret"),
            ("x-secret", "1"),
        ]);
        assert_eq!(
            hop_by_hop_names(&h, false).as_slice(),
            &[CONNECTION, HeaderName::from_static("x-secret")]
        );
    }

    #[test]
    fn also_names_are_listed_only_when_present() {
        let h = map(&[
            ("connection", "close, X-Gone"),
            ("x-gone", "1"),
            ("forwarded", "for=192.0.2.1"),
            ("x-kept", "1"),
        ]);
        let mut names: Vec<String> =
            hop_by_hop_names_and(&h, false, &[&http::header::FORWARDED, &X_REAL_IP])
                .iter()
                .map(|n| n.to_string())
                .collect();
        names.sort();
        assert_eq!(names, vec!["connection", "forwarded", "x-gone"]);
    }

    #[test]
    fn websocket_upgrades_keep_upgrade_and_others_do_not_count() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_websocket_upgrade(&h));
        let names = hop_by_hop_names(&h, true);
        assert!(!names.contains(&UPGRADE));
        for pairs in [
            &[("connection", "Upgrade"), ("upgrade", "h2c")][..],
            &[("upgrade", "websocket")],
            &[("connection", "upgrade"), ("upgrade", "websocket, h2c")],
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
            ],
        ] {
            assert!(!is_websocket_upgrade(&map(pairs)), "{pairs:?}");
        }
    }

    #[test]
    fn ip_values_read_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::17",
        ] {
            let parsed: std::net::IpAddr = ip.parse().expect("ip");
            assert_eq!(
                ip_value(parsed).to_str().expect("ascii"),
                parsed.to_string()
            );
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        assert_eq!(
            forwarded_for(&h, "127.0.0.1"),
            "1.1.1.1, 2.2.2.2, 127.0.0.1"
        );
        assert_eq!(forwarded_for(&HeaderMap::new(), "::1"), "::1");
    }

    #[test]
    fn host_is_normalised() {
        let uri: http::Uri = "/x".parse().expect("uri");
        let h = map(&[("host", "Shop.Example.COM.:8080")]);
        assert_eq!(request_host(&uri, &h), "shop.example.com");
        let h = map(&[("host", "[::1]:8080")]);
        assert_eq!(request_host(&uri, &h), "[::1]");
        let abs: http::Uri = "http://Other.org/x".parse().expect("uri");
        assert_eq!(request_host(&abs, &h), "other.org");
    }
}
