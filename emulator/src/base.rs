//! The bottom of the emulator: small pieces every other module may use and which use none of
//! them. HTML escaping, random tokens, and the stop signal that ends connections and WebSocket
//! sessions when [`Emulator::serve`](crate::Emulator::serve) stops.

use std::borrow::Cow;

use tokio::sync::watch;

/// Escape text for HTML element content and double- or single-quoted attribute values: `&`, `<`,
/// `>`, `"` and `'` (as `&#x27;`). Text with none of them is borrowed, not copied.
pub fn escape(s: &str) -> Cow<'_, str> {
    html_escape::encode_quoted_attribute(s)
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// `len_bytes` random bytes as lowercase hex: session cookies and OAuth2 access tokens.
pub fn random_hex(len_bytes: usize) -> String {
    hex(&random_bytes(len_bytes))
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Resolve once the stop signal is raised; never, if its sender is gone without raising it.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0, 0x0f, 0xab]), "000fab");
        assert_eq!(random_hex(16).len(), 32);
    }
}
