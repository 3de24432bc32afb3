//! The stage traits of the pipeline:
//! `prompts → Policy::generate → RewardFn → AdvantageEstimator → PolicyLoss (+ ValueLoss) → optimizer`.
//!
//! Each trait is one or two required methods; the stage crates (`rl-reward`, `rl-advantage`,
//! `rl-loss`, `rl-policy`) implement them and pair them with serde enums of their built-ins.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Advantages, Groups, Metrics, Prompt, Result, Rewards, RolloutBatch, Sample};

// ------------------------------------------------------------------------------------------------
// Reward

/// Scores one response. Implemented by rule-based rewards, verifiers and user plugins.
///
/// Any `Fn(&Sample) -> Result<f32> + Send + Sync` closure is a `RewardFn`:
///
/// ```
/// use rl_core::{RewardFn, Sample};
///
/// // A plugin in a few lines: reward 1.0 when the response ends with the expected answer.
/// let ends_with_answer = |s: &Sample| -> rl_core::Result<f32> {
///     let answer = s.answer.as_deref().unwrap_or_default();
///     Ok(if s.response.trim_end().ends_with(answer) { 1.0 } else { 0.0 })
/// };
///
/// let sample = Sample::new("so the total is 42", "42");
/// assert_eq!(ends_with_answer.score(&sample)?, 1.0);
/// assert_eq!(ends_with_answer.score_batch(&[sample, Sample::new("no idea", "42")])?, vec![1.0, 0.0]);
/// # Ok::<(), rl_core::Error>(())
/// ```
pub trait RewardFn: Send + Sync {
    /// The reward of one sample. Return an error (not NaN) when the sample cannot be scored.
    fn score(&self, sample: &Sample) -> Result<f32>;

    /// A short name used in metrics and error messages.
    fn name(&self) -> &str {
        "reward"
    }

    /// Scores a whole batch (sequentially by default; `rl-reward` provides a parallel, panic- and
    /// timeout-safe runner).
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        samples.iter().map(|s| self.score(s)).collect()
    }
}

impl<F> RewardFn for F
where
    F: Fn(&Sample) -> Result<f32> + Send + Sync,
{
    fn score(&self, sample: &Sample) -> Result<f32> {
        self(sample)
    }
}

impl RewardFn for Box<dyn RewardFn> {
    fn score(&self, sample: &Sample) -> Result<f32> {
        (**self).score(sample)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        (**self).score_batch(samples)
    }
}

impl RewardFn for Arc<dyn RewardFn> {
    fn score(&self, sample: &Sample) -> Result<f32> {
        (**self).score(sample)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score_batch(&self, samples: &[Sample]) -> Result<Vec<f32>> {
        (**self).score_batch(samples)
    }
}

// ------------------------------------------------------------------------------------------------
// Advantage

/// What an advantage estimator gets.
#[derive(Clone, Copy, Debug)]
pub struct AdvantageInput<'a> {
    /// Outcome (`(B,)`) or token-level (`(B, T)`) rewards.
    pub rewards: &'a Rewards,
    /// `(B, T)` f32 response mask.
    pub response_mask: &'a Tensor,
    /// Group id of each response, length `B`.
    pub group_ids: &'a [usize],
    /// `(B, T)` f32 critic values (GAE only).
    pub values: Option<&'a Tensor>,
    /// `(B,)` f32 per-response baseline supplied by the caller (ReMax: the greedy rollout's score).
    pub baseline: Option<&'a Tensor>,
    /// `(B, T)` f32 reference-model log-probs, when the trainer has a reference model (for
    /// estimators that shape rewards with a KL of their own).
    pub ref_log_probs: Option<&'a Tensor>,
    /// Per-token statistics of the sampling policy (the optimal token baseline only).
    pub policy_stats: Option<PolicyStats<'a>>,
    /// Under data parallelism: merges this rank's whitening [`crate::masked::Moments`] with
    /// every rank's (`None`: this batch is the whole batch). Estimators that whiten over the
    /// batch call it once per estimate and say so with
    /// [`AdvantageEstimator::reduces_batch_statistics`].
    pub batch_reduce: Option<crate::masked::BatchReduce<'a>>,
}

/// Per-token statistics of the policy that sampled the responses, for estimators whose baseline
/// weighs tokens by the policy's variance (verl's optimal token baseline).
#[derive(Clone, Copy, Debug)]
pub struct PolicyStats<'a> {
    /// `(B, T)` f32 log-probabilities `log π(y_t)` of the sampled tokens (verl `old_log_probs`).
    pub log_probs: &'a Tensor,
    /// `(B, T)` f32 `Σ_v π(v)²` over the vocabulary at each position (verl `sum_pi_squared`).
    pub sum_pi_squared: &'a Tensor,
    /// Optional `(B, T)` f32 rollout importance-sampling weights `ρ̄_t` (verl
    /// `rollout_is_weights`).
    pub is_weights: Option<&'a Tensor>,
}

impl<'a> AdvantageInput<'a> {
    /// Input with rewards, mask and group ids only.
    pub fn new(rewards: &'a Rewards, response_mask: &'a Tensor, group_ids: &'a [usize]) -> Self {
        Self {
            rewards,
            response_mask,
            group_ids,
            values: None,
            baseline: None,
            ref_log_probs: None,
            policy_stats: None,
            batch_reduce: None,
        }
    }

    /// Adds the data-parallel reduction of batch statistics.
    pub fn with_batch_reduce(mut self, reduce: crate::masked::BatchReduce<'a>) -> Self {
        self.batch_reduce = Some(reduce);
        self
    }

    /// `local` merged over the data-parallel group ([`AdvantageInput::batch_reduce`]), or
    /// `local` itself in one process.
    pub fn reduce_moments(&self, local: crate::masked::Moments) -> Result<crate::masked::Moments> {
        match self.batch_reduce {
            Some(r) => (r.0)(local),
            None => Ok(local),
        }
    }

    /// Adds reference-model log-probs.
    pub fn with_ref_log_probs(mut self, ref_log_probs: &'a Tensor) -> Self {
        self.ref_log_probs = Some(ref_log_probs);
        self
    }

    /// Adds the sampling policy's per-token statistics.
    pub fn with_policy_stats(mut self, stats: PolicyStats<'a>) -> Self {
        self.policy_stats = Some(stats);
        self
    }

    /// Adds critic values.
    pub fn with_values(mut self, values: &'a Tensor) -> Self {
        self.values = Some(values);
        self
    }

    /// Adds a per-response baseline.
    pub fn with_baseline(mut self, baseline: &'a Tensor) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// Groups of the batch, checked against `B`.
    pub fn groups(&self) -> Result<Groups> {
        let b = self.response_mask.dims().first().copied().unwrap_or(0);
        Groups::for_batch(self.group_ids, b)
    }
}

/// Turns rewards (and values) into per-token advantages and returns.
pub trait AdvantageEstimator {
    /// Computes `(B, T)` advantages (0.0 on padding) and returns.
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages>;

    /// `true` when [`AdvantageInput::values`] is required (GAE).
    fn requires_values(&self) -> bool {
        false
    }

    /// `true` when a row's advantages depend on statistics of the whole batch beyond its own
    /// group (batch whitening, a batch std, batch-wide counts). Under data parallelism each rank
    /// holds part of the batch, so a trainer refuses such an estimator there (until the
    /// statistics are all-reduced). Estimators that normalise over the batch must override this;
    /// the default is `false` (group-local or row-local).
    fn batch_statistics(&self) -> bool {
        false
    }

    /// `true` when every batch-wide statistic of this estimator goes through
    /// [`AdvantageInput::reduce_moments`], so a data-parallel trainer can all-reduce it and accept
    /// the estimator (whitened GAE, REINFORCE++). Default `false`.
    fn reduces_batch_statistics(&self) -> bool {
        false
    }
}

// ------------------------------------------------------------------------------------------------
// Losses

/// Batch-wide counts that make micro-batch losses add up to the full mini-batch loss under
/// gradient accumulation. `None` means "use this micro-batch's own count".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalCounts {
    /// Valid tokens in the whole mini-batch (`Σ_{b,t} M_bt`).
    pub tokens: Option<f64>,
    /// Sequences with at least one valid token in the whole mini-batch.
    pub sequences: Option<f64>,
    /// Groups in the whole mini-batch.
    pub groups: Option<f64>,
    /// Valid tokens per group id in the whole mini-batch.
    pub group_tokens: Option<BTreeMap<usize, f64>>,
}

impl GlobalCounts {
    /// The counts of a whole mini-batch, from its `(B, T)` mask and group ids.
    pub fn from_batch(response_mask: &Tensor, group_ids: &[usize]) -> Result<Self> {
        let lens = crate::check::mask_lengths(response_mask, "response_mask")?;
        let groups = Groups::for_batch(group_ids, lens.len())?;
        let mut group_tokens = BTreeMap::new();
        for (row, len) in lens.iter().enumerate() {
            *group_tokens.entry(group_ids[row]).or_insert(0.0) += *len as f64;
        }
        Ok(Self {
            tokens: Some(lens.iter().sum::<usize>() as f64),
            sequences: Some(lens.iter().filter(|l| **l > 0).count() as f64),
            groups: Some(groups.len() as f64),
            group_tokens: Some(group_tokens),
        })
    }
}

/// A loss value with the metrics computed alongside it.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// Scalar f32 loss, differentiable with respect to the current log-probs / values.
    pub loss: Tensor,
    /// Clip fractions, approx KL, ratio statistics, ...
    pub metrics: Metrics,
}

/// What a policy loss gets. All tensors are `(B, T)` f32.
#[derive(Clone, Copy, Debug)]
pub struct PolicyLossInput<'a> {
    /// Current log-probs `log π_θ` of the response tokens (carries the autograd graph).
    pub log_probs: &'a Tensor,
    /// Log-probs under the policy that produced the data (`log π_old`, detached).
    pub old_log_probs: &'a Tensor,
    /// Per-token advantages.
    pub advantages: &'a Tensor,
    /// Response mask.
    pub response_mask: &'a Tensor,
    /// Optional detached per-token importance weights (rollout/trainer mismatch correction).
    pub rollout_is_weights: Option<&'a Tensor>,
    /// Group ids (length `B`), needed by group-level aggregation.
    pub group_ids: Option<&'a [usize]>,
    /// Mini-batch-wide counts for gradient accumulation.
    pub counts: Option<&'a GlobalCounts>,
}

impl<'a> PolicyLossInput<'a> {
    /// Input with the four required tensors.
    pub fn new(
        log_probs: &'a Tensor,
        old_log_probs: &'a Tensor,
        advantages: &'a Tensor,
        response_mask: &'a Tensor,
    ) -> Self {
        Self {
            log_probs,
            old_log_probs,
            advantages,
            response_mask,
            rollout_is_weights: None,
            group_ids: None,
            counts: None,
        }
    }
}

/// A policy-gradient surrogate loss (PPO clip, GSPO, CISPO, ...).
pub trait PolicyLoss {
    /// The loss (to be minimised) and its metrics.
    fn compute(&self, input: &PolicyLossInput<'_>) -> Result<LossOutput>;

    /// `true` when a row whose advantages are all zero adds exactly nothing to the loss and to
    /// its gradient whatever the other rows hold, given mini-batch-wide [`GlobalCounts`] (its
    /// tokens still count in them) and the same padded length `T`. A trainer may then leave
    /// such rows out of the forward and backward passes: the groups of Dr. GRPO / GRPO whose
    /// samples all got the same reward. `false` (the default) when the loss uses statistics of
    /// the rows it is given (Clip-Cov, KL-Cov select tokens by a covariance over them).
    fn zero_advantage_rows_inert(&self) -> bool {
        false
    }
}

/// What a value (critic) loss gets. All tensors are `(B, T)` f32.
#[derive(Clone, Copy, Debug)]
pub struct ValueLossInput<'a> {
    /// Current value predictions (carries the autograd graph).
    pub values: &'a Tensor,
    /// Values at rollout time (for value clipping).
    pub old_values: &'a Tensor,
    /// Targets (GAE returns).
    pub returns: &'a Tensor,
    /// Response mask.
    pub response_mask: &'a Tensor,
    /// Mini-batch-wide counts for gradient accumulation.
    pub counts: Option<&'a GlobalCounts>,
}

/// A critic loss.
pub trait ValueLoss {
    /// The loss and its metrics (e.g. value clip fraction).
    fn compute(&self, input: &ValueLossInput<'_>) -> Result<LossOutput>;
}

/// What an extra loss term (KL to a reference, auxiliary losses) gets for one micro-batch.
/// Tensors are `(B, T)` f32.
#[derive(Clone, Copy, Debug)]
pub struct TermInput<'a> {
    /// Current log-probs (carry the autograd graph).
    pub log_probs: &'a Tensor,
    /// Entropies, when the trainer computed them (a term asked for them with
    /// [`LossTerm::needs_entropy`]).
    pub entropy: Option<&'a Tensor>,
    /// Old (rollout) log-probs.
    pub old_log_probs: &'a Tensor,
    /// Reference-model log-probs, when the trainer has a [`ReferenceModel`].
    pub ref_log_probs: Option<&'a Tensor>,
    /// Response mask.
    pub response_mask: &'a Tensor,
    /// Group id per response (length `B`).
    pub group_ids: &'a [usize],
    /// Counts of the whole mini-batch: normalise by them so micro-batch terms add up.
    pub counts: &'a GlobalCounts,
}

/// An extra term added to the actor loss of each micro-batch (e.g. `β·KL(π‖π_ref)` or an
/// entropy bonus; `rl-loss` implements it for `KlLoss` and `EntropyBonus`). It applies its own
/// coefficient.
///
/// Any `Fn(&TermInput) -> Result<LossOutput>` closure is a `LossTerm`:
///
/// ```
/// use rl_core::{LossOutput, LossTerm, Metrics, TermInput};
///
/// // A length penalty: 0.01 × (valid tokens / mini-batch tokens), summed over micro-batches.
/// let length_penalty = |i: &TermInput<'_>| -> rl_core::Result<LossOutput> {
///     let tokens = i.counts.tokens.unwrap_or(1.0);
///     let loss = (i.response_mask.sum_all()? * (0.01 / tokens))?;
///     Ok(LossOutput { loss, metrics: Metrics::new() })
/// };
/// assert_eq!(length_penalty.name(), "term");
/// ```
pub trait LossTerm {
    /// The term (scalar f32, added to the loss) and its metrics.
    fn compute(&self, input: &TermInput<'_>) -> Result<LossOutput>;

    /// Metric prefix (`actor/<name>/...`).
    fn name(&self) -> &str {
        "term"
    }

    /// `true` when the term reads [`TermInput::entropy`] (the trainer then asks the policy for
    /// entropies).
    fn needs_entropy(&self) -> bool {
        false
    }

    /// `true` when the term reads [`TermInput::ref_log_probs`] (the trainer then refuses to
    /// build without a [`ReferenceModel`], instead of failing at the first micro-batch).
    fn needs_reference(&self) -> bool {
        false
    }
}

impl<F> LossTerm for F
where
    F: Fn(&TermInput<'_>) -> Result<LossOutput>,
{
    fn compute(&self, input: &TermInput<'_>) -> Result<LossOutput> {
        self(input)
    }
}

// ------------------------------------------------------------------------------------------------
// Policy and critic

/// How to sample responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature (> 0); `0.0` means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the `k` most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p · p_max`; 0.0 disables it.
    pub min_p: f32,
    /// Maximum number of generated tokens per response.
    pub max_new_tokens: usize,
    /// Responses per prompt (the group size).
    pub n: usize,
    /// RNG seed; generation is reproducible for a given seed, batch and model.
    pub seed: u64,
    /// Stop strings (included in the response when hit).
    pub stop: Vec<String>,
}

impl Default for SamplingConfig {
    /// `temperature 1.0, top_p 1.0, no top-k/min-p, 512 new tokens, n = 1, seed 0` (TRL/verl
    /// rollout defaults).
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            max_new_tokens: 512,
            n: 1,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding (temperature 0, one sample) with `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { temperature: 0.0, max_new_tokens, ..Self::default() }
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        use crate::Error;
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::config("sampling.temperature", "must be a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config("sampling.top_p", "must be in (0, 1]"));
        }
        if self.top_k == Some(0) {
            return Err(Error::config("sampling.top_k", "must be >= 1 (or absent)"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::config("sampling.min_p", "must be in [0, 1]"));
        }
        if self.n == 0 {
            return Err(Error::config("sampling.n", "must be >= 1"));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::config("sampling.max_new_tokens", "must be >= 1"));
        }
        Ok(())
    }
}

/// Per-token log-probs (and optionally entropies) of the response tokens of a batch.
#[derive(Clone, Debug)]
pub struct TokenLogProbs {
    /// `(B, T)` f32 `log π(y_t | x, y_<t)`, 0.0 on padding; carries the autograd graph when
    /// computed from trainable weights.
    pub log_probs: Tensor,
    /// `(B, T)` f32 entropy of the next-token distribution at each response position.
    pub entropy: Option<Tensor>,
}

/// A trainable language-model policy.
pub trait Policy {
    /// Samples `config.n` responses for each prompt. Responses to `prompts[i]` get group id `i`.
    /// No autograd graph is kept; `old_log_probs` holds the sampling log-probs.
    fn generate(&mut self, prompts: &[Prompt], config: &SamplingConfig) -> Result<RolloutBatch>;

    /// Log-probs (and entropies if `with_entropy`) of `batch`'s response tokens under the current
    /// weights, differentiable with respect to [`Policy::trainable_vars`].
    fn log_probs(&self, batch: &RolloutBatch, with_entropy: bool) -> Result<TokenLogProbs>;

    /// The parameters an optimizer updates.
    fn trainable_vars(&self) -> Vec<Var>;
}

/// A frozen model whose log-probs anchor a KL term or a KL-in-reward penalty: log-probs of a batch,
/// nothing else (it never samples and is never trained).
///
/// Every [`Policy`] is one (its log-probs, detached); `rl_policy::ReferencePolicy` is the cheap
/// one (no autograd graph). Give the trainer a **frozen copy** (`LmPolicy::reference()`), never a
/// handle that shares the trained weights, or the KL stays 0.
pub trait ReferenceModel {
    /// `(B, T)` f32 `log π_ref(y_t | x, y_<t)` of `batch`'s response tokens, 0.0 on padding, with
    /// no autograd graph.
    fn reference_log_probs(&self, batch: &RolloutBatch) -> Result<Tensor>;

    /// The reference's variables, when it has any: the trainer refuses a reference that shares a
    /// variable with the policy it trains (a clone of the policy handle, whose KL would stay 0).
    fn weights(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl<P: Policy + ?Sized> ReferenceModel for P {
    fn reference_log_probs(&self, batch: &RolloutBatch) -> Result<Tensor> {
        Ok(self.log_probs(batch, false)?.log_probs.detach())
    }

    fn weights(&self) -> Vec<Var> {
        self.trainable_vars()
    }
}

/// A learned value function (PPO critic).
pub trait Critic {
    /// `(B, T)` f32 values `V(x, y_<t)` (the state in which response token `t` is generated, as
    /// verl aligns them) at each response position, 0.0 on padding;
    /// differentiable with respect to [`Critic::trainable_vars`].
    fn values(&self, batch: &RolloutBatch) -> Result<Tensor>;

    /// The parameters an optimizer updates.
    fn trainable_vars(&self) -> Vec<Var>;
}
