//! Access logs: one JSON line per request, written by a thread of its own
//! so the request path never waits on a disk or a pipe. When the writer
//! falls behind by more than [`QUEUE`] lines, lines are dropped and
//! counted (`switchyard_access_log_dropped_total`) rather than slowing
//! traffic down.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: metrics::Counter,
}

impl AccessLog {
    /// Lines to standard output.
    pub fn stdout() -> AccessLog {
        Self::start(Box::new(std::io::stdout()))
    }

    /// Lines appended to `path` (created if missing).
    pub fn file(path: &Path) -> std::io::Result<AccessLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::start(Box::new(file)))
    }

    fn start(out: Box<dyn Write + Send>) -> AccessLog {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&rx, out))
            .map_err(|e| tracing::error!(error = %e, "cannot start the access log writer"))
            .ok();
        AccessLog {
            tx,
            dropped: metrics::counter!("switchyard_access_log_dropped_total"),
        }
    }

    /// Queues one line (without its newline).
    pub fn log(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.increment(1);
        }
    }
}

fn write_lines(rx: &Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let mut ok = writeln!(out, "{line}").is_ok();
        // Batch what is already queued, then flush once.
        while let Ok(line) = rx.try_recv() {
            ok &= writeln!(out, "{line}").is_ok();
        }
        if !(ok && out.flush().is_ok()) {
            tracing::warn!("cannot write the access log");
        }
    }
}

/// Escapes `s` as the inside of a JSON string.
pub fn json_escape(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut s = String::new();
        json_escape(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, "a\\\"b\\\\c\\nd\\u0001");
    }
}
