//! Latency statistics shared by the bench binaries.

use std::time::Duration;

use serde_json::{Value, json};

/// Latencies of one kind of call.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl From<Vec<Duration>> for Latencies {
    fn from(samples: Vec<Duration>) -> Latencies {
        Latencies(samples)
    }
}

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// p50, p99 and max in milliseconds.
    pub fn summary(&mut self) -> Value {
        self.0.sort_unstable();
        let at = |q: f64| {
            if self.0.is_empty() {
                return 0.0;
            }
            let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            round2(self.0[i].as_secs_f64() * 1000.0)
        };
        json!({"p50": at(0.50), "p99": at(0.99), "max": at(1.0)})
    }

    /// How many calls.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Rounds to two decimals (for readable JSON).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
