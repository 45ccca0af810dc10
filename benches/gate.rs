//! What the credential gate costs a request: `Gate::plan` on a 16 KiB URL-encoded form POST
//! (the inspection the issue asks about), on a 16 KiB JSON body, on a 16 KiB multipart form, and
//! on a small GET, which the gate passes without reading anything.
//!
//! `cargo bench --bench gate`. A measurement, not a test: it asserts only that each plan is the
//! one expected, so that the work timed is the work meant.

use std::hint::black_box;
use std::time::Instant;

use faspex_gate::proxy::gate::{Gate, Plan, Probe};
use http::Method;

fn time(name: &str, rounds: u32, probe: &Probe<'_>, want: &Plan) {
    let gate = Gate::for_tests();
    assert_eq!(&gate.plan(probe), want, "{name}");
    // Warm up, then take the best of five runs of `rounds` plans.
    for _ in 0..rounds / 10 {
        black_box(gate.plan(black_box(probe)));
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(gate.plan(black_box(probe)));
        }
        best = best.min(t.elapsed().as_secs_f64() / f64::from(rounds));
    }
    let bytes = probe.body.len();
    let rate = if bytes > 0 {
        format!(", {:.0} MB/s", bytes as f64 / best / 1e6)
    } else {
        String::new()
    };
    println!("{name:<44} {:>9.2} µs per request{rate}", best * 1e6);
}

fn main() {
    // A Faspex send form of about 16 KiB: many short fields and a long note.
    let mut form = String::from("utf8=%E2%9C%93&authenticity_token=abc%3D");
    let mut i = 0;
    while form.len() < 12 * 1024 {
        form.push_str(&format!(
            "&delivery%5Brecipients%5D%5B%5D=user{i}%40example.org"
        ));
        i += 1;
    }
    form.push_str("&delivery%5Bnote%5D=");
    while form.len() < 16 * 1024 {
        form.push_str("hello+world+");
    }
    let mut json = String::from(r#"{"delivery":{"title":"t","recipients":["#);
    while json.len() < 16 * 1024 - 64 {
        json.push_str(r#""someone@example.org","#);
    }
    json.push_str(r#""last@example.org"],"note":"n"}}"#);
    let mut multipart = String::new();
    let mut n = 0;
    while multipart.len() < 16 * 1024 {
        multipart.push_str(&format!(
            "--BOUNDARY\r\nContent-Disposition: form-data; name=\"delivery[field{n}]\"\r\n\r\n{}\r\n",
            "v".repeat(200)
        ));
        n += 1;
    }
    multipart.push_str("--BOUNDARY--\r\n");

    let post = |target: &'static str, ct: &'static str, body: &'static str| Probe {
        method: &Method::POST,
        target,
        content_type: Some(ct),
        content_encoding: None,
        body: body.as_bytes(),
    };
    let form: &'static str = Box::leak(form.into_boxed_str());
    let json: &'static str = Box::leak(json.into_boxed_str());
    let multipart: &'static str = Box::leak(multipart.into_boxed_str());
    println!(
        "faspex-gate's credential gate, Gate::plan (form {} B, JSON {} B, multipart {} B)",
        form.len(),
        json.len(),
        multipart.len()
    );
    time(
        "small GET (nothing to read)",
        200_000,
        &Probe {
            method: &Method::GET,
            target: "/aspera/faspex/inbox",
            content_type: None,
            content_encoding: None,
            body: b"",
        },
        &Plan::Protected,
    );
    time(
        "16 KiB URL-encoded form POST",
        2_000,
        &post(
            "/aspera/faspex/send",
            "application/x-www-form-urlencoded",
            form,
        ),
        &Plan::Protected,
    );
    time(
        "16 KiB JSON POST",
        2_000,
        &post("/aspera/faspex/send", "application/json", json),
        &Plan::Protected,
    );
    time(
        "16 KiB multipart form POST",
        2_000,
        &post(
            "/aspera/faspex/send",
            "multipart/form-data; boundary=BOUNDARY",
            multipart,
        ),
        &Plan::Protected,
    );
}
