//! How Rack and Rails read a request's parameters, in the widest reading any version gives.
//!
//! Faspex 4 is a Rails application: whatever it does with a request, it does with `params`, the
//! query string and the body merged into one nested hash. The gateway must see every parameter
//! Faspex could see, so this module reads a request as generously as any Rack/Rails version does:
//!
//! - query strings and form bodies split on `&` **and** `;` (Rack 1.x split both on both; Rack 2
//!   still splits query strings on `;`), with the spaces after a separator dropped, `+` as a space
//!   and percent escapes decoded, keys and values alike;
//! - `multipart/form-data` parts by every `name` their `Content-Disposition` carries;
//! - JSON bodies (Rails' JSON params parser), XML bodies (Rails 3 parsed them with
//!   `Hash.from_xml`: element and attribute names become keys, `-` read as `_`);
//! - a key is read as Rack's nested-key parser reads it: the runs between brackets are the path
//!   (`user[password]`, `[user]password`, `user]password`, `user[password][]` and
//!   `user[][password]` all reach `user` → `password`).
//!
//! A reading that is wider than Rack's only makes the gateway refuse more: never less.
//! Everything is bounded: [`MAX_PARAMS`] parameters, [`MAX_DEPTH`] levels of nesting.

use std::borrow::Cow;

/// The most parameters one request may carry (query and body together).
pub const MAX_PARAMS: usize = 10_000;

/// The deepest nesting of a JSON or XML body, or of a bracketed key.
pub const MAX_DEPTH: usize = 32;

/// One parameter as Rack reads it: its key, percent-decoded (`user[password]`), and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Vec<u8>,
}

/// Why a request's parameters could not be read. Answered 400: what the gateway cannot read,
/// it does not forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("the request carries more than {MAX_PARAMS} parameters")]
    TooMany,
    #[error("the request's parameters are nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the request body is not valid {0}")]
    Malformed(&'static str),
}

/// What a body is, as far as parameters go, by its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data` (or any `multipart/*`) with its boundary.
    Multipart(String),
    /// `application/json`, `text/x-json`, `*+json`, `application/jsonrequest`.
    Json,
    /// `application/xml`, `text/xml`, `*+xml`.
    Xml,
    /// `application/octet-stream`: file data, never parsed into parameters by Rails.
    Opaque,
    /// Missing or of another type: read every way that succeeds (Rack reads a POST without a
    /// type as a form).
    Unknown,
}

impl BodyKind {
    /// The kind of a body from its `Content-Type` value (`None` when there is none).
    pub fn of(content_type: Option<&[u8]>) -> Result<BodyKind, ParamError> {
        let Some(raw) = content_type else {
            return Ok(BodyKind::Unknown);
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return Ok(BodyKind::Unknown);
        };
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Ok(match essence.as_str() {
            "application/x-www-form-urlencoded" => BodyKind::UrlEncoded,
            "application/octet-stream" => BodyKind::Opaque,
            "application/json" | "text/x-json" | "application/jsonrequest" => BodyKind::Json,
            "application/xml" | "text/xml" => BodyKind::Xml,
            t if t.starts_with("multipart/") => match multer::parse_boundary(text) {
                Ok(b) if !b.is_empty() => BodyKind::Multipart(b),
                _ => return Err(ParamError::Malformed("multipart (no boundary)")),
            },
            t if t.ends_with("+json") => BodyKind::Json,
            t if t.ends_with("+xml") => BodyKind::Xml,
            _ => BodyKind::Unknown,
        })
    }
}

/// The path of a key as Rack's nested-key parser reads it: the non-empty runs between brackets,
/// trimmed.
pub fn segments(name: &str) -> impl Iterator<Item = &str> {
    name.split(['[', ']'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether two key segments name the same thing in any reading: ASCII case folded, `-` read as
/// `_` (XML's `refresh-token` is `refresh_token` to Rails).
pub fn same_segment(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let fold = |c: u8| {
                if c == b'-' {
                    b'_'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(x) == fold(y)
        })
}

/// Whether the key `name` reaches the parameter at `path` (or something nested under it).
pub fn reaches(name: &str, path: &[&str]) -> bool {
    let mut segs = segments(name);
    path.iter()
        .all(|want| segs.next().is_some_and(|s| same_segment(s, want)))
}

/// Percent-decode a form component (`+` is a space). Invalid escapes stay as they are.
fn decode_component(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'+') && !raw.contains(&b'%') {
        return Cow::Borrowed(raw);
    }
    let plus: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    Cow::Owned(percent_encoding::percent_decode(&plus).collect())
}

/// Read a query string or a form body: pairs split on `&` and `;`.
pub fn form_params(raw: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    for pair in raw.split(|&b| b == b'&' || b == b';') {
        let pair = pair.trim_ascii_start();
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        push(
            out,
            String::from_utf8_lossy(&decode_component(k)).into_owned(),
            decode_component(v).into_owned(),
        )?;
    }
    Ok(())
}

fn push(out: &mut Vec<Param>, name: String, value: Vec<u8>) -> Result<(), ParamError> {
    if out.len() >= MAX_PARAMS {
        return Err(ParamError::TooMany);
    }
    if name.bytes().filter(|&b| b == b'[').count() > MAX_DEPTH {
        return Err(ParamError::TooDeep);
    }
    out.push(Param { name, value });
    Ok(())
}

/// Read a body of `kind` into parameters. An [`BodyKind::Opaque`] body has none.
pub fn body_params(kind: &BodyKind, body: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    match kind {
        BodyKind::UrlEncoded => form_params(body, out),
        BodyKind::Multipart(boundary) => multipart_params(boundary, body, out),
        BodyKind::Json => json_params(body, out),
        BodyKind::Xml => xml_params(body, out),
        BodyKind::Opaque => Ok(()),
        BodyKind::Unknown => {
            // Every reading that succeeds: as a form (Rack's reading of a POST without a type),
            // and as JSON or XML where the body is one.
            form_params(body, out)?;
            let first = body.trim_ascii_start().first().copied();
            match first {
                Some(b'{' | b'[') => {
                    let mut json = Vec::new();
                    if json_params(body, &mut json).is_ok() {
                        extend(out, json)?;
                    }
                }
                Some(b'<') => {
                    let mut xml = Vec::new();
                    if xml_params(body, &mut xml).is_ok() {
                        extend(out, xml)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }
    }
}

fn extend(out: &mut Vec<Param>, more: Vec<Param>) -> Result<(), ParamError> {
    if out.len() + more.len() > MAX_PARAMS {
        return Err(ParamError::TooMany);
    }
    out.extend(more);
    Ok(())
}

/// A bracketed key from a path of names: `["user", "password"]` → `user[password]`.
fn bracketed(path: &[String]) -> String {
    let mut name = String::new();
    for (i, seg) in path.iter().enumerate() {
        if i == 0 {
            name.push_str(seg);
        } else {
            name.push('[');
            name.push_str(seg);
            name.push(']');
        }
    }
    name
}

fn json_params(body: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    // serde_json refuses nesting past 128 levels on its own; ours is tighter, checked below.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ParamError::Malformed("JSON"))?;
    let mut path = Vec::new();
    walk_json(&value, &mut path, out)
}

fn walk_json(
    value: &serde_json::Value,
    path: &mut Vec<String>,
    out: &mut Vec<Param>,
) -> Result<(), ParamError> {
    use serde_json::Value;
    if path.len() > MAX_DEPTH {
        return Err(ParamError::TooDeep);
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                walk_json(v, path, out)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => {
            // Rails puts a top-level array under `_json`; nested arrays are transparent to
            // the key path.
            if path.is_empty() {
                path.push("_json".into());
                for v in items {
                    walk_json(v, path, out)?;
                }
                path.pop();
            } else {
                for v in items {
                    walk_json(v, path, out)?;
                }
            }
            Ok(())
        }
        leaf => {
            let text = match leaf {
                Value::String(s) => s.clone().into_bytes(),
                Value::Null => Vec::new(),
                other => other.to_string().into_bytes(),
            };
            if path.is_empty() {
                return push(out, "_json".into(), text);
            }
            push(out, bracketed(path), text)
        }
    }
}

fn xml_params(body: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let bad = |_| ParamError::Malformed("XML");
    loop {
        match reader.read_event_into(&mut buf).map_err(bad)? {
            Event::Start(e) => {
                path.push(local_name(e.name().as_ref()));
                if path.len() > MAX_DEPTH {
                    return Err(ParamError::TooDeep);
                }
                xml_attributes(&e, &mut path, out)?;
            }
            Event::Empty(e) => {
                path.push(local_name(e.name().as_ref()));
                if path.len() > MAX_DEPTH {
                    return Err(ParamError::TooDeep);
                }
                xml_attributes(&e, &mut path, out)?;
                push(out, bracketed(&path), Vec::new())?;
                path.pop();
            }
            Event::End(_) => {
                if path.pop().is_none() {
                    return Err(ParamError::Malformed("XML"));
                }
            }
            Event::Text(t) => {
                if !path.is_empty() {
                    let text = t.unescape().map_err(bad)?;
                    if !text.trim().is_empty() {
                        push(out, bracketed(&path), text.into_owned().into_bytes())?;
                    }
                }
            }
            Event::CData(c) => {
                if !path.is_empty() {
                    push(out, bracketed(&path), c.into_inner().into_owned())?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !path.is_empty() {
        return Err(ParamError::Malformed("XML"));
    }
    Ok(())
}

fn xml_attributes(
    e: &quick_xml::events::BytesStart<'_>,
    path: &mut Vec<String>,
    out: &mut Vec<Param>,
) -> Result<(), ParamError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|_| ParamError::Malformed("XML"))?;
        path.push(local_name(attr.key.as_ref()));
        let value = attr.value.into_owned();
        let r = push(out, bracketed(path), value);
        path.pop();
        r?;
    }
    Ok(())
}

/// An XML name without its namespace prefix, `-` kept (matching folds it).
fn local_name(name: &[u8]) -> String {
    let local = match memchr::memrchr(b':', name) {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(local).into_owned()
}

fn multipart_params(boundary: &str, body: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    use futures_util::FutureExt as _;
    let bad = ParamError::Malformed("multipart");
    let data = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(data)]);
    let mut multipart = multer::Multipart::new(stream, boundary);
    // The whole body is in memory: every step completes at once, or the body is broken.
    loop {
        let field = match multipart.next_field().now_or_never() {
            Some(Ok(Some(field))) => field,
            Some(Ok(None)) => return Ok(()),
            Some(Err(_)) | None => return Err(bad),
        };
        // Every `name` the part's Content-Disposition carries, however spelled: servers
        // disagree on which one counts.
        let mut names: Vec<String> = field
            .headers()
            .get_all(http::header::CONTENT_DISPOSITION)
            .iter()
            .flat_map(|v| disposition_names(v.as_bytes()))
            .collect();
        if let Some(n) = field.name() {
            names.push(n.to_owned());
        }
        if names.is_empty() {
            return Err(bad);
        }
        let value = match field.bytes().now_or_never() {
            Some(Ok(b)) => b.to_vec(),
            _ => return Err(bad),
        };
        for name in names {
            push(out, name, value.clone())?;
        }
    }
}

/// The values of every `name` (or `name*`) parameter of a `Content-Disposition` value.
fn disposition_names(v: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(v);
    let mut names = Vec::new();
    let mut rest: &str = &text;
    while let Some(i) = rest.find(';') {
        rest = &rest[i + 1..];
        let param = rest.trim_start();
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if key != "name" && key != "name*" {
            continue;
        }
        let value = value.trim_start();
        let value = if let Some(quoted) = value.strip_prefix('"') {
            quoted.split('"').next().unwrap_or("")
        } else {
            value.split(';').next().unwrap_or("").trim()
        };
        // RFC 5987 `name*=utf-8''user%5Bpassword%5D`.
        let value = match value.rsplit_once("''") {
            Some((_, encoded)) if key == "name*" => percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .into_owned(),
            _ => value.to_owned(),
        };
        names.push(value);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kind: &BodyKind, body: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        body_params(kind, body, &mut out).unwrap();
        out.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn keys_reach_as_rack_nests_them() {
        let pw = ["user", "password"];
        for k in [
            "user[password]",
            "[user][password]",
            "user]password",
            "user[password",
            "user[password][]",
            "user[][password]",
            "User[PASSWORD]",
            "user[password][x]",
            " user [ password ]",
        ] {
            assert!(reaches(k, &pw), "{k}");
        }
        for k in [
            "user",
            "user[name]",
            "x[user][password]",
            "userpassword",
            "password",
        ] {
            assert!(!reaches(k, &pw), "{k}");
        }
        assert!(reaches("refresh-token", &["refresh_token"]));
    }

    #[test]
    fn forms_split_as_rack_one_does() {
        let mut out = Vec::new();
        form_params(b"a=1;user%5Bpassword%5D=x&& ;  b+c=d%20e&flag", &mut out).unwrap();
        let got: Vec<(&str, &[u8])> = out
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", &b"1"[..]),
                ("user[password]", b"x"),
                ("b c", b"d e"),
                ("flag", b""),
            ]
        );
    }

    #[test]
    fn json_and_xml_bodies_become_nested_keys() {
        assert_eq!(
            names(
                &BodyKind::Json,
                br#"{"user":{"name":"a","password":"b"},"n":[1,{"x":2}]}"#
            ),
            ["n", "n[x]", "user[name]", "user[password]"]
        );
        assert_eq!(
            names(&BodyKind::Json, br#"[{"password":1}]"#),
            ["_json[password]"]
        );
        assert_eq!(
            names(
                &BodyKind::Xml,
                br#"<?xml version="1.0"?><user id="1"><a:password>x</a:password><refresh-token/></user>"#
            ),
            ["user[id]", "user[password]", "user[refresh-token]"]
        );
    }

    #[test]
    fn multipart_names_every_spelling() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"a\"; name=\"user[password]\"\r\n\r\nv\r\n--XX\r\nContent-Disposition: form-data; name*=utf-8''user%5Bname%5D\r\n\r\nw\r\n--XX--\r\n";
        let got = names(&BodyKind::Multipart("XX".into()), body);
        assert!(got.iter().any(|n| n == "user[password]"), "{got:?}");
        assert!(got.iter().any(|n| n == "user[name]"), "{got:?}");
    }

    #[test]
    fn bad_bodies_are_refused_not_guessed() {
        let mut out = Vec::new();
        for (kind, body) in [
            (BodyKind::Json, &b"{\"a\":"[..]),
            (BodyKind::Xml, b"<a><b></a>"),
            (BodyKind::Xml, b"<a>"),
            (BodyKind::Multipart("XX".into()), b"--YY\r\n\r\n"),
            (BodyKind::Multipart("XX".into()), b"garbage"),
        ] {
            assert!(body_params(&kind, body, &mut out).is_err(), "{kind:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(body_params(&BodyKind::Json, deep.as_bytes(), &mut out).is_err());
        let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
        assert_eq!(
            body_params(&BodyKind::Json, deep.as_bytes(), &mut Vec::new()),
            Err(ParamError::TooDeep)
        );
        let deep_key = format!("a{}=1", "[b]".repeat(40));
        assert_eq!(
            form_params(deep_key.as_bytes(), &mut Vec::new()),
            Err(ParamError::TooDeep)
        );
        let many = "a=1&".repeat(MAX_PARAMS + 1);
        assert_eq!(
            form_params(many.as_bytes(), &mut Vec::new()),
            Err(ParamError::TooMany)
        );
        let enough = "a=1&".repeat(MAX_PARAMS);
        assert!(form_params(enough.as_bytes(), &mut Vec::new()).is_ok());
        assert_eq!(
            BodyKind::of(Some(b"multipart/form-data")),
            Err(ParamError::Malformed("multipart (no boundary)"))
        );
    }

    #[test]
    fn unknown_bodies_are_read_every_way() {
        let got = names(&BodyKind::Unknown, br#"{"password":"x"}"#);
        assert!(got.iter().any(|n| n == "password"), "{got:?}");
        let got = names(&BodyKind::Unknown, b"user[password]=x");
        assert_eq!(got, ["user[password]"]);
        assert_eq!(BodyKind::of(None), Ok(BodyKind::Unknown));
        assert_eq!(
            BodyKind::of(Some(b"Application/JSON; charset=utf-8")),
            Ok(BodyKind::Json)
        );
        assert_eq!(
            BodyKind::of(Some(b"application/vnd.aspera.url-list+xml")),
            Ok(BodyKind::Xml)
        );
    }
}
