// Switchyard: one read timer per upstream connection, kept across requests.

//! The read timeout of an upstream connection as one timer that lives with
//! the connection, instead of a timer registered (and a clock read) for
//! every wait on a response.
//!
//! A [`ReadWatch`] splits the timeout `t` into [`STRIKES`] periods. Its
//! timer fires once per period while reads keep waiting; a wait times out
//! when [`STRIKES`] periods in a row passed with no read completing. So a
//! timeout ends between `t` and `t + t / STRIKES` after the wait began,
//! and a connection answering quickly costs one poll of a timer that is
//! already set: no clock read, no registration.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Periods per timeout.
pub const STRIKES: u8 = 8;

/// A connection's read timer; see the module docs.
#[derive(Debug, Default)]
pub struct ReadWatch {
    timer: Option<Pin<Box<Sleep>>>,
    period: Duration,
    /// Reads completed through this watch.
    reads: u32,
    /// `reads` when the timer last fired.
    mark: u32,
    /// Periods in a row in which no read completed.
    strikes: u8,
}

/// A read waited longer than its timeout.
#[derive(Debug)]
pub struct Elapsed;

impl ReadWatch {
    /// Runs `read` (a read on the connection this watch belongs to), failing
    /// if it waits `t` with nothing read.
    pub async fn timeout<F: Future>(&mut self, t: Duration, read: F) -> Result<F::Output, Elapsed> {
        let mut read = pin!(read);
        let mut starting = true;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = read.as_mut().poll(cx) {
                self.reads = self.reads.wrapping_add(1);
                return Poll::Ready(Ok(out));
            }
            let start = std::mem::take(&mut starting);
            self.poll_silence(cx, t, start).map(Err)
        })
        .await
    }

    /// Ready when the wait has lasted its timeout.
    fn poll_silence(&mut self, cx: &mut Context<'_>, t: Duration, starting: bool) -> Poll<Elapsed> {
        let period = t / u32::from(STRIKES);
        if starting {
            // A timer that fired while the connection was not waiting (or
            // was set for another timeout) starts over from now.
            let stale = match &self.timer {
                None => true,
                Some(timer) => self.period != period || timer.is_elapsed(),
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
            // Not reached: a wait always starts with `starting`.
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
                    return Poll::Ready(Elapsed);
                }
            }
            timer.as_mut().reset(Instant::now() + self.period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_wait_times_out_between_t_and_one_period_later() {
        let mut watch = ReadWatch::default();
        let t = Duration::from_secs(8);
        let started = Instant::now();
        let r = watch.timeout(t, std::future::pending::<()>()).await;
        assert!(r.is_err());
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
            let r = watch
                .timeout(t, tokio::time::sleep(Duration::from_secs(5)))
                .await;
            assert!(r.is_ok());
        }
        // Then a wait after an idle spell longer than the timeout (the
        // timer fired while nobody waited) still gets its whole timeout.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let started = Instant::now();
        let r = watch
            .timeout(t, tokio::time::sleep(Duration::from_millis(7_900)))
            .await;
        assert!(r.is_ok(), "timed out after {:?}", started.elapsed());
        let started = Instant::now();
        assert!(watch
            .timeout(t, std::future::pending::<()>())
            .await
            .is_err());
        assert!(started.elapsed() >= t);
    }
}
