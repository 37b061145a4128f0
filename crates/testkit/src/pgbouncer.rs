//! A throwaway PgBouncer in transaction pooling mode, for tests that must work through a
//! connection pooler (where advisory locks and session state break).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ports;

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A real `pgbouncer` process on `127.0.0.1`, in `pool_mode = transaction`, in front of a
/// PostgreSQL server (default `127.0.0.1:5432`, trust authentication), in its own temporary
/// directory. Killed when dropped.
///
/// Startup parameters a pooler cannot keep per client (`options`, so a `search_path` set in
/// the URL) are ignored, as in production: tests qualify names with their schema.
///
/// When `pgbouncer` is not installed, [`PgBouncer::start`] fails with a message saying how
/// to install it (Debian/Ubuntu: `apt-get install pgbouncer`).
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Start one in front of `127.0.0.1:5432`.
    ///
    /// # Errors
    /// [`Error::Io`] when `pgbouncer` is missing or does not come up within 10 s.
    pub fn start() -> Result<Self> {
        Self::start_for("127.0.0.1", 5432)
    }

    /// Start one in front of PostgreSQL at `host:port`.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_for(host: &str, port: u16) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-pgbouncer-")
            .tempdir()?;
        let mut last = None;
        for _ in 0..5 {
            let listen = ports::free_port()?;
            match Self::spawn(&dir, host, port, listen) {
                Ok(child) => {
                    return Ok(Self {
                        port: listen,
                        child,
                        dir,
                    });
                }
                Err(e @ Error::Io(_)) if is_not_found(&e) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt was made"))
    }

    fn spawn(dir: &tempfile::TempDir, host: &str, upstream: u16, listen: u16) -> Result<Child> {
        let d = dir.path();
        std::fs::write(d.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        let config = format!(
            "[databases]\n* = host={host} port={upstream}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {users}\npool_mode = transaction\nmax_client_conn = 500\n\
             default_pool_size = 20\nignore_startup_parameters = extra_float_digits,options,search_path\n\
             logfile = {log}\npidfile = {pid}\n",
            users = d.join("userlist.txt").display(),
            log = d.join("pgbouncer.log").display(),
            pid = d.join("pgbouncer.pid").display(),
        );
        let ini = d.join("pgbouncer.ini");
        std::fs::write(&ini, config)?;
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let binary = if Path::new("/usr/sbin/pgbouncer").exists() {
            "/usr/sbin/pgbouncer"
        } else {
            "pgbouncer"
        };
        let mut command = Command::new(binary);
        // PgBouncer refuses to run as root: switch to the `postgres` user, who must be able
        // to write its log and pid files here.
        if running_as_root() {
            command.arg("--user=postgres");
            make_writable(d)?;
        }
        let mut child = command
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::io::Error::new(
                        e.kind(),
                        "`pgbouncer` was not found on PATH (Debian/Ubuntu: `apt-get install pgbouncer`)",
                    )
                } else {
                    e
                }
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(d.join("pgbouncer.log")).unwrap_or_default();
                return Err(Error::Io(std::io::Error::other(format!(
                    "pgbouncer exited ({status}):\n{log}"
                ))));
            }
            if std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Io(std::io::Error::other(
                    "pgbouncer did not listen within 10 s",
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory it runs in (its log is `pgbouncer.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
}

fn make_writable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    for entry in std::fs::read_dir(dir)? {
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o666))?;
    }
    Ok(())
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
