//! Running the outside tools (wrk, h2load, oha, curl, nginx) and reading what the kernel knows
//! about a process: CPU seconds from `/proc/<pid>/stat`, resident memory from `/proc/<pid>/status`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

pub fn wait_port(addr: SocketAddr, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process and its children (nginx's workers), by pid.
pub fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rsplit(')').next() {
                    let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                    if ppid == Some(pid) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// CPU seconds (user + system) used so far by these processes.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14 and stime 15 (1-based overall).
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        })
        .sum()
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now, in KiB, summed over the processes.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum()
}

/// Samples the resident memory of some processes every 10 ms, keeping the peak.
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pids: Vec<u32>) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_kib(&pids)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(&pids), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssPeak {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Wrk {
    pub requests: u64,
    pub per_second: f64,
    pub non_2xx_3xx: u64,
    pub socket_errors: u64,
}

/// `wrk` closed-loop over HTTP/1.1: saturation throughput, each request with `headers`
/// (`Name: value`). Panics on output it cannot read.
pub fn wrk(url: &str, conns: usize, secs: u64, headers: &[String]) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let mut w = Wrk::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Requests/sec:") {
            w.per_second = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx_3xx = rest.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            w.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if l.contains(" requests in ") {
            w.requests = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    assert!(w.requests > 0, "wrk printed no request count: {text}");
    w
}

/// `h2load` closed-loop over HTTP/2 (ALPN `h2`): `conns` connections of one stream each, for
/// `secs`, each request with `headers`. Answers other than 2xx and requests that failed, errored
/// or timed out all count in `non_2xx_3xx` or `socket_errors`; a connection that did not
/// negotiate `h2` fails the run. Panics on output it cannot read.
pub fn h2load(url: &str, conns: usize, secs: u64, headers: &[String]) -> Wrk {
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-t1",
        "-c",
        &conns.to_string(),
        "-m1",
        "-D",
        &secs.to_string(),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("h2load runs (benches/versus.sh installs nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    let h2 = text.lines().any(|l| l.trim() == "Application protocol: h2");
    assert!(h2, "h2load did not negotiate HTTP/2 with {url}: {text}");
    let mut w = Wrk::default();
    // "requests: 9 total, 9 started, 9 done, 9 succeeded, 0 failed, 0 errored, 0 timeout" and
    // "status codes: 9 2xx, 0 3xx, 0 4xx, 0 5xx": each figure before its word.
    let figures = |rest: &str| -> Vec<(String, u64)> {
        rest.split(',')
            .filter_map(|p| {
                let mut it = p.split_whitespace();
                let n = it.next()?.parse().ok()?;
                Some((it.next()?.to_owned(), n))
            })
            .collect()
    };
    let mut seen = (false, false);
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("finished in") {
            // "finished in 2.00s, 12345.50 req/s, 1.23MB/s"
            w.per_second = rest
                .split(',')
                .find(|p| p.trim_end().ends_with("req/s"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = l.strip_prefix("requests:") {
            seen.0 = true;
            for (word, n) in figures(rest) {
                match word.as_str() {
                    "succeeded" => w.requests = n,
                    "failed" | "errored" | "timeout" => w.socket_errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = l.strip_prefix("status codes:") {
            seen.1 = true;
            for (word, n) in figures(rest) {
                if word != "2xx" {
                    w.non_2xx_3xx += n;
                }
            }
        }
    }
    assert!(
        seen.0 && seen.1 && w.requests > 0 && w.per_second > 0.0,
        "h2load printed no request count or rate: {text}"
    );
    w
}

/// What one oha run measured (fixed rate, latency corrected for coordinated omission).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Oha {
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// How many answered requests the percentiles are taken over (those after the warm-up).
    pub measured: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// oha at a fixed rate on `conns` keep-alive connections (HTTP/2 with one stream each when
/// `http2`) for `secs`, each request with `headers`, its latencies corrected
/// for coordinated omission (counted from when each request was due, not from when it went).
/// The percentiles leave out the requests due in the first `warmup` seconds: in those the
/// connections are still shaking hands, and a proxy's latency on keep-alive connections is not
/// what they measure (the handshakes have a scenario of their own). oha writes every answered
/// request to an SQLite file (`--db-url`), read back with the `sqlite3` command.
#[allow(clippy::too_many_arguments)]
pub fn oha(
    oha: &Path,
    url: &str,
    rate: f64,
    conns: usize,
    secs: u64,
    warmup: f64,
    headers: &[String],
    http2: bool,
) -> Oha {
    let dir = tempfile::tempdir().expect("a folder for oha's records");
    let db = dir.path().join("oha.db");
    let out = stdout_of(
        Command::new(oha)
            .args([
                "--no-tui",
                "--output-format",
                "json",
                "--latency-correction",
            ])
            .args(["--insecure", "-z", &format!("{secs}s")])
            .args(["-q", &format!("{rate:.0}"), "-c", &conns.to_string()])
            .args(headers.iter().flat_map(|h| ["-H", h.as_str()]))
            .args(if http2 { &["--http2"][..] } else { &[][..] })
            .arg("--db-url")
            .arg(&db)
            .arg(url),
        "oha",
    );
    let v: serde_json::Value = serde_json::from_slice(&out).expect("oha's JSON");
    let mut o = Oha::default();
    if let Some(m) = v["statusCodeDistribution"].as_object() {
        for (code, n) in m {
            let n = n.as_u64().unwrap_or(0);
            o.requests += n;
            if !code.starts_with('2') {
                o.non_2xx += n;
            }
        }
    }
    if let Some(m) = v["errorDistribution"].as_object() {
        // oha ends the run by cutting requests in flight; those are not the server's errors.
        o.errors = m
            .iter()
            .filter(|(k, _)| !k.contains("aborted due to deadline"))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum();
    }
    // `duration` is oha's corrected latency (its end minus when the request was due).
    let query = format!(
        "SELECT duration FROM oha WHERE coalesce(start_latency_correction, start) >= {warmup} \
         ORDER BY duration;"
    );
    let rows = stdout_of(
        Command::new("sqlite3")
            .args(["-batch", "-noheader", "-list"])
            .arg(&db)
            .arg(&query),
        "sqlite3 (benches/versus.sh installs it), reading oha's records,",
    );
    let latencies: Vec<f64> = String::from_utf8_lossy(&rows)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    o.measured = latencies.len() as u64;
    o.p50_ms = percentile(&latencies, 0.50) * 1000.0;
    o.p99_ms = percentile(&latencies, 0.99) * 1000.0;
    o
}

/// What `cmd` printed; panics naming `what` when it cannot run or fails, with its stderr.
fn stdout_of(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} did not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `q` quantile of sorted values (nearest rank), NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The machine's CPU time so far, from the first line of `/proc/stat`: all of it, and the
/// part the hypervisor gave to other guests (steal), in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        CpuTimes {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            total: fields.iter().take(8).sum(),
            steal: fields.get(7).copied().unwrap_or(0),
        }
    }

    /// The share of the CPU time since `earlier` that the hypervisor took away, in percent:
    /// how much the machine's neighbours disturbed a measurement.
    pub fn steal_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

/// One curl transfer: HTTP status, bytes moved, seconds.
pub struct Curl {
    pub status: u16,
    pub bytes: u64,
    pub secs: f64,
    /// The HTTP version curl used: "1.1" or "2".
    pub version: String,
}

/// Download `url` to /dev/null, or upload `upload` to it (PUT; `chunked` without a length:
/// over HTTP/2, where `Transfer-Encoding` does not exist, curl drops that header and sends a
/// stream without `content-length`). `http2`: HTTP/2 by ALPN (`--http2`), else HTTP/1.1.
pub fn curl(url: &str, cookie: &str, upload: Option<&Path>, chunked: bool, http2: bool) -> Curl {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", if http2 { "--http2" } else { "--http1.1" }])
        .args(["-o", "/dev/null"])
        .args(["-H", &format!("Cookie: {cookie}")]);
    match upload {
        Some(file) => {
            // File data: the gateway streams octet-stream bodies unread (a body of no type is
            // a form-type body it must inspect first).
            cmd.arg("-T")
                .arg(file)
                .args(["-H", "Content-Type: application/octet-stream"]);
            if chunked {
                cmd.args(["-H", "Transfer-Encoding: chunked"]);
            }
            cmd.args([
                "-w",
                "%{http_code} %{size_upload} %{time_total} %{http_version}",
            ]);
        }
        None => {
            cmd.args([
                "-w",
                "%{http_code} %{size_download} %{time_total} %{http_version}",
            ]);
        }
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    Curl {
        status: f.first().and_then(|s| s.parse().ok()).unwrap_or(0),
        bytes: f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        secs: f.get(2).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
        version: f.get(3).copied().unwrap_or("").to_owned(),
    }
}

/// Median, lowest and highest.
pub fn summary(xs: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}
