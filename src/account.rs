//! Account names as the directory compares them and the policies count them: one spelling per
//! person. Pure functions at the bottom of the stack, which config, auth and policy all use.
//!
//! `ANN`, `HUTCH\ann`, `ann@fhcrc.org` (with both domains in `policy.username_domains`), the
//! full-width `ａｎｎ`, and for `ann lee` also `Ann  Lee`, `ann\u{A0}lee` and `ann\u{3000}lee`, are
//! one account each, so an attacker cannot multiply the lockout budget, dodge a lock or hold a
//! second seat by respelling a name (Authelia GHSA-m5mf-3963-4x26).
//!
//! **Preparation** ([`prepare`]) is LDAP's own for `caseIgnoreMatch` (RFC 4518 §2), as far as
//! directories agree on it: Unicode NFKC (compatibility forms such as full-width letters and the
//! no-break and ideographic spaces fold to plain ones), lower case, NFKC again, leading and
//! trailing spaces dropped and inner runs of spaces collapsed to one. Where RFC 4518 and OpenLDAP
//! (checked against a real slapd in `tests/names.rs`) do not agree, the name is refused rather
//! than guessed, since a refused name counts under no account and so can never be a second
//! budget:
//!
//! - control characters (RFC 4518 maps them to nothing or to a space; slapd matches neither);
//! - invisible formatting characters: soft hyphen, zero-width characters, joiners, direction
//!   marks, variation selectors, the byte-order mark, tags and the others RFC 4518 §2.2 maps to
//!   nothing (slapd keeps them, so `an\u{AD}n` is no entry at all), and fillers it never names;
//! - the Ogham space mark and the line and paragraph separators (RFC 4518 maps them to a space;
//!   slapd, which maps only what NFKC makes a space, does not);
//! - characters whose case mapping implementations disagree about ([`InvalidUsername::Ambiguous`]):
//!   the Turkish dotted `İ` (slapd folds it to `i`, Unicode to `i̇`) and dotless `ı`, `ß`, the
//!   final `ς`, and every other character whose lower and upper case are not a one-to-one round
//!   trip, and characters whose lower case depends on whether it is taken before or after NFKC
//!   (the mathematical `𝐀`, `ℂ`, `㎆`: slapd takes it before);
//! - private-use and non-character code points, and U+FFFD (RFC 4518 §2.4 prohibits them).
//!
//! Look-alikes that NFKC does not fold (Cyrillic `а` for Latin `a`) stay distinct names, as they
//! are distinct accounts in the directory: their failures count under their own name.
//!
//! **Domains.** [`directory_name`] removes a listed domain (`HUTCH\`, `@fhcrc.org`) from the name
//! as typed: that is what the directory is given (escaped), so that it does its own matching.
//! [`normalize`] is the prepared form of it: the account key where the directory cannot say
//! which entry a name belongs to (direct bind, the users file).
//!
//! **Entries.** With search-then-bind the directory names the entry, and the account is keyed by
//! the entry ([`entry_key`]): its own value of the attribute `user_filter` matches, prepared, so
//! the key still reads `ann lee`. [`crate::policy::names::Names`] remembers those answers for `auth.cache_ttl`.

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
    /// A character directories compare in different ways: the Turkish `İ` or `ı`, `ß`, `ς`, a
    /// mathematical letter, an Ogham space or a line separator.
    #[error(
        "the username contains a character that directories compare in different ways \
         (such as the Turkish İ or ı, ß or ς); type it with plain letters"
    )]
    Ambiguous,
    /// A private-use or non-character code point (RFC 4518 §2.4).
    #[error("the username contains a private-use or non-character code point")]
    Prohibited,
}

/// A username as it arrived in bytes (a form field, a Basic header): refused, before any other
/// work, when it is far too long or not UTF-8.
pub fn from_bytes(raw: &[u8]) -> Result<&str, InvalidUsername> {
    if raw.len() > 4 * MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    std::str::from_utf8(raw).map_err(|_| InvalidUsername::NotUtf8)
}

/// Characters that render as nothing (or as a blank) and would let two spellings of one name
/// look the same: soft hyphen, zero-width and direction marks, joiners, fillers, variation
/// selectors, the byte-order mark, interlinear annotation marks, tags, and the other format
/// characters. RFC 4518 §2.2 maps most of them to nothing; OpenLDAP does not (`an\u{AD}n` finds
/// no entry `ann`), so they are refused.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
        | '\u{0600}'..='\u{0605}'
        | '\u{0890}' | '\u{0891}' | '\u{08E2}'
        | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{1806}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFC}'
        | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// Space separators NFKC does not make a space: RFC 4518 maps them to one, OpenLDAP does not.
fn is_odd_space(c: char) -> bool {
    matches!(c, '\u{1680}' | '\u{2028}' | '\u{2029}')
}

/// Private use and non-characters (RFC 4518 §2.4, RFC 3454 tables C.3 and C.4).
fn is_prohibited(c: char) -> bool {
    let u = u32::from(c);
    matches!(u, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF) || (u & 0xFFFE) == 0xFFFE
}

fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// Whether `c`'s lower and upper case are single characters that lead back to each other, so
/// that lower-casing, upper-casing and Unicode case folding all put it in the same class.
/// Not so for `İ` (lower case `i̇`), `ı` (upper case `I`, whose lower case is `i`), `ß` (upper
/// case `SS`), `ς` (upper case `Σ`, whose lower case is `σ`), and a few hundred others.
fn round_trips(c: char) -> bool {
    let (Some(lower), Some(upper)) = (single(c.to_lowercase()), single(c.to_uppercase())) else {
        return false;
    };
    single(lower.to_uppercase()) == Some(upper) && single(upper.to_lowercase()) == Some(lower)
}

/// Whether `c` has one lower case however it is taken: before NFKC (as slapd does) or after,
/// and every character NFKC makes of it round-trips.
fn case_agrees(c: char) -> bool {
    let before: String = c.to_lowercase().nfkc().collect();
    let composed: String = std::iter::once(c).nfkc().collect();
    before == composed.to_lowercase() && composed.chars().all(round_trips)
}

/// Refuse what cannot be part of a name, in a fixed order of reasons.
fn check(raw: &str) -> Result<(), InvalidUsername> {
    if raw.is_ascii() {
        return match raw.bytes().any(|b| b.is_ascii_control()) {
            true => Err(InvalidUsername::Control),
            false => Ok(()),
        };
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
    if raw.chars().any(is_prohibited) {
        return Err(InvalidUsername::Prohibited);
    }
    if raw
        .chars()
        .any(|c| !c.is_ascii() && (is_odd_space(c) || !case_agrees(c)))
    {
        return Err(InvalidUsername::Ambiguous);
    }
    Ok(())
}

/// Leading and trailing spaces dropped, inner runs collapsed to one (RFC 4518 §2.6.1, as
/// OpenLDAP does it: a space before a combining mark is a space too).
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c == ' ' {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// A name prepared as LDAP prepares it for `caseIgnoreMatch` (RFC 4518 §2), without domains:
/// see the module documentation. Pure, bounded (at most 4 × [`MAX_ACCOUNT_BYTES`] bytes are
/// looked at), never panics, and idempotent: `prepare(&prepare(x)?) == prepare(x)`.
pub fn prepare(raw: &str) -> Result<String, InvalidUsername> {
    // Bound the work before doing any: NFKC can grow a string, but not from under 4× the limit to
    // anything worth preparing.
    if raw.len() > 4 * MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    check(raw)?;
    let folded = if raw.is_ascii() {
        raw.to_ascii_lowercase()
    } else {
        let composed: String = raw.nfkc().collect();
        // (NFKC composes across characters: `e` + U+0301 is `é`.)
        if !composed.chars().all(round_trips) {
            return Err(InvalidUsername::Ambiguous);
        }
        let folded: String = composed.to_lowercase().nfkc().collect();
        // Neither step may bring back anything refused, or leave anything to fold.
        if check(&folded).is_err() || folded.to_lowercase() != folded {
            return Err(InvalidUsername::Ambiguous);
        }
        folded
    };
    let name = collapse_spaces(&folded);
    if name.is_empty() {
        return Err(InvalidUsername::Empty);
    }
    if name.len() > MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    Ok(name)
}

/// `\` and the forms NFKC makes `\` of.
fn is_backslash(c: char) -> bool {
    matches!(c, '\\' | '\u{FE68}' | '\u{FF3C}')
}

/// `@` and the forms NFKC makes `@` of.
fn is_at(c: char) -> bool {
    matches!(c, '@' | '\u{FE6B}' | '\u{FF20}')
}

/// The name as the directory is given it: `raw` as typed, less a listed domain (`DOMAIN\user`,
/// `user@domain`; compared prepared, so `hutch\` and `ＨＵＴＣＨ＼` are `HUTCH\`).
pub fn directory_name<'a>(raw: &'a str, domains: &[String]) -> &'a str {
    if domains.is_empty() {
        return raw;
    }
    let listed = |d: &str| match prepare(d) {
        Ok(d) => domains.iter().any(|x| prepare(x).is_ok_and(|x| x == d)),
        Err(_) => false,
    };
    let mut name = raw;
    if let Some((i, c)) = name.char_indices().find(|&(_, c)| is_backslash(c)) {
        if listed(&name[..i]) {
            name = &name[i + c.len_utf8()..];
        }
    }
    if let Some((i, c)) = name.char_indices().rev().find(|&(_, c)| is_at(c)) {
        if listed(&name[i + c.len_utf8()..]) {
            name = &name[..i];
        }
    }
    name
}

/// The name as the directory is given it ([`directory_name`]) and its prepared form, after the
/// whole of `raw`, domain and all, was checked.
pub fn split<'a>(raw: &'a str, domains: &[String]) -> Result<(&'a str, String), InvalidUsername> {
    if raw.len() > 4 * MAX_ACCOUNT_BYTES {
        return Err(InvalidUsername::TooLong);
    }
    check(raw)?;
    let name = directory_name(raw, domains);
    Ok((name, prepare(name)?))
}

/// The account one of Faspex's own accounts counts as: its prepared name as Faspex matches
/// usernames. Faspex 4 keeps its users in MySQL, whose default collations compare names without
/// case, accents or trailing spaces (`José` = `jose` = `JOSE `): every spelling Faspex takes for
/// one account must share that account's lockout budget, or each would bring five more guesses.
/// So the prepared name is decomposed (NFKD), its combining marks dropped, and folded again.
/// Folding further than Faspex does only joins budgets, which is the safe way to be wrong.
pub fn faspex_key(prepared: &str) -> String {
    if prepared.is_ascii() {
        return prepared.to_ascii_lowercase();
    }
    let stripped: String = prepared
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .collect();
    let folded: String = stripped.chars().flat_map(char::to_lowercase).collect();
    folded.trim_end().to_owned()
}

/// The account name `raw` counts as where the directory cannot name the entry, given the domains
/// to strip: [`prepare`] of [`directory_name`].
pub fn normalize(raw: &str, domains: &[String]) -> Result<String, InvalidUsername> {
    split(raw, domains).map(|(_, account)| account)
}

/// The account a directory entry counts as: its own value `name` of the attribute `user_filter`
/// matches names against, normalised (so `ann lee`, whatever was typed); for an entry without
/// one, its DN prepared; failing that, a digest of its DN.
pub fn entry_key(dn: &str, name: Option<&str>, domains: &[String]) -> String {
    if let Some(key) = name.and_then(|n| normalize(n, domains).ok()) {
        return key;
    }
    if let Ok(key) = prepare(dn) {
        return key;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, dn.as_bytes());
    format!("dn-sha256:{}", crate::util::hex(&d.as_ref()[..16]))
}

/// An account key stored by a build that keyed accounts before names were prepared as LDAP
/// prepares them (store schema step 2): its prepared form, or itself when it has none.
pub fn rekey_stored(old: &str) -> String {
    prepare(old).unwrap_or_else(|_| old.to_owned())
}

#[cfg(test)]
mod tests {

    #[test]
    fn faspex_keys_join_what_faspex_matches_as_one() {
        let key = |raw: &str| faspex_key(&prepare(raw).unwrap());
        assert_eq!(key("José"), "jose");
        assert_eq!(key("JOSE"), "jose");
        assert_eq!(key("jose  "), "jose");
        assert_eq!(key("ÅSA"), "asa");
        assert_eq!(faspex_key("jose\u{301}"), "jose");
        assert_ne!(key("jos"), key("jose"));
        // Idempotent, so a stored key is its own key.
        for raw in ["José", "ann lee", "Ærø", "Ångström"] {
            let k = key(raw);
            assert_eq!(faspex_key(&k), k, "{raw}");
        }
    }

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

    #[test]
    fn runs_of_spaces_and_other_spaces_are_one_space() {
        for raw in [
            "ann lee",
            "Ann  Lee",
            "ANN   LEE",
            " ann lee ",
            "\u{3000}ann\u{3000}lee\u{3000}",
            "ann\u{A0}lee",
            "ann \u{A0} lee",
            "ann\u{2003}lee",
            "ann\u{202F}lee",
            "ann\u{205F}lee",
            "ａｎｎ　ｌｅｅ",
            "HUTCH\\Ann  Lee",
            "ann  lee@FHCRC.ORG",
        ] {
            assert_eq!(
                normalize(raw, &domains()).as_deref(),
                Ok("ann lee"),
                "{raw:?}"
            );
        }
        assert_eq!(
            prepare("a\u{A8}").as_deref(),
            Ok("a \u{308}"),
            "NFKC's own spaces"
        );
    }

    #[test]
    fn composed_and_decomposed_letters_are_one_name() {
        for raw in [
            "ren\u{E9}",
            "rene\u{301}",
            "REN\u{C9}",
            "RENE\u{301}",
            "ｒｅｎｅ\u{301}",
        ] {
            assert_eq!(prepare(raw).as_deref(), Ok("ren\u{E9}"), "{raw:?}");
        }
        assert_eq!(
            prepare("rene").as_deref(),
            Ok("rene"),
            "an accent is not insignificant"
        );
        // The Kelvin sign, the Ångström sign and the micro sign are their letters after NFKC.
        assert_eq!(prepare("\u{212A}im").as_deref(), Ok("kim"));
        assert_eq!(prepare("\u{212B}sa").as_deref(), Ok("\u{E5}sa"));
        assert_eq!(prepare("\u{B5}").as_deref(), Ok("\u{3BC}"));
        assert_eq!(prepare("\u{17F}am").as_deref(), Ok("sam"), "long s");
    }

    #[test]
    fn characters_directories_disagree_about_are_refused() {
        for raw in [
            "\u{130}lker",    // dotted capital I: slapd folds it to i, Unicode to i + U+0307
            "\u{131}lker",    // dotless i: upper case I, whose lower case is i
            "stra\u{DF}e",    // sharp s: upper case SS, case folding ss
            "\u{1E9E}",       // capital sharp s
            "\u{3C2}",        // final sigma: upper case Σ, whose lower case is σ
            "\u{345}",        // combining ypogegrammeni
            "\u{1D400}nn",    // mathematical A: slapd lower-cases before NFKC, and keeps it A
            "\u{2102}at",     // double-struck C
            "\u{3386}",       // square MB
            "ann\u{1680}lee", // Ogham space mark: a space to RFC 4518, not to slapd
            "ann\u{2028}lee",
            "ann\u{2029}lee",
        ] {
            assert_eq!(prepare(raw), Err(InvalidUsername::Ambiguous), "{raw:?}");
        }
        // i and I are one name; the Turkish letters are refused, never guessed.
        assert_eq!(prepare("ILKER").as_deref(), Ok("ilker"));
        assert_eq!(prepare("i\u{307}lker").as_deref(), Ok("i\u{307}lker"));
        assert_eq!(prepare("\u{3A3}\u{3C3}").as_deref(), Ok("\u{3C3}\u{3C3}"));
    }

    #[test]
    fn invisible_characters_are_refused_not_dropped() {
        // RFC 4518 maps these to nothing; OpenLDAP does not (tests/names.rs), so a name holding
        // one reaches no entry there: refused here, it counts under no account.
        for c in [
            '\u{AD}',
            '\u{34F}',
            '\u{1806}',
            '\u{180B}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{202A}',
            '\u{2060}',
            '\u{2063}',
            '\u{206A}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFF9}',
            '\u{FFFC}',
            '\u{1D173}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{3164}',
            '\u{115F}',
        ] {
            let raw = format!("an{c}n");
            assert_eq!(prepare(&raw), Err(InvalidUsername::Invisible), "{raw:?}");
        }
        for c in ['\t', '\n', '\u{85}', '\u{9F}'] {
            let raw = format!("an{c}n");
            assert_eq!(prepare(&raw), Err(InvalidUsername::Control), "{raw:?}");
        }
        for c in [
            '\u{E000}',
            '\u{F8FF}',
            '\u{FDD0}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{10FFFD}',
        ] {
            let raw = format!("an{c}n");
            assert_eq!(prepare(&raw), Err(InvalidUsername::Prohibited), "{raw:?}");
        }
    }

    #[test]
    fn every_code_point_prepares_without_panic_to_a_stable_lower_case_name() {
        let mut accepted = 0;
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let raw = format!("a{c}b");
            let Ok(p) = prepare(&raw) else { continue };
            accepted += 1;
            assert_eq!(
                prepare(&p).as_ref(),
                Ok(&p),
                "U+{:04X} is not idempotent",
                c as u32
            );
            assert!(p.chars().all(round_trips), "U+{:04X} -> {p:?}", c as u32);
            assert_eq!(p.to_lowercase(), p, "U+{:04X}", c as u32);
            // The domain separators are recognised in every form NFKC gives them.
            let composed: String = std::iter::once(c).nfkc().collect();
            assert_eq!(composed == "\\", is_backslash(c), "U+{:04X}", c as u32);
            assert_eq!(composed == "@", is_at(c), "U+{:04X}", c as u32);
        }
        assert!(accepted > 200_000, "{accepted}");
        for c in ['\u{130}', '\u{131}', '\u{DF}', '\u{3C2}'] {
            assert!(!round_trips(c), "{c}");
        }
    }

    #[test]
    fn random_strings_never_panic_and_prepare_is_idempotent() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4518);
        let pools: [&[char]; 4] = [
            &[
                'a', 'N', ' ', '\\', '@', 'é', 'e', '\u{301}', 'İ', 'ı', 'ß', 'Ａ', '\u{A0}',
            ],
            &[
                '\u{3000}', '\u{AD}', '\u{200B}', '\u{0}', '\u{FFFD}', 'K', 'ǅ', '\u{A8}', 'ﬀ',
            ],
            &[
                'σ', 'Σ', 'ς', 'Ω', 'ω', 'ᾳ', '\u{345}', '\u{E000}', '\u{1680}', '㎆', '\u{2126}',
            ],
            &[
                'h', 'u', 't', 'c', 'H', '.', 'o', 'r', 'g', 'f', 'r', ' ', ' ', '\t',
            ],
        ];
        let d = domains();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..48);
            let s: String = (0..len)
                .map(|_| match rng.gen_range(0..6) {
                    0 => char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('x'),
                    1 => char::from_u32(rng.gen_range(0..0x3000)).unwrap_or('x'),
                    n => {
                        let pool = pools[n - 2];
                        pool[rng.gen_range(0..pool.len())]
                    }
                })
                .collect();
            if let Ok(p) = prepare(&s) {
                assert_eq!(prepare(&p).as_ref(), Ok(&p), "{s:?}");
                assert!(p.len() <= MAX_ACCOUNT_BYTES && !p.starts_with(' ') && !p.ends_with(' '));
                assert!(!p.contains("  "), "{s:?} -> {p:?}");
            }
            if let Ok(n) = normalize(&s, &d) {
                assert_eq!(normalize(&n, &d).as_ref(), Ok(&n), "{s:?}");
            }
            let _ = directory_name(&s, &d);
            let _ = entry_key(&s, Some(&s), &d);
        }
        // Far too long, in every way it can be.
        for s in [
            "\u{FDFA}".repeat(300),
            "\u{3000}".repeat(2000),
            "a ".repeat(600),
        ] {
            assert!(prepare(&s).is_err(), "{}", s.len());
        }
    }

    #[test]
    fn the_directory_is_given_the_name_as_typed_less_a_listed_domain() {
        let d = domains();
        assert_eq!(directory_name("HUTCH\\Ann  Lee", &d), "Ann  Lee");
        assert_eq!(directory_name("ＨＵＴＣＨ＼ann", &d), "ann");
        assert_eq!(directory_name("ann@FhCrC.org", &d), "ann");
        assert_eq!(directory_name("ann@example.org", &d), "ann@example.org");
        assert_eq!(directory_name(" ANN ", &d), " ANN ");
        assert_eq!(
            split("HUTCH\\Ann  Lee", &d),
            Ok(("Ann  Lee", "ann lee".to_owned()))
        );
        // The whole name is checked, domain and all.
        assert_eq!(split("HUT\u{0}CH\\ann", &d), Err(InvalidUsername::Control));
    }

    #[test]
    fn an_entry_counts_as_its_own_name() {
        let d = domains();
        let dn = "uid=ann lee,ou=people,dc=example,dc=org";
        assert_eq!(entry_key(dn, Some("Ann Lee"), &d), "ann lee");
        assert_eq!(entry_key(dn, Some("ann@fhcrc.org"), &d), "ann");
        assert_eq!(entry_key(dn, None, &d), dn);
        assert_eq!(
            entry_key("UID=ANN,DC=X", Some("stra\u{DF}e"), &d),
            "uid=ann,dc=x"
        );
        let odd = entry_key("uid=\u{130}lker,dc=x", None, &d);
        assert!(odd.starts_with("dn-sha256:") && odd.len() == 42, "{odd}");
    }
}
