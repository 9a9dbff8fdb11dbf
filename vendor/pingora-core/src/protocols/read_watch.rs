// Switchyard: one read timer per upstream connection, kept across requests.

//! The read timeout of an upstream connection as one timer that lives with
//! the connection, instead of a timer registered (and a clock read) for
//! every wait on a response.
//!
//! The connection ([`crate::protocols::l4::stream::Stream`]) keeps a
//! [`ReadWatch`]; a read call announces its timeout with
//! [`crate::protocols::Peek::begin_read`], and the stream's `poll_read`
//! reports each poll to the watch. The timeout `t` is split into
//! [`STRIKES`] periods: the timer fires once per period while reads keep
//! waiting, and a read call times out when [`STRIKES`] periods in a row
//! passed since it began with no read completing, so between `t` and
//! `t + t / STRIKES` after it began waiting. Each read call gets the whole
//! timeout, as a timeout per call would. A read that waits costs a poll of a timer already set: no clock
//! read, no registration. The state is in the stream, so a read future
//! dropped half-way (a `select!` that took another branch) loses nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Periods per timeout.
pub const STRIKES: u8 = 8;

/// A connection's read timer; see the module docs.
#[derive(Debug, Default)]
pub struct ReadWatch {
    /// The timeout of the read call in progress; `None`: reads are untimed.
    timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    period: Duration,
    /// Reads completed on the connection.
    reads: u32,
    /// `reads` when the timer last fired.
    mark: u32,
    /// Periods in a row in which no read completed.
    strikes: u8,
    /// No read has waited since the read call began.
    starting: bool,
}

/// The error payload of a read that waited longer than its timeout.
#[derive(Debug)]
struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("read timed out")
    }
}

impl std::error::Error for Elapsed {}

/// Whether `e` is a read timing out by a [`ReadWatch`].
pub fn is_elapsed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut && e.get_ref().is_some_and(|inner| inner.is::<Elapsed>())
}

/// Whether `e` (or what caused it) is a read timing out by a [`ReadWatch`].
pub fn error_is_elapsed(e: &pingora_error::Error) -> bool {
    e.cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<io::Error>())
        .is_some_and(is_elapsed)
}

impl ReadWatch {
    /// A read call begins: its waits time out after `timeout` (`None`:
    /// untimed).
    pub fn begin(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.starting = true;
        // The count starts again: the next firing counts as progress,
        // whatever the calls before waited.
        self.strikes = 0;
        self.mark = self.reads.wrapping_sub(1);
    }

    /// Passes on the result of one poll of a read on the connection, or a
    /// timeout error when it has waited too long.
    pub fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.reads = self.reads.wrapping_add(1);
            return polled;
        }
        let Some(t) = self.timeout else {
            return Poll::Pending;
        };
        let starting = std::mem::take(&mut self.starting);
        self.poll_silence(cx, t, starting)
            .map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, Elapsed)))
    }

    /// Ready when the wait has lasted its timeout.
    fn poll_silence(&mut self, cx: &mut Context<'_>, t: Duration, starting: bool) -> Poll<()> {
        let period = t / u32::from(STRIKES);
        // A timer that fired while the connection was not waiting needs
        // nothing: its firing counts as progress (see `begin`), and it is
        // set again from now.
        if starting {
            let stale = match &self.timer {
                None => true,
                Some(_) => self.period != period,
            };
            if stale {
                self.period = period;
                self.mark = self.reads;
                self.strikes = 0;
                let deadline = Instant::now() + period;
                match self.timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(deadline),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        }
        let Some(timer) = self.timer.as_mut() else {
            // Not reached: the first wait of a read call is `starting`.
            return Poll::Pending;
        };
        loop {
            ready!(timer.as_mut().poll(cx));
            if self.reads != self.mark {
                // A read completed in the period just ended: the wait in
                // progress began in it.
                self.mark = self.reads;
                self.strikes = 0;
            } else {
                self.strikes += 1;
                if self.strikes >= STRIKES {
                    self.strikes = 0;
                    return Poll::Ready(());
                }
            }
            timer.as_mut().reset(Instant::now() + self.period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, poll_fn};
    use std::pin::pin;

    /// Polls `read` as a stream's read through `watch`.
    async fn watched<F: Future<Output = ()>>(
        watch: &mut ReadWatch,
        t: Duration,
        read: F,
    ) -> io::Result<()> {
        watch.begin(Some(t));
        let mut read = pin!(read);
        poll_fn(|cx| {
            let polled = read.as_mut().poll(cx).map(Ok);
            watch.watch(cx, polled)
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_wait_times_out_between_t_and_one_period_later() {
        let mut watch = ReadWatch::default();
        let t = Duration::from_secs(8);
        let started = Instant::now();
        let e = watched(&mut watch, t, pending())
            .await
            .expect_err("timed out");
        assert!(is_elapsed(&e), "{e:?}");
        let took = started.elapsed();
        assert!(took >= t && took <= t + t / u32::from(STRIKES), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_complete_keep_the_connection_alive() {
        let mut watch = ReadWatch::default();
        let t = Duration::from_secs(8);
        // Many reads, each waiting less than the timeout, over a span much
        // longer than it: none times out.
        for _ in 0..20 {
            let r = watched(&mut watch, t, tokio::time::sleep(Duration::from_secs(5))).await;
            assert!(r.is_ok());
        }
        // A read dropped while waiting, then an idle spell longer than the
        // timeout (the timer fired while nobody waited): the next read
        // still gets its whole timeout.
        let dropped =
            tokio::time::timeout(Duration::from_secs(3), watched(&mut watch, t, pending())).await;
        assert!(dropped.is_err());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let started = Instant::now();
        let r = watched(
            &mut watch,
            t,
            tokio::time::sleep(Duration::from_millis(7_900)),
        )
        .await;
        assert!(r.is_ok(), "timed out after {:?}", started.elapsed());
        let started = Instant::now();
        assert!(watched(&mut watch, t, pending()).await.is_err());
        assert!(started.elapsed() >= t);
        // Read calls dropped while waiting and made again (a proxy loop
        // forwarding a slow request body meanwhile): each gets the whole
        // timeout, however long the connection has been silent in all.
        for _ in 0..10 {
            let dropped =
                tokio::time::timeout(Duration::from_secs(7), watched(&mut watch, t, pending()))
                    .await;
            assert!(dropped.is_err(), "a 7 s wait of an 8 s timeout timed out");
        }
        // Untimed reads are left alone.
        watch.begin(None);
        let mut read = pin!(pending::<()>());
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            poll_fn(|cx| {
                let polled = read.as_mut().poll(cx).map(Ok);
                watch.watch(cx, polled)
            }),
        )
        .await;
        assert!(waited.is_err(), "an untimed read waits");
    }
}
