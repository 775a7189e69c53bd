//! [`Flushing`]: the log's output, flushed a moment after it is asked to
//! rather than at once.
//!
//! The log's writer thread asks for a flush each time it has written every
//! waiting line. Under steady traffic that is after nearly every line, and
//! a write system call per line cost a sixth of the service's CPU time with
//! the access log on. Here a flush only marks the output as due: a second
//! thread flushes it [`FLUSH_DELAY`] later, with every line written
//! meanwhile. A line thus reaches the file at most that much later; the
//! buffer also writes itself out whenever it fills, and everything is
//! written when the output is dropped.

use std::{
    io::{self, BufWriter, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::Duration,
};

/// How long after a flush is asked for it is done.
pub(crate) const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// The buffer's size: lines are written out in pieces of at most this.
const BUFFER_BYTES: usize = 64 * 1024;

/// An output whose flushes are done [`FLUSH_DELAY`] after they are asked
/// for, by a thread of its own.
pub(crate) struct Flushing<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
}

struct Shared<W: Write> {
    state: Mutex<State<W>>,
    /// Signalled when a flush is asked for, and when the output is dropped.
    asked: Condvar,
}

struct State<W: Write> {
    out: BufWriter<W>,
    /// A flush was asked for and not done yet.
    due: bool,
    /// The output was dropped: the flushing thread ends.
    closed: bool,
}

impl<W: Write + Send + 'static> Flushing<W> {
    /// Buffers `out`, and starts the thread that flushes it.
    pub(crate) fn new(out: W) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: BufWriter::with_capacity(BUFFER_BYTES, out),
                due: false,
                closed: false,
            }),
            asked: Condvar::new(),
        });
        let flusher = Arc::clone(&shared);
        thread::Builder::new()
            .name("maestro-log-flush".to_owned())
            .spawn(move || flusher.run())
            // Without the thread, flushes are done at once instead.
            .map_or_else(
                |_| {
                    shared.lock().closed = true;
                },
                drop,
            );
        Self { shared }
    }
}

impl<W: Write> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic while writing leaves the buffer as it was: keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flushing thread: waits for a flush to be asked for, lets
    /// [`FLUSH_DELAY`] pass, and flushes.
    fn run(&self) {
        loop {
            let mut state = self.lock();
            while !state.due && !state.closed {
                state = self
                    .asked
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.closed {
                return;
            }
            drop(state);
            thread::sleep(FLUSH_DELAY);
            let mut state = self.lock();
            state.due = false;
            // Nobody to tell of a failure here: the next write meets it.
            let _ = state.out.flush();
        }
    }
}

impl<W: Write + Send + 'static> Write for Flushing<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.lock().out.write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.shared.lock().out.write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.shared.lock();
        if state.closed {
            return state.out.flush();
        }
        if !state.due {
            state.due = true;
            self.shared.asked.notify_one();
        }
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for Flushing<W> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        let _ = state.out.flush();
        self.shared.asked.notify_one();
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
    fn lines_flushed_one_by_one_reach_the_output_together_and_soon() {
        let (out, writes) = recorded();
        let mut writer = Flushing::new(out.clone());
        for n in 0..100 {
            writer.write_all(format!("line {n}\n").as_bytes()).unwrap();
            writer.flush().unwrap();
        }
        // Waits for the observable result, not for time to pass: the
        // flushing thread writes the lines a moment after the first flush.
        while out.text().lines().count() < 100 {
            writes
                .recv_timeout(Duration::from_secs(10))
                .expect("the lines were never flushed");
        }
        let expected: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(out.text(), expected);
        assert!(
            out.writes() < 100,
            "{} writes for 100 flushed lines",
            out.writes()
        );
    }

    #[test]
    fn everything_is_written_when_the_output_is_dropped() {
        let (out, _writes) = recorded();
        let mut writer = Flushing::new(out.clone());
        writer.write_all(b"last words\n").unwrap();
        drop(writer);
        assert_eq!(out.text(), "last words\n");
    }
}
