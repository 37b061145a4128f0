//! Per-namespace thresholds learned online from feedback on served hits
//! ([`SemanticCache::feedback`](crate::SemanticCache::feedback)). Pure logic plus one
//! bounded map; no I/O.
//!
//! Each namespace keeps its last [`FeedbackConfig::max_samples`] judged semantic hits
//! (similarity, right or wrong). Its calibrated threshold is the lowest similarity `t` (never
//! below the namespace's own threshold) such that, among the judged hits at or above `t`,
//! the one-sided Wilson upper confidence bound of the wrong share is at most
//! [`FeedbackConfig::target_error`]. With the defaults that is a 95 % bound on a 2 % error
//! rate: a namespace needs about 133 right hits above a cut, and no wrong one, before that
//! cut is certified. Until some cut is certified the threshold is raised just above the
//! most similar wrong hit seen (and left alone while no hit has been judged wrong).
//!
//! The bound holds for hits like the ones judged (same traffic, same embedder), not for
//! prompts of another kind; it is an estimate, not a proof: the lowest certified cut is
//! picked among many, which makes the real confidence somewhat lower than the nominal 95 %,
//! and hits below a raised threshold are no longer served, so no feedback ever lowers it
//! again except by more right hits above the wrong ones. The idea — a threshold per
//! namespace learned from labelled outcomes with a stated error bound — follows vCache
//! (Schroeder et al., 2025); the code and the bound here are our own.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Settings of feedback calibration ([`SemanticCache::feedback`](crate::SemanticCache::feedback)).
///
/// Memory is bounded by `max_namespaces × max_samples × 8` bytes (16 MiB with the defaults,
/// reached only when a thousand namespaces each receive two thousand judgements).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FeedbackConfig {
    /// Largest share of wrong hits the calibrated threshold allows (default 0.02).
    pub target_error: f64,
    /// The normal quantile of the one-sided bound (default 1.645: 95 %).
    pub z: f64,
    /// Judged hits kept per namespace, newest first (default 2,000).
    pub max_samples: usize,
    /// Namespaces calibrated at most; feedback on further namespaces is ignored (default
    /// 1,024; `0` turns calibration off).
    pub max_namespaces: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            target_error: 0.02,
            z: 1.645,
            max_samples: 2000,
            max_namespaces: 1024,
        }
    }
}

impl FeedbackConfig {
    setters! {
        plain { target_error: f64, z: f64, max_samples: usize, max_namespaces: usize }
    }

    pub(crate) fn check(&self) -> Result<()> {
        let target_ok = self.target_error > 0.0 && self.target_error < 1.0;
        let z_ok = self.z.is_finite() && self.z >= 0.0;
        if !target_ok || !z_ok || self.max_samples == 0 {
            return Err(Error::InvalidConfig(
                "feedback: target_error must be in (0, 1), z finite and >= 0, max_samples > 0"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One-sided Wilson upper bound of a proportion `wrong / n`.
pub(crate) fn wilson_upper(wrong: usize, n: usize, z: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let n = n as f64;
    let p = wrong as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// The judged hits of one namespace.
#[derive(Clone, Debug, Default)]
pub(crate) struct Calibrator {
    samples: VecDeque<(f32, bool)>,
    threshold: Option<f32>,
}

impl Calibrator {
    /// Record one judged hit and recompute the threshold (`O(n log n)`, n ≤ `max_samples`).
    pub(crate) fn record(&mut self, similarity: f32, correct: bool, config: &FeedbackConfig) {
        if !similarity.is_finite() {
            return;
        }
        if self.samples.len() >= config.max_samples {
            self.samples.pop_back();
        }
        self.samples.push_front((similarity, correct));
        self.threshold = calibrate(self.samples.iter().copied(), config);
    }

    /// The learned threshold, if feedback asks for one above the namespace's own.
    pub(crate) fn threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// Judged hits held.
    #[cfg(test)]
    pub(crate) fn samples(&self) -> usize {
        self.samples.len()
    }
}

/// The lowest similarity whose judged hits at or above it are certified (Wilson upper bound
/// ≤ target); else just above the most similar wrong hit; `None` when no hit was wrong.
pub(crate) fn calibrate(
    samples: impl IntoIterator<Item = (f32, bool)>,
    config: &FeedbackConfig,
) -> Option<f32> {
    let mut sorted: Vec<(f32, bool)> = samples.into_iter().filter(|(s, _)| s.is_finite()).collect();
    if sorted.iter().all(|(_, ok)| *ok) {
        return None;
    }
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut wrong = 0;
    let mut certified = None;
    let mut worst_wrong = f32::NEG_INFINITY;
    for (n, (similarity, ok)) in sorted.iter().enumerate() {
        if !ok {
            wrong += 1;
            worst_wrong = worst_wrong.max(*similarity);
        }
        // A cut between equal similarities is not a cut.
        let last_of_run = sorted.get(n + 1).is_none_or(|next| next.0 < *similarity);
        if last_of_run && wilson_upper(wrong, n + 1, config.z) <= config.target_error {
            certified = Some(*similarity);
        }
    }
    Some(certified.unwrap_or_else(|| next_up(worst_wrong)))
}

/// The calibrators of every namespace that received feedback, at most
/// [`FeedbackConfig::max_namespaces`] of them.
#[derive(Debug, Default)]
pub(crate) struct Calibrations {
    by_namespace: RwLock<HashMap<String, Calibrator>>,
}

/// What one piece of feedback did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Recorded {
    /// Kept; the namespace's learned threshold is now this.
    Kept(Option<f32>),
    /// Ignored: the namespace limit is reached.
    NamespaceLimit,
}

impl Calibrations {
    /// The learned threshold of `namespace`, if feedback raised it.
    pub(crate) fn threshold(&self, namespace: &str) -> Option<f32> {
        self.by_namespace
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .and_then(Calibrator::threshold)
    }

    pub(crate) fn record(
        &self,
        namespace: &str,
        similarity: f32,
        correct: bool,
        config: &FeedbackConfig,
    ) -> Recorded {
        let mut map = self
            .by_namespace
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(namespace) && map.len() >= config.max_namespaces {
            return Recorded::NamespaceLimit;
        }
        let calibrator = map.entry(namespace.to_owned()).or_default();
        calibrator.record(similarity, correct, config);
        Recorded::Kept(calibrator.threshold())
    }

    /// Forget the feedback of one namespace; whether it had any.
    pub(crate) fn forget(&self, namespace: &str) -> bool {
        self.by_namespace
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(namespace)
            .is_some()
    }
}

/// The smallest f32 above `x` (for "strictly above the most similar wrong hit").
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_wrong_hit_changes_nothing() {
        let config = FeedbackConfig::default();
        assert_eq!(
            calibrate((0..50).map(|i| (0.8 + i as f32 * 0.001, true)), &config),
            None
        );
    }

    #[test]
    fn a_wrong_hit_raises_the_threshold_above_it_until_a_cut_is_certified() {
        let config = FeedbackConfig::default();
        let mut samples: Vec<(f32, bool)> = vec![(0.82, false)];
        samples.extend((0..20).map(|i| (0.85 + i as f32 * 0.001, true)));
        let t = calibrate(samples.clone(), &config).unwrap();
        assert!(t > 0.82 && t < 0.83, "{t}");
        // 200 right hits above 0.9 and one wrong at 0.86: the cut above the wrong one is
        // certified; a cut below it is not (1 wrong in ~220 has an upper bound above 2 %).
        let mut samples: Vec<(f32, bool)> =
            (0..200).map(|i| (0.9 + i as f32 * 0.0004, true)).collect();
        samples.push((0.86, false));
        samples.extend((0..10).map(|i| (0.85 + i as f32 * 0.0005, true)));
        let t = calibrate(samples, &config).unwrap();
        assert!((0.86..=0.9).contains(&t), "{t}");
    }

    #[test]
    fn the_wilson_bound_is_sane() {
        assert!((wilson_upper(0, 135, 1.645) - 0.0197).abs() < 0.001);
        assert_eq!(wilson_upper(0, 0, 1.645), 1.0);
        assert!(wilson_upper(5, 10, 1.645) > 0.5);
    }

    proptest! {
        #[test]
        fn the_threshold_is_above_every_uncertified_wrong_hit(
            samples in proptest::collection::vec((-1.0f32..=1.0, proptest::bool::weighted(0.9)), 0..300)
        ) {
            let config = FeedbackConfig::default();
            if let Some(t) = calibrate(samples.clone(), &config) {
                // Among the hits at or above t, the wrong share is certified or zero.
                let above: Vec<_> = samples.iter().filter(|(s, _)| *s >= t).collect();
                let wrong = above.iter().filter(|(_, ok)| !ok).count();
                prop_assert!(wrong == 0 || wilson_upper(wrong, above.len(), config.z) <= config.target_error);
            } else {
                prop_assert!(samples.iter().all(|(_, ok)| *ok));
            }
        }

        #[test]
        fn a_calibrator_stays_bounded(n in 0usize..50) {
            let config = FeedbackConfig { max_samples: 10, ..FeedbackConfig::default() };
            let mut c = Calibrator::default();
            for i in 0..n {
                c.record(0.8 + (i % 7) as f32 * 0.01, i % 5 != 0, &config);
            }
            prop_assert!(c.samples() <= 10);
        }
    }
}
