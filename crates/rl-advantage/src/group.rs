//! Outcome estimators: one scalar advantage per response, from its score and its group's scores,
//! broadcast over the valid tokens of the response (`adv_it = a_i · M_it`, exactly 0 on padding).
//!
//! Sources are `verl/trainer/ppo/core_algos.py` (`CA`) at verl `b178a3cd56f5`, TRL's
//! `grpo_trainer.py` and oat's `ppo.py`; line numbers as in `docs/sources.md`.
//! Every estimator returns `returns == advantages`, as verl's outcome estimators do.

use rl_core::{AdvantageEstimator, AdvantageInput, Advantages, Device, Error, Groups, Result};
use serde::{Deserialize, Serialize};

use crate::host::{
    self, GroupStat, Host, Moments, Singleton, StdKind, Whiten, Whitening, batch_std, group_stats,
    lengths, non_negative, nonempty_lengths, outcome_advantages,
};

/// Everything an outcome estimator reads, on the host.
pub(crate) struct Outcome<'a> {
    pub mask: Host<'a>,
    pub b: usize,
    pub t: usize,
    /// `r_i`, finite.
    pub scores: Vec<f64>,
    pub groups: Groups,
    pub device: Device,
}

impl<'a> Outcome<'a> {
    /// Checks shapes, group ids and finiteness, and reads the scores.
    pub(crate) fn new(input: &AdvantageInput<'a>) -> Result<Self> {
        let (b, t) = host::batch_dims(input)?;
        let groups = input.groups()?;
        let scores = host::scores(input.rewards, b, t)?;
        Ok(Self {
            mask: Host::new(input.response_mask)?,
            b,
            t,
            scores,
            groups,
            device: input.response_mask.device().clone(),
        })
    }

    /// The group statistic of row `i`.
    fn stat<'s>(&self, stats: &'s [GroupStat], i: usize) -> &'s GroupStat {
        &stats[self.groups.group_of_row(i)]
    }

    /// `a_i = f(i, r_i)` broadcast over the mask.
    fn finish(&self, f: impl Fn(usize, f64) -> f64) -> Result<Advantages> {
        let a: Vec<f64> = self.scores.iter().enumerate().map(|(i, &r)| f(i, r)).collect();
        outcome_advantages(&a, self.mask.as_slice(), self.t, &self.device)
    }

    /// Row lengths `L_i` (mask checked to be 0/1).
    fn lengths(&self) -> Result<Vec<usize>> {
        lengths(self.mask.as_slice(), self.b, self.t)
    }
}

/// `x / den`, with an exact 0 when `x` is 0 (a zero-variance group under `eps = 0` gives 0, not NaN).
fn ratio(x: f64, den: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x / den }
}

// ------------------------------------------------------------------------------------------------

/// GRPO (DeepSeekMath): `a_i = (r_i − mean_g) / (std_g + eps)` over the responses of `i`'s group.
///
/// * Singleton group: [`Singleton::Reward`] (verl) gives mean 0, std 1, so `a = r / (1 + eps)`;
///   [`Singleton::Zero`] gives 0.
/// * Zero-variance group (all rewards equal): `a = 0` exactly.
/// * With `std_floor = Some(f)`, the std is `max(std_g, f)` before `eps` is added (verl's
///   vectorised GRPO floors at `√1e-6 = 1e-3`, NeMo-RL uses 1e-3) so near-constant groups cannot
///   blow up.
///
/// ```
/// use rl_advantage::Grpo;
/// use rl_core::{AdvantageEstimator, AdvantageInput, Device, Rewards, Tensor};
///
/// let dev = Device::Cpu;
/// let rewards = Rewards::from_scores(&[1.0, 0.0, 0.0, 1.0], &dev)?;
/// let mask = Tensor::new(&[[1f32, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]], &dev)?;
/// let out = Grpo::default().estimate(&AdvantageInput::new(&rewards, &mask, &[0, 0, 1, 1]))?;
/// let a = out.advantages.to_vec2::<f32>()?;
/// // unbiased std of {1, 0} is 1/√2; padding stays exactly 0
/// assert!((a[0][0] - 0.5f32.sqrt()).abs() < 1e-5);
/// assert_eq!(a[1][1], 0.0);
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grpo {
    /// Added to the std. Default 1e-6 (verl `CA L267-330`); TRL 1e-4, oat 1e-8, OpenRLHF 1e-9.
    pub eps: f64,
    /// Std flavour. Default unbiased (`torch.std`, verl/TRL/oat/OpenRLHF).
    pub std: StdKind,
    /// Optional lower bound of the std (applied before `eps`). Default `None` (verl loop version).
    pub std_floor: Option<f64>,
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl Default for Grpo {
    /// verl `compute_grpo_outcome_advantage` (`CA L267-330`): eps 1e-6, unbiased std, no floor.
    fn default() -> Self {
        Self { eps: 1e-6, std: StdKind::Unbiased, std_floor: None, singleton: Singleton::Reward }
    }
}

impl Grpo {
    /// verl (`CA L267-330`, `norm_adv_by_std_in_grpo=True`): the default.
    pub fn verl() -> Self {
        Self::default()
    }

    /// verl's `grpo_vectorized` (`CA L334-357`, `verl/utils/groupwise.py` L164-226): std floored at
    /// `√1e-6 = 1e-3`.
    pub fn verl_vectorized() -> Self {
        Self { std_floor: Some(1e-3), ..Self::default() }
    }

    /// TRL `scale_rewards="group"` (`grpo_trainer.py` L2683-2730): eps 1e-4, unbiased std; a
    /// singleton group is its own mean (TRL would give NaN; here 0).
    pub fn trl() -> Self {
        Self { eps: 1e-4, singleton: Singleton::Zero, ..Self::default() }
    }

    /// oat / understand-r1-zero `critic_type=grpo` (`oat/algorithms/ppo.py` L344-358): eps 1e-8.
    pub fn oat() -> Self {
        Self { eps: 1e-8, singleton: Singleton::Zero, ..Self::default() }
    }

    /// OpenRLHF `group_norm` (`experience_maker.py` L238-328): eps 1e-9.
    pub fn openrlhf() -> Self {
        Self { eps: 1e-9, singleton: Singleton::Zero, ..Self::default() }
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        non_negative("grpo.eps", self.eps)?;
        if let Some(f) = self.std_floor {
            non_negative("grpo.std_floor", f)?;
        }
        Ok(())
    }
}

impl AdvantageEstimator for Grpo {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        self.validate()?;
        let o = Outcome::new(input)?;
        let stats = group_stats(&o.scores, &o.groups, self.std, self.singleton);
        let floor = self.std_floor.unwrap_or(0.0);
        o.finish(|i, r| {
            let s = o.stat(&stats, i);
            ratio(r - s.mean, s.std.max(floor) + self.eps)
        })
    }
}

// ------------------------------------------------------------------------------------------------

/// Dr. GRPO ("Understanding R1-Zero-Like Training", arXiv 2503.20783): `a_i = r_i − mean_g`, no
/// std division (verl `norm_adv_by_std_in_grpo=False`, `CA L267-330`; oat `critic_type=drgrpo`;
/// TRL `scale_rewards="none"`; OpenRLHF `dr_grpo`).
///
/// Singleton group: `a = r` ([`Singleton::Reward`], verl) or 0 ([`Singleton::Zero`]).
/// Zero-variance group: 0. Advantages sum to 0 within every group of two or more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrGrpo {
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl AdvantageEstimator for DrGrpo {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let o = Outcome::new(input)?;
        let stats = group_stats(&o.scores, &o.groups, StdKind::Unbiased, self.singleton);
        o.finish(|i, r| r - o.stat(&stats, i).mean)
    }
}

// ------------------------------------------------------------------------------------------------

/// Batch-std scaling (TRL `scale_rewards="batch"`, `grpo_trainer.py` L2683-2730):
/// `a_i = (r_i − mean_g) / (std_batch + eps)` with the std of all `B` rewards.
///
/// Singleton group: 0 ([`Singleton::Zero`], TRL's group mean) by default. Zero-variance group: 0.
/// A batch of one response has std 0 (as TRL).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchStd {
    /// Added to the batch std. Default 1e-4 (TRL).
    pub eps: f64,
    /// Std flavour. Default unbiased (TRL `rewards.std()`).
    pub std: StdKind,
    /// Singleton groups. Default [`Singleton::Zero`] (TRL).
    pub singleton: Singleton,
}

impl Default for BatchStd {
    /// TRL: eps 1e-4, unbiased batch std, singleton → 0.
    fn default() -> Self {
        Self { eps: 1e-4, std: StdKind::Unbiased, singleton: Singleton::Zero }
    }
}

impl AdvantageEstimator for BatchStd {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        non_negative("batch_std.eps", self.eps)?;
        let o = Outcome::new(input)?;
        let stats = group_stats(&o.scores, &o.groups, self.std, self.singleton);
        let den = batch_std(&o.scores, self.std) + self.eps;
        o.finish(|i, r| ratio(r - o.stat(&stats, i).mean, den))
    }

    /// The std is the batch's.
    fn batch_statistics(&self) -> bool {
        true
    }
}

// ------------------------------------------------------------------------------------------------

/// RLOO (leave-one-out baseline): `a_i = r_i − mean_{j≠i} r_j = (r_i − mean_g)·n/(n−1)`
/// (verl `compute_rloo_outcome_advantage`, `CA L477-525`; TRL RLOOTrainer; OpenRLHF `rloo`).
///
/// Singleton group: `a = r` ([`Singleton::Reward`], verl loop version) or 0 ([`Singleton::Zero`],
/// verl `rloo_vectorized`, `CA L721-755`). Zero-variance group: 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rloo {
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl AdvantageEstimator for Rloo {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let o = Outcome::new(input)?;
        let stats = group_stats(&o.scores, &o.groups, StdKind::Unbiased, self.singleton);
        o.finish(|i, r| {
            let s = o.stat(&stats, i);
            if s.n < 2 {
                return r - s.mean;
            }
            let k = s.n as f64 / (s.n - 1) as f64;
            r * k - s.mean * k
        })
    }
}

// ------------------------------------------------------------------------------------------------

/// REINFORCE++-baseline (arXiv 2501.03262; verl `CA L425-473`, OpenRLHF `reinforce_baseline`):
/// `s_i = r_i − mean_g`, broadcast over the valid tokens, then whitened with the statistics of all
/// valid tokens of the batch (each response weighs `L_i`).
///
/// Singleton group: `s = r` ([`Singleton::Reward`], verl). Zero-variance group: `s = 0` (its
/// tokens still move with the batch mean after whitening). Needs at least two valid tokens in
/// the batch ([`Whiten::Unbiased`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforcePlusPlusBaseline {
    /// Batch whitening. Default [`Whiten::Unbiased`] (verl `masked_whiten`); OpenRLHF uses
    /// [`Whiten::Population`].
    pub whiten: Whiten,
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl AdvantageEstimator for ReinforcePlusPlusBaseline {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let o = Outcome::new(input)?;
        let lens = o.lengths()?;
        let stats = group_stats(&o.scores, &o.groups, StdKind::Unbiased, self.singleton);
        let s: Vec<f64> =
            o.scores.iter().enumerate().map(|(i, &r)| r - o.stat(&stats, i).mean).collect();
        let m = s
            .iter()
            .zip(&lens)
            .fold(Moments::default(), |m, (&s, &l)| m.merge(Moments::constant(s, l as f64)));
        let m = if self.whiten == Whiten::None { m } else { input.reduce_moments(m)? };
        match m.whitening(self.whiten)? {
            Some((shift, scale)) => o.finish(|i, _| (s[i] - shift) * scale),
            None => o.finish(|i, _| s[i]),
        }
    }

    /// Whitened over the batch (unless `whiten` is `None`).
    fn batch_statistics(&self) -> bool {
        self.whiten != Whiten::None
    }

    /// The whitening moments go through [`AdvantageInput::reduce_moments`].
    fn reduces_batch_statistics(&self) -> bool {
        true
    }
}

// ------------------------------------------------------------------------------------------------

/// OPO (arXiv 2505.23585; verl `CA L529-579`): length-weighted group baseline
/// `b_g = Σ_i L_i r_i / Σ_i L_i`, `a_i = r_i − b_g`.
///
/// Singleton group: `a = r` ([`Singleton::Reward`], verl's baseline 0) or 0. Zero-variance group:
/// 0. A response with no valid token is an error ([`Error::Empty`]): its length is its weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Opo {
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl AdvantageEstimator for Opo {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let o = Outcome::new(input)?;
        let lens = nonempty_lengths(o.mask.as_slice(), o.b, o.t, "opo")?;
        let baseline: Vec<f64> = o
            .groups
            .iter()
            .map(|rows| {
                let first = o.scores[rows[0]];
                match (rows.len(), self.singleton) {
                    (1, Singleton::Reward) => 0.0,
                    _ if rows.iter().all(|&i| o.scores[i] == first) => first,
                    _ => {
                        let w: f64 = rows.iter().map(|&i| lens[i] as f64).sum();
                        rows.iter().map(|&i| lens[i] as f64 * o.scores[i]).sum::<f64>() / w
                    }
                }
            })
            .collect();
        o.finish(|i, r| r - baseline[o.groups.group_of_row(i)])
    }
}

// ------------------------------------------------------------------------------------------------

/// GPG (Group Policy Gradient; verl `CA L658-717`): `a_i = α·(r_i − mean_g)` with the batch-level
/// `α = B / max(#{i : r_i ≠ 0}, 1)` (verl's `f_norm` is fixed at 1).
///
/// Singleton group: `a = α·r` ([`Singleton::Reward`], verl) or 0. Zero-variance group: 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gpg {
    /// Singleton groups. Default [`Singleton::Reward`] (verl).
    pub singleton: Singleton,
}

impl AdvantageEstimator for Gpg {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        let o = Outcome::new(input)?;
        let nonzero = o.scores.iter().filter(|r| **r != 0.0).count().max(1);
        let alpha = o.b as f64 / nonzero as f64;
        let stats = group_stats(&o.scores, &o.groups, StdKind::Unbiased, self.singleton);
        o.finish(|i, r| alpha * (r - o.stat(&stats, i).mean))
    }

    /// `α` counts the non-zero rewards of the whole batch.
    fn batch_statistics(&self) -> bool {
        true
    }
}

// ------------------------------------------------------------------------------------------------

/// GRPO pass@k (arXiv 2503.19595; verl `CA L361-419`): in each group only the best response gets
/// a non-zero advantage, `r_max − r_second` (divided by `std_g + eps` when `norm_by_std`).
///
/// Every group needs at least two responses ([`Error::InsufficientData`] otherwise, as verl
/// raises). Zero-variance group (or a tie for the best): 0 everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoPassK {
    /// Divide by the group std + eps. Default true (verl `norm_adv_by_std_in_grpo`).
    pub norm_by_std: bool,
    /// Added to the std. Default 1e-6 (verl).
    pub eps: f64,
    /// Std flavour. Default unbiased (`torch.std`).
    pub std: StdKind,
}

impl Default for GrpoPassK {
    /// verl: std-normalised, eps 1e-6, unbiased std.
    fn default() -> Self {
        Self { norm_by_std: true, eps: 1e-6, std: StdKind::Unbiased }
    }
}

impl AdvantageEstimator for GrpoPassK {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        non_negative("grpo_passk.eps", self.eps)?;
        let o = Outcome::new(input)?;
        if let Some(rows) = o.groups.iter().find(|rows| rows.len() < 2) {
            return Err(Error::InsufficientData {
                what: format!(
                    "grpo_passk group of row {} (pass@k needs two responses per group)",
                    rows[0]
                ),
                needed: 2,
                got: rows.len(),
            });
        }
        let stats = group_stats(&o.scores, &o.groups, self.std, Singleton::Reward);
        let mut a = vec![0f64; o.b];
        for (g, rows) in o.groups.iter().enumerate() {
            let (mut best, mut second) = (rows[0], rows[1]);
            if o.scores[second] > o.scores[best] {
                std::mem::swap(&mut best, &mut second);
            }
            for &i in &rows[2..] {
                if o.scores[i] > o.scores[best] {
                    (second, best) = (best, i);
                } else if o.scores[i] > o.scores[second] {
                    second = i;
                }
            }
            let gap = o.scores[best] - o.scores[second];
            a[best] = if self.norm_by_std { ratio(gap, stats[g].std + self.eps) } else { gap };
        }
        o.finish(|i, _| a[i])
    }
}
