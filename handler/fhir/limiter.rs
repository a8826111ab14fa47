//! Adaptive concurrency (AIMD) for requests to the FHIR server: the server sets the pace.
//! Start at the minimum and, until the server first pushes back, add 1 per healthy reply (the
//! limit doubles each round of replies, as TCP's slow start: a short export or a small file
//! is not over before the limit has grown); from then on each healthy reply adds 1/limit
//! (about +1 per round). A 429/503, a timeout or a latency spike multiplies the limit by 0.9
//! (never below the minimum).

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
    /// No pushback seen yet: the limit grows by 1 per healthy reply.
    slow_start: bool,
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
                slow_start: true,
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
                    s.slow_start = false;
                    s.limit = (s.limit * 0.9).max(self.min as f64);
                } else {
                    let step = if s.slow_start { 1.0 } else { 1.0 / s.limit };
                    s.limit = (s.limit + step).min(self.max as f64);
                }
            }
            Signal::Backpressure => {
                s.slow_start = false;
                s.limit = (s.limit * 0.9).max(self.min as f64);
            }
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
    fn doubles_each_round_until_the_first_pushback_then_adds_one() {
        let l = AdaptiveLimiter::new(1, 64);
        let healthy = Signal::Healthy(Duration::from_millis(50));
        // Rounds of as many replies as the limit allows: 1, 2, 4, 8.
        for round in [1, 2, 4, 8] {
            assert_eq!(l.limit(), round);
            for _ in 0..round {
                l.record(healthy);
            }
        }
        assert_eq!(l.limit(), 16);
        l.record(Signal::Backpressure);
        assert_eq!(l.limit(), 14);
        // A round of 14 healthy replies now adds about one.
        for _ in 0..14 {
            l.record(healthy);
        }
        assert_eq!(l.limit(), 15);
    }

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
