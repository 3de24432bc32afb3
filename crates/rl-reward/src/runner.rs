//! A parallel, panic- and timeout-safe batch runner for any [`RewardFn`] (user plugins included).
//!
//! Samples are scored in parallel with rayon. Each call is wrapped in `catch_unwind`, so a
//! panicking plugin fails only its own sample. With a per-sample `timeout`, each call runs on a
//! fresh worker thread and the runner stops waiting after the budget: **a hung thread is
//! detached, not killed** (Rust cannot kill threads); it keeps its CPU until it returns, and its
//! late result is dropped. Failures (errors, panics, timeouts, non-finite scores) either fail the
//! batch with a typed [`rl_core::Error::Reward`] or are replaced by a fallback reward, per
//! [`OnFailure`]; they are always counted in the returned [`Metrics`].
//!
//! ```
//! use std::time::Duration;
//! use rl_core::{RewardFn, Sample};
//! use rl_reward::{OnFailure, SafeRunner};
//!
//! let flaky = |s: &Sample| -> rl_core::Result<f32> {
//!     if s.response.contains("boom") { panic!("plugin bug") }
//!     Ok(s.response.len() as f32)
//! };
//! let runner = SafeRunner::new(flaky).on_failure(OnFailure::Fallback(0.0)).timeout(Duration::from_secs(1));
//! let out = runner.run(&[Sample::new("abc", ""), Sample::new("boom", "")])?;
//! assert_eq!(out.scores, vec![3.0, 0.0]);
//! assert_eq!(out.metrics.get("panics"), Some(1.0));
//! # Ok::<(), rl_core::Error>(())
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rayon::prelude::*;
use rl_core::{Error, Metrics, Result, RewardFn, Sample};
use serde::{Deserialize, Serialize};

/// What to do when scoring a sample fails.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Fail the batch with [`Error::Reward`] naming the first failing sample.
    Error,
    /// Use this reward for the failing sample and carry on.
    Fallback(f32),
}

/// Why one sample failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The reward returned an error.
    Error,
    /// The reward panicked.
    Panic,
    /// The reward exceeded its time budget.
    Timeout,
    /// The reward returned NaN or infinity.
    NonFinite,
}

/// One failed sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Index of the sample in the batch.
    pub index: usize,
    /// The kind of failure.
    pub kind: FailureKind,
    /// A human-readable message.
    pub message: String,
}

/// Scores of a batch, with failure counts.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutput {
    /// One score per sample (`B`), fallbacks included.
    pub scores: Vec<f32>,
    /// `mean`, `errors`, `panics`, `timeouts`, `non_finite`, `failures` (unprefixed: the trainer
    /// adds its `reward/` prefix).
    pub metrics: Metrics,
    /// Every failure, in sample order.
    pub failures: Vec<Failure>,
}

/// Wraps a reward so that batches are scored in parallel and failures stay contained.
#[derive(Debug)]
pub struct SafeRunner<R> {
    reward: Arc<R>,
    timeout: Option<Duration>,
    on_failure: OnFailure,
    name: String,
}

impl<R: RewardFn + 'static> SafeRunner<R> {
    /// A runner with no time budget that fails the batch on the first failure.
    pub fn new(reward: R) -> Self {
        let name = reward.name().to_string();
        Self { reward: Arc::new(reward), timeout: None, on_failure: OnFailure::Error, name }
    }

    /// Sets a per-sample time budget (each call then runs on its own worker thread).
    pub fn timeout(mut self, budget: Duration) -> Self {
        self.timeout = Some(budget);
        self
    }

    /// Sets the failure policy.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    fn one(&self, sample: &Sample) -> std::result::Result<f32, (FailureKind, String)> {
        let result = match self.timeout {
            None => {
                catch_unwind(AssertUnwindSafe(|| self.reward.score(sample))).map_err(panic_message)
            }
            Some(budget) => {
                let (tx, rx) = mpsc::channel();
                let reward = Arc::clone(&self.reward);
                let s = sample.clone();
                let spawned =
                    std::thread::Builder::new().name("rl-reward-plugin".into()).spawn(move || {
                        let r = catch_unwind(AssertUnwindSafe(|| reward.score(&s)))
                            .map_err(panic_message);
                        let _ = tx.send(r);
                    });
                if let Err(e) = spawned {
                    return Err((
                        FailureKind::Error,
                        format!("could not spawn a worker thread: {e}"),
                    ));
                }
                // The JoinHandle is dropped: on timeout the thread is detached, not killed.
                match rx.recv_timeout(budget) {
                    Ok(r) => r,
                    Err(_) => {
                        return Err((
                            FailureKind::Timeout,
                            format!("exceeded the {budget:?} budget"),
                        ));
                    }
                }
            }
        };
        match result {
            Ok(Ok(x)) if x.is_finite() => Ok(x),
            Ok(Ok(x)) => Err((FailureKind::NonFinite, format!("returned {x}"))),
            Ok(Err(e)) => Err((FailureKind::Error, e.to_string())),
            Err(msg) => Err((FailureKind::Panic, msg)),
        }
    }

    /// Scores every sample in parallel; see the module docs for the failure semantics.
    pub fn run(&self, samples: &[Sample]) -> Result<RunOutput> {
        let results: Vec<_> = samples.par_iter().map(|s| self.one(s)).collect();
        let mut scores = Vec::with_capacity(samples.len());
        let mut failures = Vec::new();
        for (index, r) in results.into_iter().enumerate() {
            match r {
                Ok(x) => scores.push(x),
                Err((kind, message)) => {
                    let fallback = match self.on_failure {
                        OnFailure::Error => {
                            return Err(Error::Reward {
                                reward: self.name.clone(),
                                index,
                                reason: message,
                            });
                        }
                        OnFailure::Fallback(v) => v,
                    };
                    scores.push(fallback);
                    failures.push(Failure { index, kind, message });
                }
            }
        }
        let count = |k: FailureKind| failures.iter().filter(|f| f.kind == k).count() as f64;
        let mean = if scores.is_empty() {
            0.0
        } else {
            scores.iter().map(|x| *x as f64).sum::<f64>() / scores.len() as f64
        };
        let metrics = Metrics::new()
            .with("mean", mean)
            .with("errors", count(FailureKind::Error))
            .with("panics", count(FailureKind::Panic))
            .with("timeouts", count(FailureKind::Timeout))
            .with("non_finite", count(FailureKind::NonFinite))
            .with("failures", failures.len() as f64);
        Ok(RunOutput { scores, metrics, failures })
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    format!("panicked: {msg}")
}

impl<R: RewardFn + 'static> RewardFn for SafeRunner<R> {
    fn score(&self, sample: &Sample) -> Result<f32> {
        Ok(self.run(std::slice::from_ref(sample))?.scores[0])
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        Ok(self.run(samples)?.scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boom(s: &Sample) -> Result<f32> {
        match s.response.as_str() {
            "panic" => panic!("boom"),
            "err" => Err(Error::msg("bad input")),
            "nan" => Ok(f32::NAN),
            "hang" => {
                std::thread::sleep(Duration::from_millis(3000));
                Ok(9.0)
            }
            _ => Ok(1.0),
        }
    }

    fn batch(xs: &[&str]) -> Vec<Sample> {
        xs.iter().map(|x| Sample::new(*x, "")).collect()
    }

    #[test]
    fn failures_are_contained_and_counted() -> Result<()> {
        let r = SafeRunner::new(boom)
            .on_failure(OnFailure::Fallback(-1.0))
            .timeout(Duration::from_millis(1000));
        let out = r.run(&batch(&["ok", "panic", "err", "nan", "hang", "ok"]))?;
        assert_eq!(out.scores, vec![1.0, -1.0, -1.0, -1.0, -1.0, 1.0]);
        for k in ["panics", "errors", "non_finite", "timeouts"] {
            assert_eq!(out.metrics.get(k), Some(1.0), "{k}");
        }
        assert_eq!(out.failures.len(), 4);
        Ok(())
    }

    #[test]
    fn error_policy_names_the_sample() {
        let r = SafeRunner::new(boom);
        match r.run(&batch(&["ok", "ok", "panic"])) {
            Err(Error::Reward { index, reason, .. }) => {
                assert_eq!(index, 2);
                assert!(reason.contains("boom"));
            }
            other => panic!("expected a reward error, got {other:?}"),
        }
        assert_eq!(r.score_batch(&batch(&["ok", "ok"])).ok(), Some(vec![1.0, 1.0]));
    }
}
