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
    /// templated, the response decoded without special tokens). Replaces an existing file.
    ///
    /// # Errors
    /// The file cannot be created or written ([`crate::TrainerError::Io`], naming it).
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let io =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        for (s, r) in self.samples.iter().zip(&self.rewards) {
            let line = serde_json::json!({
                "prompt": s.prompt,
                "response": s.response,
                "answer": s.answer,
                "finish": s.finish,
                "response_tokens": s.response_tokens,
                "reward": r,
            });
            writeln!(out, "{line}").map_err(io)?;
        }
        out.flush().map_err(io)?;
        Ok(())
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
