//! The samples of one benchmark figure and how the benches print them:
//! nearest-rank percentiles (the typical run, never the best one picked),
//! the `p50 (min / p90 / max, n=N)` table cell, and the JSON form with
//! every sample. Shared by `hearth bench build` and `hearth bench
//! microvm`; plain data, used on whichever task runs the bench.

use std::time::Duration;

use serde_json::{json, Value};

/// Samples of one figure (the unit is the figure's: milliseconds unless
/// its name says otherwise).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    pub v: Vec<f64>,
}

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.v.push(v);
    }

    /// A duration, in milliseconds.
    pub fn push_ms(&mut self, d: Duration) {
        self.v.push(ms(d));
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.v.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// Nearest-rank percentile; `None` without samples.
    pub fn pct(&self, p: f64) -> Option<f64> {
        let s = self.sorted();
        if s.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
        Some(s[rank.min(s.len()) - 1])
    }

    pub fn p50(&self) -> Option<f64> {
        self.pct(50.0)
    }

    /// `p50 (min / p90 / max, n=N)` with `decimals`; `n/a` without samples.
    pub fn cell(&self, decimals: usize) -> String {
        self.cell_scaled(1.0, decimals)
    }

    /// [`Samples::cell`] of every sample divided by `divisor` (1000 turns
    /// milliseconds into seconds).
    pub fn cell_scaled(&self, divisor: f64, decimals: usize) -> String {
        let s = self.sorted();
        match (s.first(), s.last(), self.p50(), self.pct(90.0)) {
            (Some(lo), Some(hi), Some(p50), Some(p90)) => format!(
                "{:.d$} ({:.d$} / {:.d$} / {:.d$}, n={})",
                p50 / divisor,
                lo / divisor,
                p90 / divisor,
                hi / divisor,
                s.len(),
                d = decimals
            ),
            _ => "n/a".into(),
        }
    }

    /// min, p50, p90, max, n and every sample in the order taken, to two
    /// decimals.
    pub fn json(&self) -> Value {
        let s = self.sorted();
        json!({
            "min": s.first().copied().map(round2),
            "p50": self.p50().map(round2),
            "p90": self.pct(90.0).map(round2),
            "max": s.last().copied().map(round2),
            "n": s.len(),
            "samples": self.v.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_never_the_best_run() {
        let s = Samples {
            v: (1..=20).map(f64::from).rev().collect(),
        };
        assert_eq!(s.p50(), Some(10.0));
        assert_eq!(s.pct(90.0), Some(18.0));
        assert_eq!(s.pct(100.0), Some(20.0));
        assert_eq!(s.pct(0.0), Some(1.0));
        assert_eq!(s.cell(1), "10.0 (1.0 / 18.0 / 20.0, n=20)");
        // Five runs: p50 is the third, p90 the fifth.
        let five = Samples {
            v: vec![15_000.0, 14_000.0, 30_000.0, 14_500.0, 16_000.0],
        };
        assert_eq!(five.p50(), Some(15_000.0));
        assert_eq!(five.pct(90.0), Some(30_000.0));
        assert_eq!(
            five.cell_scaled(1000.0, 2),
            "15.00 (14.00 / 30.00 / 30.00, n=5)"
        );
        assert_eq!(Samples::default().p50(), None);
        assert_eq!(Samples::default().cell(1), "n/a");
    }

    #[test]
    fn json_keeps_every_sample_in_order_rounded() {
        let mut s = Samples::default();
        s.push(2.345);
        s.push_ms(Duration::from_micros(1500));
        let j = s.json();
        assert_eq!(j["samples"], json!([2.35, 1.5]));
        assert_eq!(j["min"], json!(1.5));
        assert_eq!(j["n"], json!(2));
    }
}
