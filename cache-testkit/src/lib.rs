//! Real `redis-server` processes for tests: each on a free loopback port in its own temporary
//! directory, without persistence, killed when dropped. Fault injection: stop, restart on the
//! same port, pause (`SIGSTOP`) and resume.
//!
//! ```no_run
//! let server = redis_memo_testkit::RedisServer::start().expect("redis-server");
//! let url = server.url(); // redis://127.0.0.1:<port>/
//! # drop(url);
//! ```

#![warn(missing_docs)]

mod cluster;
mod proxy;
mod tls;

pub use cluster::{ClusterNode, RedisCluster};
pub use proxy::TcpProxy;
pub use tls::TestCa;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a test server could not be started or controlled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// `redis-server` is not on the `PATH`.
    #[error(
        "`redis-server` was not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y redis-server`) \
         or run `scripts/test`, which installs it"
    )]
    NotInstalled,
    /// Spawning or signalling the process failed.
    #[error("redis-server process: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer `PING` in time.
    #[error("redis-server on port {port} did not answer within {READY_TIMEOUT:?}; its log: {log}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// The end of its log file.
        log: String,
    },
}

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: OsString,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    paused: bool,
    /// Settings beyond the defaults, passed on every (re)start.
    extra_args: Vec<String>,
    /// With TLS: its port, and the directory of its certificate files.
    tls: Option<(u16, tempfile::TempDir)>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    ///
    /// # Errors
    /// [`TestkitError::NotInstalled`] when `redis-server` is missing (the message names the
    /// fix), or when it does not start.
    pub fn start() -> Result<RedisServer, TestkitError> {
        Self::start_binary("redis-server")
    }

    /// Starts the server program `binary` (a name looked up on `PATH`, or a path), as
    /// [`RedisServer::start`] does with `redis-server`.
    ///
    /// # Errors
    /// As for [`RedisServer::start`].
    pub fn start_binary(binary: impl AsRef<OsStr>) -> Result<RedisServer, TestkitError> {
        Self::start_configured(binary.as_ref(), &[], free_port)
    }

    /// Starts `binary` with `extra_args` after the defaults, on a port `pick_port` finds free.
    fn start_configured(
        binary: &OsStr,
        extra_args: &[String],
        pick_port: fn() -> std::io::Result<u16>,
    ) -> Result<RedisServer, TestkitError> {
        let binary = binary.to_owned();
        // A port found free can be taken by another process before the server binds it.
        const ATTEMPTS: usize = 5;
        let mut attempt = 1;
        loop {
            let dir = tempfile::Builder::new()
                .prefix("redis-memo-test-")
                .tempdir()?;
            let mut server = RedisServer {
                binary: binary.clone(),
                port: pick_port()?,
                dir,
                child: None,
                paused: false,
                extra_args: extra_args.to_vec(),
                tls: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(TestkitError::NotReady { .. }) if attempt < ATTEMPTS => {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => TestkitError::NotInstalled,
                _ => TestkitError::Io(error),
            })?;
        self.child = Some(child);
        self.paused = false;
        self.wait_ready(&log)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            // Exit first: if another process took the port, ours dies on bind while the
            // other one would answer the ping.
            if let Some(child) = &mut self.child
                && child.try_wait()?.is_some()
            {
                break;
            }
            if ping(self.port) {
                if self.answering_pid() == self.child.as_ref().map(Child::id) {
                    return Ok(());
                }
                break; // Someone else's server on this port.
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        self.kill();
        Err(TestkitError::NotReady {
            port: self.port,
            log: tail,
        })
    }

    /// The process id of the server answering on this port (`INFO server`).
    fn answering_pid(&self) -> Option<u32> {
        let mut connection = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        connection
            .set_read_timeout(Some(Duration::from_secs(1)))
            .ok()?;
        connection
            .set_write_timeout(Some(Duration::from_secs(1)))
            .ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut connection)
            .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Starts a server that also accepts TLS connections, with a certificate `ca` signed
    /// (for `127.0.0.1` and `localhost`), on [`RedisServer::tls_url`]. The plain port stays
    /// open for the testkit's own checks.
    ///
    /// # Errors
    /// As for [`RedisServer::start`], and if the certificate files cannot be written.
    pub fn start_tls(ca: &TestCa) -> Result<RedisServer, TestkitError> {
        Self::start_tls_with(ca, &[])
    }

    /// [`RedisServer::start_tls`], with the server asking every TLS client for a certificate
    /// that `ca` signed (mutual TLS: see [`TestCa::client_tls`]).
    ///
    /// # Errors
    /// As for [`RedisServer::start_tls`].
    pub fn start_tls_requiring_client_certs(ca: &TestCa) -> Result<RedisServer, TestkitError> {
        Self::start_tls_with(ca, &["--tls-auth-clients".to_owned(), "yes".to_owned()])
    }

    /// [`RedisServer::start_tls`] with `extra_args` after the TLS settings.
    pub(crate) fn start_tls_with(
        ca: &TestCa,
        extra_args: &[String],
    ) -> Result<RedisServer, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("redis-memo-tls-")
            .tempdir()?;
        let files = ca.write_server_files(dir.path())?;
        let tls_port = free_port()?;
        let mut args = files.args(tls_port);
        args.extend_from_slice(extra_args);
        let mut server = Self::start_configured(OsStr::new("redis-server"), &args, free_port)?;
        server.tls = Some((tls_port, dir));
        Ok(server)
    }

    /// `rediss://127.0.0.1:<tls port>/` for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://127.0.0.1:{port}/"))
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for inspecting the server directly from a test.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    /// A blocking connection for inspecting the server directly from a test.
    ///
    /// # Panics
    /// If the server does not accept the connection.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to the test redis-server")
    }

    /// Kills the server (`SIGKILL`, as a crash would). Its data is gone.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    ///
    /// # Errors
    /// As for [`RedisServer::start`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn()
    }

    /// Freezes the server with `SIGSTOP`: connections stay open but nothing answers.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        self.signal("-STOP")?;
        self.paused = true;
        Ok(())
    }

    /// Thaws a paused server with `SIGCONT`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        self.signal("-CONT")?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: &str) -> Result<(), TestkitError> {
        let Some(child) = &self.child else {
            return Err(TestkitError::Io(std::io::Error::other(
                "the server is not running",
            )));
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(TestkitError::Io(std::io::Error::other(format!(
                "kill {signal} failed: {status}"
            ))))
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(child.id().to_string())
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a server answers `PING` on `port` (raw RESP: no client state involved).
fn ping(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_reported_with_the_fix() {
        let error = RedisServer::start_binary("/nonexistent/redis-server").unwrap_err();
        assert!(matches!(error, TestkitError::NotInstalled));
        assert!(
            error
                .to_string()
                .contains("apt-get install -y redis-server"),
            "{error}"
        );
    }

    #[test]
    fn starts_answers_restarts_and_dies_on_drop() {
        let mut server =
            RedisServer::start().expect("redis-server must be installed for the test suite");
        let port = server.port();
        assert!(ping(port));
        server.stop();
        assert!(!ping(port));
        server.restart().unwrap();
        assert!(ping(port));
        server.pause().unwrap();
        assert!(!ping(port), "a paused server must not answer");
        server.resume().unwrap();
        assert!(ping(port));
        drop(server);
        assert!(!ping(port));
    }
}
