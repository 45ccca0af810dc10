//! The access log: what one line says about a request, and how the line reaches stderr.
//!
//! A line is written for every request, so it is made in one string (tracing's per-field
//! formatting and escaping cost about a tenth of a small request's instructions) and handed to
//! tracing as the field `line` of an event with target [`TARGET`]. [`LogFormat`] writes such an
//! event as tracing's own text format would (`<time>  INFO faspex_gate::access: method=GET …`),
//! and every other event with tracing's format unchanged. `RUST_LOG` filters the target as
//! before.
//!
//! The line never holds credentials, cookies, tokens or the query string (passcodes and
//! transfer tokens travel there), and nothing in it needs escaping: the path is written with
//! spaces, controls, `%`, `"` and non-ASCII percent-encoded, so no request can forge a field or
//! a line.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use super::classify::Route;

/// The access log's tracing target.
pub const TARGET: &str = "faspex_gate::access";

/// Bytes of the (decoded, normalised) path that the line percent-encodes again.
const PATH_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"');

/// What the access-log line says about one request.
pub(crate) struct AccessRecord {
    pub method: Method,
    pub route: Option<Route>,
    pub path: String,
    pub status: StatusCode,
    pub client_ip: IpAddr,
    pub started: Instant,
}

impl AccessRecord {
    /// The line: `key=value` pairs, as tracing prints fields. Built with plain pushes: the
    /// formatting machinery (`write!`) cost a third of the line's instructions.
    pub fn line(&self, bytes: u64, complete: bool) -> String {
        self.line_of(Moved::Body(bytes), complete)
    }

    /// The line of a tunnel (an upgraded connection), written when it closes: its bytes each
    /// way and how long it was open, from the request's arrival.
    pub fn tunnel_line(&self, up: u64, down: u64, complete: bool) -> String {
        self.line_of(Moved::Tunnel { up, down }, complete)
    }

    fn line_of(&self, moved: Moved, complete: bool) -> String {
        let micros = self.started.elapsed().as_micros();
        let mut digits = itoa::Buffer::new();
        let mut line = String::with_capacity(128 + self.path.len());
        line.push_str("method=");
        line.push_str(self.method.as_str());
        line.push_str(" route=");
        line.push_str(self.route.map(Route::as_str).unwrap_or("-"));
        line.push_str(" path=");
        for piece in utf8_percent_encode(&self.path, PATH_ESCAPES) {
            line.push_str(piece);
        }
        line.push_str(" status=");
        line.push_str(self.status.as_str());
        match moved {
            Moved::Body(bytes) => {
                line.push_str(" bytes=");
                line.push_str(digits.format(bytes));
            }
            Moved::Tunnel { up, down } => {
                line.push_str(" tunnel=true bytes_up=");
                line.push_str(digits.format(up));
                line.push_str(" bytes_down=");
                line.push_str(digits.format(down));
            }
        }
        line.push_str(" duration_ms=");
        line.push_str(digits.format(micros / 1000));
        let frac = (micros % 1000) as u16;
        line.push('.');
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            line.push(char::from(b'0' + d as u8));
        }
        line.push_str(" client_ip=");
        crate::util::push_ip(&mut line, self.client_ip);
        line.push_str(if complete {
            " complete=true"
        } else {
            " complete=false"
        });
        line
    }
}

/// What a request moved: a response body, or a tunnel's bytes each way.
enum Moved {
    Body(u64),
    Tunnel { up: u64, down: u64 },
}

/// tracing's `SystemTime` timestamp (`2026-11-23T07:41:58.123456Z`), with the date and time of
/// day made once a second rather than formatted for every line.
struct CachedTime;

impl CachedTime {
    fn push_now(out: &mut String) {
        use std::cell::RefCell;
        thread_local! {
            static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        SECOND.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.0 != secs {
                let mut text = String::with_capacity(20);
                let _ = tracing_subscriber::fmt::time::SystemTime
                    .format_time(&mut Writer::new(&mut text));
                // `YYYY-MM-DDTHH:MM:SS`, the part before the fraction.
                text.truncate(text.find('.').unwrap_or(text.len()));
                *cached = (secs, text);
            }
            out.push_str(&cached.1);
        });
        let micros = now.subsec_micros();
        out.push('.');
        let mut div = 100_000;
        while div > 0 {
            out.push(char::from(b'0' + (micros / div % 10) as u8));
            div /= 10;
        }
        out.push('Z');
    }
}

/// tracing's full text format, except that an access-log event's `line` is written as it is.
#[derive(Default)]
pub struct LogFormat {
    full: format::Format<format::Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET || meta.fields().field("line").is_none() {
            return self.full.format_event(ctx, writer, event);
        }
        let mut head = String::with_capacity(64);
        CachedTime::push_now(&mut head);
        head.push(' ');
        let level = meta.level().as_str();
        for _ in level.len()..5 {
            head.push(' ');
        }
        head.push_str(level);
        head.push(' ');
        head.push_str(TARGET);
        head.push_str(": ");
        writer.write_str(&head)?;
        let mut line = LineField {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut line);
        line.result?;
        writer.write_char('\n')
    }
}

/// Writes the `line` field's text and ignores any other field.
struct LineField<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Visit for LineField<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "line" {
            self.result = self.writer.write_str(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> AccessRecord {
        AccessRecord {
            method: Method::GET,
            route: Some(Route::Protected),
            path: path.into(),
            status: StatusCode::OK,
            client_ip: "192.0.2.7".parse().unwrap(),
            started: Instant::now(),
        }
    }

    #[test]
    fn a_line_has_every_field() {
        let line = record("/aspera/faspex/inbox").line(1024, true);
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "method=GET");
        assert_eq!(fields[1], "route=protected");
        assert_eq!(fields[2], "path=/aspera/faspex/inbox");
        assert_eq!(fields[3], "status=200");
        assert_eq!(fields[4], "bytes=1024");
        let ms = fields[5].strip_prefix("duration_ms=").unwrap();
        assert!(ms.len() >= 5 && ms.as_bytes()[ms.len() - 4] == b'.', "{ms}");
        assert_eq!(fields[6], "client_ip=192.0.2.7");
        assert_eq!(fields[7], "complete=true");
        assert_eq!(fields.len(), 8);
    }

    #[test]
    fn a_tunnel_line_has_its_bytes_each_way() {
        let mut r = record("/aspera/http-gwy/ws");
        r.status = StatusCode::SWITCHING_PROTOCOLS;
        let line = r.tunnel_line(10, 2048, false);
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[3], "status=101");
        assert_eq!(fields[4], "tunnel=true");
        assert_eq!(fields[5], "bytes_up=10");
        assert_eq!(fields[6], "bytes_down=2048");
        assert!(fields[7].starts_with("duration_ms="));
        assert_eq!(fields[9], "complete=false");
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
            CachedTime::push_now(&mut ours);
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

    #[test]
    fn a_line_counts_milliseconds_with_three_decimals() {
        let mut r = record("/");
        r.started = Instant::now() - std::time::Duration::from_micros(12_034);
        let line = r.line(0, false);
        let ms = line
            .split(' ')
            .find_map(|f| f.strip_prefix("duration_ms="))
            .unwrap();
        let (whole, frac) = ms.split_once('.').unwrap();
        assert!(whole.parse::<u64>().unwrap() >= 12, "{line}");
        assert_eq!(frac.len(), 3, "{line}");
        assert!(
            line.ends_with(" client_ip=192.0.2.7 complete=false"),
            "{line}"
        );
    }

    #[test]
    fn a_path_cannot_forge_fields_or_lines() {
        // What a client can get into the decoded path: %20, %25, %22, and non-ASCII (the
        // classifier refuses controls, but the line does not rely on that).
        let line = record("/a b status=500 \"x\" 100% é\u{9b}[31m\n").line(0, false);
        assert!(
            line.starts_with(
                "method=GET route=protected path=/a%20b%20status=500%20%22x%22%20100%25%20%C3%A9%C2%9B[31m%0A status=200 "
            ),
            "{line}"
        );
        assert_eq!(line.split(' ').count(), 8, "{line}");
        assert!(!line.contains('\n'));
    }
}
