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
}

impl FinishReason {
    /// `true` when the model stopped by itself (EOS or stop string), as Open-Reasoner-Zero's
    /// `stop_reason == "stop"`.
    pub fn stopped(self) -> bool {
        !matches!(self, FinishReason::Length)
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
        .chain([("ref_log_probs", self.ref_log_probs.as_ref()), ("values", self.values.as_ref())])
        {
            if let Some(x) = x {
                check::shape(x, &[b, t], name)?;
            }
        }
        if self.samples.len() != b {
            return Err(Error::shape("samples", &[b], &[self.samples.len()]));
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
            group_ids: batches.iter().flat_map(|b| b.group_ids.iter().copied()).collect(),
            samples: batches.iter().flat_map(|b| b.samples.iter().cloned()).collect(),
        })
    }

    /// Response lengths `L_i` as host integers.
    pub fn response_lengths(&self) -> Result<Vec<usize>> {
        check::mask_lengths(&self.response_mask, "response_mask")
    }
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
    }
}
