//! Small helpers shared by several modules: private files, random secrets, the timer cap.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The longest a timer is set for (30 years, where tokio stops its own): a configured limit past
/// `Instant`'s range would otherwise overflow, and panic, when added to now.
pub const TIMER_CAP: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);

/// Write `bytes` to a new file only its owner can read (mode 0600), replacing any old file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `n` bytes from the operating system's secure random source.
pub fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(buf)
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    Ok(hex(&random_bytes(n)?))
}

/// Bytes as lower-case hex, in one allocation.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Append `ip` as text, as `Display` writes it. An IPv4 address, nearly every client's, is
/// written digit by digit: `Display` goes through the formatting machinery, which cost more
/// than a tenth of the access line and of the forwarding headers together.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.7",
            "255.255.255.255",
            "10.20.30.40",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut s = String::from("x=");
            push_ip(&mut s, ip);
            assert_eq!(s, format!("x={ip}"));
        }
    }
}
