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
            return Err(ParamError::Malformed("Content-Type"));
        };
        let essence = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Rails takes the type up to a `,` or a `;`, Rack up to a `;`: a `,` is read two ways.
        if essence.contains(',') {
            return Err(ParamError::Malformed("Content-Type (a list)"));
        }
        Ok(match essence.as_str() {
            "application/x-www-form-urlencoded" => BodyKind::UrlEncoded,
            "application/octet-stream" => BodyKind::Opaque,
            "application/json" | "text/x-json" | "application/jsonrequest" => BodyKind::Json,
            "application/xml" | "text/xml" | "application/x-xml" => BodyKind::Xml,
            "multipart/form-data" => match boundary(text) {
                Some(b) => BodyKind::Multipart(b),
                None => return Err(ParamError::Malformed("multipart (no boundary)")),
            },
            // (Rack reads other multipart types as well; the gate reads only form-data)
            t if t.starts_with("multipart/") => {
                return Err(ParamError::Malformed("multipart (not form-data)"))
            }
            t if t.ends_with("+json") => BodyKind::Json,
            t if t.ends_with("+xml") => BodyKind::Xml,
            _ => BodyKind::Unknown,
        })
    }
}

/// The boundary of a `multipart/form-data` type, only in the one form every Rack reads alike:
/// the type written `multipart/` in lower case, exactly one parameter, `boundary=VALUE` (or a
/// quoted value) in lower case with no space around `=`, and the word `boundary` nowhere else.
/// Older Racks take the last `boundary=` anywhere in the header (`; x="boundary=B"`); Rack 1's
/// pattern (`\Amultipart/.*boundary=`) is case-sensitive, and misses one with a space before
/// `=`: then, the type still being form data to it, it reads the whole body as a URL-encoded
/// form, where `&user[password]=…` inside a part's value is a parameter. Each would read
/// another body than the gate.
fn boundary(content_type: &str) -> Option<String> {
    if !content_type.starts_with("multipart/")
        || content_type
            .to_ascii_lowercase()
            .matches("boundary")
            .count()
            != 1
    {
        return None;
    }
    let mut params = content_type.split(';').skip(1);
    let param = params.next()?.trim_start_matches(' ');
    if params.next().is_some() {
        return None;
    }
    let (key, value) = param.split_at_checked(9)?;
    if key != "boundary=" {
        return None;
    }
    let value = value.trim_end_matches(' ');
    let value = match value.strip_prefix('"') {
        Some(q) => q.strip_suffix('"')?,
        None => value,
    };
    (!value.is_empty() && !value.contains([' ', '"', '\t'])).then(|| value.to_owned())
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
pub fn reaches<S: AsRef<str>>(name: &str, path: &[S]) -> bool {
    let mut segs = segments(name);
    path.iter()
        .all(|want| segs.next().is_some_and(|s| same_segment(s, want.as_ref())))
}

/// Whether the key `name` holds `path` anywhere along its own path (`a[user][password][x]` holds
/// `user` → `password`): Rails' ParamsWrapper copies a JSON body under a key of its own, and an
/// action may read a credential at any depth.
pub fn holds<S: AsRef<str>>(name: &str, path: &[S]) -> bool {
    let segs: Vec<&str> = segments(name).collect();
    !path.is_empty()
        && segs.windows(path.len()).any(|w| {
            w.iter()
                .zip(path)
                .all(|(s, want)| same_segment(s, want.as_ref()))
        })
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
                // A body that looks like JSON or XML must read as one: what the gate cannot
                // read, it does not forward.
                Some(b'{' | b'[') => {
                    let mut json = Vec::new();
                    json_params(body, &mut json)?;
                    extend(out, json)?;
                }
                Some(b'<') => {
                    let mut xml = Vec::new();
                    xml_params(body, &mut xml)?;
                    extend(out, xml)?;
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
            Event::End(_) if path.pop().is_none() => return Err(ParamError::Malformed("XML")),
            Event::Text(t) if !path.is_empty() => {
                let text = t.unescape().map_err(bad)?;
                if !text.trim().is_empty() {
                    push(out, bracketed(&path), text.into_owned().into_bytes())?;
                }
            }
            Event::CData(c) if !path.is_empty() => {
                push(out, bracketed(&path), c.into_inner().into_owned())?;
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

/// A multipart body in the one canonical form every Rack version reads alike, or a refusal.
///
/// Rack's multipart readers differ between versions and from every other parser (a boundary
/// read up to a `,`, a CRLF before a delimiter that is optional, `name=` found anywhere in the
/// part's headers, backslash escapes in quoted names, a part named by its `Content-ID`, a body
/// without a readable boundary parsed as a form instead). So the gate does not guess how Rack
/// would read an odd body: it accepts only the canonical form, and refuses the rest (400):
///
/// - the boundary is 1 to 70 of RFC 2046's characters, without space, `"`, `,` or `;`;
/// - the body is `--B CRLF part (CRLF --B CRLF part)* CRLF --B--`, optionally followed by CRLF,
///   and `--B` appears nowhere else;
/// - each part's headers are one `Content-Disposition: form-data; name="…"` (optionally
///   `; filename="…"`) and at most one `Content-Type`, nothing else; quoted values hold no `"`,
///   `\` or control character.
fn multipart_params(boundary: &str, body: &[u8], out: &mut Vec<Param>) -> Result<(), ParamError> {
    let bad = ParamError::Malformed("multipart");
    let ok_boundary = (1..=70).contains(&boundary.len())
        && boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"'()+_-./:=?".contains(&b));
    if !ok_boundary {
        return Err(bad);
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let at: Vec<usize> = memchr::memmem::find_iter(body, delim).collect();
    let (Some(&first), Some(&last)) = (at.first(), at.last()) else {
        return Err(bad);
    };
    if first != 0 || at.len() < 2 {
        return Err(bad);
    }
    let tail = &body[last + delim.len()..];
    if tail != b"--" && tail != b"--\r\n" {
        return Err(bad);
    }
    for pair in at.windows(2) {
        let (start, end) = (pair[0] + delim.len(), pair[1]);
        let part = body.get(start..end).ok_or(bad)?;
        let part = part
            .strip_prefix(b"\r\n")
            .and_then(|p| p.strip_suffix(b"\r\n"))
            .ok_or(bad)?;
        let split = memchr::memmem::find(part, b"\r\n\r\n").ok_or(bad)?;
        let (head, value) = (&part[..split], &part[split + 4..]);
        // Rack finds the name after the first `Content-Disposition:` anywhere in the head, a
        // `Content-Type` value's included: the head holds the one label, as a field's name.
        let labels = head
            .windows(20)
            .filter(|w| w.eq_ignore_ascii_case(b"content-disposition:"))
            .count();
        if labels != 1 {
            return Err(bad);
        }
        let mut name = None;
        let mut content_type = false;
        let mut lines = Vec::new();
        let mut rest = head;
        while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
            lines.push(&rest[..i]);
            rest = &rest[i + 2..];
        }
        lines.push(rest);
        for line in lines {
            // (a bare CR or LF, or a folded line: read differently by different parsers)
            if line.iter().any(|&b| b == b'\r' || b == b'\n')
                || line.first().is_some_and(|b| b.is_ascii_whitespace())
            {
                return Err(bad);
            }
            let text = std::str::from_utf8(line).map_err(|_| bad)?;
            let (field, v) = text.split_once(':').ok_or(bad)?;
            match field.to_ascii_lowercase().as_str() {
                "content-disposition" if name.is_none() => name = Some(disposition_name(v)?),
                "content-type" if !content_type => content_type = true,
                _ => return Err(bad),
            }
        }
        push(out, name.ok_or(bad)?, value.to_vec())?;
    }
    Ok(())
}

/// The `name` of a `form-data; name="…"[; filename="…"]` disposition, nothing else accepted.
///
/// Rack 1 finds the name with `Content-Disposition:.*\s+name="?([^";]*)`: the last `name=`
/// after white space anywhere in the line. So `name="x name=password"` or
/// `filename="a name=b"` names another parameter to it than to a parser of quoted strings,
/// and `form-data;name="x"` none at all: the line must hold exactly one `name=` after white
/// space, the name parameter's own.
fn disposition_name(v: &str) -> Result<String, ParamError> {
    let bad = ParamError::Malformed("multipart");
    // (Ruby's `\s`)
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r');
    let bytes = v.as_bytes();
    let spaced_names = (1..bytes.len())
        .filter(|&i| {
            space(bytes[i - 1])
                && bytes
                    .get(i..i + 5)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"name="))
        })
        .count();
    if spaced_names != 1 {
        return Err(bad);
    }
    // The one spelling: `form-data; name="N"`, optionally `; filename="F"`, each `;` followed by
    // exactly one space, so that the one `name=` after white space is the name parameter's own
    // (`form-data;name="x name=password"` has its one inside the quotes).
    let rest = v.strip_prefix(' ').unwrap_or(v);
    let rest = rest
        .get(..9)
        .filter(|t| t.eq_ignore_ascii_case("form-data"))
        .map(|_| &rest[9..])
        .ok_or(bad)?;
    let (name, rest) = quoted_param(rest, "; name=\"").ok_or(bad)?;
    if !rest.is_empty() {
        let (_, rest) = quoted_param(rest, "; filename=\"").ok_or(bad)?;
        if !rest.is_empty() {
            return Err(bad);
        }
    }
    Ok(name)
}

/// `open` (a parameter up to its opening quote, in any case) at the start of `s`, then a quoted
/// value without `\` or control characters: the value and what follows its closing quote.
fn quoted_param<'a>(s: &'a str, open: &str) -> Option<(String, &'a str)> {
    if !s.get(..open.len())?.eq_ignore_ascii_case(open) {
        return None;
    }
    let after = &s[open.len()..];
    let close = after.find('"')?;
    let inner = &after[..close];
    if inner.chars().any(|c| c == '\\' || c.is_control()) {
        return None;
    }
    Some((inner.to_owned(), &after[close + 1..]))
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
    fn multipart_is_read_only_in_its_canonical_form() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XX\r\nContent-Disposition: form-data; name=\"user[password]\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\nw\r\n--XX--\r\n";
        assert_eq!(
            names(&BodyKind::Multipart("XX".into()), body),
            ["a", "user[password]"]
        );
        // Every spelling some Rack version reads otherwise is refused (the hostile review's
        // cases: a second name, backslash escapes, a header that holds "Content-Disposition:",
        // Content-ID, a delimiter without CRLF before it, a part after the close).
        for body in [
            &b"--XX\r\nContent-Disposition: form-data; name=\"a\"; name=\"user[password]\"\r\n\r\nv\r\n--XX--"[..],
            b"--XX\r\nContent-Disposition: form-data; name=\"user[pass\\word]\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nX-Content-Disposition: ; name=\"user[password]\"\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name*=utf-8''x\r\nContent-ID: user[password]\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"; foo=\"x; name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx--XX--\r\n --XX\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\ng\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XX--\r\n--XX\r\n",
            b"preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XX--",
            b"--XX\nContent-Disposition: form-data; name=\"a\"\n\nv\n--XX--",
            // (the fourth review: Rack 1 reads the last `name=` after white space in the line,
            // here `password`, and none without white space before it)
            b"--XX\r\nContent-Disposition: form-data; name=\"x name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"; filename=\"f name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data;name=\"a\"\r\n\r\nv\r\n--XX--",
            // (the fifth review: a `;` without its space, so the one `name=` after white space
            // is inside the quotes; a vertical tab, which Ruby's `\s` counts; the label inside a
            // `Content-Type` value, before or after the disposition)
            b"--XX\r\nContent-Disposition: form-data;name=\"x name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data;\x0bname=\"x name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data;\tname=\"user[password]\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Type: text/plain; x=\"Content-Disposition: y; name=password\"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain; x=\"content-disposition: y; name=password\"\r\n\r\nv\r\n--XX--",
            b"--XX\r\nContent-Disposition: form-data; name=\"a\" \r\n\r\nv\r\n--XX--",
        ] {
            assert!(
                body_params(&BodyKind::Multipart("XX".into()), body, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for ct in [
            "multipart/form-data; boundary=\"AAA,x\"",
            "multipart/form-data; boundary=\";x\"",
            "multipart/form-data; boundary=a; boundary=b",
            // (the second review: a `boundary=` inside another parameter, a space before `=`)
            "multipart/form-data; boundary=AAA; x=\"boundary=BBB\"",
            "multipart/form-data; boundary=AAA; x=boundary=BBB",
            "multipart/form-data; boundary =AAA",
            "multipart/form-data; boundary= AAA",
            "multipart/form-data; charset=utf-8; boundary=AAA",
            "multipart/mixed; boundary=a",
            "application/json, text/plain",
            // (the fourth review: Rack 1's `\Amultipart/.*boundary=` is case-sensitive; missing
            // it, Rack 1 reads the whole body as a URL-encoded form)
            "Multipart/form-data; boundary=AAA",
            "multipart/form-data; Boundary=AAA",
            "MULTIPART/FORM-DATA; BOUNDARY=AAA",
        ] {
            let kind = BodyKind::of(Some(ct.as_bytes()));
            // (a body framed by the boundary read: refused only if that reading is)
            let refused = match kind {
                Err(_) => true,
                Ok(BodyKind::Multipart(b)) => {
                    let body = format!(
                        "--{b}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--{b}--"
                    );
                    multipart_params(&b, body.as_bytes(), &mut Vec::new()).is_err()
                }
                Ok(_) => false,
            };
            assert!(refused, "{ct}");
        }
    }

    /// What every Rack reads as multipart alike still is: the subtype in any case (Rack compares
    /// the media type in lower case), the disposition's label and parameters in any case.
    #[test]
    fn multipart_in_the_forms_every_rack_reads_alike_is_read() {
        assert_eq!(
            BodyKind::of(Some(b"multipart/FORM-DATA; boundary=XX")),
            Ok(BodyKind::Multipart("XX".into()))
        );
        let body = b"--XX\r\ncontent-disposition: FORM-DATA; NAME=\"user[password]\"; Filename=\"a b.txt\"\r\n\r\nv\r\n--XX--";
        assert_eq!(
            names(&BodyKind::Multipart("XX".into()), body),
            ["user[password]"]
        );
    }

    #[test]
    fn bad_bodies_are_refused_not_guessed() {
        let mut out = Vec::new();
        for (kind, body) in [
            (BodyKind::Json, &b"{\"a\":"[..]),
            (BodyKind::Xml, b"<a><b></a>"),
            (BodyKind::Xml, b"<a>"),
            (BodyKind::Multipart("XX".into()), b"--YY\r\n\r\n"),
            (BodyKind::Unknown, b"{\"user\":"),
            (
                BodyKind::Unknown,
                b"<!DOCTYPE u [<!ENTITY e \"x\">]><user><password>g</password><z>&e;</z></user>",
            ),
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
