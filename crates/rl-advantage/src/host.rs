//! Host-side kernels shared by every estimator: zero-copy access to `(B, T)` f32 tensors, row
//! lengths, per-response broadcast, grouped statistics and batch whitening.
//!
//! Estimators compute on host slices (one tight loop per row, rows in parallel with rayon) and
//! build each `(B, T)` output tensor once.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use rl_core::{AdvantageInput, Advantages, Error, Groups, Result, Rewards, check};
use serde::{Deserialize, Serialize};

pub(crate) use rl_core::host::HostF32 as Host;

/// `(B, T)` of the response mask.
pub(crate) fn batch_dims(input: &AdvantageInput<'_>) -> Result<(usize, usize)> {
    let (b, t) = check::dims2(input.response_mask, "response_mask")?;
    if b == 0 {
        return Err(Error::Empty { what: "batch".into() });
    }
    Ok((b, t))
}

/// Row lengths `L_i = Σ_t M_it` of a row-major `(B, T)` mask, checking that it holds only 0 and 1
/// ([`check::mask_rows`]: [`Error::InvalidMask`] names the offending row and column).
pub(crate) fn lengths(mask: &[f32], b: usize, t: usize) -> Result<Vec<usize>> {
    Ok(check::mask_rows(mask, b, t, "response_mask")?.lengths)
}

/// One past the last non-zero element of a mask row (0 for an empty row): everything after it
/// is padding, which the kernels leave at the zeros the output was allocated with.
#[inline]
pub(crate) fn row_end(m: &[f32]) -> usize {
    m.iter().rposition(|&x| x != 0.0).map_or(0, |e| e + 1)
}

/// Like [`lengths`], and every row must hold at least one valid token.
pub(crate) fn nonempty_lengths(mask: &[f32], b: usize, t: usize, who: &str) -> Result<Vec<usize>> {
    let lens = lengths(mask, b, t)?;
    if let Some(i) = lens.iter().position(|&l| l == 0) {
        return Err(Error::Empty { what: format!("response row {i} ({who} needs its length)") });
    }
    Ok(lens)
}

/// Builds a `(B, T)` f32 tensor from row-major host data.
pub(crate) fn tensor(data: Vec<f32>, b: usize, t: usize, device: &Device) -> Result<Tensor> {
    let out = Tensor::from_vec(data, (b, t), &Device::Cpu)?;
    Ok(if device.is_cpu() { out } else { out.to_device(device)? })
}

/// `out[i, t] = a_i · M_it` as a `(B, T)` f32 tensor (exactly 0.0 on padding).
pub(crate) fn broadcast(a: &[f64], mask: &[f32], t: usize, device: &Device) -> Result<Tensor> {
    let b = a.len();
    let mut out = vec![0f32; b * t];
    if t > 0 {
        out.par_chunks_mut(t).zip(mask.par_chunks(t)).zip(a.par_iter()).for_each(|((o, m), &a)| {
            let (a, end) = (a as f32, row_end(m));
            for (o, &m) in o[..end].iter_mut().zip(&m[..end]) {
                *o = a * m;
            }
        });
    }
    tensor(out, b, t, device)
}

/// Advantages broadcast from one scalar per response; returns are the advantages (verl's outcome
/// estimators return `(scores, scores)`).
pub(crate) fn outcome_advantages(
    a: &[f64],
    mask: &[f32],
    t: usize,
    device: &Device,
) -> Result<Advantages> {
    let adv = broadcast(a, mask, t, device)?;
    Ok(Advantages { returns: adv.clone(), advantages: adv })
}

/// The per-response scores `r_i` (`(B,)`), checked finite. Token-level rewards are summed over the
/// whole row, as verl's `token_level_rewards.sum(-1)`.
pub(crate) fn scores(rewards: &Rewards, b: usize, t: usize) -> Result<Vec<f64>> {
    let s: Vec<f64> = match rewards {
        Rewards::Sequence(s) => {
            check::shape(s, &[b], "sequence rewards")?;
            Host::new(s)?.as_slice().iter().map(|&x| x as f64).collect()
        }
        Rewards::Token(r) => {
            check::shape(r, &[b, t], "token rewards")?;
            let host = Host::new(r)?;
            let r = host.as_slice();
            if t == 0 {
                vec![0.0; b]
            } else {
                let sums: Vec<f64> =
                    r.par_chunks(t).map(|row| row.iter().map(|&x| x as f64).sum()).collect();
                if let Some(i) = sums.iter().position(|s| !s.is_finite()) {
                    check::finite_slice(&r[i * t..(i + 1) * t], "token rewards")
                        .map_err(|e| reindex(e, i * t))?;
                }
                sums
            }
        }
    };
    check::finite_slice(&s, "rewards")?;
    Ok(s)
}

fn reindex(e: Error, offset: usize) -> Error {
    match e {
        Error::NonFinite { what, index, value } => {
            Error::NonFinite { what, index: index + offset, value }
        }
        e => e,
    }
}

/// Checks that every element of `v` is finite where `mask` is 1 (padding may hold anything).
pub(crate) fn finite_on_mask(v: &[f32], mask: &[f32], what: &str) -> Result<()> {
    match v.par_iter().zip(mask.par_iter()).position_first(|(x, m)| *m != 0.0 && !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.into(), index, value: v[index] as f64 }),
        None => Ok(()),
    }
}

/// Which standard deviation a group (or batch) statistic uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdKind {
    /// Bessel-corrected `sqrt(Σ(r − mean)² / (n − 1))`: `torch.std` as used by verl, TRL
    /// (`nanstd`), oat and OpenRLHF.
    #[default]
    Unbiased,
    /// Population `sqrt(Σ(r − mean)² / n)`: `np.std` as in Open-Reasoner-Zero's GRPO variant.
    Biased,
}

/// What a group of a single response gets as its baseline and scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Singleton {
    /// verl's loop estimators: mean 0 and std 1, so the response keeps its raw reward
    /// (`a = r` or `r / (1 + ε)` when divided by the std).
    #[default]
    Reward,
    /// The response is its own baseline: advantage exactly 0 (TRL's group mean; verl's vectorised
    /// RLOO).
    Zero,
}

/// Mean and spread of one group's rewards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GroupStat {
    pub n: usize,
    pub mean: f64,
    /// Standard deviation of the requested kind (0 for a group of equal rewards).
    pub std: f64,
}

/// Per-group statistics. A singleton group gets mean 0 / std 1 (`Singleton::Reward`, verl) or its
/// own reward / std 0 (`Singleton::Zero`). A group of equal rewards gets its value as the mean
/// exactly (so `r − mean` is exactly 0) and std 0.
pub(crate) fn group_stats(
    r: &[f64],
    groups: &Groups,
    kind: StdKind,
    singleton: Singleton,
) -> Vec<GroupStat> {
    groups
        .iter()
        .map(|rows| {
            let n = rows.len();
            if n == 1 {
                return match singleton {
                    Singleton::Reward => GroupStat { n, mean: 0.0, std: 1.0 },
                    Singleton::Zero => GroupStat { n, mean: r[rows[0]], std: 0.0 },
                };
            }
            let first = r[rows[0]];
            if rows.iter().all(|&i| r[i] == first) {
                return GroupStat { n, mean: first, std: 0.0 };
            }
            let mean = rows.iter().map(|&i| r[i]).sum::<f64>() / n as f64;
            let ss = rows.iter().map(|&i| (r[i] - mean).powi(2)).sum::<f64>();
            let den = match kind {
                StdKind::Unbiased => (n - 1) as f64,
                StdKind::Biased => n as f64,
            };
            GroupStat { n, mean, std: (ss / den).sqrt() }
        })
        .collect()
}

/// Standard deviation of all `B` rewards (0 for fewer than two, as TRL's batch scaling).
pub(crate) fn batch_std(r: &[f64], kind: StdKind) -> f64 {
    let n = r.len();
    if n < 2 {
        return 0.0;
    }
    let mean = r.iter().sum::<f64>() / n as f64;
    let ss = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    let den = match kind {
        StdKind::Unbiased => (n - 1) as f64,
        StdKind::Biased => n as f64,
    };
    (ss / den).sqrt()
}

/// How advantages are normalised with statistics of all valid tokens of the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whiten {
    /// No normalisation.
    None,
    /// verl `masked_whiten` (`verl/utils/torch_functional.py` L322-339): `(A − mean)·rsqrt(var + 1e-8)`
    /// with the unbiased variance of the valid tokens. Needs at least two valid tokens.
    #[default]
    Unbiased,
    /// Open-Reasoner-Zero (`orz/ppo/utils.py` L293-322) and OpenRLHF:
    /// `(A − mean)·rsqrt(max(var, 1e-8))` with the population variance. Needs one valid token.
    Population,
}

pub(crate) use rl_core::masked::Moments;

/// Whitening of [`Moments`] (a local trait: the moments live in rl-core, the kinds here).
pub(crate) trait Whitening {
    /// `(shift, scale)` so that whitened = `(x − shift)·scale`, or `None` for [`Whiten::None`].
    fn whitening(self, kind: Whiten) -> Result<Option<(f64, f64)>>;
}

impl Whitening for Moments {
    fn whitening(self, kind: Whiten) -> Result<Option<(f64, f64)>> {
        let n = self.n as usize;
        match kind {
            Whiten::None => Ok(None),
            Whiten::Unbiased if n < 2 => Err(Error::InsufficientData {
                what: "advantage whitening (unbiased)".into(),
                needed: 2,
                got: n,
            }),
            Whiten::Population if n < 1 => Err(Error::InsufficientData {
                what: "advantage whitening".into(),
                needed: 1,
                got: n,
            }),
            Whiten::Unbiased => Ok(Some((
                self.mean,
                1.0 / (self.m2 / (self.n - 1.0) + rl_core::masked::EPS).sqrt(),
            ))),
            Whiten::Population => {
                Ok(Some((self.mean, 1.0 / (self.m2 / self.n).max(rl_core::masked::EPS).sqrt())))
            }
        }
    }
}

/// Runs `scan(row_index, mask_row, out_a, out_r)` over every row in parallel (the kernel writes
/// per-token advantages into `out_a` and returns into `out_r`, both exactly 0 on padding; the
/// three slices stop at the row's last valid token, trailing padding stays 0), then
/// whitens the advantages over the valid tokens of the whole batch.
pub(crate) fn scan_rows<F>(
    input: &AdvantageInput<'_>,
    mask: &[f32],
    b: usize,
    t: usize,
    whiten: Whiten,
    scan: F,
) -> Result<Advantages>
where
    F: Fn(usize, &[f32], &mut [f32], &mut [f32]) -> Result<()> + Sync,
{
    let (mut adv, mut ret) = (vec![0f32; b * t], vec![0f32; b * t]);
    if t > 0 {
        let moments = adv
            .par_chunks_mut(t)
            .zip(ret.par_chunks_mut(t))
            .zip(mask.par_chunks(t))
            .enumerate()
            .map(|(i, ((a, r), m))| {
                let end = row_end(m);
                let (a, r, m) = (&mut a[..end], &mut r[..end], &m[..end]);
                scan(i, m, a, r)?;
                Ok::<_, Error>(if whiten == Whiten::None {
                    Moments::default()
                } else {
                    Moments::of_masked(a, m)
                })
            })
            .try_reduce(Moments::default, |x, y| Ok(x.merge(y)))?;
        // Under data parallelism the statistics are those of every rank's rows.
        let moments =
            if whiten == Whiten::None { moments } else { input.reduce_moments(moments)? };
        if let Some((shift, scale)) = moments.whitening(whiten)? {
            adv.par_chunks_mut(t).zip(mask.par_chunks(t)).for_each(|(a, m)| {
                let end = row_end(m);
                for (a, &m) in a[..end].iter_mut().zip(&m[..end]) {
                    *a = if m != 0.0 { ((*a as f64 - shift) * scale) as f32 } else { 0.0 };
                }
            });
        }
    } else if whiten != Whiten::None {
        input.reduce_moments(Moments::default())?.whitening(whiten)?;
    }
    let device = input.response_mask.device();
    Ok(Advantages { advantages: tensor(adv, b, t, device)?, returns: tensor(ret, b, t, device)? })
}

/// The reward of each token of one row: dense token-level rewards, or an outcome score on the
/// row's last valid token (verl's reward managers).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowRewards<'a> {
    Dense(&'a [f32]),
    Last { score: f32, at: usize },
}

impl RowRewards<'_> {
    #[inline]
    pub(crate) fn at(&self, t: usize) -> f32 {
        match self {
            RowRewards::Dense(r) => r[t],
            RowRewards::Last { score, at } => {
                if t == *at {
                    *score
                } else {
                    0.0
                }
            }
        }
    }
}

/// Token-level rewards on the host, for the token-level estimators (GAE, REINFORCE++, ReMax).
pub(crate) enum TokenRewards<'a> {
    Dense(Host<'a>),
    Outcome { scores: Vec<f32>, last: Vec<usize> },
}

impl<'a> TokenRewards<'a> {
    /// Checks shapes and finiteness (on valid tokens); sequence scores need a non-empty row.
    pub(crate) fn new(rewards: &'a Rewards, mask: &[f32], b: usize, t: usize) -> Result<Self> {
        match rewards {
            Rewards::Token(r) => {
                check::shape(r, &[b, t], "token rewards")?;
                let host = Host::new(r)?;
                finite_on_mask(host.as_slice(), mask, "token rewards")?;
                Ok(TokenRewards::Dense(host))
            }
            Rewards::Sequence(s) => {
                check::shape(s, &[b], "sequence rewards")?;
                let scores = Host::new(s)?.as_slice().to_vec();
                check::finite_slice(&scores, "rewards")?;
                let last: Vec<Option<usize>> = (0..b)
                    .into_par_iter()
                    .map(|i| mask[i * t..(i + 1) * t].iter().rposition(|m| *m != 0.0))
                    .collect();
                let last = last
                    .into_iter()
                    .enumerate()
                    .map(|(i, at)| {
                        at.ok_or_else(|| Error::Empty {
                            what: format!("response row {i} (no valid token to hold its reward)"),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(TokenRewards::Outcome { scores, last })
            }
        }
    }

    /// A view usable from the parallel row kernels.
    pub(crate) fn view(&self) -> Result<TokenRewardsView<'_>> {
        Ok(match self {
            TokenRewards::Dense(h) => TokenRewardsView::Dense(h.as_slice()),
            TokenRewards::Outcome { scores, last } => TokenRewardsView::Outcome { scores, last },
        })
    }
}

/// A `Sync` view of [`TokenRewards`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum TokenRewardsView<'a> {
    Dense(&'a [f32]),
    Outcome { scores: &'a [f32], last: &'a [usize] },
}

impl<'a> TokenRewardsView<'a> {
    /// The rewards of row `i` (of length `t`).
    #[inline]
    pub(crate) fn row(&self, i: usize, t: usize) -> RowRewards<'a> {
        match self {
            TokenRewardsView::Dense(r) => RowRewards::Dense(&r[i * t..(i + 1) * t]),
            TokenRewardsView::Outcome { scores, last } => {
                RowRewards::Last { score: scores[i], at: last[i] }
            }
        }
    }
}

/// Checks that a config value is a finite number `>= 0`.
pub(crate) fn non_negative(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(field, format!("must be a finite number >= 0, got {v}")))
    }
}

/// Checks that a config value lies in `[0, 1]`.
pub(crate) fn unit(field: &str, v: f64) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(field, format!("must be in [0, 1], got {v}")))
    }
}
