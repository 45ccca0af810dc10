//! The credential gate on a whole request: never a panic, and a login plan only with the
//! credentials its body holds.
#![no_main]

use faspex_gate::proxy::gate::{Gate, Plan, Probe};
use http::Method;
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 8] = [
    None,
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=B"),
    Some("application/json"),
    Some("application/xml"),
    Some("text/plain"),
    Some("application/octet-stream"),
    Some("multipart/form-data"),
];

fuzz_target!(|data: &[u8]| {
    let [m, t, rest @ ..] = data else {
        return;
    };
    // target \n body
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let method = [Method::GET, Method::POST, Method::HEAD, Method::PUT][usize::from(*m) % 4].clone();
    let plan = Gate::for_tests().plan(&Probe {
        method: &method,
        target,
        content_type: TYPES[usize::from(*t) % TYPES.len()],
        content_encoding: None,
        body,
    });
    // A login plan's credentials are the form's own fields, each given once, in the body.
    if let Plan::Login { username, password } = plan {
        for (field, value) in [("user[name]", &username), ("user[password]", &password)] {
            let given: Vec<String> = url::form_urlencoded::parse(body)
                .filter(|(k, _)| k == field)
                .map(|(_, v)| v.into_owned())
                .collect();
            match given.as_slice() {
                [] => assert!(value.is_empty(), "{field}: {value:?} from nowhere"),
                [one] => assert_eq!(one, value, "{field}"),
                more => panic!("{field} given {} times, yet a login", more.len()),
            }
        }
    }
});
