//! Adaptive concurrency (AIMD) for requests to the FHIR server: the server sets the pace.
//! Start at the minimum; each healthy reply adds 1/limit (about +1 per round of replies);
//! a 429/503, a timeout or a latency spike multiplies the limit by 0.9 (never below the minimum).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::info;

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// Smoothed round-trip time of healthy replies, for spotting latency spikes.
    rtt_ewma: Option<Duration>,
}

#[derive(Debug)]
pub struct AdaptiveLimiter {
    state: Mutex<State>,
    notify: Notify,
    min: usize,
    max: usize,
}

/// How a request ended, as far as the limiter cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Healthy(Duration),
    Backpressure,
    /// Neither: a client error says nothing about server load.
    Neutral,
}

/// A slot to send one request; released on drop.
pub struct Permit {
    limiter: Arc<AdaptiveLimiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().expect("limiter lock");
        s.in_flight -= 1;
        drop(s);
        self.limiter.notify.notify_one();
    }
}

impl AdaptiveLimiter {
    pub fn new(min: usize, max: usize) -> Arc<Self> {
        assert!(min >= 1 && min <= max, "limiter needs 1 <= min <= max");
        Arc::new(AdaptiveLimiter {
            state: Mutex::new(State {
                limit: min as f64,
                in_flight: 0,
                rtt_ewma: None,
            }),
            notify: Notify::new(),
            min,
            max,
        })
    }

    /// Waits for a free slot under the current limit.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("limiter lock");
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    return Permit {
                        limiter: self.clone(),
                    };
                }
            }
            notified.await;
        }
    }

    pub fn record(&self, signal: Signal) {
        let mut s = self.state.lock().expect("limiter lock");
        let before = s.limit.floor() as usize;
        match signal {
            Signal::Healthy(rtt) => {
                let spike = s
                    .rtt_ewma
                    .is_some_and(|avg| rtt > avg * 4 && rtt > Duration::from_secs(2));
                s.rtt_ewma = Some(match s.rtt_ewma {
                    Some(avg) => avg.mul_f64(0.8) + rtt.mul_f64(0.2),
                    None => rtt,
                });
                if spike {
                    s.limit = (s.limit * 0.9).max(self.min as f64);
                } else {
                    s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
                }
            }
            Signal::Backpressure => s.limit = (s.limit * 0.9).max(self.min as f64),
            Signal::Neutral => {}
        }
        let after = s.limit.floor() as usize;
        if after != before {
            // Charted (telemetry::CHARTED_EVENTS); whole steps only, so a few lines a minute.
            info!(
                message = "FHIR concurrency changed.",
                limit = after as u64,
                in_flight = s.in_flight as u64
            );
        }
        drop(s);
        self.notify.notify_waiters();
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit.floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_healthy_and_shrinks_on_backpressure() {
        let l = AdaptiveLimiter::new(1, 8);
        assert_eq!(l.limit(), 1);
        for _ in 0..100 {
            l.record(Signal::Healthy(Duration::from_millis(50)));
        }
        assert_eq!(l.limit(), 8, "capped at max");
        l.record(Signal::Backpressure);
        assert_eq!(l.limit(), 7);
        for _ in 0..100 {
            l.record(Signal::Backpressure);
        }
        assert_eq!(l.limit(), 1, "never below min");
        l.record(Signal::Neutral);
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn a_latency_spike_counts_as_backpressure() {
        let l = AdaptiveLimiter::new(1, 8);
        for _ in 0..40 {
            l.record(Signal::Healthy(Duration::from_millis(600)));
        }
        let before = l.limit();
        l.record(Signal::Healthy(Duration::from_secs(10)));
        assert!(l.limit() < before);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_block_at_the_limit_and_release_on_drop() {
        let l = AdaptiveLimiter::new(1, 4);
        let first = l.acquire().await;
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _p = l2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second permit must wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .unwrap();
    }
}
