//! argon2id password hashes in PHC string form (`$argon2id$v=19$m=19456,t=2,p=1$...`), as the
//! `file` backend stores them and `faspex-gate hash-password` prints them.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;

/// Hash a password with argon2id and a fresh random salt (OWASP's parameters: 19 MiB, 2 passes).
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt_bytes = crate::util::random_bytes(16)?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| anyhow::anyhow!("cannot encode the salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = super::hash("correct horse").unwrap();
        let b = super::hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$"));
        assert_ne!(a, b, "each hash has its own salt");
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(argon2::Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
