//! Invalidation by pattern: Redis glob patterns (`*`, `?`, `[..]`, `\`) over rendered keys.
//!
//! A pattern applies to the rendered template inside an entry's hash tag, `<namespace>:{<here>}`.
//! Rendered keys escape every glob character of their arguments (`*` is `%2A`), so argument
//! text can never widen a pattern; to match an argument's value, render it with
//! [`pattern_part`].

use crate::key::HASHED_PREFIX_LEN;
use crate::{CacheError, KeyPart, KeyWriter};

/// The rendering of `value` as it appears in keys, for use inside a pattern: escaped, so it
/// matches itself only. Never shortened (a long key keeps its first 64 bytes readable, which a
/// pattern is matched against, see [`crate::Cache::invalidate_matching`]), and empty for an
/// empty value, as inside a longer key.
///
/// ```
/// assert_eq!(redis_memo_runtime::pattern_part("a*b"), "a%2Ab");
/// assert_eq!(redis_memo_runtime::pattern_part(""), "");
/// ```
pub fn pattern_part<T: KeyPart + ?Sized>(value: &T) -> String {
    let mut writer = KeyWriter::new();
    writer.placeholder(value);
    writer.into_unshortened()
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

/// A pattern over the rendered keys of one namespace, and which full keys (entries and their
/// leases) it selects.
///
/// A rendering longer than [`crate::MAX_RENDERED_LEN`] is stored as its first
/// [`HASHED_PREFIX_LEN`] bytes, `#` and a hash; the rest is not in Redis to match against. Such
/// a key is selected when some rendering that begins with its prefix matches: a pattern may
/// select more long keys than it would with the whole text, never fewer.
#[derive(Debug, Clone)]
pub(crate) struct KeyPattern {
    /// `<namespace>:{`, what every entry key of the namespace starts with.
    entry_prefix: String,
    /// The pattern over rendered keys.
    glob: String,
}

impl KeyPattern {
    /// `pattern` must have passed [`validate`].
    pub(crate) fn new(namespace: &str, pattern: &str) -> Self {
        KeyPattern {
            entry_prefix: format!("{namespace}:{{"),
            glob: pattern.to_owned(),
        }
    }

    /// A Redis `SCAN MATCH` pattern that selects at least every key this pattern does: the
    /// pattern's literal beginning (no longer than a long key's readable prefix), then `*`.
    pub(crate) fn scan_match(&self) -> String {
        let mut literal_len = self
            .glob
            .find(['*', '?', '[', '\\'])
            .unwrap_or(self.glob.len())
            .min(HASHED_PREFIX_LEN);
        // Keys are ASCII, a pattern need not be: never cut a character.
        while !self.glob.is_char_boundary(literal_len) {
            literal_len -= 1;
        }
        format!("{}{}*", self.entry_prefix, &self.glob[..literal_len])
    }

    /// Whether `full_key` is an entry of the namespace, or its lease, whose rendered key this
    /// pattern matches (for a long key, may match: see the type's doc).
    pub(crate) fn selects(&self, full_key: &str) -> bool {
        let Some(rest) = full_key.strip_prefix(&self.entry_prefix) else {
            return false;
        };
        // Rendered keys contain no `}`: the first one closes the hash tag.
        let Some((rendered, satellite)) = rest.split_once('}') else {
            return false;
        };
        if !(satellite.is_empty() || satellite == crate::lease::LEASE_SUFFIX) {
            return false;
        }
        let glob = self.glob.as_bytes();
        match rendered.split_once('#') {
            Some((prefix, _hash)) => glob_match(glob, prefix.as_bytes(), Mode::Prefix),
            None => glob_match(glob, rendered.as_bytes(), Mode::Whole),
        }
    }
}

/// Whether a glob must match the whole text, or only some text that begins with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Whole,
    Prefix,
}

/// Redis's glob matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`,
/// against the whole text or (`Mode::Prefix`) some text beginning with it.
///
/// Iterative, remembering only the last `*` to retry from: time bounded by the product of the
/// lengths, never exponential (a pattern like `*a*a*a*b` over a long run of `a`s).
fn glob_match(pattern: &[u8], text: &[u8], mode: Mode) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and where in the text it last tried.
    let mut retry: Option<(usize, usize)> = None;
    loop {
        if t == text.len() {
            return match mode {
                // Some continuation of the text matches whatever pattern is left.
                Mode::Prefix => true,
                Mode::Whole => pattern[p..].iter().all(|&byte| byte == b'*'),
            };
        }
        let step = match pattern.get(p) {
            Some(b'*') => {
                retry = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p + 1, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&literal) => (literal == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, retry) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            // Let the last `*` take one more byte, and resume after it.
            (None, Some((resume, tried))) => {
                retry = Some((resume, tried + 1));
                p = resume;
                t = tried + 1;
            }
            (None, None) => return false,
        }
    }
}

/// Matches `byte` against the class starting after its `[` at `from`: where the pattern goes
/// on if it matches, `None` if not. As Redis's `stringmatchlen` reads a class: `\x` is `x`,
/// `a-z` (any three bytes with `-` in the middle, `]` included) a range either way round, and
/// a class the pattern ends inside is closed by its end.
fn match_class(pattern: &[u8], from: usize, byte: u8) -> Option<usize> {
    let negate = pattern.get(from) == Some(&b'^');
    let mut i = if negate { from + 1 } else { from };
    let mut found = false;
    let next = loop {
        match pattern.get(i) {
            None => break pattern.len(),
            Some(b'\\') if i + 1 < pattern.len() => {
                i += 1;
                found |= pattern[i] == byte;
            }
            Some(b']') => break i + 1,
            Some(&start) if i + 2 < pattern.len() && pattern[i + 1] == b'-' => {
                let end = pattern[i + 2];
                let (low, high) = if start <= end {
                    (start, end)
                } else {
                    (end, start)
                };
                found |= (low..=high).contains(&byte);
                i += 2;
            }
            Some(&single) => found |= single == byte,
        }
        i += 1;
    };
    (found != negate).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &[u8], text: &[u8]) -> bool {
        glob_match(pattern, text, Mode::Whole)
    }

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
        assert!(matches(b"*", b"") && matches(b"a**", b"a") && !matches(b"a?", b"a"));
        assert!(matches(b"*b*c", b"abxbc") && !matches(b"*b*c", b"abxbd"));
        assert!(
            matches(b"user:[0-9", b"user:1"),
            "a class the pattern ends in is closed"
        );
        assert!(
            matches(b"[a-]x", b"^") && matches(b"[a-]x", b"x") && !matches(b"[a-]x", b"b"),
            "`a-]` is the range `]` to `a`, and the class goes on to the pattern's end"
        );
        assert!(matches(b"[z-a]", b"m") && matches(b"[\\]]", b"]") && !matches(b"[^a]", b"a"));
    }

    #[test]
    fn matching_never_backtracks_exponentially() {
        // With one retry point per `*`, this took 2^40 steps.
        let pattern = "*a".repeat(40) + "b";
        assert!(!matches(pattern.as_bytes(), "a".repeat(200).as_bytes()));
        assert!(matches(
            pattern.as_bytes(),
            ("a".repeat(200) + "b").as_bytes()
        ));
    }

    #[test]
    fn a_pattern_selects_entries_and_leases_and_long_keys_by_their_prefix() {
        let pattern = KeyPattern::new("ns", "doc:*:v2");
        assert_eq!(pattern.scan_match(), "ns:{doc:*");
        assert!(pattern.selects("ns:{doc:1:v2}") && pattern.selects("ns:{doc:1:v2}:lock"));
        assert!(!pattern.selects("ns:{doc:1:v3}") && !pattern.selects("ns:#tag:{doc:1:v2}"));
        assert!(!pattern.selects("other:{doc:1:v2}") && !pattern.selects("ns:{doc:1:v2}:x"));
        let mut writer = KeyWriter::new();
        writer.literal("doc:");
        writer.placeholder(&"x".repeat(240));
        writer.literal(":v2");
        let long = format!("ns:{{{}}}", writer.finish());
        assert!(long.contains('#'), "shortened: {long}");
        assert!(pattern.selects(&long), "its prefix can begin a match");
        assert!(!KeyPattern::new("ns", "page:*").selects(&long));
        assert_eq!(
            KeyPattern::new("ns", &"y".repeat(100)).scan_match(),
            format!("ns:{{{}*", "y".repeat(64)),
            "no longer than a long key's readable prefix"
        );
        let wide = "a".repeat(63) + "é*";
        assert_eq!(
            KeyPattern::new("ns", &wide).scan_match(),
            format!("ns:{{{}*", "a".repeat(63)),
            "cut before a character that would cross the limit"
        );
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
        assert_eq!(
            pattern_part(""),
            "",
            "as an empty argument renders inside a key"
        );
        let long = "z".repeat(300);
        assert_eq!(pattern_part(&long), long, "never shortened to a hash");
    }
}
