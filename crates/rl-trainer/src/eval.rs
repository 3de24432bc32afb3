//! Evaluation: a policy, a reward and prompts, nothing else (no trainer needed).

use rl_core::rng::mix_seed;
use std::io::Write;
use std::path::Path;

use rl_core::{Metrics, Policy, Prompt, RewardFn, RolloutBatch, Sample, SamplingConfig};

use crate::Result;
use crate::config::TrainerConfig;
use crate::metrics::rollout_metrics;

/// The result of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Fraction of responses whose reward is above the accuracy threshold.
    pub accuracy: f64,
    /// Mean reward.
    pub mean_reward: f64,
    /// Number of responses scored.
    pub responses: usize,
    /// Every scored response, in prompt order: `samples[i]` got reward `rewards[i]`.
    pub samples: Vec<Sample>,
    /// The reward of each of `samples`.
    pub rewards: Vec<f32>,
}

impl EvalReport {
    /// The metrics line of this evaluation: `eval/accuracy`, `eval/mean_reward`,
    /// `eval/responses`, `eval/greedy` (1 or 0).
    pub fn metrics_line(&self, greedy: bool) -> Metrics {
        Metrics::new()
            .with("eval/accuracy", self.accuracy)
            .with("eval/mean_reward", self.mean_reward)
            .with("eval/responses", self.responses as f64)
            .with("eval/greedy", f64::from(u8::from(greedy)))
    }

    /// Writes every scored response to `path` as JSONL, one object per response:
    /// `{"prompt", "response", "answer", "finish", "response_tokens", "reward"}` (the prompt as
    /// templated, the response decoded without special tokens). The lines go to a temporary file
    /// next to `path`, renamed over it once complete: a failed write leaves no partial file and
    /// an existing `path` as it was.
    ///
    /// # Errors
    /// The file cannot be written or renamed ([`crate::TrainerError::Io`], naming `path`).
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let io =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            for (s, r) in self.samples.iter().zip(&self.rewards) {
                let line = serde_json::json!({
                    "prompt": s.prompt,
                    "response": s.response,
                    "answer": s.answer,
                    "finish": s.finish,
                    "response_tokens": s.response_tokens,
                    "reward": r,
                });
                writeln!(out, "{line}")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        rl_core::fs::write_atomic(path, write).map_err(|e| io(e).into())
    }
}

/// Samples `sampling.n` responses per prompt with `policy`, scores them with `reward` and
/// reports the accuracy (share of rewards above `accuracy_threshold`) and the mean reward.
///
/// ```
/// use rl_core::testing::MockPolicy;
/// use rl_core::{Device, Prompt, Sample, SamplingConfig};
/// // The mock's most likely token is 'b' (id 2): greedy decoding always answers "bb".
/// let mut policy = MockPolicy::new(&[-9.0, 0.0, 5.0], &Device::Cpu)?;
/// let reward = |s: &Sample| Ok(f32::from(s.response.starts_with('b')));
/// let prompts = vec![Prompt::new("q", "b"); 4];
/// let r = rl_trainer::evaluate(&mut policy, &reward, &prompts, &SamplingConfig::greedy(2), 0.0)?;
/// assert_eq!((r.accuracy, r.responses), (1.0, 4));
/// # Ok::<(), rl_trainer::TrainerError>(())
/// ```
///
/// # Errors
/// Generation and reward errors; a reward that returns the wrong number of scores or a
/// non-finite score.
pub fn evaluate(
    policy: &mut dyn Policy,
    reward: &dyn RewardFn,
    prompts: &[Prompt],
    sampling: &SamplingConfig,
    accuracy_threshold: f64,
) -> Result<EvalReport> {
    let batch = policy.generate(prompts, sampling)?;
    let scores = score(reward, &batch)?;
    let m = rollout_metrics(&batch.samples, &scores, accuracy_threshold);
    Ok(EvalReport {
        accuracy: m.get("reward/accuracy").unwrap_or(0.0),
        mean_reward: m.get("reward/mean").unwrap_or(0.0),
        responses: scores.len(),
        samples: batch.samples,
        rewards: scores,
    })
}

/// The sampling settings a trainer evaluates with at `step`: one response per prompt, greedy or
/// at the training temperature, with a seed of its own (the training RNG streams are untouched).
pub fn eval_sampling(config: &TrainerConfig, step: u64, greedy: bool) -> SamplingConfig {
    let base = &config.sampling;
    SamplingConfig {
        temperature: if greedy { 0.0 } else { base.temperature },
        n: 1,
        seed: mix_seed(config.seed, &[u64::MAX, step]),
        ..base.clone()
    }
}

/// One finite score per response of `batch`.
pub(crate) fn score(reward: &dyn RewardFn, batch: &RolloutBatch) -> Result<Vec<f32>> {
    let scores = reward.score_batch(&batch.samples)?;
    if scores.len() != batch.len() {
        return Err(rl_core::Error::shape("reward scores", &[batch.len()], &[scores.len()]).into());
    }
    rl_core::check::finite_slice(&scores, "reward scores")?;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_written_whole_or_not_at_all() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let report = EvalReport {
            accuracy: 0.5,
            mean_reward: 0.5,
            responses: 2,
            samples: vec![Sample::new("1 + 1 = 2", "2"), Sample::new("1 + 2 = 4", "3")],
            rewards: vec![1.0, 0.0],
        };
        let path = dir.path().join("r.jsonl");
        report.write_jsonl(&path)?;
        let text = std::fs::read_to_string(&path)?;
        let lines: Vec<serde_json::Value> =
            text.lines().map(serde_json::from_str).collect::<std::result::Result<_, _>>()?;
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["answer"].as_str(), lines[0]["reward"].as_f64()),
            (Some("2"), Some(1.0))
        );
        assert_eq!(lines[1]["response"].as_str(), Some("1 + 2 = 4"));
        // A target that cannot be replaced (a non-empty directory): a typed error naming it, the
        // directory untouched, no temporary file left.
        let busy = dir.path().join("busy");
        std::fs::create_dir(&busy)?;
        std::fs::write(busy.join("keep"), "x")?;
        let err = report.write_jsonl(&busy).unwrap_err();
        assert!(matches!(err, crate::TrainerError::Io(_)), "{err}");
        assert!(err.to_string().contains(&busy.display().to_string()), "{err}");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        left.sort();
        assert_eq!(left, ["busy", "r.jsonl"]);
        assert_eq!(std::fs::read_to_string(busy.join("keep"))?, "x");
        Ok(())
    }
}
