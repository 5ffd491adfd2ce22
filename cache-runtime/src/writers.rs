//! What `#[redis_cache_put]` and `#[redis_cache_evict]` call: an entry of a memoized function
//! named through its generated `<fn>_cache_entry(..)` helper, written or removed after the
//! writer's body succeeded.
//!
//! A put goes through the lease protocol: it takes the entry's lease away from whoever holds
//! it while storing, so a computation that began before the write cannot store its older value
//! after it.

use crate::memoize::tag_lifetime;
use crate::spec::FnSpec;
use crate::tags::TagKeys;
use crate::{Cache, CacheError, CacheValue};
use std::marker::PhantomData;

/// One entry of a memoized function whose stored values are `V`: what its
/// `<fn>_cache_entry(..)` helper returns. Rendered, but not tied to a cache yet.
#[derive(Debug)]
pub struct EntryRef<V: ?Sized> {
    spec: &'static FnSpec,
    /// The rendered key (without namespace).
    rendered: String,
    /// The renderings of its `tags`.
    tags: Vec<String>,
    body_type: &'static str,
    key_types: &'static str,
    value: PhantomData<fn() -> V>,
}

impl<V: ?Sized> EntryRef<V> {
    /// Generated code only.
    #[doc(hidden)]
    pub fn new(
        spec: &'static FnSpec,
        rendered: String,
        tags: Vec<String>,
        [body_type, key_types]: [&'static str; 2],
    ) -> Self {
        EntryRef {
            spec,
            rendered,
            tags,
            body_type,
            key_types,
            value: PhantomData,
        }
    }

    /// The rendered key, as `<fn>_cache_key` returns it.
    pub fn rendered_key(&self) -> &str {
        &self.rendered
    }
}

/// All entries of one memoized function: what its `<fn>_cache_function()` helper returns.
#[derive(Debug, Clone, Copy)]
pub struct FunctionRef {
    spec: &'static FnSpec,
    body_type: &'static str,
}

impl FunctionRef {
    /// Generated code only.
    #[doc(hidden)]
    pub fn new(spec: &'static FnSpec, body_type: &'static str) -> Self {
        FunctionRef { spec, body_type }
    }
}

/// What `<fn>_cache_function()` returns for a function without `invalidate_all`: its entries
/// do not record a tag of their own, so they cannot all be invalidated at once.
#[derive(Debug, Clone, Copy)]
pub struct WithoutInvalidateAll;

/// A function whose entries can all be invalidated with one command (`all_of = ..`).
#[diagnostic::on_unimplemented(
    message = "this memoized function cannot have all its entries invalidated at once",
    label = "its `#[redis_cached]` has no `invalidate_all`",
    note = "add `invalidate_all` to the function's `#[redis_cached(..)]`: its entries then record a tag of their own (one more key read per hit)"
)]
pub trait AllOf {
    /// The function's handle.
    fn function(self) -> FunctionRef;
}

impl AllOf for FunctionRef {
    fn function(self) -> FunctionRef {
        self
    }
}

impl Cache {
    /// Stores `value` as `entry` (write-through), recording the current tokens of its tags,
    /// and takes its lease away so an older computation in flight cannot overwrite it.
    ///
    /// # Errors
    /// A value that does not serialize; a Redis failure or timeout.
    pub(crate) async fn put_entry<V: CacheValue>(
        &self,
        entry: &EntryRef<V>,
        value: &V,
    ) -> Result<(), CacheError> {
        let spec = entry.spec;
        let resolved = spec.resolve::<V>(entry.body_type, entry.key_types, false);
        let key = self.full_key(&entry.rendered);
        let function_tag = spec
            .invalidate_all
            .then(|| resolved.function_tag_key(&self.inner.namespace));
        let user_tags = self.tag_keys(&entry.tags);
        let tag_keys = TagKeys {
            function: function_tag.as_deref(),
            user: &user_tags,
        };
        let tag_refs: Vec<&str> = tag_keys.iter().collect();
        let backend = &self.inner.backend;
        let tokens = backend.ensure_tags(&tag_refs, tag_lifetime(spec)).await?;
        let bytes = self
            .encode(spec, resolved.fingerprint, value, &tokens)
            .ok_or_else(|| {
                CacheError::Config(format!("the value of `{}` does not serialize", spec.name))
            })?;
        let lease = crate::lease::lease_key(&key);
        let (stored, _) = tokio::join!(
            backend.put(&key, &lease, bytes, spec.ttl),
            backend.extend_tags(tag_keys, tag_lifetime(spec))
        );
        // Callers of this process that come later must not join a computation that began
        // before the write.
        self.inner.flights.detach(&key);
        stored
    }

    /// Full version keys of rendered tags.
    fn tag_keys(&self, rendered: &[String]) -> Vec<String> {
        rendered.iter().map(|tag| self.full_tag_key(tag)).collect()
    }

    /// Removes `entries` (rendered keys), and invalidates the tags `tags` (renderings) and
    /// every entry of the functions `all_of`; how many of these tags had a version.
    pub(crate) async fn evict_counting(
        &self,
        entries: &[String],
        tags: &[String],
        all_of: &[FunctionRef],
    ) -> Result<u64, CacheError> {
        let mut tag_keys = self.tag_keys(tags);
        for function in all_of {
            let tag = function.spec.function_tag(function.body_type);
            tag_keys.push(self.full_tag_key(&tag));
        }
        // Everything is attempted even after a failure: each removal that lands counts.
        let mut failure = None;
        for entry in entries {
            if let Err(error) = self.invalidate(entry).await {
                failure = Some(error);
            }
        }
        let mut removed = 0;
        if !tag_keys.is_empty() {
            match self.invalidate_tag_keys(tag_keys).await {
                Ok(count) => removed = count,
                Err(error) => failure = Some(error),
            }
        }
        failure.map_or(Ok(removed), Err)
    }

    /// Logs and counts a write-through or eviction that did not happen.
    pub(crate) fn report_lost_write(&self, operation: &'static str, key: &str, error: &CacheError) {
        self.inner.counters.record_lost_write();
        tracing::error!(
            operation,
            key,
            %error,
            "redis-memo: a write-through or eviction failed; the entry may be stale until its ttl"
        );
    }
}
