//! What the log's tests share: lines written to memory, and what a
//! subscriber writes there.

use std::{
    io,
    sync::{Arc, Mutex},
};

use tracing_subscriber::fmt::{MakeWriter, format::Writer, time::FormatTime};

/// Lines written to memory.
#[derive(Clone, Default)]
pub(crate) struct Lines(Arc<Mutex<Vec<u8>>>);

/// What `logs` writes through the subscriber `make` builds around a
/// writer to memory.
pub(crate) fn captured<S>(make: impl FnOnce(Lines) -> S, logs: impl FnOnce()) -> String
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    let lines = Lines::default();
    tracing::subscriber::with_default(make(lines.clone()), logs);
    lines.text()
}

impl Lines {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// An instant that is always the same, so that lines compare.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fixed;

impl FormatTime for Fixed {
    fn format_time(&self, writer: &mut Writer<'_>) -> std::fmt::Result {
        writer.write_str("2026-12-02T01:11:34.783912Z")
    }
}

/// A timer that fails, as a clock that cannot be read would.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Broken;

impl FormatTime for Broken {
    fn format_time(&self, _: &mut Writer<'_>) -> std::fmt::Result {
        Err(std::fmt::Error)
    }
}
