//! The service log on stderr, as `log.format` says: `text` (tracing's human-readable lines,
//! `key=value` fields) or `json` (one JSON object per line). docs/operations.md ("Logs") lists the fields.
//!
//! tracing's own events are written by tracing-subscriber's formatters: `Full` for text, and for
//! JSON its `Json` format flattened, so that every line has the same shape: `timestamp`, `level`,
//! the event's fields (`message` among them), `target`. `RUST_LOG` filters by target and level
//! (default `info`).
//!
//! The access log, a line for every request, has a writer of its own ([`write`] with
//! [`Fields`]): the same line as those formatters would make from its fields, built with plain
//! pushes in a buffer kept per thread, without the formatting machinery, the per-field dispatch
//! and the allocations, which cost several hundred instructions per request
//! (`benches/instructions.sh`). Its callers ask [`access_enabled`] first, so `RUST_LOG` filters
//! it as it filters the rest.
//!
//! Lines are written whole, never split or interleaved. On the request runtime's threads they
//! are held and written together, as nginx's `access_log ... buffer=` does, since one `write`
//! per request was the costliest system call a small GET made after the sockets' own. What is
//! held is written by a task of the runtime's ([`flusher`]) as soon as a worker runs out of work
//! ([`parked`], tokio's `on_thread_park`), and otherwise about [`HELD_AT_MOST`] after the first
//! of it was held (for workers kept busy by long transfers); and by the line that brings it to
//! [`HELD_BYTES`]. Anything else written to stderr (tracing's events, the audit log's `-`,
//! [`FlushOnDrop`] at exit, and as far as it can a panic's message) writes what is held first, with
//! it, so that a thread's lines keep the order it made them in. A stderr that blocks (a full
//! pipe) holds up the writers as it did when each line was written on its own. A process that
//! dies without unwinding (`SIGKILL`, an abort) loses what was held then, and a failed write
//! what it carried.
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::config::LogFormat;

/// The access log's tracing target (`proxy::access` writes under it).
pub const ACCESS_TARGET: &str = "faspex_gate::access";

/// Whether lines are JSON (`log.format = "json"`); set once, at start.
static JSON: AtomicBool = AtomicBool::new(false);

/// Whether the filter lets the access log through: [`ASK`] tracing on every line, or its answer
/// taken once, at start ([`ON`], [`OFF`]).
static ACCESS: AtomicU8 = AtomicU8::new(ASK);
const ASK: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// The filter without `RUST_LOG`: `info`, but the LDAP client library's own messages only from
/// `error` up. It warns once per message it cannot place (a hostile or broken directory can send
/// those as fast as it likes), and the gateway reports a directory's failures itself.
const DEFAULT_FILTER: &str = "info,ldap3=error";

/// Install the service log in `format`: tracing's subscriber on stderr, and the format that
/// [`write`] uses. A second call changes nothing but [`write`]'s format.
pub fn init(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let installed = match format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(|| Stderr)
                .try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(|| Stderr)
            .try_init(),
    }
    .is_ok();
    // A panic's message goes after the lines held, when they can be had at once (`try_lock`: the
    // panic may have come from the thread that holds their lock).
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            HELD.write_if_free();
            report(info);
        }));
    });
    // The filter is RUST_LOG as it was at start, and never changes: its answer for the access
    // target holds for the process's life, unless a span directive (`[...]`) makes it depend on
    // where the line is written.
    let per_span = std::env::var("RUST_LOG").is_ok_and(|v| v.contains('['));
    if installed && !per_span {
        let on = tracing::enabled!(target: ACCESS_TARGET, Level::INFO);
        ACCESS.store(if on { ON } else { OFF }, Ordering::Relaxed);
    }
}

/// Whether an access-log line would be written (`RUST_LOG` filters it as it filters the rest).
#[inline]
pub fn access_enabled() -> bool {
    match ACCESS.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => tracing::enabled!(target: ACCESS_TARGET, Level::INFO),
    }
}

/// Write one line of `target` at `level` to stderr, in the format [`init`] set, with the fields
/// `fill` adds. The line is made in a buffer kept per thread and written whole: at once, or on a
/// thread that has [`parked`], held and written with the lines after it.
pub fn write(level: Level, target: &'static str, fill: impl FnOnce(&mut Fields<'_>)) {
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    let json = JSON.load(Ordering::Relaxed);
    LINE.with(|cell| {
        let mut fresh = Vec::new();
        let mut kept = cell.try_borrow_mut();
        let out = match kept.as_deref_mut() {
            Ok(kept) => kept,
            Err(_) => &mut fresh,
        };
        out.clear();
        render(out, json, level, target, fill);
        if PARKS.get() {
            HELD.hold(out);
        } else {
            let _ = HELD.to_stderr(out);
        }
    });
}

/// Bytes of lines held, past which the line that adds to them writes them all: about thirty
/// access-log lines.
pub const HELD_BYTES: usize = 8 * 1024;

/// The longest a line is held on a runtime whose workers never run out of work.
pub const HELD_AT_MOST: Duration = Duration::from_millis(100);

/// The lines held ([`Held`]), for stderr.
static HELD: Held = Held::new(stderr);

fn stderr(bytes: &[u8]) -> std::io::Result<()> {
    std::io::stderr().lock().write_all(bytes)
}

thread_local! {
    /// Whether this thread calls [`parked`] when it runs out of work, and so may hold lines.
    static PARKS: Cell<bool> = const { Cell::new(false) };
}

/// The runtime's `on_thread_park`: this thread has run out of work, so have the lines held
/// written now, by [`flusher`]. From then on, this thread's lines are held too: it will call this
/// again before it waits. It never writes, nor waits for a lock: a worker about to park still
/// counts as looking for work, and while one does, tokio wakes no other (so a write stalled on a
/// full pipe here would hold up the whole runtime, where a task's write holds up one worker).
pub fn parked() {
    PARKS.set(true);
    HELD.parked();
}

/// The runtime's task (spawned with it) that writes the lines held: as soon as a worker runs out
/// of work ([`parked`]), and at the latest [`HELD_AT_MOST`] after the first of them was held (on
/// a worker kept busy, tokio checks its timers between tasks, where it would not park). One
/// runtime at a time runs it.
pub async fn flusher() {
    HELD.flusher().await
}

/// Write the lines held, if any (a runtime has ended).
fn flush() {
    HELD.flush();
}

/// Write `bytes` to stderr after the lines held, with them.
pub fn to_stderr(bytes: &[u8]) -> std::io::Result<()> {
    HELD.to_stderr(bytes)
}

/// Writes the lines held when dropped: after a runtime, however it ends (the CLI's runtimes
/// hold one, dropped after them).
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        // (the runtime is gone: this thread writes its lines at once again)
        PARKS.set(false);
        flush();
    }
}

/// Lines made but not yet written to `out`, in the order they were made.
struct Held {
    /// Writes whole: with stderr's lock, so that nothing else on stderr comes between.
    out: fn(&[u8]) -> std::io::Result<()>,
    lines: Mutex<Vec<u8>>,
    /// Whether `lines` has anything in it: read without the lock (a worker's every park, and
    /// every event of tracing's, asks).
    any: AtomicBool,
    /// Told when a line is held where none was: [`Held::flusher`] starts its count.
    first: tokio::sync::Notify,
    /// Told when a worker runs out of work with lines held: [`Held::flusher`] writes them now.
    now: tokio::sync::Notify,
}

impl Held {
    const fn new(out: fn(&[u8]) -> std::io::Result<()>) -> Held {
        Held {
            out,
            lines: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
            first: tokio::sync::Notify::const_new(),
            now: tokio::sync::Notify::const_new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold `line`; write all that is held if that makes [`HELD_BYTES`].
    fn hold(&self, line: &[u8]) {
        let mut lines = self.lock();
        if lines.is_empty() {
            self.any.store(true, Ordering::Release);
            self.first.notify_one();
        }
        lines.extend_from_slice(line);
        if lines.len() >= HELD_BYTES {
            let _ = self.write_out(&mut lines);
        }
    }

    /// Write `lines` out and empty them (their room is kept for the next). What a failed write
    /// carried is lost, as a line written on its own would have been.
    fn write_out(&self, lines: &mut Vec<u8>) -> std::io::Result<()> {
        let written = (self.out)(lines);
        lines.clear();
        self.any.store(false, Ordering::Release);
        written
    }

    /// Write what is held unless another thread has the lock (a panic's hook: never wait).
    fn write_if_free(&self) {
        let mut lines = match self.lines.try_lock() {
            Ok(lines) => lines,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if !lines.is_empty() {
            let _ = self.write_out(&mut lines);
        }
    }

    fn flush(&self) {
        if self.any.load(Ordering::Acquire) {
            let mut lines = self.lock();
            if !lines.is_empty() {
                let _ = self.write_out(&mut lines);
            }
        }
    }

    fn to_stderr(&self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.any.load(Ordering::Acquire) {
            return (self.out)(bytes);
        }
        let mut lines = self.lock();
        lines.extend_from_slice(bytes);
        self.write_out(&mut lines)
    }

    /// A worker has run out of work: if lines are held, wake the flusher to write them.
    fn parked(&self) {
        if self.any.load(Ordering::Acquire) {
            self.now.notify_one();
        }
    }

    /// Write what is held when a worker runs out of work, or once it has been held for
    /// [`HELD_AT_MOST`], for as long as the runtime runs.
    async fn flusher(&self) {
        loop {
            tokio::select! {
                _ = self.now.notified() => {}
                _ = self.first.notified() => {
                    tokio::select! {
                        _ = self.now.notified() => {}
                        _ = tokio::time::sleep(HELD_AT_MOST) => {}
                    }
                }
            }
            self.flush();
        }
    }
}

/// stderr for tracing's events: each is written after the lines held ([`to_stderr`]).
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        to_stderr(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One line, as [`write`] writes it. `target` is a Rust path, which JSON writes as it is.
pub fn render(
    out: &mut Vec<u8>,
    json: bool,
    level: Level,
    target: &str,
    fill: impl FnOnce(&mut Fields<'_>),
) {
    debug_assert!(
        !target.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
        "{target:?} needs escaping"
    );
    // (INFO, the access log's level, in one piece with what surrounds it)
    let info = level == Level::INFO;
    let level = level.as_str();
    out.reserve(256);
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out);
        if info {
            out.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            out.extend_from_slice(b"\",\"level\":\"");
            out.extend_from_slice(level.as_bytes());
            out.push(b'"');
        }
    } else {
        push_timestamp(out);
        if info {
            out.extend_from_slice(b"  INFO ");
        } else {
            // (a space, and the level right-aligned in five)
            out.extend_from_slice(&b"      "[..6usize.saturating_sub(level.len())]);
            out.extend_from_slice(level.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(target.as_bytes());
        // (the space after the colon comes with the first field's name)
        out.push(b':');
    }
    let bare = out.len();
    let mut fields = Fields { out, json };
    fill(&mut fields);
    let out = fields.out;
    if json {
        out.extend_from_slice(b",\"target\":\"");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b"\"}\n");
    } else if out.len() == bare {
        out.extend_from_slice(b" \n");
    } else {
        out.push(b'\n');
    }
}

/// A field's name as it is written before its value: ` name=` in text, `,"name":` in JSON (and
/// `,"name":"` before a string). Made by [`key!`](crate::log::key) from the name, so that writing
/// one is a single copy.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    text: &'static str,
    json: &'static str,
    json_str: &'static str,
}

impl Key {
    #[doc(hidden)]
    pub const fn new(text: &'static str, json: &'static str, json_str: &'static str) -> Key {
        Key {
            text,
            json,
            json_str,
        }
    }
}

/// The [`Key`] of a field named by a string literal: `key!("status")`.
macro_rules! key {
    ($name:literal) => {
        $crate::log::Key::new(
            concat!(" ", $name, "="),
            concat!(",\"", $name, "\":"),
            concat!(",\"", $name, "\":\""),
        )
    };
}
pub(crate) use key;

/// The fields of a line: `key=value` in text, `"key":value` in JSON. A text value is written as
/// it is, so a caller passes only values that need no quoting (no spaces, quotes or controls);
/// in JSON a string is escaped, except one that the caller vouches needs none
/// ([`Fields::token`]).
pub struct Fields<'a> {
    out: &'a mut Vec<u8>,
    json: bool,
}

// (every method inlined: a field's name is then a constant, copied without a call)
impl Fields<'_> {
    #[inline(always)]
    fn key(&mut self, key: Key) {
        let name = if self.json { key.json } else { key.text };
        self.out.extend_from_slice(name.as_bytes());
    }

    /// A string.
    #[inline(always)]
    pub fn str(&mut self, key: Key, value: &str) {
        if self.json {
            self.out.extend_from_slice(key.json_str.as_bytes());
            push_json_body(self.out, value);
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(key.text.as_bytes());
            self.out.extend_from_slice(value.as_bytes());
        }
    }

    /// A string that needs no escaping in JSON either: no `"`, `\` or control character (an
    /// HTTP token, a name the code chose, a path already percent-encoded but for `\`...). A
    /// debug build checks.
    #[inline(always)]
    pub fn token(&mut self, key: Key, value: &str) {
        debug_assert!(
            !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
            "{value:?} needs escaping"
        );
        if self.json {
            self.out.extend_from_slice(key.json_str.as_bytes());
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(key.text.as_bytes());
            self.out.extend_from_slice(value.as_bytes());
        }
    }

    /// A number, given as its decimal digits.
    #[inline(always)]
    pub fn number(&mut self, key: Key, digits: &str) {
        self.key(key);
        self.out.extend_from_slice(digits.as_bytes());
    }

    #[inline(always)]
    pub fn u64(&mut self, key: Key, value: u64) {
        self.number(key, itoa::Buffer::new().format(value));
    }

    #[inline(always)]
    pub fn bool(&mut self, key: Key, value: bool) {
        self.number(key, if value { "true" } else { "false" });
    }

    /// Milliseconds with three decimals, from microseconds: `12.034`.
    #[inline(always)]
    pub fn millis(&mut self, key: Key, micros: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u16;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    /// An address, as a string.
    #[inline(always)]
    pub fn ip(&mut self, key: Key, ip: std::net::IpAddr) {
        match ip {
            // (digit by digit, in one piece: a quarter of what formatting each octet costs)
            std::net::IpAddr::V4(v4) => {
                self.key(key);
                let mut buf = [0u8; 17];
                let mut n = 0;
                if self.json {
                    buf[0] = b'"';
                    n = 1;
                }
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if o >= 100 {
                        buf[n] = b'0' + o / 100;
                        n += 1;
                    }
                    if o >= 10 {
                        buf[n] = b'0' + o / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + o % 10;
                    n += 1;
                }
                if self.json {
                    buf[n] = b'"';
                    n += 1;
                }
                self.out.extend_from_slice(&buf[..n]);
            }
            std::net::IpAddr::V6(_) => {
                let mut text = String::new();
                crate::util::push_ip(&mut text, ip);
                self.token(key, &text);
            }
        }
    }
}

/// `value` as a JSON string, quoted and escaped.
#[cfg(test)]
fn push_json_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    push_json_body(out, value);
    out.push(b'"');
}

/// `value` escaped as JSON requires, without the quotes.
fn push_json_body(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(b"0123456789abcdef"[usize::from(b >> 4)]);
            out.push(b"0123456789abcdef"[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// tracing's `SystemTime` timestamp (`2026-11-23T07:41:58.123456Z`), the date and time of day
/// made once a second (per thread) rather than formatted for every line.
fn push_timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            let mut text = String::with_capacity(32);
            let _ =
                tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut text));
            out.extend_from_slice(text.as_bytes());
            return;
        };
        if cached.0 != secs {
            let mut text = String::with_capacity(32);
            let _ =
                tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut text));
            // `YYYY-MM-DDTHH:MM:SS`, the part before the fraction.
            text.truncate(text.find('.').unwrap_or(text.len()));
            *cached = (secs, text);
        }
        out.extend_from_slice(cached.1.as_bytes());
        // The fraction, `.123456Z`, in one piece.
        let m = now.subsec_micros();
        let digit = |d: u32| b'0' + (d % 10) as u8;
        out.extend_from_slice(&[
            b'.',
            digit(m / 100_000),
            digit(m / 10_000),
            digit(m / 1000),
            digit(m / 100),
            digit(m / 10),
            digit(m),
            b'Z',
        ]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::time::SystemTime;

    /// The default filter: the gateway's warnings and information, the LDAP client's warnings
    /// (one per message from a directory it cannot place) not.
    #[test]
    fn the_default_filter_keeps_the_ldap_clients_warnings_out() {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let writer = {
            let out = out.clone();
            move || Captured(out.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
            .with_writer(writer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "ldap3::conn", "unmatched id: 7");
            tracing::error!(target: "ldap3::conn", "socket receive error");
            tracing::warn!(target: "faspex_gate::auth", "a directory warning");
            tracing::info!(target: "faspex_gate::app", "started");
        });
        let out = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(!out.contains("unmatched id"), "{out}");
        for kept in ["socket receive error", "a directory warning", "started"] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
    }

    /// A writer into a shared buffer.
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(json: bool) -> String {
        let mut out = Vec::new();
        render(&mut out, json, Level::INFO, "faspex_gate::access", |f| {
            f.token(key!("method"), "GET");
            f.str(key!("path"), "/a\\b\"c\u{1}");
            f.number(key!("status"), "200");
            f.u64(key!("bytes"), 1024);
            f.millis(key!("duration_ms"), 12_034);
            f.ip(key!("client_ip"), "192.0.2.7".parse().unwrap());
            f.bool(key!("complete"), true);
        });
        String::from_utf8(out).unwrap()
    }

    /// On a worker that never parks again, a held line waits for the flusher: no longer than
    /// `HELD_AT_MOST`. Past `HELD_BYTES` they go at once, and anything else written goes after
    /// them, in one piece with them.
    #[tokio::test(start_paused = true)]
    async fn held_lines_are_written_in_order_within_the_bounds() {
        static OUT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        static MINE: Held = Held::new(|b| {
            OUT.lock().unwrap().push(b.to_vec());
            Ok(())
        });
        let writes = || OUT.lock().unwrap().clone();
        let flusher = tokio::spawn(MINE.flusher());
        tokio::task::yield_now().await;
        for round in 0..2 {
            MINE.hold(b"one\n");
            tokio::time::sleep(HELD_AT_MOST / 2).await;
            MINE.hold(b"two\n");
            tokio::time::sleep(HELD_AT_MOST / 2 - Duration::from_millis(5)).await;
            assert!(
                MINE.any.load(Ordering::Acquire),
                "round {round}: still held"
            );
            assert_eq!(writes().len(), round);
            tokio::time::sleep(Duration::from_millis(10)).await;
            tokio::task::yield_now().await;
            assert!(!MINE.any.load(Ordering::Acquire), "round {round}: written");
            assert_eq!(writes().len(), round + 1);
            assert_eq!(
                writes()[round],
                b"one\ntwo\n",
                "round {round}: in one write"
            );
        }
        // HELD_BYTES held are written at once, without waiting.
        let line = [b'x'; 1024];
        for _ in 0..HELD_BYTES / 1024 - 1 {
            MINE.hold(&line);
        }
        assert!(MINE.any.load(Ordering::Acquire));
        MINE.hold(&line);
        assert!(!MINE.any.load(Ordering::Acquire), "written at HELD_BYTES");
        assert_eq!(writes().len(), 3);
        assert_eq!(writes()[2].len(), HELD_BYTES);
        // Anything else goes after what is held, in the same write; with nothing held, alone.
        MINE.hold(b"three\n");
        MINE.to_stderr(b"an event\n").unwrap();
        MINE.to_stderr(b"another\n").unwrap();
        assert_eq!(writes()[3], b"three\nan event\n");
        assert_eq!(writes()[4], b"another\n");
        // A park has the flusher write what is held at once, whether it waits for a first line
        // or counts towards its bound; with nothing held, a park asks nothing.
        tokio::time::sleep(HELD_AT_MOST * 2).await;
        MINE.parked();
        tokio::task::yield_now().await;
        assert_eq!(writes().len(), 5);
        for (round, line) in [&b"four\n"[..], &b"five\n"[..]].into_iter().enumerate() {
            MINE.hold(line);
            tokio::task::yield_now().await;
            assert!(
                MINE.any.load(Ordering::Acquire),
                "{round}: held until the park"
            );
            MINE.parked();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(
                !MINE.any.load(Ordering::Acquire),
                "{round}: written at the park"
            );
            assert_eq!(writes()[5 + round], line);
        }
        // A flush at exit writes what is held.
        MINE.hold(b"six\n");
        MINE.flush();
        assert_eq!(writes()[7], b"six\n");
        assert_eq!(writes().len(), 8);
        flusher.abort();
    }

    #[test]
    fn a_text_line_reads_as_tracings_own() {
        let l = line(false);
        let (head, fields) = l.split_once("  INFO faspex_gate::access: ").unwrap();
        assert_eq!(head.len(), "2026-11-23T07:41:58.123456Z".len(), "{l}");
        assert_eq!(
            fields,
            "method=GET path=/a\\b\"c\u{1} status=200 bytes=1024 duration_ms=12.034 \
             client_ip=192.0.2.7 complete=true\n"
        );
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let l = line(true);
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "timestamp",
            "level",
            "method",
            "path",
            "status",
            "bytes",
            "duration_ms",
            "client_ip",
            "complete",
            "target",
        ];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "faspex_gate::access");
        assert_eq!(v["path"], "/a\\b\"c\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1024);
        assert_eq!(v["duration_ms"], 12.034);
        assert_eq!(v["client_ip"], "192.0.2.7");
        assert_eq!(v["complete"], true);
    }

    #[test]
    fn every_level_reads_as_tracings_own() {
        for (level, text) in [
            (Level::TRACE, "Z TRACE t: a=1\n"),
            (Level::DEBUG, "Z DEBUG t: a=1\n"),
            (Level::INFO, "Z  INFO t: a=1\n"),
            (Level::WARN, "Z  WARN t: a=1\n"),
            (Level::ERROR, "Z ERROR t: a=1\n"),
        ] {
            let mut out = Vec::new();
            render(&mut out, false, level, "t", |f| f.number(key!("a"), "1"));
            let out = String::from_utf8(out).unwrap();
            assert!(out.ends_with(text), "{out:?}");
            let mut out = Vec::new();
            render(&mut out, true, level, "t", |f| f.number(key!("a"), "1"));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["level"], level.as_str());
            assert_eq!(v["a"], 1);
            assert_eq!(v["target"], "t");
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.20.30.40",
            "192.0.2.7",
            "255.255.255.255",
            "8.80.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            for json in [false, true] {
                let mut out = Vec::new();
                render(&mut out, json, Level::INFO, "t", |f| {
                    f.ip(key!("client_ip"), ip)
                });
                let out = String::from_utf8(out).unwrap();
                let want = if json {
                    format!("\"client_ip\":\"{ip}\"")
                } else {
                    format!(": client_ip={ip}\n")
                };
                assert!(out.contains(&want), "{out} lacks {want}");
            }
        }
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        for s in [
            "",
            "plain",
            "\"q\"",
            "back\\slash",
            "nl\ncr\rtab\t",
            "\u{0}\u{1f}\u{7f}",
            "é✓",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            let out = String::from_utf8(out).unwrap();
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s, "{out}");
            assert!(!out.bytes().any(|b| b < 0x20), "{out:?}");
        }
    }

    #[test]
    fn the_cached_timestamp_reads_as_tracings_own() {
        let theirs = || {
            let mut s = String::new();
            SystemTime.format_time(&mut Writer::new(&mut s)).unwrap();
            s
        };
        for _ in 0..3 {
            let before = theirs();
            let mut ours = Vec::new();
            push_timestamp(&mut ours);
            let ours = String::from_utf8(ours).unwrap();
            let after = theirs();
            assert_eq!(ours.len(), before.len(), "{ours} against {before}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            assert!(ours[20..26].bytes().all(|b| b.is_ascii_digit()), "{ours}");
            assert!(
                ours[..19] == before[..19] || ours[..19] == after[..19],
                "{ours} against {before} and {after}"
            );
            assert!(before <= ours && ours <= after, "{before} {ours} {after}");
        }
    }
}
