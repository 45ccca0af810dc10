//! faspex-gate against nginx, side by side, as `../shared/docs/bench-plan.md` describes.
//!
//! Run it with `benches/versus.sh` (it installs nginx, wrk, sqlite3 and oha when they are
//! missing, and builds in release mode), or `cargo bench --bench versus -- [--smoke] [--rounds N]
//! [--workers N] [--json FILE]` once the tools are there.
//!
//! Every peer runs as its own process on loopback, with the same ECDSA P-256 certificate and the
//! same number of request-handling workers:
//! - **D**: the client straight to the upstream, `versus upstream` (a release-built hyper server):
//!   the ceiling for small requests;
//! - **G**: faspex-gate (`target/release/faspex-gate run`), logging in against a real `slapd`;
//! - **N**: nginx as a plain `proxy_pass` over TLS, tuned for streaming;
//! - **NA**: nginx with `auth_request` to `/auth` on the upstream, which answers 204 at once;
//! - **R**: `versus relay`, a TLS-terminating byte relay: the ceiling for streams.
//!
//! Scenarios, each over `--rounds` rounds with the peers in rotated order: small authenticated
//! GETs with a session cookie and with HTTP Basic (verification-cache hits), over HTTP/1.1 and
//! HTTP/2 (wrk and h2load for saturation, each round in turns of 2 s per peer so that the peers
//! it compares ran seconds apart; oha at a fixed rate for latency, its percentiles taken after a
//! 1 s warm-up), 2 GiB downloads and uploads (curl; Content-Length and chunked; the gateway over
//! HTTP/2 as well), twenty slow readers, a password spray against fifty working users, memory
//! per session and per idle connection, full TLS handshakes, and the gap clients see when the
//! Redis master is killed under Sentinel (a set and a gateway of its own). Any non-2xx answer or
//! socket error fails the run. The hypervisor's steal time is printed beside the small GETs'
//! figures, for how much the machine's neighbours disturbed them. Results print as tables and go to a JSON file.

#[path = "versus/failover.rs"]
mod failover;
#[path = "versus/load.rs"]
mod load;
#[path = "versus/peers.rs"]
mod peers;
#[path = "../tests/slapd.rs"]
mod slapd;
#[path = "versus/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tools::{summary, Proc};

// The gateway's allocator, for this binary's peers too: `versus floor` is counted against the
// gateway (benches/instructions.sh), and jemalloc takes fewer instructions per request than
// glibc's malloc. The upstream and the relay run on it as well.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const COOKIE: &str = "__Host-faspex-gate";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
struct Opts {
    smoke: bool,
    rounds: usize,
    workers: usize,
    secs: u64,
    /// Small GETs: turns per peer per round, and the seconds of each.
    slices: usize,
    slice_secs: u64,
    /// Small GETs' latency runs, warm-up included.
    latency_secs: u64,
    /// Bytes per stream (`--stream-mib N`; 2 GiB, 32 MiB in the smoke run).
    stream: u64,
    sessions: usize,
    idle: usize,
    spray_secs: f64,
    spray_rate: f64,
    json: PathBuf,
    oha: PathBuf,
    /// Only these scenarios (`--only small,streams,spray,idle,handshakes,sessions,failover`).
    only: Option<Vec<String>>,
    /// Start the peers, print where they are, and wait (for profiling by hand).
    hold: bool,
    /// Failovers in the failover scenario (`--failovers N`; 5, 1 in the smoke run).
    failovers: usize,
    /// `--store redis`: the gateways keep their state in a `redis-server` of their own (started
    /// here) instead of the embedded store.
    redis: bool,
}

impl Opts {
    /// Run `scenario` unless `--only` leaves it out (then its result is null).
    fn scenario(&self, name: &str, run: impl FnOnce() -> Value) -> Value {
        let wanted = self
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == name));
        if wanted {
            run()
        } else {
            Value::Null
        }
    }
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let smoke = args.iter().any(|a| a == "--smoke");
        let val = |name: &str| peers::arg(args, name);
        let target = Path::new(env!("CARGO_BIN_EXE_faspex-gate"))
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("target"));
        Opts {
            smoke,
            rounds: val("--rounds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if smoke { 1 } else { 5 }),
            workers: val("--workers").and_then(|v| v.parse().ok()).unwrap_or(1),
            secs: if smoke { 1 } else { 5 },
            // Two turns (not three) per peer per round: the small GETs have four variants now.
            slices: if smoke { 1 } else { 2 },
            slice_secs: if smoke { 1 } else { 2 },
            latency_secs: if smoke { 3 } else { 10 },
            stream: val("--stream-mib")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|m| m * MIB)
                .unwrap_or(if smoke { 32 * MIB } else { 2 * GIB }),
            sessions: if smoke { 2_000 } else { 100_000 },
            idle: if smoke { 200 } else { 2_000 },
            spray_secs: if smoke { 2.0 } else { 10.0 },
            spray_rate: if smoke { 500.0 } else { 2_500.0 },
            json: val("--json")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("versus.json")),
            oha: val("--oha")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("OHA").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("oha")),
            failovers: val("--failovers")
                .and_then(|v| v.parse().ok())
                .unwrap_or(if smoke { 1 } else { 5 }),
            hold: args.iter().any(|a| a == "--hold"),
            only: val("--only").map(|v| v.split(',').map(str::to_owned).collect()),
            redis: match val("--store").as_deref() {
                None | Some("embedded") => false,
                Some("redis") => true,
                Some(other) => panic!("--store {other}: use embedded or redis"),
            },
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match args.first().map(String::as_str) {
        Some("upstream") => peers::upstream(&args[1..]),
        Some("relay") => peers::relay(&args[1..]),
        Some("floor") => peers::floor(&args[1..]),
        Some("spray") => spray_role(&args[1..]),
        _ => {
            let opts = Opts::parse(&args);
            let failures = run(&opts);
            if failures.is_empty() {
                println!("\nThe run is clean: every answer was the expected one.");
            } else {
                eprintln!("\nTHE RUN FAILED:");
                for f in &failures {
                    eprintln!("  - {f}");
                }
                std::process::exit(1);
            }
        }
    }
}

/// `versus spray --addr ADDR --cert PEM --conns N --rate R --secs S`: the attacker. Wrong
/// passwords for user100..user199 and for 100 unknown names, from N addresses in 127.2.0.0/16;
/// prints what it got back as JSON.
fn spray_role(args: &[String]) {
    let addr: SocketAddr = peers::arg(args, "--addr")
        .and_then(|a| a.parse().ok())
        .expect("--addr ADDR");
    let cert = std::fs::read(peers::arg(args, "--cert").expect("--cert PEM")).expect("cert");
    let num = |name: &str| -> f64 {
        peers::arg(args, name)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} N"))
    };
    let names: Vec<String> = (100..200)
        .map(|i| format!("user{i}"))
        .chain((0..100).map(|i| format!("nobody{i}")))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt
        .block_on(load::spray(
            &load::connector(&cert, true),
            addr,
            Arc::new(names),
            num("--conns") as usize,
            num("--rate"),
            num("--secs"),
        ))
        .expect("spray");
    println!("{}", serde_json::to_string(&report).expect("JSON"));
}

// ------------------------------------------------------------------------------------ the rig

/// Every process of the benchmark.
struct Rig {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: Vec<u8>,
    upstream: SocketAddr,
    upstream_proc: Proc,
    _slapd: slapd::Slapd,
    gateway: SocketAddr,
    gateway_admin: SocketAddr,
    gateway_proc: Proc,
    nginx: SocketAddr,
    nginx_auth: SocketAddr,
    nginx_proc: Proc,
    relay: SocketAddr,
    _relay_proc: Proc,
    /// user0's gateway session: every small GET with a cookie carries it.
    cookie: String,
    /// user60's `Authorization` value (`Basic …`): the Basic small GETs send it, with
    /// `User-Agent: versus-basic`; the rig's first such request logged the caller in.
    basic: String,
    /// The gateways' Redis (`--store redis`).
    redis: Option<faspex_gate::store::redis::server::RedisServer>,
}

/// The `[store]` lines (and `[store.redis]` table) for the gateways: embedded, or `redis`.
fn store_lines(redis: Option<&faspex_gate::store::redis::server::RedisServer>) -> String {
    match redis {
        None => String::new(),
        Some(r) => format!(
            "kind = \"redis\"\n[store.redis]\nurls = [\"{}\"]\nkey_prefix = \"bench-{}\"\n",
            r.url(),
            std::process::id()
        ),
    }
}

fn me() -> PathBuf {
    std::env::current_exe().expect("the benchmark's own path")
}

fn write_private(path: &Path, bytes: &[u8]) {
    faspex_gate::util::write_private(path, bytes).expect("write a private file");
}

/// A gateway configuration: `auth` is the `[auth…]` sections, `policy` extra `[policy]` lines.
#[allow(clippy::too_many_arguments)]
fn gateway_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    cert: &Path,
    key: &Path,
    workers: usize,
    policy: &str,
    auth: &str,
    store: &str,
) -> PathBuf {
    let state = dir.join(format!("{name}-state"));
    std::fs::create_dir_all(&state).expect("state folder");
    write_private(&dir.join(format!("{name}-secret")), &[b's'; 48]);
    write_private(
        &dir.join(format!("{name}-token")),
        b"bench-admin-token-0123456789",
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "{listen}"
workers = {workers}
max_connections = 20000
[tls]
cert_file = "{cert}"
key_file = "{key}"
[upstream]
url = "http://{upstream}"
[admin]
listen = "{admin}"
token_file = "{token}"
[session]
secret_file = "{secret}"
[policy]
{policy}
[store]
path = "{state}"
{store}
[audit]
path = "{audit}"
{auth}
"#,
            cert = cert.display(),
            key = key.display(),
            token = dir.join(format!("{name}-token")).display(),
            secret = dir.join(format!("{name}-secret")).display(),
            state = state.display(),
            audit = dir.join(format!("{name}-audit.log")).display(),
        ),
    )
    .expect("write the gateway's config");
    path
}

/// The gateway as users run it: `$FASPEX_GATE_BIN` (benches/versus.sh builds it with
/// `cargo build --release`, without the dev-dependencies' features that `cargo bench` adds), else
/// the binary cargo built next to this benchmark.
fn gateway_binary() -> PathBuf {
    std::env::var_os("FASPEX_GATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_faspex-gate")))
}

fn start_gateway(dir: &Path, name: &str, config: &Path, listen: SocketAddr) -> Proc {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut p = Proc::spawn(
        "faspex-gate",
        Command::new(gateway_binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(listen).is_err() {
        if !p.alive() || Instant::now() > until {
            panic!(
                "faspex-gate ({name}) did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

fn nginx_config(
    dir: &Path,
    workers: usize,
    n: SocketAddr,
    na: SocketAddr,
    up: SocketAddr,
    cert: &Path,
    key: &Path,
) -> PathBuf {
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp).expect("nginx temp folder");
    let proxy = r#"proxy_pass http://faspex;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;"#;
    let path = dir.join("nginx.conf");
    std::fs::write(
        &path,
        format!(
            r#"worker_processes {workers};
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 0;
    keepalive_timeout 30s;
    keepalive_requests 100000000;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream faspex {{
        server {up};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {n} ssl http2;
        location / {{
            {proxy}
        }}
    }}
    server {{
        listen {na} ssl http2;
        location / {{
            auth_request /_auth;
            {proxy}
        }}
        location = /_auth {{
            internal;
            proxy_pass http://faspex/auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
    }}
}}
"#,
            dir = dir.display(),
            tmp = tmp.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .expect("write nginx.conf");
    path
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nginx is not installed: benches/versus.sh installs it");
}

impl Rig {
    fn start(opts: &Opts, rt: &tokio::runtime::Runtime) -> Rig {
        let dir = tempfile::tempdir().expect("temporary folder");
        let d = dir.path();
        let (cert, key) = faspex_gate::tls::write_self_signed(d, &["localhost"])
            .expect("a self-signed ECDSA P-256 certificate");
        let cert_pem = std::fs::read(&cert).expect("read the certificate");

        let upstream = tools::free_addr();
        let upstream_proc = Proc::spawn(
            "upstream",
            Command::new(me())
                .args(["upstream", "--listen", &upstream.to_string(), "--threads"])
                .arg(opts.workers.to_string())
                .stdout(Stdio::null()),
        );
        tools::wait_port(upstream, "the upstream");

        // The directory: user0..user199 (password pw-userN).
        let slapd = slapd::Slapd::start_with(&slapd::bulk_people(200));

        let redis = opts
            .redis
            .then(faspex_gate::store::redis::server::RedisServer::start);
        let gateway = tools::free_addr();
        let gateway_admin = tools::free_addr();
        let config = gateway_config(
            d,
            "gateway",
            gateway,
            gateway_admin,
            upstream,
            &cert,
            &key,
            opts.workers,
            "max_sessions = 100\npublic_requests_per_ip_per_minute = 100000000",
            &format!(
                "[auth]\nbackend = \"ldap\"\nmax_checks_per_second = 50\ncache_ttl = \"2h\"\n\
                 [auth.ldap]\n\
                 urls = [\"{}\"]\nuser_dn_template = \"{}\"\n",
                slapd.url(),
                slapd::DIRECT_TEMPLATE
            ),
            &store_lines(redis.as_ref()),
        );
        let gateway_proc = start_gateway(d, "gateway", &config, gateway);

        let (nginx, nginx_auth) = (tools::free_addr(), tools::free_addr());
        let conf = nginx_config(d, opts.workers, nginx, nginx_auth, upstream, &cert, &key);
        let nginx_proc = Proc::spawn(
            "nginx",
            Command::new(nginx_binary())
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("nginx-stderr.log")).expect("log file")),
        );
        let until = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(nginx).is_err() {
            assert!(
                Instant::now() < until,
                "nginx did not start:\n{}{}",
                std::fs::read_to_string(d.join("nginx-stderr.log")).unwrap_or_default(),
                std::fs::read_to_string(d.join("nginx-error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tools::wait_port(nginx_auth, "nginx (auth_request)");

        let relay = tools::free_addr();
        let relay_proc = Proc::spawn(
            "relay",
            Command::new(me())
                .args(["relay", "--listen", &relay.to_string()])
                .args(["--upstream", &upstream.to_string()])
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .args(["--threads", &opts.workers.to_string()])
                .stdout(Stdio::null()),
        );
        tools::wait_port(relay, "the relay");

        let tls = load::connector(&cert_pem, true);
        let cookie = rt
            .block_on(async {
                let mut s = load::connect(&tls, gateway, None).await?;
                load::login(&mut s, "user0", "pw-user0", COOKIE).await
            })
            .expect("user0 logs in through the gateway");
        // The Basic caller: its first request logs it in (a directory check, then the request
        // goes to the upstream, which answers 200 as Faspex does to good credentials); every
        // later one is a verification-cache hit (`cache_ttl` above outlasts the run).
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{}:{}", BASIC_USER.0, BASIC_USER.1)
            )
        );
        rt.block_on(async {
            let mut s = load::connect(&tls, gateway, None).await?;
            let req = http::Request::get(SMALL_PATH)
                .header(http::header::HOST, "localhost")
                .header(http::header::AUTHORIZATION, &basic)
                .header(http::header::USER_AGENT, BASIC_AGENT)
                .body(http_body_util::Full::new(bytes::Bytes::new()))?;
            let (status, _, n) = load::call(&mut s, req).await?;
            anyhow::ensure!(
                status == http::StatusCode::OK && n == peers::SMALL,
                "{}'s first Basic GET got {status} with {n} bytes",
                BASIC_USER.0
            );
            anyhow::Ok(())
        })
        .expect("the Basic caller logs in through the gateway");

        Rig {
            dir,
            cert,
            key,
            cert_pem,
            upstream,
            upstream_proc,
            _slapd: slapd,
            gateway,
            gateway_admin,
            gateway_proc,
            nginx,
            nginx_auth,
            nginx_proc,
            relay,
            _relay_proc: relay_proc,
            cookie,
            basic,
            redis,
        }
    }

    fn nginx_pids(&self) -> Vec<u32> {
        tools::family(self.nginx_proc.pid())
    }

    fn stats(&self) -> BTreeMap<String, u64> {
        parse_pairs(&http_get(self.upstream, "/_stats"))
    }

    fn metrics(&self) -> String {
        http_get(self.gateway_admin, "/metrics")
    }
}

/// A plain HTTP/1.0 GET on loopback: the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn parse_pairs(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The sum of a metric's samples whose line starts with `prefix` (name and any labels).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rotated<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|i| items[(i + round) % n]).collect()
}

// ------------------------------------------------------------------------------ the scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Direct,
    Gate,
    Nginx,
    NginxAuth,
    Relay,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Gate => "faspex-gate",
            Peer::Nginx => "nginx",
            Peer::NginxAuth => "nginx+auth_request",
            Peer::Relay => "relay",
        }
    }

    fn url(self, rig: &Rig, path: &str) -> String {
        match self {
            Peer::Direct => format!("http://{}{path}", rig.upstream),
            Peer::Gate => format!("https://localhost:{}{path}", rig.gateway.port()),
            Peer::Nginx => format!("https://localhost:{}{path}", rig.nginx.port()),
            Peer::NginxAuth => format!("https://localhost:{}{path}", rig.nginx_auth.port()),
            Peer::Relay => format!("https://localhost:{}{path}", rig.relay.port()),
        }
    }

    fn pids(self, rig: &Rig) -> Vec<u32> {
        match self {
            Peer::Direct => vec![rig.upstream_proc.pid()],
            Peer::Gate => vec![rig.gateway_proc.pid()],
            Peer::Nginx | Peer::NginxAuth => rig.nginx_pids(),
            Peer::Relay => vec![rig._relay_proc.pid()],
        }
    }
}

/// A peer and the HTTP version a stream to it takes: every peer over HTTP/1.1, the gateway
/// over HTTP/2 as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Leg {
    peer: Peer,
    h2: bool,
}

impl Leg {
    fn h1(peer: Peer) -> Leg {
        Leg { peer, h2: false }
    }

    fn h2(peer: Peer) -> Leg {
        Leg { peer, h2: true }
    }

    /// The peer's name, with " h2" for HTTP/2 (the JSON's keys).
    fn name(self) -> String {
        if self.h2 {
            format!("{} h2", self.peer.name())
        } else {
            self.peer.name().to_owned()
        }
    }
}

const SMALL_PATH: &str = "/aspera/faspex/small";
const WRK_CONNS: usize = 32;
/// The Basic caller's account (user0 holds the browser session, and the spray scenario logs
/// user1..user50 in from addresses of their own: an account holds one client's seat).
const BASIC_USER: (&str, &str) = ("user60", "pw-user60");
/// The Basic caller's User-Agent: the gateway tells Basic callers apart by source address and
/// User-Agent, so every tool sends this one.
const BASIC_AGENT: &str = "versus-basic";

/// How a small GET proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Creds {
    /// The gateway's session cookie (user0's browser session).
    Cookie,
    /// HTTP Basic (user60): after the first request, every one a verification-cache hit.
    Basic,
}

/// The client's protocol, over TLS to every proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// HTTP/1.1: wrk for saturation.
    Http1,
    /// HTTP/2 by ALPN, one stream per connection: h2load for saturation, oha `--http2` for
    /// latency. The direct peer (plain HTTP/1.1) has no HTTP/2 rows.
    Http2,
}

/// One cell of the small GETs' matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    creds: Creds,
    proto: Proto,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        creds: Creds::Cookie,
        proto: Proto::Http1,
    },
    Variant {
        creds: Creds::Basic,
        proto: Proto::Http1,
    },
    Variant {
        creds: Creds::Cookie,
        proto: Proto::Http2,
    },
    Variant {
        creds: Creds::Basic,
        proto: Proto::Http2,
    },
];

impl Variant {
    /// `cookie/http1.1`, `basic/h2`, …: its key in the JSON.
    fn name(self) -> String {
        format!(
            "{}/{}",
            match self.creds {
                Creds::Cookie => "cookie",
                Creds::Basic => "basic",
            },
            match self.proto {
                Proto::Http1 => "http1.1",
                Proto::Http2 => "h2",
            }
        )
    }

    fn peers(self) -> &'static [Peer] {
        match self.proto {
            Proto::Http1 => &[Peer::Direct, Peer::Gate, Peer::Nginx, Peer::NginxAuth],
            Proto::Http2 => &[Peer::Gate, Peer::Nginx, Peer::NginxAuth],
        }
    }

    /// The request headers every tool sends (`Name: value`).
    fn headers(self, rig: &Rig) -> Vec<String> {
        match self.creds {
            Creds::Cookie => vec![format!("Cookie: {}", rig.cookie)],
            Creds::Basic => vec![
                format!("Authorization: {}", rig.basic),
                format!("User-Agent: {BASIC_AGENT}"),
            ],
        }
    }

    fn tool(self) -> &'static str {
        match self.proto {
            Proto::Http1 => "wrk",
            Proto::Http2 => "h2load",
        }
    }

    /// Saturate `url` for `secs` with `WRK_CONNS` connections.
    fn saturate(self, url: &str, secs: u64, headers: &[String]) -> tools::Wrk {
        match self.proto {
            Proto::Http1 => tools::wrk(url, WRK_CONNS, secs, headers),
            Proto::Http2 => tools::h2load(url, WRK_CONNS, secs, headers),
        }
    }

    /// The variant whose direct peer is this one's latency baseline: itself over HTTP/1.1.
    fn baseline(self) -> Variant {
        Variant {
            creds: self.creds,
            proto: Proto::Http1,
        }
    }
}

/// The directory checks the gateway has made so far (logins and Basic rechecks): a turn of
/// verification-cache hits makes none.
fn directory_checks(rig: &Rig) -> f64 {
    metric(
        &rig.metrics(),
        "faspex_gate_directory_duration_seconds_count",
    )
}

/// One variant's figures over the rounds.
#[derive(Default)]
struct Cell {
    rates: BTreeMap<Peer, Vec<f64>>,
    cpu_us: BTreeMap<Peer, Vec<f64>>,
    steal: BTreeMap<Peer, Vec<f64>>,
    ratio_n: Vec<f64>,
    ratio_na: Vec<f64>,
    cpu_ratio: Vec<f64>,
    latency_rate: f64,
    p50: BTreeMap<Peer, Vec<f64>>,
    p99: BTreeMap<Peer, Vec<f64>>,
}

/// One saturation turn of `peer` in `variant`: requests, seconds, CPU seconds, steal percent.
fn small_turn(
    rig: &Rig,
    opts: &Opts,
    variant: Variant,
    peer: Peer,
    failures: &mut Vec<String>,
) -> (u64, f64, f64, f64) {
    let what = format!("small GETs ({}) via {}", variant.name(), peer.name());
    let headers = variant.headers(rig);
    let checks0 = (peer == Peer::Gate).then(|| directory_checks(rig));
    let before = rig.stats();
    let pids = peer.pids(rig);
    let cpu0 = tools::cpu_seconds(&pids);
    let times0 = tools::CpuTimes::now();
    let w = variant.saturate(&peer.url(rig, SMALL_PATH), opts.slice_secs, &headers);
    let stolen = tools::CpuTimes::now().steal_since(&times0);
    let cpu = tools::cpu_seconds(&pids) - cpu0;
    let after = rig.stats();
    let served = after["small"] - before["small"];
    if w.non_2xx_3xx > 0 || w.socket_errors > 0 {
        failures.push(format!(
            "{what}: {} non-2xx answers, {} failed or socket errors",
            w.non_2xx_3xx, w.socket_errors
        ));
    }
    // wrk counts a 3xx as a success: every answer must have been the upstream's 200.
    if served < w.requests {
        failures.push(format!(
            "{what}: {} answers but the upstream served {served}",
            w.requests
        ));
    }
    if peer == Peer::NginxAuth && after["auth"] - before["auth"] < w.requests {
        failures.push(format!(
            "{what}: nginx auth_request did not ask /auth for every request"
        ));
    }
    if let Some(checks0) = checks0 {
        let checks = directory_checks(rig) - checks0;
        if checks > 0.0 {
            failures.push(format!(
                "{what}: {checks} directory checks during the turn: not every request was a \
                 live session's (Basic: a verification-cache hit)"
            ));
        }
    }
    (w.requests, w.requests as f64 / w.per_second, cpu, stolen)
}

/// Scenario 1: small authenticated GETs, for a session cookie and for HTTP Basic, over HTTP/1.1
/// and HTTP/2: saturation (wrk, h2load), CPU per request, then latency at half the lowest
/// proxy's saturation rate (oha, fixed rate).
///
/// This shared 2-core VM's speed swings from second to second (the hypervisor's steal time
/// went from 2 % to 36 % within a minute), so one round does not run each peer for its whole
/// time at once: for each variant in turn it runs the peers in turn, `slices` times, for
/// `slice_secs` each, in rotated order, and a peer's rate for the round is its requests over
/// its seconds. The round's ratios then compare peers measured within seconds of each other.
/// The gateway's turns must make no directory check: for Basic, every request a
/// verification-cache hit (the rig's first Basic request logged the caller in).
fn small_gets(rig: &Rig, opts: &Opts, failures: &mut Vec<String>) -> Value {
    let mut cells: Vec<Cell> = VARIANTS.iter().map(|_| Cell::default()).collect();
    // The rig's two logins (user0's form, user60's first Basic GET) were directory checks: if the
    // metric does not show them, the turns' "no directory check" test would prove nothing.
    let checks = directory_checks(rig);
    if checks < 2.0 {
        failures.push(format!(
            "the gateway's metrics count {checks} directory checks after two logins: the \
             verification-cache check cannot be trusted"
        ));
    }
    println!(
        "\n## Small authenticated GETs (1 KiB, keep-alive, {WRK_CONNS} connections, one stream \
         each; cookie and Basic ({}, verification-cache hits), HTTP/1.1 (wrk) and HTTP/2 \
         (h2load); each round, per variant, {} turns of {} s per peer)",
        BASIC_USER.0, opts.slices, opts.slice_secs
    );
    for round in 0..opts.rounds {
        for (variant, cell) in VARIANTS.iter().copied().zip(cells.iter_mut()) {
            let peers = variant.peers();
            // Per peer this round: requests, seconds, CPU seconds, steal percent per turn.
            let mut this: BTreeMap<Peer, (u64, f64, f64, Vec<f64>)> = BTreeMap::new();
            for slice in 0..opts.slices {
                for peer in rotated(peers, round + slice) {
                    let (requests, secs, cpu, stolen) =
                        small_turn(rig, opts, variant, peer, failures);
                    let e = this.entry(peer).or_default();
                    e.0 += requests;
                    e.1 += secs;
                    e.2 += cpu;
                    e.3.push(stolen);
                }
            }
            let mut rate = BTreeMap::new();
            let mut us_now = BTreeMap::new();
            for &peer in peers {
                let (requests, secs, cpu, stolen) = &this[&peer];
                let per_second = *requests as f64 / secs;
                let us = cpu * 1e6 / *requests as f64;
                let st = stolen.iter().sum::<f64>() / stolen.len() as f64;
                println!(
                    "round {round} {:<14} {:<20} {:>9.0} req/s  {:>6.1} µs CPU/req  \
                     (steal {:>4.1} %: {})",
                    variant.name(),
                    peer.name(),
                    per_second,
                    us,
                    st,
                    stolen
                        .iter()
                        .map(|s| format!("{s:.0}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                rate.insert(peer, per_second);
                us_now.insert(peer, us);
                cell.rates.entry(peer).or_default().push(per_second);
                cell.cpu_us.entry(peer).or_default().push(us);
                cell.steal.entry(peer).or_default().push(st);
            }
            let (rn, rna) = (
                rate[&Peer::Gate] / rate[&Peer::Nginx],
                rate[&Peer::Gate] / rate[&Peer::NginxAuth],
            );
            let cr = us_now[&Peer::Gate] / us_now[&Peer::Nginx];
            cell.ratio_n.push(rn);
            cell.ratio_na.push(rna);
            cell.cpu_ratio.push(cr);
            println!(
                "round {round} {:<14} faspex-gate / nginx {rn:.2}, / nginx+auth_request {rna:.2}; \
                 CPU per request / nginx's {cr:.2}",
                variant.name()
            );
        }
    }

    // Latency at half of the variant's lowest proxy saturation rate, fixed rate, corrected.
    for cell in cells.iter_mut() {
        let lowest = [Peer::Gate, Peer::Nginx, Peer::NginxAuth]
            .iter()
            .map(|p| summary(&cell.rates[p]).0)
            .fold(f64::INFINITY, f64::min);
        cell.latency_rate = (lowest / 2.0).max(100.0);
    }
    println!(
        "\n## Latency at half each variant's lowest saturation rate (oha, 16 connections, one \
         stream each, corrected; {} s, the first {} s left out; HTTP/2 rows' added latency is \
         over the direct peer's HTTP/1.1 figure)",
        opts.latency_secs, LATENCY_WARMUP
    );
    for round in 0..opts.rounds {
        for (variant, cell) in VARIANTS.iter().copied().zip(cells.iter_mut()) {
            let headers = variant.headers(rig);
            for peer in rotated(variant.peers(), round) {
                let checks0 = (peer == Peer::Gate).then(|| directory_checks(rig));
                let times0 = tools::CpuTimes::now();
                let o = tools::oha(
                    &opts.oha,
                    &peer.url(rig, SMALL_PATH),
                    cell.latency_rate,
                    16,
                    opts.latency_secs,
                    LATENCY_WARMUP,
                    &headers,
                    variant.proto == Proto::Http2,
                );
                let stolen = tools::CpuTimes::now().steal_since(&times0);
                if o.non_2xx > 0 || o.errors > 0 || o.measured == 0 {
                    failures.push(format!(
                        "latency ({}) via {}: {} requests ({} after the warm-up), {} non-2xx, \
                         {} errors",
                        variant.name(),
                        peer.name(),
                        o.requests,
                        o.measured,
                        o.non_2xx,
                        o.errors
                    ));
                }
                if let Some(checks0) = checks0 {
                    let checks = directory_checks(rig) - checks0;
                    if checks > 0.0 {
                        failures.push(format!(
                            "latency ({}) via faspex-gate: {checks} directory checks: not every \
                             request was a live session's",
                            variant.name()
                        ));
                    }
                }
                println!(
                    "round {round} {:<14} {:<20} at {:>6.0} req/s: p50 {:>7.3} ms  p99 {:>7.3} ms  \
                     ({} requests measured; steal {stolen:.1} %)",
                    variant.name(),
                    peer.name(),
                    cell.latency_rate,
                    o.p50_ms,
                    o.p99_ms,
                    o.measured
                );
                cell.p50.entry(peer).or_default().push(o.p50_ms);
                cell.p99.entry(peer).or_default().push(o.p99_ms);
            }
        }
    }

    let mut out = serde_json::Map::new();
    for (variant, cell) in VARIANTS.iter().copied().zip(cells.iter()) {
        let base = &cells[VARIANTS
            .iter()
            .position(|v| *v == variant.baseline())
            .unwrap_or(0)];
        let d50 = summary(&base.p50[&Peer::Direct]).0;
        let d99 = summary(&base.p99[&Peer::Direct]).0;
        let mut peers_json = serde_json::Map::new();
        for &p in variant.peers() {
            let (p50, p99) = (summary(&cell.p50[&p]).0, summary(&cell.p99[&p]).0);
            peers_json.insert(
                p.name().into(),
                json!({
                    "requests_per_second": range_json(&cell.rates[&p]),
                    "requests_per_second_by_round": cell.rates[&p],
                    "cpu_us_per_request": range_json(&cell.cpu_us[&p]),
                    "cpu_us_per_request_by_round": cell.cpu_us[&p],
                    "steal_percent_by_round": cell.steal[&p],
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "p99_ms_by_round": cell.p99[&p],
                    "added_p50_ms": p50 - d50,
                    "added_p99_ms": p99 - d99,
                }),
            );
        }
        out.insert(
            variant.name(),
            json!({
                "credentials": match variant.creds {
                    Creds::Cookie => "session cookie (user0)",
                    Creds::Basic => "HTTP Basic (user60), verification-cache hits",
                },
                "protocol": match variant.proto {
                    Proto::Http1 => "HTTP/1.1",
                    Proto::Http2 => "HTTP/2 (ALPN h2), one stream per connection",
                },
                "tool": variant.tool(),
                "connections": WRK_CONNS,
                "turns_per_round": opts.slices,
                "turn_seconds": opts.slice_secs,
                "latency_rate": cell.latency_rate,
                "latency_seconds": opts.latency_secs,
                "latency_warmup_seconds": LATENCY_WARMUP,
                "latency_baseline": format!("direct, {}", variant.baseline().name()),
                "peers": peers_json,
                "ratio_vs_nginx": range_json(&cell.ratio_n),
                "ratio_vs_nginx_by_round": cell.ratio_n,
                "ratio_vs_nginx_auth_request": range_json(&cell.ratio_na),
                "ratio_vs_nginx_auth_request_by_round": cell.ratio_na,
                "cpu_ratio_vs_nginx": range_json(&cell.cpu_ratio),
                "cpu_ratio_vs_nginx_by_round": cell.cpu_ratio,
            }),
        );
    }
    Value::Object(out)
}

/// Seconds at the start of a latency run left out of its percentiles.
const LATENCY_WARMUP: f64 = 1.0;

fn range_json(xs: &[f64]) -> Value {
    let (m, lo, hi) = summary(xs);
    json!({"median": m, "min": lo, "max": hi})
}

/// Scenario 2: streamed downloads and uploads, Content-Length and chunked, through faspex-gate,
/// nginx and the relay; the gateway's peak RSS during each; then twenty slow readers.
fn streams(rig: &Rig, opts: &Opts, failures: &mut Vec<String>) -> Value {
    let size = opts.stream;
    let file = rig.dir.path().join("upload.bin");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(size))
        .expect("a sparse upload file");
    // The first read of a fresh sparse file makes the kernel fill the page cache with it (8 s
    // for 2 GiB here, against 0.2 s for a second read): whichever peer uploaded first, the
    // gateway in the first round, measured that. Read it once before any upload is timed.
    std::fs::File::open(&file)
        .and_then(|mut f| std::io::copy(&mut f, &mut std::io::sink()))
        .expect("read the upload file once");
    // Every peer over HTTP/1.1, and the gateway over HTTP/2 as well (curl `--http2`, h2 by
    // ALPN), in the same rounds: its h2 streams compare with its HTTP/1.1 ones and the relay's
    // measured seconds apart.
    let legs = [
        Leg::h1(Peer::Gate),
        Leg::h2(Peer::Gate),
        Leg::h1(Peer::Nginx),
        Leg::h1(Peer::Relay),
    ];
    let kinds = [
        ("download", false),
        ("download chunked", true),
        ("upload", false),
        ("upload chunked", true),
    ];
    println!(
        "\n## Streams of {:.2} GiB (curl, one at a time)",
        size as f64 / GIB as f64
    );
    let gw_rss0 = tools::rss_kib(&[rig.gateway_proc.pid()]);
    // The same download at an eighth of the size: the peak must not grow with the body.
    let eighth = {
        let sampler = tools::RssPeak::start(vec![rig.gateway_proc.pid()]);
        let url = Peer::Gate.url(rig, &format!("/big?bytes={}&chunked=0", size / 8));
        let c = tools::curl(&url, &rig.cookie, None, false, false);
        if c.status != 200 || c.bytes != size / 8 {
            failures.push(format!(
                "the 1/8 download got {} with {} bytes",
                c.status, c.bytes
            ));
        }
        sampler.finish()
    };
    let mut out = serde_json::Map::new();
    let mut peak_all = 0u64;
    for (kind, chunked) in kinds {
        let mut gbps: BTreeMap<Leg, Vec<f64>> = BTreeMap::new();
        let mut r_n = Vec::new();
        let mut r_relay = Vec::new();
        let mut r_h2 = Vec::new();
        let mut r_h2_relay = Vec::new();
        let mut peak = 0u64;
        for round in 0..opts.rounds {
            let mut this = BTreeMap::new();
            for leg in rotated(&legs, round) {
                let peer = leg.peer;
                let upload = kind.starts_with("upload");
                let url = if upload {
                    peer.url(rig, "/aspera/faspex/upload")
                } else {
                    peer.url(
                        rig,
                        &format!("/big?bytes={size}&chunked={}", u8::from(chunked)),
                    )
                };
                let before = rig.stats();
                let sampler = (peer == Peer::Gate)
                    .then(|| tools::RssPeak::start(vec![rig.gateway_proc.pid()]));
                let c = tools::curl(
                    &url,
                    &rig.cookie,
                    upload.then_some(file.as_path()),
                    chunked,
                    leg.h2,
                );
                if let Some(s) = sampler {
                    peak = peak.max(s.finish());
                }
                let after = rig.stats();
                let moved = if upload {
                    after["uploaded"] - before["uploaded"]
                } else {
                    c.bytes
                };
                // curl's upload count includes the chunk framing of a chunked upload.
                let sent_ok = if upload && chunked {
                    c.bytes >= size
                } else {
                    c.bytes == size
                };
                let version = if leg.h2 { "2" } else { "1.1" };
                if c.status != 200 || !sent_ok || moved != size || c.version != version {
                    failures.push(format!(
                        "{kind} via {}: status {} over HTTP/{} (expected HTTP/{version}), {} \
                         bytes sent/received, {moved} at the far end (expected {size})",
                        leg.name(),
                        c.status,
                        c.version,
                        c.bytes
                    ));
                }
                let rate = size as f64 / c.secs / 1e9;
                println!(
                    "round {round}: {kind:<17} {:<15} {rate:>6.3} GB/s",
                    leg.name()
                );
                this.insert(leg, rate);
                gbps.entry(leg).or_default().push(rate);
            }
            let gate = this[&Leg::h1(Peer::Gate)];
            let gate_h2 = this[&Leg::h2(Peer::Gate)];
            let relay = this[&Leg::h1(Peer::Relay)];
            r_n.push(gate / this[&Leg::h1(Peer::Nginx)]);
            r_relay.push(gate / relay);
            r_h2.push(gate_h2 / gate);
            r_h2_relay.push(gate_h2 / relay);
        }
        peak_all = peak_all.max(peak);
        println!("{kind}: gateway peak RSS {:.1} MiB", peak as f64 / 1024.0);
        let mut row = serde_json::Map::new();
        for leg in legs {
            row.insert(leg.name(), range_json(&gbps[&leg]));
        }
        row.insert("ratio_vs_nginx".into(), range_json(&r_n));
        row.insert("ratio_vs_relay".into(), range_json(&r_relay));
        row.insert("ratio_h2_vs_h1".into(), range_json(&r_h2));
        row.insert("ratio_h2_vs_h1_by_round".into(), json!(r_h2));
        row.insert("ratio_h2_vs_relay".into(), range_json(&r_h2_relay));
        row.insert("ratio_h2_vs_relay_by_round".into(), json!(r_h2_relay));
        row.insert("gateway_peak_rss_kib".into(), json!(peak));
        out.insert(kind.into(), Value::Object(row));
    }

    // Twenty slow readers at 1 MB/s each for 10 s (3 s in the smoke run).
    let secs = if opts.smoke { 3 } else { 10 };
    println!("\n## Twenty slow readers (curl --limit-rate 1M, {secs} s)");
    let mut slow = serde_json::Map::new();
    for peer in [Peer::Gate, Peer::Nginx] {
        let pids = peer.pids(rig);
        let rss0 = tools::rss_kib(&pids);
        let sampler = tools::RssPeak::start(pids.clone());
        let url = peer.url(rig, &format!("/big?bytes={}&chunked=0", 64 * GIB));
        let children: Vec<_> = (0..20)
            .map(|_| {
                Command::new("curl")
                    .args(["-sk", "--http1.1", "--limit-rate", "1M", "-o", "/dev/null"])
                    .args(["--max-time", &secs.to_string(), "-w", "%{size_download}"])
                    .args(["-H", &format!("Cookie: {}", rig.cookie)])
                    .arg(&url)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        let mut got = Vec::new();
        for c in children {
            let out = c.wait_with_output().expect("curl");
            got.push(
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0),
            );
        }
        let peak = sampler.finish();
        let least = got.iter().copied().min().unwrap_or(0);
        if least < MIB {
            failures.push(format!(
                "slow readers via {}: one received only {least} bytes",
                peer.name()
            ));
        }
        println!(
            "{:<12} RSS {:>6.1} MiB before, peak {:>6.1} MiB; each reader got ≥ {:.1} MiB",
            peer.name(),
            rss0 as f64 / 1024.0,
            peak as f64 / 1024.0,
            least as f64 / MIB as f64
        );
        slow.insert(
            peer.name().into(),
            json!({"rss_before_kib": rss0, "peak_rss_kib": peak, "least_bytes": least}),
        );
        if peer == Peer::Gate {
            peak_all = peak_all.max(peak);
        }
    }
    // Let the slow transfers' connections close before the next scenario.
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "gateway peak RSS: {:.1} MiB for a {} MiB download, {:.1} MiB over the full-size streams and slow readers",
        eighth as f64 / 1024.0,
        size / 8 / MIB,
        peak_all as f64 / 1024.0
    );
    json!({
        "bytes": size,
        "gateway_rss_before_kib": gw_rss0,
        "gateway_peak_rss_kib_eighth_size": eighth,
        "gateway_peak_rss_kib": peak_all,
        "kinds": out,
        "slow_readers": slow,
    })
}

/// Scenario 3: a password spray from thousands of loopback addresses while fifty logged-in
/// users work at a fixed rate: their latency with and without it, and the checks that reached
/// the directory.
fn spray(
    rig: &Rig,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    failures: &mut Vec<String>,
) -> Value {
    let tls = load::connector(&rig.cert_pem, true);
    let gw = rig.gateway;
    // Fifty users, each logged in from an address of its own (user1..user50).
    let users: Vec<(IpAddr, String)> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 1..=50usize {
            let ip = load::source(1, i);
            let mut s = load::connect(&tls, gw, Some(ip)).await.expect("connect");
            // The directory check ceiling is 50 a second: pace the logins under it.
            let cookie = loop {
                match load::login(&mut s, &format!("user{i}"), &format!("pw-user{i}"), COOKIE).await
                {
                    Ok(c) => break c,
                    Err(e) if e.to_string().contains("429") => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Err(e) => panic!("user{i} cannot log in: {e}"),
                }
            };
            v.push((ip, cookie));
        }
        v
    });
    let per_user = 20.0;
    let secs = opts.spray_secs;
    let conns = if opts.smoke { 100 } else { 1000 };
    println!(
        "\n## Password spray: 50 users at {per_user:.0} req/s each ({:.0} req/s), {secs:.0} s \
         without and {secs:.0} s with the attack, {} rounds",
        per_user * 50.0,
        opts.rounds
    );
    let mut rounds = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..opts.rounds {
        let base = rt
            .block_on(load::users_load(&tls, gw, &users, per_user, secs))
            .expect("baseline load");
        let m0 = rig.metrics();
        let checks0 = metric(&m0, "faspex_gate_directory_duration_seconds_count");
        let t0 = Instant::now();
        // The attacker is a process of its own, as it would be: its CPU is not the users'
        // client's.
        let attacker = Command::new(me())
            .args(["spray", "--addr", &gw.to_string(), "--cert"])
            .arg(&rig.cert)
            .args(["--conns", &conns.to_string()])
            .args(["--rate", &opts.spray_rate.to_string()])
            .args(["--secs", &(secs + 1.0).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the attacker");
        let attacked = rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            load::users_load(&tls, gw, &users, per_user, secs).await
        });
        let out = attacker.wait_with_output().expect("the attacker ends");
        let elapsed = t0.elapsed().as_secs_f64();
        let attacked = attacked.expect("load under attack");
        let sprayed: load::Spray =
            serde_json::from_slice(&out.stdout).expect("the attacker's report");
        let m1 = rig.metrics();
        let checks = metric(&m1, "faspex_gate_directory_duration_seconds_count") - checks0;
        let allowed = 50.0 * elapsed + 50.0;
        let ratio = attacked.p99_ms / base.p99_ms;
        println!(
            "round {round}: p99 {:.3} ms without, {:.3} ms under attack ({ratio:.2}×); \
             p50 {:.3} / {:.3} ms; errors {} / {}",
            base.p99_ms,
            attacked.p99_ms,
            base.p50_ms,
            attacked.p50_ms,
            base.errors,
            attacked.errors
        );
        println!(
            "round {round}: spray {} attempts from {} addresses, {:.0}/s; answers {:?}; \
             {} reconnects; directory checks {checks:.0} in {elapsed:.1} s \
             (max_checks_per_second = 50 allows {allowed:.0})",
            sprayed.attempts,
            sprayed.sources,
            sprayed.per_second,
            sprayed.statuses,
            sprayed.reconnects
        );
        if base.errors > 0 || attacked.errors > 0 {
            failures.push(format!(
                "round {round}: working users got errors: {} without the attack, {} under it",
                base.errors, attacked.errors
            ));
        }
        if sprayed
            .statuses
            .keys()
            .any(|s| ![401, 403, 429].contains(s))
        {
            failures.push(format!(
                "round {round}: the spray got unexpected answers: {:?}",
                sprayed.statuses
            ));
        }
        if checks > allowed {
            failures.push(format!(
                "round {round}: {checks} directory checks in {elapsed:.1} s: more than \
                 max_checks_per_second allows"
            ));
        }
        ratios.push(ratio);
        rounds.push(json!({
            "baseline": base,
            "under_attack": attacked,
            "p99_ratio": ratio,
            "spray": sprayed,
            "directory_checks": checks,
            "directory_checks_allowed": allowed,
            "seconds": elapsed,
        }));
    }
    // The round whose ratio is the median stands for the run; every round is in the JSON.
    let (median, _, _) = summary(&ratios);
    let middle = ratios
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - median).abs().total_cmp(&(b.1 - median).abs()))
        .map_or(0, |(i, _)| i);
    let worst_checks = rounds
        .iter()
        .map(|r| f(&r["directory_checks"]) - f(&r["directory_checks_allowed"]))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i);
    let mid = &rounds[middle];
    json!({
        "users": 50,
        "user_rate": per_user * 50.0,
        "baseline": mid["baseline"],
        "under_attack": mid["under_attack"],
        "p99_ratio": range_json(&ratios),
        "spray": mid["spray"],
        "directory_checks": rounds[worst_checks]["directory_checks"],
        "directory_checks_allowed": rounds[worst_checks]["directory_checks_allowed"],
        "rounds": rounds,
    })
}

/// `pid`'s RSS once it stops falling: jemalloc hands freed pages back over some seconds (the
/// start's users-file parse, a burst of logins), and a reading taken before that counts them.
/// Polled every half second until it has not fallen by 256 KiB over two seconds, at most 30 s.
fn settled_rss(pid: u32) -> u64 {
    let start = Instant::now();
    let mut readings = vec![tools::rss_kib(&[pid])];
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        readings.push(tools::rss_kib(&[pid]));
        let n = readings.len();
        if n >= 5 && readings[n - 5] <= readings[n - 1] + 256 {
            break;
        }
    }
    readings.last().copied().unwrap_or(0)
}

/// Scenario 4a: what each idle TLS keep-alive connection costs, gateway and nginx.
fn idle_connections(rig: &Rig, opts: &Opts, rt: &tokio::runtime::Runtime) -> Value {
    let tls = load::connector(&rig.cert_pem, true);
    let n = opts.idle;
    println!("\n## Idle TLS keep-alive connections ({n} then {})", n * 2);
    let mut out = serde_json::Map::new();
    for peer in [Peer::Gate, Peer::Nginx] {
        let addr = if peer == Peer::Gate {
            rig.gateway
        } else {
            rig.nginx
        };
        let pids = peer.pids(rig);
        let mut keep = Vec::new();
        let mut rss = vec![tools::rss_kib(&pids)];
        for _batch in 0..2 {
            rt.block_on(load::idle_connections(
                &tls,
                addr,
                n,
                &rig.cookie,
                &mut keep,
            ))
            .expect("idle connections");
            std::thread::sleep(Duration::from_millis(300));
            rss.push(tools::rss_kib(&pids));
        }
        let (r0, r1, r2) = (rss[0], rss[1], rss[2]);
        let slope = (r2 as f64 - r1 as f64) / n as f64;
        println!(
            "{:<12} RSS {:>6.1} → {:>6.1} → {:>6.1} MiB: {slope:.1} KiB per idle connection",
            peer.name(),
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0,
            r2 as f64 / 1024.0
        );
        out.insert(
            peer.name().into(),
            json!({"rss_kib": [r0, r1, r2], "kib_per_connection": slope}),
        );
        drop(keep);
        std::thread::sleep(Duration::from_millis(300));
    }
    Value::Object(out)
}

/// Scenario 4b: what live sessions cost: a gateway of its own (users file) with 10% and then all
/// of `opts.sessions` accounts logged in.
fn sessions_memory(
    rig: &Rig,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    failures: &mut Vec<String>,
) -> Value {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let n = opts.sessions;
    println!("\n## Memory of {n} live sessions (a gateway of its own, users file)");
    let d = rig.dir.path();
    // Cheap hashes (8 KiB, one pass): the logins, not the hashing, are what is measured here.
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8, 1, 1, None).expect("params"),
    );
    let mut users_toml = String::with_capacity(n * 130);
    let mut creds = Vec::with_capacity(n);
    for i in 0..n {
        let salt = SaltString::encode_b64(&(i as u64).to_le_bytes()).expect("salt");
        let pw = format!("pw-{i}");
        let h = argon
            .hash_password(pw.as_bytes(), &salt)
            .expect("hash")
            .to_string();
        users_toml.push_str(&format!("[users.member{i}]\nhash = \"{h}\"\n"));
        creds.push((format!("member{i}"), pw));
    }
    let users = d.join("members-users.toml");
    std::fs::write(&users, users_toml).expect("users file");
    let listen = tools::free_addr();
    let admin = tools::free_addr();
    let (cert, key) = (rig.cert.clone(), rig.key.clone());
    let config = gateway_config(
        d,
        "members",
        listen,
        admin,
        rig.upstream,
        &cert,
        &key,
        opts.workers,
        &format!(
            "max_sessions = {}\nlogin_attempts_per_ip_per_minute = 100000000",
            n + 10
        ),
        &format!(
            "[auth]\nbackend = \"file\"\nmax_checks_per_second = 1000000\n[auth.file]\npath = \"{}\"\n",
            users.display()
        ),
        &store_lines(rig.redis.as_ref()),
    );
    let mut proc = start_gateway(d, "members", &config, listen);
    let pid = proc.pid();
    let tls = load::connector(&rig.cert_pem, true);
    // Warm up: a connection and a login, so the baseline holds the gateway's fixed costs.
    let first: Arc<Vec<(String, String)>> = Arc::new(creds[..1].to_vec());
    rt.block_on(load::bulk_logins(&tls, listen, first, 1, COOKIE))
        .expect("the first login");
    let r0 = settled_rss(pid);
    let tenth = n / 10;
    let a: Arc<Vec<(String, String)>> = Arc::new(creds[1..tenth].to_vec());
    let rate_a = rt
        .block_on(load::bulk_logins(&tls, listen, a, 8, COOKIE))
        .expect("logins");
    let r1 = settled_rss(pid);
    let b: Arc<Vec<(String, String)>> = Arc::new(creds[tenth..].to_vec());
    let rate_b = rt
        .block_on(load::bulk_logins(&tls, listen, b, 8, COOKIE))
        .expect("logins");
    let r2 = settled_rss(pid);
    let m = http_get(admin, "/metrics");
    let active = metric(&m, "faspex_gate_sessions_active");
    if active as usize != n {
        failures.push(format!("{active} sessions active after {n} logins"));
    }
    if !proc.alive() {
        failures.push("the sessions gateway died".into());
    }
    // The slope between the 10 % and the 100 % marks: the first reading still holds what the
    // allocator kept from the start (parsing the users file) and has not handed back yet.
    let per = (r2 as f64 - r1 as f64) / (n - tenth) as f64;
    let total_mib = per * n as f64 / 1024.0;
    println!(
        "RSS {:.1} MiB with 1 session, {:.1} MiB with {tenth}, {:.1} MiB with {n}: \
         {per:.2} KiB per session from {tenth} to {n}, so {total_mib:.1} MiB for {n}; \
         logins {rate_a:.0}/s then {rate_b:.0}/s",
        r0 as f64 / 1024.0,
        r1 as f64 / 1024.0,
        r2 as f64 / 1024.0,
    );
    json!({
        "sessions": n,
        "rss_kib": [r0, r1, r2],
        "mib_for_all": total_mib,
        "kib_per_session": per,
        "logins_per_second": [rate_a, rate_b],
    })
}

/// Scenario 5: full TLS handshakes a second (ECDSA P-256, no resumption).
fn handshakes(
    rig: &Rig,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    failures: &mut Vec<String>,
) -> Value {
    let tls = load::connector(&rig.cert_pem, false);
    println!("\n## Full TLS handshakes (ECDSA P-256, no resumption, 8 clients)");
    let peers = [Peer::Gate, Peer::Nginx];
    let mut rates: BTreeMap<Peer, Vec<f64>> = BTreeMap::new();
    let mut ratios = Vec::new();
    for round in 0..opts.rounds {
        let mut this = BTreeMap::new();
        for peer in rotated(&peers, round) {
            let addr = if peer == Peer::Gate {
                rig.gateway
            } else {
                rig.nginx
            };
            let (rate, failed) = rt
                .block_on(load::handshakes(&tls, addr, 8, opts.secs.min(3) as f64))
                .expect("handshakes");
            if failed > 0 {
                failures.push(format!("{failed} handshakes with {} failed", peer.name()));
            }
            println!(
                "round {round}: {:<12} {rate:>8.0} handshakes/s",
                peer.name()
            );
            this.insert(peer, rate);
            rates.entry(peer).or_default().push(rate);
        }
        ratios.push(this[&Peer::Gate] / this[&Peer::Nginx]);
    }
    json!({
        "faspex-gate": range_json(&rates[&Peer::Gate]),
        "nginx": range_json(&rates[&Peer::Nginx]),
        "ratio": range_json(&ratios),
    })
}

// ------------------------------------------------------------------------------------- report

/// Scenario 7: the failover gap on Redis as clients see it (issue 24: a median under 5 s with
/// Sentinel's `down-after-milliseconds = 1000`). Whatever `--store` says, it starts its own
/// Redis master, two replicas and three sentinels (`SentinelSet`, the failover tests' set) and a
/// gateway of its own on them (`store.redis.sentinels`), against the rig's upstream and
/// directory. Then, `--failovers` times (5; 1 in the smoke run): two clients GET a small page on
/// a session cookie (200 a second in all) and one logs accounts in (20 a second; a login writes
/// to the store: seat, session), the master is killed (`kill -9`), and the clients go on until
/// the sentinels have promoted a replica and a few seconds more; then the old master comes back
/// as a replica, so that the next failover has two replicas again. Non-2xx answers in the gap
/// are what is measured, not failures of the run; a kind of request that never succeeds again
/// is one.
fn failovers(
    rig: &Rig,
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    failures: &mut Vec<String>,
) -> Value {
    use faspex_gate::store::redis::sentinel::{SentinelSet, DOWN_AFTER_MS, MASTER_NAME};
    use std::sync::atomic::{AtomicBool, Ordering};

    let times = opts.failovers;
    println!(
        "\n## Failover: {times} × kill -9 of the Redis master (Sentinel, down-after-milliseconds \
         {DOWN_AFTER_MS}), small GETs and logins going on"
    );
    let mut set = SentinelSet::start();
    let d = rig.dir.path();
    let (listen, admin) = (tools::free_addr(), tools::free_addr());
    let sentinels: Vec<String> = set
        .sentinel_entries()
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    let config = gateway_config(
        d,
        "failover",
        listen,
        admin,
        rig.upstream,
        &rig.cert,
        &rig.key,
        opts.workers,
        "max_sessions = 1000\none_client_per_account = \"replace\"\n\
         login_attempts_per_ip_per_minute = 100000000\n\
         public_requests_per_ip_per_minute = 100000000",
        &format!(
            "[auth]\nbackend = \"ldap\"\nmax_checks_per_second = 50\n[auth.ldap]\n\
             urls = [\"{}\"]\nuser_dn_template = \"{}\"\n",
            rig._slapd.url(),
            slapd::DIRECT_TEMPLATE
        ),
        &format!(
            "kind = \"redis\"\n[store.redis]\nsentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n\
             key_prefix = \"failover-{}\"\n",
            sentinels.join(", "),
            std::process::id()
        ),
    );
    let gateway = start_gateway(d, "failover", &config, listen);
    let tls = load::connector(&rig.cert_pem, true);
    let cookie = match rt.block_on(async {
        let mut s = load::connect(&tls, listen, None).await?;
        load::login(&mut s, "user0", "pw-user0", COOKIE).await
    }) {
        Ok(c) => c,
        Err(e) => {
            failures.push(format!("failover: user0 could not log in: {e}"));
            return Value::Null;
        }
    };
    // Accounts other than user0, whose session the GETs use.
    let users: Arc<Vec<(String, String)>> = Arc::new(
        (1..=50)
            .map(|i| (format!("user{i}"), format!("pw-user{i}")))
            .collect(),
    );
    let settle = Duration::from_secs(if opts.smoke { 2 } else { 3 });
    let mut runs = Vec::new();
    let (mut gaps, mut get_gaps, mut login_gaps, mut longest, mut agreed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..times {
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |work: failover::Work, pause: Duration| {
            rt.spawn(failover::client(
                tls.clone(),
                listen,
                work,
                pause,
                stop.clone(),
            ))
        };
        let get = failover::Work::Get {
            path: SMALL_PATH.into(),
            cookie: cookie.clone(),
        };
        let gets: Vec<_> = (0..2)
            .map(|_| spawn(get.clone(), Duration::from_millis(10)))
            .collect();
        let logins = spawn(
            failover::Work::Login {
                users: users.clone(),
            },
            Duration::from_millis(50),
        );
        // Steady traffic first.
        std::thread::sleep(settle);
        let kill = Instant::now();
        let old = set.kill_master();
        let (new, took) = set.wait_failover(old, Duration::from_secs(60));
        // Time for the gateway to follow, and for the clients to show they are served again.
        std::thread::sleep(Duration::from_secs(5).max(settle * 2));
        stop.store(true, Ordering::Relaxed);
        let collect = |hs: Vec<tokio::task::JoinHandle<Vec<failover::Outcome>>>| {
            hs.into_iter()
                .flat_map(|h| rt.block_on(h).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let get_out = collect(gets);
        let login_out = collect(vec![logins]);
        let before_kill = |o: &[failover::Outcome]| o.iter().filter(|o| o.done < kill).count();
        let warm_failures = get_out
            .iter()
            .chain(&login_out)
            .filter(|o| o.done < kill && !o.ok)
            .count();
        if warm_failures > 0 {
            failures.push(format!(
                "failover {n}: {warm_failures} requests failed before the master was killed"
            ));
        }
        let (g, l) = (
            failover::gap(&get_out, kill),
            failover::gap(&login_out, kill),
        );
        let (Some(g), Some(l)) = (g, l) else {
            failures.push(format!(
                "failover {n}: GETs or logins never succeeded again after the kill"
            ));
            break;
        };
        let worst = g.gap_s.max(l.gap_s);
        println!(
            "failover {n}: sentinels agreed after {:.2} s ({old} -> {new}); gap as clients saw \
             it {worst:.2} s (GETs {:.2} s, logins {:.2} s; longest without a success: GETs \
             {:.2} s, logins {:.2} s; slowest answer: GETs {:.2} s, logins {:.2} s); \
             non-successes: GETs {:?}, logins {:?}; stalled > 1 s: GETs {}, logins {} (of {} \
             and {} after the kill; {} and {} before)",
            took.as_secs_f64(),
            g.gap_s,
            l.gap_s,
            g.longest_without_success_s,
            l.longest_without_success_s,
            g.slowest_s,
            l.slowest_s,
            g.failures,
            l.failures,
            g.stalled,
            l.stalled,
            g.requests,
            l.requests,
            before_kill(&get_out),
            before_kill(&login_out),
        );
        gaps.push(worst);
        get_gaps.push(g.gap_s);
        login_gaps.push(l.gap_s);
        longest.push(g.longest_without_success_s.max(l.longest_without_success_s));
        agreed.push(took.as_secs_f64());
        runs.push(json!({
            "killed_port": old,
            "new_master_port": new,
            "sentinels_agreed_s": took.as_secs_f64(),
            "gap_s": worst,
            "gets": g,
            "logins": l,
        }));
        if n + 1 < times {
            set.restart(old);
        }
    }
    drop(gateway);
    json!({
        "down_after_milliseconds": DOWN_AFTER_MS,
        "failovers": runs,
        "gap_s": range_json(&gaps),
        "get_gap_s": range_json(&get_gaps),
        "login_gap_s": range_json(&login_gaps),
        "longest_without_success_s": range_json(&longest),
        "sentinels_agreed_s": range_json(&agreed),
    })
}

/// The host, as the results name it: cores, the CPU's name, and its family and model (a VM's
/// CPU name is often only "AMD EPYC", and two generations under that name differ by a factor of
/// two per request), and the kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let cpu = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut machine = format!("{cores} cores, {cpu}");
    if let (Some(family), Some(model)) = (field("cpu family"), field("model")) {
        machine.push_str(&format!(" (family {family}, model {model})"));
    }
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        machine.push_str(&format!(", Linux {}", kernel.trim()));
    }
    machine
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn run(opts: &Opts) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = jiff::Timestamp::now();
    println!(
        "# faspex-gate against nginx: {} rounds, {} worker(s) each, the {} store, {}{}; small \
         GETs in {} variants (cookie and Basic, HTTP/1.1 and HTTP/2), {} turns of {} s per peer \
         per variant per round",
        opts.rounds,
        opts.workers,
        if opts.redis { "redis" } else { "embedded" },
        machine(),
        if opts.smoke { " (smoke run)" } else { "" },
        VARIANTS.len(),
        opts.slices,
        opts.slice_secs
    );
    let rig = Rig::start(opts, &rt);
    if opts.hold {
        // For profiling by hand: the peers stay up until this process is stopped.
        println!(
            "holding: gateway pid {} https://localhost:{}  nginx https://localhost:{}  \
             nginx+auth https://localhost:{}  direct http://{}\ncookie: {}\n\
             basic: {} (with User-Agent: {BASIC_AGENT})",
            rig.gateway_proc.pid(),
            rig.gateway.port(),
            rig.nginx.port(),
            rig.nginx_auth.port(),
            rig.upstream,
            rig.cookie,
            rig.basic
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let mut failures = Vec::new();
    let small = opts.scenario("small", || small_gets(&rig, opts, &mut failures));
    let streams = opts.scenario("streams", || streams(&rig, opts, &mut failures));
    let spray = opts.scenario("spray", || spray(&rig, opts, &rt, &mut failures));
    let idle = opts.scenario("idle", || idle_connections(&rig, opts, &rt));
    let handshakes = opts.scenario("handshakes", || handshakes(&rig, opts, &rt, &mut failures));
    let sessions = opts.scenario("sessions", || {
        sessions_memory(&rig, opts, &rt, &mut failures)
    });
    let failover = opts.scenario("failover", || failovers(&rig, opts, &rt, &mut failures));
    let gw_hwm = tools::status_kib(rig.gateway_proc.pid(), "VmHWM:");
    let report = json!({
        "date": started.to_string(),
        "machine": machine(),
        "smoke": opts.smoke,
        "rounds": opts.rounds,
        "workers": opts.workers,
        "store": if opts.redis { "redis" } else { "embedded" },
        "tools": {
            "nginx": version(&nginx_binary().to_string_lossy(), "-v"),
            "wrk": version("wrk", "-v"),
            "oha": version(&opts.oha.to_string_lossy(), "--version"),
            "faspex-gate": gateway_binary(),
            "curl": version("curl", "--version"),
        },
        "small_gets": small,
        "streams": streams,
        "spray": spray,
        "idle_connections": idle,
        "sessions": sessions,
        "handshakes": handshakes,
        "failover": failover,
        "gateway_vm_hwm_kib": gw_hwm,
        "failures": failures,
    });
    print_summary(&report);
    if let Some(parent) = opts.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&report).expect("JSON"),
    )
    .expect("write the JSON results");
    println!("\nResults written to {}", opts.json.display());
    failures
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A small GETs variant's rows, with issue 24's targets: req/s at least 1.25× nginx
/// `proxy_pass`'s and 1.5× nginx `auth_request`'s, CPU per request at most 0.8× nginx's, the
/// added p99 at half load no more than nginx's.
fn small_rows(name: &str, v: &Value) {
    let p = &v["peers"];
    let (g, n, na) = (&p["faspex-gate"], &p["nginx"], &p["nginx+auth_request"]);
    let med = |x: &Value| f(&x["median"]);
    let range = |x: &Value| {
        format!(
            "{:.2} [{:.2}–{:.2}]",
            f(&x["median"]),
            f(&x["min"]),
            f(&x["max"])
        )
    };
    let direct = match p.get("direct") {
        Some(d) => format!(" (direct: {:.0})", med(&d["requests_per_second"])),
        None => String::new(),
    };
    let (rn, rna, cpu) = (
        &v["ratio_vs_nginx"],
        &v["ratio_vs_nginx_auth_request"],
        &v["cpu_ratio_vs_nginx"],
    );
    println!(
        "| small GET {name}, req/s vs nginx proxy_pass{direct} | {:.0} | {:.0} | {} | ≥ 1.25: {} |",
        med(&g["requests_per_second"]),
        med(&n["requests_per_second"]),
        range(rn),
        verdict(med(rn) >= 1.25)
    );
    println!(
        "| small GET {name}, req/s vs nginx auth_request | {:.0} | {:.0} | {} | ≥ 1.5: {} |",
        med(&g["requests_per_second"]),
        med(&na["requests_per_second"]),
        range(rna),
        verdict(med(rna) >= 1.5)
    );
    println!(
        "| small GET {name}, CPU µs per request vs nginx proxy_pass | {:.1} | {:.1} | {} | ≤ 0.8: {} |",
        med(&g["cpu_us_per_request"]),
        med(&n["cpu_us_per_request"]),
        range(cpu),
        verdict(med(cpu) <= 0.8)
    );
    println!(
        "| small GET {name}, added p50 at {:.0} req/s, ms | {:.3} | {:.3} | | |",
        f(&v["latency_rate"]),
        f(&g["added_p50_ms"]),
        f(&n["added_p50_ms"])
    );
    println!(
        "| small GET {name}, added p99 at {:.0} req/s, ms | {:.3} | {:.3} | | ≤ nginx: {} |",
        f(&v["latency_rate"]),
        f(&g["added_p99_ms"]),
        f(&n["added_p99_ms"]),
        verdict(f(&g["added_p99_ms"]) <= f(&n["added_p99_ms"]))
    );
}

/// The README table and the targets, from the report.
fn print_summary(r: &Value) {
    println!(
        "\n# Summary: {}, {}, {} worker(s), the {} store, medians of {} rounds [range]\n",
        r["date"].as_str().unwrap_or("").get(..10).unwrap_or(""),
        r["machine"].as_str().unwrap_or(""),
        r["workers"],
        r["store"].as_str().unwrap_or("embedded"),
        r["rounds"]
    );
    println!("| scenario | faspex-gate | nginx | ratio | target |");
    println!("|---|---:|---:|---:|---|");
    // A scenario left out with --only has no rows.
    if let Some(small) = r["small_gets"].as_object() {
        for variant in VARIANTS {
            if let Some(v) = small.get(&variant.name()) {
                small_rows(&variant.name(), v);
            }
        }
    }
    let st = &r["streams"];
    if let Some(kinds) = st["kinds"].as_object() {
        for (kind, k) in kinds {
            let rn = &k["ratio_vs_nginx"];
            let rr = &k["ratio_vs_relay"];
            println!(
                "| {kind} {:.0} MiB, GB/s (relay: {:.3}) | {:.3} | {:.3} | {:.2} [{:.2}–{:.2}]; relay {:.2} | ≥ 0.95 and ≥ 0.85 of relay: {} |",
                f(&st["bytes"]) / MIB as f64,
                f(&k["relay"]["median"]),
                f(&k["faspex-gate"]["median"]),
                f(&k["nginx"]["median"]),
                f(&rn["median"]),
                f(&rn["min"]),
                f(&rn["max"]),
                f(&rr["median"]),
                verdict(f(&rn["median"]) >= 0.95 && f(&rr["median"]) >= 0.85)
            );
        }
        // Issue 24: the gateway's streams over HTTP/2 against its own over HTTP/1.1 and the
        // relay's (HTTP/1.1), from the same rounds.
        for (kind, k) in kinds {
            let rh = &k["ratio_h2_vs_h1"];
            let rr = &k["ratio_h2_vs_relay"];
            println!(
                "| {kind} {:.0} MiB over HTTP/2, GB/s (HTTP/1.1: {:.3}) | {:.3} | | h2/h1.1 {:.2} [{:.2}–{:.2}]; h2/relay {:.2} [{:.2}–{:.2}] | ≥ 0.95 of h1.1: {}; ≥ 1.0 of relay: {} |",
                f(&st["bytes"]) / MIB as f64,
                f(&k["faspex-gate"]["median"]),
                f(&k["faspex-gate h2"]["median"]),
                f(&rh["median"]),
                f(&rh["min"]),
                f(&rh["max"]),
                f(&rr["median"]),
                f(&rr["min"]),
                f(&rr["max"]),
                verdict(f(&rh["median"]) >= 0.95),
                verdict(f(&rr["median"]) >= 1.0)
            );
        }
    }
    let peak = f(&st["gateway_peak_rss_kib"]) / 1024.0;
    if !st.is_null() {
        println!(
        "| gateway peak RSS in streams and 20 slow readers, MiB | {peak:.1} | {:.1} (slow readers) | | < 64: {} |",
        f(&st["slow_readers"]["nginx"]["peak_rss_kib"]) / 1024.0,
        verdict(peak < 64.0)
    );
    }
    let sess = &r["sessions"];
    if !sess.is_null() {
        println!(
            "| memory of {} live sessions, MiB | {:.1} | | | < 100: {} |",
            sess["sessions"],
            f(&sess["mib_for_all"]),
            verdict(
                f(&sess["mib_for_all"]) < 100.0 * sess["sessions"].as_f64().unwrap_or(1e5) / 1e5
            )
        );
    }
    let idle = &r["idle_connections"];
    let gi = f(&idle["faspex-gate"]["kib_per_connection"]);
    let ni = f(&idle["nginx"]["kib_per_connection"]);
    if !idle.is_null() {
        // (issue 24: at most 20 KiB; nginx takes about 15)
        println!(
            "| memory per idle TLS keep-alive connection, KiB | {gi:.1} | {ni:.1} | {:.2} | ≤ 20: {} |",
            gi / ni,
            verdict(gi <= 20.0)
        );
    }
    let sp = &r["spray"];
    if !sp.is_null() {
        println!(
        "| 50 users' p99 under a {:.0}/s spray from {} addresses, ms (median round) | {:.3} (baseline {:.3}) | | {:.2} [{:.2}–{:.2}] × baseline | ≤ 2×: {} |",
        f(&sp["spray"]["per_second"]),
        sp["spray"]["sources"],
        f(&sp["under_attack"]["p99_ms"]),
        f(&sp["baseline"]["p99_ms"]),
        f(&sp["p99_ratio"]["median"]),
        f(&sp["p99_ratio"]["min"]),
        f(&sp["p99_ratio"]["max"]),
        verdict(f(&sp["p99_ratio"]["median"]) <= 2.0 && f(&sp["spray"]["per_second"]) >= 2000.0)
    );
        println!(
        "| directory checks during the spray (most over any round) | {:.0} | | | ≤ {:.0} (max_checks_per_second): {} |",
        f(&sp["directory_checks"]),
        f(&sp["directory_checks_allowed"]),
        verdict(f(&sp["directory_checks"]) <= f(&sp["directory_checks_allowed"]))
    );
    }
    let fo = &r["failover"];
    if !fo.is_null() {
        let g = &fo["gap_s"];
        println!(
            "| Redis failover gap as clients saw it, s, over {} kill -9 (down-after {} ms; sentinels agreed {:.2}) | {:.2} [{:.2}–{:.2}] (GETs {:.2}, logins {:.2}; longest without a success {:.2}) | | | median < 5: {} |",
            fo["failovers"].as_array().map_or(0, Vec::len),
            fo["down_after_milliseconds"],
            f(&fo["sentinels_agreed_s"]["median"]),
            f(&g["median"]),
            f(&g["min"]),
            f(&g["max"]),
            f(&fo["get_gap_s"]["median"]),
            f(&fo["login_gap_s"]["median"]),
            f(&fo["longest_without_success_s"]["median"]),
            verdict(f(&g["median"]) < 5.0)
        );
    }
    let h = &r["handshakes"];
    if !h.is_null() {
        println!(
            "| full TLS handshakes/s (ECDSA P-256) | {:.0} | {:.0} | {:.2} [{:.2}–{:.2}] | |",
            f(&h["faspex-gate"]["median"]),
            f(&h["nginx"]["median"]),
            f(&h["ratio"]["median"]),
            f(&h["ratio"]["min"]),
            f(&h["ratio"]["max"])
        );
    }
}
