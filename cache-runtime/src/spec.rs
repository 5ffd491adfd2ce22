//! What the macro knows about one memoized function, as a `static` the generated code passes
//! to the runtime.

use crate::stats::FnMetrics;
use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::{OnceLock, PoisonError, RwLock};

/// A warning logged once per function (see [`FnSpec::warn_once`]).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Warning {
    /// A computation outlasted its lease, so its value was not stored.
    SlowerThanLease,
    /// A value was larger than the cache's `max_value_bytes`, so it was not stored.
    Oversized,
}
use std::time::Duration;

/// Compile-time facts about one memoized function.
///
/// Built by generated code with `const` setters; not meant to be written by hand.
#[derive(Debug)]
pub struct FnSpec {
    pub(crate) name: &'static str,
    /// `module::path::name`: entries and flights of two functions that share a key template
    /// never mix.
    identity: &'static str,
    pub(crate) template: &'static str,
    /// The tag templates (`tags = [..]`), part of the fingerprint.
    tags: &'static [&'static str],
    /// `invalidate_all`: entries also record the function's own tag.
    pub(crate) invalidate_all: bool,
    pub(crate) ttl: Duration,
    /// `stale`: how long after its ttl an entry is still served while one refresh runs.
    pub(crate) stale: Option<Duration>,
    /// `fail_safe`: how old a value may be and still be served when the body fails.
    pub(crate) fail_safe: Option<Duration>,
    /// `soft_timeout`: how long a caller with a fail-safe value waits for the body.
    pub(crate) soft_timeout: Option<Duration>,
    /// `hard_timeout`: how long a caller waits for the body at most.
    pub(crate) hard_timeout: Option<Duration>,
    /// `early`: fresh entries are refreshed ahead of their expiry (XFetch).
    pub(crate) early: bool,
    /// `jitter`: the most an entry's ttl is shortened by, in thousandths of it.
    pub(crate) jitter_per_mille: u16,
    /// How long a miss's lease holds the entry for its computation.
    pub(crate) lease: Duration,
    /// `lock`: how long a caller waits for another process's value before computing.
    pub(crate) lock_wait: Option<Duration>,
    pub(crate) version: u32,
    pub(crate) cache_none: bool,
    /// `local`: how long this process may answer from its in-process copy of an entry.
    pub(crate) local: Option<Duration>,
    /// `sliding`: each hit keeps the entry one more ttl; the longest it is served after it
    /// was computed (its `max_age`, or [`FnSpec::NO_MAX_AGE`]).
    pub(crate) sliding: Option<Duration>,
    metrics: OnceLock<FnMetrics>,
    /// The [`Warning`]s given, one bit each.
    warned: std::sync::atomic::AtomicU8,
    /// The first instantiation resolved, read without a lock: most functions have one.
    first_resolved: OnceLock<(Names, Resolved)>,
    /// Other instantiations of a generic function.
    other_resolved: RwLock<Vec<(Names, Resolved)>>,
}

/// The type names a [`Resolved`] was computed from. Compared by value: one function inlined
/// into two callers may hold two copies of the same `type_name` string.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    stored: &'static str,
    body_type: &'static str,
    key_types: &'static str,
}

/// What identifies the entries of one instantiation of a function.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// See [`FnSpec::resolve`].
    pub(crate) fingerprint: u64,
    /// The rendering of the function's implicit tag (see `tags::function_tag`).
    pub(crate) function_tag: String,
    /// The implicit tag's full key in the first namespace it was used with (a namespace
    /// and the key), so a hit does not format it again.
    function_tag_key: OnceLock<(String, String)>,
}

impl Resolved {
    /// The full version key of the function's implicit tag in `namespace`.
    pub(crate) fn function_tag_key(&self, namespace: &str) -> Cow<'_, str> {
        if let Some((known, key)) = self.function_tag_key.get()
            && known == namespace
        {
            return Cow::Borrowed(key);
        }
        let key = crate::tags::tag_key(namespace, &self.function_tag);
        if self
            .function_tag_key
            .set((namespace.to_owned(), key.clone()))
            .is_ok()
            && let Some((_, key)) = self.function_tag_key.get()
        {
            return Cow::Borrowed(key);
        }
        Cow::Owned(key)
    }
}

impl FnSpec {
    /// A function named `name`, at `identity` (`module_path!()` and the name), whose key
    /// template is `template`, cached for `ttl`.
    pub const fn new(
        name: &'static str,
        identity: &'static str,
        template: &'static str,
        ttl: Duration,
    ) -> Self {
        FnSpec {
            name,
            identity,
            template,
            tags: &[],
            invalidate_all: false,
            ttl,
            stale: None,
            fail_safe: None,
            soft_timeout: None,
            hard_timeout: None,
            early: false,
            jitter_per_mille: 0,
            lease: crate::lease::default_lease(ttl),
            lock_wait: None,
            version: 0,
            cache_none: false,
            local: None,
            sliding: None,
            metrics: OnceLock::new(),
            warned: std::sync::atomic::AtomicU8::new(0),
            first_resolved: OnceLock::new(),
            other_resolved: RwLock::new(Vec::new()),
        }
    }

    /// The function's tag templates (`tags = [..]`).
    pub const fn tags(mut self, tags: &'static [&'static str]) -> Self {
        self.tags = tags;
        self
    }

    /// The function's `invalidate_all` option: its entries record its own tag.
    pub const fn invalidate_all(mut self, invalidate_all: bool) -> Self {
        self.invalidate_all = invalidate_all;
        self
    }

    /// The function's `stale` option: after its ttl, an entry is served for up to `stale` more
    /// while one background refresh runs.
    pub const fn stale(mut self, stale: Duration) -> Self {
        self.stale = Some(stale);
        self
    }

    /// The function's `fail_safe` option: when the body fails, a value written no longer than
    /// `fail_safe` ago is returned instead of the error.
    pub const fn fail_safe(mut self, fail_safe: Duration) -> Self {
        self.fail_safe = Some(fail_safe);
        self
    }

    /// The function's `soft_timeout` option.
    pub const fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// The function's `hard_timeout` option.
    pub const fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// The function's `early` option: a fresh entry is refreshed in the background ahead of
    /// its expiry, with a probability that grows as the expiry nears (XFetch).
    pub const fn early(mut self, early: bool) -> Self {
        self.early = early;
        self
    }

    /// The function's `jitter` option, in thousandths of the ttl (at most 1000): each entry's
    /// ttl is shortened by a random part of up to this much, so entries written together do
    /// not expire together.
    pub const fn jitter_per_mille(mut self, jitter: u16) -> Self {
        self.jitter_per_mille = if jitter > 1000 { 1000 } else { jitter };
        self
    }

    /// The function's `version` option.
    pub const fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The function's lease (`lock(lease = ..)`); by default its ttl within 1 s and 30 s.
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The function's `lock` option: wait up to `wait` for another process's value.
    pub const fn lock(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// The function's `cache_none` option.
    pub const fn cache_none(mut self, cache_none: bool) -> Self {
        self.cache_none = cache_none;
        self
    }

    /// The function's `local` option: the longest an in-process copy of an entry is served.
    pub const fn local(mut self, max_age: Duration) -> Self {
        self.local = Some(max_age);
        self
    }

    /// What `sliding` without `max_age` passes to [`FnSpec::sliding`]: an entry read often
    /// enough is served for a century.
    pub const NO_MAX_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// The function's `sliding` option: each hit pushes the entry's expiry out to one ttl
    /// from then, and it is never served more than `max_age` after it was computed.
    pub const fn sliding(mut self, max_age: Duration) -> Self {
        self.sliding = Some(max_age);
        self
    }

    /// The function's name, as used in metrics and logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True the first time only: `warning` is given once a function and process.
    pub(crate) fn warn_once(&self, warning: Warning) -> bool {
        let bit = 1 << warning as u8;
        self.warned
            .fetch_or(bit, std::sync::atomic::Ordering::Relaxed)
            & bit
            == 0
    }

    /// The function's `metrics` handles, registered on first use.
    pub(crate) fn metrics(&self) -> &FnMetrics {
        self.metrics.get_or_init(|| FnMetrics::register(self.name))
    }

    /// Identifies what an entry of this function holds: the function, the stored type's
    /// name, the key and tag templates, the `version`, the function's owner (the `impl` type of
    /// a method, with its generic arguments), taken from `body_type`, the type name of an async
    /// block in the function or in one of its generated helpers, and `key_types`, the type name
    /// of a tuple of references to the parameters that keys and tags are rendered from (so a
    /// generic `T` rendered alike for `1u8` and `"1"` never shares entries). An entry with
    /// another fingerprint is a miss. With `remember`, the result is kept for the next call
    /// of the same instantiation (memoized calls); helpers pass `false` so they never displace
    /// the function's own.
    pub(crate) fn resolve<V: ?Sized>(
        &self,
        body_type: &'static str,
        key_types: &'static str,
        remember: bool,
    ) -> Cow<'_, Resolved> {
        let stored = std::any::type_name::<V>();
        let names = Names {
            stored,
            body_type,
            key_types,
        };
        if let Some((first_names, resolved)) = self.first_resolved.get()
            && *first_names == names
        {
            return Cow::Borrowed(resolved);
        }
        let others = || {
            self.other_resolved
                .read()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if self.first_resolved.get().is_some()
            && let Some((_, resolved)) = others().iter().find(|(known, _)| *known == names)
        {
            return Cow::Owned(resolved.clone());
        }
        let owner = crate::tags::owner_of(body_type);
        let mut hash = fnv::FnvHasher::default();
        for part in [self.identity, stored, owner, key_types, self.template] {
            hash.write(part.as_bytes());
            hash.write(&[0xff]);
        }
        for tag in self.tags {
            hash.write(tag.as_bytes());
            hash.write(&[0xfe]);
        }
        hash.write(&self.version.to_le_bytes());
        hash.write(&[u8::from(self.invalidate_all)]);
        let resolved = Resolved {
            fingerprint: hash.finish(),
            function_tag: crate::tags::function_tag(self.identity, self.name, owner),
            function_tag_key: OnceLock::new(),
        };
        if remember {
            match self.first_resolved.set((names, resolved.clone())) {
                Ok(()) => {
                    if let Some((_, kept)) = self.first_resolved.get() {
                        return Cow::Borrowed(kept);
                    }
                }
                Err((names, kept)) => {
                    let mut others = self
                        .other_resolved
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    // Two first calls of one instantiation may race here.
                    let first = self.first_resolved.get().map(|(first, _)| first);
                    if first != Some(&names) && !others.iter().any(|(known, _)| *known == names) {
                        others.push((names, kept));
                    }
                }
            }
        }
        Cow::Owned(resolved)
    }

    /// The rendering of the function's implicit tag, for the function or helper whose async
    /// block's type name is `body_type` (see [`FnSpec::resolve`]).
    pub(crate) fn function_tag(&self, body_type: &'static str) -> String {
        crate::tags::function_tag(self.identity, self.name, crate::tags::owner_of(body_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FnSpec {
        FnSpec::new("f", "m::f", "user:<id>", Duration::from_secs(1))
    }

    const BODY: &str = "m::f::{{closure}}";

    fn fingerprint<V>(spec: &FnSpec, body: &'static str) -> u64 {
        spec.resolve::<V>(body, "(&u64,)", true).fingerprint
    }

    #[test]
    fn fingerprint_covers_function_type_owner_templates_and_version() {
        let base = fingerprint::<u32>(&spec(), BODY);
        assert_eq!(base, fingerprint::<u32>(&spec(), BODY));
        assert_ne!(base, fingerprint::<u64>(&spec(), BODY));
        assert_ne!(base, fingerprint::<u32>(&spec(), "m::A::f::{{closure}}"));
        assert_ne!(base, fingerprint::<u32>(&spec().version(1), BODY));
        assert_ne!(base, fingerprint::<u32>(&spec().tags(&["org:<id>"]), BODY));
        let other_key_types = spec().resolve::<u32>(BODY, "(&u8,)", true).fingerprint;
        assert_ne!(base, other_key_types);
        let other_template = FnSpec::new("f", "m::f", "user:<name>", Duration::from_secs(1));
        assert_ne!(base, fingerprint::<u32>(&other_template, BODY));
        let other_function = FnSpec::new("g", "m::g", "user:<id>", Duration::from_secs(1));
        assert_ne!(base, fingerprint::<u32>(&other_function, BODY));
    }

    #[test]
    fn helpers_resolve_like_their_function() {
        let spec = spec();
        let from_function = spec.resolve::<u32>("m::A<u8>::f::{{closure}}", "(&u8,)", true);
        let from_helper =
            spec.resolve::<u32>("m::A<u8>::f_cache_entry::{{closure}}", "(&u8,)", false);
        assert_eq!(from_function.fingerprint, from_helper.fingerprint);
        assert_eq!(from_function.function_tag, from_helper.function_tag);
    }

    #[test]
    fn a_second_instantiation_does_not_reuse_the_first_fingerprint() {
        let spec = spec();
        let first = fingerprint::<u32>(&spec, BODY);
        let second = fingerprint::<String>(&spec, BODY);
        assert_ne!(first, second);
        assert_eq!(fingerprint::<u32>(&spec, BODY), first);
        assert_eq!(fingerprint::<String>(&spec, BODY), second);
    }
}
