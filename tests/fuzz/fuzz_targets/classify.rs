//! Path classification: never a panic, and the path it forwards classifies as it did (the
//! forwarded path is normal: no `//`, no dot segment, nothing left to resolve). A denied path
//! stays denied (or refused) in other case and with `;params` on its segments.
#![no_main]

use faspex_gate::proxy::gate::Gate;
use http::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, path)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let method = [Method::GET, Method::POST, Method::HEAD, Method::PUT][usize::from(m) % 4].clone();
    let gate = Gate::for_tests();
    let Ok(first) = gate.classify(&method, path) else {
        return;
    };
    let forward = first.forward.clone().unwrap_or_else(|| path.to_owned());
    assert!(!forward.contains("//"), "{path:?} -> {forward:?}");
    assert!(
        !forward.split('/').any(|s| s == "." || s == ".."),
        "{path:?} -> {forward:?}"
    );
    let again = gate
        .classify(&method, &forward)
        .expect("the forwarded path classifies");
    assert_eq!(again.route, first.route, "{path:?} -> {forward:?}");
    assert_eq!(again.action, first.action, "{path:?} -> {forward:?}");
    assert!(
        again.forward.is_none(),
        "{path:?} -> {forward:?} is not normal"
    );
    if first.route == faspex_gate::proxy::classify::Route::Denied {
        let params: String = path
            .split('/')
            .enumerate()
            .map(|(i, s)| {
                if i == 0 {
                    s.to_owned()
                } else {
                    format!("/{s};p")
                }
            })
            .collect();
        for variant in [path.to_ascii_uppercase(), path.to_ascii_lowercase(), params] {
            if let Ok(c) = gate.classify(&method, &variant) {
                assert_eq!(
                    c.route,
                    faspex_gate::proxy::classify::Route::Denied,
                    "{path:?} is denied, {variant:?} is not"
                );
            }
        }
    }
});
