//! How long an entry is fresh, how long it may still be served stale, and which of the two it
//! is now, judged by the cache's [`Clock`](crate::Clock) from the times in its envelope.

use crate::envelope::EntryTimes;
use crate::spec::FnSpec;
use std::time::Duration;

/// The lifetime of an entry being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// Its ttl, shortened by the function's jitter.
    pub(crate) fresh_for: Duration,
    /// How long Redis keeps it: `fresh_for` plus the `stale` window, or the `fail_safe` age
    /// if that is longer.
    pub(crate) stored_for: Duration,
}

impl Lifetime {
    /// The lifetime of an entry of `spec` written now; `unit` is a random number in `[0, 1)`
    /// that picks how much of the jitter applies.
    pub(crate) fn of(spec: &FnSpec, unit: f64) -> Lifetime {
        if let Some(max_age) = spec.sliding {
            // Fresh for its whole `max_age` by the envelope; Redis ends it one ttl after its
            // last read (each hit pushes the key's expiry out).
            return Lifetime {
                fresh_for: max_age,
                stored_for: spec.ttl,
            };
        }
        let cut = spec.ttl.as_secs_f64() * f64::from(spec.jitter_per_mille) / 1000.0 * unit;
        // At least 1 ms: a zero ttl would mean "no expiry" to Redis.
        let fresh_for = spec
            .ttl
            .saturating_sub(Duration::from_secs_f64(cut))
            .max(Duration::from_millis(1));
        let servable = fresh_for.saturating_add(spec.stale.unwrap_or_default());
        Lifetime {
            fresh_for,
            stored_for: servable.max(spec.fail_safe.unwrap_or_default()),
        }
    }

    /// The envelope times of an entry with this lifetime written at `now_ms`, whose value
    /// took `computed_in_ms` to compute.
    pub(crate) fn times(self, now_ms: u64, computed_in_ms: u32) -> EntryTimes {
        EntryTimes {
            written_at_ms: now_ms,
            fresh_until_ms: now_ms.saturating_add(crate::clock::millis(self.fresh_for)),
            computed_in_ms,
        }
    }
}

/// What an entry that decoded is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Past its ttl, within the function's `stale` window: served while one refresh runs.
    Stale,
    /// Past both: a miss.
    Expired,
}

/// Whether an entry written at `times` may still stand in for a failed computation.
pub(crate) fn within_fail_safe(spec: &FnSpec, times: EntryTimes, now_ms: u64) -> bool {
    spec.fail_safe.is_some_and(|fail_safe| {
        now_ms
            < times
                .written_at_ms
                .saturating_add(crate::clock::millis(fail_safe))
    })
}

/// Early refresh (XFetch: Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
/// Stampede Prevention", VLDB 2015): a fresh entry is refreshed ahead of its expiry with a
/// probability that grows as the expiry nears, the faster the longer the value takes to
/// compute. `unit` is a random number in `[0, 1)`; with β = 1, the refresh is due when
/// `computed_in · -ln(1 - unit) ≥ time left`.
pub(crate) fn early_refresh_due(times: EntryTimes, now_ms: u64, unit: f64) -> bool {
    let left = times.fresh_until_ms.saturating_sub(now_ms) as f64;
    let draw = -(1.0 - unit).ln();
    f64::from(times.computed_in_ms) * draw >= left
}

impl Freshness {
    pub(crate) fn of(spec: &FnSpec, times: EntryTimes, now_ms: u64) -> Freshness {
        if now_ms < times.fresh_until_ms {
            return Freshness::Fresh;
        }
        match spec.stale {
            Some(stale)
                if now_ms
                    < times
                        .fresh_until_ms
                        .saturating_add(crate::clock::millis(stale)) =>
            {
                Freshness::Stale
            }
            _ => Freshness::Expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(100);

    #[test]
    fn jitter_shortens_the_ttl_by_up_to_its_share() {
        let spec = FnSpec::new("f", "m::f", "k", TTL).jitter_per_mille(200);
        assert_eq!(Lifetime::of(&spec, 0.0).fresh_for, TTL);
        assert_eq!(Lifetime::of(&spec, 0.5).fresh_for, Duration::from_secs(90));
        let almost_all = Lifetime::of(&spec, 0.999_999).fresh_for;
        assert!(almost_all > Duration::from_secs(80) && almost_all < Duration::from_secs(81));
    }

    #[test]
    fn the_stale_window_follows_the_ttl() {
        let spec = FnSpec::new("f", "m::f", "k", TTL).stale(Duration::from_secs(60));
        let lifetime = Lifetime::of(&spec, 0.3);
        assert_eq!(lifetime.stored_for, Duration::from_secs(160));
        let times = lifetime.times(1_000, 0);
        assert_eq!(times.fresh_until_ms, 101_000);
        assert_eq!(Freshness::of(&spec, times, 100_999), Freshness::Fresh);
        assert_eq!(Freshness::of(&spec, times, 101_000), Freshness::Stale);
        assert_eq!(Freshness::of(&spec, times, 160_999), Freshness::Stale);
        assert_eq!(Freshness::of(&spec, times, 161_000), Freshness::Expired);
        let without = FnSpec::new("f", "m::f", "k", TTL);
        assert_eq!(Freshness::of(&without, times, 101_000), Freshness::Expired);
    }

    #[test]
    fn early_refresh_grows_likelier_as_the_expiry_nears() {
        let times = EntryTimes {
            written_at_ms: 0,
            fresh_until_ms: 10_000,
            computed_in_ms: 1_000,
        };
        let share_due = |now_ms: u64| {
            let draws = 10_000;
            (0..draws)
                .filter(|&draw| {
                    early_refresh_due(times, now_ms, f64::from(draw) / f64::from(draws))
                })
                .count() as f64
                / f64::from(draws)
        };
        // P(due) = exp(-left / computed_in): e^-9, e^-1 and e^-0.1.
        assert!(share_due(1_000) < 0.001);
        assert!((share_due(9_000) - (-1.0f64).exp()).abs() < 0.01);
        assert!((share_due(9_900) - (-0.1f64).exp()).abs() < 0.01);
        let instant = EntryTimes {
            computed_in_ms: 0,
            ..times
        };
        assert!(!early_refresh_due(instant, 9_999, 0.999), "nothing to win");
    }

    #[test]
    fn a_sliding_entry_is_fresh_for_its_max_age_and_stored_for_its_ttl() {
        let spec = FnSpec::new("f", "m::f", "k", TTL).sliding(Duration::from_secs(3600));
        let lifetime = Lifetime::of(&spec, 0.7);
        assert_eq!(lifetime.stored_for, TTL);
        let times = lifetime.times(1_000, 0);
        assert_eq!(Freshness::of(&spec, times, 3_600_999), Freshness::Fresh);
        assert_eq!(Freshness::of(&spec, times, 3_601_000), Freshness::Expired);
    }

    #[test]
    fn fail_safe_keeps_values_for_its_age() {
        let spec = FnSpec::new("f", "m::f", "k", TTL).fail_safe(Duration::from_secs(3600));
        let lifetime = Lifetime::of(&spec, 0.0);
        assert_eq!(lifetime.stored_for, Duration::from_secs(3600));
        let times = lifetime.times(1_000, 0);
        assert!(within_fail_safe(&spec, times, 3_600_999));
        assert!(!within_fail_safe(&spec, times, 3_601_000));
        let without = FnSpec::new("f", "m::f", "k", TTL);
        assert!(!within_fail_safe(&without, times, 2_000));
    }
}
