//! Per-step metrics: what the rollout looked like, and the JSONL log.
//!
//! Metric names (one JSON object per step, see `docs/trainer.md`):
//! `reward/mean`, `reward/std`, `reward/accuracy`, `response/length_mean`,
//! `response/length_max`, `response/truncated_frac`, `actor/*` and `critic/*` (loss metrics,
//! `grad_norm`, `lr`), `perf/*` (tokens per second), `time/*` (seconds per phase). Each
//! [`Trainer::evaluate`](crate::Trainer::evaluate) adds a line of `eval/*` metrics for its step;
//! [`crate::plot`] reads the file back and draws the curves.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use rl_core::{FinishReason, Metrics, Sample};

use crate::Result;

/// Reward and response statistics of a rollout batch (`scores` has one entry per sample).
/// `reward/std` is the population standard deviation; a response is correct when its score is
/// above `accuracy_threshold`.
pub fn rollout_metrics(samples: &[Sample], scores: &[f32], accuracy_threshold: f64) -> Metrics {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    let var = scores.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / n;
    let correct = scores.iter().filter(|&&s| s as f64 > accuracy_threshold).count() as f64;
    let lens: Vec<f64> = samples.iter().map(|s| s.response_tokens as f64).collect();
    let truncated = samples.iter().filter(|s| s.finish == FinishReason::Length).count() as f64;
    let m = samples.len().max(1) as f64;
    Metrics::new()
        .with("reward/mean", mean)
        .with("reward/std", var.sqrt())
        .with("reward/accuracy", correct / n)
        .with("response/length_mean", lens.iter().sum::<f64>() / m)
        .with("response/length_max", lens.iter().copied().fold(0.0, f64::max))
        .with("response/truncated_frac", truncated / m)
}

/// Appends one JSON object per step (`{"step": n, "<metric>": value, ...}`) to a file.
#[derive(Debug)]
pub struct MetricsLog {
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Opens `path` for appending (creating it and its parent directories).
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { out: BufWriter::new(file) })
    }

    /// Writes the metrics of `step` as one line and flushes it.
    pub fn write(&mut self, step: u64, metrics: &Metrics) -> Result<()> {
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        for (k, v) in metrics.iter() {
            // JSON has no NaN/inf: write them as null rather than producing an unreadable line.
            let value = serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into);
            obj.insert(k.into(), value);
        }
        serde_json::to_writer(&mut self.out, &obj)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}
