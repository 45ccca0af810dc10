//! [`SentinelSet`]: a real Redis master, two replicas and three sentinels on free loopback ports,
//! for the failover tests. Test builds only.
//!
//! The sentinels watch the master as [`MASTER_NAME`] with quorum 2,
//! `down-after-milliseconds` [`DOWN_AFTER_MS`] and a short `failover-timeout`; [`SentinelSet::start`]
//! returns only once every sentinel knows both replicas (`SENTINEL replicas`) and the two other
//! sentinels (`SENTINEL sentinels`), so that a fault injected next is one Sentinel can act on.
//! Faults: `kill -9` the master, `SIGSTOP` and `SIGCONT` it; then [`SentinelSet::wait_failover`]
//! until every sentinel names a new master that says `master` (`ROLE`).
//!
//! The servers keep nothing on disk. Every process is killed when the set is dropped. Without
//! `redis-server` it panics: the tests fail, they never skip.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{free_port, program};

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "gate-master";
/// Sentinel's `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// One process: a Redis server or a sentinel.
struct Proc {
    child: Option<Child>,
    port: u16,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("the process on port {} is not running", self.port))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A master, two replicas and three sentinels.
pub struct SentinelSet {
    dir: tempfile::TempDir,
    servers: Vec<Proc>,
    sentinels: Vec<Proc>,
}

fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(program())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_or_else(|_| Stdio::null(), Stdio::from))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"))
}

/// A synchronous connection to a local port, short time-outs.
fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_millis(500))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(c)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    cmd.query(&mut connect(port)?)
}

/// Poll `ok` every 50 ms until it holds or `within` passed; whether it held.
fn until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A flat `key value key value ...` reply's `key`.
fn field<'a>(flat: &'a [String], key: &str) -> Option<&'a str> {
    flat.chunks(2)
        .find(|kv| kv.first().is_some_and(|k| k == key))
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

impl SentinelSet {
    /// Start the servers and the sentinels, and wait until the sentinels know each other and
    /// both replicas.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary folder: {e}"));
        let mut set = Self {
            dir,
            servers: Vec::new(),
            sentinels: Vec::new(),
        };
        let master = free_port();
        for i in 0..3 {
            let port = if i == 0 { master } else { free_port() };
            let data = set.dir.path().join(format!("redis-{i}"));
            std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push(data.display().to_string());
            args.push("--logfile".into());
            args.push(data.join("redis.log").display().to_string());
            if i > 0 {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            }
            let child = spawn(&args, &data.join("stderr"));
            set.servers.push(Proc {
                child: Some(child),
                port,
            });
        }
        for s in &set.servers {
            let port = s.port;
            assert!(
                until(Duration::from_secs(10), || {
                    query::<String>(port, &redis::cmd("PING")).is_ok()
                }),
                "redis-server on {port} did not start"
            );
        }
        assert!(
            until(Duration::from_secs(15), || {
                query::<String>(master, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|i| i.matches("state=online").count() == 2)
            }),
            "the replicas did not sync with the master"
        );
        for i in 0..3 {
            let port = free_port();
            let conf = set.dir.path().join(format!("sentinel-{i}.conf"));
            let log = set.dir.path().join(format!("sentinel-{i}.log"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = set.dir.path().display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{e}"));
            let child = spawn(
                &[conf.display().to_string(), "--sentinel".into()],
                &set.dir.path().join(format!("sentinel-{i}.stderr")),
            );
            set.sentinels.push(Proc {
                child: Some(child),
                port,
            });
        }
        let ports: Vec<u16> = set.sentinels.iter().map(|s| s.port).collect();
        assert!(
            until(Duration::from_secs(30), || {
                ports.iter().all(|p| set.sentinel_knows(*p, 2, 2))
            }),
            "the sentinels did not come to know both replicas and each other"
        );
        set
    }

    /// Whether the sentinel on `port` knows `replicas` healthy replicas and `others` sentinels.
    fn sentinel_knows(&self, port: u16, replicas: usize, others: usize) -> bool {
        let healthy = |flat: &Vec<String>| {
            field(flat, "flags").is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
        };
        let r: Vec<Vec<String>> = match query(
            port,
            redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME),
        ) {
            Ok(r) => r,
            Err(_) => return false,
        };
        let s: Vec<Vec<String>> = match query(
            port,
            redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME),
        ) {
            Ok(s) => s,
            Err(_) => return false,
        };
        r.iter().filter(|f| healthy(f)).count() >= replicas
            && s.iter().filter(|f| healthy(f)).count() >= others
    }

    /// The sentinels' addresses, `127.0.0.1:port`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> u16 {
        for s in &self.sentinels {
            let named: redis::RedisResult<Option<(String, u16)>> = query(
                s.port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME),
            );
            if let Ok(Some((_, port))) = named {
                return port;
            }
        }
        panic!("no sentinel names a master");
    }

    /// The ports of the Redis servers (master and replicas), running or not.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    fn server(&mut self, port: u16) -> &mut Proc {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server on {port}"))
    }

    /// `kill -9` the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        self.server(port).kill();
        port
    }

    fn signal(&self, port: u16, sig: &str) {
        let pid = self
            .servers
            .iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server on {port}"))
            .pid();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// `SIGSTOP` the server on `port`.
    pub fn stop(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// `SIGCONT` the server on `port`.
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    /// Wait until every sentinel names a master other than `old` and that master says `master`
    /// (`ROLE`); returns its port and how long it took.
    pub fn wait_failover(&self, old: u16, within: Duration) -> (u16, Duration) {
        let began = Instant::now();
        let mut new = 0;
        let done = until(within, || {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    query::<Option<(String, u16)>>(
                        s.port,
                        redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(MASTER_NAME),
                    )
                    .ok()
                    .flatten()
                    .map(|(_, p)| p)
                })
                .collect();
            let Some(Some(first)) = named.first().copied() else {
                return false;
            };
            if first == old || named.iter().any(|n| *n != Some(first)) {
                return false;
            }
            new = first;
            Self::role(first).is_some_and(|r| r == "master")
        });
        assert!(done, "no failover from {old} within {within:?}");
        (new, began.elapsed())
    }

    /// What `ROLE` says the server on `port` is, if it answers.
    pub fn role(port: u16) -> Option<String> {
        let reply: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).ok()?;
        reply
            .first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    }

    /// `cmdstat_<command>`'s calls from `INFO commandstats` on `port` (0 when never called).
    pub fn calls(port: u16, command: &str) -> u64 {
        let info: String = query(port, redis::cmd("INFO").arg("commandstats"))
            .unwrap_or_else(|e| panic!("INFO commandstats on {port}: {e}"));
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// A synchronous connection to `port` (for looking at a server's keys directly).
    pub fn connection(port: u16) -> redis::Connection {
        connect(port).unwrap_or_else(|e| panic!("connecting to {port}: {e}"))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for p in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            p.kill();
        }
    }
}
