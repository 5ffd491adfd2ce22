//! Invalidation by pattern: Redis glob patterns (`*`, `?`, `[..]`, `\`) over rendered keys.
//!
//! A pattern applies to the rendered template inside an entry's hash tag, `<namespace>:{<here>}`.
//! Rendered keys escape every glob character of their arguments (`*` is `%2A`), so argument
//! text can never widen a pattern; to match an argument's value, render it with
//! [`pattern_part`].

use crate::{CacheError, KeyPart, KeyWriter};

/// The rendering of `value` as it appears in keys, for use inside a pattern: escaped, so it
/// matches itself only.
///
/// ```
/// assert_eq!(redis_memo_runtime::pattern_part("a*b"), "a%2Ab");
/// ```
pub fn pattern_part<T: KeyPart + ?Sized>(value: &T) -> String {
    let mut writer = KeyWriter::new();
    writer.placeholder(value);
    writer.finish()
}

/// Checks a pattern over rendered keys: non-empty, and no braces (they delimit the rendered
/// key inside a full key).
pub(crate) fn validate(pattern: &str) -> Result<(), CacheError> {
    if pattern.is_empty() || pattern.contains(['{', '}']) {
        return Err(CacheError::Config(format!(
            "invalid pattern {pattern:?}: it must be non-empty and without braces, like \"user:*\""
        )));
    }
    Ok(())
}

/// The Redis pattern of the full keys (entries and their leases) whose rendered key matches
/// `pattern`. Rendered keys contain no `}`, so the pattern cannot reach past the hash tag.
pub(crate) fn full_pattern(namespace: &str, pattern: &str) -> String {
    format!("{namespace}:{{{pattern}}}*")
}

/// Redis's glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
pub(crate) fn matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| matches(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && matches(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some((&first, text_rest)) = text.split_first() else {
                return false;
            };
            let (negate, mut class) = match rest.split_first() {
                Some((b'^', class)) => (true, class),
                _ => (false, rest),
            };
            let mut found = false;
            loop {
                match class {
                    [] => return false, // unclosed class: no match, as Redis
                    [b']', after @ ..] => {
                        class = after;
                        break;
                    }
                    [b'\\', escaped, after @ ..] => {
                        found |= *escaped == first;
                        class = after;
                    }
                    [low, b'-', high, after @ ..] if *high != b']' => {
                        let (low, high) = if low <= high {
                            (*low, *high)
                        } else {
                            (*high, *low)
                        };
                        found |= (low..=high).contains(&first);
                        class = after;
                    }
                    [single, after @ ..] => {
                        found |= *single == first;
                        class = after;
                    }
                }
            }
            found != negate && matches(class, text_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && matches(&rest[1..], &text[1..])
        }
        Some((literal, rest)) => text.first() == Some(literal) && matches(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_semantics() {
        assert!(matches(b"user:*", b"user:42"));
        assert!(!matches(b"user:*", b"org:42"));
        assert!(matches(b"u?er:[0-9]*", b"user:4x"));
        assert!(!matches(b"user:[^4]*", b"user:42"));
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"ns:{user:*}*", b"ns:{user:1}:lock"));
        assert!(!matches(b"ns:{user:1}*", b"ns:{user:10}"));
    }

    #[test]
    fn arguments_cannot_widen_a_pattern() {
        assert_eq!(pattern_part("*"), "%2A");
        assert!(!matches(
            format!("name:{}", pattern_part("a*")).as_bytes(),
            b"name:ab"
        ));
        assert!(
            validate("user:{x}").is_err() && validate("").is_err() && validate("user:*").is_ok()
        );
    }
}
