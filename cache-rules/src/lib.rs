//! The rules that both redis-memo's macros (checking templates and options at compile time)
//! and its runtime (rendering keys, checking patterns, literal tags and namespaces at run
//! time) apply, in one place so the two can never disagree.
//!
//! Rendering is injective because of them: literal text of a template uses letters, digits
//! and [`LITERAL_PUNCTUATION`]; an argument's value is written with bytes outside
//! `[A-Za-z0-9]` and [`UNESCAPED_PUNCTUATION`] escaped, so it never contains a separator; and
//! two placeholders are always split by one of [`SEPARATORS`].

#![warn(missing_docs)]

use std::time::Duration;

/// What literal text of a key or tag template may contain besides ASCII letters and digits.
pub const LITERAL_PUNCTUATION: &str = "_.-:/=@+|";

/// What may separate two placeholders: none of them appears in an escaped value.
pub const SEPARATORS: &str = ":/=@+|";

/// What an argument's value keeps unescaped besides ASCII letters and digits.
pub const UNESCAPED_PUNCTUATION: &str = "_.-";

/// What a namespace may contain besides ASCII letters and digits (no braces: they delimit a
/// Redis Cluster hash tag; no glob characters: patterns are matched under the namespace).
pub const NAMESPACE_PUNCTUATION: &str = "_.-:/";

/// Whether `c` may appear in the literal text of a template (and so in a literal tag).
///
/// ```
/// assert!(redis_memo_rules::is_literal('@') && !redis_memo_rules::is_literal('*'));
/// ```
pub fn is_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || LITERAL_PUNCTUATION.contains(c)
}

/// Whether `c` separates two placeholders.
pub fn is_separator(c: char) -> bool {
    SEPARATORS.contains(c)
}

/// Whether an argument's value keeps `byte` as is (every other byte is written `%XX`).
pub fn is_unescaped(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || UNESCAPED_PUNCTUATION.as_bytes().contains(&byte)
}

/// Whether `byte` may appear in a namespace.
pub fn is_namespace_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || NAMESPACE_PUNCTUATION.as_bytes().contains(&byte)
}

/// The shortest duration an option accepts (a zero ttl would mean "no expiry" to Redis).
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The longest duration an option accepts: longer is almost certainly a typo, and Redis
/// cannot represent much beyond it in milliseconds anyway.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest default lease.
pub const MIN_DEFAULT_LEASE: Duration = Duration::from_secs(1);

/// The longest default lease.
pub const MAX_DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The default lease of a function (how long one computation holds its entry): its ttl,
/// within [`MIN_DEFAULT_LEASE`] and [`MAX_DEFAULT_LEASE`]. Long enough for most computations;
/// short enough that a crashed holder blocks an entry only briefly.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(redis_memo_rules::default_lease(Duration::from_secs(5)), Duration::from_secs(5));
/// assert_eq!(redis_memo_rules::default_lease(Duration::from_secs(3600)), Duration::from_secs(30));
/// ```
pub const fn default_lease(ttl: Duration) -> Duration {
    if ttl.as_millis() < MIN_DEFAULT_LEASE.as_millis() {
        MIN_DEFAULT_LEASE
    } else if ttl.as_millis() > MAX_DEFAULT_LEASE.as_millis() {
        MAX_DEFAULT_LEASE
    } else {
        ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_literal_and_never_unescaped() {
        for c in SEPARATORS.chars() {
            assert!(is_literal(c), "{c:?}");
            assert!(
                !is_unescaped(c as u8),
                "{c:?} would be ambiguous in a value"
            );
        }
        for c in ['{', '}', '*', '?', '[', ']', '%', '#', ' '] {
            assert!(!is_literal(c) && !is_unescaped(c as u8) && !is_namespace_byte(c as u8));
        }
    }

    #[test]
    fn the_default_lease_follows_the_ttl_within_bounds() {
        assert_eq!(default_lease(Duration::from_millis(300)), MIN_DEFAULT_LEASE);
        assert_eq!(
            default_lease(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        assert_eq!(default_lease(MAX_DURATION), MAX_DEFAULT_LEASE);
    }
}
