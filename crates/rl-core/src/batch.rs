//! The data that flows between stages: prompts, samples, rollout batches, rewards, advantages.
//!
//! Shape conventions (see `docs/architecture.md`): `B` responses (= prompts × group size), `P`
//! padded prompt length (left-padded), `T` padded response length (right-padded), `V` vocabulary.
//! Response-aligned tensors are `(B, T)` f32; `response_mask` is 1.0 on real response tokens
//! (including the EOS token) and 0.0 on padding. Group membership is an explicit id per response.

use std::collections::{BTreeMap, HashMap};

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, check};

/// Free-form per-sample metadata (ground-truth extras, task parameters, source line, ...).
pub type Metadata = BTreeMap<String, serde_json::Value>;

/// One prompt of a dataset, before templating/tokenisation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// The prompt text as it is given to the model (after any chat template).
    pub text: String,
    /// The ground-truth answer, when the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Anything else a reward function may need (e.g. countdown numbers and target).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
}

impl Prompt {
    /// A prompt with a ground-truth answer and no metadata.
    pub fn new(text: impl Into<String>, answer: impl Into<String>) -> Self {
        Self { text: text.into(), answer: Some(answer.into()), metadata: Metadata::new() }
    }
}

/// Why generation of a response ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token (included in the response).
    #[default]
    Eos,
    /// A stop string was produced (included in the response, as vLLM's `include_stop_str_in_output`).
    StopString,
    /// The response hit `max_new_tokens` without stopping: it is truncated.
    Length,
    /// The sampler cut the response short for its own reasons (an inference engine paused or
    /// aborted the request, e.g. vLLM's `finish_reason: "abort"` during a weight update). The
    /// response is neither a natural stop nor a truncation by length: never score it as a stop;
    /// re-queue or drop it.
    Aborted,
}

impl FinishReason {
    /// `true` when the model stopped by itself (EOS or stop string), as Open-Reasoner-Zero's
    /// `stop_reason == "stop"`. `false` for [`FinishReason::Length`] and
    /// [`FinishReason::Aborted`].
    pub fn stopped(self) -> bool {
        match self {
            FinishReason::Eos | FinishReason::StopString => true,
            FinishReason::Length | FinishReason::Aborted => false,
        }
    }

    /// `true` for [`FinishReason::Aborted`]: the response was cut by the sampler, not the model.
    pub fn aborted(self) -> bool {
        matches!(self, FinishReason::Aborted)
    }
}

/// One prompt/response pair as a reward function sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt text (after templating).
    pub prompt: String,
    /// The decoded response text (special tokens removed).
    pub response: String,
    /// The ground-truth answer, if any.
    #[serde(default)]
    pub answer: Option<String>,
    /// Why the response ended.
    #[serde(default)]
    pub finish: FinishReason,
    /// Number of response tokens (= `Σ_t response_mask[i, t]`).
    #[serde(default)]
    pub response_tokens: usize,
    /// The group (prompt) this response belongs to.
    #[serde(default)]
    pub group_id: usize,
    /// Per-sample metadata copied from the [`Prompt`].
    #[serde(default)]
    pub metadata: Metadata,
}

impl Sample {
    /// A sample with just a response and an answer (handy in tests and doc examples).
    pub fn new(response: impl Into<String>, answer: impl Into<String>) -> Self {
        Self { response: response.into(), answer: Some(answer.into()), ..Self::default() }
    }
}

/// A batch of sampled responses with everything the later stages need.
///
/// | field | shape | dtype |
/// |---|---|---|
/// | `prompt_ids` | `(B, P)` left-padded | u32 |
/// | `prompt_mask` | `(B, P)` 1.0 on real prompt tokens | f32 |
/// | `response_ids` | `(B, T)` right-padded | u32 |
/// | `response_mask` | `(B, T)` 1.0 on response tokens incl. EOS | f32 |
/// | `old_log_probs` | `(B, T)` log π_old of each chosen token, 0.0 on padding | f32 |
/// | `rollout_log_probs` | `(B, T)` the sampler's own log-probs, never overwritten | f32 |
/// | `ref_log_probs` | `(B, T)` reference-policy log-probs, when KL is used | f32 |
/// | `values` | `(B, T)` critic values, for GAE | f32 |
#[derive(Clone, Debug)]
pub struct RolloutBatch {
    /// `(B, P)` u32 prompt token ids, left-padded.
    pub prompt_ids: Tensor,
    /// `(B, P)` f32, 1.0 on real prompt tokens.
    pub prompt_mask: Tensor,
    /// `(B, T)` u32 response token ids, right-padded.
    pub response_ids: Tensor,
    /// `(B, T)` f32, 1.0 on real response tokens (including EOS), 0.0 on padding.
    pub response_mask: Tensor,
    /// `(B, T)` f32 log-probs of the chosen tokens under the policy that sampled them.
    pub old_log_probs: Tensor,
    /// `(B, T)` f32 reference-policy log-probs (for KL), if computed.
    pub ref_log_probs: Option<Tensor>,
    /// `(B, T)` f32 critic values, if computed.
    pub values: Option<Tensor>,
    /// `(B, T)` f32 log-probs of the chosen tokens as the **sampler** reported them (the local
    /// sampler's, or an inference engine's), 0.0 on padding. Unlike `old_log_probs`, which a
    /// trainer may overwrite with its own recomputation, this field keeps the behaviour policy's
    /// numbers for the rollout/trainer importance-sampling correction (TIS). `None` when the
    /// sampler did not report any.
    pub rollout_log_probs: Option<Tensor>,
    /// Version of the weights each row was sampled with (length `B`; see
    /// `rl_core::Sampler::policy_version`), `None` when the sampler does not track versions.
    pub policy_version: Option<Vec<u64>>,
    /// Group id of each response, length `B`.
    pub group_ids: Vec<usize>,
    /// Texts, finish reasons and answers of each response, length `B`.
    pub samples: Vec<Sample>,
}

impl RolloutBatch {
    /// Number of responses `B`.
    pub fn len(&self) -> usize {
        self.group_ids.len()
    }

    /// `true` for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.group_ids.is_empty()
    }

    /// Padded response length `T`.
    pub fn response_len(&self) -> usize {
        self.response_mask.dims().get(1).copied().unwrap_or(0)
    }

    /// Checks that every field is consistent with `B`, `P` and `T`.
    pub fn validate(&self) -> Result<()> {
        let b = self.group_ids.len();
        if b == 0 {
            return Err(Error::Empty { what: "rollout batch".into() });
        }
        let (pb, p) = check::dims2(&self.prompt_ids, "prompt_ids")?;
        check::shape(&self.prompt_mask, &[pb, p], "prompt_mask")?;
        let (rb, t) = check::dims2(&self.response_ids, "response_ids")?;
        if pb != b || rb != b {
            return Err(Error::GroupMismatch { expected: rb, got: b });
        }
        for (name, x) in [
            ("response_mask", Some(&self.response_mask)),
            ("old_log_probs", Some(&self.old_log_probs)),
        ]
        .into_iter()
        .chain([
            ("ref_log_probs", self.ref_log_probs.as_ref()),
            ("values", self.values.as_ref()),
            ("rollout_log_probs", self.rollout_log_probs.as_ref()),
        ]) {
            if let Some(x) = x {
                check::shape(x, &[b, t], name)?;
            }
        }
        if self.samples.len() != b {
            return Err(Error::shape("samples", &[b], &[self.samples.len()]));
        }
        if let Some(v) = &self.policy_version
            && v.len() != b
        {
            return Err(Error::shape("policy_version", &[b], &[v.len()]));
        }
        check::mask_lengths(&self.response_mask, "response_mask")?;
        Ok(())
    }

    /// The rows `idx` (in that order) as a new batch: used for mini-batches and filtering.
    pub fn select(&self, idx: &[usize]) -> Result<RolloutBatch> {
        let b = self.len();
        if let Some(&bad) = idx.iter().find(|&&i| i >= b) {
            return Err(Error::shape("row index", &[b], &[bad]));
        }
        let dev = self.response_ids.device();
        let ids = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), dev)?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&ids, 0)?) };
        Ok(RolloutBatch {
            prompt_ids: pick(&self.prompt_ids)?,
            prompt_mask: pick(&self.prompt_mask)?,
            response_ids: pick(&self.response_ids)?,
            response_mask: pick(&self.response_mask)?,
            old_log_probs: pick(&self.old_log_probs)?,
            ref_log_probs: self.ref_log_probs.as_ref().map(pick).transpose()?,
            values: self.values.as_ref().map(pick).transpose()?,
            rollout_log_probs: self.rollout_log_probs.as_ref().map(pick).transpose()?,
            policy_version: self
                .policy_version
                .as_ref()
                .map(|v| idx.iter().map(|&i| v.get(i).copied().unwrap_or(0)).collect()),
            group_ids: idx.iter().map(|&i| self.group_ids[i]).collect(),
            samples: idx.iter().map(|&i| self.samples[i].clone()).collect(),
        })
    }

    /// Concatenates batches along `B` (prompts re-padded on the left, responses on the right to
    /// the longest of the inputs). Group ids are kept as they are: callers that merge batches from
    /// different generation calls must make them unique first.
    pub fn concat(batches: &[RolloutBatch]) -> Result<RolloutBatch> {
        if batches.is_empty() {
            return Err(Error::Empty { what: "batches to concat".into() });
        }
        let p =
            batches.iter().map(|b| b.prompt_ids.dim(1)).collect::<candle_core::Result<Vec<_>>>()?;
        let t = batches.iter().map(|b| b.response_len()).collect::<Vec<_>>();
        let (pmax, tmax) = (*p.iter().max().unwrap_or(&0), *t.iter().max().unwrap_or(&0));
        let left =
            |x: &Tensor, n: usize| -> Result<Tensor> { Ok(x.pad_with_zeros(1, pmax - n, 0)?) };
        let right =
            |x: &Tensor, n: usize| -> Result<Tensor> { Ok(x.pad_with_zeros(1, 0, tmax - n)?) };
        let cat = |f: &dyn Fn(&RolloutBatch, usize) -> Result<Tensor>| -> Result<Tensor> {
            let parts =
                batches.iter().enumerate().map(|(i, b)| f(b, i)).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let opt = |get: &dyn Fn(&RolloutBatch) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            if batches.iter().all(|b| get(b).is_some()) {
                Ok(Some(cat(&|b, i| right(get(b).expect("checked"), t[i]))?))
            } else {
                Ok(None)
            }
        };
        Ok(RolloutBatch {
            prompt_ids: cat(&|b, i| left(&b.prompt_ids, p[i]))?,
            prompt_mask: cat(&|b, i| left(&b.prompt_mask, p[i]))?,
            response_ids: cat(&|b, i| right(&b.response_ids, t[i]))?,
            response_mask: cat(&|b, i| right(&b.response_mask, t[i]))?,
            old_log_probs: cat(&|b, i| right(&b.old_log_probs, t[i]))?,
            ref_log_probs: opt(&|b| b.ref_log_probs.as_ref())?,
            values: opt(&|b| b.values.as_ref())?,
            rollout_log_probs: opt(&|b| b.rollout_log_probs.as_ref())?,
            policy_version: if batches.iter().all(|b| b.policy_version.is_some()) {
                Some(
                    batches
                        .iter()
                        .flat_map(|b| b.policy_version.iter().flatten().copied())
                        .collect(),
                )
            } else {
                None
            },
            group_ids: batches.iter().flat_map(|b| b.group_ids.iter().copied()).collect(),
            samples: batches.iter().flat_map(|b| b.samples.iter().cloned()).collect(),
        })
    }

    /// Response lengths `L_i` as host integers.
    pub fn response_lengths(&self) -> Result<Vec<usize>> {
        check::mask_lengths(&self.response_mask, "response_mask")
    }

    /// The one batch constructor every sampler uses (the local [`crate::Sampler`] of rl-policy
    /// and the HTTP engine clients of rl-rollout), so that both produce identical batches from
    /// identical tokens.
    ///
    /// Row `r` is `parts.sequences[r]`; its prompt is `parts.prompt_ids[seq.prompt_index]` and its
    /// group id is `seq.prompt_index`. Prompts are left-padded to `P` and responses right-padded
    /// to `T` (the longest row) with `parts.pad_id`; `response_mask` is 1.0 on every returned
    /// token (EOS included); `old_log_probs` **and** `rollout_log_probs` both hold the sampler's
    /// log-probs (0.0 on padding); `policy_version` is `parts.policy_version` on every row.
    /// Responses are decoded with `decode` (special tokens should be skipped); prompt texts,
    /// answers and metadata come from `parts.prompts` when given.
    ///
    /// ```
    /// use rl_core::{Device, FinishReason, RolloutBatch, RolloutParts, SampledSequence};
    /// let prompts = vec![vec![5u32, 6, 7], vec![8]];
    /// let seqs = vec![
    ///     SampledSequence::new(0, vec![1, 2], vec![-0.5, -0.25], FinishReason::Eos),
    ///     SampledSequence::new(1, vec![3], vec![-1.0], FinishReason::Length),
    /// ];
    /// let parts = RolloutParts::new(&prompts, &seqs, 0);
    /// let decode = |ids: &[u32]| Ok(format!("{ids:?}"));
    /// let batch = RolloutBatch::from_sequences(&parts, &decode, &Device::Cpu)?;
    /// assert_eq!(batch.prompt_ids.to_vec2::<u32>()?, vec![vec![5, 6, 7], vec![0, 0, 8]]);
    /// assert_eq!(batch.response_mask.to_vec2::<f32>()?, vec![vec![1.0, 1.0], vec![1.0, 0.0]]);
    /// assert_eq!(batch.group_ids, vec![0, 1]);
    /// assert_eq!(batch.samples[1].finish, FinishReason::Length);
    /// # Ok::<(), rl_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Empty`] for no sequences or an empty prompt; [`Error::ShapeMismatch`] for a
    /// prompt index out of range or log-probs whose length differs from the token ids;
    /// [`Error::NonFinite`] for a NaN/infinite log-prob; errors of `decode`.
    pub fn from_sequences(
        parts: &RolloutParts<'_>,
        decode: &dyn Fn(&[u32]) -> Result<String>,
        device: &Device,
    ) -> Result<RolloutBatch> {
        let seqs = parts.sequences;
        if seqs.is_empty() {
            return Err(Error::Empty { what: "sampled sequences".into() });
        }
        for (r, s) in seqs.iter().enumerate() {
            let prompt = parts.prompt_ids.get(s.prompt_index).ok_or_else(|| {
                Error::shape(
                    format!("sequence {r}: prompt_index"),
                    &[parts.prompt_ids.len()],
                    &[s.prompt_index],
                )
            })?;
            if prompt.is_empty() {
                return Err(Error::Empty { what: format!("prompt {}", s.prompt_index) });
            }
            if s.log_probs.len() != s.token_ids.len() {
                return Err(Error::shape(
                    format!("sequence {r}: log_probs"),
                    &[s.token_ids.len()],
                    &[s.log_probs.len()],
                ));
            }
            if let Some(i) = s.log_probs.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("sequence {r}: log_probs"),
                    index: i,
                    value: f64::from(s.log_probs[i]),
                });
            }
        }
        let prompt_rows: Vec<&[u32]> =
            seqs.iter().map(|s| parts.prompt_ids[s.prompt_index].as_slice()).collect();
        let (prompt_ids, prompt_mask) = padded_rows(&prompt_rows, true, parts.pad_id, device)?;
        let resp_rows: Vec<&[u32]> = seqs.iter().map(|s| s.token_ids.as_slice()).collect();
        let (response_ids, response_mask) = padded_rows(&resp_rows, false, parts.pad_id, device)?;
        let t = response_ids.dim(1)?;
        let lp: Vec<f32> = seqs
            .iter()
            .flat_map(|s| {
                s.log_probs.iter().copied().chain(std::iter::repeat_n(0.0, t - s.log_probs.len()))
            })
            .collect();
        let old_log_probs = Tensor::from_vec(lp, (seqs.len(), t), device)?;
        let samples = seqs
            .iter()
            .map(|s| {
                let prompt = parts.prompts.and_then(|p| p.get(s.prompt_index));
                Ok(Sample {
                    prompt: prompt.map(|p| p.text.clone()).unwrap_or_default(),
                    response: decode(&s.token_ids)?,
                    answer: prompt.and_then(|p| p.answer.clone()),
                    finish: s.finish,
                    response_tokens: s.token_ids.len(),
                    group_id: s.prompt_index,
                    metadata: prompt.map(|p| p.metadata.clone()).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RolloutBatch {
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            rollout_log_probs: Some(old_log_probs.clone()),
            old_log_probs,
            ref_log_probs: None,
            values: None,
            policy_version: parts.policy_version.map(|v| vec![v; seqs.len()]),
            group_ids: seqs.iter().map(|s| s.prompt_index).collect(),
            samples,
        })
    }
}

/// One sampled response on the host, as every sampler produces it before batching
/// ([`RolloutBatch::from_sequences`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SampledSequence {
    /// Index of the prompt this responds to (its group id).
    pub prompt_index: usize,
    /// The response token ids, EOS / stop tokens included when the sampler stopped on them.
    pub token_ids: Vec<u32>,
    /// The sampler's log-prob of each token in `token_ids` (same length), f32.
    pub log_probs: Vec<f32>,
    /// Why the response ended.
    pub finish: FinishReason,
}

impl SampledSequence {
    /// A sequence from its parts.
    pub fn new(
        prompt_index: usize,
        token_ids: Vec<u32>,
        log_probs: Vec<f32>,
        finish: FinishReason,
    ) -> Self {
        Self { prompt_index, token_ids, log_probs, finish }
    }
}

/// What [`RolloutBatch::from_sequences`] assembles a batch from.
#[derive(Clone, Copy, Debug)]
pub struct RolloutParts<'a> {
    /// Token ids of each prompt (non-empty), indexed by [`SampledSequence::prompt_index`].
    pub prompt_ids: &'a [Vec<u32>],
    /// The sampled responses, one batch row each, in row order.
    pub sequences: &'a [SampledSequence],
    /// The prompts' texts, answers and metadata (same indexing as `prompt_ids`), if known.
    pub prompts: Option<&'a [Prompt]>,
    /// Padding id of the id tensors.
    pub pad_id: u32,
    /// Weight version every row was sampled with, when tracked.
    pub policy_version: Option<u64>,
}

impl<'a> RolloutParts<'a> {
    /// Parts without prompt texts and without a version.
    pub fn new(prompt_ids: &'a [Vec<u32>], sequences: &'a [SampledSequence], pad_id: u32) -> Self {
        Self { prompt_ids, sequences, prompts: None, pad_id, policy_version: None }
    }

    /// Adds the prompts' texts, answers and metadata.
    pub fn with_prompts(mut self, prompts: &'a [Prompt]) -> Self {
        self.prompts = Some(prompts);
        self
    }

    /// Tags every row with a weight version.
    pub fn with_version(mut self, version: u64) -> Self {
        self.policy_version = Some(version);
        self
    }
}

/// `(rows, width)` u32 ids and f32 mask, padded on the left or right with `pad`.
fn padded_rows(rows: &[&[u32]], left: bool, pad: u32, dev: &Device) -> Result<(Tensor, Tensor)> {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let (mut ids, mut mask) =
        (Vec::with_capacity(rows.len() * width), Vec::with_capacity(rows.len() * width));
    for r in rows {
        let padding = width - r.len();
        if left {
            ids.extend(std::iter::repeat_n(pad, padding).chain(r.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0f32, padding).chain(std::iter::repeat_n(1.0, r.len())),
            );
        } else {
            ids.extend(r.iter().copied().chain(std::iter::repeat_n(pad, padding)));
            mask.extend(
                std::iter::repeat_n(1f32, r.len()).chain(std::iter::repeat_n(0.0, padding)),
            );
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), width), dev)?,
        Tensor::from_vec(mask, (rows.len(), width), dev)?,
    ))
}

/// Outcome or process rewards of a batch.
#[derive(Clone, Debug)]
pub enum Rewards {
    /// One scalar per response: `(B,)` f32.
    Sequence(Tensor),
    /// Per-token rewards: `(B, T)` f32 (verl puts the outcome score on the last valid token).
    Token(Tensor),
}

impl Rewards {
    /// Sequence rewards from host values.
    pub fn from_scores(scores: &[f32], device: &Device) -> Result<Self> {
        Ok(Rewards::Sequence(Tensor::new(scores, device)?))
    }

    /// The per-response score `r_i`: `(B,)` f32 (for token-level rewards, `Σ_t r_it`, as verl's
    /// `token_level_rewards.sum(-1)`).
    pub fn sequence_scores(&self) -> Result<Tensor> {
        match self {
            Rewards::Sequence(t) => Ok(t.to_dtype(DType::F32)?),
            Rewards::Token(t) => Ok(t.to_dtype(DType::F32)?.sum(D::Minus1)?),
        }
    }

    /// Token-level rewards `(B, T)` f32: sequence scores are placed on the last valid token of
    /// each row (verl reward managers: `reward_tensor[i, valid_len - 1] = score`).
    ///
    /// # Errors
    /// A row with no valid token cannot hold a score: [`Error::Empty`].
    pub fn token_level(&self, response_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = check::dims2(response_mask, "response_mask")?;
        match self {
            Rewards::Token(r) => {
                check::shape(r, &[b, t], "token rewards")?;
                Ok(r.to_dtype(DType::F32)?)
            }
            Rewards::Sequence(s) => {
                check::shape(s, &[b], "sequence rewards")?;
                let scores = s.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let mask = response_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let mut out = vec![0f32; b * t];
                for (i, row) in mask.iter().enumerate() {
                    let last = row.iter().rposition(|m| *m != 0.0).ok_or_else(|| Error::Empty {
                        what: format!("response row {i} (no valid token to hold its reward)"),
                    })?;
                    out[i * t + last] = scores[i];
                }
                Ok(Tensor::from_vec(out, (b, t), response_mask.device())?)
            }
        }
    }

    /// Number of responses `B`.
    pub fn len(&self) -> usize {
        match self {
            Rewards::Sequence(t) | Rewards::Token(t) => t.dims().first().copied().unwrap_or(0),
        }
    }

    /// `true` when there are no rewards.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Output of an advantage estimator.
#[derive(Clone, Debug)]
pub struct Advantages {
    /// `(B, T)` f32 advantages, exactly 0.0 on padding.
    pub advantages: Tensor,
    /// `(B, T)` f32 returns (targets of the value loss; for outcome estimators, the advantages or
    /// the reward-to-go, as the source framework defines them).
    pub returns: Tensor,
}

/// Responses grouped by their group id, in order of first appearance.
///
/// ```
/// let g = rl_core::Groups::new(&[7, 3, 7, 3, 9]).unwrap();
/// assert_eq!(g.len(), 3);
/// assert_eq!(g.rows(0), &[0, 2]);
/// assert_eq!(g.id(1), 3);
/// assert_eq!(g.group_of_row(4), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    ids: Vec<usize>,
    rows: Vec<Vec<usize>>,
    row_group: Vec<usize>,
}

impl Groups {
    /// Groups the rows of a batch by id.
    ///
    /// # Errors
    /// [`Error::Empty`] for an empty batch.
    pub fn new(group_ids: &[usize]) -> Result<Self> {
        if group_ids.is_empty() {
            return Err(Error::Empty { what: "group ids".into() });
        }
        let mut index: HashMap<usize, usize> = HashMap::new();
        let (mut ids, mut rows, mut row_group) = (Vec::new(), Vec::<Vec<usize>>::new(), Vec::new());
        for (row, &id) in group_ids.iter().enumerate() {
            let g = *index.entry(id).or_insert_with(|| {
                ids.push(id);
                rows.push(Vec::new());
                ids.len() - 1
            });
            rows[g].push(row);
            row_group.push(g);
        }
        Ok(Self { ids, rows, row_group })
    }

    /// Like [`Groups::new`], also checking that there is one id per response (`batch` = `B`).
    pub fn for_batch(group_ids: &[usize], batch: usize) -> Result<Self> {
        if group_ids.len() != batch {
            return Err(Error::GroupMismatch { expected: batch, got: group_ids.len() });
        }
        Self::new(group_ids)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Always `false` (construction rejects empty batches); present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row indices of group `g` (0-based group index, not id).
    pub fn rows(&self, g: usize) -> &[usize] {
        &self.rows[g]
    }

    /// The id of group `g`.
    pub fn id(&self, g: usize) -> usize {
        self.ids[g]
    }

    /// The group index of a row.
    pub fn group_of_row(&self, row: usize) -> usize {
        self.row_group[row]
    }

    /// Iterates over the row lists of all groups.
    pub fn iter(&self) -> impl Iterator<Item = &[usize]> {
        self.rows.iter().map(|r| r.as_slice())
    }

    /// Number of rows `B`.
    pub fn batch_size(&self) -> usize {
        self.row_group.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_rewards_go_on_last_valid_token() -> Result<()> {
        let d = Device::Cpu;
        let mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &d)?;
        let r = Rewards::from_scores(&[2.0, -1.0], &d)?;
        let tok = r.token_level(&mask)?;
        assert_eq!(tok.to_vec2::<f32>()?, vec![vec![0.0, 2.0, 0.0], vec![0.0, 0.0, -1.0]]);
        assert_eq!(Rewards::Token(tok).sequence_scores()?.to_vec1::<f32>()?, vec![2.0, -1.0]);
        let empty = Tensor::new(&[[0f32, 0.0, 0.0], [1.0, 0.0, 0.0]], &d)?;
        assert!(matches!(r.token_level(&empty), Err(Error::Empty { .. })));
        Ok(())
    }

    #[test]
    fn groups_by_id_not_position() -> Result<()> {
        let g = Groups::for_batch(&[5, 5, 1, 5], 4)?;
        assert_eq!(g.len(), 2);
        assert_eq!(g.rows(0), &[0, 1, 3]);
        assert!(matches!(Groups::for_batch(&[1, 2], 3), Err(Error::GroupMismatch { .. })));
        assert!(matches!(Groups::new(&[]), Err(Error::Empty { .. })));
        Ok(())
    }

    #[test]
    fn finish_reason_stopped() {
        assert!(FinishReason::Eos.stopped());
        assert!(FinishReason::StopString.stopped());
        assert!(!FinishReason::Length.stopped());
        assert!(!FinishReason::Aborted.stopped());
        assert!(FinishReason::Aborted.aborted());
        assert_eq!(serde_json::to_string(&FinishReason::Aborted).unwrap(), "\"aborted\"");
    }

    fn two_rows() -> Result<RolloutBatch> {
        let prompts = vec![vec![5u32, 6, 7], vec![8]];
        let seqs = vec![
            SampledSequence::new(1, vec![3], vec![-1.0], FinishReason::Aborted),
            SampledSequence::new(0, vec![1, 2], vec![-0.5, -0.25], FinishReason::Eos),
        ];
        let texts = [Prompt::new("a", "1"), Prompt::new("b", "2")];
        let parts = RolloutParts::new(&prompts, &seqs, 9).with_prompts(&texts).with_version(4);
        RolloutBatch::from_sequences(&parts, &|ids| Ok(format!("{ids:?}")), &Device::Cpu)
    }

    #[test]
    fn from_sequences_pads_masks_and_keeps_sampler_log_probs() -> Result<()> {
        let b = two_rows()?;
        b.validate()?;
        assert_eq!(b.prompt_ids.to_vec2::<u32>()?, vec![vec![9, 9, 8], vec![5, 6, 7]]);
        assert_eq!(b.prompt_mask.to_vec2::<f32>()?, vec![vec![0.0, 0.0, 1.0], vec![1.0; 3]]);
        assert_eq!(b.response_ids.to_vec2::<u32>()?, vec![vec![3, 9], vec![1, 2]]);
        let lp = vec![vec![-1.0, 0.0], vec![-0.5, -0.25]];
        assert_eq!(b.old_log_probs.to_vec2::<f32>()?, lp);
        assert_eq!(b.rollout_log_probs.as_ref().unwrap().to_vec2::<f32>()?, lp);
        assert_eq!(b.group_ids, vec![1, 0]);
        assert_eq!(b.policy_version, Some(vec![4, 4]));
        assert_eq!(b.samples[0].prompt, "b");
        assert_eq!(b.samples[0].response, "[3]");
        assert_eq!(b.samples[1].answer.as_deref(), Some("1"));
        // select / concat keep the new fields.
        let s = b.select(&[1])?;
        assert_eq!(s.rollout_log_probs.unwrap().to_vec2::<f32>()?, vec![vec![-0.5, -0.25]]);
        assert_eq!(s.policy_version, Some(vec![4]));
        let c = RolloutBatch::concat(&[b.clone(), b])?;
        assert_eq!(c.policy_version.as_ref().map(Vec::len), Some(4));
        c.validate()?;
        Ok(())
    }

    #[test]
    fn from_sequences_rejects_bad_rows() {
        let prompts = vec![vec![5u32]];
        let dec = |_: &[u32]| Ok(String::new());
        let d = Device::Cpu;
        let bad_index = [SampledSequence::new(1, vec![1], vec![-1.0], FinishReason::Eos)];
        let e = RolloutBatch::from_sequences(&RolloutParts::new(&prompts, &bad_index, 0), &dec, &d);
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
        let bad_len = [SampledSequence::new(0, vec![1, 2], vec![-1.0], FinishReason::Eos)];
        let e = RolloutBatch::from_sequences(&RolloutParts::new(&prompts, &bad_len, 0), &dec, &d);
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{e:?}");
        let nan = [SampledSequence::new(0, vec![1], vec![f32::NAN], FinishReason::Eos)];
        let e = RolloutBatch::from_sequences(&RolloutParts::new(&prompts, &nan, 0), &dec, &d);
        assert!(matches!(e, Err(Error::NonFinite { .. })), "{e:?}");
        let e = RolloutBatch::from_sequences(&RolloutParts::new(&prompts, &[], 0), &dec, &d);
        assert!(matches!(e, Err(Error::Empty { .. })), "{e:?}");
        let empty_prompt = vec![vec![]];
        let ok = [SampledSequence::new(0, vec![1], vec![-1.0], FinishReason::Eos)];
        let e = RolloutBatch::from_sequences(&RolloutParts::new(&empty_prompt, &ok, 0), &dec, &d);
        assert!(matches!(e, Err(Error::Empty { .. })), "{e:?}");
    }
}
