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

use std::fmt::{self, Write as _};
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
    /// The line: `key=value` pairs, as tracing prints fields.
    pub fn line(&self, bytes: u64, complete: bool) -> String {
        let micros = self.started.elapsed().as_micros();
        let mut line = String::with_capacity(128 + self.path.len());
        let _ = write!(
            line,
            "method={} route={} path={} status={} bytes={bytes} duration_ms={}.{:03} \
             client_ip={} complete={complete}",
            self.method,
            self.route.map(Route::as_str).unwrap_or("-"),
            utf8_percent_encode(&self.path, PATH_ESCAPES),
            self.status.as_u16(),
            micros / 1000,
            micros % 1000,
            self.client_ip,
        );
        line
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
        SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} {TARGET}: ", meta.level().as_str())?;
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
