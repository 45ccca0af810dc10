//! [`RedisServer`]: a real `redis-server` for tests, on a free loopback port with its own
//! temporary folder, durable (`appendonly yes`, `appendfsync always`, no RDB snapshots) or
//! [volatile](RedisServer::start_volatile) (no persistence: a restart comes back empty), killed
//! when dropped. Test builds only. [`super::sentinel`] builds a master, replicas and sentinels
//! from the same pieces.
//!
//! Without `redis-server` (Debian's `redis-server`, 7.0 or later) starting one panics: the Redis
//! tests fail, they never skip. `.ci/test` installs it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    durable: bool,
}

/// `redis-server`'s path.
pub(crate) fn program() -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join("redis-server");
        if p.exists() {
            return p;
        }
    }
    panic!("`redis-server` is not installed: the Redis tests need Debian's redis-server (.ci/test installs it)");
}

/// A loopback port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Send one inline command and read what comes back (enough for PING and SHUTDOWN).
pub(crate) fn send(port: u16, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl RedisServer {
    /// Start one and wait until it answers PING.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Start one that keeps nothing on disk: a restart comes back empty.
    pub fn start_volatile() -> Self {
        Self::start_with(false)
    }

    fn start_with(durable: bool) -> Self {
        for _ in 0..5 {
            let mut s = Self {
                child: None,
                dir: tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary folder: {e}")),
                port: free_port(),
                durable,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start (another process may hold the ports tried)");
    }

    /// Start the server on this one's port and folder; whether it answered.
    fn spawn(&mut self) -> bool {
        let child = Command::new(program())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
            .args(if self.durable {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if send(self.port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("redis://127.0.0.1:{}", self.port))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder it keeps its data and log in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shut it down cleanly (its append-only file complete) and start it again on the same port
    /// and data: what a restart of the Redis host does. A volatile one comes back empty.
    pub fn restart(&mut self) {
        let _ = send(self.port, "SHUTDOWN");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        assert!(self.spawn(), "redis-server did not come back on its port");
    }

    /// Shut it down cleanly, its port and data kept for [`RedisServer::start_again`]: Redis
    /// down.
    pub fn stop(&mut self) {
        let _ = send(self.port, "SHUTDOWN");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Start it again after [`RedisServer::stop`], on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "redis-server did not come back on its port");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
