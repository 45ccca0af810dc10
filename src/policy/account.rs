//! Account names as the policies count them: one spelling per person.
//!
//! `ANN`, `HUTCH\ann`, `ann@fhcrc.org` (with both domains in `policy.username_domains`) and the
//! full-width `ａｎｎ` are all `ann`, so an attacker cannot double the lockout budget by
//! respelling a name (Authelia GHSA-m5mf-3963-4x26). The steps: refuse control and invisible
//! formatting characters; Unicode NFKC (compatibility forms such as full-width letters fold to
//! plain ones); lower-case; NFKC again; trim white space; strip a listed domain. Look-alikes that
//! NFKC does not fold (Cyrillic `а` for Latin `a`) stay distinct names, as they are distinct
//! accounts in the directory: their failures count under their own name.

use unicode_normalization::UnicodeNormalization;

/// The longest account name accepted, in bytes after normalisation.
pub const MAX_ACCOUNT_BYTES: usize = 256;

/// Why a username cannot be an account name. The client is told plainly; nothing is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUsername {
    #[error("the username is empty")]
    Empty,
    #[error("the username is longer than {MAX_ACCOUNT_BYTES} bytes")]
    TooLong,
    #[error("the username contains a control character")]
    Control,
    #[error("the username contains an invisible formatting character")]
    Invisible,
    /// Not UTF-8, or holding U+FFFD, the mark of bytes that were not.
    #[error("the username is not valid UTF-8")]
    NotUtf8,
}

/// A username as it arrived in bytes (a form field, a Basic header): refused, before any other
/// work, when it is far too long or not UTF-8.
pub fn from_bytes(raw: &[u8]) -> Result<&str, InvalidUsername> {
    if raw.len() > 4 * MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    std::str::from_utf8(raw).map_err(|_| InvalidUsername::NotUtf8)
}

/// Characters that render as nothing (or as a space-like blank) and would let two spellings of one
/// name look the same: soft hyphen, zero-width and direction marks, fillers, variation selectors,
/// the byte-order mark, tags.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// The account name `raw` counts as, given the domains to strip.
pub fn normalize(raw: &str, domains: &[String]) -> Result<String, InvalidUsername> {
    // Bound the work before doing any: NFKC can grow a string, but not from under 4× the limit to
    // anything worth normalising.
    if raw.len() > 4 * MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidUsername::Control);
    }
    if raw.chars().any(is_invisible) {
        return Err(InvalidUsername::Invisible);
    }
    if raw.contains('\u{FFFD}') {
        return Err(InvalidUsername::NotUtf8);
    }
    let folded: String = raw
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();
    if folded.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(InvalidUsername::Control);
    }
    let name = strip_domain(folded.trim(), domains);
    let name = name.trim();
    if name.is_empty() {
        return Err(InvalidUsername::Empty);
    }
    if name.len() > MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    Ok(name.to_owned())
}

/// `DOMAIN\user` or `user@domain` → `user` when the domain is listed (case-insensitive).
fn strip_domain<'a>(name: &'a str, domains: &[String]) -> &'a str {
    let listed = |d: &str| domains.iter().any(|x| x.trim().to_lowercase() == d);
    let mut name = name;
    if let Some((domain, user)) = name.split_once('\\') {
        if listed(domain) {
            name = user;
        }
    }
    if let Some((user, domain)) = name.rsplit_once('@') {
        if listed(domain) {
            name = user;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["HUTCH".into(), "fhcrc.org".into()]
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_plainly() {
        assert_eq!(from_bytes(b"ann"), Ok("ann"));
        assert_eq!(from_bytes(b"ann\xff\xfe"), Err(InvalidUsername::NotUtf8));
        assert_eq!(
            from_bytes(b"\xc3"),
            Err(InvalidUsername::NotUtf8),
            "a cut sequence"
        );
        assert_eq!(
            from_bytes(&[b'a'; 10 * 1024]),
            Err(InvalidUsername::TooLong)
        );
        // What a lossy decoder would have made of them is refused too.
        let lossy = String::from_utf8_lossy(b"ann\xff");
        assert_eq!(normalize(&lossy, &[]), Err(InvalidUsername::NotUtf8));
    }

    #[test]
    fn spellings_of_one_person_are_one_account() {
        for raw in [
            "ann",
            "ANN",
            "Ann",
            "HUTCH\\ann",
            "hutch\\ANN",
            "ann@fhcrc.org",
            "ANN@FHCRC.ORG",
            "HUTCH\\ann@fhcrc.org",
            " ann ",
            "ａｎｎ",      // full-width
            "\u{3000}ann", // ideographic space
        ] {
            assert_eq!(normalize(raw, &domains()).as_deref(), Ok("ann"), "{raw:?}");
        }
    }

    #[test]
    fn unlisted_domains_stay_part_of_the_name() {
        assert_eq!(
            normalize("OTHER\\ann", &domains()).as_deref(),
            Ok("other\\ann")
        );
        assert_eq!(
            normalize("ann@example.org", &domains()).as_deref(),
            Ok("ann@example.org")
        );
        assert_eq!(
            normalize("HUTCH\\ann", &[]).as_deref(),
            Ok("hutch\\ann"),
            "no domains configured, nothing stripped"
        );
    }

    #[test]
    fn bad_names_get_a_clear_reason() {
        assert_eq!(normalize("", &domains()), Err(InvalidUsername::Empty));
        assert_eq!(normalize("   ", &domains()), Err(InvalidUsername::Empty));
        assert_eq!(
            normalize("HUTCH\\", &domains()),
            Err(InvalidUsername::Empty)
        );
        assert_eq!(
            normalize("@fhcrc.org", &domains()),
            Err(InvalidUsername::Empty)
        );
        assert_eq!(
            normalize(&"a".repeat(10 * 1024), &domains()),
            Err(InvalidUsername::TooLong)
        );
        assert_eq!(
            normalize(&"a".repeat(257), &domains()),
            Err(InvalidUsername::TooLong)
        );
        assert!(normalize(&"a".repeat(256), &domains()).is_ok());
        assert_eq!(
            normalize("an\0n", &domains()),
            Err(InvalidUsername::Control)
        );
        assert_eq!(
            normalize("ann\r\n", &domains()),
            Err(InvalidUsername::Control)
        );
        assert_eq!(
            normalize("an\u{7f}n", &domains()),
            Err(InvalidUsername::Control)
        );
        assert_eq!(
            normalize("a\u{200B}nn", &domains()),
            Err(InvalidUsername::Invisible)
        );
        assert_eq!(
            normalize("\u{FEFF}ann", &domains()),
            Err(InvalidUsername::Invisible)
        );
        assert_eq!(
            normalize("a\u{00AD}nn", &domains()),
            Err(InvalidUsername::Invisible)
        );
    }

    #[test]
    fn look_alikes_nfkc_cannot_fold_stay_distinct() {
        // Cyrillic а (U+0430): a different directory account, counted under its own name.
        let cyr = normalize("\u{0430}nn", &domains()).unwrap();
        assert_ne!(cyr, "ann");
        // The ligature ﬀ folds to "ff".
        assert_eq!(normalize("e\u{FB00}ie", &domains()).as_deref(), Ok("effie"));
    }

    #[test]
    fn hostile_filter_strings_are_just_names_here() {
        // Escaping for LDAP is the directory's job; here they are only counted.
        assert_eq!(normalize("*)(uid=*", &domains()).as_deref(), Ok("*)(uid=*"));
    }
}
