use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::ports;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;

/// Builds a [`RedisServer`] with a non-default binary, port or extra configuration.
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    binary: PathBuf,
    port: Option<u16>,
    args: Vec<OsString>,
    tls: bool,
}

impl Default for RedisServerBuilder {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("redis-server"),
            port: None,
            args: Vec::new(),
            tls: false,
        }
    }
}

impl RedisServerBuilder {
    /// The `redis-server` binary to run (default: `redis-server` from `PATH`).
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// Listen on this port instead of a free one picked at random.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// One configuration directive, e.g. `.config("maxmemory", "10mb")`.
    pub fn config(mut self, name: &str, value: &str) -> Self {
        self.args.push(format!("--{name}").into());
        self.args.push(value.into());
        self
    }

    /// Serve TLS only (`rediss://`), with a throwaway CA and a server certificate for
    /// `127.0.0.1` and `localhost` made by `openssl` in the server's directory. Clients
    /// from [`RedisServer::client`] and [`RedisServer::pool`] trust that CA;
    /// [`RedisServer::ca_cert_pem`] gives it to others.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// [`start`](Self::start) from async code: the blocking wait (and, with
    /// [`tls`](Self::tls), the `openssl` runs) happens on tokio's blocking pool, so a test on
    /// a current-thread runtime is not stalled.
    ///
    /// # Errors
    /// As [`start`](Self::start); [`Error::Io`] if the blocking task panicked.
    pub async fn start_async(self) -> Result<RedisServer> {
        tokio::task::spawn_blocking(move || self.start()).await?
    }

    /// Start the server and wait until it answers `PING`.
    ///
    /// # Errors
    /// [`Error::RedisServerNotFound`] when the binary is missing, [`Error::RedisStartFailed`]
    /// when it exits or stays silent for 10 s.
    pub fn start(self) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-redis-")
            .tempdir()?;
        let tls = if self.tls {
            Some(crate::tls::make_certificates(dir.path())?)
        } else {
            None
        };
        let mut server = RedisServer {
            binary: self.binary,
            args: self.args,
            port: 0,
            dir,
            child: None,
            generation: Arc::new(AtomicU64::new(0)),
            tls,
        };
        if let Some(port) = self.port {
            server.port = port;
            server.spawn_and_wait()?;
            return Ok(server);
        }
        // A random free port can be taken by another process before redis binds it: retry.
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            server.port = ports::free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e @ Error::RedisServerNotFound { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    /// Start the server on a port whose cluster bus port (`port + 10000`) is free as well.
    pub(crate) fn start_cluster_node(self) -> Result<RedisServer> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = ports::free_cluster_port()?;
            match self.clone().port(port).start() {
                Ok(server) => return Ok(server),
                Err(e @ Error::RedisServerNotFound { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt was made"))
    }
}

/// A real `redis-server` process on `127.0.0.1`, in its own temporary directory, keeping
/// nothing on disk. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    args: Vec<OsString>,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    // Bumped whenever the process is replaced, so that a delayed SIGCONT from `pause` never
    // reaches a later process (or an unrelated one that reused the pid).
    generation: Arc<AtomicU64>,
    tls: Option<crate::tls::Certificates>,
}

impl RedisServer {
    /// Start a server on a free port with the default configuration.
    ///
    /// # Errors
    /// See [`RedisServerBuilder::start`].
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// A builder for a server with another binary, port or configuration.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The TCP port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` for a [TLS](RedisServerBuilder::tls)
    /// server (whose certificate only clients that trust [`Self::ca_cert_pem`] accept).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM of the CA that signed a TLS server's certificate (`None` without TLS).
    pub fn ca_cert_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.ca_pem.as_slice())
    }

    /// The directory the server runs in (its log file is `redis.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `redis::Client` for this server (trusting the test CA for a TLS server).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url())
                .expect("a redis://127.0.0.1:PORT URL is always valid"),
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.clone()),
                },
            )
            .expect("the kit's own CA certificate is valid PEM"),
        }
    }

    /// An async multiplexed connection to this server (trusting the test CA for a TLS
    /// server): what a test uses to look at or change the keys a backend wrote.
    ///
    /// # Errors
    /// When the server cannot be reached (killed, paused past the client's timeouts).
    pub async fn async_connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(self.client().get_multiplexed_async_connection().await?)
    }

    /// A `deadpool_redis::Pool` for this server (the handle Palisade's Redis backends take),
    /// trusting the test CA for a TLS server.
    pub fn pool(&self) -> deadpool_redis::Pool {
        let manager = deadpool_redis::Manager::new(self.client().get_connection_info().clone())
            .expect("connection info from a built client is valid");
        deadpool_redis::Pool::builder(manager)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .expect("a pool with the tokio runtime always builds")
    }

    /// The operating-system process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (a paused server is alive).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the server at once (SIGKILL), as a crash would. Clients see connection errors
    /// until [`restart`](Self::restart). Killing a dead server does nothing.
    pub fn kill(&mut self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server if it runs and start a new, empty one on the same port.
    ///
    /// # Errors
    /// [`Error::RedisStartFailed`] when the port was taken meanwhile or the server stays silent.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_and_wait()
    }

    /// Freeze the process (SIGSTOP) for `duration`, then let it go on (SIGCONT) from a
    /// background thread. Connections stay open but nothing is answered: this is what a hung
    /// or overloaded Redis looks like to a client. Returns at once.
    pub fn pause(&self, duration: Duration) {
        let Some(pid) = self.pid() else { return };
        let pid = Pid::from_raw(pid as i32);
        let generation = Arc::clone(&self.generation);
        let current = generation.load(Ordering::SeqCst);
        let _ = kill(pid, Signal::SIGSTOP);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            if generation.load(Ordering::SeqCst) == current {
                let _ = kill(pid, Signal::SIGCONT);
            }
        });
    }

    /// Let a paused server go on before its pause ends.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(&self.binary);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(tls) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args(["--tls-auth-clients", "no"]),
        };
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::RedisServerNotFound {
                    binary: self.binary.clone(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.child = Some(child);
        match self.wait_until_ready() {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.kill();
                Err(Error::RedisStartFailed {
                    port: self.port,
                    reason,
                    log: tail(&log, 2048),
                })
            }
        }
    }

    fn wait_until_ready(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("the process exited ({status})"));
            }
            let answered = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            match answered {
                Ok(pong) if pong == "PONG" => return Ok(()),
                Ok(other) => return Err(format!("PING answered {other:?}")),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("no answer to PING within {START_TIMEOUT:?}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::from("(no log file)");
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}
