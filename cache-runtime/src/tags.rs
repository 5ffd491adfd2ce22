//! Tags: invalidating any number of entries with one Redis command.
//!
//! Each tag has a version key, `<namespace>:#tag:{<rendered tag>}`, holding a random token.
//! An entry records the tokens of its tags as they were before it was computed (in its
//! envelope); a read fetches the entry and its tags' current tokens in one round trip: one
//! `MGET` of the entry and its tag keys on a single Redis (a Cluster backend must group them
//! by slot instead, since no command may span two slots). The entry is valid only if
//! every recorded token is still current. Invalidating a tag deletes its version key (one
//! `DEL`, whatever the number of entries); the next computation under the tag draws a new
//! token. A version key that disappeared for any reason (eviction, a partial flush, a hand
//! `DEL`) therefore invalidates its entries: it never makes an old entry valid again.
//!
//! A function with `invalidate_all` also carries an implicit tag of its own, so
//! `invalidate_all_<fn>` is one command too. It is opt-in: each tag is one more key read on
//! every hit, and an untagged function's hit is a plain `GET`.

use crate::CacheError;
use std::hash::Hasher;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Length of a tag token, in bytes.
pub(crate) const TOKEN_LEN: usize = 16;

/// The current version of a tag: random, so a token never comes back after a deletion.
pub(crate) type Token = [u8; TOKEN_LEN];

/// The tokens of an entry's tags as read, in the function's tag order: `None` for a version
/// key that is missing (or holds something that is not a token). Inline up to four tags, so
/// a hit allocates nothing for them.
pub(crate) type Versions = smallvec::SmallVec<[Option<Token>; 4]>;

/// The full version keys of an entry's tags: its function's own (with `invalidate_all`), then
/// its `tags`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TagKeys<'a> {
    pub(crate) function: Option<&'a str>,
    pub(crate) user: &'a [String],
}

impl<'a> TagKeys<'a> {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.function.is_some()) + self.user.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.function
            .into_iter()
            .chain(self.user.iter().map(String::as_str))
    }
}

/// How long a tag version key is kept when it is created or lengthened, for entries that
/// need it to live `lifetime` more: twice that, so it is lengthened at most once per
/// `lifetime` rather than on every fill. Each change of the key is reported to every process
/// that keeps a copy of its token (the in-process tier), which then reads it again.
pub(crate) fn kept_for(lifetime: Duration) -> Duration {
    lifetime.saturating_mul(2)
}

/// KEYS: a tag's version key. ARGV: the life it must have left, and the life it is then given
/// (ms). Lengthens a live key only when it has less than that left (see [`kept_for`]); a
/// missing key stays missing and a key without expiry keeps none. 1 if lengthened.
pub(crate) const EXTEND_SCRIPT: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// A token no other tag version had: 128 random bits.
pub(crate) fn new_token() -> Token {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let count = NEXT.fetch_add(1, Relaxed);
    let high = RandomState::new().hash_one(count);
    let low = RandomState::new().hash_one((count, std::process::id()));
    let mut token = [0u8; TOKEN_LEN];
    token[..8].copy_from_slice(&high.to_le_bytes());
    token[8..].copy_from_slice(&low.to_le_bytes());
    token
}

/// The token in a version key's value, if it is one.
pub(crate) fn parse_token(bytes: &[u8]) -> Option<Token> {
    bytes.try_into().ok()
}

/// Prefix of the full key of a tag, after the namespace: `#` never appears in a namespace, so
/// a tag key can never be an entry key.
pub(crate) const TAG_KEY_INFIX: &str = ":#tag:{";

/// The full version key of the tag whose rendering is `rendered`.
pub(crate) fn tag_key(namespace: &str, rendered: &str) -> String {
    let mut key = String::with_capacity(namespace.len() + TAG_KEY_INFIX.len() + rendered.len() + 1);
    key.push_str(namespace);
    key.push_str(TAG_KEY_INFIX);
    key.push_str(rendered);
    key.push('}');
    key
}

/// Checks a tag given as plain text (`Cache::invalidate_tag("users")`): it must be what a tag
/// template without placeholders renders to, or it could never match a stored tag.
pub(crate) fn validate_literal(tag: &str) -> Result<(), CacheError> {
    let valid = !tag.is_empty() && tag.chars().all(redis_memo_rules::is_literal);
    if valid {
        Ok(())
    } else {
        Err(CacheError::Config(format!(
            "{tag:?} is not a literal tag: tags given as text use only letters, digits and \
             `_ . - : / = @ + |`; invalidate tags with arguments through the generated \
             `invalidate_<fn>_by_<params>` helpers, which escape the arguments as the cache does"
        )))
    }
}

/// The implicit tag of a function: `#fn:<module path>::<name>` (`#` never starts a user tag),
/// followed by a hash of the owning type for methods, whose module path alone would not tell
/// two `impl` blocks of one module apart.
pub(crate) fn function_tag(identity: &str, name: &str, owner: &str) -> String {
    let module = identity
        .strip_suffix(name)
        .and_then(|rest| rest.strip_suffix("::"))
        .unwrap_or(identity);
    let mut tag = String::with_capacity(identity.len() + 21);
    tag.push_str("#fn:");
    tag.push_str(identity);
    if owner != module {
        let mut hash = fnv::FnvHasher::default();
        hash.write(owner.as_bytes());
        tag.push_str(&format!("@{:016x}", hash.finish()));
    }
    tag
}

/// The path that owns a function, from the type name of an async block in its body:
/// `app::Repo<u32>::get::{{closure}}::{{closure}}` is owned by `app::Repo<u32>`, `app::get<T>::{{closure}}`
/// by `app`. A function and its generated helpers share an owner, whatever their generic
/// arguments (which are not part of it: they do not change what an entry holds, or they are
/// in the stored type).
pub(crate) fn owner_of(type_name: &str) -> &str {
    // An async block in an `async fn` is a closure in a closure.
    let mut path = type_name;
    while let Some(outer) = path.strip_suffix("::{{closure}}") {
        path = outer;
    }
    let mut depth = 0usize;
    let bytes = path.as_bytes();
    let mut last_separator = None;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'<' => depth += 1,
            // The arrow of a function pointer type (`fn(u8) -> u8`) closes nothing.
            b'>' if index > 0 && bytes[index - 1] == b'-' => {}
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(index + 1) == Some(&b':') => {
                last_separator = Some(index);
                index += 1;
            }
            _ => {}
        }
        index += 1;
    }
    let owner = match last_separator {
        Some(at) => &path[..at],
        None => path,
    };
    self_type_of(owner)
}

/// `S` of a qualified owner `<S as Trait>` (a method of a trait impl, whose helpers live in
/// an inherent impl of `S`); any other owner as is.
fn self_type_of(owner: &str) -> &str {
    let Some(inner) = owner
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
    else {
        return owner;
    };
    let mut depth = 0usize;
    let bytes = inner.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' if index > 0 && bytes[index - 1] == b'-' => {}
            b'>' => depth = depth.saturating_sub(1),
            b' ' if depth == 0 && inner[index..].starts_with(" as ") => return &inner[..index],
            _ => {}
        }
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trait_method_and_its_inherent_helpers_share_an_owner() {
        assert_eq!(
            owner_of("<app::Service<u8> as app::Directory>::name::{{closure}}"),
            "app::Service<u8>"
        );
        assert_eq!(
            owner_of("app::Service<u8>::name_cache_entry::{{closure}}"),
            "app::Service<u8>"
        );
        assert_eq!(
            owner_of("<app::Pair<app::A, app::B> as app::T<app::C>>::f::{{closure}}"),
            "app::Pair<app::A, app::B>"
        );
    }

    #[test]
    fn tokens_are_random_and_parse_back() {
        let token = new_token();
        assert_ne!(token, new_token());
        assert_eq!(parse_token(&token), Some(token));
        assert_eq!(parse_token(b"short"), None);
    }

    #[test]
    fn tag_keys_never_look_like_entry_keys() {
        assert_eq!(tag_key("memo", "org:7"), "memo:#tag:{org:7}");
        assert!(validate_literal("users").is_ok());
        assert!(validate_literal("org:7").is_ok());
        for bad in ["", "a b", "a*", "{x}", "#fn:x"] {
            assert!(validate_literal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owners_drop_the_function_and_its_generic_arguments() {
        assert_eq!(
            owner_of("app::Repo<u32>::get::{{closure}}"),
            "app::Repo<u32>"
        );
        assert_eq!(
            owner_of("app::Repo<u32>::get_cache_entry::{{closure}}"),
            "app::Repo<u32>"
        );
        assert_eq!(
            owner_of("app::get<alloc::string::String>::{{closure}}"),
            "app"
        );
        assert_eq!(owner_of("app::m::get::{{closure}}"), "app::m");
        assert_eq!(
            owner_of("app::A<u8>::get::{{closure}}::{{closure}}"),
            "app::A<u8>"
        );
        assert_eq!(owner_of("get::{{closure}}"), "get");
        assert_eq!(
            owner_of("app::Repo<fn(u8) -> core::option::Option<u8>>::get::{{closure}}"),
            "app::Repo<fn(u8) -> core::option::Option<u8>>"
        );
    }

    #[test]
    fn function_tags_tell_impl_blocks_apart() {
        assert_eq!(function_tag("app::get", "get", "app"), "#fn:app::get");
        let a = function_tag("app::get", "get", "app::A");
        let b = function_tag("app::get", "get", "app::B");
        assert!(a.starts_with("#fn:app::get@") && a != b);
    }
}
