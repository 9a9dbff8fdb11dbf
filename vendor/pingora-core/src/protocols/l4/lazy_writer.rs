// Switchyard: a write buffer that exists only while it holds bytes.

//! [`LazyBufWriter`] buffers small writes like tokio's `BufWriter` (same
//! rules for when to buffer, flush or write straight through), but its
//! buffer is allocated when bytes are first buffered, and can be given back
//! while empty ([`LazyBufWriter::release_if_empty`], for a connection idle
//! for a while). A connection that never writes small pieces, or has been
//! idle, holds no write buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub(crate) struct LazyBufWriter<W> {
    inner: W,
    buf: Vec<u8>,
    /// The room the buffer gets when bytes are buffered; 0 writes through.
    cap: usize,
    /// Bytes at the start of `buf` already written by an unfinished flush.
    written: usize,
}

impl<W: AsyncWrite + Unpin> LazyBufWriter<W> {
    pub(crate) fn with_capacity(cap: usize, inner: W) -> Self {
        LazyBufWriter {
            inner,
            buf: Vec::new(),
            cap,
            written: 0,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer; anything still buffered is lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// Gives the buffer back if it holds no bytes (an idle connection);
    /// the next buffered write makes it again.
    pub(crate) fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.written == 0 {
            self.buf = Vec::new();
        }
    }

    fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }

    fn push(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        self.buf.extend_from_slice(data);
    }

    fn flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ret = Ok(());
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    ret = Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    ));
                    break;
                }
                Ok(n) => self.written += n,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            }
        }
        if self.written > 0 {
            self.buf.drain(..self.written);
        }
        self.written = 0;
        Poll::Ready(ret)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LazyBufWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.len() > this.room() {
            ready!(this.flush_buf(cx))?;
        }
        if data.len() >= this.cap {
            Pin::new(&mut this.inner).poll_write(cx, data)
        } else {
            this.push(data);
            Poll::Ready(Ok(data.len()))
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.inner.is_write_vectored() {
            let total: usize = bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()));
            if total > this.room() {
                ready!(this.flush_buf(cx))?;
            }
            if total >= this.cap {
                Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
            } else {
                for b in bufs {
                    this.push(b);
                }
                Poll::Ready(Ok(total))
            }
        } else {
            while bufs.first().map(|b| b.len()) == Some(0) {
                bufs = &bufs[1..];
            }
            let Some(first) = bufs.first() else {
                return Poll::Ready(Ok(0));
            };
            let first_len = first.len();
            if first_len > this.room() {
                ready!(this.flush_buf(cx))?;
            }
            if first_len >= this.cap {
                return Pin::new(&mut this.inner).poll_write(cx, first);
            }
            this.push(first);
            let mut total = first_len;
            for b in &bufs[1..] {
                if b.len() > this.room() {
                    break;
                }
                this.push(b);
                total += b.len();
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for LazyBufWriter<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn small_writes_are_coalesced_and_the_buffer_is_released_when_empty() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut w = LazyBufWriter::with_capacity(1460, client);
        assert_eq!(w.buf.capacity(), 0);
        w.write_all(b"hello ").await.unwrap();
        w.write_all(b"world").await.unwrap();
        assert!(w.buf.capacity() >= 1460);
        w.flush().await.unwrap();
        assert!(w.buf.capacity() >= 1460);
        w.release_if_empty();
        assert_eq!(w.buf.capacity(), 0);
        let mut got = [0u8; 11];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"hello world");
        // A write at least as large as the room goes straight through.
        w.write_all(&[7u8; 2000]).await.unwrap();
        assert_eq!(w.buf.capacity(), 0);
    }
}
