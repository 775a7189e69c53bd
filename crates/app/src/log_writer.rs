//! The log's writer: lines handed over by the requests, written by a thread
//! of its own in batches.
//!
//! A request formats its line and appends it to a shared buffer, under a
//! lock held only for the copy; that is all the request pays. The writer's
//! thread sleeps until a first line is waiting, lets [`BATCH_WINDOW`] pass,
//! takes everything that waits in one swap of buffers, and writes it to
//! the output in one call. So a line reaches the output at most that much
//! later, a busy second costs some two hundred writes rather than one per
//! line, and no request ever wakes a thread or waits on the output.
//!
//! When the output takes lines slower than they come, so that `limit` lines
//! wait, new lines are dropped, never waited for, and counted
//! ([`LogWriter::dropped_lines`]). Dropping the [`LogGuard`] writes what
//! waits and ends the thread.
//!
//! The log's library has a non-blocking writer of its own, but it hands
//! each line over a channel, and its thread wakes, writes and flushes
//! line by line: under steady traffic a wake-up and a system call a line,
//! which cost the service a fifth of its CPU time with the access log on.

use std::{
    io::{self, Write},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer's thread lets lines gather after the first.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// The room a batch keeps between bursts; a larger one is given back once
/// written.
const KEPT_BYTES: usize = 64 * 1024;

/// Where the log's lines go: cheap to clone, one for every layer that
/// writes.
#[derive(Debug, Clone)]
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes what waits and stops the writer's thread when dropped.
#[derive(Debug)]
#[must_use = "dropping it at once stops the log's writer"]
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// Signalled when a first line waits, and when the guard is dropped.
    wake: Condvar,
    /// The most lines that may wait.
    limit: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiting {
    text: Vec<u8>,
    lines: usize,
    closed: bool,
}

/// A writer of lines to `out`, dropping lines once `limit` wait.
pub(crate) fn log_writer(out: impl Write + Send + 'static, limit: usize) -> (LogWriter, LogGuard) {
    let shared = Arc::new(Shared {
        waiting: Mutex::new(Waiting::default()),
        wake: Condvar::new(),
        limit: limit.max(1),
        dropped: AtomicU64::new(0),
    });
    let writer = Arc::clone(&shared);
    let thread = thread::Builder::new()
        .name("maestro-log".to_owned())
        .spawn(move || writer.write_out(out))
        .ok();
    if thread.is_none() {
        // Without its thread nothing would ever be written: say so once,
        // where a person starting the process sees it.
        eprintln!("cannot start the log's writer thread: log lines are dropped");
        shared.lock().closed = true;
    }
    (
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard { shared, thread },
    )
}

impl LogWriter {
    /// The lines dropped so far because too many waited.
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic while holding the lock leaves whole lines: keep going.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer's thread: waits for a line, lets the batch window pass,
    /// and writes everything that waits; to the end once closed.
    fn write_out(&self, mut out: impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut waiting = self.lock();
            while waiting.lines == 0 && !waiting.closed {
                waiting = self
                    .wake
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !waiting.closed {
                drop(waiting);
                thread::sleep(BATCH_WINDOW);
                waiting = self.lock();
            }
            std::mem::swap(&mut waiting.text, &mut batch);
            waiting.lines = 0;
            let closed = waiting.closed;
            drop(waiting);
            // Nobody to tell of a failed write: the lines are lost, as
            // they would be with the output gone.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            batch.shrink_to(KEPT_BYTES);
            if closed {
                return;
            }
        }
    }
}

impl Write for &LogWriter {
    /// Takes one whole line (the formatter writes each line at once).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut waiting = self.shared.lock();
        if waiting.lines >= self.shared.limit || waiting.closed {
            drop(waiting);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        waiting.text.extend_from_slice(line);
        waiting.lines += 1;
        let first = waiting.lines == 1;
        drop(waiting);
        if first {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// An output that records what reached it and how many writes it
    /// took, and tells of each write.
    #[derive(Clone)]
    struct Recorded {
        written: Arc<Mutex<(Vec<u8>, usize)>>,
        wrote: mpsc::Sender<()>,
    }

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut written = self.written.lock().unwrap();
            written.0.extend_from_slice(bytes);
            written.1 += 1;
            let _ = self.wrote.send(());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn recorded() -> (Recorded, mpsc::Receiver<()>) {
        let (wrote, writes) = mpsc::channel();
        let out = Recorded {
            written: Arc::default(),
            wrote,
        };
        (out, writes)
    }

    impl Recorded {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().0.clone()).unwrap()
        }

        fn writes(&self) -> usize {
            self.written.lock().unwrap().1
        }
    }

    #[test]
    fn lines_reach_the_output_together_without_the_guard_dropped() {
        let (out, writes) = recorded();
        let (writer, _guard) = log_writer(out.clone(), 1024);
        for n in 0..100 {
            writer
                .make_writer()
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        // Waits for the observable result, not for time to pass: the
        // thread writes the lines a moment after the first.
        while out.text().lines().count() < 100 {
            writes
                .recv_timeout(Duration::from_secs(10))
                .expect("the lines were never written");
        }
        let expected: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(out.text(), expected);
        assert!(out.writes() < 100, "{} writes for 100 lines", out.writes());
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn a_line_after_the_guard_is_dropped_is_counted_as_dropped() {
        let (out, _writes) = recorded();
        let (writer, guard) = log_writer(out.clone(), 1024);
        writer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(out.text(), "last words\n");
        writer.make_writer().write_all(b"too late\n").unwrap();
        assert_eq!(writer.dropped_lines(), 1);
    }
}
