//! A total deadline for each HTTP/1 request head, so a client that trickles
//! its head (one byte every few seconds) is cut off instead of holding a
//! connection forever: the framework only times out single reads. The same
//! wrapper closes keep-alive connections idle for `http.keepalive_timeout`.
//! Its one timer is set only when a read has to wait, and between requests
//! it is set once rather than per request (it looks every `RELEASE_AFTER`
//! whether requests still come), so a busy connection costs no clock reads
//! or timer updates per request.
//!
//! [`HeadDeadline`] wraps the proxy application and each HTTP/1 client
//! connection in a [`DeadlineStream`]. The clock starts when the
//! connection is accepted, and for later requests on a keep-alive
//! connection when the first byte of the next head arrives (the idle wait
//! in between is the keep-alive timeout's business). It stops at the blank
//! line that ends the head; bodies are not timed by it. After a
//! `101 Switching Protocols` answer the connection is a tunnel and is never
//! timed again. HTTP/2 connections are left alone.
//!
//! A connection that has waited `RELEASE_AFTER` (100 ms) for a head gives
//! back the buffers it holds while empty (TLS record buffer, write buffer),
//! by the same timer; a client sending requests back to back never waits
//! that long. The wrapper also counts HTTP/1 connections as open for the
//! shutdown, which waits for connections that may still bring a request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::SharedSnapshot;

/// Wraps a server application so its HTTP/1 connections get head deadlines.
///
/// With `proxy_protocol`, a plain connection must first bring a PROXY
/// header (TLS connections bring theirs before the handshake, read by
/// [`crate::proxy_protocol::BeforeTls`]).
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    snapshot: SharedSnapshot,
    /// Open client connections are counted here for the shutdown.
    in_flight: crate::InFlight,
    proxy_protocol: bool,
    connections: Arc<crate::ratelimit::ConnectionCounts>,
    refused: metrics::Counter,
}

impl<A> HeadDeadline<A> {
    /// `inner` with the deadline of `http.header_timeout` in the serving
    /// snapshot (read per connection, so a reload applies to new ones).
    pub fn new(
        inner: A,
        snapshot: SharedSnapshot,
        proxy_protocol: bool,
        in_flight: crate::InFlight,
    ) -> Self {
        HeadDeadline {
            inner: Arc::new(inner),
            snapshot,
            in_flight,
            proxy_protocol,
            connections: Arc::default(),
            refused: metrics::counter!("switchyard_connections_refused_total"),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Counted for the shutdown, which waits for HTTP/1 connections that
        // may still bring a request (the framework reads them for a second
        // more). HTTP/2 connections are not: the framework ends them with
        // GOAWAY, and their streams count as requests.
        let mut open = Some(self.in_flight.open_connection());
        if stream.as_any().is::<DeadlineStream>() {
            // A keep-alive connection's next request: already set up.
            return self.inner.process_new(stream, shutdown).await;
        }
        let snapshot = self.snapshot.load();
        let limit = snapshot.http.header_timeout;
        let idle = snapshot.http.keepalive_timeout;
        let mut stream = stream;
        if self.proxy_protocol && stream.get_ssl().is_none() {
            let read =
                tokio::time::timeout(limit, crate::proxy_protocol::read_header(&mut stream)).await;
            match read {
                Ok(Ok(Some(client))) => crate::proxy_protocol::set_peer(&mut *stream, client),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection closed");
                    return None;
                }
                Err(_) => return None,
            }
        }
        // One client may hold only so many connections (a balancer in
        // `trusted_proxies` speaks for many clients and is not capped).
        let mut guard = None;
        if let Some(max) = snapshot.http.max_connections_per_client {
            let peer = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            if let Some(ip) = peer {
                if !snapshot.http.trusted_proxies.iter().any(|c| c.contains(ip)) {
                    match self.connections.open(ip, max) {
                        Some(g) => guard = Some(g),
                        None => {
                            self.refused.increment(1);
                            return None;
                        }
                    }
                }
            }
        }
        drop(snapshot);
        let stream: Stream = if stream.selected_alpn_proto() != Some(ALPN::H2) {
            // The count travels with the connection across its requests.
            Box::new(DeadlineStream::new(stream, limit, idle, guard.take()))
        } else {
            open = None;
            stream
        };
        // An HTTP/2 connection is served whole by this call.
        let reused = self.inner.process_new(stream, shutdown).await;
        drop(guard);
        drop(open);
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading a head; the clock runs when the timer is set.
    Head {
        /// The last bytes read, to find a blank line split across reads.
        tail: [u8; 3],
        tail_len: usize,
        /// The request line, until it is complete and checked: the head
        /// ends at the first empty line after it.
        line: Line,
    },
    /// Head done: a body, or waiting for the answer (`answered`: its
    /// head has gone out; later writes are the answer's body).
    Body { answered: bool },
    /// After `101 Switching Protocols`: bytes, never timed.
    Tunnel,
}

/// A client connection whose request heads must arrive in time.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    /// `http.header_timeout`.
    limit: Duration,
    /// `http.keepalive_timeout`.
    idle: Duration,
    phase: Phase,
    /// When the head being read must be complete.
    deadline: Option<Instant>,
    /// One timer per connection, set only when a read has to wait.
    timer: Pin<Box<Sleep>>,
    armed: Armed,
    /// Buffers were released during this wait for a head.
    released: bool,
    /// The framework has begun reading a head ([`Peek::begin_head`]): the
    /// next one it begins is a later request's.
    started: bool,
    /// A head ended, or something was written, since the timer was last
    /// set between requests: the connection is not idle.
    busy: bool,
    _counted: Option<crate::ratelimit::ConnectionGuard>,
}

/// What the timer is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    No,
    Head,
    Idle,
    /// Releasing the connection's buffers, `RELEASE_AFTER` into a wait
    /// for a timed head.
    Release,
    /// Between requests, looking every `RELEASE_AFTER` for a connection
    /// that has gone idle: set once, not per request.
    Between,
}

/// How long a connection waits for a request head before it gives back the
/// buffers it holds while empty (the TLS record buffer and the write
/// buffer, about 5.5 KiB); they are made again when bytes come. A client
/// sending requests back to back never waits this long and pays nothing.
const RELEASE_AFTER: Duration = Duration::from_millis(100);

impl DeadlineStream {
    fn new(
        inner: Stream,
        limit: Duration,
        idle: Duration,
        counted: Option<crate::ratelimit::ConnectionGuard>,
    ) -> Self {
        let deadline = Instant::now() + limit;
        DeadlineStream {
            inner,
            limit,
            idle,
            phase: Phase::new_head(),
            // The first head is timed from the accept.
            deadline: Some(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            armed: Armed::Head,
            released: false,
            started: false,
            busy: false,
            _counted: counted,
        }
    }

    /// Notes `new` bytes of a head, after its request line; whether the
    /// head ended in them: an empty line, its line feed after a line feed
    /// or after a line feed and a carriage return (the parser takes a bare
    /// line feed for a line's end, as RFC 9112 section 2.2 allows).
    fn head_ends(tail: &mut [u8; 3], tail_len: &mut usize, new: &[u8]) -> bool {
        // The usual case: a whole head, alone in its read.
        if new.ends_with(b"\r\n\r\n") {
            return true;
        }
        // Across the boundary: the kept tail and the first bytes of `new`.
        let mut edge = [0u8; 6];
        let head = new.len().min(3);
        edge[..*tail_len].copy_from_slice(&tail[..*tail_len]);
        edge[*tail_len..*tail_len + head].copy_from_slice(&new[..head]);
        let across = &edge[..*tail_len + head];
        if across.windows(3).any(|w| w == b"\n\r\n")
            || across.windows(2).any(|w| w == b"\n\n")
            || empty_line().find(new).is_some()
            || memchr::memmem::find(new, b"\n\n").is_some()
        {
            return true;
        }
        // Keep the last three bytes seen.
        let mut last = [0u8; 6];
        let n = *tail_len + head;
        last[..n].copy_from_slice(&edge[..n]);
        let keep: &[u8] = if new.len() >= 3 {
            &new[new.len() - 3..]
        } else {
            &last[n.saturating_sub(3)..n]
        };
        tail[..keep.len()].copy_from_slice(keep);
        *tail_len = keep.len();
        false
    }
}

/// The searcher for the empty line that ends a head (its CRLF form), built
/// once: building one per search (`memmem::find`) costs more than
/// searching a short head.
fn empty_line() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\n\r\n"))
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head not received within http.header_timeout",
    )
}

fn bad_line() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed request line")
}

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 54\r\nConnection: close\r\n\r\n408 Request Timeout: the request head came too slowly\n";
const BAD_REQUEST_LINE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\n400 Bad Request: malformed request line\n";
/// Request lines longer than this are left to the target length limit.
const MAX_CHECKED_LINE: usize = 16 * 1024;

impl Phase {
    fn new_head() -> Phase {
        Phase::Head {
            tail: [0; 3],
            tail_len: 0,
            line: Line::Reading(Vec::new()),
        }
    }
}

/// Where a head's request line is.
#[derive(Debug)]
enum Line {
    /// Not complete: what of it has come (split across reads), after any
    /// blank lines before it.
    Reading(Vec<u8>),
    /// Longer than `MAX_CHECKED_LINE`: left to the target length limit,
    /// its end still to come.
    Unchecked,
    /// Complete and checked.
    Done,
}

/// What new head bytes held of the request line.
#[derive(Debug, PartialEq, Eq)]
enum LineEnd {
    /// Its end, well formed: the rest of the head starts at this offset.
    At(usize),
    /// Its end, malformed.
    Bad,
    /// Not its end.
    NotYet,
    /// It had ended before them.
    Before,
}

/// Feeds `new` head bytes to the request-line check. The whole line in
/// one read (the usual case) is checked in place; a line split across
/// reads is gathered first. Blank lines before it are skipped (RFC 9112
/// section 2.2): they do not end the head.
fn check_request_line(line: &mut Line, new: &[u8]) -> LineEnd {
    let mut at = 0;
    loop {
        let rest = &new[at..];
        let partial = match line {
            Line::Done => return LineEnd::Before,
            Line::Unchecked => {
                return match memchr::memchr(b'\n', rest) {
                    Some(end) => {
                        *line = Line::Done;
                        LineEnd::At(at + end + 1)
                    }
                    None => LineEnd::NotYet,
                };
            }
            Line::Reading(partial) => partial,
        };
        let Some(end) = memchr::memchr(b'\n', rest) else {
            partial.extend_from_slice(rest);
            if partial.len() > MAX_CHECKED_LINE {
                *line = Line::Unchecked;
            }
            return LineEnd::NotYet;
        };
        if !partial.is_empty() {
            partial.extend_from_slice(&rest[..end]);
        }
        let whole: &[u8] = if partial.is_empty() {
            &rest[..end]
        } else {
            partial
        };
        let text = whole.strip_suffix(b"\r").unwrap_or(whole);
        if text.is_empty() {
            partial.clear();
            at += end + 1;
            continue;
        }
        let ok = valid_request_line(text);
        *line = Line::Done;
        return if ok {
            LineEnd::At(at + end + 1)
        } else {
            LineEnd::Bad
        };
    }
}

/// `METHOD SP TARGET SP HTTP/1.x`: a token, a target with no spaces,
/// controls, quotes or angle brackets, and a known version. The framework
/// would percent-escape such a target and forward it; it is refused here.
fn valid_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|&b| TOKEN[usize::from(b)])
        && !target.is_empty()
        && target.iter().all(|&b| TARGET[usize::from(b)])
        && matches!(version, b"HTTP/1.1" | b"HTTP/1.0")
}

/// The bytes of a method (`tchar`, RFC 9110 5.6.2), one lookup per byte
/// (a search of the list per byte cost more than the rest of the check).
static TOKEN: [bool; 256] = byte_class(ByteClass::Token);

/// The bytes of a request target, one lookup per byte.
static TARGET: [bool; 256] = byte_class(ByteClass::Target);

enum ByteClass {
    Token,
    Target,
}

const fn byte_class(which: ByteClass) -> [bool; 256] {
    let mut class = [false; 256];
    let mut b = 0;
    while b < 256 {
        class[b] = match which {
            ByteClass::Token => is_tchar(b as u8),
            ByteClass::Target => is_target_byte(b as u8),
        };
        b += 1;
    }
    class
}

const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Visible ASCII but quotes, angle brackets, backslash, caret, backquote
/// and braces.
const fn is_target_byte(b: u8) -> bool {
    b > 0x20
        && b < 0x7f
        && !matches!(
            b,
            b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !matches!(this.phase, Phase::Head { .. }) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(this.take_head_bytes(cx, new))
            }
            // Timers are set only once the connection actually waits.
            Poll::Pending => match this.deadline {
                Some(deadline) => this.wait_for_head(cx, deadline),
                None => this.wait_between_requests(cx),
            },
            other => other,
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.note_write(data);
        this.busy = true;
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.note_write(first);
        }
        this.busy = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl DeadlineStream {
    /// Takes `new` bytes of the head being read: checks its request line,
    /// notes whether the head ends in them, and starts its clock at its
    /// first bytes. An error refuses the head (answered on the connection).
    fn take_head_bytes(&mut self, cx: &mut Context<'_>, new: &[u8]) -> io::Result<()> {
        let Phase::Head {
            tail,
            tail_len,
            line,
        } = &mut self.phase
        else {
            return Ok(());
        };
        // The head ends at the first empty line after the request line.
        let after = match check_request_line(line, new) {
            LineEnd::Bad => {
                self.refuse(cx, BAD_REQUEST_LINE);
                return Err(bad_line());
            }
            LineEnd::NotYet => None,
            LineEnd::Before => Some(new),
            LineEnd::At(at) => {
                // The line's own line feed starts the empty line's search.
                tail[0] = b'\n';
                *tail_len = 1;
                Some(&new[at..])
            }
        };
        if after.is_some_and(|rest| Self::head_ends(tail, tail_len, rest)) {
            // The usual case: a whole head in one read; no clock read.
            self.phase = Phase::Body { answered: false };
            self.deadline = None;
            self.released = false;
            self.busy = true;
            if self.armed != Armed::Between {
                self.armed = Armed::No;
            }
            return Ok(());
        }
        match self.deadline {
            // The first bytes of a keep-alive connection's next head.
            None => {
                self.deadline = Some(Instant::now() + self.limit);
                self.armed = Armed::No;
            }
            Some(d) if Instant::now() >= d => {
                self.refuse(cx, REQUEST_TIMEOUT);
                return Err(timed_out());
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Waits for the rest of a head that must be complete by `deadline`
    /// (the first one on a connection, or one that came in pieces): the
    /// buffers are released `RELEASE_AFTER` into the wait, then the
    /// timer is set to the deadline itself.
    fn wait_for_head(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<io::Result<()>> {
        if !self.released {
            if self.armed != Armed::Release {
                self.timer
                    .as_mut()
                    .reset((Instant::now() + RELEASE_AFTER).min(deadline));
                self.armed = Armed::Release;
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    self.inner.release_idle_buffers();
                    self.released = true;
                }
            }
        }
        if self.armed != Armed::Head {
            self.timer.as_mut().reset(deadline);
            self.armed = Armed::Head;
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.refuse(cx, REQUEST_TIMEOUT);
                Poll::Ready(Err(timed_out()))
            }
        }
    }

    /// Waits between requests on a keep-alive connection. The timer is
    /// not set per wait (a clock read and a timer update per request):
    /// set once, it fires every `RELEASE_AFTER` while requests keep
    /// coming or answers keep going out (`busy`), and the first time it
    /// finds neither the connection has been quiet at least that long, so
    /// its buffers are released and the timer set to end it at
    /// `http.keepalive_timeout` (reached up to `RELEASE_AFTER` late), unless
    /// it was written to meanwhile.
    fn wait_between_requests(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let period = RELEASE_AFTER.min(self.idle);
        loop {
            match self.armed {
                Armed::Between => match self.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if self.busy => {
                        self.busy = false;
                        self.timer.as_mut().reset(Instant::now() + period);
                    }
                    Poll::Ready(()) => {
                        self.inner.release_idle_buffers();
                        self.released = true;
                        let left = self.idle.saturating_sub(period);
                        if left.is_zero() {
                            return Poll::Ready(Ok(()));
                        }
                        self.timer.as_mut().reset(Instant::now() + left);
                        self.armed = Armed::Idle;
                    }
                },
                Armed::Idle => match self.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Written to since: an answer still going out (the
                    // framework reads the connection meanwhile, to notice a
                    // client that leaves). Look again later.
                    Poll::Ready(()) if self.busy => {
                        self.busy = false;
                        self.timer.as_mut().reset(Instant::now() + period);
                        self.armed = Armed::Between;
                    }
                    // Idle too long between requests: end quietly, as if
                    // the client had closed.
                    Poll::Ready(()) => return Poll::Ready(Ok(())),
                },
                Armed::No | Armed::Head | Armed::Release => {
                    self.busy = false;
                    self.timer.as_mut().reset(Instant::now() + period);
                    self.armed = Armed::Between;
                }
            }
        }
    }

    /// Best effort: one write of a short refusal before the connection is
    /// dropped (a client that does not read it loses nothing it needs).
    fn refuse(&mut self, cx: &mut Context<'_>, answer: &[u8]) {
        if let Poll::Ready(Ok(_)) = Pin::new(&mut self.inner).poll_write(cx, answer) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }

    /// A `101 Switching Protocols` answer going out makes the connection a
    /// tunnel. Other answers change nothing here: the next head starts
    /// when the framework begins reading it ([`Peek::begin_head`]), since
    /// bytes read after an answer may still be its request's body, or a
    /// later request read ahead.
    fn note_write(&mut self, data: &[u8]) {
        if !matches!(self.phase, Phase::Body { answered: false }) {
            return;
        }
        let Some(status) = data
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| data.strip_prefix(b"HTTP/1.0 "))
        else {
            return;
        };
        match status.first() {
            Some(b'1') if status.starts_with(b"101") => self.phase = Phase::Tunnel,
            // 100 Continue and friends: the request is still coming.
            Some(b'1') => {}
            Some(_) => self.phase = Phase::Body { answered: true },
            None => {}
        }
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }

    fn release_idle_buffers(&mut self) {
        self.inner.release_idle_buffers();
    }

    /// The head buffer of a waiting read goes with the connection's own
    /// buffers: once it has waited `RELEASE_AFTER` (the timer that releases
    /// them wakes the read), not at every wait of a busy connection.
    fn idle_buffers_released(&self) -> bool {
        self.released
    }

    /// The framework begins a head: a later request's starts afresh (its
    /// clock from its first byte); the connection's first keeps the clock
    /// started at the accept. Bytes of it read ahead with the request
    /// before it are taken as read now: checked, and its clock started.
    fn begin_head(&mut self, buffered: &[u8]) -> io::Result<()> {
        if matches!(self.phase, Phase::Tunnel) {
            return Ok(());
        }
        if self.started {
            self.phase = Phase::new_head();
            self.deadline = None;
            if self.armed != Armed::Between {
                self.armed = Armed::No;
            }
        }
        self.started = true;
        if buffered.is_empty() {
            return Ok(());
        }
        // The refusal is written without waiting, as from a read.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.take_head_bytes(&mut cx, buffered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read waiting for a head keeps its buffer while the connection is
    /// busy and gives it back with the connection's own buffers: the
    /// wrapper says so only once it has waited `RELEASE_AFTER`.
    #[tokio::test]
    async fn head_buffers_go_back_only_after_the_release_wait() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut conn = DeadlineStream::new(
            Box::new(pingora_core::protocols::l4::stream::Stream::from(accepted)),
            Duration::from_secs(60),
            Duration::from_secs(60),
            None,
        );
        let mut buf = [0u8; 256];
        assert!(!conn.idle_buffers_released(), "nothing waited yet");
        let waits = std::future::poll_fn(|cx| {
            let mut read = tokio::io::ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut conn).poll_read(cx, &mut read).is_pending())
        })
        .await;
        assert!(waits, "no bytes came");
        assert!(!conn.idle_buffers_released(), "a wait keeps them at first");
        let late = tokio::time::timeout(RELEASE_AFTER * 3, conn.read(&mut buf)).await;
        assert!(late.is_err(), "no bytes came");
        assert!(conn.idle_buffers_released(), "released after the wait");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("send");
        let n = conn.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!conn.idle_buffers_released(), "a head came: busy again");
    }

    #[test]
    fn refusals_are_well_framed() {
        for answer in [REQUEST_TIMEOUT, BAD_REQUEST_LINE] {
            let text = std::str::from_utf8(answer).expect("text");
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.parse().ok())
                .expect("length");
            assert_eq!(len, body.len(), "{head}");
        }
    }

    #[test]
    fn request_lines_across_reads() {
        let mut line = Line::Reading(Vec::new());
        assert_eq!(
            check_request_line(&mut line, b"\r\nGET /a"),
            LineEnd::NotYet
        );
        assert_eq!(
            check_request_line(&mut line, b"bc HTTP/1.1\r\nHost: a\r\n"),
            LineEnd::At(13)
        );
        assert_eq!(check_request_line(&mut line, b"\r\n"), LineEnd::Before);
        let mut line = Line::Reading(Vec::new());
        assert_eq!(check_request_line(&mut line, b"GET /a"), LineEnd::NotYet);
        assert_eq!(
            check_request_line(&mut line, b" b HTTP/1.1\r\n"),
            LineEnd::Bad
        );
        // Blank lines first: skipped, not taken for the head's end.
        let mut line = Line::Reading(Vec::new());
        assert_eq!(
            check_request_line(&mut line, b"\r\n\r\nGET / HTTP/1.1\r\n"),
            LineEnd::At(20)
        );
        let mut line = Line::Reading(Vec::new());
        assert_eq!(check_request_line(&mut line, b"\r"), LineEnd::NotYet);
        assert_eq!(check_request_line(&mut line, b"\n\n\r\n"), LineEnd::NotYet);
        assert_eq!(
            check_request_line(&mut line, b"GET /\"x HTTP/1.1\n"),
            LineEnd::Bad
        );
        // Too long to check: its end is still found.
        let mut line = Line::Reading(Vec::new());
        let long = vec![b'a'; MAX_CHECKED_LINE + 1];
        assert_eq!(check_request_line(&mut line, &long), LineEnd::NotYet);
        assert_eq!(
            check_request_line(&mut line, b"a HTTP/1.1\r\nH"),
            LineEnd::At(12)
        );
    }

    /// The byte tables say what the lists they were built from say.
    #[test]
    fn byte_tables_are_the_lists() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            let target = b > 0x20 && b < 0x7f && !b"\"<>\\^`{|}".contains(&b);
            assert_eq!(TOKEN[usize::from(b)], tchar, "{b:#04x}");
            assert_eq!(TARGET[usize::from(b)], target, "{b:#04x}");
        }
    }

    #[test]
    fn request_lines() {
        assert!(valid_request_line(b"GET / HTTP/1.1"));
        assert!(valid_request_line(b"POST /a?b=c%20d HTTP/1.0"));
        assert!(valid_request_line(b"OPTIONS * HTTP/1.1"));
        assert!(valid_request_line(b"GET http://a.test/x HTTP/1.1"));
        for bad in [
            &b"GET /a b HTTP/1.1"[..],
            b"GET /a\x01 HTTP/1.1",
            b"GE(T / HTTP/1.1",
            b"GET / HTTP/1.01",
            b"GET / HTTP/2.0",
            b"GET /\"x\" HTTP/1.1",
            b"GET  / HTTP/1.1",
            b"GET /",
        ] {
            assert!(!valid_request_line(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn finds_the_blank_line_across_reads() {
        let mut tail = [0u8; 3];
        let mut len = 0;
        assert!(!DeadlineStream::head_ends(
            &mut tail,
            &mut len,
            b"GET / HTTP/1.1\r\nHost: a\r"
        ));
        assert!(!DeadlineStream::head_ends(&mut tail, &mut len, b"\n"));
        assert!(!DeadlineStream::head_ends(&mut tail, &mut len, b"\r"));
        assert!(DeadlineStream::head_ends(&mut tail, &mut len, b"\nbody"));
        let (mut tail, mut len) = ([0u8; 3], 0);
        assert!(DeadlineStream::head_ends(
            &mut tail,
            &mut len,
            b"GET / HTTP/1.1\r\n\r\n"
        ));
        let (mut tail, mut len) = ([0u8; 3], 0);
        for b in b"GET / HTTP/1.1\r\nA: b\r\n" {
            assert!(!DeadlineStream::head_ends(&mut tail, &mut len, &[*b]));
        }
        assert!(!DeadlineStream::head_ends(&mut tail, &mut len, b"\r"));
        assert!(DeadlineStream::head_ends(&mut tail, &mut len, b"\n"));
        // Bare line feeds, in one read and across reads.
        let (mut tail, mut len) = ([0u8; 3], 0);
        assert!(DeadlineStream::head_ends(
            &mut tail,
            &mut len,
            b"Host: a\n\n"
        ));
        let (mut tail, mut len) = ([b'\n', 0, 0], 1);
        assert!(!DeadlineStream::head_ends(
            &mut tail,
            &mut len,
            b"Host: a\n"
        ));
        assert!(DeadlineStream::head_ends(&mut tail, &mut len, b"\nbody"));
        // Right after the request line's own line feed.
        let (mut tail, mut len) = ([b'\n', 0, 0], 1);
        assert!(DeadlineStream::head_ends(&mut tail, &mut len, b"\r\n"));
    }
}
