//! Faspex 4 as the real Rails reads it: an oracle we did not write.
//!
//! `tests/rails/oracle.rb` runs Debian's Rails 6.1 router and Rack 2.2 parameter parser over
//! Faspex 4's routes (declared as a Rails 3 application declares them) and says, for a request,
//! which action Rails runs, with which method, and what `params` holds, in two readings: Rails 6.1
//! on Rack 2.2 (`modern`), and Rails 3 on Rack 1 (`legacy`: bodies also split on `;`, XML bodies
//! parsed into params). A request whose path holds escapes or dot segments is also asked as a
//! front end that decodes them would hand it to Rails.
//!
//! * [`the_oracle_knows_rails`]: the facts the gateway is built on, asked of the real Rails.
//! * [`the_emulator_routes_like_rails`] and [`the_emulator_reads_params_like_rails`]: the emulator's
//!   reading of a request (`faspex_emulator::rails`) is the oracle's legacy reading.
//! * [`the_gateway_never_lets_rails_see_an_unchecked_credential`]: a time-boxed property test
//!   (`FASPEX_GATE_PROPTEST_SECONDS`, default 60; `FASPEX_GATE_PROPTEST_SEED`, fixed by default,
//!   `random` for a fresh one; `FASPEX_GATE_PROPTEST_KEEP_GOING=1` lists every distinct failure
//!   instead of stopping at the first) that generates requests in many Rack spellings and holds
//!   the gateway's planner (`faspex_gate::proxy::gate`, behind the one adapter `gateway_plan`)
//!   against every reading of the oracle, and the emulator's reading against the oracle's.
//!
//! Ruby, ruby-actionpack and ruby-rack are test dependencies (`.ci/test` installs them): without
//! them these tests fail, they never skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use faspex_emulator::rails::{self as emulated, RailsRequest};
use faspex_gate::proxy::gate::Plan;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde::Deserialize;
use serde_json::{json, Map, Value};

// ------------------------------------------------------------------------------------------------
// The oracle process

/// `ruby tests/rails/oracle.rb`, started once for the whole test binary.
struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the oracle printed on stderr (its load errors, above all).
    stderr: Arc<Mutex<String>>,
    /// `{"ruby": …, "rails": …, "rack": …}`.
    version: Value,
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ORACLE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rails/oracle.rb");

impl Oracle {
    fn start() -> Oracle {
        let mut child = Command::new("ruby")
            .arg(ORACLE_SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `ruby {ORACLE_SCRIPT}`: {e}. The Rails oracle needs ruby, \
                     ruby-actionpack and ruby-rack (Debian packages; .ci/test installs them)"
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut text = sink.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if text.len() > 64 * 1024 {
                    let cut = text.len() - 32 * 1024;
                    let cut = (cut..text.len())
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    text.drain(..cut);
                }
            }
        });
        let mut oracle = Oracle {
            child,
            stdin,
            stdout,
            stderr,
            version: Value::Null,
        };
        let version = oracle.call(&json!({"version": true}));
        assert!(
            version["rails"].is_string() && version["rack"].is_string(),
            "the Rails oracle answered {version} to a version request"
        );
        eprintln!(
            "rails oracle: Ruby {}, Rails (actionpack) {}, Rack {}",
            version["ruby"].as_str().unwrap_or("?"),
            version["rails"].as_str().unwrap_or("?"),
            version["rack"].as_str().unwrap_or("?"),
        );
        oracle.version = version;
        oracle
    }

    /// One request line, one answer line.
    fn call(&mut self, request: &Value) -> Value {
        let sent = writeln!(self.stdin, "{request}").and_then(|()| self.stdin.flush());
        let mut line = String::new();
        let read = sent.and_then(|()| self.stdout.read_line(&mut line));
        if !matches!(read, Ok(n) if n > 0) {
            // Give the stderr reader a moment to collect the reason.
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "the Rails oracle (ruby {ORACLE_SCRIPT}) exited ({read:?}); it needs ruby, \
                 ruby-actionpack and ruby-rack. Its stderr:\n{}",
                self.stderr.lock().unwrap_or_else(PoisonError::into_inner)
            );
        }
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the oracle's answer is not JSON ({e}): {line}"));
        if let Some(fatal) = answer.get("fatal") {
            panic!("the oracle could not read {request}: {fatal}");
        }
        answer
    }
}

/// The one oracle of this test binary.
fn oracle() -> MutexGuard<'static, Oracle> {
    static ORACLE: OnceLock<Mutex<Oracle>> = OnceLock::new();
    ORACLE
        .get_or_init(|| Mutex::new(Oracle::start()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------------
// Requests and readings

/// A request as it reaches Faspex.
#[derive(Clone, Debug, PartialEq)]
struct Req {
    method: String,
    /// Path and query, as on the request line.
    target: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// `X-HTTP-Method-Override`.
    method_override: Option<String>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.into(),
            target: target.into(),
            content_type: None,
            content_encoding: None,
            method_override: None,
            body: Vec::new(),
        }
    }

    fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = content_type.map(str::to_owned);
        self.body = body.into();
        self
    }

    fn overriding(mut self, method: &str) -> Req {
        self.method_override = Some(method.into());
        self
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether a front end would hand Rails another path than the one on the request line.
    fn front_end_changes_path(&self) -> bool {
        let path = self.path();
        path.contains('%')
            || path
                .split('/')
                .any(|segment| segment == "." || segment == "..")
    }

    fn oracle_request(&self, decode_path: bool) -> Value {
        let mut headers = Map::new();
        if let Some(ct) = &self.content_type {
            headers.insert("Content-Type".into(), ct.clone().into());
        }
        if let Some(ce) = &self.content_encoding {
            headers.insert("Content-Encoding".into(), ce.clone().into());
        }
        if let Some(m) = &self.method_override {
            headers.insert("X-HTTP-Method-Override".into(), m.clone().into());
        }
        json!({
            "method": self.method,
            "target": self.target,
            "headers": headers,
            "body_b64": B64.encode(&self.body),
            "decode_path": decode_path,
        })
    }

    /// The emulator's reading.
    fn emulate(&self) -> emulated::Reading {
        emulated::read(&RailsRequest {
            method: &self.method,
            target: &self.target,
            content_type: self.content_type.as_deref(),
            method_override: self.method_override.as_deref(),
            body: &self.body,
        })
    }
}

impl std::fmt::Display for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {}", self.method, self.target)?;
        if let Some(ct) = &self.content_type {
            writeln!(f, "Content-Type: {ct}")?;
        }
        if let Some(ce) = &self.content_encoding {
            writeln!(f, "Content-Encoding: {ce}")?;
        }
        if let Some(m) = &self.method_override {
            writeln!(f, "X-HTTP-Method-Override: {m}")?;
        }
        write!(
            f,
            "\n{}",
            String::from_utf8_lossy(&self.body).escape_debug()
        )
    }
}

/// One reading of a request by Rails.
#[derive(Clone, Debug, Deserialize, PartialEq)]
struct Reading {
    /// "controller#action", `None` when Rails ran no action.
    action: Option<String>,
    /// The method the action saw.
    method: Option<String>,
    params: Option<Value>,
    /// What Rails or Rack raised.
    error: Option<String>,
}

impl Reading {
    /// The params read, which this reading must have.
    fn unwrap_params(&self) -> &Value {
        self.params.as_ref().unwrap()
    }
}

/// The oracle's answer: the Rails 6.1 reading, and the Rails 3 one.
#[derive(Clone, Debug, Deserialize)]
struct Answer {
    #[serde(flatten)]
    modern: Reading,
    legacy: Reading,
}

/// Every way Rails may read one request: both readings of the path as sent and, when a front end
/// would change it, of the path as decoded.
#[derive(Clone, Debug)]
struct Readings {
    raw: Answer,
    decoded: Option<Answer>,
}

impl Readings {
    fn all(&self) -> Vec<(&'static str, &Reading)> {
        let mut all = vec![("rails6", &self.raw.modern), ("rails3", &self.raw.legacy)];
        if let Some(decoded) = &self.decoded {
            all.push(("rails6 decoded path", &decoded.modern));
            all.push(("rails3 decoded path", &decoded.legacy));
        }
        all
    }

    /// The reading the emulator implements: Rails 3, with the front end's path, or the path as
    /// sent when only that one reaches an action (`/received/a%2Fb`).
    fn emulated(&self) -> &Reading {
        let not_found = |r: &Reading| r.action.as_deref() == Some("errors#not_found");
        match &self.decoded {
            Some(decoded) if not_found(&decoded.legacy) && !not_found(&self.raw.legacy) => {
                &self.raw.legacy
            }
            Some(decoded) => &decoded.legacy,
            None => &self.raw.legacy,
        }
    }
}

impl std::fmt::Display for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, reading) in self.all() {
            writeln!(
                f,
                "  {name}: action {:?}, method {:?}, error {:?}\n    params {}",
                reading.action,
                reading.method,
                reading.error,
                reading.params.as_ref().map_or("-".into(), Value::to_string)
            )?;
        }
        Ok(())
    }
}

fn ask_with(oracle: &mut Oracle, req: &Req) -> Readings {
    let parse = |v: Value| -> Answer {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("oracle answer {v}: {e}"))
    };
    let raw = parse(oracle.call(&req.oracle_request(false)));
    let decoded = req
        .front_end_changes_path()
        .then(|| parse(oracle.call(&req.oracle_request(true))));
    Readings { raw, decoded }
}

fn ask(req: &Req) -> Readings {
    ask_with(&mut oracle(), req)
}

/// The emulator's reading in the oracle's terms.
fn emulated_reading(req: &Req) -> Reading {
    let reading = req.emulate();
    let (params, error) = match reading.params {
        Ok(params) => (Some(Value::Object(params)), None),
        Err(error) => (None, Some(error.to_string())),
    };
    Reading {
        action: reading.action.map(|a| a.name().to_owned()),
        method: reading.action.map(|_| reading.method),
        params: if reading.action.is_some() {
            params
        } else {
            None
        },
        error,
    }
}

/// Where the emulator's reading differs from the oracle's Rails 3 reading, if anywhere.
fn emulator_divergence(req: &Req, readings: &Readings) -> Option<String> {
    let rails = readings.emulated();
    let mine = emulated_reading(req);
    if rails.action != mine.action {
        return Some(format!(
            "action: rails {:?}, emulator {:?}",
            rails.action, mine.action
        ));
    }
    rails.action.as_ref()?;
    if rails.error.is_some() != mine.error.is_some() {
        return Some(format!(
            "error: rails {:?}, emulator {:?}",
            rails.error, mine.error
        ));
    }
    if rails.error.is_some() {
        return None;
    }
    if rails.method != mine.method {
        return Some(format!(
            "method: rails {:?}, emulator {:?}",
            rails.method, mine.method
        ));
    }
    if rails.params != mine.params {
        return Some(format!(
            "params: rails {}, emulator {}",
            rails.params.as_ref().map_or("-".into(), Value::to_string),
            mine.params.as_ref().map_or("-".into(), Value::to_string)
        ));
    }
    None
}

// ------------------------------------------------------------------------------------------------
// Facts about Rails, and the emulator against them

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// Spellings of the login path that Rails routes to the login action: both the oracle's own test
/// and the emulator's routing test try each.
const LOGIN_SPELLINGS: [&str; 7] = [
    "/aspera/faspex/login",
    "/aspera/faspex/login.json/",
    "/aspera/faspex/login.x-y",
    "/aspera/faspex/login.a_b",
    "/aspera/faspex/login.html/",
    "//aspera/faspex/login",
    "/aspera/faspex/login/",
];

/// What the real Rails does with the spellings the gateway must know about.
#[test]
fn the_oracle_knows_rails() {
    let action = |method: &str, target: &str| ask(&Req::new(method, target)).raw.modern.action;
    let login = Some("sessions#create".to_owned());
    let not_found = Some("errors#not_found".to_owned());
    let more = ["/aspera/faspex/login.json", "/aspera//faspex/login"];
    for target in LOGIN_SPELLINGS.into_iter().chain(more) {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            assert_eq!(action(method, target), login, "{method} {target}");
        }
    }
    for target in [
        "/aspera/faspex/Login",
        "/aspera/faspex/login.",
        "/aspera/faspex/login.a.b",
        "/aspera/faspex/%6cogin",
        "/aspera/faspex/login%2Ejson",
    ] {
        assert_eq!(action("POST", target), not_found, "POST {target}");
    }
    assert_eq!(
        action("POST", "/aspera/faspex/auth/oauth2/token.json/"),
        Some("oauth2#token".into())
    );

    // A GET with credentials in the query runs the login action with them.
    let r = ask(&Req::new(
        "GET",
        "/aspera/faspex/login?user[name]=ann&user[password]=apple",
    ));
    assert_eq!(r.raw.modern.unwrap_params()["user"]["password"], "apple");
    // The query replaces the body's whole `user` hash: the body's password is not read.
    let r = ask(&Req::new("POST", "/aspera/faspex/login?user[name]=q")
        .body(FORM, "user[name]=ann&user[password]=apple"));
    assert_eq!(r.raw.modern.unwrap_params()["user"], json!({"name": "q"}));
    // Rack 2 splits the query on `;` but a body only on `&`; Rack 1 split both.
    let r = ask(&Req::new("POST", "/aspera/faspex/login?a=1;b=2")
        .body(FORM, "user[name]=ann;user[password]=apple"));
    let modern = r.raw.modern.params.clone().unwrap();
    let legacy = r.raw.legacy.params.clone().unwrap();
    assert_eq!(modern["b"], "2");
    assert_eq!(modern["user"]["name"], "ann;user[password]=apple");
    assert_eq!(legacy["user"]["password"], "apple");
    // ParamsWrapper copies a JSON body under the controller's name; Ruby's JSON allows comments.
    let r = ask(&Req::new("POST", "/aspera/faspex/login")
        .body(Some("application/json"), r#"{"password": /* x */ "apple"}"#));
    assert_eq!(r.raw.modern.unwrap_params()["session"]["password"], "apple");
    // Rails 3 read an XML body into params; Rails 6.1 does not.
    let r = ask(&Req::new("POST", "/aspera/faspex/login").body(
        Some("text/xml"),
        "<user><name>ann</name><password>apple</password></user>",
    ));
    assert!(r.raw.modern.unwrap_params().get("user").is_none());
    assert_eq!(r.raw.legacy.unwrap_params()["user"]["password"], "apple");
    // `_method` in a form body, or X-HTTP-Method-Override, changes the method of a POST.
    let r = ask(&Req::new("POST", "/aspera/faspex/account/password")
        .body(FORM, "_method=put&user[current_password]=x"));
    assert_eq!(r.raw.modern.action.as_deref(), Some("passwords#update"));
    let r = ask(&Req::new("POST", "/aspera/faspex/send").overriding("GET"));
    assert_eq!(r.raw.modern.action.as_deref(), Some("deliveries#new"));
    // A POST without a Content-Type, or multipart without a boundary, is read as a form.
    for ct in [None, Some("multipart/form-data")] {
        let r = ask(&Req::new("POST", "/aspera/faspex/login").body(ct, "user[password]=apple"));
        assert_eq!(
            r.raw.modern.unwrap_params()["user"]["password"],
            "apple",
            "{ct:?}"
        );
    }
}

/// Every spelling of a path, every method: the emulator routes as Rails does.
#[test]
fn the_emulator_routes_like_rails() {
    let others = [
        "/aspera/faspex/Login",
        "/aspera/faspex/login.",
        "/aspera/faspex/login.a.b",
        "/aspera/faspex/login..json",
        "/aspera/faspex/login/new",
        "/aspera/faspex/login/new.html",
        "/aspera/faspex/login%2Fnew",
        "/aspera/faspex/%6cogin",
        "/aspera/faspex/log%69n.json",
        "/aspera/faspex/x/../login",
        "/aspera/faspex/./login",
        "/aspera/faspex/login%3F.json",
        "/aspera/faspex/auth/oauth2/token",
        "/aspera/faspex/auth/oauth2/token.json/",
        "/aspera/faspex/auth//oauth2/token",
        "/aspera/faspex/logout",
        "/aspera/faspex/logout.json",
        "/aspera/faspex",
        "/aspera/faspex/",
        "/aspera/faspex.json",
        "/aspera/faspex/inbox",
        "/aspera/faspex/inbox.atom",
        "/aspera/faspex/sent",
        "/aspera/faspex/sent/4044",
        "/aspera/faspex/sent/4044.xml",
        "/aspera/faspex/archive.atom/",
        "/aspera/faspex/received/4044",
        "/aspera/faspex/received/4044.xml",
        "/aspera/faspex/received/40%34%34",
        "/aspera/faspex/received/4044.x.y",
        "/aspera/faspex/received/.xml",
        "/aspera/faspex/received/a%2Fb",
        "/aspera/faspex/me",
        "/aspera/faspex/me.json",
        "/aspera/faspex/dropboxes",
        "/aspera/faspex/address-book",
        "/aspera/faspex/issue-token",
        "/aspera/faspex/send",
        "/aspera/faspex/send.json",
        "/aspera/faspex/external_deliveries/4822",
        "/aspera/faspex/external_deliveries/4822.xml",
        "/aspera/faspex/external/submissions/new",
        "/aspera/faspex/external/submissions",
        "/aspera/faspex/external/dropbox_submissions/new",
        "/aspera/faspex/external/dropbox_submissions",
        "/aspera/faspex/admin/users",
        "/aspera/faspex/admin/users.json",
        "/aspera/faspex/account",
        "/aspera/faspex/account/password",
        "/aspera/faspex/account/password.json/",
        "/aspera/faspex/package_relay/relay_package",
        "/aspera/faspex/package_relay/relay_package.json",
        "/aspera/faspex/api/v1/me",
        "/aspera/faspex/api/v1/me.json",
        "/aspera/faspex/api/a.b.c",
        "/aspera/faspex/api/",
        "/aspera/faspex/javascripts/application.js",
        "/aspera/faspex/nowhere",
        "/aspera/faspexnot",
        "/elsewhere",
        "/",
        "",
    ];
    let paths = LOGIN_SPELLINGS.into_iter().chain(others);
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut oracle = oracle();
    let mut failures = Vec::new();
    for path in paths {
        for method in methods {
            let req = Req::new(method, path);
            let readings = ask_with(&mut oracle, &req);
            if let Some(divergence) = emulator_divergence(&req, &readings) {
                failures.push(format!("{method} {path:?}: {divergence}"));
            }
            // Where Rails routes the path as sent, the emulator (which reads the decoded path)
            // routes it the same way.
            let raw = &readings.raw.modern.action;
            let mine = req.emulate().action.map(|a| a.name().to_owned());
            if raw.is_some() && raw.as_deref() != Some("errors#not_found") && *raw != mine {
                failures.push(format!(
                    "{method} {path:?}: rails routes the raw path to {raw:?}, the emulator to {mine:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the emulator routes differently from Rails:\n{}",
        failures.join("\n")
    );
}

/// The emulator's `params` are the Rails 3 reading's, for every way a request carries them.
#[test]
fn the_emulator_reads_params_like_rails() {
    const LOGIN: &str = "/aspera/faspex/login";
    let multipart = |parts: &[(&str, &str)]| {
        let mut body = String::new();
        for (head, value) in parts {
            body.push_str(&format!("--B\r\n{head}\r\n\r\n{value}\r\n"));
        }
        body.push_str("--B--\r\n");
        body
    };
    let cases = vec![
        Req::new("GET", "/aspera/faspex/login?user[name]=ann&user[password]=apple"),
        Req::new("GET", "/aspera/faspex/login?user%5Bname%5D=ann;user%5bpassword%5d=a+b%20c"),
        Req::new("GET", "/aspera/faspex/login?user]name=a&user[password=b&[user][x]=c&user[y]]=d"),
        Req::new("GET", "/aspera/faspex/login?user[password][]=a&user[password][]=b"),
        Req::new("GET", "/aspera/faspex/login?user[][password]=a&user[][name]=b&user[][password]=c"),
        Req::new("GET", "/aspera/faspex/login?user[][[password]]=a&user[[]]=b&x[]&[]=1&=2"),
        Req::new("GET", "/aspera/faspex/login?user=x&user[password]=y"),
        Req::new("GET", "/aspera/faspex/login?user[password]=y&user=x"),
        Req::new("GET", "/aspera/faspex/login?user[password]=%FF"),
        Req::new("GET", "/aspera/faspex/login?user[password]=%"),
        Req::new("GET", "/aspera/faspex/login?a=1&%20b=2&&c&d=&  e=3"),
        Req::new("GET", "/aspera/faspex/login?format=json&controller=x&action=y"),
        Req::new("GET", "/aspera/faspex/login.xml?format=json"),
        Req::new("GET", "/aspera/faspex/received/4044?id=1"),
        Req::new("POST", LOGIN).body(FORM, "user[name]=ann&user[password]=apple"),
        Req::new("POST", LOGIN).body(FORM, "user[name]=ann&user[password]=apple;x=1"),
        Req::new("POST", LOGIN).body(FORM, "user[name]=ann& user[password]=apple\0"),
        Req::new("POST", "/aspera/faspex/login?user[name]=q").body(FORM, "user[password]=apple"),
        Req::new("POST", "/aspera/faspex/login?x=1").body(FORM, "user[password]=apple&x=2"),
        Req::new("POST", LOGIN).body(None, "user[name]=ann&user[password]=apple"),
        // Rack::MethodOverride swallows a POST body Rack cannot parse, and the body with it.
        Req::new("POST", "/aspera/faspex/login?user[name]=q").body(None, "user[password]=%"),
        Req::new("POST", LOGIN).body(FORM, "user[name]&user[][password]=x"),
        Req::new("PUT", LOGIN).body(FORM, "user[name]&user[][password]=x"),
        Req::new("POST", LOGIN).body(FORM, "user[password]=%FF"),
        Req::new("PUT", LOGIN).body(None, "user[name]=ann&user[password]=apple"),
        Req::new("GET", LOGIN).body(FORM, "user[name]=ann&user[password]=apple"),
        Req::new("POST", LOGIN).body(Some("text/plain"), "user[password]=apple"),
        Req::new("POST", LOGIN).body(Some("Application/X-WWW-Form-Urlencoded ; charset=x"), "user[password]=apple"),
        Req::new("POST", LOGIN).body(Some("garbage"), "user[password]=apple"),
        Req::new("POST", LOGIN).body(Some("multipart/form-data"), "user[password]=apple"),
        Req::new("POST", LOGIN).body(Some("application/json"), r#"{"user":{"name":"ann","password":"apple"}}"#),
        Req::new("POST", LOGIN).body(Some("application/json; charset=utf-8"), r#"{"name":"ann","password":"apple","utf8":"x"}"#),
        Req::new("POST", LOGIN).body(Some("text/x-json"), r#"{"user": // c
            {"password": /* c */ "apple"}}"#),
        Req::new("POST", LOGIN).body(Some("application/jsonrequest"), r#"[{"user":{"password":"x"}}, null]"#),
        Req::new("POST", LOGIN).body(Some("application/json"), r#"{"user":{"password":["a",null,{"b":null}]},"session":1}"#),
        Req::new("POST", LOGIN).body(Some("application/json"), r#"{"user":{"password":1.5e3,"name":12}}"#),
        Req::new("POST", LOGIN).body(Some("application/json"), r#"{"user":{"password":"a"},"user":{"name":"b"}}"#),
        Req::new("POST", LOGIN).body(Some("application/json"), "{"),
        Req::new("POST", LOGIN).body(Some("application/json"), ""),
        Req::new("GET", "/aspera/faspex/login?user[name]=q").body(Some("application/json"), r#"{"user":{"password":"a"}}"#),
        Req::new("POST", LOGIN).body(Some("application/vnd.api+json"), r#"{"user":{"password":"a"}}"#),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<user><name>ann</name><password>apple</password></user>"),
        Req::new("POST", LOGIN).body(Some("text/xml; charset=utf-8"), "<?xml version=\"1.0\"?>\n<!-- c --><user>\n  <name>ann</name>\n  <password><![CDATA[a<b]]>&amp;&#65;</password>\n</user>\n"),
        Req::new("POST", LOGIN).body(Some("application/x-xml"), "<hash><user name=\"ann\" password=\"apple\"/></hash>"),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<user><password type=\"base64Binary\">YXBwbGU=</password><name type=\"integer\">12</name><x type=\"array\"><y>1</y><y>2</y></x><z nil=\"true\"/></user>"),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<user><password>a</password><password>b</password><user-name>c</user-name></user>"),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<user><password type=\"yaml\">a</password></user>"),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<user><password>a</user>"),
        Req::new("POST", LOGIN).body(Some("application/xml"), "<x:user xmlns:x=\"u\"><x:password>a</x:password></x:user>"),
        Req::new("POST", LOGIN).body(
            Some("multipart/form-data; boundary=B"),
            multipart(&[
                ("Content-Disposition: form-data; name=\"user[name]\"", "ann"),
                ("Content-Disposition: form-data; name=\"user[password]\"", "apple"),
                ("Content-Disposition: form-data; name=\"utf8\"", "x"),
            ]),
        ),
        Req::new("POST", LOGIN).body(
            Some("multipart/form-data; boundary=\"B\""),
            multipart(&[
                ("Content-Disposition: form-data; name=user[password]", "apple"),
                ("content-disposition: form-data; name=\"a\"; name=\"user[name]\"", "ann"),
                ("Content-Disposition: form-data; name=\"f\"; filename=\"C:\\\\dir\\\\p.txt\"\r\nContent-Type: text/plain", "pw"),
                ("Content-Disposition: form-data; name=\"g\"; filename=\"\"", "none"),
                ("Content-ID: user[password]", "cid"),
            ]),
        ),
        Req::new("POST", LOGIN).body(
            Some("multipart/mixed; boundary=B"),
            multipart(&[("Content-Disposition: form-data; name=\"_method\"", "put")]),
        ),
        Req::new("POST", LOGIN).body(Some("multipart/form-data; boundary=B"), "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method=put&user[current_password]=a&user[password]=b"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method=PATCH"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method=link"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method[]=put"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method=bogus").overriding("PUT"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method").overriding("PUT"),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "_method=%").overriding("PUT"),
        Req::new("POST", "/aspera/faspex/account/password?_method=put"),
        Req::new("POST", "/aspera/faspex/account/password").body(Some("application/json"), r#"{"_method":"put"}"#),
        Req::new("POST", "/aspera/faspex/account/password").body(FORM, "a=1;_method=put"),
        Req::new("PUT", "/aspera/faspex/account/password").body(FORM, "_method=get"),
        Req::new("POST", "/aspera/faspex/admin/users").body(Some("application/json"), r#"{"login":"x","password":"y"}"#),
        Req::new("POST", "/aspera/faspex/auth/oauth2/token").body(FORM, "grant_type=password&username=ann&password=apple"),
        Req::new("GET", "/aspera/faspex/auth/oauth2/token?username=ann&password=apple&refresh_token=r&client_secret=s"),
        Req::new("POST", "/aspera/faspex/auth/oauth2/token").body(Some("application/json"), r#"{"username":"ann","password":"apple"}"#),
        Req::new("FOO", LOGIN),
        Req::new("get", LOGIN),
        Req::new("POST", "/aspera/faspex/login/%2e%2e/logout?user[password]=x"),
    ];
    let mut oracle = oracle();
    let mut failures = Vec::new();
    for req in &cases {
        let readings = ask_with(&mut oracle, req);
        if let Some(divergence) = emulator_divergence(req, &readings) {
            failures.push(format!("{req}\n  -> {divergence}\n{readings}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the emulator reads {} of {} requests differently from Rails 3:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ------------------------------------------------------------------------------------------------
// The gateway's planner against every reading

fn gateway_plan(gate: &faspex_gate::proxy::gate::Gate, req: &Req) -> Plan {
    use faspex_gate::proxy::gate::{Probe, Refusal};
    let Ok(method) = http::Method::from_bytes(req.method.as_bytes()) else {
        return Plan::Refuse(Refusal::MethodNotAllowed);
    };
    gate.plan(&Probe {
        method: &method,
        target: &req.target,
        content_type: req.content_type.as_deref(),
        content_encoding: req.content_encoding.as_deref(),
        body: &req.body,
    })
}

const LOGIN_ACTION: &str = "sessions#create";
const TOKEN_ACTION: &str = "oauth2#token";
const PASSWORD_FORM_ACTIONS: [&str; 2] = ["admin/users#create", "passwords#update"];

/// Whether a key names a credential wherever it sits: the login form's and OAuth's fields, and
/// the password forms' own.
fn credential_key(key: &str) -> bool {
    matches!(
        key,
        "username"
            | "password"
            | "refresh_token"
            | "client_secret"
            | "current_password"
            | "password_confirmation"
    )
}

/// Every credential parameter Rails sees, as paths of keys: the keys above at any depth, and
/// `name` under `user`.
fn credentials(value: &Value, path: &mut Vec<String>, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let under_user = path.last().is_some_and(|k| k == "user");
                path.push(key.clone());
                // A hash under a credential's name is a container, not a credential: ParamsWrapper
                // copies a whole JSON body under "password" for PasswordsController. What it
                // holds is judged key by key below.
                if (credential_key(key) || (under_user && key == "name"))
                    && carries_value(inner)
                    && !holds_only_hashes(inner)
                {
                    found.push(path.join("."));
                }
                credentials(inner, path, found);
                path.pop();
            }
        }
        Value::Array(list) => {
            for inner in list {
                credentials(inner, path, found);
            }
        }
        _ => {}
    }
}

/// Whether a value is a hash, or a list of nothing but hashes.
fn holds_only_hashes(value: &Value) -> bool {
    match value {
        Value::Object(_) => true,
        Value::Array(list) => !list.is_empty() && list.iter().all(holds_only_hashes),
        _ => false,
    }
}

/// Whether a parameter holds anything a check could use: a string (even empty), a number or a
/// boolean, at any depth. Nil and empty hashes (ParamsWrapper's `"password": {}` for an empty JSON
/// body sent to PasswordsController) hold nothing.
fn carries_value(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(list) => list.iter().any(carries_value),
        Value::Object(map) => map.values().any(carries_value),
        _ => true,
    }
}

/// A string credential as Rails passes it on: missing and nil are "" (Faspex fails them alike).
fn string_at(params: &Value, keys: &[&str]) -> Result<String, String> {
    let mut value = params;
    for key in keys {
        match value.get(*key) {
            Some(inner) => value = inner,
            None => return Ok(String::new()),
        }
    }
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("{} is {other}, not a string", keys.join("."))),
    }
}

/// An OAuth parameter as Rails sees it: `None` when absent, nil or empty (the token action
/// cannot tell them apart).
fn optional_at(params: &Value, key: &str) -> Result<Option<String>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(other) => Err(format!("{key} is {other}, not a string")),
    }
}

/// Why a plan is wrong for one reading of the request, if it is. For a reading in which Rails runs
/// an action without error (the catch-all 404 counts as no action):
///
/// * the login action: the plan is Refuse, or Login with exactly the `user[name]`/`user[password]`
///   Rails sees (missing and nil read as ""), or Public for a GET/HEAD without credentials;
/// * the token action with credentials: Refuse, or Token naming the `username`/`password` Rails
///   sees (missing, nil and "" alike);
/// * a password form (`POST /admin/users`, `PUT /account/password`) with credentials: Refuse or
///   PasswordForm (which no other action may get when it carries credentials);
/// * any other action with a credential parameter anywhere (`username`, `password`,
///   `refresh_token`, `client_secret`, `current_password`, `password_confirmation` at any depth,
///   `name` under `user`, holding a value): Refuse.
fn violation(plan: &Plan, reading: &Reading) -> Option<String> {
    let action = reading.action.as_deref()?;
    if reading.error.is_some() || action == "errors#not_found" {
        // Rails refuses the request (4xx) before the action uses its parameters, or routes it
        // nowhere (the catch-all stands for Rails' routing error: no Faspex action runs).
        return None;
    }
    let params = reading.params.as_ref()?;
    let mut found = Vec::new();
    credentials(params, &mut Vec::new(), &mut found);
    let method = reading.method.as_deref().unwrap_or("");
    let is_login = action == LOGIN_ACTION;
    let is_token = action == TOKEN_ACTION;
    let is_form = PASSWORD_FORM_ACTIONS.contains(&action);
    match plan {
        Plan::Refuse(_) => None,
        Plan::Login { username, password } => {
            if !is_login {
                if found.is_empty() {
                    return None;
                }
                return Some(format!(
                    "a Login plan, but Rails runs {action} with credentials {found:?}"
                ));
            }
            let name = string_at(params, &["user", "name"]);
            let pass = string_at(params, &["user", "password"]);
            match (name, pass) {
                (Ok(name), Ok(pass)) if name == *username && pass == *password => None,
                (Ok(name), Ok(pass)) => Some(format!(
                    "the gateway checks {username:?}/{password:?}, Rails logs in with {name:?}/{pass:?}"
                )),
                (Err(e), _) | (_, Err(e)) => Some(format!("a Login plan, but Rails sees {e}")),
            }
        }
        _ if is_login && !matches!(plan, Plan::Public) => Some(format!(
            "Rails runs the login action ({method}); the plan must be Login or Refuse"
        )),
        Plan::Public if is_login => {
            if !matches!(method, "GET" | "HEAD") {
                Some(format!("Rails runs the login action for {method}; Public plan"))
            } else if !found.is_empty() {
                Some(format!(
                    "Rails runs the login action with credentials {found:?}; Public plan"
                ))
            } else {
                None
            }
        }
        Plan::Token { username, password } if is_token => {
            let name = optional_at(params, "username");
            let pass = optional_at(params, "password");
            let named = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
            match (name, pass) {
                (Ok(name), Ok(pass)) if name == named(username) && pass == named(password) => None,
                (Ok(name), Ok(pass)) => Some(format!(
                    "the gateway names {username:?}/{password:?}, Rails reads {name:?}/{pass:?}"
                )),
                (Err(e), _) | (_, Err(e)) => Some(format!("a Token plan, but Rails sees {e}")),
            }
        }
        _ if is_token && !found.is_empty() => Some(format!(
            "Rails runs the token action with credentials {found:?}; the plan must be Token or Refuse"
        )),
        Plan::PasswordForm if is_form => None,
        Plan::PasswordForm if !found.is_empty() => Some(format!(
            "a PasswordForm plan, but Rails runs {action} with credentials {found:?}"
        )),
        _ if !found.is_empty() => Some(format!(
            "Rails runs {action} with credentials {found:?}; the plan must be Refuse"
        )),
        _ => None,
    }
}

// -- the generator --------------------------------------------------------------------------------

/// The paths the generator starts from.
const BASES: &[&str] = &[
    "/aspera/faspex/login",
    "/aspera/faspex/login",
    "/aspera/faspex/login",
    "/aspera/faspex/login/new",
    "/aspera/faspex/logout",
    "/aspera/faspex/auth/oauth2/token",
    "/aspera/faspex/auth/oauth2/token",
    "/aspera/faspex/inbox",
    "/aspera/faspex/received/4044",
    "/aspera/faspex/me",
    "/aspera/faspex/send",
    "/aspera/faspex/admin/users",
    "/aspera/faspex/account/password",
    "/aspera/faspex/account",
    "/aspera/faspex/external_deliveries/4822",
    "/aspera/faspex/external/submissions",
    "/aspera/faspex/external/submissions/new",
    "/aspera/faspex/package_relay/relay_package",
    "/aspera/faspex/api/v1/me",
    "/aspera/faspex",
    "/aspera/faspex/javascripts/application.js",
    "/aspera/faspex/nowhere",
    "/aspera/http-gwy/v1/upload",
];

const SUFFIXES: &[&str] = &[
    "", "", "", "", ".json", ".xml", ".html", ".x-y", ".a_b", ".", ".a.b", "/", ".json/",
    "%2Ejson", "%2ejson/", "//", "/.", "/x/..",
];

/// Credential keys in the spellings Rack decodes, in wire form.
const KEYS: &[&str] = &[
    "user[name]",
    "user[password]",
    "user[name]",
    "user[password]",
    "user%5Bname%5D",
    "user%5bpassword%5d",
    "user[password][]",
    "user[][password]",
    "user[][name]",
    "user]password",
    "user]name",
    "user[password",
    "[user][password]",
    "user[password]]",
    "user[password][x]",
    "us%65r[pass%77ord]",
    "user",
    "username",
    "password",
    "refresh_token",
    "client_secret",
    "session[password]",
    "user[current_password]",
    "user[login]",
    "user[password_confirmation]",
    "_method",
    "grant_type",
    "utf8",
    "commit",
    "authenticity_token",
    "format",
    "passcode",
    "a",
];

const VALUES: &[&str] = &[
    "ann", "apple", "guess", "", "a+b", "a%20b", "%FF", "%", "put", "PUT", "get", "delete",
    "password", "json", "x%3By", "\u{2713}",
];

/// A key and an optional value, in wire form (`None`: no `=`).
type Pair = (String, Option<String>);

fn arb_pair() -> impl Strategy<Value = Pair> {
    (
        prop::sample::select(KEYS),
        prop::option::weighted(0.9, prop::sample::select(VALUES)),
    )
        .prop_map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
}

fn join_pairs(pairs: &[Pair], seps: &[&str]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(seps[i % seps.len()]);
        }
        out.push_str(key);
        if let Some(value) = value {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// Structured credentials for JSON and XML bodies: (path of keys, value).
fn arb_fields() -> impl Strategy<Value = Vec<(Vec<&'static str>, Value)>> {
    let paths = prop::sample::select(vec![
        vec!["user", "name"],
        vec!["user", "password"],
        vec!["user", "name"],
        vec!["user", "password"],
        vec!["username"],
        vec!["password"],
        vec!["name"],
        vec!["session", "password"],
        vec!["user", "current_password"],
        vec!["user", "login"],
        vec!["grant_type"],
        vec!["_method"],
        vec!["user"],
        vec!["refresh_token"],
    ]);
    let values = prop_oneof![
        8 => prop::sample::select(vec!["ann", "apple", "guess", "", "put"]).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!(12)),
        1 => Just(json!(["apple"])),
        1 => Just(json!({"x": "apple"})),
    ];
    prop::collection::vec((paths, values), 0..5)
}

fn json_body(fields: &[(Vec<&'static str>, Value)], comment: bool, top_array: bool) -> String {
    let mut root = Map::new();
    for (path, value) in fields {
        let mut map = &mut root;
        for key in &path[..path.len() - 1] {
            let slot = map
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            map = slot.as_object_mut().expect("an object");
        }
        map.insert(path[path.len() - 1].to_owned(), value.clone());
    }
    let mut text = Value::Object(root).to_string();
    if comment {
        text = text.replacen(':', ": /* note */", 1);
    }
    if top_array {
        text = format!("[{text}]");
    }
    text
}

fn xml_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.replace('&', "&amp;").replace('<', "&lt;"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn xml_body(fields: &[(Vec<&'static str>, Value)], style: u8) -> String {
    let mut inner = String::new();
    for (path, value) in fields {
        let leaf = path[path.len() - 1];
        let open: String = path[..path.len() - 1]
            .iter()
            .map(|k| format!("<{k}>"))
            .collect();
        let close: String = path[..path.len() - 1]
            .iter()
            .rev()
            .map(|k| format!("</{k}>"))
            .collect();
        let element = match (style, value) {
            (1, Value::String(s)) => format!(
                "<{leaf} type=\"base64Binary\">{}</{leaf}>",
                B64.encode(s.as_bytes())
            ),
            (2, Value::String(s)) => format!("<{leaf}><![CDATA[{s}]]></{leaf}>"),
            (_, Value::Null) => format!("<{leaf} nil=\"true\"/>"),
            (_, Value::Number(n)) => format!("<{leaf} type=\"integer\">{n}</{leaf}>"),
            _ => format!("<{leaf}>{}</{leaf}>", xml_text(value)),
        };
        inner.push_str(&format!("{open}{element}{close}"));
    }
    if style == 3 {
        format!("<?xml version=\"1.0\"?>\n<hash>{inner}</hash>")
    } else {
        format!("<request>{inner}</request>")
            .replacen("<request><user>", "<user>", 1)
            .replacen("</user></request>", "</user>", 1)
    }
}

/// A multipart body of `pairs`. `trick` 1 writes each name as `"x name=KEY"` (Rack 1 reads the
/// last `name=` after white space: `KEY`), 2 each part named `aN` with the value `&KEY=VALUE&` (a
/// form, to a Rack that reads the body as one when it misses the boundary), 3 each disposition as
/// `form-data;name="x name=KEY"` (no space after `;`), 4 a `Content-Type` line first whose value
/// holds `Content-Disposition: y; name=KEY` before each disposition (Rack reads the name after
/// the first label). The boundary is
/// Rack's own `AaB03x`: one holding the word "boundary", as `BOUNDARY` did, makes the gateway
/// refuse every body, and no accepted multipart body was ever checked.
fn multipart_body(pairs: &[Pair], quote: bool, files: bool, trick: u8) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        let name = match (quote, trick) {
            (true, 1 | 3) => format!("\"x name={key}\""),
            (true, 2 | 4) => format!("\"a{i}\""),
            (false, 2 | 4) => format!("a{i}"),
            (true, _) => format!("\"{key}\""),
            (false, _) => key.clone(),
        };
        // 3: no space after `;`; 4: the label and a `name=` inside a `Content-Type` before it
        let (before, sep) = match trick {
            3 => (String::new(), ";"),
            4 => (
                format!("Content-Type: text/plain; x=\"Content-Disposition: y; name={key}\"\r\n"),
                "; ",
            ),
            _ => (String::new(), "; "),
        };
        let value = match trick {
            2 => Some(format!("&{key}={}&", value.as_deref().unwrap_or(""))),
            _ => value.clone(),
        };
        // (not with 4: the emulator does not model where Rack 2's filename pattern finds a
        // filename when a label sits inside another header; the gateway refuses such a part)
        let file = if files && trick != 4 && i % 2 == 1 {
            "; filename=\"f.txt\"\r\nContent-Type: text/plain"
        } else {
            ""
        };
        body.extend_from_slice(
            format!(
                "--AaB03x\r\n{before}Content-Disposition: form-data{sep}name={name}{file}\r\n\r\n{}\r\n",
                value.as_deref().unwrap_or("")
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"--AaB03x--\r\n");
    body
}

/// A body and its content type.
fn arb_body() -> impl Strategy<Value = (Option<String>, Vec<u8>)> {
    let ct = |list: &'static [Option<&'static str>]| {
        prop::sample::select(list).prop_map(|c| c.map(str::to_owned))
    };
    let seps = prop::sample::select(vec![vec!["&"], vec![";"], vec!["&", ";"], vec!["& "]]);
    prop_oneof![
        3 => Just((None, Vec::new())),
        6 => (
            ct(&[
                Some("application/x-www-form-urlencoded"),
                Some("application/x-www-form-urlencoded"),
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                Some("APPLICATION/X-WWW-FORM-URLENCODED"),
                None,
                Some("multipart/form-data"),
                Some("text/plain"),
                Some("application/octet-stream"),
            ]),
            prop::collection::vec(arb_pair(), 0..6),
            seps,
        )
            .prop_map(|(ct, pairs, seps)| (ct, join_pairs(&pairs, &seps).into_bytes())),
        2 => (
            ct(&[
                Some("multipart/form-data; boundary=AaB03x"),
                Some("multipart/form-data; boundary=\"AaB03x\""),
                Some("multipart/mixed; boundary=AaB03x"),
                Some("Multipart/Form-Data; charset=utf-8; boundary=AaB03x"),
                // (Rack 1's boundary pattern is case-sensitive)
                Some("multipart/form-data; Boundary=AaB03x"),
                Some("Multipart/form-data; boundary=AaB03x"),
            ]),
            prop::collection::vec(arb_pair(), 0..5),
            any::<bool>(),
            any::<bool>(),
            0u8..5,
        )
            .prop_map(|(ct, pairs, quote, files, trick)| {
                (ct, multipart_body(&pairs, quote, files, trick))
            }),
        3 => (
            ct(&[
                Some("application/json"),
                Some("application/json; charset=utf-8"),
                Some("text/x-json"),
                Some("application/jsonrequest"),
                Some("application/vnd.api+json"),
                Some("text/plain"),
                None,
            ]),
            arb_fields(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(ct, fields, comment, array)| (ct, json_body(&fields, comment, array).into_bytes())),
        2 => (
            ct(&[
                Some("application/xml"),
                Some("text/xml"),
                Some("application/x-xml"),
                Some("application/atom+xml"),
                None,
            ]),
            arb_fields(),
            0u8..4,
        )
            .prop_map(|(ct, fields, style)| (ct, xml_body(&fields, style).into_bytes())),
    ]
}

/// A path: a base with a format suffix, slashes, case, escapes and dot segments mutated.
fn arb_path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(BASES),
        prop::sample::select(SUFFIXES),
        prop::sample::select(vec!["", "", "", "/", "//"]),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.1, 0usize..64),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(base, suffix, lead, double, upper, escape, dots)| {
            let mut path = format!("{lead}{base}{suffix}");
            if double {
                path = path.replacen("/faspex/", "/faspex//", 1);
            }
            if dots {
                path = path.replacen("/faspex/", "/faspex/x/../", 1);
            }
            if upper {
                if let Some(slash) = path.rfind('/') {
                    let (head, tail) = path.split_at(slash + 1);
                    let mut tail = tail.to_owned();
                    if let Some(first) = tail.get(..1) {
                        tail.replace_range(..1, &first.to_ascii_uppercase());
                    }
                    path = format!("{head}{tail}");
                }
            }
            if let Some(i) = escape {
                // Percent-encode one character of the last segment.
                let start = path.rfind('/').map_or(0, |s| s + 1);
                let candidates: Vec<usize> = path[start..]
                    .char_indices()
                    .filter(|(_, c)| c.is_ascii_alphanumeric() || *c == '.')
                    .map(|(j, _)| start + j)
                    .collect();
                if !candidates.is_empty() {
                    let at = candidates[i % candidates.len()];
                    let byte = path.as_bytes()[at];
                    path.replace_range(at..=at, &format!("%{byte:02x}"));
                }
            }
            path
        })
}

fn arb_req() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec![
            "GET", "GET", "GET", "POST", "POST", "POST", "POST", "POST", "PUT", "PATCH", "DELETE",
            "HEAD", "OPTIONS",
        ]),
        arb_path(),
        prop::collection::vec(arb_pair(), 0..4),
        prop::sample::select(vec![vec!["&"], vec![";"], vec!["&", ";"]]),
        arb_body(),
        prop::option::weighted(0.05, prop::sample::select(vec!["gzip", "identity"])),
    )
        .prop_map(|(method, path, query, seps, (ct, body), encoding)| {
            let mut target = path;
            if !query.is_empty() {
                target.push('?');
                target.push_str(&join_pairs(&query, &seps));
            }
            let mut req = Req::new(method, &target).body(ct.as_deref(), body);
            req.content_encoding = encoding.map(str::to_owned);
            req
        })
}

/// `FASPEX_GATE_PROPTEST_SECONDS`, 60 by default.
fn budget() -> Duration {
    let seconds = std::env::var("FASPEX_GATE_PROPTEST_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// `FASPEX_GATE_PROPTEST_SEED`: a number, or `random`; a fixed seed by default, so that CI runs
/// the same cases every time.
fn seed() -> u64 {
    match std::env::var("FASPEX_GATE_PROPTEST_SEED")
        .as_deref()
        .map(str::trim)
    {
        Ok("random") => rand::random(),
        Ok(s) => s.parse().unwrap_or_else(|_| {
            panic!("FASPEX_GATE_PROPTEST_SEED must be a number or `random`, not {s:?}")
        }),
        Err(_) => 0x5eed_fa5e_c0de_0004,
    }
}

/// The 32 bytes of a ChaCha seed, spread from a number (splitmix64).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut state = seed;
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Check one request: the planner against every reading of the oracle, and the emulator's
/// reading against the oracle's Rails 3 one.
fn check(gate: &faspex_gate::proxy::gate::Gate, req: &Req) -> Result<(), String> {
    let readings = ask(req);
    let plan = gateway_plan(gate, req);
    // The HTTP Gateway is another service beside Faspex: Rails never sees its requests.
    let rails_sees_it = !emulated::normalize_path(req.path()).starts_with("/aspera/http-gwy/");
    for (name, reading) in readings.all().into_iter().filter(|_| rails_sees_it) {
        if let Some(why) = violation(&plan, reading) {
            return Err(format!(
                "the gateway's plan lets Rails ({name}) see an unchecked credential: {why}\n\
                 request:\n{req}\n\nplan: {plan:?}\noracle:\n{readings}"
            ));
        }
    }
    if let Some(divergence) = emulator_divergence(req, &readings) {
        return Err(format!(
            "the emulator reads this request differently from Rails 3: {divergence}\n\
             request:\n{req}\n\noracle:\n{readings}"
        ));
    }
    Ok(())
}

/// A hostile review's two multipart bodies that Rack 1 reads otherwise than Rack 2: the oracle's
/// Rails 3 reading sees the password in each (on a public path and on a protected one), the
/// emulator reads them as it does, and the gateway's plan lets no reading see it unchecked.
#[test]
fn multipart_that_rack_1_reads_otherwise_carries_no_unchecked_password() {
    let gate = faspex_gate::proxy::gate::Gate::for_tests();
    let hidden_form = "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n&user[name]=admin&user[password]=guess&\r\n--XX--\r\n";
    let hidden_name = "--XX\r\nContent-Disposition: form-data; name=\"x name=password\"\r\n\r\nguess\r\n--XX--\r\n";
    let mut failures = Vec::new();
    for target in [
        "/aspera/faspex/external/submissions",
        "/aspera/faspex/received/4044",
    ] {
        for (content_type, body, keys) in [
            (
                "multipart/form-data; Boundary=XX",
                hidden_form,
                &["user", "password"][..],
            ),
            (
                "Multipart/form-data; boundary=XX",
                hidden_form,
                &["user", "password"][..],
            ),
            (
                "multipart/form-data; boundary=XX",
                hidden_name,
                &["password"][..],
            ),
        ] {
            let req = Req::new("POST", target).body(Some(content_type), body);
            let readings = ask(&req);
            let legacy = readings
                .raw
                .legacy
                .params
                .as_ref()
                .expect("Rails 3 read the body");
            let mut at = legacy;
            for k in keys {
                at = &at[*k];
            }
            assert_eq!(at, "guess", "Rack 1 reads the password:\n{req}\n{readings}");
            if let Err(why) = check(&gate, &req) {
                failures.push(why);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_gateway_never_lets_rails_see_an_unchecked_credential() {
    let budget = budget();
    let seed = seed();
    let version = oracle().version.clone();
    eprintln!(
        "proptest: seed {seed} (FASPEX_GATE_PROPTEST_SEED), {} s (FASPEX_GATE_PROPTEST_SECONDS), \
         oracle Rails {} / Rack {}",
        budget.as_secs(),
        version["rails"].as_str().unwrap_or("?"),
        version["rack"].as_str().unwrap_or("?"),
    );
    let gate = faspex_gate::proxy::gate::Gate::for_tests();
    let config = Config {
        failure_persistence: None,
        max_shrink_time: 30_000,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed));
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = arb_req();
    let started = Instant::now();
    let mut cases = 0u64;
    // FASPEX_GATE_PROPTEST_KEEP_GOING=1: collect distinct failures instead of stopping at the first.
    let keep_going = std::env::var("FASPEX_GATE_PROPTEST_KEEP_GOING").is_ok_and(|v| v == "1");
    let mut failures: Vec<(String, String)> = Vec::new();
    while started.elapsed() < budget {
        let tree = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("cannot generate a request: {e}"));
        let result = runner.run_one(tree, |req| check(&gate, &req).map_err(TestCaseError::fail));
        cases += 1;
        match result {
            Ok(_) => {}
            Err(TestError::Fail(why, minimal)) => {
                let report = format!("{why}\nminimal request, as Rust: {minimal:?}");
                if !keep_going {
                    panic!(
                        "after {cases} cases (seed {seed}), a failing request (shrunk):\n{report}"
                    );
                }
                let kind = why.message().lines().next().unwrap_or("").to_owned();
                if !failures.iter().any(|(k, _)| *k == kind) {
                    failures.push((kind, report));
                }
            }
            Err(TestError::Abort(why)) => panic!("proptest aborted after {cases} cases: {why}"),
        }
    }
    eprintln!(
        "proptest: {cases} cases in {:.1} s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} distinct failures (seed {seed}):\n\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(_, report)| report.as_str())
            .collect::<Vec<_>>()
            .join("\n\n----------------\n\n")
    );
}
