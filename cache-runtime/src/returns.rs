//! How a memoized function's return value maps to what is stored.
//!
//! The macro picks the kind from the written return type: `Result<T, E>` stores `T` and never
//! an `Err`; `Option<T>` stores `Option<T>` but `None` only with `cache_none`;
//! `Result<Option<T>, E>` combines both; any other `T` is stored as is.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that can be stored in the cache: serde-serializable, owned, and shareable across
/// tasks.
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` cannot be stored in the cache",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it; it must also be `Send + 'static`"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> CacheValue for T {}

/// Maps a return type `R` to its stored value.
pub trait ReturnKind<R> {
    /// What is stored for a successful call.
    type Stored: CacheValue;

    /// The part of `result` that callers waiting on the same key may be given, if any.
    fn shareable(result: &R) -> Option<&Self::Stored>;

    /// Whether `result` may be written to the cache.
    fn storable(result: &R, cache_none: bool) -> bool;

    /// Rebuilds a return value from a stored one.
    fn from_stored(stored: Self::Stored) -> R;

    /// Whether `result` is a failure (an `Err`), which `fail_safe` may replace.
    fn is_failure(result: &R) -> bool {
        let _ = result;
        false
    }
}

/// Return type `T`: always stored.
#[derive(Debug)]
pub enum Plain {}

/// Return type `Option<T>`: `None` stored only with `cache_none`.
#[derive(Debug)]
pub enum Optional {}

/// Return type `Result<T, E>`: `Ok` stored, `Err` never.
#[derive(Debug)]
pub enum Fallible {}

/// Return type `Result<Option<T>, E>`: `Ok(Some)` stored, `Ok(None)` only with `cache_none`,
/// `Err` never.
#[derive(Debug)]
pub enum FallibleOptional {}

impl<T: CacheValue> ReturnKind<T> for Plain {
    type Stored = T;

    fn shareable(result: &T) -> Option<&T> {
        Some(result)
    }

    fn storable(_: &T, _: bool) -> bool {
        true
    }

    fn from_stored(stored: T) -> T {
        stored
    }
}

impl<T: CacheValue> ReturnKind<Option<T>> for Optional {
    type Stored = Option<T>;

    fn shareable(result: &Option<T>) -> Option<&Option<T>> {
        Some(result)
    }

    fn storable(result: &Option<T>, cache_none: bool) -> bool {
        result.is_some() || cache_none
    }

    fn from_stored(stored: Option<T>) -> Option<T> {
        stored
    }
}

impl<T: CacheValue, E> ReturnKind<Result<T, E>> for Fallible {
    type Stored = T;

    fn shareable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }

    fn storable(result: &Result<T, E>, _: bool) -> bool {
        result.is_ok()
    }

    fn from_stored(stored: T) -> Result<T, E> {
        Ok(stored)
    }

    fn is_failure(result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

impl<T: CacheValue, E> ReturnKind<Result<Option<T>, E>> for FallibleOptional {
    type Stored = Option<T>;

    fn shareable(result: &Result<Option<T>, E>) -> Option<&Option<T>> {
        result.as_ref().ok()
    }

    fn storable(result: &Result<Option<T>, E>, cache_none: bool) -> bool {
        matches!(result, Ok(Some(_))) || (cache_none && matches!(result, Ok(None)))
    }

    fn from_stored(stored: Option<T>) -> Result<Option<T>, E> {
        Ok(stored)
    }

    fn is_failure(result: &Result<Option<T>, E>) -> bool {
        result.is_err()
    }
}

/// Whether a stored value of a kind may be written: what a write-through checks, knowing only
/// the stored type (`None` is written only with `cache_none`).
pub trait StoredKind<V> {
    /// Whether `value` may be written.
    fn storable(value: &V, cache_none: bool) -> bool;
}

impl<V> StoredKind<V> for Plain {
    fn storable(_: &V, _: bool) -> bool {
        true
    }
}

impl<V> StoredKind<V> for Fallible {
    fn storable(_: &V, _: bool) -> bool {
        true
    }
}

impl<T> StoredKind<Option<T>> for Optional {
    fn storable(value: &Option<T>, cache_none: bool) -> bool {
        value.is_some() || cache_none
    }
}

impl<T> StoredKind<Option<T>> for FallibleOptional {
    fn storable(value: &Option<T>, cache_none: bool) -> bool {
        value.is_some() || cache_none
    }
}

/// What a writer (`#[redis_cache_put]`, `#[redis_cache_evict]`) with return type `R` wrote,
/// when its call succeeded: the `Ok` value of a `Result`, any other value as is.
pub trait Written<R> {
    /// The value a successful call returned.
    type Value;

    /// The value, if the call succeeded.
    fn written(result: &R) -> Option<&Self::Value>;
}

impl<T> Written<T> for Plain {
    type Value = T;

    fn written(result: &T) -> Option<&T> {
        Some(result)
    }
}

impl<T> Written<Option<T>> for Optional {
    type Value = Option<T>;

    fn written(result: &Option<T>) -> Option<&Option<T>> {
        Some(result)
    }
}

impl<T, E> Written<Result<T, E>> for Fallible {
    type Value = T;

    fn written(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
}

impl<T, E> Written<Result<Option<T>, E>> for FallibleOptional {
    type Value = Option<T>;

    fn written(result: &Result<Option<T>, E>) -> Option<&Option<T>> {
        result.as_ref().ok()
    }
}

/// A failed call's error, type-erased, as the callers that waited on its computation get it.
pub type SharedFailure = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// How the callers that waited on a failed computation (an `Err`) get its outcome. Generated
/// code picks [`CloneFailure`] when the error type is `Clone + Send + Sync + 'static`, else
/// [`TakeTurns`] (see [`FailureSharing`]).
pub trait ShareFailure<R>: Copy {
    /// The error of a failed `result`, to give to the waiters; `None` if it is not a failure
    /// or cannot be shared.
    fn share(self, result: &R) -> Option<SharedFailure>;

    /// A waiter's own copy of a shared error.
    fn rebuild(self, failure: &SharedFailure) -> Option<R>;
}

/// The waiters of a failed computation get a clone of its error, at once.
#[derive(Debug, Clone, Copy)]
pub struct CloneFailure;

/// The waiters of a failed computation take turns: the next one runs the function, so the
/// source still sees one call per key and process at a time.
#[derive(Debug, Clone, Copy)]
pub struct TakeTurns;

impl<T, E: Clone + Send + Sync + 'static> ShareFailure<Result<T, E>> for CloneFailure {
    fn share(self, result: &Result<T, E>) -> Option<SharedFailure> {
        let error = result.as_ref().err()?;
        Some(std::sync::Arc::new(error.clone()))
    }

    fn rebuild(self, failure: &SharedFailure) -> Option<Result<T, E>> {
        failure.downcast_ref::<E>().cloned().map(Err)
    }
}

impl<R> ShareFailure<R> for TakeTurns {
    fn share(self, _: &R) -> Option<SharedFailure> {
        None
    }

    fn rebuild(self, _: &SharedFailure) -> Option<R> {
        None
    }
}

/// Picks the [`ShareFailure`] of return type `R` by method resolution ("autoref
/// specialization"): `(&FailureSharing::<R>::new()).pick()` is [`CloneFailure`] when `R` is a
/// `Result` whose error is `Clone + Send + Sync + 'static`, [`TakeTurns`] otherwise (including
/// in generic functions, whose error type is not known to be `Clone`). Both
/// [`PickCloneFailure`] and [`PickTakeTurns`] must be in scope.
#[derive(Debug)]
pub struct FailureSharing<R>(std::marker::PhantomData<fn() -> R>);

impl<R> FailureSharing<R> {
    /// The selector for return type `R`.
    #[must_use]
    pub const fn new() -> Self {
        FailureSharing(std::marker::PhantomData)
    }
}

impl<R> Default for FailureSharing<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// The preferred pick of [`FailureSharing`] (matched without auto-reference).
pub trait PickCloneFailure {
    /// [`CloneFailure`].
    fn pick(&self) -> CloneFailure;
}

impl<T, E: Clone + Send + Sync + 'static> PickCloneFailure for FailureSharing<Result<T, E>> {
    fn pick(&self) -> CloneFailure {
        CloneFailure
    }
}

/// The fallback pick of [`FailureSharing`] (matched through one more reference).
pub trait PickTakeTurns {
    /// [`TakeTurns`].
    fn pick(&self) -> TakeTurns;
}

impl<R> PickTakeTurns for &FailureSharing<R> {
    fn pick(&self) -> TakeTurns {
        TakeTurns
    }
}

/// Picks how a failed call of return type `R` is described in logs, by method resolution as
/// [`FailureSharing`] does: the error's `Debug` text when it has one
/// ([`PickDebugText`]), nothing otherwise ([`PickNoText`]).
#[derive(Debug)]
pub struct FailureText<R>(std::marker::PhantomData<fn() -> R>);

impl<R> FailureText<R> {
    /// The selector for return type `R`.
    #[must_use]
    pub const fn new() -> Self {
        FailureText(std::marker::PhantomData)
    }
}

impl<R> Default for FailureText<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// How a failed result is described: `None` for a result that is not a failure, or whose
/// error cannot be shown.
pub type DescribeFailure<R> = fn(&R) -> Option<String>;

/// The preferred pick of [`FailureText`]: the error's `Debug` text.
pub trait PickDebugText {
    /// The return type.
    type Returned;
    /// The describer.
    fn pick(&self) -> DescribeFailure<Self::Returned>;
}

impl<T, E: std::fmt::Debug> PickDebugText for FailureText<Result<T, E>> {
    type Returned = Result<T, E>;

    fn pick(&self) -> DescribeFailure<Result<T, E>> {
        debug_text::<T, E>
    }
}

fn debug_text<T, E: std::fmt::Debug>(result: &Result<T, E>) -> Option<String> {
    result.as_ref().err().map(|error| format!("{error:?}"))
}

/// The fallback pick of [`FailureText`]: no text.
pub trait PickNoText {
    /// The return type.
    type Returned;
    /// The describer.
    fn pick(&self) -> DescribeFailure<Self::Returned>;
}

impl<R> PickNoText for &FailureText<R> {
    type Returned = R;

    fn pick(&self) -> DescribeFailure<R> {
        |_| None
    }
}
