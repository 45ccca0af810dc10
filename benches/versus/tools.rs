//! Running the outside tools (wrk, oha, curl, nginx) and reading what the kernel knows about a
//! process: CPU seconds from `/proc/<pid>/stat`, resident memory from `/proc/<pid>/status`.

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

/// `wrk` closed-loop: saturation throughput. Panics on output it cannot read.
pub fn wrk(url: &str, conns: usize, secs: u64, cookie: &str) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
        .args(["-H", &format!("Cookie: {cookie}")])
        .arg(url)
        .output()
        .expect("wrk runs");
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

/// What one oha run measured (fixed rate, latency corrected for coordinated omission).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Oha {
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn oha(oha: &Path, url: &str, rate: f64, conns: usize, secs: u64, cookie: &str) -> Oha {
    let out = Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["--insecure", "-z", &format!("{secs}s")])
        .args(["-q", &format!("{rate:.0}"), "-c", &conns.to_string()])
        .args(["-H", &format!("Cookie: {cookie}")])
        .arg(url)
        .output()
        .expect("oha runs");
    assert!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oha's JSON");
    let ms = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let mut o = Oha {
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        ..Oha::default()
    };
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
    o
}

/// One curl transfer: HTTP status, bytes moved, seconds.
pub struct Curl {
    pub status: u16,
    pub bytes: u64,
    pub secs: f64,
}

/// Download `url` to /dev/null, or upload `upload` to it (PUT; `chunked` without a length).
pub fn curl(url: &str, cookie: &str, upload: Option<&Path>, chunked: bool) -> Curl {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--http1.1", "-o", "/dev/null"])
        .args(["-H", &format!("Cookie: {cookie}")]);
    match upload {
        Some(file) => {
            cmd.arg("-T").arg(file);
            if chunked {
                cmd.args(["-H", "Transfer-Encoding: chunked"]);
            }
            cmd.args(["-w", "%{http_code} %{size_upload} %{time_total}"]);
        }
        None => {
            cmd.args(["-w", "%{http_code} %{size_download} %{time_total}"]);
        }
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    Curl {
        status: f.first().and_then(|s| s.parse().ok()).unwrap_or(0),
        bytes: f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        secs: f.get(2).and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
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
