//! When to retry a FHIR request and how long to wait: the decision (status → retry or not) is
//! kept apart from the schedule (server-supplied delay, else exponential backoff with jitter).
//!
//! Two kinds of retry, with different limits:
//! - **Throttling** (429, 503: the server says "slow down") is always honoured, at the delay
//!   the server asks for, for as long as `throttle_patience`: a throttling server makes the
//!   loader slower (the adaptive limiter also lowers concurrency), never makes it give up.
//! - **Failures** (408, 500, 502, 504, broken connections) are retried `max_retries` times per
//!   request, and only while the retry budget (a share of traffic) lasts, so a broken server
//!   gets no retry storm. A request that still fails is the work item's error: it is tried
//!   again later, from its checkpoint.
//!
//! Every retry, of either kind, spends the budget; only first tries fill it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// What to do with an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    Successful,
    /// Transient: try again after a delay.
    Retry,
    /// Permanent for this request: report it.
    DontRetry,
}

/// 408, 429, 500, 502, 503 and 504 are transient; other non-2xx statuses are answers.
pub fn decide(status: u16) -> RetryDecision {
    match status {
        200..=299 => RetryDecision::Successful,
        408 | 429 | 500 | 502 | 503 | 504 => RetryDecision::Retry,
        _ => RetryDecision::DontRetry,
    }
}

/// Statuses that mean "slow down" rather than "something broke": throttling.
pub fn is_backpressure(status: u16) -> bool {
    matches!(status, 429 | 503)
}

/// How requests are retried: the schedule, the limits of each kind of retry, and the budget
/// shared by every request of the process.
#[derive(Debug)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Retries of a failing request.
    pub max_retries: u32,
    /// How long one request may be throttled before it is given up (and its work item tried
    /// again later).
    pub throttle_patience: Duration,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    /// The retries of one request, allowed `max_failures` retries of failures.
    pub fn start(&self, max_failures: u32) -> Retries<'_> {
        Retries {
            policy: self,
            max_failures,
            failures: 0,
            throttles: 0,
            throttled_since: None,
        }
    }
}

/// One request's retries so far: each `after_*` says how long to wait before the next try, or
/// `None` when the request is to be given up.
#[derive(Debug)]
pub struct Retries<'a> {
    policy: &'a RetryPolicy,
    max_failures: u32,
    failures: u32,
    throttles: u32,
    throttled_since: Option<Instant>,
}

impl Retries<'_> {
    /// After a throttled try (`server`: the delay it asked for): that delay, else backoff;
    /// `None` once the request has been throttled for longer than the policy's patience.
    pub fn after_throttle(&mut self, server: Option<Duration>) -> Option<Duration> {
        let since = *self.throttled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.policy.throttle_patience {
            return None;
        }
        // Spent, but not asked for: a throttled request is never refused for the budget.
        let _ = self.policy.budget.withdraw();
        // A server asking for no wait at all still gets the backoff's minimum: no busy loop.
        let delay = self
            .policy
            .backoff
            .next_delay(self.throttles, server)
            .max(self.policy.backoff.min());
        self.throttles += 1;
        Some(delay)
    }

    /// After a failed try: `None` when its retries or the budget are spent.
    pub fn after_failure(&mut self, server: Option<Duration>) -> Option<Duration> {
        if self.failures >= self.max_failures || !self.policy.budget.withdraw() {
            return None;
        }
        let delay = self.policy.backoff.next_delay(self.failures, server);
        self.failures += 1;
        Some(delay)
    }
}

/// Connection failures and timeouts are transient; a malformed request is not.
pub fn is_retriable_error(err: &reqwest::Error) -> bool {
    err.is_connect() || err.is_timeout() || err.is_request() || err.is_body()
}

/// The delay a server asked for: `x-ms-retry-after-ms` (Azure), else `Retry-After` as
/// delta-seconds or an HTTP date, measured from `now`. Capped at `max`.
pub fn server_delay(headers: &HeaderMap, now: SystemTime, max: Duration) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delay = if let Some(ms) = header("x-ms-retry-after-ms") {
        ms.trim().parse::<u64>().ok().map(Duration::from_millis)
    } else {
        header("retry-after").and_then(|v| parse_retry_after(v, now))
    };
    delay.map(|d| d.min(max))
}

/// `Retry-After` is either a number of seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter between `min` and `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(min <= max && !min.is_zero(), "backoff needs 0 < min <= max");
        Backoff { min, max }
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// Delay before retry number `attempt` (0-based): uniform in [min, min·2^attempt], capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rand::random_range(0..=span)
        };
        self.min + Duration::from_millis(jitter)
    }

    /// The wait before the next try: what the server asked for (clamped), else backoff.
    pub fn next_delay(&self, attempt: u32, server: Option<Duration>) -> Duration {
        match server {
            Some(d) => d.min(self.max),
            None => self.delay(attempt),
        }
    }
}

/// A share of traffic that may be retries: every first try deposits `ratio` tokens, every
/// retry withdraws one. A reserve lets a quiet client still retry.
#[derive(Debug)]
pub struct RetryBudget {
    /// Balance in thousandths of a retry (integers: no drift from repeated float sums).
    milli: Mutex<u64>,
    deposit: u64,
    cap: u64,
}

const RETRY_COST: u64 = 1_000;
const RESERVE: u64 = 20 * RETRY_COST;

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        let deposit = u64::from(percent) * 10;
        RetryBudget {
            milli: Mutex::new(RESERVE),
            deposit,
            cap: RESERVE + 1_000 * deposit,
        }
    }

    pub fn deposit(&self) {
        let mut m = self.milli.lock().expect("budget lock");
        *m = (*m + self.deposit).min(self.cap);
    }

    /// Takes a token for one retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut m = self.milli.lock().expect("budget lock");
        if *m >= RETRY_COST {
            *m -= RETRY_COST;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(decide(s), RetryDecision::Retry, "{s}");
        }
        for s in [400, 401, 404, 409, 412, 422] {
            assert_eq!(decide(s), RetryDecision::DontRetry, "{s}");
        }
        assert_eq!(decide(201), RetryDecision::Successful);
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn azure_millisecond_header_wins_and_delays_are_capped() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("10"));
        assert_eq!(
            server_delay(&h, now, Duration::from_secs(60)),
            Some(Duration::from_secs(10))
        );
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(
            server_delay(&h, now, Duration::from_secs(60)),
            Some(Duration::from_millis(250))
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3600"));
        assert_eq!(
            server_delay(&h, now, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            server_delay(&HeaderMap::new(), now, Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = b.delay(attempt);
            assert!(d >= b.min() && d <= b.max(), "{attempt}: {d:?}");
        }
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(
            b.next_delay(0, Some(Duration::from_secs(9))),
            Duration::from_secs(2)
        );
    }

    fn policy(budget_percent: u32) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            max_retries: 3,
            throttle_patience: Duration::from_secs(600),
            budget: RetryBudget::new(budget_percent),
        }
    }

    /// Throttling is honoured for as long as the patience, whatever the budget says;
    /// failures stop at their count or when the budget is spent.
    #[tokio::test(start_paused = true)]
    async fn throttling_waits_for_the_patience_and_failures_stop_at_their_limits() {
        let policy = policy(1);
        let mut request = policy.start(3);
        let mut throttled_for = Duration::ZERO;
        while let Some(delay) = request.after_throttle(Some(Duration::from_secs(7))) {
            assert_eq!(delay, Duration::from_secs(7), "the server's delay");
            tokio::time::advance(delay).await;
            throttled_for += delay;
        }
        assert!(
            throttled_for >= Duration::from_secs(600),
            "{throttled_for:?}"
        );
        assert!(
            !policy.budget.withdraw(),
            "the throttled retries spent the budget"
        );
        // The budget is spent: a failure is not retried at all.
        assert_eq!(policy.start(3).after_failure(None), None);
        let fresh = self::policy(100);
        let mut request = fresh.start(3);
        let tries: Vec<_> = std::iter::from_fn(|| request.after_failure(None)).collect();
        assert_eq!(tries.len(), 3, "max_retries");
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_traffic() {
        let budget = RetryBudget::new(10);
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 20, "the reserve");
        for _ in 0..100 {
            budget.deposit();
        }
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        assert_eq!(granted, 10, "10% of 100 requests");
    }
}
