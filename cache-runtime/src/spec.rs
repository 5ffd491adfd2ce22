//! What the macro knows about one memoized function, as a `static` the generated code passes
//! to the runtime.

use crate::stats::FnMetrics;
use std::sync::OnceLock;
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
    pub(crate) ttl: Duration,
    /// How long a miss's lease holds the entry for its computation.
    pub(crate) lease: Duration,
    /// `lock`: how long a caller waits for another process's value before computing.
    pub(crate) lock_wait: Option<Duration>,
    pub(crate) version: u32,
    pub(crate) cache_none: bool,
    metrics: OnceLock<FnMetrics>,
    /// Whether the "computation outlasted its lease" warning was given.
    slower_than_lease_warned: std::sync::atomic::AtomicBool,
    /// The first fingerprint computed, with the addresses of the type names it was computed
    /// for (`type_name` strings are static): most functions have one instantiation, so most
    /// calls reuse it; other instantiations compute theirs.
    first_fingerprint: OnceLock<([(usize, usize); 2], u64)>,
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
            ttl,
            lease: crate::lease::default_lease(ttl),
            lock_wait: None,
            version: 0,
            cache_none: false,
            metrics: OnceLock::new(),
            slower_than_lease_warned: std::sync::atomic::AtomicBool::new(false),
            first_fingerprint: OnceLock::new(),
        }
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

    /// The function's name, as used in metrics and logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True the first time only: the "outlasted its lease" warning is given once a function.
    pub(crate) fn warn_once_slower_than_lease(&self) -> bool {
        !self
            .slower_than_lease_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// The function's `metrics` handles, registered on first use.
    pub(crate) fn metrics(&self) -> &FnMetrics {
        self.metrics.get_or_init(|| FnMetrics::register(self.name))
    }

    /// Identifies what an entry of this function holds: the function, the stored type's
    /// name, the key template, the `version`, and `instance`: for generic functions and
    /// methods, the type names of the generic parameters and `Self` (generated code passes
    /// `type_name::<(Self, T, ..)>()`, or `""`), since their entries would otherwise share a
    /// fingerprint. An entry with another fingerprint is a miss.
    pub(crate) fn fingerprint<V: ?Sized>(&self, instance: &'static str) -> u64 {
        let stored = std::any::type_name::<V>();
        let names = [
            (stored.as_ptr() as usize, stored.len()),
            (instance.as_ptr() as usize, instance.len()),
        ];
        if let Some((first_names, fingerprint)) = self.first_fingerprint.get()
            && *first_names == names
        {
            return *fingerprint;
        }
        let mut hash = Fnv1a::new();
        for part in [self.identity, stored, instance, self.template] {
            hash.write(part.as_bytes());
            hash.write(&[0xff]);
        }
        hash.write(&self.version.to_le_bytes());
        let _ = self.first_fingerprint.set((names, hash.0));
        hash.0
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `DefaultHasher`), and the
/// inputs are not attacker-chosen.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FnSpec {
        FnSpec::new("f", "m::f", "user:<id>", Duration::from_secs(1))
    }

    #[test]
    fn fingerprint_covers_function_type_instance_template_and_version() {
        let base = spec().fingerprint::<u32>("");
        assert_eq!(base, spec().fingerprint::<u32>(""));
        assert_ne!(base, spec().fingerprint::<u64>(""));
        assert_ne!(base, spec().fingerprint::<u32>("(u8,)"));
        assert_ne!(base, spec().version(1).fingerprint::<u32>(""));
        let other_template = FnSpec::new("f", "m::f", "user:<name>", Duration::from_secs(1));
        assert_ne!(base, other_template.fingerprint::<u32>(""));
        let other_function = FnSpec::new("g", "m::g", "user:<id>", Duration::from_secs(1));
        assert_ne!(base, other_function.fingerprint::<u32>(""));
    }

    #[test]
    fn a_second_instantiation_does_not_reuse_the_first_fingerprint() {
        let spec = spec();
        let first = spec.fingerprint::<u32>("");
        let second = spec.fingerprint::<String>("");
        assert_ne!(first, second);
        assert_eq!(spec.fingerprint::<u32>(""), first);
        assert_eq!(spec.fingerprint::<String>(""), second);
    }
}
