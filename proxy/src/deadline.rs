//! A total deadline for each HTTP/1 request head, so a client that trickles
//! its head (one byte every few seconds) is cut off instead of holding a
//! connection forever: the framework only times out single reads.
//!
//! [`HeadDeadline`] wraps the proxy application and each HTTP/1 client
//! connection in a [`DeadlineStream`]. The clock starts when the
//! connection is accepted, and for later requests on a keep-alive
//! connection when the first byte of the next head arrives (the idle wait
//! in between is the keep-alive timeout's business). It stops at the blank
//! line that ends the head; bodies are not timed by it. After a
//! `101 Switching Protocols` answer the connection is a tunnel and is never
//! timed again. HTTP/2 connections are left alone.

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
use tokio::time::Sleep;

use crate::SharedSnapshot;

/// Wraps a server application so its HTTP/1 connections get head deadlines.
///
/// With `proxy_protocol`, a plain connection must first bring a PROXY
/// header (TLS connections bring theirs before the handshake, read by
/// [`crate::proxy_protocol::BeforeTls`]).
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    snapshot: SharedSnapshot,
    proxy_protocol: bool,
    connections: Arc<crate::ratelimit::ConnectionCounts>,
    refused: metrics::Counter,
}

impl<A> HeadDeadline<A> {
    /// `inner` with the deadline of `http.header_timeout` in the serving
    /// snapshot (read per connection, so a reload applies to new ones).
    pub fn new(inner: A, snapshot: SharedSnapshot, proxy_protocol: bool) -> Self {
        HeadDeadline {
            inner: Arc::new(inner),
            snapshot,
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
        let fresh = !stream.as_any().is::<DeadlineStream>();
        let snapshot = self.snapshot.load();
        let limit = snapshot.http.header_timeout;
        let mut stream = stream;
        if fresh && self.proxy_protocol && stream.get_ssl().is_none() {
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
        if let (true, Some(max)) = (fresh, snapshot.http.max_connections_per_client) {
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
        let wrap = fresh && stream.selected_alpn_proto() != Some(ALPN::H2);
        let stream: Stream = if wrap {
            // The count travels with the connection across its requests.
            Box::new(DeadlineStream::new(stream, limit, guard.take()))
        } else {
            stream
        };
        // An HTTP/2 connection is served whole by this call.
        let reused = self.inner.process_new(stream, shutdown).await;
        drop(guard);
        reused
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading a head; the clock runs when `deadline` is set.
    Head {
        /// The last bytes read, to find a blank line split across reads.
        tail: [u8; 3],
        tail_len: usize,
    },
    /// Head done: a body, or waiting for the answer.
    Body,
    /// After `101 Switching Protocols`: bytes, never timed.
    Tunnel,
}

/// A client connection whose request heads must arrive in time.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
    _counted: Option<crate::ratelimit::ConnectionGuard>,
}

impl DeadlineStream {
    fn new(
        inner: Stream,
        limit: Duration,
        counted: Option<crate::ratelimit::ConnectionGuard>,
    ) -> Self {
        DeadlineStream {
            inner,
            limit,
            phase: Phase::Head {
                tail: [0; 3],
                tail_len: 0,
            },
            // The first head is timed from the accept.
            timer: Some(Box::pin(tokio::time::sleep(limit))),
            _counted: counted,
        }
    }

    /// Notes `new` bytes of a head; whether the head ended in them.
    fn head_ends(tail: &mut [u8; 3], tail_len: &mut usize, new: &[u8]) -> bool {
        let mut window = [0u8; 4];
        let mut filled = *tail_len;
        window[..filled].copy_from_slice(&tail[..filled]);
        for &b in new {
            if filled == 4 {
                window.copy_within(1.., 0);
                filled = 3;
            }
            window[filled] = b;
            filled += 1;
            if filled == 4 && &window == b"\r\n\r\n" {
                return true;
            }
        }
        let keep = filled.min(3);
        tail[..keep].copy_from_slice(&window[filled - keep..filled]);
        *tail_len = keep;
        false
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request head not received within http.header_timeout",
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
                if this.timer.is_none() {
                    // The first byte of a keep-alive connection's next head.
                    this.timer = Some(Box::pin(tokio::time::sleep(this.limit)));
                }
                if let Phase::Head { tail, tail_len } = &mut this.phase {
                    if Self::head_ends(tail, tail_len, new) {
                        this.phase = Phase::Body;
                        this.timer = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                if this.timer.as_ref().is_some_and(|t| t.is_elapsed()) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match &mut this.timer {
                Some(timer) => match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out())),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
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
    /// A response head going out ends the request: the next bytes read
    /// start the next head (or a tunnel, after 101).
    fn note_write(&mut self, data: &[u8]) {
        if !matches!(self.phase, Phase::Body) {
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
            Some(_) => {
                self.phase = Phase::Head {
                    tail: [0; 3],
                    tail_len: 0,
                };
                self.timer = None;
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
