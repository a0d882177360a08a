//! Per data store and operation request counters and a latency histogram: HealthLake's
//! CloudWatch metrics (Call Count, Successful Requests, User Errors, Server Errors, Throttled
//! Requests, Latency) as Prometheus counters and a histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;

/// Upper bounds (seconds) of the latency buckets: Prometheus' defaults with two finer ones
/// below, since a point read takes well under a millisecond.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a request ended, as HealthLake counts it: throttled requests are neither user nor
/// server errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    UserError,
    ServerError,
    Throttled,
}

impl Outcome {
    /// The outcome of a response status (429 is throttled).
    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            429 => Self::Throttled,
            500.. => Self::ServerError,
            400.. => Self::UserError,
            _ => Self::Success,
        }
    }
}

/// The counters of one data store and operation; updated with relaxed atomics only, so
/// recording a request takes no lock.
#[derive(Debug, Default)]
pub struct OpMetrics {
    calls: AtomicU64,
    success: AtomicU64,
    user_errors: AtomicU64,
    server_errors: AtomicU64,
    throttled: AtomicU64,
    /// Requests per latency bucket (not cumulative; the last one is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of one [`OpMetrics`], read for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub calls: u64,
    pub success: u64,
    pub user_errors: u64,
    pub server_errors: u64,
    pub throttled: u64,
    /// Cumulative counts per bucket of [`BUCKETS`], then +Inf.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl OpMetrics {
    /// Counts one request that ended with `outcome` after `elapsed`.
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        let add = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        add(&self.calls);
        add(match outcome {
            Outcome::Success => &self.success,
            Outcome::UserError => &self.user_errors,
            Outcome::ServerError => &self.server_errors,
            Outcome::Throttled => &self.throttled,
        });
        add(&self.buckets[bucket_of(elapsed)]);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let buckets = self
            .buckets
            .iter()
            .scan(0, |total, b| {
                *total += get(b);
                Some(*total)
            })
            .collect();
        Snapshot {
            calls: get(&self.calls),
            success: get(&self.success),
            user_errors: get(&self.user_errors),
            server_errors: get(&self.server_errors),
            throttled: get(&self.throttled),
            buckets,
            sum_seconds: get(&self.sum_micros) as f64 / 1e6,
        }
    }
}

/// The index of the first bucket whose bound `elapsed` does not exceed (`le` semantics).
fn bucket_of(elapsed: Duration) -> usize {
    let seconds = elapsed.as_secs_f64();
    BUCKETS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(BUCKETS.len())
}

/// One labelled series set: the label text (`datastore="..",...,operation=".."`) and its
/// figures.
pub type Series = (String, Snapshot);

/// A counter family: metric name, help text and the figure each series reports.
type Counter = (&'static str, &'static str, fn(&Snapshot) -> u64);

const COUNTERS: [Counter; 5] = [
    (
        "fhirlake_api_calls_total",
        "Requests per data store and operation (HealthLake's Call Count).",
        |s| s.calls,
    ),
    (
        "fhirlake_api_successful_requests_total",
        "Requests answered with a 1xx-3xx status (HealthLake's Successful Requests).",
        |s| s.success,
    ),
    (
        "fhirlake_api_user_errors_total",
        "Requests refused with a 4xx status other than throttling (HealthLake's User Errors).",
        |s| s.user_errors,
    ),
    (
        "fhirlake_api_server_errors_total",
        "Requests that failed with a 5xx status (HealthLake's Server Errors).",
        |s| s.server_errors,
    ),
    (
        "fhirlake_api_throttled_requests_total",
        "Requests refused by a quota (HealthLake's Throttled Requests).",
        |s| s.throttled,
    ),
];

const DURATION: &str = "fhirlake_api_request_duration_seconds";

/// The series in Prometheus' text exposition format (each family's HELP and TYPE once).
pub fn render(series: &[Series]) -> String {
    let mut out = String::new();
    for (name, help, figure) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, s) in series {
            let _ = writeln!(out, "{name}{{{labels}}} {}", figure(s));
        }
    }
    let _ = writeln!(
        out,
        "# HELP {DURATION} Time to answer a request, per data store and operation \
         (HealthLake's Latency).\n# TYPE {DURATION} histogram"
    );
    for (labels, s) in series {
        render_histogram(&mut out, labels, s);
    }
    out
}

fn render_histogram(out: &mut String, labels: &str, s: &Snapshot) {
    let bounds = BUCKETS.iter().map(|b| b.to_string());
    for (le, count) in bounds.chain(["+Inf".to_string()]).zip(&s.buckets) {
        let _ = writeln!(out, "{DURATION}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let count = s.buckets.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{DURATION}_sum{{{labels}}} {}", s.sum_seconds);
    let _ = writeln!(out, "{DURATION}_count{{{labels}}} {count}");
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_first_bucket_that_holds_them() {
        let ms = Duration::from_millis;
        assert_eq!(bucket_of(Duration::from_micros(80)), 0);
        assert_eq!(bucket_of(ms(1)), 0, "bounds are inclusive (le)");
        assert_eq!(bucket_of(Duration::from_micros(1001)), 1);
        assert_eq!(bucket_of(ms(7)), 3);
        assert_eq!(bucket_of(ms(300)), 8);
        assert_eq!(bucket_of(Duration::from_secs(10)), 12);
        assert_eq!(bucket_of(Duration::from_secs(11)), BUCKETS.len());
    }

    #[test]
    fn snapshots_are_cumulative_and_count_each_outcome() {
        let m = OpMetrics::default();
        m.record(Outcome::Success, Duration::from_micros(500));
        m.record(Outcome::UserError, Duration::from_millis(3));
        m.record(Outcome::Throttled, Duration::from_micros(10));
        m.record(Outcome::ServerError, Duration::from_secs(20));
        let s = m.snapshot();
        assert_eq!(
            (
                s.calls,
                s.success,
                s.user_errors,
                s.server_errors,
                s.throttled
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[2], 3);
        assert_eq!(s.buckets[BUCKETS.len() - 1], 3);
        assert_eq!(s.buckets[BUCKETS.len()], 4);
        assert!((s.sum_seconds - 20.00351).abs() < 1e-9);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of(StatusCode::NOT_MODIFIED), Outcome::Success);
        assert_eq!(Outcome::of(StatusCode::NOT_FOUND), Outcome::UserError);
        assert_eq!(
            Outcome::of(StatusCode::TOO_MANY_REQUESTS),
            Outcome::Throttled
        );
        assert_eq!(Outcome::of(StatusCode::BAD_GATEWAY), Outcome::ServerError);
    }

    #[test]
    fn render_writes_each_family_once() {
        let m = OpMetrics::default();
        m.record(Outcome::Success, Duration::from_millis(2));
        let labels = "datastore_id=\"a\",operation=\"ReadResource\"".to_string();
        let text = render(&[(labels, m.snapshot())]);
        assert_eq!(text.matches("# TYPE").count(), 6);
        assert!(text.contains(
            "fhirlake_api_calls_total{datastore_id=\"a\",operation=\"ReadResource\"} 1\n"
        ));
        assert!(text.contains(
            "fhirlake_api_request_duration_seconds_bucket{datastore_id=\"a\",operation=\"ReadResource\",le=\"0.001\"} 0\n"
        ));
        assert!(text.contains(
            "fhirlake_api_request_duration_seconds_bucket{datastore_id=\"a\",operation=\"ReadResource\",le=\"0.0025\"} 1\n"
        ));
        assert!(text.contains("_count{datastore_id=\"a\",operation=\"ReadResource\"} 1\n"));
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
