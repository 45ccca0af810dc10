//! Secrets: the [`Secret`] type that never prints its contents, and the reading and checking of
//! secret files (`session.secret_file`, `admin.token_file`, `auth.ldap.bind_password_file`).
//!
//! A secret file must exist, be a regular file, have no group or world permission bits, be
//! readable, and hold something other than whitespace. Leading and trailing whitespace (a trailing
//! newline from `echo`) is trimmed. The checks return a reason for a person; the caller adds the
//! file and key.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

/// Secret bytes (a key, a token, a password). `Debug` prints `<redacted>`; only
/// [`Secret::expose`] shows the bytes.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wrap bytes as a secret.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Arc::from(bytes.into()))
    }

    /// The secret bytes. Keep them out of logs and error messages.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Compared in constant time (a reload asks whether the session key changed).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The minimum length of the session secret, in bytes.
pub(crate) const SESSION_SECRET_MIN: usize = 32;
/// The minimum length of the admin token, in characters.
pub(crate) const ADMIN_TOKEN_MIN: usize = 16;

/// Read a secret file and return its contents with surrounding whitespace trimmed, or a reason.
pub(crate) fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file {shown} does not exist"),
        _ => format!("cannot access {shown}: {e}"),
    })?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    check_private(path, &meta)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(format!("{shown} is empty (or holds only whitespace)"));
    }
    Ok(trimmed.to_vec())
}

/// A secret file must not be readable or writable by group or others.
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}, which lets group or others access it; \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// The session secret: base64 that decodes to at least 32 bytes (line breaks allowed) is used
/// decoded; otherwise the raw bytes are used, and there must be at least 32 of them.
pub(crate) fn session_secret(contents: &[u8]) -> Result<Secret, String> {
    let compact: Vec<u8> = contents
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if let Some(decoded) = decode_base64(&compact) {
        if decoded.len() >= SESSION_SECRET_MIN {
            return Ok(Secret::new(decoded));
        }
    }
    if contents.len() >= SESSION_SECRET_MIN {
        return Ok(Secret::new(contents));
    }
    Err(format!(
        "the session secret is too short: it needs at least {SESSION_SECRET_MIN} bytes, raw or \
         base64-encoded; create one with `head -c 32 /dev/urandom | base64 > FILE`"
    ))
}

/// Standard or URL-safe base64, with or without padding.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// The admin token: at least 16 characters, printable ASCII without spaces (it travels in an
/// `Authorization: Bearer` header).
pub(crate) fn admin_token(contents: &[u8]) -> Result<Secret, String> {
    if !contents.iter().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the admin token must be printable ASCII without spaces (it is sent in an \
                    HTTP header); create one with `head -c 24 /dev/urandom | base64 > FILE`"
                .into(),
        );
    }
    if contents.len() < ADMIN_TOKEN_MIN {
        return Err(format!(
            "the admin token is too short: it needs at least {ADMIN_TOKEN_MIN} characters; \
             create one with `head -c 24 /dev/urandom | base64 > FILE`"
        ));
    }
    Ok(Secret::new(contents))
}
