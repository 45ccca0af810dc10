//! [`SentinelSet`]: a real Redis master, two replicas and three sentinels on free loopback ports,
//! for the failover tests. Test builds only.
//!
//! The sentinels watch the master as [`MASTER_NAME`] with quorum 2,
//! `down-after-milliseconds` [`DOWN_AFTER_MS`] and a short `failover-timeout`; [`SentinelSet::start`]
//! returns only once every sentinel knows both replicas (`SENTINEL replicas`) and the two other
//! sentinels (`SENTINEL sentinels`), so that a fault injected next is one Sentinel can act on.
//! Faults: `kill -9` the master, `SIGSTOP` and `SIGCONT` it; then [`SentinelSet::wait_failover`]
//! until every sentinel names a new master that says `master` (`ROLE`); and
//! [`SentinelSet::restart`] a killed server as a replica, for the next failover (the benchmark's
//! repeated failovers).
//!
//! [`SentinelSet::start_tls`] is the same set on TLS only (`port 0`, `tls-port`,
//! `tls-replication yes`, `tls-auth-clients no`): every server and sentinel presents one
//! certificate for `127.0.0.1` and `localhost`, signed by a test CA made with rcgen
//! ([`SentinelSet::ca_file`]; [`SentinelSet::other_ca_file`] is a CA that signed nothing).
//!
//! The servers keep nothing on disk. Every process is killed when the set is dropped. Without
//! `redis-server` it panics: the tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{free_port, program};

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "gate-master";
/// Sentinel's `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// One process: a Redis server or a sentinel, with what it was started with (for a restart).
struct Proc {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: PathBuf,
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
    tls: Option<Tls>,
}

/// The TLS variant's files and the CA's PEM (for the set's own connections).
struct Tls {
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_pem: Vec<u8>,
}

impl Tls {
    /// A test CA, a certificate it signs for 127.0.0.1 and localhost, and another CA, in `dir`.
    fn make(dir: &Path) -> Tls {
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap_or_else(|e| panic!("{e}"));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("faspex-gate Redis test CA");
        let (other, _) = ca("faspex-gate another test CA");
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .and_then(|p| p.signed_by(&key, &ca_cert, &ca_key))
            .unwrap_or_else(|e| panic!("{e}"));
        let tls = Tls {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            cert_file: dir.join("redis.pem"),
            key_file: dir.join("redis.key"),
            ca_pem: ca_cert.pem().into_bytes(),
        };
        for (path, pem) in [
            (&tls.ca_file, ca_cert.pem()),
            (&tls.other_ca_file, other.pem()),
            (&tls.cert_file, cert.pem()),
            (&tls.key_file, key.serialize_pem()),
        ] {
            std::fs::write(path, pem).unwrap_or_else(|e| panic!("{e}"));
        }
        tls
    }

    /// `redis-server`'s settings for TLS only, as `(name, value)`.
    fn settings(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("port", "0".into()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.cert_file.display().to_string()),
            ("tls-key-file", self.key_file.display().to_string()),
            ("tls-ca-cert-file", self.ca_file.display().to_string()),
            ("tls-auth-clients", "no".into()),
            ("tls-replication", "yes".into()),
        ]
    }
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
        Self::start_with(false)
    }

    /// [`SentinelSet::start`] with every server and sentinel on TLS only.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary folder: {e}"));
        let tls = tls.then(|| Tls::make(dir.path()));
        let mut set = Self {
            dir,
            servers: Vec::new(),
            sentinels: Vec::new(),
            tls,
        };
        let master = free_port();
        for i in 0..3 {
            let port = if i == 0 { master } else { free_port() };
            let data = set.dir.path().join(format!("redis-{i}"));
            std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
            let mut args: Vec<String> = match &set.tls {
                Some(tls) => tls
                    .settings(port)
                    .into_iter()
                    .flat_map(|(k, v)| [format!("--{k}"), v])
                    .collect(),
                None => vec!["--port".into(), port.to_string()],
            };
            args.extend(
                [
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
                .map(|s| s.to_string()),
            );
            args.push(data.display().to_string());
            args.push("--logfile".into());
            args.push(data.join("redis.log").display().to_string());
            if i > 0 {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            }
            let log = data.join("stderr");
            let child = spawn(&args, &log);
            set.servers.push(Proc {
                child: Some(child),
                port,
                args,
                log,
            });
        }
        for s in &set.servers {
            set.wait_answers(s.port);
        }
        set.wait_replicas_online(master);
        for i in 0..3 {
            let port = free_port();
            let conf = set.dir.path().join(format!("sentinel-{i}.conf"));
            let log = set.dir.path().join(format!("sentinel-{i}.log"));
            let listen: String = match &set.tls {
                Some(tls) => tls
                    .settings(port)
                    .into_iter()
                    .map(|(k, v)| format!("{k} {v}\n"))
                    .collect(),
                None => format!("port {port}\n"),
            };
            let text = format!(
                "{listen}bind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = set.dir.path().display(),
                log = log.display(),
            );
            std::fs::write(&conf, text).unwrap_or_else(|e| panic!("{e}"));
            let args = vec![conf.display().to_string(), "--sentinel".into()];
            let log = set.dir.path().join(format!("sentinel-{i}.stderr"));
            let child = spawn(&args, &log);
            set.sentinels.push(Proc {
                child: Some(child),
                port,
                args,
                log,
            });
        }
        set.wait_sentinels_know_all();
        set
    }

    /// Wait (30 s at most) until the redis-server on `port` answers `PING`.
    fn wait_answers(&self, port: u16) {
        assert!(
            until(Duration::from_secs(30), || {
                self.query::<String>(port, &redis::cmd("PING")).is_ok()
            }),
            "redis-server on {port} did not start"
        );
    }

    /// Wait (60 s at most) until the master on `master` has both replicas online.
    fn wait_replicas_online(&self, master: u16) {
        assert!(
            until(Duration::from_secs(60), || {
                self.query::<String>(master, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|i| i.matches("state=online").count() == 2)
            }),
            "the replicas did not sync with the master on {master}"
        );
    }

    /// Wait (60 s at most) until every sentinel knows both replicas and the other sentinels.
    fn wait_sentinels_know_all(&self) {
        let ports: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        assert!(
            until(Duration::from_secs(60), || {
                ports.iter().all(|p| self.sentinel_knows(*p, 2, 2))
            }),
            "the sentinels did not come to know both replicas and each other"
        );
    }

    /// A synchronous connection to a local port (TLS trusting the test CA in the TLS variant),
    /// short time-outs.
    fn connect(&self, port: u16) -> redis::RedisResult<redis::Connection> {
        let client = match &self.tls {
            Some(tls) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.clone()),
                },
            )?,
            None => redis::Client::open(format!("redis://127.0.0.1:{port}"))?,
        };
        let c = client.get_connection_with_timeout(Duration::from_millis(500))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(c)
    }

    fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        cmd.query(&mut self.connect(port)?)
    }

    /// The test CA that signed every certificate of the TLS variant (`None` without TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// A CA that signed none of them (`None` without TLS).
    pub fn other_ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.other_ca_file.as_path())
    }

    /// The sentinels as `store.redis.sentinels` writes them: `127.0.0.1:port`, or
    /// `rediss://127.0.0.1:port` in the TLS variant.
    pub fn sentinel_entries(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss://" } else { "" };
        self.sentinel_addrs()
            .into_iter()
            .map(|a| format!("{scheme}{a}"))
            .collect()
    }

    /// Whether the sentinel on `port` knows `replicas` healthy replicas and `others` sentinels.
    fn sentinel_knows(&self, port: u16, replicas: usize, others: usize) -> bool {
        let healthy = |flat: &Vec<String>| {
            field(flat, "flags").is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
        };
        let r: Vec<Vec<String>> = match self.query(
            port,
            redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME),
        ) {
            Ok(r) => r,
            Err(_) => return false,
        };
        let s: Vec<Vec<String>> = match self.query(
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
            let named: redis::RedisResult<Option<(String, u16)>> = self.query(
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

    /// Start the killed server on `port` again, empty, as a replica of the current master, and
    /// wait until that master has two replicas in sync and every sentinel knows both (and the
    /// two other sentinels): the set can fail over again.
    pub fn restart(&mut self, port: u16) {
        let master = self.master_port();
        let server = self.server(port);
        assert!(server.child.is_none(), "the server on {port} is running");
        let mut args: Vec<String> = Vec::new();
        let mut it = server.args.iter();
        while let Some(a) = it.next() {
            if a == "--replicaof" {
                it.next();
                it.next();
            } else {
                args.push(a.clone());
            }
        }
        args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        server.child = Some(spawn(&args, &server.log));
        self.wait_answers(port);
        self.wait_replicas_online(master);
        self.wait_sentinels_know_all();
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
                    self.query::<Option<(String, u16)>>(
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
            self.role(first).is_some_and(|r| r == "master")
        });
        assert!(done, "no failover from {old} within {within:?}");
        (new, began.elapsed())
    }

    /// What `ROLE` says the server on `port` is, if it answers.
    pub fn role(&self, port: u16) -> Option<String> {
        let reply: Vec<redis::Value> = self.query(port, &redis::cmd("ROLE")).ok()?;
        reply
            .first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    }

    /// How many times `command` reached the server on `port`, from `INFO commandstats`: run,
    /// rejected or failed (0 when never sent).
    pub fn calls(&self, port: u16, command: &str) -> u64 {
        let info: String = self
            .query(port, redis::cmd("INFO").arg("commandstats"))
            .unwrap_or_else(|e| panic!("INFO commandstats on {port}: {e}"));
        // `calls` counts what ran; `rejected_calls` (READONLY, NOREPLICAS, …) and `failed_calls`
        // what reached the server and was refused: all three are a client writing to it.
        let prefix = format!("cmdstat_{command}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|fields| {
                fields
                    .split(',')
                    .filter_map(|f| f.split_once('='))
                    .filter(|(k, _)| matches!(*k, "calls" | "rejected_calls" | "failed_calls"))
                    .filter_map(|(_, v)| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A synchronous connection to `port` (for looking at a server's keys directly).
    pub fn connection(&self, port: u16) -> redis::Connection {
        self.connect(port)
            .unwrap_or_else(|e| panic!("connecting to {port}: {e}"))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for p in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            p.kill();
        }
    }
}
