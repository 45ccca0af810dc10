//! The access log: the fields of the line written for every request, and writing it.
//!
//! A line's fields are `method`, `route`, `path`, `status`, then `bytes` (or, for a tunnel,
//! `tunnel`, `bytes_up` and `bytes_down`), `duration_ms`, `client_ip` and `complete`, under the
//! target [`TARGET`] at level INFO. [`crate::log`] writes them in `log.format`: as tracing's text
//! format would (`<time>  INFO faspex_gate::access: method=GET …`), or as one JSON object with
//! the same names. `RUST_LOG` filters the target as it filters any other.
//!
//! The line never holds credentials, cookies, tokens or the query string (passcodes and
//! transfer tokens travel there). The path is written with spaces, controls, `%`, `"` and
//! non-ASCII percent-encoded, so that no request can forge a field or a line in either format.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use tracing::Level;

use super::classify::Route;
use crate::log::{key, Fields};

/// The access log's tracing target.
pub const TARGET: &str = crate::log::ACCESS_TARGET;

/// Bytes of the (decoded, normalised) path that the line percent-encodes again.
const PATH_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"');

/// The bytes of a path that the line writes as they are, in either format: printable ASCII but
/// for space, `%`, `"` and `\` (a table: one look per byte).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'!';
    while b < 0x7f {
        table[b as usize] = b != b'%' && b != b'"' && b != b'\\';
        b += 1;
    }
    table
};

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
    /// Write the line of a request whose response sent `bytes` (when `RUST_LOG` lets it through).
    pub fn log(&self, bytes: u64, complete: bool) {
        if crate::log::access_enabled() {
            let micros = self.micros();
            crate::log::write(Level::INFO, TARGET, |f| {
                self.fields(f, Moved::Body(bytes), micros, complete)
            });
        }
    }

    /// Write the line of a tunnel (an upgraded connection) when it closes: its bytes each way,
    /// and how long it was open, from the request's arrival.
    pub fn log_tunnel(&self, up: u64, down: u64, complete: bool) {
        if crate::log::access_enabled() {
            let micros = self.micros();
            crate::log::write(Level::INFO, TARGET, |f| {
                self.fields(f, Moved::Tunnel { up, down }, micros, complete)
            });
        }
    }

    fn micros(&self) -> u64 {
        // (as `as_micros`, saturating, without its 128-bit arithmetic)
        let elapsed = self.started.elapsed();
        elapsed
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(elapsed.subsec_micros()))
    }

    fn fields(&self, f: &mut Fields<'_>, moved: Moved, micros: u64, complete: bool) {
        // (an HTTP method is a token: no quote, backslash or control)
        f.token(key!("method"), self.method.as_str());
        f.token(key!("route"), self.route.map(Route::as_str).unwrap_or("-"));
        // Nearly every path has nothing to encode or escape: one look at its bytes says so.
        let plain = self.path.bytes().all(|b| PLAIN[usize::from(b)]);
        if plain {
            f.token(key!("path"), &self.path);
        } else {
            let path: Cow<'_, str> = utf8_percent_encode(&self.path, PATH_ESCAPES).into();
            f.str(key!("path"), &path);
        }
        f.number(key!("status"), self.status.as_str());
        match moved {
            Moved::Body(bytes) => f.u64(key!("bytes"), bytes),
            Moved::Tunnel { up, down } => {
                f.bool(key!("tunnel"), true);
                f.u64(key!("bytes_up"), up);
                f.u64(key!("bytes_down"), down);
            }
        }
        f.millis(key!("duration_ms"), micros);
        f.ip(key!("client_ip"), self.client_ip);
        f.bool(key!("complete"), complete);
    }
}

/// What a request moved: a response body, or a tunnel's bytes each way.
enum Moved {
    Body(u64),
    Tunnel { up: u64, down: u64 },
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

    /// The line's fields as text (what follows `faspex_gate::access: `), or as JSON.
    fn render(r: &AccessRecord, moved: Moved, complete: bool, json: bool) -> String {
        let mut out = Vec::new();
        let micros = r.micros();
        crate::log::render(&mut out, json, Level::INFO, TARGET, |f| {
            r.fields(f, moved, micros, complete)
        });
        let out = String::from_utf8(out).unwrap();
        if json {
            out
        } else {
            let (_, fields) = out.split_once(": ").unwrap();
            fields.trim_end_matches('\n').to_owned()
        }
    }

    impl AccessRecord {
        fn line(&self, bytes: u64, complete: bool) -> String {
            render(self, Moved::Body(bytes), complete, false)
        }

        fn tunnel_line(&self, up: u64, down: u64, complete: bool) -> String {
            render(self, Moved::Tunnel { up, down }, complete, false)
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

    #[test]
    fn plain_bytes_are_printable_ascii_but_space_percent_quote_and_backslash() {
        for b in 0..=255u8 {
            let want = b > b' ' && b < 0x7f && b != b'%' && b != b'"' && b != b'\\';
            assert_eq!(PLAIN[usize::from(b)], want, "{b:#x}");
        }
    }

    #[test]
    fn a_json_line_has_the_same_fields_as_values() {
        let mut r = record("/aspera/http-gwy/ws\\x\"y");
        r.status = StatusCode::SWITCHING_PROTOCOLS;
        let line = render(&r, Moved::Tunnel { up: 10, down: 2048 }, false, true);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["route"], "protected");
        assert_eq!(v["path"], "/aspera/http-gwy/ws\\x%22y");
        assert_eq!(v["status"], 101);
        assert_eq!(v["tunnel"], true);
        assert_eq!(v["bytes_up"], 10);
        assert_eq!(v["bytes_down"], 2048);
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(v["client_ip"], "192.0.2.7");
        assert_eq!(v["complete"], false);
        assert_eq!(v.as_object().unwrap().len(), 13, "{line}");
    }
}
