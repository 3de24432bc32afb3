//! verl's optimal token baseline (OTB): a per-timestep baseline for each group, weighted by a
//! cumulative proxy of the policy-gradient variance of each response's path.
//!
//! Source: verl `compute_optimal_token_baseline_advantage`, `verl/trainer/ppo/core_algos.py`
//! L758-873 at verl `b178a3cd56f5` (registry name `optimal_token_baseline`).

use rl_core::{AdvantageEstimator, AdvantageInput, Advantages, Error, Result, check};
use serde::{Deserialize, Serialize};

use crate::host::{self, Host, TokenRewards, finite_on_mask, non_negative, tensor};

/// Optimal token baseline (verl `compute_optimal_token_baseline_advantage`, `CA L758-873`).
///
/// For response `i` of group `g` at position `t` (`M` the mask, `π_it = exp(log_probs_it)`,
/// `S_it = sum_pi_squared_it`, `ρ_it` the optional rollout IS weights):
///
/// * return-to-go `G_it = Σ_{k≥t} r_ik M_ik` (an outcome score sits on the last valid token);
/// * path-variance proxy `W_it = Σ_{k≤t} w_ik M_ik` with `w_ik = (1 − 2π_ik + S_ik)·ρ_ik²`
///   (`ρ = 1` without IS weights);
/// * baseline `B_gt = Σ_{j∈g} G_jt W_jt M_jt / (Σ_{j∈g} W_jt M_jt + epsilon)`, the same for every
///   response of the group; a group of one response has no baseline (`B = 0`, so `A = G`);
/// * with `handle_zero_tail`, when one response of a group is strictly the longest, its
///   baseline is 0 from position `L_2nd` on (`L_2nd` the second-longest length of the group):
///   no other response of the group reaches those positions;
/// * `A_it = (G_it − B_gt)·M_it`; returns are `G_it·M_it`.
///
/// Advantages and returns are exactly 0 on masked positions (verl returns `G` unmasked, which
/// is non-zero on interior masked tokens). Needs [`AdvantageInput::policy_stats`]: the sampling
/// policy's `(B, T)` log-probs and `Σ_v π(v)²`, finite on valid tokens (padding may hold
/// anything). No whitening.
///
/// ```
/// use rl_advantage::OptimalTokenBaseline;
/// use rl_core::{AdvantageEstimator, AdvantageInput, Device, PolicyStats, Rewards, Tensor};
///
/// let dev = Device::Cpu;
/// let rewards = Rewards::from_scores(&[1.0, 0.0], &dev)?;
/// let mask = Tensor::new(&[[1f32, 1.0], [1.0, 1.0]], &dev)?;
/// // π = 1 and Σπ² = 1 give w = 0: no variance, so the baseline is 0 / ε = 0.
/// let log_probs = Tensor::zeros((2, 2), rl_core::DType::F32, &dev)?;
/// let spp = Tensor::ones((2, 2), rl_core::DType::F32, &dev)?;
/// let stats = PolicyStats { log_probs: &log_probs, sum_pi_squared: &spp, is_weights: None };
/// let input = AdvantageInput::new(&rewards, &mask, &[0, 0]).with_policy_stats(stats);
/// let out = OptimalTokenBaseline::default().estimate(&input)?;
/// assert_eq!(out.advantages.to_vec2::<f32>()?, vec![vec![1.0, 1.0], vec![0.0, 0.0]]);
/// # Ok::<(), rl_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimalTokenBaseline {
    /// Zero the baseline of a group's single longest response past the second-longest length.
    /// Default `false` (verl `handle_zero_tail=False`, `CA L766`).
    pub handle_zero_tail: bool,
    /// Added to the baseline's denominator. Default 1e-8 (verl `epsilon`, `CA L767`).
    pub epsilon: f64,
}

impl Default for OptimalTokenBaseline {
    /// verl: no zero tail, `epsilon = 1e-8`.
    fn default() -> Self {
        Self { handle_zero_tail: false, epsilon: 1e-8 }
    }
}

impl OptimalTokenBaseline {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        non_negative("optimal_token_baseline.epsilon", self.epsilon)
    }
}

impl AdvantageEstimator for OptimalTokenBaseline {
    fn estimate(&self, input: &AdvantageInput<'_>) -> Result<Advantages> {
        self.validate()?;
        let (b, t) = host::batch_dims(input)?;
        let groups = input.groups()?;
        let mask = Host::new(input.response_mask)?;
        let m = mask.as_slice();
        let lens = host::lengths(m, b, t)?;
        let stats = input.policy_stats.ok_or_else(|| Error::Empty {
            what: "AdvantageInput::policy_stats (the optimal token baseline needs the sampling \
                   policy's log-probs and sum of squared probabilities)"
                .into(),
        })?;
        let companion = |x: &rl_core::Tensor, what: &str| -> Result<Vec<f64>> {
            check::shape(x, &[b, t], what)?;
            let h = Host::new(x)?;
            finite_on_mask(h.as_slice(), m, what)?;
            Ok(h.as_slice().iter().map(|&v| v as f64).collect())
        };
        let lp = companion(stats.log_probs, "log_probs")?;
        let spp = companion(stats.sum_pi_squared, "sum_pi_squared")?;
        let is_w = stats.is_weights.map(|w| companion(w, "rollout_is_weights")).transpose()?;
        let rewards = TokenRewards::new(input.rewards, m, b, t)?;
        let r = rewards.view()?;

        // G (return-to-go, f64) and W (cumulative variance proxy), row by row.
        let (mut g, mut w) = (vec![0f64; b * t], vec![0f64; b * t]);
        for i in 0..b {
            let (row, mrow) = (r.row(i, t), &m[i * t..(i + 1) * t]);
            let mut acc = 0f64;
            for j in (0..t).rev() {
                if mrow[j] != 0.0 {
                    acc += row.at(j) as f64;
                }
                g[i * t + j] = acc;
            }
            let mut cum = 0f64;
            for (j, &mj) in mrow.iter().enumerate() {
                let k = i * t + j;
                if mj != 0.0 {
                    let rho2 = is_w.as_ref().map_or(1.0, |w| w[k] * w[k]);
                    cum += (1.0 - 2.0 * lp[k].exp() + spp[k]) * rho2;
                }
                w[k] = cum;
            }
        }

        let mut base = vec![0f64; b * t];
        for rows in groups.iter() {
            if rows.len() < 2 {
                continue;
            }
            let (mut num, mut den) = (vec![0f64; t], vec![0f64; t]);
            for &i in rows {
                for j in 0..t {
                    let k = i * t + j;
                    if m[k] != 0.0 {
                        num[j] += g[k] * w[k];
                        den[j] += w[k];
                    }
                }
            }
            let baseline: Vec<f64> =
                num.iter().zip(&den).map(|(n, d)| n / (d + self.epsilon)).collect();
            for &i in rows {
                base[i * t..(i + 1) * t].copy_from_slice(&baseline);
            }
            if self.handle_zero_tail {
                let mut sorted: Vec<usize> = rows.iter().map(|&i| lens[i]).collect();
                sorted.sort_unstable();
                let (max, second) = (sorted[sorted.len() - 1], sorted[sorted.len() - 2]);
                if max > second {
                    let longest = rows.iter().find(|&&i| lens[i] == max).copied();
                    if let Some(i) = longest {
                        base[i * t + second..(i + 1) * t].fill(0.0);
                    }
                }
            }
        }

        let (mut adv, mut ret) = (vec![0f32; b * t], vec![0f32; b * t]);
        for k in 0..b * t {
            if m[k] != 0.0 {
                adv[k] = (g[k] - base[k]) as f32;
                ret[k] = g[k] as f32;
            }
        }
        // A degenerate `epsilon = 0` with a zero-variance group gives `0/0`: a typed error.
        check::finite_slice(&adv, "optimal token baseline advantages")?;
        let device = input.response_mask.device();
        Ok(Advantages {
            advantages: tensor(adv, b, t, device)?,
            returns: tensor(ret, b, t, device)?,
        })
    }
}
