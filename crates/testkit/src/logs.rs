//! Capturing what `tracing` writes, so a test can assert that a secret never reached the logs.

use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// Everything a `tracing` subscriber wrote, kept in memory.
///
/// The capture is a [`MakeWriter`], so it can sit under any `tracing-subscriber` layer (a
/// redacting writer wrapper, say) as well as under the plain subscriber that
/// [`LogCapture::subscriber`] builds. Clones share one buffer.
///
/// Two ways to install it:
/// * [`LogCapture::set_default`] for the current thread only: use it with
///   `#[tokio::test]` (a current-thread runtime), where every task runs on the test thread.
/// * [`LogCapture::global`] installs one capture as the process's global subscriber (once;
///   later calls return the same capture). Every test in the binary writes into it, so give
///   the values you look for a unique spelling per test.
///
/// ```
/// let logs = palisade_testkit::LogCapture::new();
/// {
///     let _guard = logs.set_default();
///     tracing::warn!(user = "u-1", "token refused");
/// }
/// assert!(logs.contains("token refused"));
/// assert!(logs.contains("u-1"));
/// assert!(!logs.contains("hunter2"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide capture, installed as the global default subscriber (every level,
    /// every target, spans' fields included) the first time this is called.
    ///
    /// # Panics
    /// When another global subscriber was installed first: a test binary must pick one.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<LogCapture> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let capture = Self::new();
                tracing::subscriber::set_global_default(capture.subscriber())
                    .expect("no other global tracing subscriber in this test binary");
                capture
            })
            .clone()
    }

    /// A subscriber that writes every event at every level, with its span context and
    /// fields, into this capture (no colours, no timestamps).
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .without_time()
            .with_target(true)
            .with_writer(self.clone())
            .finish()
    }

    /// Install [`subscriber`](Self::subscriber) for the current thread until the guard drops.
    pub fn set_default(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.subscriber())
    }

    /// Everything written so far (bytes that are not UTF-8 are replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// Whether `needle` appears anywhere in what was written.
    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Forget everything written so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer [`LogCapture`] hands to a subscriber for one event.
#[derive(Debug)]
pub struct CaptureWriter {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter {
            buffer: Arc::clone(&self.buffer),
        }
    }
}
