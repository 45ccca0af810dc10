//! Username preparation (RFC 4518): never a panic, bounded, and idempotent.
#![no_main]

use faspex_gate::account::prepare;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(once) = prepare(raw) {
        assert!(!once.is_empty());
        assert_eq!(prepare(&once).as_deref(), Ok(once.as_str()), "{raw:?}");
    }
});
