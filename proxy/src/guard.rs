//! Requests refused before routing: framing that could smuggle a second
//! request past us or the backend, hosts that are missing or malformed,
//! and heads, targets or bodies over the configured limits. Each refusal
//! closes the connection, so nothing after a bad request is read as a
//! request.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Version};
use switchyard_config::HttpSettings;

/// Why a request is refused: status and a one-line body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// 400, 413, 414 or 431.
    pub status: u16,
    /// The body, ending in a newline.
    pub body: &'static str,
}

const fn refused(status: u16, body: &'static str) -> Refused {
    Refused { status, body }
}

/// Checks one request head. `target_len` is the length of the request
/// target as sent; `head_len` the request line and headers as received.
/// `simple_framing` is what the session noted of an HTTP/1 head's framing
/// while parsing it, when the head has no `Transfer-Encoding` and at most
/// one `Content-Length` of plain digits (`Some(None)`: none): the framing
/// checks then need no lookups. `None` looks at the headers.
pub fn check(
    version: Version,
    authority_in_target: bool,
    target_len: usize,
    headers: &HeaderMap,
    simple_framing: Option<Option<usize>>,
    limits: &HttpSettings,
) -> Result<(), Refused> {
    if target_len > limits.max_uri_bytes {
        return Err(refused(414, "414 URI Too Long\n"));
    }
    if headers.len() > limits.max_headers {
        return Err(refused(
            431,
            "431 Request Header Fields Too Large: too many headers\n",
        ));
    }
    let head: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target_len;
    if head > limits.max_header_bytes {
        return Err(refused(431, "431 Request Header Fields Too Large\n"));
    }
    let h1 = matches!(version, Version::HTTP_10 | Version::HTTP_11);
    if h1 {
        check_host(version, authority_in_target, headers)?;
    }
    let length = match simple_framing {
        // No `Transfer-Encoding`, so the framing check passes; at most one
        // `Content-Length`, of at most 19 plain digits, which
        // `content_length` reads as the same number.
        Some(length) => length.map(|n| n as u64),
        None => {
            if h1 {
                check_framing(version, headers)?;
            }
            content_length(headers)?
        }
    };
    if let Some(len) = length {
        if len > limits.max_body_bytes {
            return Err(refused(413, "413 Content Too Large\n"));
        }
    }
    Ok(())
}

fn check_host(
    version: Version,
    authority_in_target: bool,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(refused(400, "400 Bad Request: more than one Host header\n"));
    }
    match first {
        None if version == Version::HTTP_11 && !authority_in_target => Err(refused(
            400,
            "400 Bad Request: HTTP/1.1 requires a Host header\n",
        )),
        Some(v) if !valid_host(v.as_bytes()) => {
            Err(refused(400, "400 Bad Request: invalid Host header\n"))
        }
        _ => Ok(()),
    }
}

/// `host[:port]`: a registered name, IPv4, or `[IPv6]`, as RFC 3986 allows
/// (no user info, no spaces, no paths).
fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return false;
    }
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &v[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let host_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b)));
    port_ok && host_ok
}

fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), Refused> {
    let mut te = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_none() {
        return Ok(());
    }
    if version == Version::HTTP_10 {
        return Err(refused(
            400,
            "400 Bad Request: Transfer-Encoding on an HTTP/1.0 request\n",
        ));
    }
    if headers.contains_key(CONTENT_LENGTH) {
        return Err(refused(
            400,
            "400 Bad Request: both Content-Length and Transfer-Encoding\n",
        ));
    }
    // Exactly one coding, `chunked`: anything else (chunked twice, another
    // coding) is a framing a backend may read differently.
    let mut codings = te
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(refused(
            400,
            "400 Bad Request: unsupported Transfer-Encoding (only a single chunked is accepted)\n",
        )),
    }
}

/// The one valid `Content-Length`, if any; several (even equal) or a value
/// that is not plain digits is refused.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refused> {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    let bad = refused(400, "400 Bad Request: invalid Content-Length\n");
    if all.next().is_some() {
        return Err(refused(
            400,
            "400 Bad Request: more than one Content-Length\n",
        ));
    }
    let digits = first.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The framing the session noted while parsing stands for the framing
    /// headers: a length is held to the body limit as the header's is.
    #[test]
    fn noted_framing_is_checked_like_the_headers() {
        let limits = HttpSettings::default();
        let host = headers(&[("host", "a.example")]);
        let noted = |framing| {
            check(Version::HTTP_11, false, 1, &host, framing, &limits)
                .map_or_else(|r| r.status, |()| 200)
        };
        assert_eq!(noted(Some(None)), 200);
        assert_eq!(noted(Some(Some(10))), 200);
        let over = usize::try_from(limits.max_body_bytes).expect("limit") + 1;
        assert_eq!(noted(Some(Some(over))), 413);
        let with_length = headers(&[("host", "a.example"), ("content-length", &over.to_string())]);
        assert_eq!(
            check(Version::HTTP_11, false, 1, &with_length, None, &limits)
                .map_or_else(|r| r.status, |()| 200),
            413
        );
        // Still checked with noted framing: the host.
        assert_eq!(
            check(
                Version::HTTP_11,
                false,
                1,
                &headers(&[]),
                Some(None),
                &limits
            )
            .map_or_else(|r| r.status, |()| 200),
            400
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn status(v: Version, pairs: &[(&str, &str)]) -> u16 {
        check(v, false, 1, &headers(pairs), None, &HttpSettings::default())
            .map_or_else(|r| r.status, |()| 200)
    }

    #[test]
    fn framing_and_hosts() {
        let h11 = Version::HTTP_11;
        assert_eq!(status(h11, &[("host", "a.test")]), 200);
        assert_eq!(
            status(h11, &[("host", "a.test:8080"), ("content-length", "5")]),
            200
        );
        assert_eq!(status(h11, &[("host", "[::1]:80")]), 200);
        assert_eq!(status(h11, &[]), 400, "missing host");
        assert_eq!(status(Version::HTTP_10, &[]), 200, "HTTP/1.0 needs none");
        assert_eq!(status(h11, &[("host", "a.test"), ("host", "b.test")]), 400);
        for bad in ["a b", "a/b", "user@a.test", "a.test:80x", "", "[zz]"] {
            assert_eq!(status(h11, &[("host", bad)]), 400, "{bad:?}");
        }
        let te = |v: &str| status(h11, &[("host", "a"), ("transfer-encoding", v)]);
        assert_eq!(te("chunked"), 200);
        assert_eq!(te("Chunked"), 200);
        assert_eq!(te("chunked, chunked"), 400);
        assert_eq!(te("gzip, chunked"), 400);
        assert_eq!(te("identity"), 400);
        assert_eq!(
            status(
                h11,
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "3")
                ]
            ),
            400
        );
        assert_eq!(
            status(Version::HTTP_10, &[("transfer-encoding", "chunked")]),
            400
        );
        for bad in ["+5", "0x5", "-1", "5abc", "", "5, 6", " 5"] {
            assert_eq!(
                status(h11, &[("host", "a"), ("content-length", bad)]),
                400,
                "{bad:?}"
            );
        }
        assert_eq!(
            status(
                h11,
                &[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("content-length", "5")
                ]
            ),
            400
        );
    }

    #[test]
    fn limits() {
        let limits = HttpSettings {
            max_header_bytes: 2000,
            max_headers: 10,
            max_uri_bytes: 100,
            max_body_bytes: 1000,
            trusted_proxies: Vec::new(),
            rate_limit: None,
            max_connections_per_client: None,
            keepalive_timeout: std::time::Duration::from_secs(60),
            header_timeout: std::time::Duration::from_secs(10),
        };
        let ok = headers(&[("host", "a")]);
        let run = |target: usize, h: &HeaderMap| {
            check(Version::HTTP_11, false, target, h, None, &limits)
                .map_or_else(|r| r.status, |()| 200)
        };
        assert_eq!(run(100, &ok), 200);
        assert_eq!(run(101, &ok), 414);
        let many: Vec<(String, String)> = (0..11).map(|i| (format!("x-{i}"), "v".into())).collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(run(1, &headers(&pairs)), 431);
        let big = "v".repeat(3000);
        assert_eq!(run(1, &headers(&[("host", "a"), ("x-big", &big)])), 431);
        assert_eq!(
            run(1, &headers(&[("host", "a"), ("content-length", "1001")])),
            413
        );
        assert_eq!(
            run(1, &headers(&[("host", "a"), ("content-length", "1000")])),
            200
        );
    }
}
