//! Rendering of key templates into Redis keys.
//!
//! Rendering is injective: placeholder values are escaped so that distinct argument tuples
//! never produce the same key, and no argument can inject a glob character (`*`, `?`, `[`),
//! a Cluster hash-tag brace or a separator. Bytes outside `[A-Za-z0-9_.-]` are written as
//! `%XX`. The macro checks at compile time that two placeholders are always separated by one
//! of `: / = @ + |`, which escaped values never contain, so the boundaries between values are
//! unambiguous; literal text is limited to letters, digits and `_ . - : / = @ + |`. Keys longer than [`MAX_RENDERED_LEN`] keep a readable prefix and end
//! in `#` and the SHA-256 of the whole rendering (`#` never appears in an unhashed key).

use redis_memo_rules::is_unescaped;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Rendered keys longer than this many bytes are shortened to a prefix and a hash.
pub const MAX_RENDERED_LEN: usize = 200;
/// How much of a long rendering is kept, readable, in front of its hash.
pub(crate) const HASHED_PREFIX_LEN: usize = 64;

/// A value that can be part of a cache key.
///
/// Implemented for integers, `bool`, `char`, `String`, `str`, `Option<T>`, references, tuples,
/// and `uuid::Uuid` (feature `uuid`). Implement it for your own types by writing each field
/// that identifies the value with [`KeyWriter::part`]; parts are escaped and separated for you:
///
/// ```
/// use redis_memo_runtime::{KeyPart, KeyWriter};
///
/// struct TenantId { region: String, number: u32 }
///
/// impl KeyPart for TenantId {
///     fn write_key_part(&self, out: &mut KeyWriter) {
///         out.part(&self.region).part(&self.number);
///     }
/// }
///
/// let mut w = KeyWriter::new();
/// w.placeholder(&TenantId { region: "eu west".into(), number: 7 });
/// assert_eq!(w.finish(), "eu%20west,7");
/// ```
///
/// A type whose number of parts varies (a list) must write its length first, so that two
/// different values can never write the same parts.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in a cache key",
    label = "`{Self}` does not implement `KeyPart`",
    note = "implement `redis_memo::KeyPart` for it (write its identifying fields with `KeyWriter::part`), \
            or mark the parameter `#[cache(skip)]` if it must not be part of the key"
)]
pub trait KeyPart {
    /// Writes this value into the key being rendered.
    fn write_key_part(&self, out: &mut KeyWriter);
}

/// Builds a rendered key: literal template text and escaped placeholder values.
#[derive(Debug, Default)]
pub struct KeyWriter {
    buf: String,
    /// Where the rendered template starts in `buf` (after a namespace prefix, if any).
    rendered_from: usize,
    /// Whether `finish` closes the `{` of an entry key's hash tag.
    close_hash_tag: bool,
    /// Whether a sibling part was already written at the current nesting level, so the next
    /// one needs a `,` in front.
    sibling_written: bool,
}

impl KeyWriter {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer of a full entry key, `<namespace>:{<rendered>}`: memoized calls render straight
    /// into it instead of rendering and then copying behind the namespace.
    pub(crate) fn entry_key(namespace: &str) -> Self {
        let mut buf = String::with_capacity(namespace.len() + 48);
        buf.push_str(namespace);
        buf.push_str(":{");
        KeyWriter {
            rendered_from: buf.len(),
            buf,
            close_hash_tag: true,
            sibling_written: false,
        }
    }

    /// A writer of a full tag version key, `<namespace>:#tag:{<rendered>}`.
    pub(crate) fn tag_key(namespace: &str) -> Self {
        let mut buf = String::with_capacity(namespace.len() + 48);
        buf.push_str(namespace);
        buf.push_str(crate::tags::TAG_KEY_INFIX);
        KeyWriter {
            rendered_from: buf.len(),
            buf,
            close_hash_tag: true,
            sibling_written: false,
        }
    }

    /// Appends literal template text, unescaped. Only generated code calls it (through
    /// `__private::write_literal`), with text the macro validated: a `KeyPart` impl that
    /// could write raw text could break injectivity.
    pub(crate) fn literal(&mut self, text: &str) -> &mut Self {
        self.buf.push_str(text);
        self
    }

    /// Writes the value of one placeholder.
    pub fn placeholder<T: KeyPart + ?Sized>(&mut self, value: &T) -> &mut Self {
        self.sibling_written = false;
        value.write_key_part(self);
        self.sibling_written = false;
        self
    }

    /// Writes one part of a composite value (a field of a struct, an element of a tuple),
    /// separated from the previous part with `,`.
    pub fn part<T: KeyPart + ?Sized>(&mut self, value: &T) -> &mut Self {
        if self.sibling_written {
            self.buf.push(',');
        }
        self.sibling_written = false;
        value.write_key_part(self);
        self.sibling_written = true;
        self
    }

    /// Writes text, escaping every byte outside `[A-Za-z0-9_.-]` as `%XX`.
    pub fn text(&mut self, text: &str) -> &mut Self {
        for byte in text.bytes() {
            if is_unescaped(byte) {
                self.buf.push(byte as char);
            } else {
                let _ = write!(self.buf, "%{byte:02X}");
            }
        }
        self
    }

    /// Writes a value whose `Display` output only uses `[A-Za-z0-9_.-]` (numbers) unescaped.
    fn display_safe(&mut self, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.buf, "{value}");
        self
    }

    /// What was written, as is: never shortened, nor closed.
    pub(crate) fn into_unshortened(self) -> String {
        self.buf
    }

    /// The rendered key, shortened to a prefix and a hash when it is longer than
    /// [`MAX_RENDERED_LEN`].
    pub fn finish(mut self) -> String {
        let rendered_len = self.buf.len() - self.rendered_from;
        if rendered_len == 0 {
            // A lone `%` never appears otherwise (escapes are `%XX`), and an empty Cluster hash
            // tag `{}` would not pin the entry's slot.
            self.buf.push('%');
        } else if rendered_len > MAX_RENDERED_LEN {
            let digest = Sha256::digest(&self.buf.as_bytes()[self.rendered_from..]);
            // The rendering is ASCII (escaped values and validated literals), so any byte
            // index is a character boundary.
            self.buf.truncate(self.rendered_from + HASHED_PREFIX_LEN);
            self.buf.push('#');
            for byte in digest {
                let _ = write!(self.buf, "{byte:02x}");
            }
        }
        if self.close_hash_tag {
            self.buf.push('}');
        }
        self.buf
    }
}

macro_rules! key_part_via_display {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key_part(&self, out: &mut KeyWriter) {
                out.display_safe(self);
            }
        }
    )*};
}
key_part_via_display!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool
);

impl KeyPart for str {
    fn write_key_part(&self, out: &mut KeyWriter) {
        out.text(self);
    }
}

impl KeyPart for String {
    fn write_key_part(&self, out: &mut KeyWriter) {
        out.text(self);
    }
}

impl KeyPart for char {
    fn write_key_part(&self, out: &mut KeyWriter) {
        out.text(self.encode_utf8(&mut [0; 4]));
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn write_key_part(&self, out: &mut KeyWriter) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key_part(&self, out: &mut KeyWriter) {
        (**self).write_key_part(out);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::sync::Arc<T> {
    fn write_key_part(&self, out: &mut KeyWriter) {
        (**self).write_key_part(out);
    }
}

/// `None` is written as `~`; `Some(v)` as `v`, with one more `~` in front when `v` itself
/// starts with `~` (a nested `Option`). Escaped text never starts with `~`, so the three cases
/// stay distinct.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key_part(&self, out: &mut KeyWriter) {
        match self {
            None => {
                out.buf.push('~');
            }
            Some(value) => {
                let start = out.buf.len();
                value.write_key_part(out);
                if out.buf[start..].starts_with('~') {
                    out.buf.insert(start, '~');
                }
            }
        }
    }
}

macro_rules! key_part_for_tuple {
    ($($name:ident),+) => {
        impl<$($name: KeyPart),+> KeyPart for ($($name,)+) {
            #[allow(non_snake_case)]
            fn write_key_part(&self, out: &mut KeyWriter) {
                let ($($name,)+) = self;
                $(out.part($name);)+
            }
        }
    };
}
key_part_for_tuple!(A, B);
key_part_for_tuple!(A, B, C);
key_part_for_tuple!(A, B, C, D);

#[cfg(feature = "uuid")]
#[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
impl KeyPart for uuid::Uuid {
    fn write_key_part(&self, out: &mut KeyWriter) {
        out.display_safe(self.hyphenated());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render2<A: KeyPart + ?Sized, B: KeyPart + ?Sized>(a: &A, b: &B) -> String {
        let mut w = KeyWriter::new();
        w.literal("t:").placeholder(a).literal(":").placeholder(b);
        w.finish()
    }

    #[test]
    fn separators_inside_values_are_escaped() {
        assert_ne!(render2("a:b", "c"), render2("a", "b:c"));
        assert_eq!(render2("a:b", "c"), "t:a%3Ab:c");
    }

    #[test]
    fn glob_and_brace_characters_never_appear_unescaped() {
        let key = render2("*?[]{}% \n", "ünï");
        assert!(
            !key.contains(['*', '?', '[', ']', '{', '}', ' ', '\n']),
            "{key}"
        );
        assert!(key.is_ascii());
    }

    #[test]
    fn option_nesting_is_distinct() {
        let none: Option<Option<u8>> = None;
        let some_none: Option<Option<u8>> = Some(None);
        let mut keys = vec![render2(&none, "x"), render2(&some_none, "x")];
        keys.push(render2(&Some(String::new()), "x"));
        keys.push(render2(&Some("~".to_string()), "x"));
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn long_keys_are_hashed_with_a_readable_prefix() {
        let long = "x".repeat(100_000);
        let key = render2(&long, "y");
        assert!(key.len() < MAX_RENDERED_LEN);
        assert!(key.starts_with("t:xxxx"));
        assert!(key.contains('#'));
        assert_ne!(key, render2(&long, "z"));
    }

    #[test]
    fn an_empty_rendering_is_marked() {
        let mut w = KeyWriter::entry_key("ns");
        w.placeholder("");
        assert_eq!(w.finish(), "ns:{%}");
    }

    #[cfg(feature = "uuid")]
    #[test]
    fn uuids_render_hyphenated() {
        let id = uuid::Uuid::from_u128(0x1234);
        let mut w = KeyWriter::new();
        w.placeholder(&id);
        assert_eq!(w.finish(), "00000000-0000-0000-0000-000000001234");
    }

    #[test]
    fn entry_keys_equal_the_namespace_around_the_rendered_key() {
        for value in ["short", &"y".repeat(500)] {
            let mut entry = KeyWriter::entry_key("ns");
            entry.literal("t:").placeholder(value);
            let mut rendered = KeyWriter::new();
            rendered.literal("t:").placeholder(value);
            assert_eq!(entry.finish(), format!("ns:{{{}}}", rendered.finish()));
        }
    }

    proptest! {
        #[test]
        fn rendering_is_injective(a in ".{0,12}", b in ".{0,12}", c in ".{0,12}", d in ".{0,12}") {
            prop_assume!((&a, &b) != (&c, &d));
            prop_assert_ne!(render2(&a, &b), render2(&c, &d));
        }
    }
}
