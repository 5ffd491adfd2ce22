//! What `#[redis_cache_put]` and `#[redis_cache_evict]` call: an entry of a memoized function
//! named through its generated `<fn>_cache_entry(..)` helper, written or removed after the
//! writer's body succeeded.
//!
//! A put goes through the lease protocol, in two steps around the writer's body:
//! - before the body, it takes the entry's lease over from whoever holds it (so a computation
//!   that began before the write can no longer store its older value) and reads the tokens of
//!   the entry's tags (so a tag invalidated while the body runs makes the put entry a miss);
//! - after the body, it stores the value only if it still holds the lease. An eviction or
//!   another write in the meantime took it: then the entry is removed instead, since which
//!   of the two writes is newer cannot be told.
//!
//! Puts and evictions go through the circuit breaker like reads (skipped while it is open) and
//! feed it; removing the entry after a failed put, like every invalidation a caller asks for,
//! is tried even then (see [`Gate::settle`](crate::backend::Gate::settle)). A write-through or eviction
//! that does not happen never fails the writer's call: it is logged and counted, and where
//! Redis still answers the entry is removed, so a lost write cannot leave the old value.

use crate::backend::HeldLease;
use crate::cache::memoize::tag_lifetime;
use crate::lease;
use crate::spec::FnSpec;
use crate::tags::{TagKeys, Token};
use crate::{Cache, CacheError, CacheValue};
use std::marker::PhantomData;

/// One entry of a memoized function whose stored values are `V`: what its
/// `<fn>_cache_entry(..)` helper returns. Rendered, but not tied to a cache yet.
#[derive(Debug)]
pub struct EntryRef<V: ?Sized> {
    pub(crate) spec: &'static FnSpec,
    /// The rendered key (without namespace).
    pub(crate) rendered: String,
    /// The renderings of its `tags`.
    pub(crate) tags: Vec<String>,
    pub(crate) body_type: &'static str,
    pub(crate) key_types: &'static str,
    /// Whether the reader stores this value (`None` only with `cache_none`).
    pub(crate) storable: fn(&V, bool) -> bool,
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
        storable: fn(&V, bool) -> bool,
    ) -> Self {
        EntryRef {
            spec,
            rendered,
            tags,
            body_type,
            key_types,
            storable,
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

/// A writer's Redis work that did not happen.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LostWrite {
    Put,
    Evict,
}

/// A write-through begun before its writer's body (see the module's doc).
#[doc(hidden)]
#[derive(Debug)]
pub struct PendingPut<V: ?Sized> {
    entry: EntryRef<V>,
    /// `None` without a cache; an error when the first step failed.
    began: Option<Result<Began, CacheError>>,
}

#[derive(Debug)]
struct Began {
    key: String,
    fingerprint: u64,
    /// The entry's tags' full version keys: its function's own, then its `tags`.
    function_tag: Option<String>,
    user_tags: Vec<String>,
    tokens: Vec<Token>,
    lease: HeldLease,
}

impl<V: ?Sized> PendingPut<V> {
    /// `value`, type-checked against the entry's (generated code passes the writer's value
    /// through this, so a mismatch is reported on the user's expression).
    pub fn checked<'a>(&self, value: &'a V) -> &'a V {
        value
    }
}

impl<V: CacheValue> PendingPut<V> {
    /// Before the writer's body: takes the entry's lease and reads its tags' tokens.
    pub(crate) async fn begin(cache: Option<&Cache>, entry: EntryRef<V>) -> Self {
        let began = match cache {
            Some(cache) => Some(cache.begin_put(&entry).await),
            None => None,
        };
        PendingPut { entry, began }
    }

    /// After the writer's body: stores `value` (`None` when the writer failed: the lease is
    /// given back, nothing changes).
    pub(crate) async fn finish(self, cache: Option<&Cache>, value: Option<&V>) {
        let (Some(cache), Some(began)) = (cache, self.began) else {
            return;
        };
        let entry = &self.entry;
        let stored = match (began, value) {
            (Ok(began), None) => {
                let gate = &cache.inner.gate;
                let _ = gate.settle("release", began.lease.release(false)).await;
                return;
            }
            (Err(_), None) => return,
            // The reader never stores this value (`None` without `cache_none`): the entry is
            // removed instead, so the reader asks its source again.
            (began, Some(value)) if !(entry.storable)(value, entry.spec.cache_none) => {
                if let Ok(began) = began {
                    // The invalidation deletes the lease with the entry.
                    began.lease.disarm();
                }
                cache.invalidate(&entry.rendered).await.map(drop)
            }
            (Ok(began), Some(value)) => cache.commit_put(entry, began, value).await,
            (Err(error), Some(_)) => Err(error),
        };
        if let Err(error) = stored {
            cache.report_lost_write(LostWrite::Put, &entry.rendered, &error);
            let _ = cache.invalidate(&entry.rendered).await;
        }
    }
}

impl Cache {
    /// The first step of a put: the lease, taken over from any holder, and the tokens of the
    /// entry's tags (created where missing), in one round trip.
    async fn begin_put<V: CacheValue>(&self, entry: &EntryRef<V>) -> Result<Began, CacheError> {
        let spec = entry.spec;
        let resolved = spec.resolve::<V>(entry.body_type, entry.key_types, false);
        let key = self.full_key(&entry.rendered);
        let function_tag = spec.invalidate_all.then(|| {
            resolved
                .function_tag_key(&self.inner.namespace)
                .into_owned()
        });
        let user_tags = self.tag_keys(&entry.tags);
        let gate = &self.inner.gate;
        let backend = gate.backend();
        // Made before it is asked for: if this call is cancelled or fails from here on, the
        // lease is given back in the background.
        let lease = HeldLease::new(
            backend.clone(),
            &key,
            lease::lease_key(&key),
            lease::new_writer_token(),
            spec.lease,
        );
        let tag_refs: Vec<&str> = function_tag
            .iter()
            .chain(&user_tags)
            .map(String::as_str)
            .collect();
        let tokens = gate
            .pass("begin put", async {
                let deadline = tokio::time::Instant::now() + gate.op_timeout();
                let (seized, tokens) = tokio::join!(
                    backend.seize_lease(lease.key(), lease.token(), spec.lease),
                    backend.ensure_tags(&tag_refs, tag_lifetime(spec), deadline),
                );
                seized?;
                tokens
            })
            .await?;
        Ok(Began {
            // From now on the body may write: a writer cancelled before its put lands removes
            // the entry rather than leave the old value.
            lease: lease.clearing_entry_on_drop(),
            key,
            fingerprint: resolved.fingerprint,
            function_tag,
            user_tags,
            tokens,
        })
    }

    /// The second step of a put: stores `value` if the put still holds the lease, else
    /// removes the entry.
    async fn commit_put<V: CacheValue>(
        &self,
        entry: &EntryRef<V>,
        began: Began,
        value: &V,
    ) -> Result<(), CacheError> {
        let spec = entry.spec;
        let encoded = self
            .encode(spec, began.fingerprint, value, &began.tokens, 0)
            .ok_or_else(|| {
                CacheError::Config(format!("the value of `{}` does not serialize", spec.name))
            })?;
        let Began {
            key,
            function_tag,
            user_tags,
            lease,
            ..
        } = began;
        if !self.fits(spec, &key, &encoded) {
            // Not stored; the old value must not stay either. Removing the entry removes the
            // lease with it.
            lease.disarm();
            self.inner.flights.detach(&key);
            return self.invalidate(&entry.rendered).await.map(drop);
        }
        let tag_keys = TagKeys {
            function: function_tag.as_deref(),
            user: &user_tags,
        };
        let gate = &self.inner.gate;
        let backend = gate.backend();
        let stored = gate
            .pass("put", async {
                let (stored, _) = tokio::join!(
                    lease.fill(encoded.bytes, encoded.stored_for),
                    backend.extend_tags(tag_keys, tag_lifetime(spec))
                );
                stored
            })
            .await;
        // Callers of this process that come later must not join a computation that began
        // before the write.
        self.inner.flights.detach(&key);
        if !stored? {
            // An eviction or another write came while the body ran (or the body outlasted
            // the lease): which value is newer cannot be told, so neither stays.
            tracing::debug!(target: "redis_memo", function = spec.name,
                key = entry.rendered,
                "redis-memo: the entry changed while the writer ran; removing it"
            );
            self.invalidate(&entry.rendered).await?;
        }
        Ok(())
    }

    /// Full version keys of rendered tags.
    pub(crate) fn tag_keys(&self, rendered: &[String]) -> Vec<String> {
        rendered.iter().map(|tag| self.full_tag_key(tag)).collect()
    }

    /// An evict writer's removals: `entries` (rendered keys), the tags `tags` (renderings)
    /// and every entry of the functions `all_of`; how many of these tags had a version.
    /// Skipped while the circuit breaker is open (the writer counts it as a lost write).
    pub(crate) async fn evict(
        &self,
        entries: &[String],
        tags: &[String],
        all_of: &[FunctionRef],
    ) -> Result<u64, CacheError> {
        let removals = self.remove_all(entries, tags, all_of);
        self.inner.gate.pass("evict", removals).await
    }

    /// Invalidates every entry of `function` (its implicit tag), tried even while the circuit
    /// breaker is open (the caller sees the error); true if it had entries.
    pub(crate) async fn invalidate_all_of(
        &self,
        function: FunctionRef,
    ) -> Result<bool, CacheError> {
        let all_of = [function];
        let removals = self.remove_all(&[], &[], &all_of);
        Ok(self.inner.gate.settle("invalidate all", removals).await? > 0)
    }

    /// The removals of [`Cache::evict`], without the gate.
    async fn remove_all(
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
            if let Err(error) = self.remove_entry(entry).await {
                failure = Some(error);
            }
        }
        let mut removed = 0;
        if !tag_keys.is_empty() {
            match self.inner.gate.backend().invalidate_tags(&tag_keys).await {
                Ok(count) => removed = count,
                Err(error) => failure = Some(error),
            }
        }
        failure.map_or(Ok(removed), Err)
    }

    /// Logs and counts a write-through or eviction that did not happen.
    pub(crate) fn report_lost_write(&self, write: LostWrite, key: &str, error: &CacheError) {
        self.inner.counters.record_lost_write();
        match write {
            LostWrite::Put => tracing::error!(target: "redis_memo", key,
                %error,
                "redis-memo: a write-through failed; removing the entry instead where Redis \
                 answers (if it does not, the entry may hold the old value until its ttl)"
            ),
            LostWrite::Evict => tracing::error!(target: "redis_memo", key,
                %error,
                "redis-memo: an eviction failed; the entry may hold the old value until its ttl"
            ),
        }
    }
}
