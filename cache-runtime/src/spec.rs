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
    pub(crate) template: &'static str,
    pub(crate) ttl: Duration,
    pub(crate) version: u32,
    pub(crate) cache_none: bool,
    metrics: OnceLock<FnMetrics>,
}

impl FnSpec {
    /// A function named `name` whose key template is `template`, cached for `ttl`.
    pub const fn new(name: &'static str, template: &'static str, ttl: Duration) -> Self {
        FnSpec {
            name,
            template,
            ttl,
            version: 0,
            cache_none: false,
            metrics: OnceLock::new(),
        }
    }

    /// The function's `version` option.
    pub const fn version(mut self, version: u32) -> Self {
        self.version = version;
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

    /// The function's `metrics` handles, registered on first use.
    pub(crate) fn metrics(&self) -> &FnMetrics {
        self.metrics.get_or_init(|| FnMetrics::register(self.name))
    }

    /// Identifies what an entry of this function holds: the stored type's name, the key
    /// template and the `version`. An entry with another fingerprint is a miss.
    pub(crate) fn fingerprint<V: ?Sized>(&self) -> u64 {
        let mut hash = Fnv1a::new();
        hash.write(std::any::type_name::<V>().as_bytes());
        hash.write(&[0xff]);
        hash.write(self.template.as_bytes());
        hash.write(&[0xff]);
        hash.write(&self.version.to_le_bytes());
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
        FnSpec::new("f", "user:<id>", Duration::from_secs(1))
    }

    #[test]
    fn fingerprint_covers_type_template_and_version() {
        let base = spec().fingerprint::<u32>();
        assert_eq!(base, spec().fingerprint::<u32>());
        assert_ne!(base, spec().fingerprint::<u64>());
        assert_ne!(base, spec().version(1).fingerprint::<u32>());
        let other = FnSpec::new("f", "user:<name>", Duration::from_secs(1));
        assert_ne!(base, other.fingerprint::<u32>());
    }
}
