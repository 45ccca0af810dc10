//! The service log on stderr, as `log.format` says: `text` (tracing's human-readable lines,
//! `key=value` fields) or `json` (one JSON object per line). README.md ("Logs") lists the fields.
//!
//! tracing's own events are written by tracing-subscriber's formatters: `Full` for text, and for
//! JSON its `Json` format flattened, so that every line has the same shape: `timestamp`, `level`,
//! the event's fields (`message` among them), `target`. `RUST_LOG` filters by target and level
//! (default `info`).
//!
//! The access log, a line for every request, has a writer of its own ([`write`] with
//! [`Fields`]): the same line as those formatters would make from its fields, built with plain
//! pushes in a buffer kept per thread and written with one `write` on stderr, without the
//! formatting machinery, the per-field dispatch and the allocations, which cost several hundred
//! instructions per request (`benches/instructions.sh`). Its callers ask
//! `tracing::enabled!` first, so `RUST_LOG` filters it as it filters the rest.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::config::LogFormat;

/// Whether lines are JSON (`log.format = "json"`); set once, at start.
static JSON: AtomicBool = AtomicBool::new(false);

/// Install the service log in `format`: tracing's subscriber on stderr, and the format that
/// [`write`] uses. A second call changes nothing but [`write`]'s format.
pub fn init(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Text => {
            use std::io::IsTerminal;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// Write one line of `target` at `level` to stderr, in the format [`init`] set, with the fields
/// `fill` adds. The line is made in a buffer kept per thread and written whole, in one `write`.
pub fn write(level: Level, target: &'static str, fill: impl FnOnce(&mut Fields<'_>)) {
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
    }
    let json = JSON.load(Ordering::Relaxed);
    LINE.with(|cell| {
        let mut fresh = String::new();
        let mut kept = cell.try_borrow_mut();
        let out = match kept.as_deref_mut() {
            Ok(kept) => kept,
            Err(_) => &mut fresh,
        };
        out.clear();
        render(out, json, level, target, fill);
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    });
}

/// One line, as [`write`] writes it.
pub fn render(
    out: &mut String,
    json: bool,
    level: Level,
    target: &str,
    fill: impl FnOnce(&mut Fields<'_>),
) {
    let level = level.as_str();
    out.reserve(256);
    if json {
        out.push_str("{\"timestamp\":\"");
        push_timestamp(out);
        out.push_str("\",\"level\":\"");
        out.push_str(level);
        out.push('"');
    } else {
        push_timestamp(out);
        out.push(' ');
        for _ in level.len()..5 {
            out.push(' ');
        }
        out.push_str(level);
        out.push(' ');
        out.push_str(target);
        out.push_str(": ");
    }
    let mut fields = Fields {
        out,
        json,
        first: !json,
    };
    fill(&mut fields);
    let out = fields.out;
    if json {
        out.push_str(",\"target\":");
        push_json_str(out, target);
        out.push_str("}\n");
    } else {
        out.push('\n');
    }
}

/// A field's name as it is written before its value: ` name=` in text, `,"name":` in JSON. Made
/// by [`key!`](crate::log::key) from the name, so that writing one is a single copy.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    text: &'static str,
    json: &'static str,
}

impl Key {
    #[doc(hidden)]
    pub const fn new(text: &'static str, json: &'static str) -> Key {
        Key { text, json }
    }
}

/// The [`Key`] of a field named by a string literal: `key!("status")`.
macro_rules! key {
    ($name:literal) => {
        $crate::log::Key::new(concat!(" ", $name, "="), concat!(",\"", $name, "\":"))
    };
}
pub(crate) use key;

/// The fields of a line: `key=value` in text, `"key":value` in JSON. A text value is written as
/// it is, so a caller passes only values that need no quoting (no spaces, quotes or controls);
/// in JSON a string is escaped, except one that the caller vouches needs none
/// ([`Fields::token`]).
pub struct Fields<'a> {
    out: &'a mut String,
    json: bool,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: Key) {
        if self.json {
            self.out.push_str(key.json);
        } else if self.first {
            self.first = false;
            self.out.push_str(&key.text[1..]);
        } else {
            self.out.push_str(key.text);
        }
    }

    /// A string.
    pub fn str(&mut self, key: Key, value: &str) {
        self.key(key);
        if self.json {
            push_json_str(self.out, value);
        } else {
            self.out.push_str(value);
        }
    }

    /// A string that needs no escaping in JSON either: no `"`, `\` or control character (an
    /// HTTP token, a name the code chose, a path already percent-encoded but for `\`...). A
    /// debug build checks.
    pub fn token(&mut self, key: Key, value: &str) {
        debug_assert!(
            !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
            "{value:?} needs escaping"
        );
        self.key(key);
        if self.json {
            self.out.push('"');
            self.out.push_str(value);
            self.out.push('"');
        } else {
            self.out.push_str(value);
        }
    }

    /// A number, given as its decimal digits.
    pub fn number(&mut self, key: Key, digits: &str) {
        self.key(key);
        self.out.push_str(digits);
    }

    pub fn u64(&mut self, key: Key, value: u64) {
        self.number(key, itoa::Buffer::new().format(value));
    }

    pub fn bool(&mut self, key: Key, value: bool) {
        self.number(key, if value { "true" } else { "false" });
    }

    /// Milliseconds with three decimals, from microseconds: `12.034`.
    pub fn millis(&mut self, key: Key, micros: u64) {
        self.key(key);
        self.out.push_str(itoa::Buffer::new().format(micros / 1000));
        let frac = (micros % 1000) as u16;
        self.out.push('.');
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            self.out.push(char::from(b'0' + d as u8));
        }
    }

    /// An address, as a string.
    pub fn ip(&mut self, key: Key, ip: std::net::IpAddr) {
        self.key(key);
        if self.json {
            self.out.push('"');
        }
        match ip {
            // (digit by digit: a quarter of what formatting each octet costs)
            std::net::IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push('.');
                    }
                    if o >= 100 {
                        self.out.push(char::from(b'0' + o / 100));
                    }
                    if o >= 10 {
                        self.out.push(char::from(b'0' + o / 10 % 10));
                    }
                    self.out.push(char::from(b'0' + o % 10));
                }
            }
            std::net::IpAddr::V6(_) => crate::util::push_ip(self.out, ip),
        }
        if self.json {
            self.out.push('"');
        }
    }
}

/// `value` as a JSON string, quoted and escaped.
fn push_json_str(out: &mut String, value: &str) {
    if !value
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// tracing's `SystemTime` timestamp (`2026-11-23T07:41:58.123456Z`), the date and time of day
/// made once a second (per thread) rather than formatted for every line.
fn push_timestamp(out: &mut String) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            let _ = tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(out));
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
        out.push_str(&cached.1);
        let micros = now.subsec_micros();
        out.push('.');
        let mut div = 100_000;
        while div > 0 {
            out.push(char::from(b'0' + (micros / div % 10) as u8));
            div /= 10;
        }
        out.push('Z');
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::time::SystemTime;

    fn line(json: bool) -> String {
        let mut out = String::new();
        render(&mut out, json, Level::INFO, "faspex_gate::access", |f| {
            f.token(key!("method"), "GET");
            f.str(key!("path"), "/a\\b\"c\u{1}");
            f.number(key!("status"), "200");
            f.u64(key!("bytes"), 1024);
            f.millis(key!("duration_ms"), 12_034);
            f.ip(key!("client_ip"), "192.0.2.7".parse().unwrap());
            f.bool(key!("complete"), true);
        });
        out
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
                let mut out = String::new();
                render(&mut out, json, Level::INFO, "t", |f| {
                    f.ip(key!("client_ip"), ip)
                });
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
            let mut out = String::new();
            push_json_str(&mut out, s);
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
            let mut ours = String::new();
            push_timestamp(&mut ours);
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
