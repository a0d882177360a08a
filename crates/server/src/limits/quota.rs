//! Request-rate quotas: a token bucket per data store and operation, configured like
//! HealthLake's per-operation quotas. Off unless `fhirlake serve --quotas healthlake` or
//! `--quota OPERATION=RATE[/BURST]` asks for them: a self-hosted server should not throttle
//! its owner by default.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::operation_name;

/// One operation's allowance: `rate` requests per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub rate: f64,
    pub burst: u32,
}

impl Quota {
    /// `rate` per second with a burst of one second's worth (at least one request), since
    /// HealthLake publishes rates but not bursts.
    pub fn per_second(rate: f64) -> Self {
        Self {
            rate,
            burst: rate.ceil().max(1.0) as u32,
        }
    }

    /// `count` requests per minute, one at a time (HealthLake's job and data store quotas).
    pub fn per_minute(count: f64) -> Self {
        Self {
            rate: count / 60.0,
            burst: 1,
        }
    }
}

/// The quota of each limited operation; operations not listed are not limited. Empty (the
/// default) turns quotas off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas(BTreeMap<&'static str, Quota>);

/// HealthLake's default request-rate quotas (developer guide, "Service quotas for
/// HealthLake"), per data store where the guide gives one, else per account. Control-plane
/// requests are not tied to a data store here, so their buckets are the account's.
const HEALTHLAKE: [(&str, f64, bool); 28] = [
    // (operation, rate, per minute?)
    ("ReadResource", 3000.0, false),
    ("VReadResource", 3000.0, false),
    ("ReadHistory", 3000.0, false),
    ("SearchWithGet", 100.0, false),
    ("SearchWithPost", 100.0, false),
    ("CreateResource", 1000.0, false),
    ("UpdateResource", 1000.0, false),
    ("DeleteResource", 1000.0, false),
    ("ProcessBundle", 10.0, false),
    ("Capabilities", 10.0, false),
    ("Discovery", 10.0, true),
    ("StartFHIRExportJobWithGet", 1.0, true),
    ("StartFHIRExportJobWithPost", 1.0, true),
    ("DescribeFHIRExportJobWithGet", 10.0, false),
    ("CancelFHIRExportJobWithDelete", 1.0, true),
    ("CreateFHIRDatastore", 1.0, true),
    ("DeleteFHIRDatastore", 1.0, true),
    ("DescribeFHIRDatastore", 10.0, false),
    ("ListFHIRDatastores", 10.0, false),
    ("StartFHIRImportJob", 1.0, true),
    ("DescribeFHIRImportJob", 10.0, false),
    ("ListFHIRImportJobs", 10.0, false),
    ("StartFHIRExportJob", 1.0, true),
    ("DescribeFHIRExportJob", 10.0, false),
    ("ListFHIRExportJobs", 10.0, false),
    ("TagResource", 10.0, false),
    ("UntagResource", 10.0, false),
    ("ListTagsForResource", 10.0, false),
];

impl Quotas {
    /// No quotas: nothing is throttled.
    pub fn off() -> Self {
        Self::default()
    }

    /// HealthLake's default quotas.
    pub fn healthlake() -> Self {
        let quotas = HEALTHLAKE.iter().map(|&(op, rate, per_minute)| {
            let quota = match per_minute {
                true => Quota::per_minute(rate),
                false => Quota::per_second(rate),
            };
            (op, quota)
        });
        Self(quotas.collect())
    }

    pub fn is_off(&self) -> bool {
        self.0.is_empty()
    }

    /// The quota of `operation`, if it is limited.
    pub fn get(&self, operation: &str) -> Option<Quota> {
        self.0.get(operation).copied()
    }

    /// Sets (or with `None`, lifts) the quota of `operation`.
    pub fn set(&mut self, operation: &'static str, quota: Option<Quota>) {
        match quota {
            Some(q) => self.0.insert(operation, q),
            None => self.0.remove(operation),
        };
    }

    /// Applies one `OPERATION=RATE[/BURST]` override (rate per second; 0 lifts the quota).
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        let (operation, quota) = parse_override(spec)?;
        self.set(operation, quota);
        Ok(())
    }
}

/// Parses `OPERATION=RATE[/BURST]`: RATE requests per second (a decimal; 0 for no limit),
/// BURST whole requests (default: one second's worth, at least 1).
pub fn parse_override(spec: &str) -> Result<(&'static str, Option<Quota>), String> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("'{spec}' is not OPERATION=RATE[/BURST]"))?;
    let operation = operation_name::known(name.trim()).ok_or_else(|| {
        format!("'{name}' is not an operation name (ReadResource, CreateResource, ...)")
    })?;
    let (rate, burst) = match value.split_once('/') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (value, None),
    };
    let rate: f64 = rate
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| format!("'{rate}' is not a rate (requests per second, e.g. 100 or 0.5)"))?;
    if rate == 0.0 {
        return Ok((operation, None));
    }
    let mut quota = Quota::per_second(rate);
    if let Some(burst) = burst {
        quota.burst = burst
            .trim()
            .parse()
            .ok()
            .filter(|b| *b >= 1)
            .ok_or_else(|| format!("'{burst}' is not a burst (a whole number of requests ≥ 1)"))?;
    }
    Ok((operation, Some(quota)))
}

/// A token bucket kept as one atomic (the generic cell rate algorithm): `tat` is when the
/// bucket would be full again, in nanoseconds since `start`. Taking a token moves it one
/// interval later; a request is refused when that would put it more than `burst` intervals
/// ahead of now. No lock, so an admitted request costs one compare-and-swap.
#[derive(Debug)]
pub struct TokenBucket {
    start: Instant,
    /// Nanoseconds between two tokens (1 / rate).
    interval: u64,
    /// Nanoseconds of `burst` tokens.
    capacity: u64,
    tat: AtomicU64,
}

impl TokenBucket {
    pub fn new(quota: Quota) -> Self {
        let interval = (1e9 / quota.rate).round().max(1.0) as u64;
        Self {
            start: Instant::now(),
            interval,
            capacity: interval.saturating_mul(u64::from(quota.burst.max(1))),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token now, or says how long until one is available.
    pub fn try_take(&self) -> Result<(), Duration> {
        let now = self.start.elapsed().as_nanos() as u64;
        self.try_take_at(now)
    }

    /// Takes a token at `now` (nanoseconds since the bucket was made).
    fn try_take_at(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            let limit = now.saturating_add(self.capacity);
            if next > limit {
                return Err(Duration::from_nanos(next - limit));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses() {
        let bucket = TokenBucket::new(Quota {
            rate: 2.0,
            burst: 2,
        });
        assert!(bucket.try_take_at(0).is_ok());
        assert!(bucket.try_take_at(0).is_ok());
        let wait = bucket.try_take_at(0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // A refused request takes nothing: the wait does not grow.
        assert_eq!(bucket.try_take_at(0).unwrap_err(), wait);
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let bucket = TokenBucket::new(Quota {
            rate: 2.0,
            burst: 2,
        });
        bucket.try_take_at(0).unwrap();
        bucket.try_take_at(0).unwrap();
        // Half a second later one token is back, not two.
        assert!(bucket.try_take_at(SECOND / 2).is_ok());
        assert!(bucket.try_take_at(SECOND / 2).is_err());
        // After a long idle time the bucket holds its burst again, and no more.
        let later = 100 * SECOND;
        assert!(bucket.try_take_at(later).is_ok());
        assert!(bucket.try_take_at(later).is_ok());
        assert!(bucket.try_take_at(later).is_err());
    }

    #[test]
    fn per_minute_quotas_wait_a_minute() {
        let bucket = TokenBucket::new(Quota::per_minute(1.0));
        bucket.try_take_at(0).unwrap();
        let wait = bucket.try_take_at(SECOND).unwrap_err();
        assert_eq!(wait, Duration::from_secs(59));
        assert!(bucket.try_take_at(60 * SECOND).is_ok());
    }

    #[test]
    fn overrides_parse_and_are_checked() {
        let q = |r, b| Some(Quota { rate: r, burst: b });
        assert_eq!(
            parse_override("ReadResource=100/200"),
            Ok(("ReadResource", q(100.0, 200)))
        );
        assert_eq!(
            parse_override("CreateResource=2.5"),
            Ok(("CreateResource", q(2.5, 3)))
        );
        assert_eq!(
            parse_override("ProcessBundle=0"),
            Ok(("ProcessBundle", None))
        );
        assert!(parse_override("ReadResource").is_err());
        assert!(parse_override("Nope=1").is_err());
        assert!(parse_override("ReadResource=-1").is_err());
        assert!(parse_override("ReadResource=1/0").is_err());
    }

    #[test]
    fn healthlake_preset_names_known_operations_and_overrides_apply() {
        let mut quotas = Quotas::healthlake();
        for (op, _, _) in HEALTHLAKE {
            assert!(operation_name::known(op).is_some(), "{op}");
        }
        assert_eq!(quotas.get("SearchWithGet"), Some(Quota::per_second(100.0)));
        quotas.apply("SearchWithGet=0").unwrap();
        assert_eq!(quotas.get("SearchWithGet"), None);
        assert!(Quotas::off().is_off());
    }
}
